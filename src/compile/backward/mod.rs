//! The gradient as a program in the loss-file language: reverse mode written out over the user's
//! own lines. Each named line that carries a param's gradient gets its adjoint `d_<name>`, in
//! reverse order of the lines, then each param its `grad_<param>`; the loss's subexpressions
//! appear as the user wrote them. Every rule follows the backward pass autograd takes (candle's,
//! and this crate's custom ops), down to its masks at ties and its NaN at `0 * inf`, so
//! [`check`] can hold the program to autograd's numbers exactly.

pub mod check;
mod sym;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use candle_core::Tensor;

use self::sym::{Coef, Kind as K, S};
use super::CompiledFile;
use super::lower::{Kind, Lowerer};
use super::plan::{Op, Reduce, Unary};
use super::shape::Shape;
use crate::diagnostic::{Diagnostic, SourceFile, Span};
use crate::lang::ast::{BinOp, Expr, ExprKind, IndexItem, Program, Spanned, Stmt};
use crate::lang::builtins::Builtin;
use crate::lang::file::{ConstEntry, FunctionDef};

/// What a line of a gradient program holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineKind {
    /// The loss's derivative with respect to the named line of the loss program.
    Adjoint(String),
    /// A param's gradient.
    Param(String),
}

/// One line `name = value` of a gradient program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GradLine {
    pub name: String,
    pub value: String,
    pub kind: LineKind,
    /// The earlier lines of this program it reads.
    pub reads: Vec<String>,
}

/// A run's gradient program: it continues the run's loss program, whose names it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backward {
    pub run: String,
    pub lines: Vec<GradLine>,
}

impl Backward {
    /// The program's text, one line each.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| format!("{} = {}\n", l.name, l.value))
            .collect()
    }

    /// The line holding `param`'s gradient.
    pub fn grad_line(&self, param: &str) -> Option<&GradLine> {
        self.lines
            .iter()
            .find(|l| l.kind == LineKind::Param(param.to_string()))
    }

    /// Only the lines `param`'s gradient needs, in order (None: no such param).
    pub fn for_param(&self, param: &str) -> Option<Backward> {
        let last = self.grad_line(param)?;
        let mut needed: HashSet<&str> = HashSet::from([last.name.as_str()]);
        for l in self.lines.iter().rev() {
            if needed.contains(l.name.as_str()) {
                needed.extend(l.reads.iter().map(String::as_str));
            }
        }
        let lines = self
            .lines
            .iter()
            .filter(|l| {
                needed.contains(l.name.as_str())
                    && (!matches!(l.kind, LineKind::Param(_)) || l.name == last.name)
            })
            .cloned()
            .collect();
        Some(Backward {
            run: self.run.clone(),
            lines,
        })
    }
}

/// One param's gradient formula at a point of a run, as the TUI's inspector shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Formula {
    /// Which param (its index among the file's params) and its name.
    pub param: usize,
    pub name: String,
    /// The lines its gradient needs, or why the program cannot be written.
    pub lines: Result<Vec<String>, String>,
    /// Where the program's first non-finite value is at the point, if it has one.
    pub nonfinite: Option<check::NonFinite>,
}

/// Param `param`'s gradient formula in run `run` of `compiled`, with the first non-finite value
/// of its program at `params` (each flattened row-major).
pub fn formula(compiled: &CompiledFile, run: usize, param: usize, params: &[Vec<f64>]) -> Formula {
    let name = compiled
        .params
        .get(param)
        .map_or_else(String::new, |p| p.name.clone());
    let program = backward(compiled, run)
        .map_err(|d| d.first().map_or_else(String::new, Diagnostic::headline))
        .and_then(|b| {
            b.for_param(&name)
                .ok_or_else(|| format!("the file has no param `{name}`"))
        });
    let (lines, nonfinite) = match program {
        Ok(b) => {
            let lines = b
                .lines
                .iter()
                .map(|l| format!("{} = {}", l.name, l.value))
                .collect();
            let place = check::locate_nonfinite(compiled, run, &b, Some(params))
                .ok()
                .flatten();
            (Ok(lines), place)
        }
        Err(why) => (Err(why), None),
    };
    Formula {
        param,
        name,
        lines,
        nonfinite,
    }
}

/// The loss program and consts of run `run` of `compiled` (a variant's own, or the file's).
pub(super) fn run_program(
    compiled: &CompiledFile,
    run: usize,
) -> (&Spanned<Program>, Vec<ConstEntry>) {
    let file = &compiled.file;
    let name = &compiled.runs[run].name;
    match file.variants.iter().find(|v| &v.name.node == name) {
        Some(v) if run > 0 => (
            v.loss.as_ref().unwrap_or(&file.loss),
            super::overlay(&file.consts, &v.consts, |c| &c.name.node),
        ),
        _ => (&file.loss, file.consts.clone()),
    }
}

/// The gradient program of run `run` of `compiled`, or diagnostics at the ops it cannot write.
pub fn backward(compiled: &CompiledFile, run: usize) -> Result<Backward, Vec<Diagnostic>> {
    let (program, consts) = run_program(compiled, run);
    let mut g = Gen::new(compiled, consts);
    match g.program(program) {
        Ok(()) => Ok(Backward {
            run: compiled.runs[run].name.clone(),
            lines: g.lines,
        }),
        Err(d) => Err(vec![d]),
    }
}

type Res<T> = Result<T, Diagnostic>;

/// What a name in the loss program stands for.
#[derive(Debug, Clone)]
struct Info {
    kind: Kind,
    shape: Shape,
    grad: bool,
}

/// The names an expression is read with: the loss program's, or a `[functions]` entry's
/// arguments (already written as the caller's expressions) and `g`.
enum Scope<'s> {
    Program,
    Function {
        fd: &'s FunctionDef,
        args: &'s [S],
        g: &'s S,
    },
}

struct Gen<'a> {
    compiled: &'a CompiledFile,
    source: Arc<SourceFile>,
    consts: Vec<ConstEntry>,
    functions: Arc<Vec<FunctionDef>>,
    scope: HashMap<String, Info>,
    /// Each name's adjoint terms so far, keyed by where the name is read.
    terms: HashMap<String, Vec<(usize, S)>>,
    lines: Vec<GradLine>,
    taken: HashSet<String>,
    /// Each loss node's op as the lowerer resolved it (axes, alpha, known exponents), by span.
    resolved: RefCell<HashMap<(usize, usize), Op>>,
}

impl<'a> Gen<'a> {
    fn new(compiled: &'a CompiledFile, consts: Vec<ConstEntry>) -> Self {
        let file = &compiled.file;
        let mut scope = HashMap::new();
        for c in &consts {
            let info = Info {
                kind: Kind::Const,
                shape: Shape::scalar(),
                grad: false,
            };
            scope.insert(c.name.node.clone(), info);
        }
        for d in &compiled.data {
            let shape = Shape(d.value.dims().to_vec());
            let info = Info {
                kind: Kind::Data,
                shape,
                grad: false,
            };
            scope.insert(d.name.clone(), info);
        }
        for p in &compiled.params {
            let shape = Shape(p.value.dims().to_vec());
            let info = Info {
                kind: Kind::Param,
                shape,
                grad: true,
            };
            scope.insert(p.name.clone(), info);
        }
        let mut taken: HashSet<String> = scope.keys().cloned().collect();
        taken.extend(file.functions.iter().map(|f| f.name.node.clone()));
        taken.extend(Builtin::names().map(str::to_string));
        taken.extend(["pi".to_string(), "e".to_string()]);
        Self {
            compiled,
            source: Arc::clone(&file.source),
            consts,
            functions: Arc::new(file.functions.clone()),
            scope,
            terms: HashMap::new(),
            lines: Vec::new(),
            taken,
            resolved: RefCell::new(HashMap::new()),
        }
    }

    fn error(&self, message: impl Into<String>, span: &Span) -> Diagnostic {
        Diagnostic::error(message).at(&self.source, span.clone())
    }

    fn program(&mut self, p: &Spanned<Program>) -> Res<()> {
        for stmt in &p.node.stmts {
            self.taken.insert(stmt.name.node.clone());
        }
        let mut lines: Vec<(&Stmt, S)> = Vec::new();
        for stmt in &p.node.stmts {
            let name = &stmt.name.node;
            if let Some((first, _)) = lines.iter().find(|(s, _)| &s.name.node == name) {
                let (line, _) = self.source.line_col(first.name.span.start);
                return Err(self
                    .error(
                        format!("`{name}` is assigned twice, so the gradient program cannot name its value"),
                        &stmt.name.span,
                    )
                    .label(format!("first assigned on line {line}"))
                    .help("give each line its own name"));
            }
            let value = self.fwd(&stmt.value, &Scope::Program)?;
            self.scope.insert(
                name.clone(),
                Info {
                    kind: Kind::Local,
                    shape: value.shape.clone(),
                    grad: value.grad,
                },
            );
            lines.push((stmt, value));
        }
        let result = self.fwd(&p.node.result, &Scope::Program)?;
        self.back(&result, &result, sym::num(1.0))?;
        for (stmt, value) in lines.iter().rev() {
            let name = &stmt.name.node;
            let Some(total) = self.total(name) else {
                continue;
            };
            let me = sym::name(name, value.shape.clone());
            let adjoint = if sym::number(&total).is_some() {
                total
            } else {
                let line = self.fresh(&format!("d_{name}"));
                let shape = total.shape.clone();
                self.emit(&line, &total, LineKind::Adjoint(name.clone()))?;
                sym::name(&line, shape)
            };
            self.back(value, &me, adjoint)?;
        }
        for p in &self.compiled.params {
            let shape = Shape(p.value.dims().to_vec());
            let total = match self.total(&p.name) {
                Some(t) => expand(&t, &shape),
                None => zeros(&shape),
            };
            let line = self.fresh(&format!("grad_{}", p.name));
            self.emit(&line, &total, LineKind::Param(p.name.clone()))?;
        }
        Ok(())
    }

    /// A name no line of the loss program, no input and no function already has.
    fn fresh(&mut self, base: &str) -> String {
        let mut n = base.to_string();
        while self.taken.contains(&n) {
            n.push('_');
        }
        self.taken.insert(n.clone());
        n
    }

    /// The adjoint of `name`: its terms added in the order the loss program reads it.
    fn total(&mut self, name: &str) -> Option<S> {
        let mut terms = self.terms.remove(name)?;
        terms.sort_by_key(|(at, _)| *at);
        let items: Vec<S> = terms.into_iter().map(|(_, t)| t).collect();
        Some(sym::sum_of(&sym::merge_scatters(items)))
    }

    fn emit(&mut self, line: &str, value: &S, kind: LineKind) -> Res<()> {
        if let Some(span) = sym::random_in(value) {
            return Err(self
                .error(
                    "the gradient needs this random value: the loss drew it once, when the file was loaded, and the program read back as text would draw other numbers",
                    &span,
                )
                .help("give it a name in [data], so the gradient program reads the same numbers"));
        }
        let mut names = Vec::new();
        sym::names_in(value, &mut names);
        let earlier: HashSet<&str> = self.lines.iter().map(|l| l.name.as_str()).collect();
        let mut reads: Vec<String> = Vec::new();
        for n in names {
            if earlier.contains(n.as_str()) && !reads.contains(&n) {
                reads.push(n);
            }
        }
        self.lines.push(GradLine {
            name: line.to_string(),
            value: sym::print(value),
            kind,
            reads,
        });
        Ok(())
    }

    // ---- the loss's expressions, with shapes ----

    /// Lowers `e` on its own to learn its shape and (resolved) op.
    fn oracle(&self, e: &Expr, scope: &Scope) -> Res<(Shape, Op)> {
        let file = &self.compiled.file;
        let mut lw = Lowerer::new(&self.source, file.seed, "grad");
        for c in &self.consts {
            if let Ok(t) = Tensor::new(c.value, &candle_core::Device::Cpu) {
                lw.bind_known(&c.name.node, t, Kind::Const);
            }
        }
        match scope {
            Scope::Program => {
                lw = lw.with_functions(Arc::clone(&self.functions));
                // Only the names `e` reads: binding every line before it made each of a
                // program's expressions cost its length, a 4,000-line program 5 s.
                let mut used = super::data::free_names(e);
                used.sort_unstable();
                used.dedup();
                for (i, d) in self.compiled.data.iter().enumerate() {
                    if used.binary_search(&d.name).is_ok() {
                        lw.bind_data(&d.name, i, &d.value, d.span.clone());
                    }
                }
                let mut at = self.compiled.data.len();
                for n in &used {
                    if let Some(info) = self.scope.get(n)
                        && matches!(info.kind, Kind::Param | Kind::Local)
                    {
                        lw.bind_input(n, at, Kind::Data, info.shape.clone(), e.span.clone());
                        at += 1;
                    }
                }
            }
            Scope::Function { fd, args, g } => {
                for (i, (a, s)) in fd.args.iter().zip(args.iter()).enumerate() {
                    lw.bind_input(&a.node, i, Kind::Data, s.shape.clone(), a.span.clone());
                }
                lw.bind_input("g", args.len(), Kind::Data, g.shape.clone(), e.span.clone());
            }
        }
        let (plan, diags) = lw.expression(e);
        match plan {
            Some(plan) => {
                let out = &plan.instrs[plan.output];
                Ok((out.shape.clone(), out.op.clone()))
            }
            None => Err(diags
                .into_iter()
                .find(Diagnostic::is_error)
                .unwrap_or_else(|| {
                    self.error(
                        "gradscope could not read the shape of this expression",
                        &e.span,
                    )
                })),
        }
    }

    /// `e` as a node, with its shape and whether a param's gradient flows through it.
    fn fwd(&self, e: &Expr, scope: &Scope) -> Res<S> {
        if let (ExprKind::Name(n), Scope::Function { fd, args, g }) = (&e.kind, scope) {
            if n == "g" {
                return Ok((*g).clone());
            }
            if let Some(i) = fd.args.iter().position(|a| &a.node == n) {
                return Ok(args[i].clone());
            }
        }
        let (shape, op) = self.oracle(e, scope)?;
        self.resolved
            .borrow_mut()
            .insert((e.span.start, e.span.end), op);
        let (kind, grad) = match &e.kind {
            ExprKind::Number(v) => (K::Number(Coef::of(*v)), false),
            ExprKind::Name(n) => {
                let grad = match scope {
                    Scope::Program => self.scope.get(n).is_some_and(|i| i.grad),
                    Scope::Function { .. } => false,
                };
                (K::Name(n.clone()), grad)
            }
            ExprKind::Array(items) => {
                let items = items
                    .iter()
                    .map(|i| self.fwd(i, scope))
                    .collect::<Res<Vec<_>>>()?;
                let grad = items.iter().any(|i| i.grad);
                (K::Array(items), grad)
            }
            ExprKind::Neg(x) => {
                let x = self.fwd(x, scope)?;
                let grad = x.grad;
                (K::Neg(x), grad)
            }
            ExprKind::Binary { op, lhs, rhs, .. } => {
                let (l, r) = (self.fwd(lhs, scope)?, self.fwd(rhs, scope)?);
                let grad = !op.is_comparison() && (l.grad || r.grad);
                (K::Bin(*op, l, r), grad)
            }
            ExprKind::Call { func, args, kwargs } => {
                let a = args
                    .iter()
                    .map(|x| self.fwd(x, scope))
                    .collect::<Res<Vec<_>>>()?;
                let kw = kwargs
                    .iter()
                    .map(|k| Ok((k.name.node.clone(), self.fwd(&k.value, scope)?)))
                    .collect::<Res<Vec<_>>>()?;
                let passes = match Builtin::from_name(&func.node) {
                    _ if self.functions.iter().any(|f| f.name.node == func.node) => true,
                    Some(b) => passes_gradient(b),
                    None => false,
                };
                let grad = passes && a.iter().any(|x| x.grad);
                (
                    K::Call {
                        func: func.node.clone(),
                        args: a,
                        kwargs: kw,
                    },
                    grad,
                )
            }
            ExprKind::Index { target, items } => {
                let t = self.fwd(target, scope)?;
                let grad = t.grad;
                let items = items.iter().map(|i| i.node.clone()).collect();
                (K::Index(t, items), grad)
            }
            ExprKind::Transposed { target, .. } => {
                let t = self.fwd(target, scope)?;
                let grad = t.grad;
                (K::T(t), grad)
            }
        };
        Ok(Rc::new(sym::Node {
            kind,
            shape,
            grad,
            span: Some(e.span.clone()),
        }))
    }

    // ---- reverse mode ----

    /// Sends adjoint `g` (broadcastable to `x`'s shape) back through loss node `x`, whose value
    /// `me` names (the line's name for a whole line, else `x` itself).
    fn back(&mut self, x: &S, me: &S, g: S) -> Res<()> {
        if !x.grad {
            return Ok(());
        }
        let span = x.span.clone().unwrap_or(0..0);
        match &x.kind {
            K::Name(n) => {
                self.terms
                    .entry(n.clone())
                    .or_default()
                    .push((span.start, g));
                Ok(())
            }
            K::Neg(a) => self.back(a, a, sym::neg(&g)),
            K::Bin(op, a, b) => self.binary(x, me, *op, a, b, g),
            K::Call { func, args, .. } => {
                match self.functions.iter().find(|f| &f.name.node == func) {
                    Some(fd) => {
                        let fd = fd.clone();
                        self.user_function(x, &fd, args, g)
                    }
                    None => self.builtin(x, me, func, args, g),
                }
            }
            K::Index(t, items) => {
                let g = expand(&g, &x.shape);
                let adj = unindex(&g, items, &t.shape);
                self.back(t, t, adj)
            }
            K::T(t) => self.back(t, t, sym::transpose(&expand(&g, &x.shape))),
            K::Array(items) => {
                let g = expand(&g, &x.shape);
                for (i, item) in items.iter().enumerate() {
                    self.back(item, item, pick(&g, 0, i, &item.shape))?;
                }
                Ok(())
            }
            K::Number(_) | K::Sum(_) | K::Prod { .. } => Ok(()),
        }
    }

    fn binary(&mut self, x: &S, me: &S, op: BinOp, a: &S, b: &S, g: S) -> Res<()> {
        match op {
            BinOp::Add => {
                self.back(a, a, reduce_to(&g, &x.shape, &a.shape))?;
                self.back(b, b, reduce_to(&g, &x.shape, &b.shape))
            }
            BinOp::Sub => {
                self.back(a, a, reduce_to(&g, &x.shape, &a.shape))?;
                self.back(b, b, reduce_to(&sym::neg(&g), &x.shape, &b.shape))
            }
            BinOp::Mul => {
                self.back(a, a, reduce_to(&sym::mul(&g, b), &x.shape, &a.shape))?;
                self.back(b, b, reduce_to(&sym::mul(&g, a), &x.shape, &b.shape))
            }
            BinOp::Div => {
                self.back(a, a, reduce_to(&sym::div(&g, b), &x.shape, &a.shape))?;
                if b.grad {
                    let b2 = sym::pow(b, &sym::num(2.0));
                    let db = sym::neg(&sym::div(&sym::mul(&g, a), &b2));
                    self.back(b, b, reduce_to(&db, &x.shape, &b.shape))?;
                }
                Ok(())
            }
            BinOp::MatMul => self.matmul(x, a, b, g),
            BinOp::Pow => self.power(me, a, b, g),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne => Ok(()),
        }
    }

    /// `a ^ b`: a known scalar exponent as autograd's powf (`b a^(b-1)`), else through
    /// `exp(b log a)` as candle computes it.
    fn power(&mut self, me: &S, a: &S, b: &S, g: S) -> Res<()> {
        let literal = sym::number(b).map(Coef::value);
        let known = literal.is_some()
            || !b.grad && b.shape.is_scalar() && matches!(self.op_of(b), Ok(Op::Const(_)));
        if known {
            let local = match literal {
                Some(0.0) => return Ok(()),
                Some(1.0) => sym::num(1.0),
                Some(2.0) => sym::mul(&sym::num(2.0), a),
                _ => sym::mul(b, &sym::pow(a, &sym::sub(b, &sym::num(1.0)))),
            };
            return self.back(a, a, sym::mul(&g, &local));
        }
        // torch's rules: none to a where b = 0, none to b where a = 0 and b >= 0.
        let zero = sym::num(0.0);
        if a.grad {
            let local = sym::mul(b, &sym::pow(a, &sym::sub(b, &sym::num(1.0))));
            let local = sym::select(&sym::cmp(BinOp::Eq, b, &zero), &zero, &local);
            self.back(a, a, reduce_to(&sym::mul(&g, &local), &me.shape, &a.shape))?;
        }
        let at_zero = sym::mul(
            &sym::cmp(BinOp::Eq, a, &zero),
            &sym::cmp(BinOp::Ge, b, &zero),
        );
        let local = sym::select(&at_zero, &zero, &sym::mul(me, &sym::apply("log", a)));
        self.back(b, b, reduce_to(&sym::mul(&g, &local), &me.shape, &b.shape))
    }

    fn matmul(&mut self, x: &S, a: &S, b: &S, g: S) -> Res<()> {
        let g = expand(&g, &x.shape);
        let (ra, rb) = (a.shape.rank(), b.shape.rank());
        let dims = |s: &S| s.shape.dims().to_vec();
        match (ra, rb) {
            (1, 1) => {
                self.back(a, a, sym::mul(&g, b))?;
                self.back(b, b, sym::mul(&g, a))
            }
            (2, 1) => {
                let n = dims(a)[0];
                let col = sym::reshape(&g, &[n, 1]);
                self.back(a, a, sym::mul(&col, b))?;
                let db = sym::matmul(&sym::transpose(a), &g, b.shape.clone());
                self.back(b, b, db)
            }
            (1, 2) => {
                let da = sym::matmul(b, &g, a.shape.clone());
                self.back(a, a, da)?;
                let k = dims(a)[0];
                self.back(b, b, sym::mul(&sym::reshape(a, &[k, 1]), &g))
            }
            (ra, rb) if ra >= 2 && rb >= 2 => {
                if a.grad {
                    let mut s = x.shape.0.clone();
                    let r = s.len();
                    s[r - 1] = dims(a)[ra - 1];
                    let da = sym::matmul(&g, &sym::transpose(b), Shape(s));
                    self.back(a, a, reduce_to(&da, &da.shape, &a.shape))?;
                }
                if b.grad {
                    let mut s = x.shape.0.clone();
                    let r = s.len();
                    s[r - 2] = dims(b)[rb - 2];
                    let db = sym::matmul(&sym::transpose(a), &g, Shape(s));
                    self.back(b, b, reduce_to(&db, &db.shape, &b.shape))?;
                }
                Ok(())
            }
            (1, _) => {
                // v @ B is (1 × k) @ B with the added axis taken away again.
                let k = dims(a)[0];
                let mut row = x.shape.0.clone();
                let m = row.pop().unwrap_or(1);
                row.extend([1, m]);
                let g_row = sym::reshape(&g, &row);
                let mut s = row.clone();
                let r = s.len();
                s[r - 1] = k;
                let da = sym::matmul(&g_row, &sym::transpose(b), Shape(s.clone()));
                let da = reduce_to(&da, &Shape(s), &Shape(vec![1, k]));
                self.back(a, a, sym::reshape(&da, &[k]))?;
                let db = sym::matmul(&sym::reshape(a, &[k, 1]), &g_row, b.shape.clone());
                self.back(b, b, db)
            }
            (_, 1) => {
                // A @ v is A @ (k × 1) with the added axis taken away again.
                let k = dims(b)[0];
                let mut col = x.shape.0.clone();
                col.push(1);
                let g_col = sym::reshape(&g, &col);
                let da = sym::mul(&g_col, b);
                self.back(a, a, da)?;
                let mut s = col.clone();
                let r = s.len();
                s[r - 2] = k;
                let db = sym::matmul(&sym::transpose(a), &g_col, Shape(s.clone()));
                let db = reduce_to(&db, &Shape(s), &Shape(vec![k, 1]));
                self.back(b, b, sym::reshape(&db, &[k]))
            }
            _ => Err(self.unsupported(x)),
        }
    }

    /// A `[functions]` call: each argument's adjoint is the function's own `grad` for it, with
    /// the arguments and `g` written in.
    fn user_function(&mut self, x: &S, fd: &FunctionDef, args: &[S], g: S) -> Res<()> {
        let g = expand(&g, &x.shape);
        for (i, arg) in args.iter().enumerate() {
            if !arg.grad {
                continue;
            }
            let scope = Scope::Function { fd, args, g: &g };
            let adj = self.fwd(&fd.grads[i], &scope)?;
            let adj = reduce_to(&adj, &arg.shape, &arg.shape);
            self.back(arg, arg, adj)?;
        }
        Ok(())
    }

    fn builtin(&mut self, x: &S, me: &S, func: &str, args: &[S], g: S) -> Res<()> {
        let span = x.span.clone().unwrap_or(0..0);
        let Some(f) = Builtin::from_name(func) else {
            return Err(self.error(format!("unknown function `{func}`"), &span));
        };
        let a = &args[0];
        let one = || sym::num(1.0);
        let elementwise = |local: S| sym::mul(&g, &local);
        match f {
            Builtin::Exp => self.back(a, a, elementwise(me.clone())),
            Builtin::Log => self.back(a, a, sym::div(&g, a)),
            Builtin::Log1p => self.back(a, a, sym::div(&g, &sym::add(&one(), a))),
            Builtin::Sqrt => {
                let d = sym::div(&g, &sym::mul(&sym::num(2.0), me));
                self.back(a, a, d)
            }
            Builtin::Abs => self.back(a, a, elementwise(sym::apply("sign", a))),
            Builtin::Sqr => self.back(a, a, sym::mul(&sym::mul(&sym::num(2.0), &g), a)),
            Builtin::Sin => self.back(a, a, elementwise(sym::apply("cos", a))),
            Builtin::Cos => self.back(a, a, sym::neg(&elementwise(sym::apply("sin", a)))),
            Builtin::Tanh => {
                let local = sym::sub(&one(), &sym::pow(me, &sym::num(2.0)));
                self.back(a, a, elementwise(local))
            }
            Builtin::Sigmoid => {
                let local = sym::mul(me, &sym::sub(&one(), me));
                self.back(a, a, elementwise(local))
            }
            Builtin::Softplus => self.back(a, a, elementwise(sym::apply("sigmoid", a))),
            Builtin::Relu => {
                let mask = sym::cmp(BinOp::Gt, a, &sym::num(0.0));
                self.back(a, a, sym::mul(&mask, &g))
            }
            Builtin::Gelu => {
                // Φ(x) + x φ(x)
                let cdf = sym::mul(
                    &sym::num(0.5),
                    &sym::add(
                        &one(),
                        &sym::apply("erf", &sym::div(a, &sqrt_of(sym::num(2.0)))),
                    ),
                );
                let gauss = sym::apply(
                    "exp",
                    &sym::neg(&sym::div(&sym::pow(a, &sym::num(2.0)), &sym::num(2.0))),
                );
                let pdf = sym::div(&sym::mul(a, &gauss), &sqrt_2pi());
                self.back(a, a, elementwise(sym::add(&cdf, &pdf)))
            }
            Builtin::Elu => {
                let alpha = match self.op_of(x)? {
                    Op::Unary(Unary::Elu(alpha)) => alpha,
                    _ => 1.0,
                };
                let zero = sym::num(0.0);
                let below = sym::mul(&sym::num(alpha), &sym::apply("exp", a));
                let mask = sym::add(
                    &sym::cmp(BinOp::Gt, a, &zero),
                    &sym::mul(&sym::cmp(BinOp::Le, a, &zero), &below),
                );
                self.back(a, a, sym::mul(&mask, &g))
            }
            Builtin::Silu => {
                let s = sym::apply("sigmoid", a);
                let local = sym::mul(&s, &sym::add(&one(), &sym::mul(a, &sym::sub(&one(), &s))));
                self.back(a, a, elementwise(local))
            }
            Builtin::Erf => {
                let gauss = sym::apply("exp", &sym::neg(&sym::pow(a, &sym::num(2.0))));
                let pi = sym::name("pi", Shape::scalar());
                let local = sym::div(&sym::mul(&sym::num(2.0), &gauss), &sqrt_of(pi));
                self.back(a, a, elementwise(local))
            }
            Builtin::Min | Builtin::Max => {
                let b = &args[1];
                let da = sym::mul(&tie_mask(me, a, b), &g);
                self.back(a, a, reduce_to(&da, &x.shape, &a.shape))?;
                let db = sym::mul(&tie_mask(me, b, a), &g);
                self.back(b, b, reduce_to(&db, &x.shape, &b.shape))
            }
            Builtin::Clamp => {
                let (lo, hi) = (&args[1], &args[2]);
                // clamp is min(max(x, lo), hi), each differentiated as candle does.
                let lifted = sym::call("max", vec![a.clone(), lo.clone()], None, sym_shape(a, lo));
                let dt = sym::mul(&tie_mask(me, &lifted, hi), &g);
                let dx = sym::mul(&tie_mask(&lifted, a, lo), &dt);
                self.back(a, a, reduce_to(&dx, &x.shape, &a.shape))?;
                let dlo = sym::mul(&tie_mask(&lifted, lo, a), &dt);
                self.back(lo, lo, reduce_to(&dlo, &x.shape, &lo.shape))?;
                let dhi = sym::mul(&tie_mask(me, hi, &lifted), &g);
                self.back(hi, hi, reduce_to(&dhi, &x.shape, &hi.shape))
            }
            Builtin::Pow => self.power(me, a, &args[1], g),
            Builtin::Where => {
                let (c, t, e) = (&args[0], &args[1], &args[2]);
                let zero = sym::num(0.0);
                let dt = sym::select(c, &g, &zero);
                self.back(t, t, reduce_to(&dt, &x.shape, &t.shape))?;
                let de = sym::select(c, &zero, &g);
                self.back(e, e, reduce_to(&de, &x.shape, &e.shape))
            }
            Builtin::Sum
            | Builtin::Mean
            | Builtin::Amax
            | Builtin::Amin
            | Builtin::Logsumexp
            | Builtin::Norm => {
                let Op::Reduce { op: r, axis } = self.op_of(x)? else {
                    return Err(self.unsupported(x));
                };
                let gu = unsqueeze(&g, axis, &a.shape);
                let mu = || unsqueeze(me, axis, &a.shape);
                let da = match r {
                    Reduce::Sum => gu,
                    Reduce::Mean => {
                        let n = match axis {
                            Some(k) => a.shape.dims()[k],
                            None => a.shape.elements().unwrap_or(1),
                        };
                        sym::div(&gu, &sym::num(n as f64))
                    }
                    Reduce::Max | Reduce::Min => {
                        // The tied elements share the gradient equally (see `plan::extreme`).
                        let at = sym::cmp(BinOp::Eq, a, &mu());
                        let ties = sym::call("sum", vec![at.clone()], axis, me.shape.clone());
                        sym::mul(&at, &sym::div(&gu, &unsqueeze(&ties, axis, &a.shape)))
                    }
                    Reduce::LogSumExp => {
                        let soft = match axis {
                            Some(k) => {
                                sym::call("softmax", vec![a.clone()], Some(k), a.shape.clone())
                            }
                            None if a.shape.rank() == 1 => sym::apply("softmax", a),
                            None => sym::apply("exp", &sym::sub(a, me)),
                        };
                        sym::mul(&soft, &gu)
                    }
                    Reduce::Norm => sym::mul(&gu, &sym::div(a, &mu())),
                };
                self.back(a, a, da)
            }
            Builtin::Softmax | Builtin::LogSoftmax => {
                let Op::Softmax { axis, log } = self.op_of(x)? else {
                    return Err(self.unsupported(x));
                };
                let g = expand(&g, &x.shape);
                let reduced = reduced_shape(&a.shape, Some(axis));
                let da = if log {
                    let s = sym::call("softmax", vec![a.clone()], Some(axis), a.shape.clone());
                    let total = axis_sum(&g, axis, reduced);
                    sym::sub(&g, &sym::mul(&s, &unsqueeze(&total, Some(axis), &a.shape)))
                } else {
                    let total = axis_sum(&sym::mul(&g, me), axis, reduced);
                    sym::mul(me, &sym::sub(&g, &unsqueeze(&total, Some(axis), &a.shape)))
                };
                self.back(a, a, da)
            }
            Builtin::Stack | Builtin::Concat => {
                let g = expand(&g, &x.shape);
                let (axis, stacking) = match self.op_of(x)? {
                    Op::Stack { axis } => (axis, true),
                    Op::Concat { axis } => (axis, false),
                    _ => return Err(self.unsupported(x)),
                };
                let mut offset = 0;
                for (i, item) in args.iter().enumerate() {
                    let adj = if stacking {
                        pick(&g, axis, i, &item.shape)
                    } else {
                        let len = item.shape.dims()[axis];
                        offset += len;
                        slice(&g, axis, offset - len, offset, &item.shape)
                    };
                    self.back(item, item, adj)?;
                }
                Ok(())
            }
            Builtin::Reshape => {
                let g = expand(&g, &x.shape);
                self.back(a, a, sym::reshape(&g, a.shape.dims()))
            }
            Builtin::Transpose => {
                let g = expand(&g, &x.shape);
                self.back(a, a, sym::transpose(&g))
            }
            Builtin::Put | Builtin::Pad => {
                let g = expand(&g, &x.shape);
                let Op::Pad { axis, before, .. } = self.op_of(x)? else {
                    return Err(self.unsupported(x));
                };
                let adj = if f == Builtin::Put {
                    pick(&g, axis, before, &a.shape)
                } else {
                    let len = a.shape.dims()[axis];
                    slice(&g, axis, before, before + len, &a.shape)
                };
                self.back(a, a, adj)
            }
            Builtin::Argmax
            | Builtin::Argmin
            | Builtin::OneHot
            | Builtin::Detach
            | Builtin::Round
            | Builtin::Floor
            | Builtin::Ceil
            | Builtin::Sign
            | Builtin::Zeros
            | Builtin::Ones
            | Builtin::ZerosLike
            | Builtin::OnesLike
            | Builtin::Randn
            | Builtin::Rand
            | Builtin::Full
            | Builtin::Linspace
            | Builtin::Arange
            | Builtin::Eye => Err(self.unsupported(x)),
        }
    }

    /// The resolved op of a loss node (its axis, its alpha), as [`Gen::fwd`] lowered it.
    fn op_of(&self, x: &S) -> Res<Op> {
        let span = x.span.clone().unwrap_or(0..0);
        self.resolved
            .borrow()
            .get(&(span.start, span.end))
            .cloned()
            .ok_or_else(|| self.unsupported(x))
    }

    fn unsupported(&self, x: &S) -> Diagnostic {
        self.error(
            "gradscope grad cannot write the gradient of this expression",
            x.span.as_ref().unwrap_or(&(0..0)),
        )
        .help("please report it; `gradscope gradcheck` still checks autograd's gradient here")
    }
}

/// Whether a built-in passes gradient to its arguments.
fn passes_gradient(b: Builtin) -> bool {
    !matches!(
        b,
        Builtin::Argmax
            | Builtin::Argmin
            | Builtin::OneHot
            | Builtin::Detach
            | Builtin::Round
            | Builtin::Floor
            | Builtin::Ceil
            | Builtin::Sign
            | Builtin::Zeros
            | Builtin::Ones
            | Builtin::ZerosLike
            | Builtin::OnesLike
            | Builtin::Randn
            | Builtin::Rand
            | Builtin::Full
            | Builtin::Linspace
            | Builtin::Arange
            | Builtin::Eye
    )
}

/// The share of the gradient of `max(p, q)` or `min(p, q)` (whose value is `m`) that goes to
/// `p`, as candle gives it: `(m == p) / (1 + (m == q))`, all of it where `m` is `p`, half at a
/// tie, none where `m` is `q` (also where `q` is NaN and `m` is `p`, as candle's max keeps `p`).
fn tie_mask(m: &S, p: &S, q: &S) -> S {
    let tie = sym::add(&sym::num(1.0), &sym::cmp(BinOp::Eq, m, q));
    sym::div(&sym::cmp(BinOp::Eq, m, p), &tie)
}

fn sym_shape(a: &S, b: &S) -> Shape {
    super::shape::broadcast(&a.shape, &b.shape).unwrap_or_else(|| a.shape.clone())
}

/// `sqrt(v)` of a name or a number.
fn sqrt_of(v: S) -> S {
    sym::apply("sqrt", &v)
}

/// `sqrt(2 * pi)`.
fn sqrt_2pi() -> S {
    let two_pi = sym::mul(&sym::num(2.0), &sym::name("pi", Shape::scalar()));
    sym::apply("sqrt", &two_pi)
}

fn zeros(shape: &Shape) -> S {
    if shape.is_scalar() {
        return sym::num(0.0);
    }
    let args = shape.dims().iter().map(|&d| sym::num(d as f64)).collect();
    sym::call("zeros", args, None, shape.clone())
}

/// `g` at the full `shape` (it may be a broadcast of it): `g * ones(...)`.
fn expand(g: &S, shape: &Shape) -> S {
    if &g.shape == shape {
        return g.clone();
    }
    let args = shape.dims().iter().map(|&d| sym::num(d as f64)).collect();
    let ones = sym::call("ones", args, None, shape.clone());
    sym::mul(g, &ones)
}

/// The adjoint `e` of a value of shape `from` (which `e` may be a broadcast of) summed over the
/// axes where `from` is larger than `target`, so it broadcasts to `target`: a broadcast's
/// adjoint. A scalar `e` stands for as many equal elements: their sum is a multiple of it.
fn reduce_to(e: &S, from: &Shape, target: &Shape) -> S {
    let full = super::shape::broadcast(&e.shape, from).unwrap_or_else(|| from.clone());
    if super::shape::broadcast(&full, target).as_ref() == Some(target) {
        return e.clone();
    }
    if e.shape.is_scalar() {
        let count = full.elements().unwrap_or(1) / target.elements().unwrap_or(1).max(1);
        return sym::mul(&sym::num(count as f64), e);
    }
    let e = &expand(e, &full);
    let (r, t) = (e.shape.rank(), target.rank());
    // The target's size on each axis of `e` (None: an axis the target lacks).
    let aligned = |k: usize| (k + t >= r).then(|| target.dims()[k + t - r]);
    let summed: Vec<usize> = (0..r)
        .filter(|&k| match aligned(k) {
            None => true,
            Some(tk) => tk == 1 && e.shape.dims()[k] != 1,
        })
        .collect();
    if summed.len() == r {
        let all = sym::call("sum", vec![e.clone()], None, Shape::scalar());
        return sym::reshape(&all, target.dims());
    }
    let mut out = e.clone();
    for &k in summed.iter().rev() {
        let shape = reduced_shape(&out.shape, Some(k));
        out = axis_sum(&out, k, shape);
    }
    // Summed axes the target keeps as 1 come back where they stand unless they lead.
    let dims: Vec<usize> = (0..r)
        .filter(|&k| aligned(k).is_some())
        .map(|k| {
            if summed.contains(&k) {
                1
            } else {
                e.shape.dims()[k]
            }
        })
        .collect();
    let lead = dims.iter().take_while(|&&d| d == 1).count();
    if dims[lead..] == *out.shape.dims() {
        return out;
    }
    sym::reshape(&out, &dims)
}

fn reduced_shape(s: &Shape, axis: Option<usize>) -> Shape {
    super::shape::reduce(s, axis)
}

/// `sum(e, axis=k)`.
fn axis_sum(e: &S, k: usize, shape: Shape) -> S {
    sym::call("sum", vec![e.clone()], Some(k), shape)
}

/// A reduction's adjoint `g` put back where the axis was, so it broadcasts over `x`: a reshape
/// that restores the axis as 1 (none needed for a scalar or a leading axis).
fn unsqueeze(g: &S, axis: Option<usize>, x: &Shape) -> S {
    let Some(k) = axis else {
        return g.clone();
    };
    if g.shape.is_scalar() {
        return g.clone();
    }
    let reduced = reduced_shape(x, Some(k));
    let g = expand(g, &reduced);
    if k == 0 {
        return g;
    }
    let mut dims = g.shape.0.clone();
    dims.insert(k, 1);
    sym::reshape(&g, &dims)
}

/// Element `i` of axis `axis` of `g`, as `g[:, i]`.
fn pick(g: &S, axis: usize, i: usize, shape: &Shape) -> S {
    let mut items = vec![
        IndexItem::Slice {
            start: None,
            end: None
        };
        axis
    ];
    items.push(IndexItem::At(i as i64));
    sym::index(g, items, shape.clone())
}

/// Elements `lo..hi` of axis `axis` of `g`, as `g[:, lo:hi]`.
fn slice(g: &S, axis: usize, lo: usize, hi: usize, shape: &Shape) -> S {
    let mut items = vec![
        IndexItem::Slice {
            start: None,
            end: None
        };
        axis
    ];
    items.push(IndexItem::Slice {
        start: Some(lo as i64),
        end: Some(hi as i64),
    });
    sym::index(g, items, shape.clone())
}

/// The adjoint of `t[items]` (`t` of `shape`) from the index's adjoint `g`: each single index put
/// back as its axis (`put`), each partial slice padded with zeros (`pad`), first axis first.
fn unindex(g: &S, items: &[IndexItem], shape: &Shape) -> S {
    let mut out = g.clone();
    for (dim, item) in items.iter().enumerate() {
        let len = shape.dims()[dim] as i64;
        let norm = |i: i64| if i < 0 { i + len } else { i };
        let axis = (dim > 0).then_some(dim);
        let mut dims = out.shape.0.clone();
        match *item {
            IndexItem::At(i) => {
                let at = norm(i);
                dims.insert(dim, len as usize);
                let args = vec![out.clone(), sym::num(at as f64), sym::num(len as f64)];
                out = sym::call("put", args, axis, Shape(dims));
            }
            IndexItem::Slice { start, end } => {
                let lo = start.map_or(0, norm).clamp(0, len);
                let hi = end.map_or(len, norm).clamp(0, len);
                if lo == 0 && hi == len {
                    continue;
                }
                dims[dim] = len as usize;
                let args = vec![
                    out.clone(),
                    sym::num(lo as f64),
                    sym::num((len - hi) as f64),
                ];
                out = sym::call("pad", args, axis, Shape(dims));
            }
        }
    }
    out
}
