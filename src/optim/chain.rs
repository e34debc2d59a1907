//! How a chain steps: the tricks of [`super::tricks`] around the base optimizer, each with its
//! own state beside the optimizer's (tests/data/REFERENCE_README.md, "Where each trick acts in a
//! step"):
//! 1. the gradient at the run's params (lookahead: the fast params);
//! 2. `skip_nonfinite` and `skip_spikes` look at it as computed and may cancel the whole step
//!    ([`admit`]);
//! 3. `agc`, `centralize`, `clip_norm`, `clip_value` transform it in the order written;
//! 4. the base optimizer steps, in f32 for the precision tricks of an f16/bf16 run
//!    (`master_weights`, `kahan`, `stochastic_rounding`), which also decide how the result is
//!    stored;
//! 5. `lookahead` counts the step and may synchronise; `ema` averages the params.

use std::collections::VecDeque;

use candle_core::{DType, Result, Tensor};

use super::classic::AdamRule;
use super::lowp::{self, Bits};
use super::schedule::{clip_norm, clip_value, global_norm};
use super::spec::RuleState;
use super::step::{OptimizerState, Oracle, StepCx, lerp, update};
use super::tricks::{Agc, TrickKind, TrickSpec};

/// What one trick keeps between steps.
#[derive(Debug, Clone)]
pub enum TrickState {
    /// Nothing (agc, centralize, the clipping tricks, loss_scale).
    Stateless,
    /// optax.apply_if_finite's counters.
    SkipNonfinite {
        /// Non-finite gradients in a row so far.
        notfinite_count: u64,
        /// Non-finite gradients in all.
        total_notfinite: u64,
    },
    SkipSpikes {
        /// Gradient norms of the last steps judged, skipped or not, oldest first (at most
        /// `window`).
        recent: VecDeque<f64>,
        /// Steps skipped as spikes so far.
        skipped: u64,
    },
    Lookahead {
        /// The slow params (f32 in an f16/bf16 run).
        slow: Vec<Tensor>,
        /// Steps since the last synchronisation.
        steps_since_sync: u64,
    },
    Ema {
        /// The average (f32 in an f16/bf16 run); None before the first step.
        average: Option<Vec<Tensor>>,
        /// Steps averaged so far (torch's `n_averaged`).
        n_averaged: u64,
    },
    /// The f32 master params (f16/bf16 runs only).
    MasterWeights { master: Vec<Tensor> },
    /// Each param's compensation buffer, in its dtype (f16/bf16 runs only).
    Kahan { comp: Vec<Tensor> },
    /// Where the rounding's random bits are.
    StochasticRounding { bits: Bits },
}

/// A chain's tricks, each with its state, and the dtype of the run's params.
#[derive(Debug, Clone)]
pub struct Tricks {
    specs: Vec<TrickSpec>,
    states: Vec<TrickState>,
    dtype: DType,
}

/// How the base optimizer's result is stored: set by the precision tricks in f16/bf16 runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    /// In the run's dtype, as the optimizer made it.
    Plain,
    /// In the f32 master params; the run's params are their rounding.
    Master,
    /// The f32 result rounded stochastically to the run's dtype.
    Rounding,
    /// The update added through the compensation in the run's dtype: Adam's own update (its
    /// state in the run's dtype, as the reference), any other optimizer's from an f32 step.
    Kahan,
}

/// The dtype a low-precision run keeps what it accumulates in (f32); others keep their own.
fn wide(dtype: DType) -> DType {
    if lowp::is_low(dtype) {
        DType::F32
    } else {
        dtype
    }
}

fn cast(tensors: &[Tensor], dtype: DType) -> Result<Vec<Tensor>> {
    tensors.iter().map(|t| t.to_dtype(dtype)).collect()
}

impl Tricks {
    /// The state of `tricks` around the base optimizer (`adam`: Adam or AdamW, which precision
    /// tricks step op by op) before the first update of `params` (in the run's dtype; `initial`
    /// at full precision), and the params the base optimizer's state is built
    /// from (f32 ones when a precision trick steps it in f32).
    pub(super) fn new(
        adam: bool,
        tricks: &[TrickSpec],
        params: &[Tensor],
        initial: &[Tensor],
    ) -> Result<(Self, Vec<Tensor>)> {
        let dtype = params.first().map_or(DType::F32, Tensor::dtype);
        let low = lowp::is_low(dtype);
        let mut base = params.to_vec();
        let mut states = Vec::with_capacity(tricks.len());
        for t in tricks {
            states.push(match t {
                TrickSpec::SkipNonfinite(_) => TrickState::SkipNonfinite {
                    notfinite_count: 0,
                    total_notfinite: 0,
                },
                TrickSpec::SkipSpikes(_) => TrickState::SkipSpikes {
                    recent: VecDeque::new(),
                    skipped: 0,
                },
                TrickSpec::Lookahead(_) => TrickState::Lookahead {
                    // A copy: the run's params change in place.
                    slow: cast(params, wide(dtype))?
                        .iter()
                        .map(Tensor::copy)
                        .collect::<Result<_>>()?,
                    steps_since_sync: 0,
                },
                TrickSpec::Ema(_) => TrickState::Ema {
                    average: None,
                    n_averaged: 0,
                },
                TrickSpec::MasterWeights(_) if low => {
                    base = cast(initial, DType::F32)?;
                    TrickState::MasterWeights {
                        master: base.clone(),
                    }
                }
                TrickSpec::Kahan(_) if low => {
                    if !adam {
                        base = cast(params, DType::F32)?;
                    }
                    TrickState::Kahan {
                        comp: params
                            .iter()
                            .map(Tensor::zeros_like)
                            .collect::<Result<_>>()?,
                    }
                }
                TrickSpec::StochasticRounding(o) if low => {
                    base = cast(params, DType::F32)?;
                    TrickState::StochasticRounding { bits: Bits(o.seed) }
                }
                TrickSpec::Agc(_)
                | TrickSpec::Centralize(_)
                | TrickSpec::ClipNorm(_)
                | TrickSpec::ClipValue(_)
                | TrickSpec::LossScaling(_)
                | TrickSpec::MasterWeights(_)
                | TrickSpec::Kahan(_)
                | TrickSpec::StochasticRounding(_) => TrickState::Stateless,
            });
        }
        let tricks = Self {
            specs: tricks.to_vec(),
            states,
            dtype,
        };
        Ok((tricks, base))
    }

    /// No tricks around the optimizer of a run in `dtype`.
    pub(super) fn none(dtype: DType) -> Self {
        Self {
            specs: Vec::new(),
            states: Vec::new(),
            dtype,
        }
    }

    /// How the base's result is stored.
    fn storage(&self) -> Storage {
        self.states
            .iter()
            .find_map(|s| match s {
                TrickState::MasterWeights { .. } => Some(Storage::Master),
                TrickState::StochasticRounding { .. } => Some(Storage::Rounding),
                TrickState::Kahan { .. } => Some(Storage::Kahan),
                _ => None,
            })
            .unwrap_or(Storage::Plain)
    }

    pub(super) fn state_of(&self, kind: TrickKind) -> Option<&TrickState> {
        let i = self.specs.iter().position(|s| s.kind() == kind)?;
        Some(&self.states[i])
    }

    pub(super) fn master(&self) -> Option<&[Tensor]> {
        self.states.iter().find_map(|s| match s {
            TrickState::MasterWeights { master } => Some(master.as_slice()),
            _ => None,
        })
    }

    /// `tensors` in the run's dtype, to evaluate the model at.
    pub(super) fn in_run_dtype(&self, tensors: Vec<Tensor>) -> Option<Vec<Tensor>> {
        cast(&tensors, self.dtype).ok()
    }

    /// ema's average when there is one, else lookahead's slow params, in the run's dtype.
    pub(super) fn eval_params(&self) -> Option<Vec<Tensor>> {
        let average = self.states.iter().find_map(|s| match s {
            TrickState::Ema {
                average: Some(a), ..
            } => Some(a),
            _ => None,
        });
        let slow = || {
            self.states.iter().find_map(|s| match s {
                TrickState::Lookahead { slow, .. } => Some(slow),
                _ => None,
            })
        };
        self.in_run_dtype(average.or_else(slow)?.clone())
    }
}

/// Whether a step goes ahead, or which trick cancelled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Step,
    Skip(TrickKind),
}

/// Step 2: `skip_nonfinite` counts every gradient and skips a non-finite one unless it has seen
/// more than `max_consecutive` in a row; `skip_spikes` judges a finite gradient not skipped
/// already against the mean norm of its window, then adds its norm to the window (a full-batch
/// spike comes back at the same params, and would otherwise be skipped forever). A skipped step
/// changes nothing but these counters.
pub fn admit(state: &mut OptimizerState, grads: &[Tensor]) -> Result<Verdict> {
    let tricks = &mut state.tricks;
    if tricks.states.iter().all(|s| {
        !matches!(
            s,
            TrickState::SkipNonfinite { .. } | TrickState::SkipSpikes { .. }
        )
    }) {
        return Ok(Verdict::Step);
    }
    let norm = global_norm(grads)?;
    let finite = all_finite(grads)?;
    let mut verdict = Verdict::Step;
    for (spec, st) in tricks.specs.iter().zip(&mut tricks.states) {
        if let (
            TrickSpec::SkipNonfinite(o),
            TrickState::SkipNonfinite {
                notfinite_count,
                total_notfinite,
            },
        ) = (spec, st)
        {
            if finite {
                *notfinite_count = 0;
            } else {
                *notfinite_count += 1;
                *total_notfinite += 1;
                if *notfinite_count <= o.max_consecutive {
                    verdict = Verdict::Skip(TrickKind::SkipNonfinite);
                }
            }
        }
    }
    for (spec, st) in tricks.specs.iter().zip(&mut tricks.states) {
        if let (TrickSpec::SkipSpikes(o), TrickState::SkipSpikes { recent, skipped }) = (spec, st) {
            if verdict != Verdict::Step || !norm.is_finite() {
                continue;
            }
            let full = recent.len() as u64 >= o.window;
            let mean = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
            if full && norm > o.factor * mean {
                *skipped += 1;
                verdict = Verdict::Skip(TrickKind::SkipSpikes);
            }
            recent.push_back(norm);
            while recent.len() as u64 > o.window {
                recent.pop_front();
            }
        }
    }
    Ok(verdict)
}

/// Whether a non-finite gradient now would be skipped by `skip_nonfinite` (so it is the
/// trick's to handle, not the run's non-finite policy's).
pub fn absorbs_nonfinite(state: &OptimizerState) -> bool {
    let tricks = &state.tricks;
    tricks
        .specs
        .iter()
        .zip(&tricks.states)
        .any(|(spec, st)| match (spec, st) {
            (
                TrickSpec::SkipNonfinite(o),
                TrickState::SkipNonfinite {
                    notfinite_count, ..
                },
            ) => *notfinite_count < o.max_consecutive,
            _ => false,
        })
}

/// What a step of the chain made: the run's new params (in its dtype), and whether a clipping
/// trick clipped.
#[derive(Debug)]
pub struct Stepped {
    pub params: Vec<Tensor>,
    pub clipped: bool,
}

/// Steps 3 to 5 of one step: transforms, the base optimizer, how its result is stored, and the
/// tricks after it. `cx` holds the run's params and gradients (after the run's own clipping).
pub fn step(state: &mut OptimizerState, cx: &mut StepCx) -> Result<Stepped> {
    let dtype = state.tricks.dtype;
    let storage = state.tricks.storage();
    // Adam under master weights or Kahan steps op by op, as torch's loop does (the reference).
    let adam = matches!(storage, Storage::Master | Storage::Kahan)
        && state
            .groups
            .iter()
            .all(|(g, _)| AdamRule::of(&g.spec).is_some());
    let work = match (storage, adam) {
        (Storage::Plain, _) | (Storage::Kahan, true) => dtype,
        (Storage::Master | Storage::Rounding | Storage::Kahan, _) => DType::F32,
    };
    let params = match (&storage, state.tricks.master()) {
        (Storage::Master, Some(master)) => master.to_vec(),
        _ => cast(cx.params, work)?,
    };
    let specs = state.tricks.specs.clone();
    let (grads, clipped) = transform(&specs, &params, cast(cx.grads, work)?)?;
    let stored = match adam {
        true => {
            let new = adam_op_by_op(state, &params, &grads, cx.lr, storage)?;
            cx.t = state.updates;
            new
        }
        false => {
            let mut oracle = InDtype {
                oracle: &mut *cx.oracle,
                run: dtype,
                work,
                tricks: &specs,
            };
            let new = update(
                state,
                &mut StepCx {
                    params: &params,
                    grads: &grads,
                    loss: cx.loss,
                    lr: cx.lr,
                    t: 0,
                    oracle: &mut oracle,
                },
            )?;
            cx.t = state.updates;
            store(&mut state.tricks, &storage, &params, new)?
        }
    };
    let stored = after_step(&mut state.tricks, stored)?;
    let params = match &storage {
        Storage::Master => {
            for s in &mut state.tricks.states {
                if let TrickState::MasterWeights { master } = s {
                    *master = stored.clone();
                }
            }
            cast(&stored, dtype)?
        }
        _ => stored,
    };
    Ok(Stepped { params, clipped })
}

/// The base's new (working-precision) params `new` from `old`, as they are kept: the master
/// params as they are, or the run's params rounded stochastically or through the compensation.
fn store(
    tricks: &mut Tricks,
    storage: &Storage,
    old: &[Tensor],
    new: Vec<Tensor>,
) -> Result<Vec<Tensor>> {
    let dtype = tricks.dtype;
    match storage {
        Storage::Plain | Storage::Master => Ok(new),
        Storage::Rounding => {
            let Some(bits) = tricks.states.iter_mut().find_map(|s| match s {
                TrickState::StochasticRounding { bits } => Some(bits),
                _ => None,
            }) else {
                return Ok(new);
            };
            new.iter()
                .map(|p| {
                    let rounded = lowp::stochastic_round_all(dtype, &lowp::values(p)?, bits);
                    lowp::tensor(rounded, p, dtype)
                })
                .collect()
        }
        Storage::Kahan => {
            let Some(comp) = tricks.states.iter_mut().find_map(|s| match s {
                TrickState::Kahan { comp } => Some(comp),
                _ => None,
            }) else {
                return Ok(new);
            };
            let mut out = Vec::with_capacity(new.len());
            for ((old, new), c) in old.iter().zip(&new).zip(comp.iter_mut()) {
                let update = lowp::values(&(new - old)?)?;
                let mut p = lowp::values(old)?;
                let mut cv = lowp::values(c)?;
                lowp::kahan_add(dtype, &mut p, &mut cv, &update);
                *c = lowp::tensor(cv, c, dtype)?;
                out.push(lowp::tensor(p, old, dtype)?);
            }
            Ok(out)
        }
    }
}

/// Adam's step op by op on `params` (the f32 master params, or the run's under Kahan, whose
/// updates go through the compensation: README steps 7k-8k), group by group with each group's
/// hyper-parameters and lr.
fn adam_op_by_op(
    state: &mut OptimizerState,
    params: &[Tensor],
    grads: &[Tensor],
    lr: f64,
    storage: Storage,
) -> Result<Vec<Tensor>> {
    state.updates += 1;
    let t = state.updates;
    let mut comp: Option<&mut Vec<Tensor>> = state.tricks.states.iter_mut().find_map(|s| match s {
        TrickState::Kahan { comp } if storage == Storage::Kahan => Some(comp),
        _ => None,
    });
    let mut out = params.to_vec();
    for (g, rule) in &mut state.groups {
        let (Some(adam_rule), RuleState::Adam(adam) | RuleState::AdamW(adam)) =
            (AdamRule::of(&g.spec), rule)
        else {
            return Err(candle_core::Error::Msg(
                "the optimizer state is not adam's".into(),
            ));
        };
        for (&i, s) in g.params.iter().zip(adam.iter_mut()) {
            let c = comp.as_mut().map(|c| &mut c[i]);
            out[i] = lowp::adam(&adam_rule, s, &params[i], &grads[i], lr * g.lr_scale, t, c)?;
        }
    }
    Ok(out)
}

/// Step 5 on the params as kept: lookahead counts and may synchronise (returning the synced
/// fast params), ema averages.
fn after_step(tricks: &mut Tricks, mut params: Vec<Tensor>) -> Result<Vec<Tensor>> {
    for (spec, st) in tricks.specs.iter().zip(&mut tricks.states) {
        match (spec, st) {
            (
                TrickSpec::Lookahead(o),
                TrickState::Lookahead {
                    slow,
                    steps_since_sync,
                },
            ) => {
                *steps_since_sync += 1;
                if *steps_since_sync == o.sync_period {
                    let fast = cast(&params, slow[0].dtype())?;
                    *slow = slow
                        .iter()
                        .zip(&fast)
                        .map(|(s, f)| lerp(s, f, o.slow_step_size))
                        .collect::<Result<_>>()?;
                    params = params
                        .iter()
                        .zip(slow.iter())
                        .map(|(p, s)| s.to_dtype(p.dtype()))
                        .collect::<Result<_>>()?;
                    *steps_since_sync = 0;
                }
            }
            (
                TrickSpec::Ema(o),
                TrickState::Ema {
                    average,
                    n_averaged,
                },
            ) => {
                let now = cast(
                    &params,
                    wide(params.first().map_or(DType::F32, Tensor::dtype)),
                )?;
                *average = Some(match average.take() {
                    None => now,
                    Some(avg) => avg
                        .iter()
                        .zip(&now)
                        .map(|(e, p)| lerp(e, p, 1.0 - o.decay))
                        .collect::<Result<_>>()?,
                });
                *n_averaged += 1;
            }
            _ => {}
        }
    }
    Ok(params)
}

/// The gradients after the chain's gradient tricks (agc, centralize, clipping) at `params`, in
/// the chain's order, and whether one clipped.
fn transform(
    tricks: &[TrickSpec],
    params: &[Tensor],
    mut grads: Vec<Tensor>,
) -> Result<(Vec<Tensor>, bool)> {
    let mut clipped = false;
    for t in tricks {
        let (g, c) = match t {
            TrickSpec::Agc(o) => agc(o, params, &grads)?,
            TrickSpec::Centralize(_) => (centralize(&grads)?, false),
            TrickSpec::ClipNorm(o) => clip_norm(&grads, global_norm(&grads)?, o.max_norm)?,
            TrickSpec::ClipValue(o) => clip_value(&grads, o.clip_value)?,
            _ => continue,
        };
        grads = g;
        clipped |= c;
    }
    Ok((grads, clipped))
}

/// The run's loss for a step computed in another dtype: params go to the run's dtype, gradients
/// come back in the working one, through the chain's gradient tricks as the step's first
/// gradient went (torch's LBFGS sees the clipping a closure does at every evaluation).
struct InDtype<'a> {
    oracle: &'a mut dyn Oracle,
    run: DType,
    work: DType,
    tricks: &'a [TrickSpec],
}

impl Oracle for InDtype<'_> {
    fn loss_and_grads(&mut self, params: &[Tensor]) -> Result<(f64, Vec<Tensor>)> {
        let (loss, grads) = self.oracle.loss_and_grads(&cast(params, self.run)?)?;
        let (grads, _) = transform(self.tricks, params, cast(&grads, self.work)?)?;
        Ok((loss, grads))
    }

    fn hessian_diag(&mut self, params: &[Tensor]) -> Result<Vec<Tensor>> {
        let diag = self.oracle.hessian_diag(&cast(params, self.run)?)?;
        cast(&diag, self.work)
    }

    fn hvp(&mut self, params: &[Tensor], v: &[Tensor]) -> Result<Vec<Tensor>> {
        let hv = self
            .oracle
            .hvp(&cast(params, self.run)?, &cast(v, self.run)?)?;
        cast(&hv, self.work)
    }
}

/// Whether every entry of every gradient is finite (0 x is 0 exactly then, NaN otherwise).
fn all_finite(grads: &[Tensor]) -> Result<bool> {
    for g in grads {
        let zeros = g.to_dtype(DType::F64)?.affine(0.0, 0.0)?;
        if zeros.sum_all()?.to_scalar::<f64>()?.is_nan() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// optax's unitwise norm: the whole tensor's L2 norm when it has at most one dimension of size
/// above 1; else per slice over axis 0 (2-D, 3-D), axes 0..3 (4-D) or all but the last (more),
/// broadcast back to the tensor's shape.
fn unitwise_norm(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let sq = x.sqr()?;
    let summed = if dims.iter().filter(|&&d| d > 1).count() <= 1 {
        sq.sum_all()?
    } else {
        let axes: Vec<usize> = match dims.len() {
            2 | 3 => vec![0],
            4 => vec![0, 1, 2],
            n => (0..n - 1).collect(),
        };
        sq.sum_keepdim(axes)?
    };
    summed.sqrt()?.broadcast_as(dims)?.contiguous()
}

/// Adaptive gradient clipping (optax.adaptive_grad_clip): G' = G where N(G) < max =
/// clipping * max(N(P), eps), else G * (max / max(N(G), 1e-6)); and whether any entry clipped.
fn agc(o: &Agc, params: &[Tensor], grads: &[Tensor]) -> Result<(Vec<Tensor>, bool)> {
    let mut clipped = false;
    let mut out = Vec::with_capacity(grads.len());
    for (p, g) in params.iter().zip(grads) {
        let max = unitwise_norm(p)?.maximum(o.eps)?.affine(o.clipping, 0.0)?;
        let gn = unitwise_norm(g)?;
        let keep = gn.lt(&max)?;
        let scaled = (g * (&max / gn.maximum(1e-6)?)?)?;
        clipped |= keep.flatten_all()?.min(0)?.to_scalar::<u8>()? == 0;
        out.push(keep.where_cond(g, &scaled)?);
    }
    Ok((out, clipped))
}

/// Gradient centralization (optax.centralize): a gradient of 2 or more dims loses its mean over
/// all axes but the first; 0-d and 1-d gradients are unchanged.
fn centralize(grads: &[Tensor]) -> Result<Vec<Tensor>> {
    grads
        .iter()
        .map(|g| {
            if g.rank() < 2 {
                return Ok(g.clone());
            }
            let rows = g.dims()[0];
            let mut keep = vec![1usize; g.rank()];
            keep[0] = rows;
            let mean = g.flatten_from(1)?.mean_keepdim(1)?.reshape(keep)?;
            g.broadcast_sub(&mean)
        })
        .collect()
}
