//! Holds a gradient program to autograd's numbers. The run's loss program and then the gradient
//! program's text, parsed back, are lowered into one plan with data and params as inputs that
//! carry no gradient (as constants, so `sign(w)` is fine), and lowered exactly as the run's own
//! loss is (a param exponent stays `exp(b log a)`, never a folded power); each `grad_<param>` is
//! compared with autograd's gradient in f64, normwise to [`TOLERANCE`], with every non-finite
//! value in the same place.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::{Backward, run_program};
use crate::compile::lower::{Kind, Lowerer};
use crate::compile::plan::{Executable, Op};
use crate::compile::trace::{nonfinite, unravel};
use crate::compile::{CompiledFile, Evaluator, values_f64};
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::format::fmt_num;
use crate::lang::file::DType;
use crate::lang::lexer::OffsetMap;
use crate::lang::parser::parse_assignments;

/// Largest normwise relative difference from autograd a gradient program may show.
pub const TOLERANCE: f64 = 1e-12;

/// How one param's gradient line compares with autograd.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    pub param: String,
    /// The line holding the param's gradient (`grad_w`).
    pub line: String,
    /// `‖program − autograd‖ / max(‖program‖, ‖autograd‖)` over the elements finite in both.
    pub rel_err: f64,
    /// The largest magnitude the line computes on its way: where the gradient cancels to about
    /// 0 (`sum(softmax(x))`), both sides are rounding noise of that size, and a difference up
    /// to [`TOLERANCE`] times it passes.
    pub scale: f64,
    /// Elements non-finite in both, alike (NaN and NaN, or the same infinity).
    pub nonfinite: usize,
    /// Why they disagree; None when they agree.
    pub mismatch: Option<String>,
}

impl Agreement {
    /// Whether the line agrees with autograd.
    pub fn agrees(&self) -> bool {
        self.mismatch.is_none()
    }
}

fn internal(e: candle_core::Error) -> Vec<Diagnostic> {
    vec![Diagnostic::error(format!(
        "the gradient check failed to evaluate: {e}"
    ))]
}

/// Compares `backward` (a program of run `run` of `compiled`) with autograd at `params` (each
/// flattened row-major; None: the initial values), for every param it has a line for.
pub fn check(
    compiled: &CompiledFile,
    run: usize,
    backward: &Backward,
    params: Option<&[Vec<f64>]>,
) -> Result<Vec<Agreement>, Vec<Diagnostic>> {
    let at = params_at(compiled, params)?;
    let eval = Evaluator::with_dtype(compiled, run, DType::F64).map_err(internal)?;
    for (var, t) in eval.params().iter().zip(&at) {
        var.set(t).map_err(internal)?;
    }
    let autograd = eval.evaluate().map_err(|d| vec![d])?.grads;

    let traced = Traced::new(compiled, run, backward, &at)?;
    let mut out = Vec::new();
    for (p, auto) in compiled.params.iter().zip(&autograd) {
        let Some(line) = backward.grad_line(&p.name) else {
            continue;
        };
        let agreement = match traced.line(&line.name) {
            Some(mine) => {
                let scale = traced.line_scale(backward, &line.name);
                compare(&p.name, &line.name, mine, auto, scale).map_err(internal)?
            }
            None => Agreement {
                param: p.name.clone(),
                line: line.name.clone(),
                rel_err: f64::NAN,
                scale: f64::NAN,
                nonfinite: 0,
                mismatch: Some("the program does not define the line".into()),
            },
        };
        out.push(agreement);
    }
    Ok(out)
}

/// The params of `compiled` at `params` (None: the initial values), as tensors.
fn params_at(
    compiled: &CompiledFile,
    params: Option<&[Vec<f64>]>,
) -> Result<Vec<Tensor>, Vec<Diagnostic>> {
    match params {
        Some(values) => compiled
            .params
            .iter()
            .zip(values)
            .map(|(p, v)| Tensor::from_vec(v.clone(), p.value.dims(), &Device::Cpu))
            .collect::<candle_core::Result<_>>()
            .map_err(internal),
        None => Ok(compiled.params.iter().map(|p| p.value.clone()).collect()),
    }
}

/// A run's loss program and a gradient program after it, evaluated once in f64 keeping every
/// value.
struct Traced {
    lw: Lowerer,
    exec: Executable,
    values: Vec<Tensor>,
    source: Arc<SourceFile>,
    /// The first instruction of the gradient program.
    mark: usize,
}

impl Traced {
    fn new(
        compiled: &CompiledFile,
        run: usize,
        backward: &Backward,
        at: &[Tensor],
    ) -> Result<Self, Vec<Diagnostic>> {
        let (lw, source, mark) = continued(compiled, run, backward)?;
        let plan = lw
            .plan_of_everything()
            .ok_or_else(|| vec![Diagnostic::error("the gradient program is empty")])?;
        let mut inputs: Vec<Tensor> = compiled.data.iter().map(|d| d.value.clone()).collect();
        inputs.extend(at.iter().cloned());
        let exec = Executable::new(plan, candle_core::DType::F64, None).map_err(internal)?;
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let (values, _) = exec
            .run_traced(&refs, false)
            .map_err(|e| internal(e.error))?;
        Ok(Self {
            lw,
            exec,
            values,
            source,
            mark,
        })
    }

    /// The value of line `name`.
    fn line(&self, name: &str) -> Option<&Tensor> {
        self.values.get(self.lw.line_register(name)?)
    }

    /// The largest finite magnitude among the values line `name` of `backward` computes.
    fn line_scale(&self, backward: &Backward, name: &str) -> f64 {
        let mut scale = 0.0f64;
        for k in self.mark..self.values.len() {
            let instr = &self.exec.plan().instrs[k];
            if line_at(backward, instr.span.start).is_some_and(|l| l == name) {
                let largest = values_f64(&self.values[k])
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|v| v.is_finite())
                    .fold(0.0f64, |m, v| m.max(v.abs()));
                scale = scale.max(largest);
            }
        }
        scale
    }
}

/// A lowerer that has lowered run `run`'s loss program and then `backward`'s lines, and the
/// gradient program's source. Errors of either are the diagnostics.
fn continued(
    compiled: &CompiledFile,
    run: usize,
    backward: &Backward,
) -> Result<(Lowerer, Arc<SourceFile>, usize), Vec<Diagnostic>> {
    let file = &compiled.file;
    let (program, consts) = run_program(compiled, run);
    let mut lw = Lowerer::new(&file.source, file.seed, "loss")
        .with_functions(Arc::new(file.functions.clone()));
    for c in &consts {
        let t = Tensor::new(c.value, &Device::Cpu).map_err(internal)?;
        lw.bind_known(&c.name.node, t, Kind::Const);
    }
    let n_data = compiled.data.len();
    for (i, d) in compiled.data.iter().enumerate() {
        lw.bind_data(&d.name, i, &d.value, d.span.clone());
    }
    // Params are inputs without gradient: constants to the program (`sign(w)` is fine there).
    for (j, p) in compiled.params.iter().enumerate() {
        let shape = crate::compile::shape::Shape(p.value.dims().to_vec());
        lw.bind_input(&p.name, n_data + j, Kind::Data, shape, p.span.clone());
    }
    lw.lines(&program.node.stmts);
    let mark = lw.lowered();
    let text = backward.text();
    let source = SourceFile::new(
        format!(
            "{} (gradient of run `{}`)",
            file.path().display(),
            backward.run
        ),
        text.clone(),
    );
    let stmts = parse_assignments(&text, &OffsetMap::Shift(0)).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| {
                Diagnostic::error(e.message)
                    .at(&source, e.span)
                    .help_opt(e.help)
            })
            .collect::<Vec<_>>()
    })?;
    lw.report_in(&source);
    lw.lines(&stmts);
    let errors: Vec<Diagnostic> = lw.diags.iter().filter(|d| d.is_error()).cloned().collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok((lw, source, mark))
}

/// Where a gradient program's first non-finite value appears.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    /// The line it is in (`grad_w`).
    pub line: String,
    /// The subexpression as the program writes it (`1 / (d^2 + eps)`).
    pub expr: String,
    /// How many of its elements are non-finite, of how many.
    pub count: usize,
    pub total: usize,
    /// Whether it only passes on a non-finite value of the loss program's own lines.
    pub inherited: bool,
}

impl NonFinite {
    /// `` non-finite in `1 / (d^2 + eps)` of grad_w (3 of 8 elements) ``.
    pub fn summary(&self) -> String {
        let from = if self.inherited {
            ", from a value of the loss program"
        } else {
            ""
        };
        format!(
            "non-finite in `{}` of {} ({} of {} elements{from})",
            self.expr, self.line, self.count, self.total
        )
    }
}

/// The first subexpression of `backward` (a program of run `run`) whose value is non-finite
/// although what it reads is finite, at `params` (None: the initial values); None when every
/// value is finite. Without such a place, the first that passes a non-finite value on.
pub fn locate_nonfinite(
    compiled: &CompiledFile,
    run: usize,
    backward: &Backward,
    params: Option<&[Vec<f64>]>,
) -> Result<Option<NonFinite>, Vec<Diagnostic>> {
    let at = params_at(compiled, params)?;
    let t = Traced::new(compiled, run, backward, &at)?;
    let (values, source, mark) = (&t.values, &t.source, t.mark);
    let bad = |k: usize| -> Result<(usize, usize), Vec<Diagnostic>> {
        let (idx, total) = nonfinite(&values[k]).map_err(internal)?;
        Ok((idx.len(), total))
    };
    let mut passed_on = None;
    for k in mark..values.len() {
        let instr = &t.exec.plan().instrs[k];
        if matches!(instr.op, Op::Input(_) | Op::Const(_)) {
            continue;
        }
        let (count, total) = bad(k)?;
        if count == 0 {
            continue;
        }
        let mut reads_finite = true;
        for &a in &instr.args {
            reads_finite &= bad(a)?.0 == 0;
        }
        let found = (count, total, !reads_finite);
        if reads_finite {
            return Ok(Some(place(backward, source, &instr.span, found)));
        }
        passed_on.get_or_insert((instr.span.clone(), found));
    }
    Ok(passed_on.map(|(span, found)| place(backward, source, &span, found)))
}

/// The line of `backward` holding `span` of its text, and the text there.
fn place(
    backward: &Backward,
    source: &SourceFile,
    span: &crate::diagnostic::Span,
    (count, total, inherited): (usize, usize, bool),
) -> NonFinite {
    NonFinite {
        line: line_at(backward, span.start)
            .unwrap_or_default()
            .to_string(),
        expr: source
            .text
            .get(span.clone())
            .unwrap_or_default()
            .to_string(),
        count,
        total,
        inherited,
    }
}

/// The name of the line of `backward`'s text holding byte `offset`.
fn line_at(backward: &Backward, offset: usize) -> Option<&str> {
    let mut start = 0;
    for l in &backward.lines {
        let len = l.name.len() + 3 + l.value.len() + 1;
        if offset < start + len {
            return Some(&l.name);
        }
        start += len;
    }
    None
}

/// One param's line against autograd.
fn compare(
    param: &str,
    line: &str,
    mine: &Tensor,
    auto: &Tensor,
    scale: f64,
) -> candle_core::Result<Agreement> {
    let mut a = Agreement {
        param: param.to_string(),
        line: line.to_string(),
        rel_err: 0.0,
        scale,
        nonfinite: 0,
        mismatch: None,
    };
    if mine.dims() != auto.dims() {
        a.mismatch = Some(format!(
            "the program gives shape {:?}, autograd {:?}",
            mine.dims(),
            auto.dims()
        ));
        return Ok(a);
    }
    let (x, y) = (values_f64(mine)?, values_f64(auto)?);
    let (mut diff, mut nx, mut ny) = (0.0f64, 0.0f64, 0.0f64);
    for (i, (&u, &v)) in x.iter().zip(&y).enumerate() {
        if u.is_finite() && v.is_finite() {
            diff += (u - v) * (u - v);
            nx += u * u;
            ny += v * v;
        } else if u.is_nan() && v.is_nan() || u == v {
            a.nonfinite += 1;
        } else if a.mismatch.is_none() {
            a.mismatch = Some(format!(
                "at {:?} the program gives {}, autograd {}",
                unravel(i, auto.dims()),
                fmt_num(u),
                fmt_num(v)
            ));
        }
    }
    let norm = nx.max(ny).sqrt();
    a.rel_err = if diff == 0.0 { 0.0 } else { diff.sqrt() / norm };
    let noise = diff.sqrt() <= TOLERANCE * scale;
    if a.mismatch.is_none() && !noise && (a.rel_err.is_nan() || a.rel_err > TOLERANCE) {
        a.mismatch = Some(format!(
            "relative error {} is above {TOLERANCE:e}",
            fmt_num(a.rel_err)
        ));
    }
    Ok(a)
}
