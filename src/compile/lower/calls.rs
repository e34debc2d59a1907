//! Lowering calls: built-in functions, user functions from `[functions]`, the arguments they take
//! (numbers, axes, shapes), reshaping, indexing and the constructors (`zeros`, `randn`, ...).

use candle_core::{Device, Tensor};
use rand_distr::{Distribution, StandardNormal, StandardUniform};

use std::sync::Arc;

use super::{Kind, Lowered, Lowerer, NoFunctions, Reported, Value};
use crate::compile::function::FnOp;
use crate::compile::ops::Elementwise;
use crate::compile::plan::{Binary, Narrow, Op, Reduce, Reg, Unary};
use crate::compile::shape::{self, MAX_ELEMENTS, Shape};
use crate::diagnostic::{Diagnostic, Span, did_you_mean};
use crate::lang::ast::{Expr, ExprKind, IndexItem, Kwarg, Spanned};
use crate::lang::builtins::{AxisArg, Builtin};
use crate::lang::file::FunctionDef;

impl Lowerer {
    /// A call of a built-in or a `[functions]` function.
    pub(super) fn call(
        &mut self,
        func: &Spanned<String>,
        args: &[Expr],
        kwargs: &[Kwarg],
        span: &Span,
    ) -> Lowered {
        let name = func.node.as_str();
        if let Some(fd) = self.functions.iter().find(|f| f.name.node == name).cloned() {
            if let Some(k) = kwargs.first() {
                let names: Vec<&str> = fd.args.iter().map(|a| a.node.as_str()).collect();
                return Err(self.fail(
                    format!("`{name}` takes no keyword arguments"),
                    &k.name.span,
                    Some(format!(
                        "pass them by position: {name}({})",
                        names.join(", ")
                    )),
                ));
            }
            return self.user_call(&fd, args, span);
        }
        let Some(f) = Builtin::from_name(name) else {
            if let Some((here, names)) = &self.no_functions
                && names.iter().any(|n| n == name)
            {
                let (message, help) = match here {
                    NoFunctions::Body(outer) => (
                        match outer == name {
                            true => {
                                format!("`{name}` calls itself: a [functions] entry cannot recurse")
                            }
                            false => format!(
                                "`{outer}` calls `{name}`: a [functions] entry cannot call another one"
                            ),
                        },
                        "a function's value uses builtins, consts and its args; call both from the loss, or write the other's value out here",
                    ),
                    NoFunctions::Data(entry) => (
                        format!(
                            "data `{entry}` calls `{name}`, a [functions] entry: data are computed once, without them"
                        ),
                        "write the function's value out here, or call it from the loss or a metric",
                    ),
                };
                return Err(self.fail(message, &func.span, Some(help.into())));
            }
            let help = match self.env.get(name) {
                Some(b) => Some(format!("`{name}` is {}, not a function", b.kind.describe())),
                None => crate::lang::builtins::written_as(name)
                    .map(String::from)
                    .or_else(|| did_you_mean(name, Builtin::names())),
            };
            self.error(format!("unknown function `{name}`"), &func.span)
                .help = help;
            return Err(Reported);
        };
        let axis_kw = self.axis_keyword(f, kwargs)?;
        let mut args = args.to_vec();
        let mut join_axis = None;
        match (f.axis(), axis_kw) {
            (Some(AxisArg::At(i)), Some(a)) if args.len() == i => args.push(a.clone()),
            (Some(AxisArg::At(i)), Some(a)) => {
                let message = if args.len() > i {
                    format!("`{name}` is given its axis twice, by position and as `axis=`")
                } else {
                    format!("`{name}` needs its first argument before `axis=`")
                };
                return Err(self.fail(
                    message,
                    &a.span,
                    Some(format!("call it as {}", f.signature())),
                ));
            }
            (Some(AxisArg::KeywordOnly), a) => join_axis = a,
            _ => {}
        }
        let args = args.as_slice();
        if !f.accepts(args.len()) {
            let a = f.arity();
            let want = match a.max {
                Some(m) if m == a.min => format!("{m}"),
                Some(m) => format!("{} to {m}", a.min),
                None => format!("at least {}", a.min),
            };
            let plural = if want == "1" { "" } else { "s" };
            let were = if args.len() == 1 { "was" } else { "were" };
            // NumPy's max(x) is a reduction; here max and min are elementwise of two.
            let help = match f {
                Builtin::Max | Builtin::Min if args.len() == 1 => format!(
                    "`{name}(a, b)` is elementwise; for the {} element use a{name}(x) or a{name}(x, axis=k)",
                    if f == Builtin::Max {
                        "largest"
                    } else {
                        "smallest"
                    }
                ),
                _ => format!("call it as {}", f.signature()),
            };
            return Err(self.fail(
                format!(
                    "`{name}` takes {want} argument{plural}, but {} {were} given",
                    args.len()
                ),
                span,
                Some(help),
            ));
        }
        let detach = usize::from(f == Builtin::Detach);
        self.detached += detach;
        let lowered: Vec<Lowered> = args.iter().map(|a| self.expr(a)).collect();
        self.detached -= detach;
        let regs: Vec<Reg> = lowered.into_iter().collect::<Result<_, _>>()?;
        let arg_span = |i: usize| args[i].span.clone();
        let same = |this: &Self| this.shape(regs[0]).clone();
        let unary = |this: &mut Self, u: Unary| {
            let s = same(this);
            this.emit(Op::Unary(u), vec![regs[0]], s, span)
        };
        match f {
            Builtin::Exp => unary(self, Unary::Exp),
            Builtin::Log => unary(self, Unary::Log),
            Builtin::Log1p => unary(self, Unary::Custom(Elementwise::Log1p)),
            Builtin::Sqrt => unary(self, Unary::Sqrt),
            Builtin::Abs => unary(self, Unary::Custom(Elementwise::Abs)),
            Builtin::Sqr => unary(self, Unary::Sqr),
            Builtin::Sin => unary(self, Unary::Sin),
            Builtin::Cos => unary(self, Unary::Cos),
            Builtin::Tanh => unary(self, Unary::Tanh),
            Builtin::Sigmoid => unary(self, Unary::Custom(Elementwise::Sigmoid)),
            Builtin::Softplus => unary(self, Unary::Custom(Elementwise::Softplus)),
            Builtin::Relu => unary(self, Unary::Relu),
            Builtin::Gelu => unary(self, Unary::Custom(Elementwise::Gelu)),
            Builtin::Silu => unary(self, Unary::Silu),
            Builtin::Erf => unary(self, Unary::Erf),
            Builtin::Elu => {
                let alpha = match regs.get(1) {
                    Some(&a) => self.number_arg(a, &arg_span(1), "elu's alpha")?,
                    None => 1.0,
                };
                unary(self, Unary::Elu(alpha))
            }
            Builtin::Round | Builtin::Floor | Builtin::Ceil | Builtin::Sign => {
                self.refuse_gradient_loss(
                    name,
                    regs[0],
                    span,
                    "its derivative is zero almost everywhere",
                )?;
                let u = match f {
                    Builtin::Round => Unary::Round,
                    Builtin::Floor => Unary::Floor,
                    Builtin::Ceil => Unary::Ceil,
                    _ => Unary::Sign,
                };
                unary(self, u)
            }
            Builtin::Detach => {
                let s = same(self);
                self.emit(Op::Detach, regs, s, span)
            }
            Builtin::Min | Builtin::Max => {
                self.warn_integer_second_argument(f, regs[0], &args[1]);
                let s = self.broadcast(name, regs[0], regs[1], span)?;
                let b = if f == Builtin::Min {
                    Binary::Min
                } else {
                    Binary::Max
                };
                self.emit(Op::Binary(b), regs, s, span)
            }
            Builtin::Pow => self.power(regs[0], regs[1], span, span),
            Builtin::Clamp | Builtin::Where => {
                let s = self.broadcast(name, regs[0], regs[1], span)?;
                let third = self.shape(regs[2]).clone();
                let s = self.broadcast_shapes(name, s, third, &regs, span)?;
                let op = if f == Builtin::Clamp {
                    Op::Clamp
                } else {
                    Op::Where
                };
                self.emit(op, regs, s, span)
            }
            Builtin::Sum
            | Builtin::Mean
            | Builtin::Amax
            | Builtin::Amin
            | Builtin::Logsumexp
            | Builtin::Norm => {
                let op = match f {
                    Builtin::Sum => Reduce::Sum,
                    Builtin::Mean => Reduce::Mean,
                    Builtin::Amax => Reduce::Max,
                    Builtin::Amin => Reduce::Min,
                    Builtin::Logsumexp => Reduce::LogSumExp,
                    _ => Reduce::Norm,
                };
                let x = regs[0];
                let axis = match regs.get(1) {
                    Some(&a) => Some(self.axis_arg(x, a, &arg_span(1))?),
                    None => None,
                };
                if axis.is_none() && self.shape(x).elements() == Some(0) {
                    return Err(self.fail(format!("`{name}` of an empty tensor"), span, None));
                }
                let s = shape::reduce(self.shape(x), axis);
                self.emit(Op::Reduce { op, axis }, vec![x], s, span)
            }
            Builtin::Softmax | Builtin::LogSoftmax => {
                let x = regs[0];
                if self.shape(x).is_scalar() {
                    return Err(self.fail(
                        format!("`{name}` needs a tensor with at least one axis"),
                        span,
                        None,
                    ));
                }
                let axis = match regs.get(1) {
                    Some(&a) => self.axis_arg(x, a, &arg_span(1))?,
                    None => self.shape(x).rank() - 1,
                };
                let s = same(self);
                let log = f == Builtin::LogSoftmax;
                self.emit(Op::Softmax { axis, log }, vec![x], s, span)
            }
            Builtin::Argmax | Builtin::Argmin => {
                let x = regs[0];
                self.refuse_gradient_loss(
                    name,
                    x,
                    span,
                    "an index has no derivative, so no gradient reaches the param through it; it is meant for data and metrics",
                )?;
                let axis = self.axis_arg(x, regs[1], &arg_span(1))?;
                let s = shape::reduce(self.shape(x), Some(axis));
                let max = f == Builtin::Argmax;
                self.emit(Op::ArgReduce { axis, max }, vec![x], s, span)
            }
            Builtin::OneHot => self.one_hot(regs[0], regs[1], args, span),
            Builtin::Put => self.put(&regs, args, span),
            Builtin::Pad => self.pad(&regs, args, span),
            Builtin::Stack | Builtin::Concat => self.join(f, &regs, args, join_axis, span),
            Builtin::Reshape => self.reshape(&regs, args, span),
            Builtin::Transpose => self.transpose(regs[0], span),
            // Only the shape of `x` matters, so the result is known now (and carries no gradient).
            Builtin::ZerosLike | Builtin::OnesLike => {
                let fill = if f == Builtin::ZerosLike { 0.0 } else { 1.0 };
                let dims = self.shape(regs[0]).dims().to_vec();
                let t = Tensor::full(fill, dims, &Device::Cpu)
                    .map_err(|e| self.fail(e.to_string(), span, None))?;
                self.constant(t, span)
            }
            Builtin::Zeros
            | Builtin::Ones
            | Builtin::Randn
            | Builtin::Rand
            | Builtin::Full
            | Builtin::Linspace
            | Builtin::Arange
            | Builtin::Eye => self.construct(f, &regs, args, span),
        }
    }

    /// The expression given as `axis=`, if any; any other keyword is an error with did-you-mean.
    fn axis_keyword<'k>(
        &mut self,
        f: Builtin,
        kwargs: &'k [Kwarg],
    ) -> Result<Option<&'k Expr>, Reported> {
        let name = f.name();
        let mut axis = None;
        for k in kwargs {
            if f.keywords().contains(&k.name.node.as_str()) {
                axis = Some(&k.value);
                continue;
            }
            let help = match f.keywords() {
                [] => format!(
                    "`{name}` takes no keyword arguments; call it as {}",
                    f.signature()
                ),
                known => did_you_mean(&k.name.node, known.iter().copied()).unwrap_or_else(|| {
                    format!("`{name}` takes one keyword, `axis` (torch calls it `dim`)")
                }),
            };
            return Err(self.fail(
                format!("unknown keyword argument `{}` for `{name}`", k.name.node),
                &k.name.span,
                Some(help),
            ));
        }
        Ok(axis)
    }

    /// Refuses `name` on a value carrying a param's gradient outside `detach(...)`: `why` says
    /// why the gradient through it would silently vanish.
    fn refuse_gradient_loss(
        &mut self,
        name: &str,
        x: Reg,
        span: &Span,
        why: &str,
    ) -> Result<(), Reported> {
        if !self.grad[x] || self.detached > 0 {
            return Ok(());
        }
        Err(self.fail(
            format!("`{name}` would silently drop the gradient of a param"),
            span,
            Some(format!(
                "{why}; wrap it as detach({name}(...)) if a constant is meant"
            )),
        ))
    }

    /// Warns that `max(x, 1)` is elementwise when `1` could also be read as an axis of `x`, as
    /// NumPy's and torch's `max(x, 1)` would.
    fn warn_integer_second_argument(&mut self, f: Builtin, x: Reg, second: &Expr) {
        let ExprKind::Number(k) = second.kind else {
            return;
        };
        let literal = self
            .source
            .text
            .get(second.span.clone())
            .unwrap_or_default()
            .to_string();
        if !literal.bytes().all(|b| b.is_ascii_digit()) || k >= self.shape(x).rank() as f64 {
            return;
        }
        let (name, reduction) = match f {
            Builtin::Min => ("min", "amin"),
            _ => ("max", "amax"),
        };
        let d = Diagnostic::warning(format!(
            "`{name}(x, {literal})` is an elementwise {name} with {literal} here"
        ))
        .at(&self.source, second.span.clone())
        .label(format!("NumPy and torch would read this as axis {literal}"))
        .help(format!(
            "for the {name} along axis {literal} write `{reduction}(x, axis={literal})`; for the elementwise {name} write `{name}(x, {literal}.0)`"
        ));
        self.diags.push(d);
    }

    /// `transpose(x)` and `x.T`: the last two axes swapped.
    pub(super) fn transpose(&mut self, x: Reg, span: &Span) -> Lowered {
        let s = self.shape(x).clone();
        if s.rank() < 2 {
            return Err(self.fail(
                format!("`transpose` swaps the last two axes, but this has shape {s}"),
                span,
                Some("reshape a vector to a column first: reshape(x, -1, 1)".into()),
            ));
        }
        let mut d = s.0.clone();
        let r = d.len();
        d.swap(r - 2, r - 1);
        self.emit(Op::Transpose, vec![x], Shape(d), span)
    }

    /// `one_hot(labels, n)`: labels known before the run must be whole numbers in 0..n.
    fn one_hot(&mut self, labels: Reg, n: Reg, args: &[Expr], span: &Span) -> Lowered {
        self.refuse_gradient_loss(
            "one_hot",
            labels,
            span,
            "labels are integers and pass no gradient",
        )?;
        let n = self.int_arg(n, &args[1].span, "the number of classes")?;
        if n < 1 {
            return Err(self.fail(
                format!("one_hot needs at least one class, got {n}"),
                &args[1].span,
                None,
            ));
        }
        let n = n as usize;
        let known = self.value_before_run(labels, &mut Default::default());
        let values = known.and_then(|t| t.flatten_all().and_then(|t| t.to_vec1::<f64>()).ok());
        if let Some(bad) = values
            .unwrap_or_default()
            .into_iter()
            .find(|&v| v.fract() != 0.0 || v < 0.0 || v >= n as f64)
        {
            return Err(self.fail(
                format!("one_hot's labels must be whole numbers in 0..{n}, but one is {bad}"),
                &args[0].span,
                Some(format!("labels are class indices from 0 to {}", n - 1)),
            ));
        }
        let mut dims = self.shape(labels).0.clone();
        dims.push(n);
        self.emit(Op::OneHot { n }, vec![labels], Shape(dims), span)
    }

    /// `put(x, i, n, axis)`: a new axis of length `n` at `axis` (default 0) holding `x` at index
    /// `i` and zeros elsewhere; the gradient of `t[..., i, ...]` written out.
    fn put(&mut self, regs: &[Reg], args: &[Expr], span: &Span) -> Lowered {
        let x = regs[0];
        let i = self.int_arg(regs[1], &args[1].span, "put's index")?;
        let n = self.int_arg(regs[2], &args[2].span, "put's length")?;
        if n < 1 || !(0..n).contains(&i) {
            return Err(self.fail(
                format!("put's index {i} is not in 0..{n}"),
                &args[1].span,
                Some("put(x, i, n) places x at index i of a new axis of length n".into()),
            ));
        }
        let s = self.shape(x).clone();
        let axis = match regs.get(3) {
            Some(&a) => self.axis_in(a, s.rank() + 1, &format!("`put` of {s}"), &args[3].span)?,
            None => 0,
        };
        let mut dims = s.0.clone();
        dims.insert(axis, 1);
        let column = self.emit(Op::Reshape, vec![x], Shape(dims.clone()), span)?;
        dims[axis] = n as usize;
        let pad = Op::Pad {
            axis,
            before: i as usize,
            after: (n - 1 - i) as usize,
        };
        self.emit(pad, vec![column], Shape(dims), span)
    }

    /// `pad(x, before, after, axis)`: `before` zeros ahead of `x` along `axis` (default 0) and
    /// `after` behind it; the gradient of a slice written out.
    fn pad(&mut self, regs: &[Reg], args: &[Expr], span: &Span) -> Lowered {
        let x = regs[0];
        let s = self.shape(x).clone();
        if s.is_scalar() {
            return Err(self.fail(
                "`pad` extends an existing axis, but this is a scalar",
                &args[0].span,
                Some("put(x, i, n) makes a new axis".into()),
            ));
        }
        let mut sizes = [0usize; 2];
        for (k, what) in [(1, "pad's before"), (2, "pad's after")] {
            let v = self.int_arg(regs[k], &args[k].span, what)?;
            if v < 0 {
                return Err(self.fail(format!("{what} is negative: {v}"), &args[k].span, None));
            }
            sizes[k - 1] = v as usize;
        }
        let axis = match regs.get(3) {
            Some(&a) => self.axis_arg(x, a, &args[3].span)?,
            None => 0,
        };
        let mut dims = s.0.clone();
        dims[axis] = dims[axis].saturating_add(sizes[0]).saturating_add(sizes[1]);
        let pad = Op::Pad {
            axis,
            before: sizes[0],
            after: sizes[1],
        };
        self.emit(pad, vec![x], Shape(dims), span)
    }

    /// `stack(...)` (along a new axis) and `concat(...)` (along an existing one); `axis` is the
    /// `axis=` expression, 0 when absent.
    fn join(
        &mut self,
        f: Builtin,
        regs: &[Reg],
        args: &[Expr],
        axis: Option<&Expr>,
        span: &Span,
    ) -> Lowered {
        let name = f.name();
        let first = self.shape(regs[0]).clone();
        let stacking = f == Builtin::Stack;
        if !stacking && first.is_scalar() {
            return Err(self.fail(
                "`concat` joins along an existing axis, but the first argument is a scalar",
                &args[0].span,
                Some("use stack(...) to make a new axis".into()),
            ));
        }
        let rank = first.rank() + usize::from(stacking);
        let axis = match axis {
            Some(e) => {
                let a = self.expr(e)?;
                self.axis_in(a, rank, &format!("`{name}` of {first}"), &e.span)?
            }
            None => 0,
        };
        let mut dims = first.0.clone();
        if stacking {
            dims.insert(axis, regs.len());
        } else {
            dims[axis] = 0;
        }
        for (&r, e) in regs.iter().zip(args) {
            let s = self.shape(r).clone();
            let fits = if stacking {
                s == first
            } else {
                s.rank() == first.rank()
                    && (0..s.rank()).all(|k| k == axis || s.dims()[k] == first.dims()[k])
            };
            if !fits {
                let (message, help) = if stacking {
                    (
                        format!("`stack` needs tensors of one shape: {first} and {s}"),
                        "every argument of stack has the first one's shape".to_string(),
                    )
                } else {
                    (
                        format!("`concat` along axis {axis} cannot join {first} and {s}"),
                        format!(
                            "the arguments must have the same rank and equal sizes on every axis but {axis}"
                        ),
                    )
                };
                // `stack(a, b, 1)`: an axis written as the last argument is read as a tensor.
                let help = match e.kind {
                    ExprKind::Number(n) if s.is_scalar() && !first.is_scalar() => format!(
                        "the axis is a keyword argument: {name}(..., axis={n}); a plain {n} is read as one more tensor to join"
                    ),
                    _ => help,
                };
                return Err(self.fail(message, &e.span, Some(help)));
            }
            if !stacking {
                dims[axis] += s.dims()[axis];
            }
        }
        let op = if stacking {
            Op::Stack { axis }
        } else {
            Op::Concat { axis }
        };
        self.emit(op, regs.to_vec(), Shape(dims), span)
    }

    /// A call of a `[functions]` entry: its value and gradient plans are lowered for the call's
    /// shapes, the arguments bound as inputs (so round/floor/sign are allowed in `value`).
    fn user_call(&mut self, fd: &FunctionDef, args: &[Expr], span: &Span) -> Lowered {
        let name = &fd.name.node;
        if args.len() != fd.args.len() {
            return Err(self.fail(
                format!(
                    "`{name}` takes {}, but {} given",
                    crate::format::counted(fd.args.len(), "argument"),
                    match args.len() {
                        1 => "1 was".to_string(),
                        n => format!("{n} were"),
                    }
                ),
                span,
                None,
            ));
        }
        let lowered: Vec<Lowered> = args.iter().map(|a| self.expr(a)).collect();
        let regs: Vec<Reg> = lowered.into_iter().collect::<Result<_, _>>()?;
        let shapes: Vec<Shape> = regs.iter().map(|&r| self.shape(r).clone()).collect();
        let consts: Vec<(String, Tensor)> = self
            .env
            .iter()
            .filter_map(|(n, b)| match (&b.value, b.kind) {
                (Value::Known(t), Kind::Const) => Some((n.clone(), t.clone())),
                _ => None,
            })
            .collect();
        let body = |extra: Option<&Shape>| {
            let mut lw = Lowerer::new(&self.source, 0, name).without_functions(
                NoFunctions::Body(fd.name.node.clone()),
                self.functions.iter().map(|f| f.name.node.clone()).collect(),
            );
            for (n, t) in &consts {
                lw.bind_known(n, t.clone(), Kind::Const);
            }
            for (i, (a, s)) in fd.args.iter().zip(&shapes).enumerate() {
                lw.bind_input(&a.node, i, Kind::Data, s.clone(), a.span.clone());
            }
            if let Some(g) = extra {
                lw.bind_input(
                    "g",
                    fd.args.len(),
                    Kind::Data,
                    g.clone(),
                    fd.name.span.clone(),
                );
            }
            lw
        };
        let (value, diags) = body(None).expression(&fd.value);
        self.diags.extend(diags);
        let value = value.ok_or(Reported)?;
        let out = value.instrs[value.output].shape.clone();
        let mut grads = Vec::new();
        for ((g, a), s) in fd.grads.iter().zip(&fd.args).zip(&shapes) {
            let (plan, diags) = body(Some(&out)).expression(g);
            self.diags.extend(diags);
            let plan = plan.ok_or(Reported)?;
            let got = &plan.instrs[plan.output].shape;
            if got != s {
                return Err(self.fail(
                    format!("the gradient of `{name}` for `{}` has shape {got}, but `{}` has shape {s} here", a.node, a.node),
                    &g.span,
                    Some("a gradient has its argument's shape; g has the value's shape".into()),
                ));
            }
            grads.push(plan);
        }
        let op = Op::Function(Arc::new(FnOp {
            name: name.clone(),
            value,
            grads,
        }));
        self.emit(op, regs, out, span)
    }

    fn number_arg(&mut self, r: Reg, span: &Span, what: &str) -> Result<f64, Reported> {
        match self.known_scalar(r) {
            Some(v) => Ok(v),
            None => Err(self.fail(
                format!("{what} must be a number known before the run"),
                span,
                Some("use a literal or a const".into()),
            )),
        }
    }

    fn int_arg(&mut self, r: Reg, span: &Span, what: &str) -> Result<i64, Reported> {
        let v = self.number_arg(r, span, what)?;
        if v.fract() != 0.0 || !v.is_finite() || v.abs() > 9e15 {
            return Err(self.fail(
                format!("{what} must be a whole number, got {v}"),
                span,
                None,
            ));
        }
        Ok(v as i64)
    }

    fn axis_arg(&mut self, x: Reg, a: Reg, span: &Span) -> Result<usize, Reported> {
        let s = self.shape(x).clone();
        self.axis_in(a, s.rank(), &format!("shape {s}"), span)
    }

    /// Axis `a` resolved against `rank`; `what` names what the axis is out of range for.
    fn axis_in(&mut self, a: Reg, rank: usize, what: &str, span: &Span) -> Result<usize, Reported> {
        let axis = self.int_arg(a, span, "an axis")?;
        shape::axis(axis, rank).ok_or_else(|| {
            self.fail(
                format!("axis {axis} is out of range for {what}"),
                span,
                Some(match rank {
                    0 => "a scalar has no axes".into(),
                    1 => "a tensor of rank 1 has axis 0 (or -1 from the end)".into(),
                    r => format!(
                        "a tensor of rank {r} has axes 0 to {} (or -{r} to -1 from the end)",
                        r - 1
                    ),
                }),
            )
        })
    }

    fn dims(&mut self, regs: &[Reg], args: &[Expr]) -> Result<Vec<usize>, Reported> {
        let mut dims = Vec::new();
        for (&r, e) in regs.iter().zip(args) {
            let d = self.int_arg(r, &e.span, "a dimension")?;
            if d < 0 {
                return Err(self.fail(format!("dimension {d} is negative"), &e.span, None));
            }
            dims.push(d as usize);
        }
        Ok(dims)
    }

    fn reshape(&mut self, regs: &[Reg], args: &[Expr], span: &Span) -> Lowered {
        let x = regs[0];
        let from = self.shape(x).clone();
        let total = from.elements().unwrap_or(0);
        let mut dims = Vec::new();
        let mut infer = None;
        for (i, (&r, e)) in regs.iter().zip(args).enumerate().skip(1) {
            let d = self.int_arg(r, &e.span, "a dimension")?;
            match d {
                -1 if infer.is_none() => infer = Some(i - 1),
                d if d < 0 => {
                    return Err(self.fail(
                        format!("dimension {d} is invalid"),
                        &e.span,
                        Some("sizes are positive; one of them may be -1 to infer it".into()),
                    ));
                }
                d => dims.push(d as usize),
            }
        }
        let known: usize = dims.iter().product();
        if let Some(at) = infer {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(self.fail(
                    format!("cannot reshape {from} ({total} elements) with an inferred axis"),
                    span,
                    None,
                ));
            }
            dims.insert(at, total / known);
        } else if known != total {
            return Err(self.fail(
                format!(
                    "cannot reshape {from} ({total} elements) into {} ({known} elements)",
                    Shape(dims.clone())
                ),
                span,
                Some("the number of elements must stay the same; -1 infers one size".into()),
            ));
        }
        self.emit(Op::Reshape, vec![x], Shape(dims), span)
    }

    /// `x[...]`: single indices drop their axis, slices keep it.
    pub(super) fn index(&mut self, t: Reg, items: &[Spanned<IndexItem>], span: &Span) -> Lowered {
        let s = self.shape(t).clone();
        if items.len() > s.rank() {
            return Err(self.fail(
                format!("{} indices for a tensor of shape {s}", items.len()),
                span,
                Some(format!("it has {} axes", s.rank())),
            ));
        }
        let mut narrows = Vec::new();
        let mut squeeze = Vec::new();
        let mut out = Vec::new();
        for (dim, item) in items.iter().enumerate() {
            let len = s.dims()[dim] as i64;
            let norm = |i: i64| if i < 0 { i + len } else { i };
            match item.node {
                IndexItem::At(i) => {
                    let at = norm(i);
                    if !(0..len).contains(&at) {
                        return Err(self.fail(
                            format!("index {i} is out of range for axis {dim} of length {len}"),
                            &item.span,
                            Some(match len {
                                0 => "the axis is empty: no index is valid".to_string(),
                                _ => format!("valid indices are 0 to {} or -{len} to -1", len - 1),
                            }),
                        ));
                    }
                    narrows.push(Narrow {
                        dim,
                        start: at as usize,
                        len: 1,
                    });
                    squeeze.push(dim);
                }
                IndexItem::Slice { start, end } => {
                    let lo = start.map_or(0, norm).clamp(0, len);
                    let hi = end.map_or(len, norm).clamp(0, len);
                    if hi <= lo {
                        return Err(self.fail(
                            format!("this slice selects nothing from axis {dim} of length {len}"),
                            &item.span,
                            None,
                        ));
                    }
                    narrows.push(Narrow {
                        dim,
                        start: lo as usize,
                        len: (hi - lo) as usize,
                    });
                    out.push((hi - lo) as usize);
                }
            }
        }
        out.extend_from_slice(&s.dims()[items.len()..]);
        narrows
            .retain(|n| !(n.start == 0 && n.len == s.dims()[n.dim] && !squeeze.contains(&n.dim)));
        self.emit(Op::Index { narrows, squeeze }, vec![t], Shape(out), span)
    }

    fn construct(&mut self, f: Builtin, regs: &[Reg], args: &[Expr], span: &Span) -> Lowered {
        let name = f.name();
        let (dims, values): (Vec<usize>, Option<Vec<f64>>) = match f {
            Builtin::Zeros | Builtin::Ones | Builtin::Randn | Builtin::Rand => {
                (self.dims(regs, args)?, None)
            }
            Builtin::Full => (self.dims(&regs[1..], &args[1..])?, None),
            Builtin::Eye => {
                let n = self.dims(regs, args)?[0];
                (vec![n, n], None)
            }
            Builtin::Linspace => {
                let a = self.number_arg(regs[0], &args[0].span, "linspace's start")?;
                let b = self.number_arg(regs[1], &args[1].span, "linspace's end")?;
                let n = self.dims(&regs[2..], &args[2..])?[0];
                self.check_size(name, &Shape(vec![n]), span)?;
                self.check_room(&Shape(vec![n]), span)?;
                let step = if n > 1 { (b - a) / (n - 1) as f64 } else { 0.0 };
                let v = (0..n)
                    .map(|i| {
                        if i + 1 == n && n > 1 {
                            b
                        } else {
                            a + step * i as f64
                        }
                    })
                    .collect();
                (vec![n], Some(v))
            }
            Builtin::Arange => {
                let (a, b, step) = match regs.len() {
                    1 => (
                        0.0,
                        self.number_arg(regs[0], &args[0].span, "arange's end")?,
                        1.0,
                    ),
                    2 => (
                        self.number_arg(regs[0], &args[0].span, "arange's start")?,
                        self.number_arg(regs[1], &args[1].span, "arange's end")?,
                        1.0,
                    ),
                    _ => (
                        self.number_arg(regs[0], &args[0].span, "arange's start")?,
                        self.number_arg(regs[1], &args[1].span, "arange's end")?,
                        self.number_arg(regs[2], &args[2].span, "arange's step")?,
                    ),
                };
                let n = ((b - a) / step).ceil();
                if step == 0.0 || !n.is_finite() {
                    return Err(self.fail("arange's step must be non-zero", span, None));
                }
                let n = n.max(0.0);
                if n > MAX_ELEMENTS as f64 {
                    return Err(self.fail(
                        format!("arange would make {} elements", crate::format::fmt_num(n)),
                        span,
                        Some(format!(
                            "gradscope builds tensors of at most {MAX_ELEMENTS} elements"
                        )),
                    ));
                }
                self.check_room(&Shape(vec![n as usize]), span)?;
                let v = (0..n as usize).map(|i| a + step * i as f64).collect();
                (vec![n as usize], Some(v))
            }
            _ => unreachable!("construct is only called for constructors"),
        };
        let shape = Shape(dims.clone());
        self.check_size(name, &shape, span)?;
        // linspace and arange checked the room for their values before building them.
        if values.is_none() {
            self.check_room(&shape, span)?;
        }
        let n = shape.elements().unwrap_or(0);
        let values = match (f, values) {
            (_, Some(v)) => v,
            (Builtin::Zeros, _) => vec![0.0; n],
            (Builtin::Ones, _) => vec![1.0; n],
            (Builtin::Full, _) => {
                let v = self.number_arg(regs[0], &args[0].span, "full's value")?;
                vec![v; n]
            }
            (Builtin::Randn, _) => (0..n)
                .map(|_| StandardNormal.sample(&mut self.rng))
                .collect(),
            (Builtin::Rand, _) => (0..n)
                .map(|_| StandardUniform.sample(&mut self.rng))
                .collect(),
            (Builtin::Eye, _) => {
                let d = dims[0];
                (0..n)
                    .map(|i| if i / d == i % d { 1.0 } else { 0.0 })
                    .collect()
            }
            _ => unreachable!("value-producing constructors return their values"),
        };
        let t = Tensor::from_vec(values, dims, &Device::Cpu)
            .map_err(|e| self.fail(e.to_string(), span, None))?;
        self.constant(t, span)
    }
}
