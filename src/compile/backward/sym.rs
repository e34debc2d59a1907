//! The expressions a gradient program is written in: the loss's own subexpressions, as the user
//! wrote them, and the derivative terms built around them. The builders fold constants into one
//! coefficient per product and drop `* 1` and `+ 0`; they never drop `* 0`, whose NaN at an
//! infinite factor autograd keeps too. [`print`] writes the loss-file language, with only the
//! parentheses the parser needs (and around products beside `@`, for the eye).

use std::rc::Rc;

use crate::compile::shape::{self, Shape};
use crate::diagnostic::Span;
use crate::lang::ast::{BinOp, IndexItem};

/// A shared expression node.
pub(super) type S = Rc<Node>;

/// One node with the shape of its value.
#[derive(Debug)]
pub(super) struct Node {
    pub kind: Kind,
    pub shape: Shape,
    /// Whether a param's gradient flows through it (loss nodes only; built terms are false).
    pub grad: bool,
    /// Where the loss file writes it (loss nodes only).
    pub span: Option<Span>,
}

/// A number `num / den`, kept as a fraction so `2 / 256` still says where each part came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Coef {
    pub num: f64,
    pub den: f64,
}

impl Coef {
    pub const ONE: Coef = Coef { num: 1.0, den: 1.0 };

    pub fn of(v: f64) -> Self {
        Coef { num: v, den: 1.0 }
    }

    pub fn value(self) -> f64 {
        self.num / self.den
    }

    /// The product, as a fraction while both parts stay whole numbers of a modest size.
    fn times(self, o: Coef) -> Coef {
        let c = Coef {
            num: self.num * o.num,
            den: self.den * o.den,
        };
        c.tidy()
    }

    /// Whole-number fractions stay fractions; anything else becomes its value.
    fn tidy(self) -> Coef {
        let whole = |v: f64| v.fract() == 0.0 && v.abs() < 1e15;
        let (n, d) = if self.den < 0.0 {
            (-self.num, -self.den)
        } else {
            (self.num, self.den)
        };
        let v = n / d;
        if d != 1.0 && (whole(v) || !whole(d) || !n.is_finite()) {
            Coef::of(v)
        } else {
            Coef { num: n, den: d }
        }
    }

    fn neg(self) -> Coef {
        Coef {
            num: -self.num,
            den: self.den,
        }
    }

    fn is(self, v: f64) -> bool {
        self.value() == v
    }
}

/// What a node is. Loss nodes use the first eight kinds as the parser made them; the builders
/// below also make `Sum` and `Prod`.
#[derive(Debug)]
pub(super) enum Kind {
    Number(Coef),
    Name(String),
    Neg(S),
    Bin(BinOp, S, S),
    Call {
        func: String,
        args: Vec<S>,
        kwargs: Vec<(String, S)>,
    },
    Index(S, Vec<IndexItem>),
    T(S),
    Array(Vec<S>),
    /// Terms added (false) or subtracted (true), left to right.
    Sum(Vec<(bool, S)>),
    /// `coef * num[0] * num[1] ... / (den[0] * ...)`.
    Prod {
        coef: Coef,
        num: Vec<S>,
        den: Vec<S>,
    },
}

fn node(kind: Kind, shape: Shape) -> S {
    Rc::new(Node {
        kind,
        shape,
        grad: false,
        span: None,
    })
}

/// Broadcast of two shapes; the first when they do not broadcast (the check would catch it).
fn both(a: &Shape, b: &Shape) -> Shape {
    shape::broadcast(a, b).unwrap_or_else(|| a.clone())
}

/// A number.
pub(super) fn num(v: f64) -> S {
    node(Kind::Number(Coef::of(v)), Shape::scalar())
}

/// A name of the given shape.
pub(super) fn name(n: &str, shape: Shape) -> S {
    node(Kind::Name(n.to_string()), shape)
}

/// The number a node is, if it is one.
pub(super) fn number(s: &S) -> Option<Coef> {
    match s.kind {
        Kind::Number(c) => Some(c),
        _ => None,
    }
}

/// A product taken apart: coefficient, factors, divisors.
fn parts(s: &S) -> (Coef, Vec<S>, Vec<S>) {
    match &s.kind {
        Kind::Number(c) => (*c, Vec::new(), Vec::new()),
        Kind::Prod { coef, num, den } => (*coef, num.clone(), den.clone()),
        Kind::Neg(x) => {
            let (c, n, d) = parts(x);
            (c.neg(), n, d)
        }
        _ => match without_leading_minus(s) {
            Some(t) => (Coef::of(-1.0), vec![t], Vec::new()),
            None => (Coef::ONE, vec![s.clone()], Vec::new()),
        },
    }
}

fn from_parts(coef: Coef, num: Vec<S>, den: Vec<S>) -> S {
    if num.is_empty() && den.is_empty() {
        return node(Kind::Number(coef), Shape::scalar());
    }
    if coef.is(1.0) && num.len() == 1 && den.is_empty() {
        return num[0].clone();
    }
    let shape = num
        .iter()
        .chain(&den)
        .fold(Shape::scalar(), |s, f| both(&s, &f.shape));
    node(Kind::Prod { coef, num, den }, shape)
}

/// `a * b`, coefficients gathered in front.
pub(super) fn mul(a: &S, b: &S) -> S {
    let (ca, mut na, mut da) = parts(a);
    let (cb, nb, db) = parts(b);
    na.extend(nb);
    da.extend(db);
    from_parts(ca.times(cb), na, da)
}

/// `a / b`; a number divisor joins the coefficient.
pub(super) fn div(a: &S, b: &S) -> S {
    let (ca, mut na, mut da) = parts(a);
    let (cb, nb, db) = parts(b);
    na.extend(db);
    da.extend(nb);
    let inv = Coef {
        num: cb.den,
        den: cb.num,
    };
    from_parts(ca.times(inv), na, da)
}

/// `-a`.
pub(super) fn neg(a: &S) -> S {
    match &a.kind {
        Kind::Neg(x) => x.clone(),
        Kind::Sum(terms) => {
            let terms = terms.iter().map(|(m, t)| (!m, t.clone())).collect();
            node(Kind::Sum(terms), a.shape.clone())
        }
        _ => {
            let (c, n, d) = parts(a);
            from_parts(c.neg(), n, d)
        }
    }
}

/// Terms of a sum with their signs; products carry a positive coefficient.
fn terms(s: &S, minus: bool, out: &mut Vec<(bool, S)>) {
    match &s.kind {
        Kind::Sum(ts) => {
            for (m, t) in ts {
                terms(t, minus != *m, out);
            }
        }
        Kind::Number(c) if c.is(0.0) => {}
        Kind::Neg(x) => terms(x, !minus, out),
        Kind::Number(c) if c.value() < 0.0 => out.push((!minus, num_coef(c.neg()))),
        Kind::Prod { coef, num, den } if coef.value() < 0.0 => {
            out.push((!minus, from_parts(coef.neg(), num.clone(), den.clone())))
        }
        _ => match without_leading_minus(s) {
            Some(t) => out.push((!minus, t)),
            None => out.push((minus, s.clone())),
        },
    }
}

/// `-a * b` (the loss's own product, led by a minus) as `a * b`, to be subtracted: negation
/// commutes with every factor, so the value only changes sign.
fn without_leading_minus(s: &S) -> Option<S> {
    match &s.kind {
        Kind::Neg(x) => Some(x.clone()),
        Kind::Bin(op @ (BinOp::Mul | BinOp::Div | BinOp::MatMul), a, b) => {
            let a = without_leading_minus(a)?;
            Some(Rc::new(Node {
                kind: Kind::Bin(*op, a, b.clone()),
                shape: s.shape.clone(),
                grad: s.grad,
                span: s.span.clone(),
            }))
        }
        _ => None,
    }
}

fn num_coef(c: Coef) -> S {
    node(Kind::Number(c), Shape::scalar())
}

/// The sum of `items` (in order), numbers folded into one term where the first one stood.
pub(super) fn sum_of(items: &[S]) -> S {
    let mut ts = Vec::new();
    for s in items {
        terms(s, false, &mut ts);
    }
    let mut numbers: Vec<(bool, Coef)> = Vec::new();
    let mut at = None;
    let mut kept: Vec<(bool, S)> = Vec::new();
    for (m, t) in ts {
        match number(&t) {
            Some(c) => {
                at.get_or_insert(kept.len());
                numbers.push((m, c));
            }
            None => kept.push((m, t)),
        }
    }
    let constant = match numbers.as_slice() {
        [] => None,
        [(m, c)] => Some((*m, *c)),
        many => {
            let v: f64 = many
                .iter()
                .map(|(m, c)| if *m { -c.value() } else { c.value() })
                .sum();
            (v != 0.0).then_some((v < 0.0, Coef::of(v.abs())))
        }
    };
    if let (Some((m, c)), Some(at)) = (constant, at) {
        kept.insert(at, (m, num_coef(c)));
    }
    let shape = items
        .iter()
        .fold(Shape::scalar(), |s, t| both(&s, &t.shape));
    match kept.len() {
        0 => num(0.0),
        1 if !kept[0].0 => kept.pop().expect("one term").1,
        1 => neg(&kept[0].1),
        _ => node(Kind::Sum(kept), shape),
    }
}

/// Terms that scatter into the same place (`put(a, 0, 2)` and `put(b, 0, 2)`) as one scatter
/// of their sum (`put(a + b, 0, 2)`), where the first of them stood; exact, as the zeros add.
pub(super) fn merge_scatters(items: Vec<S>) -> Vec<S> {
    let mut out: Vec<S> = Vec::new();
    let mut groups: Vec<(String, usize, Vec<S>)> = Vec::new();
    for item in items {
        let key = match &item.kind {
            Kind::Call { func, args, kwargs } if func == "put" || func == "pad" => {
                let rest: Vec<String> = args[1..]
                    .iter()
                    .chain(kwargs.iter().map(|(_, v)| v))
                    .map(print)
                    .collect();
                Some(format!("{func}({})", rest.join(",")))
            }
            _ => None,
        };
        match key {
            Some(k) => match groups.iter_mut().find(|(g, _, _)| *g == k) {
                Some((_, _, members)) => members.push(item),
                None => {
                    groups.push((k, out.len(), vec![item.clone()]));
                    out.push(item);
                }
            },
            None => out.push(item),
        }
    }
    for (_, at, members) in groups {
        if members.len() < 2 {
            continue;
        }
        let Kind::Call { func, args, kwargs } = &members[0].kind else {
            continue;
        };
        let inner: Vec<S> = members
            .iter()
            .filter_map(|m| match &m.kind {
                Kind::Call { args, .. } => Some(args[0].clone()),
                _ => None,
            })
            .collect();
        let mut merged = args.clone();
        merged[0] = sum_of(&inner);
        out[at] = node(
            Kind::Call {
                func: func.clone(),
                args: merged,
                kwargs: kwargs.clone(),
            },
            members[0].shape.clone(),
        );
    }
    out
}

/// `a + b`.
pub(super) fn add(a: &S, b: &S) -> S {
    sum_of(&[a.clone(), b.clone()])
}

/// `a - b`.
pub(super) fn sub(a: &S, b: &S) -> S {
    sum_of(&[a.clone(), neg(b)])
}

/// A built-in call of the given result shape; `axis` is written as `axis=k`.
pub(super) fn call(func: &str, args: Vec<S>, axis: Option<usize>, shape: Shape) -> S {
    let kwargs = axis
        .map(|k| vec![("axis".to_string(), num(k as f64))])
        .unwrap_or_default();
    node(
        Kind::Call {
            func: func.to_string(),
            args,
            kwargs,
        },
        shape,
    )
}

/// An elementwise built-in of one argument.
pub(super) fn apply(func: &str, x: &S) -> S {
    call(func, vec![x.clone()], None, x.shape.clone())
}

/// `where(c, t, f)` where one branch is 0: a number in front of the other branch comes out
/// (exact, as the number is finite), and `where(mask, 1, 0)` is the mask.
pub(super) fn select(c: &S, t: &S, f: &S) -> S {
    let shape = both(&both(&c.shape, &t.shape), &f.shape);
    let zero = |s: &S| number(s).is_some_and(|c| c.is(0.0));
    let is_mask = matches!(&c.kind, Kind::Bin(op, _, _) if op.is_comparison());
    for (branch, other, taken) in [(t, f, true), (f, t, false)] {
        if !zero(other) {
            continue;
        }
        let (coef, n, d) = parts(branch);
        if coef.is(1.0) || !coef.value().is_finite() {
            continue;
        }
        let rest = from_parts(Coef::ONE, n, d);
        let inner = if taken {
            select(c, &rest, other)
        } else {
            select(c, other, &rest)
        };
        return mul(&num_coef(coef), &inner);
    }
    match (number(t).map(Coef::value), number(f).map(Coef::value)) {
        (Some(1.0), Some(0.0)) if is_mask => return c.clone(),
        (Some(0.0), Some(1.0)) if is_mask => return sub(&num(1.0), c),
        _ => {}
    }
    call("where", vec![c.clone(), t.clone(), f.clone()], None, shape)
}

/// A comparison, a 0/1 mask.
pub(super) fn cmp(op: BinOp, a: &S, b: &S) -> S {
    node(
        Kind::Bin(op, a.clone(), b.clone()),
        both(&a.shape, &b.shape),
    )
}

/// `a ^ e`; `a ^ 1` is `a`.
pub(super) fn pow(a: &S, e: &S) -> S {
    if number(e).is_some_and(|c| c.is(1.0)) {
        return a.clone();
    }
    node(
        Kind::Bin(BinOp::Pow, a.clone(), e.clone()),
        both(&a.shape, &e.shape),
    )
}

/// `a @ b` of the given result shape, coefficients taken out in front.
pub(super) fn matmul(a: &S, b: &S, shape: Shape) -> S {
    let (ca, na, da) = parts(a);
    let (cb, nb, db) = parts(b);
    let strip = |n: Vec<S>, d: Vec<S>, orig: &S| {
        if n.is_empty() && d.is_empty() {
            orig.clone()
        } else {
            from_parts(Coef::ONE, n, d)
        }
    };
    let (a1, b1) = (strip(na, da, a), strip(nb, db, b));
    let c = ca.times(cb);
    let (c, a1, b1) = if number(&a1).is_some() || number(&b1).is_some() {
        (Coef::ONE, a.clone(), b.clone())
    } else {
        (c, a1, b1)
    };
    let m = node(Kind::Bin(BinOp::MatMul, a1, b1), shape);
    if c.is(1.0) {
        m
    } else {
        from_parts(c, vec![m], Vec::new())
    }
}

/// The last two axes swapped: `x.T` of a matrix; `(a @ b).T` is `b.T @ a.T`.
pub(super) fn transpose(x: &S) -> S {
    let mut dims = x.shape.0.clone();
    let r = dims.len();
    if r < 2 {
        return x.clone();
    }
    dims.swap(r - 2, r - 1);
    match &x.kind {
        Kind::T(inner) => inner.clone(),
        Kind::Bin(BinOp::MatMul, a, b) if a.shape.rank() == 2 && b.shape.rank() == 2 => {
            matmul(&transpose(b), &transpose(a), Shape(dims))
        }
        _ => node(Kind::T(x.clone()), Shape(dims)),
    }
}

/// `reshape(x, dims...)`; none when `x` has that shape, one for a reshape of a reshape.
pub(super) fn reshape(x: &S, dims: &[usize]) -> S {
    if x.shape.dims() == dims {
        return x.clone();
    }
    if let Kind::Call { func, args, .. } = &x.kind
        && func == "reshape"
    {
        return reshape(&args[0], dims);
    }
    if dims.is_empty() {
        // A one-element tensor as a scalar: its only element (`reshape` needs a size).
        let items = vec![IndexItem::At(0); x.shape.rank()];
        return index(x, items, Shape::scalar());
    }
    let args = std::iter::once(x.clone())
        .chain(dims.iter().map(|&d| num(d as f64)))
        .collect();
    call("reshape", args, None, Shape(dims.to_vec()))
}

/// `x[items]` of the given result shape.
pub(super) fn index(x: &S, items: Vec<IndexItem>, shape: Shape) -> S {
    node(Kind::Index(x.clone(), items), shape)
}

/// Whether a node reads a random constructor, and where (a program read back as text draws anew).
pub(super) fn random_in(s: &S) -> Option<Span> {
    let here = match &s.kind {
        Kind::Call { func, .. } if func == "randn" || func == "rand" => s.span.clone(),
        _ => None,
    };
    here.or_else(|| children(s).iter().find_map(random_in))
}

fn children(s: &S) -> Vec<S> {
    match &s.kind {
        Kind::Number(_) | Kind::Name(_) => Vec::new(),
        Kind::Neg(x) | Kind::Index(x, _) | Kind::T(x) => vec![x.clone()],
        Kind::Bin(_, a, b) => vec![a.clone(), b.clone()],
        Kind::Call { args, kwargs, .. } => args
            .iter()
            .cloned()
            .chain(kwargs.iter().map(|(_, v)| v.clone()))
            .collect(),
        Kind::Array(items) => items.clone(),
        Kind::Sum(ts) => ts.iter().map(|(_, t)| t.clone()).collect(),
        Kind::Prod { num, den, .. } => num.iter().chain(den).cloned().collect(),
    }
}

/// Every name a node reads.
pub(super) fn names_in(s: &S, out: &mut Vec<String>) {
    if let Kind::Name(n) = &s.kind {
        out.push(n.clone());
    }
    for c in children(s) {
        names_in(&c, out);
    }
}

/// A number as the lexer reads it back exactly: whole numbers without a point, the shorter of
/// the plain and the exponent form otherwise.
pub(super) fn literal(v: f64) -> String {
    // The language has no literal for these; a folded product may still overflow to one.
    if v.is_nan() {
        return "(0 / 0)".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "(1 / 0)" } else { "(-1 / 0)" }.into();
    }
    if v.fract() == 0.0 && v.abs() < 1e16 {
        return format!("{}", v as i64);
    }
    let plain = format!("{v}");
    let exp = format!("{v:e}");
    if exp.len() < plain.len() { exp } else { plain }
}

// Binding powers, as the parser has them: comparison 1, additive 2, multiplicative 3, unary
// minus 4, power 5, postfix and atoms 6.
const CMP: u8 = 1;
const ADD: u8 = 2;
const MUL: u8 = 3;
const UNARY: u8 = 4;
const POW: u8 = 5;
const ATOM: u8 = 6;

fn bin_prec(op: BinOp) -> u8 {
    match op {
        BinOp::Add | BinOp::Sub => ADD,
        BinOp::Mul | BinOp::Div | BinOp::MatMul => MUL,
        BinOp::Pow => POW,
        _ => CMP,
    }
}

fn coef_prec(c: Coef) -> u8 {
    if c.den != 1.0 {
        MUL
    } else if c.num < 0.0 {
        UNARY
    } else {
        ATOM
    }
}

fn prec(s: &S) -> u8 {
    match &s.kind {
        Kind::Number(c) => coef_prec(*c),
        Kind::Neg(_) => UNARY,
        Kind::Bin(op, _, _) => bin_prec(*op),
        Kind::Sum(_) => ADD,
        Kind::Prod { .. } => MUL,
        Kind::Name(_) | Kind::Call { .. } | Kind::Index(..) | Kind::T(_) | Kind::Array(_) => ATOM,
    }
}

fn wrap(s: &S, at_least: u8) -> String {
    let text = print(s);
    if prec(s) < at_least {
        format!("({text})")
    } else {
        text
    }
}

fn is_product(s: &S) -> bool {
    matches!(
        s.kind,
        Kind::Prod { .. } | Kind::Bin(BinOp::Mul | BinOp::Div, _, _)
    )
}

/// The node in the loss-file language.
pub(super) fn print(s: &S) -> String {
    match &s.kind {
        Kind::Number(c) => match c.den {
            1.0 => literal(c.num),
            d => format!("{} / {}", literal(c.num), literal(d)),
        },
        Kind::Name(n) => n.clone(),
        Kind::Neg(x) => format!("-{}", wrap(x, MUL)),
        Kind::Bin(op, a, b) => {
            let sym = op.symbol();
            let p = bin_prec(*op);
            match op {
                BinOp::Pow => {
                    let exp = match number(b) {
                        Some(c) if c.den == 1.0 && c.num < 0.0 => literal(c.num),
                        _ => wrap(b, POW),
                    };
                    format!("{}^{exp}", wrap(a, ATOM))
                }
                BinOp::MatMul => {
                    let side = |x: &S, right: bool| {
                        if is_product(x) || prec(x) < p || right && prec(x) == p {
                            format!("({})", print(x))
                        } else {
                            print(x)
                        }
                    };
                    format!("{} @ {}", side(a, false), side(b, true))
                }
                _ if op.is_comparison() => {
                    format!("{} {sym} {}", wrap(a, p + 1), wrap(b, p + 1))
                }
                _ => format!("{} {sym} {}", wrap(a, p), wrap(b, p + 1)),
            }
        }
        Kind::Call { func, args, kwargs } => {
            let parts: Vec<String> = args
                .iter()
                .map(print)
                .chain(kwargs.iter().map(|(k, v)| format!("{k}={}", print(v))))
                .collect();
            format!("{func}({})", parts.join(", "))
        }
        Kind::Index(x, items) => {
            let items: Vec<String> = items.iter().map(index_item).collect();
            format!("{}[{}]", wrap(x, ATOM), items.join(", "))
        }
        Kind::T(x) if x.shape.rank() == 2 => format!("{}.T", wrap(x, ATOM)),
        Kind::T(x) => format!("transpose({})", print(x)),
        Kind::Array(items) => {
            let items: Vec<String> = items.iter().map(print).collect();
            format!("[{}]", items.join(", "))
        }
        Kind::Sum(ts) => {
            let mut out = String::new();
            for (i, (minus, t)) in ts.iter().enumerate() {
                match (i, minus) {
                    (0, false) => out.push_str(&wrap(t, ADD)),
                    (0, true) => {
                        out.push('-');
                        out.push_str(&wrap(t, MUL));
                    }
                    (_, false) => {
                        out.push_str(" + ");
                        out.push_str(&wrap(t, MUL));
                    }
                    (_, true) => {
                        out.push_str(" - ");
                        out.push_str(&wrap(t, MUL));
                    }
                }
            }
            out
        }
        Kind::Prod { coef, num, den } => product(*coef, num, den),
    }
}

/// `n / d * a * b`, `a * b / d`, `n * a / (d * c)`: the coefficient's numerator leads, its
/// denominator joins the divisors.
fn product(coef: Coef, num: &[S], den: &[S]) -> String {
    let mut top: Vec<String> = Vec::new();
    let minus = coef.num < 0.0;
    let n = coef.num.abs();
    let lead = if num.is_empty() || n != 1.0 {
        Some(literal(n))
    } else {
        None
    };
    for (i, f) in num.iter().enumerate() {
        // A product or quotient among the factors needs no parentheses (reassociating changes
        // only rounding), a matrix product does, for the eye.
        let chain = matches!(f.kind, Kind::Bin(BinOp::Mul | BinOp::Div, _, _));
        let first = i == 0 && lead.is_none();
        top.push(wrap(f, if first || chain { MUL } else { UNARY }));
    }
    let mut bottom: Vec<String> = Vec::new();
    if coef.den != 1.0 {
        bottom.push(literal(coef.den));
    }
    for f in den {
        bottom.push(wrap(f, UNARY));
    }
    let sign = if minus { "-" } else { "" };
    // `2 / 256 * x`: a number over a number reads first when nothing else divides.
    if let (Some(l), true, false, false) =
        (&lead, den.is_empty(), bottom.is_empty(), num.is_empty())
    {
        return format!("{sign}{l} / {} * {}", bottom[0], top.join(" * "));
    }
    let numerator = match &lead {
        Some(l) if top.is_empty() => l.clone(),
        Some(l) => format!("{l} * {}", top.join(" * ")),
        None => top.join(" * "),
    };
    match bottom.len() {
        0 => format!("{sign}{numerator}"),
        1 => format!("{sign}{numerator} / {}", bottom[0]),
        _ => format!("{sign}{numerator} / ({})", bottom.join(" * ")),
    }
}

fn index_item(item: &IndexItem) -> String {
    match item {
        IndexItem::At(i) => i.to_string(),
        IndexItem::Slice { start, end } => format!(
            "{}:{}",
            start.map_or(String::new(), |s| s.to_string()),
            end.map_or(String::new(), |e| e.to_string())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: &str, dims: &[usize]) -> S {
        name(n, Shape(dims.to_vec()))
    }

    #[test]
    fn coefficients_fold_and_read_as_fractions() {
        let d = v("d", &[4]);
        let x = v("x", &[4]);
        let g = div(&num(1.0), &num(256.0));
        assert_eq!(print(&mul(&mul(&g, &num(2.0)), &x)), "2 / 256 * x");
        assert_eq!(print(&mul(&g, &x)), "x / 256");
        assert_eq!(print(&neg(&mul(&g, &x))), "-x / 256");
        assert_eq!(print(&mul(&num(1.0), &d)), "d");
        assert_eq!(print(&div(&d, &mul(&num(2.0), &x))), "d / (2 * x)");
        assert_eq!(
            print(&mul(&div(&num(1.0), &num(4.0)), &mul(&num(4.0), &d))),
            "d"
        );
    }

    #[test]
    fn sums_drop_zeros_and_subtract_negative_terms() {
        let a = v("a", &[3]);
        let b = v("b", &[3]);
        assert_eq!(print(&add(&a, &num(0.0))), "a");
        assert_eq!(print(&add(&a, &neg(&mul(&num(2.0), &b)))), "a - 2 * b");
        assert_eq!(print(&sub(&num(1.0), &pow(&a, &num(2.0)))), "1 - a^2");
        assert_eq!(print(&mul(&sub(&a, &b), &a)), "(a - b) * a");
    }

    #[test]
    fn precedence_needs_only_the_parentheses_the_parser_does() {
        let x = v("x", &[2, 3]);
        let g = v("g", &[2, 4]);
        let w = v("w", &[3, 4]);
        assert_eq!(
            print(&matmul(&transpose(&x), &g, Shape(vec![3, 4]))),
            "x.T @ g"
        );
        let scaled = mul(&num(0.5), &g);
        assert_eq!(
            print(&matmul(&scaled, &transpose(&w), Shape(vec![2, 3]))),
            "0.5 * (g @ w.T)"
        );
        assert_eq!(print(&pow(&neg(&x), &num(-1.0))), "(-x)^-1");
        assert_eq!(print(&transpose(&transpose(&x))), "x");
        assert_eq!(literal(1e-7), "1e-7");
        assert_eq!(literal(0.25), "0.25");
        assert_eq!(literal(-3.0), "-3");
        assert_eq!(literal(f64::INFINITY), "(1 / 0)");
    }
}
