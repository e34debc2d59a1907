//! Holds a gradient program to autograd's numbers. The run's loss program and then the gradient
//! program's text, parsed back, are lowered with data and params known, so every line folds to
//! its f64 value; each `grad_<param>` is compared with autograd's gradient in f64, normwise to
//! [`TOLERANCE`], with every non-finite value in the same place.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::{Backward, run_program};
use crate::compile::lower::{Kind, Lowerer};
use crate::compile::trace::unravel;
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
    let file = &compiled.file;
    let at: Vec<Tensor> = match params {
        Some(values) => compiled
            .params
            .iter()
            .zip(values)
            .map(|(p, v)| Tensor::from_vec(v.clone(), p.value.dims(), &Device::Cpu))
            .collect::<candle_core::Result<_>>()
            .map_err(internal)?,
        None => compiled.params.iter().map(|p| p.value.clone()).collect(),
    };
    let eval = Evaluator::with_dtype(compiled, run, DType::F64).map_err(internal)?;
    for (var, t) in eval.params().iter().zip(&at) {
        var.set(t).map_err(internal)?;
    }
    let autograd = eval.evaluate().map_err(|d| vec![d])?.grads;

    let (program, consts) = run_program(compiled, run);
    let mut lw = Lowerer::new(&file.source, file.seed, "loss")
        .with_functions(Arc::new(file.functions.clone()));
    for c in &consts {
        let t = Tensor::new(c.value, &Device::Cpu).map_err(internal)?;
        lw.bind_known(&c.name.node, t, Kind::Const);
    }
    for d in &compiled.data {
        lw.bind_known(&d.name, d.value.clone(), Kind::Data);
    }
    for (p, t) in compiled.params.iter().zip(&at) {
        lw.bind_known(&p.name, t.clone(), Kind::Param);
    }
    lw.lines(&program.node.stmts);
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
    let mut out = Vec::new();
    for (p, auto) in compiled.params.iter().zip(&autograd) {
        let Some(line) = backward.grad_line(&p.name) else {
            continue;
        };
        let agreement = match lw.known_line(&line.name) {
            Some(mine) => compare(&p.name, &line.name, &mine, auto).map_err(internal)?,
            None => Agreement {
                param: p.name.clone(),
                line: line.name.clone(),
                rel_err: f64::NAN,
                nonfinite: 0,
                mismatch: Some("the line has no value before the run".into()),
            },
        };
        out.push(agreement);
    }
    Ok(out)
}

/// One param's line against autograd.
fn compare(
    param: &str,
    line: &str,
    mine: &Tensor,
    auto: &Tensor,
) -> candle_core::Result<Agreement> {
    let mut a = Agreement {
        param: param.to_string(),
        line: line.to_string(),
        rel_err: 0.0,
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
    let scale = nx.max(ny).sqrt();
    a.rel_err = if diff == 0.0 {
        0.0
    } else {
        diff.sqrt() / scale
    };
    if a.mismatch.is_none() && (a.rel_err.is_nan() || a.rel_err > TOLERANCE) {
        a.mismatch = Some(format!(
            "relative error {} is above {TOLERANCE:e}",
            fmt_num(a.rel_err)
        ));
    }
    Ok(a)
}
