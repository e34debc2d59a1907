//! Gradient check: autograd in the run's dtype against central finite differences in f64, per
//! param, with tolerances that depend on the dtype (torch.autograd.gradcheck's defaults are
//! meant for f64 only). Kinks (abs or relu at 0, clamp at a bound), where the one-sided
//! differences disagree, are reported as kinks, not failures.

use candle_core::Tensor;
use rand::seq::index::sample;

use super::trace::unravel;
use super::{CompiledFile, Evaluator};
use crate::diagnostic::Diagnostic;
use crate::lang::file::DType;

/// Elements checked per param at most; larger params are sampled.
pub const SAMPLE: usize = 64;

/// (absolute, relative) tolerance for autograd in `dtype` against f64 differences.
pub fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-5, 1e-3),
        DType::F32 => (1e-3, 1e-2),
        DType::F16 | DType::BF16 => (5e-2, 1e-1),
    }
}

/// How a param's autograd gradient compares with finite differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Disagrees, but the loss uses `[functions]` with their own gradients, which may differ
    /// from the value's derivative on purpose (straight-through estimators).
    CustomGradient,
}

/// The result for one param.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamCheck {
    pub name: String,
    pub shape: Vec<usize>,
    pub checked: usize,
    pub total: usize,
    pub max_abs: f64,
    /// The largest error over its element's tolerance, `atol + rtol * |fd|`: an element passes
    /// at 1 or less (a plain relative error of an element near 0, 26309 for 1.4e-7 over 5e-12,
    /// said nothing of whether it passed).
    pub max_tol_ratio: f64,
    /// Index (multi-dimensional) of the element with the largest error beyond tolerance, or the
    /// largest error when all pass.
    pub worst: Vec<usize>,
    /// Elements where the left and right differences disagree (not counted as failures).
    pub kinks: usize,
    pub verdict: Verdict,
    /// Why the worst failing element (at `worst`) fails: both values and the tolerance, or the
    /// non-finite value that makes it uncheckable. None when every element passed.
    pub failure: Option<String>,
}

impl ParamCheck {
    /// Why it fails, naming the element (`w[1, 2] fails: …`): the one wording `gradcheck` prints
    /// and the TUI logs. None unless it fails.
    pub fn why_it_fails(&self) -> Option<String> {
        let why = self
            .failure
            .as_ref()
            .filter(|_| self.verdict == Verdict::Fail)?;
        let at: Vec<String> = self.worst.iter().map(usize::to_string).collect();
        Some(match at.is_empty() {
            true => format!("{} fails: {why}", self.name),
            false => format!("{}[{}] fails: {why}", self.name, at.join(", ")),
        })
    }
}

/// The larger of `a` and `b`, NaN if either is: `f64::max` drops a NaN, and a failing check
/// showed an error of 0.
fn max_or_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn internal(e: candle_core::Error) -> Diagnostic {
    Diagnostic::error(format!("gradient check failed to evaluate: {e}"))
}

fn values(t: &Tensor) -> Result<Vec<f64>, Diagnostic> {
    super::values_f64(t).map_err(internal)
}

/// Checks run `run` of `compiled` in `dtype` at `params` (each flattened, row-major; None: the
/// initial values). `seed` picks the sampled elements of large params.
pub fn gradcheck(
    compiled: &CompiledFile,
    run: usize,
    dtype: DType,
    params: Option<&[Vec<f64>]>,
    seed: u64,
) -> Result<Vec<ParamCheck>, Diagnostic> {
    let uses_functions = compiled.runs[run]
        .plan
        .instrs
        .iter()
        .any(|i| matches!(i.op, super::plan::Op::Function(_)));
    let auto = Evaluator::with_dtype(compiled, run, dtype).map_err(internal)?;
    let fd = Evaluator::with_dtype(compiled, run, DType::F64).map_err(internal)?;
    let current: Vec<Vec<f64>> = match params {
        Some(p) => p.to_vec(),
        None => compiled
            .params
            .iter()
            .map(|p| values(&p.value))
            .collect::<Result<_, _>>()?,
    };
    for (i, v) in current.iter().enumerate() {
        let dims = compiled.params[i].value.dims().to_vec();
        let t = Tensor::from_vec(v.clone(), dims, &candle_core::Device::Cpu).map_err(internal)?;
        auto.params()[i]
            .set(&t.to_dtype(auto.dtype()).map_err(internal)?)
            .map_err(internal)?;
        fd.params()[i].set(&t).map_err(internal)?;
    }
    let grads = auto.evaluate()?.grads;
    let (atol, rtol) = tolerance(dtype);
    let f0 = fd.loss()?;
    let mut rng = crate::compile::lower::rng_for(seed, "gradcheck");
    let mut out = Vec::new();
    for (i, p) in compiled.params.iter().enumerate() {
        let g = values(&grads[i])?;
        let dims = p.value.dims().to_vec();
        let total = g.len();
        let mut idx: Vec<usize> = if total > SAMPLE {
            sample(&mut rng, total, SAMPLE).into_vec()
        } else {
            (0..total).collect()
        };
        idx.sort_unstable();
        let mut check = ParamCheck {
            name: p.name.clone(),
            shape: dims.clone(),
            checked: idx.len(),
            total,
            max_abs: 0.0,
            max_tol_ratio: 0.0,
            worst: Vec::new(),
            kinks: 0,
            verdict: Verdict::Pass,
            failure: None,
        };
        let mut worst_excess = f64::NEG_INFINITY;
        for k in idx {
            let x = current[i][k];
            let h = 1e-6 * x.abs().max(1.0);
            let at = |delta: f64| -> Result<f64, Diagnostic> {
                let mut v = current[i].clone();
                v[k] = x + delta;
                let t = Tensor::from_vec(v, dims.clone(), &candle_core::Device::Cpu)
                    .map_err(internal)?;
                fd.params()[i].set(&t).map_err(internal)?;
                fd.loss()
            };
            let (fp, fm) = (at(h)?, at(-h)?);
            let restore =
                Tensor::from_vec(current[i].clone(), dims.clone(), &candle_core::Device::Cpu)
                    .map_err(internal)?;
            fd.params()[i].set(&restore).map_err(internal)?;
            let central = (fp - fm) / (2.0 * h);
            let (right, left) = ((fp - f0) / h, (f0 - fm) / h);
            let kink = (right - left).abs() > atol + rtol * right.abs().max(left.abs())
                && (right - left).abs() > 1e-3;
            let err = (g[k] - central).abs();
            let tolerance = atol + rtol * central.abs();
            // A kink excuses a finite gradient that disagrees, never a NaN or an infinite one.
            if kink && g[k].is_finite() {
                check.kinks += 1;
                continue;
            }
            check.max_abs = max_or_nan(check.max_abs, err);
            check.max_tol_ratio = max_or_nan(check.max_tol_ratio, err / tolerance);
            let excess = err - tolerance;
            let worst = excess > worst_excess || !err.is_finite();
            if worst {
                worst_excess = if err.is_finite() {
                    excess
                } else {
                    f64::INFINITY
                };
                check.worst = unravel(k, &dims);
            }
            // NaN errors fail too.
            let within = err <= tolerance;
            if !within {
                check.verdict = Verdict::Fail;
            }
            if !within && worst {
                let show = crate::format::fmt_num;
                check.failure = Some(if !f0.is_finite() || !fp.is_finite() || !fm.is_finite() {
                    format!(
                        "the loss is not finite here ({} at the point, {} and {} at ±{h:e}), so finite differences cannot check autograd's {}",
                        show(f0),
                        show(fp),
                        show(fm),
                        show(g[k])
                    )
                } else if !g[k].is_finite() {
                    format!(
                        "autograd gives {} where central differences give {}",
                        show(g[k]),
                        show(central)
                    )
                } else {
                    format!(
                        "autograd {} vs central differences {}: error {} > tolerance {}",
                        show(g[k]),
                        show(central),
                        show(err),
                        show(tolerance)
                    )
                });
            }
        }
        if check.verdict == Verdict::Fail && uses_functions {
            check.verdict = Verdict::CustomGradient;
        }
        out.push(check);
    }
    Ok(out)
}
