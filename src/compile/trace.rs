//! NaN/Inf provenance: re-evaluates a step op by op to find the first operation whose output is
//! non-finite although its inputs are finite (forward), or whose incoming gradient is finite but
//! whose outgoing gradient is not (backward). Only run when a step already went non-finite, so it
//! costs nothing otherwise.

use std::sync::Arc;

use candle_core::{DType, Tensor, Var};

use super::plan::{Binary, Executable, Instr, Op, Plan, Reduce, Unary, apply};
use crate::diagnostic::{Diagnostic, SourceFile, Span};
use crate::format::{fmt_num, fmt_short};

/// Which pass produced the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Forward,
    Backward,
    /// The update of an optimizer written in the loss language.
    Update,
}

impl Pass {
    /// Where it happened, completing "`op` in ...".
    fn words(self) -> &'static str {
        match self {
            Pass::Forward => "the forward pass",
            Pass::Backward => "the backward pass",
            Pass::Update => "the update",
        }
    }
}

/// Where a non-finite value came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    pub pass: Pass,
    /// The op as the user wrote it, quoted from the source: `log(w * x)`, `100 * (y - x^2)^2`.
    pub op: String,
    pub span: Span,
    /// What to do about it: the op's usual remedy, or why the eps it already has is too small.
    pub help: String,
    /// How many elements went non-finite, of how many.
    pub count: usize,
    pub total: usize,
    /// The first few offending elements, as multi-dimensional indices.
    pub indices: Vec<Vec<usize>>,
    /// The inputs there, e.g. `log of 0`, `0 / 0`, `sqrt backward at 0`.
    pub inputs: Vec<String>,
    /// The file the op is in when it is not the run's loss file (an optimizer's own file).
    pub file: Option<Arc<SourceFile>>,
}

/// Elements reported by index.
const SHOWN: usize = 3;

impl Provenance {
    /// One line: `` `log(w * x)` in the forward pass, 2 of 4 elements at [1], [3]: log of 0, log of 0 ``.
    pub fn summary(&self) -> String {
        let at: Vec<String> = self
            .indices
            .iter()
            .filter(|i| !i.is_empty())
            .map(|i| format!("{i:?}"))
            .collect();
        let at = if at.is_empty() {
            String::new()
        } else {
            format!(" at {}", at.join(", "))
        };
        format!(
            "`{}` in {}, {} of {} elements{at}: {}",
            self.op,
            self.pass.words(),
            self.count,
            self.total,
            self.inputs_text()
        )
    }

    /// What reached the op at each shown element, once each (equal elements say it once), the
    /// elements apart by `;` (an element's inputs are apart by `,`).
    fn inputs_text(&self) -> String {
        let mut seen: Vec<&str> = Vec::new();
        for i in &self.inputs {
            if !seen.contains(&i.as_str()) {
                seen.push(i);
            }
        }
        seen.join("; ")
    }

    /// The summary prefixed with the op's line and column: `` 4:6 `log(w * x)` in the forward pass, ... ``
    /// (and its file's path first, when the op is not in `source`, the run's loss file).
    pub fn summary_at(&self, source: &Arc<SourceFile>) -> String {
        let (line, col) = self.source(source).line_col(self.span.start);
        let file = match &self.file {
            Some(f) => format!("{}:", f.path.display()),
            None => String::new(),
        };
        format!("{file}{line}:{col} {}", self.summary())
    }

    /// The file the op is in: its own, or `loss_file`, the run's.
    fn source<'a>(&'a self, loss_file: &'a Arc<SourceFile>) -> &'a Arc<SourceFile> {
        self.file.as_ref().unwrap_or(loss_file)
    }

    /// The report with a caret under the op, for `run`, `check` and the TUI.
    pub fn diagnostic(&self, source: &Arc<SourceFile>, step: Option<u64>) -> Diagnostic {
        self.report(
            source,
            step,
            "non-finite values start here",
            self.help.clone(),
        )
    }

    /// The report of where a diverging loss left the dtype's range: the op is the place, not
    /// the cause.
    pub fn overflow_diagnostic(&self, source: &Arc<SourceFile>, step: Option<u64>) -> Diagnostic {
        self.report(
            source,
            step,
            "the diverging loss overflowed here",
            "this op is only where the growing values left the dtype's range: the cause is the step size (see the halt's reason)".into(),
        )
    }

    fn report(
        &self,
        source: &Arc<SourceFile>,
        step: Option<u64>,
        headline: &str,
        help: String,
    ) -> Diagnostic {
        let when = step.map(|s| format!(" at step {s}")).unwrap_or_default();
        let what = format!("{} of {} elements", self.count, self.total);
        Diagnostic::error(format!(
            "{headline}{when}: `{}` in {} ({what})",
            self.op,
            self.pass.words()
        ))
        .at(self.source(source), self.span.clone())
        .label(self.inputs_text())
        .help(help)
    }
}

/// The remedy when `instr` reads a constant that is itself not finite (`c = inf` in [consts], a
/// literal `inf`): its inputs may all be finite, and then it did not overflow.
fn nonfinite_constant(plan: &Plan, instr: &Instr) -> Option<String> {
    let coefficients = match instr.op {
        Op::Affine { mul, add } => vec![mul, add],
        Op::Powf(e) => vec![e],
        _ => Vec::new(),
    };
    let const_arg = instr.args.iter().any(|&a| match &plan.instrs[a].op {
        Op::Const(t) => nonfinite(t).is_ok_and(|(bad, _)| !bad.is_empty()),
        _ => false,
    });
    (const_arg || coefficients.iter().any(|c| !c.is_finite())).then(|| {
        "it reads a constant that is not finite (a const or a literal such as inf or nan): \
         every element it touches is made non-finite; give the constant a finite value"
            .into()
    })
}

/// The usual remedy for a non-finite value at `instr`, by what the op is.
fn help_for(instr: &Instr, pass: Pass) -> String {
    match (&instr.op, pass) {
        (Op::Input(_), _) => "the value came in this way: if a step made it, its update is named in the run's warnings; otherwise it does not fit the run's dtype".into(),
        (Op::Unary(Unary::Log), Pass::Backward) => "log's gradient is 1/x, which overflows the dtype for a small positive x (f16 below 1.5e-5, f32 below 2.9e-39) as surely as at 0: an eps inside the log the dtype can invert (1e-4 in f16), or f32".into(),
        (Op::Unary(Unary::Log), _) => "log needs a positive argument: log(x + eps) keeps it off 0, clamp or softplus keeps it positive; or use log1p/log_softmax forms".into(),
        (Op::Unary(Unary::Sqrt), Pass::Backward) => "sqrt's gradient is infinite at 0: use sqrt(x + eps)".into(),
        (Op::Unary(Unary::Sqrt), _) => "sqrt of a negative number is NaN: keep its argument non-negative (clamp, x^2, softplus), or use abs(x) for sqrt(x^2)".into(),
        (Op::Unary(Unary::Exp), _) => "exp overflows (f32 past 88.7, f16 past 11.1): subtract the max first, or use logsumexp/log_softmax".into(),
        (Op::Binary(Binary::Div), _) => "a division by 0: add an eps to the denominator".into(),
        (Op::Reduce { op: Reduce::Sum | Reduce::Mean, .. } | Op::MatMul { .. }, Pass::Forward) => {
            "the sum overflowed the dtype: accumulate = \"f32\", or a stable form such as logsumexp".into()
        }
        (Op::Binary(Binary::Pow), _) => "a power of a negative or zero base: clamp the base".into(),
        (Op::Binary(Binary::Mul | Binary::Add | Binary::Sub) | Op::Affine { .. } | Op::Unary(Unary::Sqr), Pass::Forward) => {
            "finite inputs, an infinite result: it overflowed the dtype (f16 past 65504, bf16 and f32 past 3.4e38): scale the values down, compute in a wider dtype, or use loss scaling for gradients".into()
        }
        _ => "look at the values reaching this op; an eps or a stable formulation usually helps".into(),
    }
}

/// The range of a float dtype, from `half` and std.
pub(crate) struct Limits {
    /// The largest finite value.
    pub(crate) max: f64,
    /// The smallest positive normal value.
    min_normal: f64,
}

impl Limits {
    pub(crate) fn of(d: DType) -> Option<Self> {
        let (max, min_normal) = match d {
            DType::F16 => (half::f16::MAX.to_f64(), half::f16::MIN_POSITIVE.to_f64()),
            DType::BF16 => (half::bf16::MAX.to_f64(), half::bf16::MIN_POSITIVE.to_f64()),
            DType::F32 => (f64::from(f32::MAX), f64::from(f32::MIN_POSITIVE)),
            DType::F64 => (f64::MAX, f64::MIN_POSITIVE),
            _ => return None,
        };
        Some(Self { max, min_normal })
    }
}

/// `x >= 0` as `d` holds it (rounded to nearest, as candle casts), and the next value of `d`
/// above that.
pub(crate) fn held_and_next(x: f64, d: DType) -> (f64, f64) {
    match d {
        DType::F16 => {
            let h = half::f16::from_f64(x);
            (h.to_f64(), half::f16::from_bits(h.to_bits() + 1).to_f64())
        }
        DType::BF16 => {
            let h = half::bf16::from_f64(x);
            (h.to_f64(), half::bf16::from_bits(h.to_bits() + 1).to_f64())
        }
        DType::F32 => {
            let h = x as f32;
            (f64::from(h), f64::from(h.next_up()))
        }
        _ => (x, x.next_up()),
    }
}

/// The eps of an argument written `x + eps`: the positive constant the lowerer folded into
/// `Affine { mul: 1, add: eps }`, or the (smallest) constant side of an addition.
fn eps_of(plan: &Plan, arg: usize) -> Option<f64> {
    let instr = &plan.instrs[arg];
    let eps = match &instr.op {
        Op::Affine { mul, add } if *mul == 1.0 => *add,
        Op::Binary(Binary::Add) => instr.args.iter().find_map(|&a| match &plan.instrs[a].op {
            Op::Const(t) => super::values_f64(t).ok()?.into_iter().reduce(f64::min),
            _ => None,
        })?,
        _ => return None,
    };
    (eps > 0.0).then_some(eps)
}

/// An op whose backward is finite at `x = 0` only when the eps in its `x + eps` is large
/// enough: log's 1/eps, sqrt's 1/(2 sqrt(eps)), and a division's 1/eps (into the numerator)
/// and |a|/eps^2 (into the denominator), all with unit incoming gradient.
#[derive(Clone, Copy)]
enum EpsGuarded {
    Log,
    Sqrt,
    /// `a / (x + eps)`, with |a| the numerator's largest finite magnitude (at most the max).
    Div {
        a: f64,
    },
}

impl EpsGuarded {
    fn of(instr: &Instr, args: &[&Tensor], max: f64) -> Option<Self> {
        match instr.op {
            Op::Unary(Unary::Log) => Some(Self::Log),
            Op::Unary(Unary::Sqrt) => Some(Self::Sqrt),
            Op::Binary(Binary::Div) => {
                let a = super::values_f64(args.first()?)
                    .ok()?
                    .into_iter()
                    .filter(|v| v.is_finite())
                    .fold(0.0, |m: f64, v| m.max(v.abs()));
                Some(Self::Div { a: a.min(max) })
            }
            _ => None,
        }
    }

    /// Which argument is `x + eps`.
    fn guarded_arg(self) -> usize {
        match self {
            Self::Div { .. } => 1,
            Self::Log | Self::Sqrt => 0,
        }
    }

    /// The backward's largest magnitude at `x = 0`.
    fn reach(self, eps: f64) -> f64 {
        match self {
            Self::Log => 1.0 / eps,
            Self::Sqrt => 1.0 / (2.0 * eps.sqrt()),
            Self::Div { a } => (1.0 / eps).max(a / (eps * eps)),
        }
    }

    /// The smallest eps whose [`EpsGuarded::reach`] is at most `max`.
    fn bound(self, max: f64) -> f64 {
        match self {
            Self::Log => 1.0 / max,
            Self::Sqrt => 1.0 / (4.0 * max * max),
            Self::Div { a } => (1.0 / max).max((a / max).sqrt()),
        }
    }

    /// The backward in words, and the condition on eps.
    fn words(self, max: &str) -> (&'static str, String) {
        match self {
            Self::Log => ("log's backward 1/(x + eps)", format!("1/eps ≤ {max}")),
            Self::Sqrt => (
                "sqrt's backward 1/(2 sqrt(x + eps))",
                format!("1/(2 sqrt(eps)) ≤ {max}"),
            ),
            Self::Div { a } => (
                "the division's backward |a|/(x + eps)^2",
                format!(
                    "|a|/eps^2 and 1/eps ≤ {max}, with |a| ≤ {} here",
                    fmt_short(a)
                ),
            ),
        }
    }
}

/// Why an eps the op's argument already adds is too small for the run's dtype, with the smallest
/// eps for which the op's own backward stays finite (see [`EpsGuarded`]). None when no eps is
/// written, or the one written, as the dtype holds it, is large enough.
fn eps_too_small(cx: &Context, instr: &Instr, args: &[&Tensor]) -> Option<String> {
    let limits = Limits::of(cx.dtype)?;
    let op = EpsGuarded::of(instr, args, limits.max)?;
    let eps = eps_of(cx.plan, *instr.args.get(op.guarded_arg())?)?;
    let (held, _) = held_and_next(eps, cx.dtype);
    let bound = op.bound(limits.max);
    if held >= bound {
        return None;
    }
    let dtype = cx.dtype.as_str();
    let max = fmt_short(limits.max);
    let how = if held == 0.0 {
        ", which rounds it to 0".to_string()
    } else if held < limits.min_normal {
        format!(
            ", where it is subnormal (held as {}, below the smallest normal {})",
            fmt_short(held),
            fmt_short(limits.min_normal)
        )
    } else {
        String::new()
    };
    let reached = op.reach(held);
    let reaches = if reached.is_finite() {
        format!(
            "reaches {} at x = 0, past {dtype}'s max {max}",
            fmt_short(reached)
        )
    } else {
        "is infinite at x = 0".into()
    };
    let (form, condition) = op.words(&max);
    Some(format!(
        "eps = {eps:e} is too small for {dtype}{how}: {form} {reaches}; the smallest eps that \
         keeps it finite is {} ({condition})",
        round_up(smallest_held_at_least(bound, cx.dtype))
    ))
}

/// The smallest value of `d` at least `x > 0`.
fn smallest_held_at_least(x: f64, d: DType) -> f64 {
    match held_and_next(x, d) {
        (h, next) if h < x => next,
        (h, _) => h,
    }
}

/// `x > 0` rounded up to three significant digits, so the figure still works once typed and
/// rounded to the dtype: `1.54e-5` for f16's 1.5318e-5.
fn round_up(x: f64) -> String {
    let scale = 10f64.powi(x.log10().floor() as i32 - 2);
    format!("{:.2e}", (x / scale).ceil() * scale)
}

/// Non-finite elements of `t` as flat indices (and the total).
pub fn nonfinite(t: &Tensor) -> candle_core::Result<(Vec<usize>, usize)> {
    let v = super::values_f64(t)?;
    let bad = v
        .iter()
        .enumerate()
        .filter(|(_, x)| !x.is_finite())
        .map(|(i, _)| i)
        .collect();
    Ok((bad, v.len()))
}

/// A flat row-major index as one index per axis.
pub fn unravel(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut out = vec![0; dims.len()];
    for (k, &d) in dims.iter().enumerate().rev() {
        if d > 0 {
            out[k] = i % d;
            i /= d;
        }
    }
    out
}

/// Values of `t` broadcast to `dims`, at flat indices `at`.
fn values_at(t: &Tensor, dims: &[usize], at: &[usize]) -> Option<Vec<f64>> {
    let v: Vec<f64> = t
        .broadcast_as(dims)
        .ok()?
        .to_dtype(DType::F64)
        .ok()?
        .flatten_all()
        .ok()?
        .to_vec1()
        .ok()?;
    Some(at.iter().map(|&i| v[i]).collect())
}

/// Longest quote of the source in a message, in characters.
const QUOTE_MAX: usize = 40;

/// The text `span` covers, as the user wrote it: its first line with spaces collapsed, cut after
/// a whole word to at most [`QUOTE_MAX`] characters with ` …` when longer.
fn quote(source: &SourceFile, span: &Span) -> String {
    let text = source.text.get(span.clone()).unwrap_or("");
    let mut lines = text.trim().lines();
    let first = lines.next().unwrap_or("");
    let line = first.split_whitespace().collect::<Vec<_>>().join(" ");
    let more = lines.next().is_some();
    if more || line.chars().count() > QUOTE_MAX {
        let cut: String = line.chars().take(QUOTE_MAX - 2).collect();
        let whole_words = match line.chars().nth(QUOTE_MAX - 2) {
            Some(c) if !c.is_whitespace() => cut.rsplit_once(' ').map_or(cut.as_str(), |(w, _)| w),
            _ => &cut,
        };
        format!("{} …", whole_words.trim_end())
    } else {
        line
    }
}

/// The function a call names: `log` for `log(w * x)`; None for operators and indexing.
fn called(text: &str) -> Option<&str> {
    let text = text.trim_end();
    let name = text.split('(').next()?;
    let is_name = !name.is_empty()
        && name.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    // The call must be the whole text: `sum(w^4) * 100` is a product, not a call of sum.
    let mut depth = 0usize;
    for (i, c) in text.char_indices().skip(name.chars().count()) {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 && i + 1 != text.len() {
                    return None;
                }
            }
            _ => {}
        }
    }
    (is_name && text.len() > name.len() && depth == 0).then_some(name)
}

/// The op's text with each argument replaced by its value (negative ones in parentheses):
/// `100 * 3.4e36` for `100 * (y - x^2)^2`, when every argument was written inside it (a name's
/// value was written where it is defined, elsewhere).
fn substituted(
    source: &SourceFile,
    instr: &Instr,
    arg_spans: &[Span],
    vals: &[String],
) -> Option<String> {
    let mut out = String::new();
    let mut at = instr.span.start;
    for (span, v) in arg_spans.iter().zip(vals) {
        if span.start < at || span.end > instr.span.end {
            return None;
        }
        out.push_str(source.text.get(at..span.start)?);
        if v.starts_with('-') {
            out.push_str(&format!("({v})"));
        } else {
            out.push_str(v);
        }
        at = span.end;
    }
    out.push_str(source.text.get(at..instr.span.end)?);
    let line = out.split_whitespace().collect::<Vec<_>>().join(" ");
    (line.chars().count() <= QUOTE_MAX).then_some(line)
}

/// `log of 0`, `0 / 0`, `100 * 3.4e36`, `sqrt backward at 0`: what reached the op at each
/// shown element, in the user's words.
fn describe_inputs(
    source: &SourceFile,
    plan: &Plan,
    instr: &Instr,
    args: &[&Tensor],
    at: &[usize],
    pass: Pass,
) -> Vec<String> {
    let dims = instr.shape.dims();
    let text = source.text.get(instr.span.clone()).unwrap_or("");
    let name = called(text);
    let per_arg: Vec<Option<Vec<f64>>> = args.iter().map(|a| values_at(a, dims, at)).collect();
    if per_arg.is_empty() || per_arg.iter().any(Option::is_none) || !elementwise(&instr.op) {
        return args
            .iter()
            .map(|a| {
                let v = super::values_f64(a).unwrap_or_default();
                let (lo, hi) = v
                    .iter()
                    .filter(|x| x.is_finite())
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                        (l.min(x), h.max(x))
                    });
                let of = name.map(|n| format!("`{n}` of ")).unwrap_or_default();
                format!("{of}values in [{}, {}]", fmt_num(lo), fmt_num(hi))
            })
            .collect();
    }
    let per_arg: Vec<Vec<f64>> = per_arg.into_iter().map(Option::unwrap_or_default).collect();
    let arg_spans: Vec<Span> = instr
        .args
        .iter()
        .map(|&a| plan.instrs[a].span.clone())
        .collect();
    (0..at.len())
        .map(|e| {
            let vals: Vec<String> = per_arg.iter().map(|a| fmt_num(a[e])).collect();
            let written = match name {
                Some(n) => format!("{n} of {}", vals.join(", ")),
                None => substituted(source, instr, &arg_spans, &vals).unwrap_or_else(|| match vals
                    .len()
                {
                    1 => format!("input {}", vals[0]),
                    _ => format!("inputs {}", vals.join(", ")),
                }),
            };
            match pass {
                Pass::Backward => match name {
                    Some(n) => format!("{n} backward at {}", vals.join(", ")),
                    None => format!("backward at {written}"),
                },
                Pass::Forward | Pass::Update => written,
            }
        })
        .collect()
}

fn elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_)
            | Op::Affine { .. }
            | Op::Powf(_)
            | Op::Binary(_)
            | Op::BiasAdd
            | Op::Where
            | Op::Clamp
    )
}

/// What one traced evaluation knows: the source (for quotes), the plan and the run's dtype.
struct Context<'a> {
    source: &'a SourceFile,
    plan: &'a Plan,
    dtype: DType,
}

fn provenance(
    cx: &Context,
    instr: &Instr,
    pass: Pass,
    args: &[&Tensor],
    bad: &[usize],
    total: usize,
    dims: &[usize],
) -> Provenance {
    let shown: Vec<usize> = bad.iter().copied().take(SHOWN).collect();
    Provenance {
        pass,
        op: quote(cx.source, &instr.span),
        span: instr.span.clone(),
        help: eps_too_small(cx, instr, args)
            .or_else(|| nonfinite_constant(cx.plan, instr))
            .unwrap_or_else(|| help_for(instr, pass)),
        count: bad.len(),
        total,
        indices: shown.iter().map(|&i| unravel(i, dims)).collect(),
        inputs: match instr.op {
            // Nothing inside this evaluation made it: the value came in non-finite.
            Op::Input(_) if pass == Pass::Update => {
                vec!["already non-finite when the update began (made so by an earlier one)".into()]
            }
            Op::Input(_) => vec![
                "already non-finite when the loss began (out of the dtype's range, or made so \
                 by an earlier update)"
                    .into(),
            ],
            _ => describe_inputs(cx.source, cx.plan, instr, args, &shown, pass),
        },
        file: None,
    }
}

/// Finds where the first non-finite value of one evaluation came from. `inputs` are the data
/// tensors then the param values. None when everything is finite.
pub fn trace(
    exec: &Executable,
    source: &SourceFile,
    inputs: &[&Tensor],
) -> candle_core::Result<Option<Provenance>> {
    let plan = exec.plan();
    let cx = Context {
        source,
        plan,
        dtype: inputs.first().map_or(DType::F32, |t| t.dtype()),
    };
    let (values, probes) = exec.run_traced(inputs, true).map_err(|e| e.error)?;
    if let Some(p) = first_nonfinite(&cx, &values, Pass::Forward)? {
        return Ok(Some(p));
    }
    // Backward: dL/dt of every intermediate from its probe, then each op's own contribution,
    // from the loss back, until one turns a finite gradient into a non-finite one.
    let out = match &probes[plan.output] {
        Some(p) => (&values[plan.output] + p.as_tensor())?,
        None => values[plan.output].clone(),
    };
    let store = out.backward()?;
    for k in (0..plan.instrs.len()).rev() {
        let instr = &plan.instrs[k];
        if instr.args.is_empty() || !instr.op.passes_gradient() {
            continue;
        }
        let Some(g) = probes[k].as_ref().and_then(|p| store.get(p.as_tensor())) else {
            continue;
        };
        if !nonfinite(g)?.0.is_empty() {
            continue;
        }
        let vars: Vec<Var> = instr
            .args
            .iter()
            .map(|&a| Var::from_tensor(&values[a].detach()))
            .collect::<candle_core::Result<_>>()?;
        let arg_tensors: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let local = apply(&instr.op.traced(), &arg_tensors, &instr.shape)?;
        let grads = (local * g.detach())?.sum_all()?.backward()?;
        for (j, v) in vars.iter().enumerate() {
            let Some(contrib) = grads.get(v.as_tensor()) else {
                continue;
            };
            let (bad, total) = nonfinite(contrib)?;
            if !bad.is_empty() {
                let arg_values: Vec<&Tensor> = instr.args.iter().map(|&a| &values[a]).collect();
                let mut p = provenance(
                    &cx,
                    instr,
                    Pass::Backward,
                    &arg_values,
                    &bad,
                    total,
                    contrib.dims(),
                );
                if arg_values.len() > 1 {
                    p.inputs.push(format!("(into argument {})", j + 1));
                }
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

/// The first value of `values` (one per instruction, in evaluation order) that is non-finite:
/// its inputs are finite, so its op is where non-finite values start.
fn first_nonfinite(
    cx: &Context,
    values: &[Tensor],
    pass: Pass,
) -> candle_core::Result<Option<Provenance>> {
    for (k, instr) in cx.plan.instrs.iter().enumerate() {
        let (bad, total) = nonfinite(&values[k])?;
        if !bad.is_empty() {
            let args: Vec<&Tensor> = instr.args.iter().map(|&a| &values[a]).collect();
            let dims = instr.shape.dims();
            return Ok(Some(provenance(cx, instr, pass, &args, &bad, total, dims)));
        }
    }
    Ok(None)
}

/// Where an update's first non-finite value comes from: `exec` is an optimizer's update, in
/// `source` (its own file), evaluated on `inputs`. None when every value is finite.
pub fn trace_update(
    exec: &Executable,
    source: &Arc<SourceFile>,
    inputs: &[&Tensor],
) -> candle_core::Result<Option<Provenance>> {
    let cx = Context {
        source,
        plan: exec.plan(),
        dtype: inputs.first().map_or(DType::F32, |t| t.dtype()),
    };
    let (values, _) = exec.run_traced(inputs, false).map_err(|e| e.error)?;
    let found = first_nonfinite(&cx, &values, Pass::Update)?;
    Ok(found.map(|p| Provenance {
        file: Some(Arc::clone(source)),
        ..p
    }))
}

/// What low precision did to one op's output, against the same op evaluated in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct PrecisionStats {
    /// The op as the user wrote it, quoted from the source.
    pub op: String,
    pub span: Span,
    pub total: usize,
    /// Inf where f64 is finite.
    pub overflowed: usize,
    /// Exactly zero where f64 is not.
    pub flushed: usize,
    /// Non-zero but below the dtype's smallest normal number.
    pub subnormal: usize,
}

/// Every op of one evaluation whose output overflowed, flushed to zero or went subnormal in the
/// run's dtype, compared element by element with an f64 evaluation from the same inputs.
pub fn precision(
    exec: &Executable,
    source: &SourceFile,
    inputs: &[&Tensor],
) -> candle_core::Result<Vec<PrecisionStats>> {
    let plan = exec.plan();
    let dtype = inputs.first().map_or(DType::F32, |t| t.dtype());
    let wide = Executable::new(plan.clone(), DType::F64, None)?;
    let wide_inputs: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(DType::F64))
        .collect::<candle_core::Result<_>>()?;
    let wide_refs: Vec<&Tensor> = wide_inputs.iter().collect();
    let (low, _) = exec.run_traced(inputs, false).map_err(|e| e.error)?;
    let (high, _) = wide.run_traced(&wide_refs, false).map_err(|e| e.error)?;
    let tiny = Limits::of(dtype).map_or(f64::MIN_POSITIVE, |l| l.min_normal);
    let mut out = Vec::new();
    for (k, instr) in plan.instrs.iter().enumerate() {
        if matches!(instr.op, Op::Input(_) | Op::Const(_)) {
            continue;
        }
        let a = super::values_f64(&low[k])?;
        let b = super::values_f64(&high[k])?;
        let mut s = PrecisionStats {
            op: quote(source, &instr.span),
            span: instr.span.clone(),
            total: a.len(),
            overflowed: 0,
            flushed: 0,
            subnormal: 0,
        };
        for (x, y) in a.iter().zip(&b) {
            if x.is_infinite() && y.is_finite() {
                s.overflowed += 1;
            } else if *x == 0.0 && *y != 0.0 {
                s.flushed += 1;
            } else if *x != 0.0 && x.abs() < tiny {
                s.subnormal += 1;
            }
        }
        if s.overflowed + s.flushed + s.subnormal > 0 {
            out.push(s);
        }
    }
    Ok(out)
}
