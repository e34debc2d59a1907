//! Params that stop moving: an update was taken with a learning rate and a gradient that were
//! not zero, yet it left a param exactly where it was. Nothing turns NaN and the loss just
//! flattens, so without a word a user reads it as convergence. Two causes account for it: the
//! update rounds away (`w - Δ` is `w` when Δ is below half the gap between representable values
//! at `w`, the everyday case of bf16 params), or the optimizer's state overflowed (Adam's g²
//! is inf in f32 past |g| ≈ 1.8e19, and m / inf is 0).

use candle_core::{DType as CDType, Tensor};

use crate::compile::candle_dtype;
use crate::compile::trace::{Limits, held_and_next};
use crate::diagnostic::Diagnostic;
use crate::format::{fmt_num, fmt_short};
use crate::lang::file::{DType, LossFile};

/// The first step at which params did not move, and what was known of them there.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    pub step: u64,
    /// The params that did not move, in param order, each with its largest |value| and its
    /// gradient's largest |value| at that step.
    pub params: Vec<Still>,
    pub dtype: DType,
    /// Whether the run's optimizer keeps squares of the gradient (Adam's second moment).
    pub squares: bool,
}

/// One param that did not move.
#[derive(Debug, Clone, PartialEq)]
pub struct Still {
    /// Its index in the run's params.
    pub param: usize,
    pub size: f64,
    pub grad: f64,
}

/// How large a gradient, against the largest the param has had, must be for a param that does
/// not move to count as stalled. Near a minimum, plain SGD's `lr * g` falls below half a gap of the params'
/// dtype as the gradient vanishes: that is convergence to the precision, not a lost update (the
/// bundled files' SGD runs stop moving at 1e-9 to 2e-3 of their first gradient; an L1 loss's
/// sign-like gradient left a param in place once at 0.015).
const SIGNIFICANT: f64 = 0.1;

/// The params that an update left where they were although it should have moved them: its
/// change (`deltas`, each param's norm) is zero while its learning rate (`lrs`, each param's)
/// is finite and not zero, and its gradient norm is finite and at least [`SIGNIFICANT`] of the
/// largest it has had (`peaks`, the rows' so far, this one's included).
pub fn still(deltas: &[f64], grad_norms: &[f64], peaks: &[f64], lrs: &[f64]) -> Vec<usize> {
    (0..deltas.len())
        .filter(|&i| {
            let moving = |x: f64| x.is_finite() && x != 0.0;
            let peak = peaks.get(i).copied().unwrap_or(f64::INFINITY);
            deltas[i] == 0.0
                && moving(grad_norms[i])
                && moving(lrs[i])
                && grad_norms[i] >= SIGNIFICANT * peak
        })
        .collect()
}

impl Stall {
    /// The stall of `which` params at `step`, measured from the params and gradients there.
    pub fn new(
        step: u64,
        which: &[usize],
        params: &[Tensor],
        grads: &[Tensor],
        dtype: DType,
        squares: bool,
    ) -> candle_core::Result<Self> {
        let largest = |t: &Tensor| -> candle_core::Result<f64> {
            t.abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(CDType::F64)?
                .to_scalar::<f64>()
        };
        let params = which
            .iter()
            .map(|&i| {
                Ok(Still {
                    param: i,
                    size: largest(&params[i])?,
                    grad: largest(&grads[i])?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Stall {
            step,
            params,
            dtype,
            squares,
        })
    }

    /// Whether the square of a gradient value overflows the dtype in an optimizer that keeps
    /// g²: its state is then inf, and its update m / √inf is zero.
    fn squares_overflow(&self) -> Option<&Still> {
        if !self.squares {
            return None;
        }
        let max = largest(self.dtype);
        self.params.iter().find(|s| s.grad * s.grad > max)
    }

    /// The warning in a few words, for a list: `` `w` did not move: updates round away in
    /// bf16 ``.
    pub fn short(&self, file: &LossFile) -> String {
        let why = match self.squares_overflow() {
            Some(_) => format!("the gradient's square overflows {}", self.dtype.name()),
            None => format!("updates round away in {}", self.dtype.name()),
        };
        format!("{} did not move: {why}", self.names(file).join(", "))
    }

    /// The stalled params' names as the file spells them.
    fn names(&self, file: &LossFile) -> Vec<String> {
        self.params
            .iter()
            .map(|s| {
                file.params.get(s.param).map_or_else(
                    || format!("param {}", s.param),
                    |p| format!("`{}`", p.name.node),
                )
            })
            .collect()
    }

    /// The warning `run` prints and the TUI lists, at the first stalled param's entry in
    /// `file`'s `[params]`.
    pub fn diagnostic(&self, file: &LossFile) -> Diagnostic {
        let names = self.names(file);
        let first = &self.params[0];
        let dtype = self.dtype.name();
        let (label, help) = match self.squares_overflow() {
            Some(s) => (
                format!(
                    "its gradient reaches {}, whose square overflows {dtype} (largest {}): an \
                     optimizer that keeps g² (Adam, RMSprop, Adagrad) divides by inf and steps 0",
                    fmt_num(s.grad),
                    fmt_num(largest(self.dtype))
                ),
                "scale the loss down, clip the gradient (`clip_norm` in [optimizer]), or run in \
                 f64"
                .to_string(),
            ),
            None => (
                format!(
                    "each update was zero or below half the gap between {dtype} values at its size \
                     (|value| up to {}: a gap of {}), so it rounded back to where it was",
                    fmt_short(first.size),
                    fmt_num(gap(self.dtype, first.size))
                ),
                match self.dtype {
                    DType::F16 | DType::BF16 => "keep what rounding drops: `tricks = \
                        [\"master_weights\"]` (f32 params and state), `\"kahan\"` or \
                        `\"stochastic_rounding\"`; or a larger lr"
                        .to_string(),
                    DType::F32 | DType::F64 => {
                        "a larger lr, or params of a smaller size (scale them)".to_string()
                    }
                },
            ),
        };
        let span = file.params.get(first.param).map(|p| p.name.span.clone());
        let message = format!(
            "{} did not move at step {}: the gradient is not zero, but the update left it \
             exactly where it was",
            names.join(", "),
            self.step
        );
        let d = Diagnostic::warning(message).label(label).help(help);
        match span {
            Some(span) => d.at(&file.source, span),
            None => d.in_file(&file.source.path),
        }
    }
}

/// The largest finite value of `d`.
fn largest(d: DType) -> f64 {
    Limits::of(candle_dtype(d)).map_or(f64::MAX, |l| l.max)
}

/// The gap between `d`'s values at magnitude `x`: from `x` as `d` holds it to the next value.
fn gap(d: DType, x: f64) -> f64 {
    let (held, next) = held_and_next(x.abs(), candle_dtype(d));
    next - held
}
