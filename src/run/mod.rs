//! Runs: one loss file, one run definition, one optimizer and dtype, stepped iteration by
//! iteration. Each step computes gradients, inspects them (norms, finiteness), applies clipping
//! and the non-finite policy, and only then updates. Snapshots let a run rewind and re-step to
//! the same numbers bit for bit.

pub mod export;
pub mod history;
pub mod metrics;
pub mod summary;
pub mod trajectory;
pub mod worker;

use std::time::Instant;

use candle_core::{Tensor, Var};

use self::history::{Core, History, StepRecord, flags};
use self::trajectory::Decimated;
use crate::compile::trace::Provenance;
use crate::compile::{CompiledFile, Evaluator, norm};
use crate::diagnostic::Diagnostic;
use crate::lang::file::DType;
use crate::optim::schedule::{clip_norm, clip_value};
use crate::optim::settings::{GradSource, LossScale, NonFinitePolicy, RunSettings};
use crate::optim::step::{OptimizerState, update};

/// GradScaler's defaults.
pub const SCALE_INIT: f64 = 65536.0;
/// Clean steps after which GradScaler doubles the scale.
pub const SCALE_GROWTH_INTERVAL: u32 = 2000;

/// One run to start: which run definition, under which name, in which dtype, with which
/// settings. The front ends and the worker each build one; a run's dtype travels here.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    /// Index of the run definition (base or variant).
    pub def: usize,
    /// What the front ends show it as.
    pub name: String,
    /// The precision it runs in (the definition's unless asked otherwise).
    pub dtype: DType,
    /// Optimizer, steps, clipping, schedule, policy, gradient source, loss scaling.
    pub settings: RunSettings,
}

impl RunRequest {
    /// Definition `def` of `compiled` in its own dtype, named `name`, with `settings`.
    pub fn new(compiled: &CompiledFile, def: usize, name: String, settings: RunSettings) -> Self {
        Self {
            def,
            name,
            dtype: compiled.runs[def].dtype,
            settings,
        }
    }

    /// Definition `def` as the file describes it (None: there is no such definition).
    pub fn of(compiled: &CompiledFile, def: usize) -> Option<Self> {
        let d = compiled.runs.get(def)?;
        Some(Self::new(compiled, def, d.name.clone(), d.settings.clone()))
    }
}

/// Why a run stopped before its last step.
#[derive(Debug, Clone, PartialEq)]
pub struct Halt {
    pub step: u64,
    pub reason: String,
    /// The op where the non-finite values started, when it could be found.
    pub provenance: Option<Provenance>,
}

/// Params and optimizer state at a step, to rewind to.
#[derive(Debug, Clone)]
struct Snapshot {
    step: u64,
    params: Vec<Tensor>,
    state: OptimizerState,
    lr_scale: f64,
    scale: (f64, u32),
}

/// Steps between snapshots: rewinding re-steps at most this many.
const SNAPSHOT_EVERY: u64 = 100;

/// One run being stepped.
pub struct Run {
    pub name: String,
    /// The run definition (base or variant) it runs.
    pub def: usize,
    pub dtype: DType,
    pub config: RunSettings,
    evaluator: Evaluator,
    state: OptimizerState,
    history: History,
    snapshots: Vec<Snapshot>,
    pub halted: Option<Halt>,
    pub skipped: u64,
    pub clipped: u64,
    /// Multiplier on the scheduled learning rate (the TUI's `+`/`-`).
    pub lr_scale: f64,
    /// The first non-finite step and where its values started.
    pub first_provenance: Option<(u64, Provenance)>,
    /// The current loss scale and the clean steps since it last changed.
    pub scale: f64,
    clean_steps: u32,
    param_names: Vec<String>,
    /// Params at the start of each kept step, for landscapes: the tensors the optimizer made
    /// (immutable, so keeping them costs no copy), read out only when asked for.
    trajectory: Decimated<Vec<Tensor>>,
}

/// Memory a run's trajectory may hold: every step of small losses, a handful of points of
/// large models (a 64-256-256-1 MLP keeps 12).
const TRAJECTORY_BYTES: usize = 8 << 20;
/// Most points a trajectory keeps.
const TRAJECTORY_POINTS: usize = 16384;

impl Run {
    /// The run `request` asks for of `compiled`, at the initial params.
    pub fn new(compiled: &CompiledFile, request: RunRequest) -> candle_core::Result<Self> {
        let RunRequest {
            def: run,
            name,
            dtype,
            settings: config,
        } = request;
        let evaluator = Evaluator::with_dtype(compiled, run, dtype)?;
        let n = compiled.params.len();
        let config_scale = config.loss_scale;
        let state = OptimizerState::new(&config.optimizer, n);
        let mut r = Self {
            name,
            def: run,
            dtype,
            config,
            evaluator,
            state,
            history: History::new(n),
            snapshots: Vec::new(),
            halted: None,
            skipped: 0,
            clipped: 0,
            lr_scale: 1.0,
            first_provenance: None,
            scale: match config_scale {
                LossScale::Off => 1.0,
                LossScale::Fixed(s) => s,
                LossScale::Dynamic => SCALE_INIT,
            },
            clean_steps: 0,
            param_names: compiled.params.iter().map(|p| p.name.clone()).collect(),
            trajectory: Decimated::new(0),
        };
        let dim = compiled.param_count();
        r.trajectory = Decimated::new((TRAJECTORY_BYTES / (8 * dim.max(1))).min(TRAJECTORY_POINTS));
        r.trajectory.push(0, r.param_copies()?);
        r.snapshot();
        Ok(r)
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.history.len() as u64
    }

    /// Every step taken so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The params' names, in the file's order.
    pub fn param_names(&self) -> &[String] {
        &self.param_names
    }

    /// The Hessian's top eigenvalue at the current params (at most `iters` power iterations).
    pub fn curvature(
        &self,
        iters: usize,
    ) -> Result<crate::compile::curvature::Curvature, Diagnostic> {
        crate::compile::curvature::top_eigenvalue_exact(&self.evaluator, iters, 0)
    }

    /// What the run's dtype did to each op's output at the current params, against f64.
    pub fn precision(&self) -> Result<Vec<crate::compile::trace::PrecisionStats>, Diagnostic> {
        self.evaluator.precision()
    }

    /// The loss file's source, for locating reports.
    pub fn source(&self) -> &std::sync::Arc<crate::diagnostic::SourceFile> {
        self.evaluator.source()
    }

    /// The current params.
    pub fn params(&self) -> &[Var] {
        self.evaluator.params()
    }

    /// Whether it halted or took all its steps.
    pub fn is_done(&self) -> bool {
        self.halted.is_some() || self.step_count() >= self.config.steps
    }

    /// The loss at the current params (forward only).
    pub fn current_loss(&self) -> Result<f64, Diagnostic> {
        self.evaluator.loss()
    }

    /// Changes the learning-rate multiplier from the next step on. A snapshot is taken here so
    /// rewinding to before or after the change replays it faithfully.
    pub fn set_lr_scale(&mut self, scale: f64) {
        self.lr_scale = scale;
        self.snapshot();
    }

    fn snapshot(&mut self) {
        let params = self
            .evaluator
            .params()
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>();
        if let Ok(params) = params {
            self.snapshots.push(Snapshot {
                step: self.step_count(),
                params,
                state: self.state.clone(),
                lr_scale: self.lr_scale,
                scale: (self.scale, self.clean_steps),
            });
        }
    }

    /// One step: gradients at the current params, inspection, then the update.
    pub fn step(&mut self) -> Result<StepRecord, Diagnostic> {
        let started = Instant::now();
        let t = self.step_count();
        let eval = self.gradients()?;
        let scale_used = self.scale;
        let internal = |e: candle_core::Error| Diagnostic::error(format!("step {t} failed: {e}"));
        let param_grad_norms: Vec<f64> = eval.grads.iter().map(norm).collect();
        let grad_norm = param_grad_norms.iter().map(|n| n * n).sum::<f64>().sqrt();
        let nonfinite: Vec<usize> = (0..param_grad_norms.len())
            .filter(|&i| !param_grad_norms[i].is_finite())
            .collect();
        let mut f = 0u8;
        if !eval.loss.is_finite() {
            f |= flags::LOSS_NONFINITE;
        }
        if !nonfinite.is_empty() {
            f |= flags::GRAD_NONFINITE;
        }
        let lr = self.config.schedule.lr(self.config.optimizer.lr(), t) * self.lr_scale;
        let mut bad_step = f & (flags::LOSS_NONFINITE | flags::GRAD_NONFINITE) != 0;
        let mut scaler_skip = false;
        if self.config.loss_scale == LossScale::Dynamic {
            if bad_step && f & flags::LOSS_NONFINITE == 0 {
                // An overflowed scaled gradient: skip the step and back off, as GradScaler does.
                scaler_skip = true;
                bad_step = false;
                f |= flags::SKIPPED;
                self.skipped += 1;
                self.scale *= 0.5;
                self.clean_steps = 0;
            } else if !bad_step {
                self.clean_steps += 1;
                if self.clean_steps == SCALE_GROWTH_INTERVAL {
                    self.scale *= 2.0;
                    self.clean_steps = 0;
                }
            }
        }
        let params: Vec<Tensor> = self
            .evaluator
            .params()
            .iter()
            .map(|v| v.as_tensor().clone())
            .collect();
        let param_norms: Vec<f64> = params.iter().map(norm).collect();
        let mut update_norm = 0.0;
        let mut moved_to = None;
        let apply =
            !scaler_skip && (!bad_step || self.config.on_nonfinite == NonFinitePolicy::Continue);
        if bad_step {
            // Tracing re-evaluates the step op by op: only for the first non-finite step.
            if self.first_provenance.is_none() {
                self.first_provenance = self.evaluator.trace().ok().flatten().map(|p| (t, p));
            }
            match self.config.on_nonfinite {
                NonFinitePolicy::Stop => {
                    self.halted = Some(Halt {
                        step: t,
                        reason: self.nonfinite_reason(eval.loss, &eval.grads, &nonfinite),
                        provenance: self
                            .first_provenance
                            .as_ref()
                            .filter(|(s, _)| *s == t)
                            .map(|(_, p)| p.clone()),
                    });
                }
                NonFinitePolicy::Skip => {
                    f |= flags::SKIPPED;
                    self.skipped += 1;
                }
                NonFinitePolicy::Continue => {}
            }
        }
        if apply {
            let (grads, clipped) = self.clip(eval.grads, grad_norm).map_err(internal)?;
            if clipped {
                f |= flags::CLIPPED;
                self.clipped += 1;
            }
            let state_before = self.state.clone();
            let new = update(&self.config.optimizer, &mut self.state, &params, &grads, lr)
                .map_err(internal)?;
            let deltas: Vec<f64> = params
                .iter()
                .zip(&new)
                .map(|(old, new)| Ok(norm(&(new - old)?)))
                .collect::<candle_core::Result<_>>()
                .map_err(internal)?;
            // An update that turns finite params non-finite from finite gradients: the
            // optimizer's own arithmetic overflowed (or its eps vanished in a low precision).
            let broken: Vec<usize> = (0..deltas.len())
                .filter(|&i| {
                    // A difference can overflow a low precision while both values are finite.
                    !deltas[i].is_finite()
                        && param_norms[i].is_finite()
                        && param_grad_norms[i].is_finite()
                        && count_nonfinite(&new[i]).0 > 0
                })
                .collect();
            let keep = broken.is_empty() || self.config.on_nonfinite == NonFinitePolicy::Continue;
            if !broken.is_empty() {
                f |= flags::UPDATE_NONFINITE;
                match self.config.on_nonfinite {
                    NonFinitePolicy::Stop => {
                        self.halted = Some(Halt {
                            step: t,
                            reason: self.broken_update_reason(&new, &broken),
                            provenance: None,
                        });
                    }
                    NonFinitePolicy::Skip => {
                        f |= flags::SKIPPED;
                        self.skipped += 1;
                    }
                    NonFinitePolicy::Continue => {}
                }
            }
            if keep {
                for (var, new) in self.evaluator.params().iter().zip(&new) {
                    var.set(new).map_err(internal)?;
                }
                update_norm = deltas.iter().map(|d| d * d).sum::<f64>().sqrt();
                moved_to = Some(new);
            } else {
                self.state = state_before;
            }
        }
        let total_param_norm = param_norms.iter().map(|n| n * n).sum::<f64>().sqrt();
        let record = StepRecord {
            step: t,
            core: Core {
                loss: eval.loss,
                grad_norm: grad_norm as f32,
                update_norm: update_norm as f32,
                update_ratio: if total_param_norm > 0.0 {
                    (update_norm / total_param_norm) as f32
                } else {
                    f32::NAN
                },
                lr: lr as f32,
                wall_us: started.elapsed().as_secs_f32() * 1e6,
                loss_scale_log2: scale_used.log2().round().clamp(-128.0, 127.0) as i8,
                flags: f,
            },
            param_grad_norms: param_grad_norms
                .iter()
                .map(|&n| {
                    if n.is_finite() {
                        (n as f32).min(f32::MAX)
                    } else {
                        f32::NAN
                    }
                })
                .collect(),
            param_norms: param_norms.iter().map(|&n| n as f32).collect(),
        };
        self.history.push(&record);
        if self.trajectory.wants(self.step_count()) {
            let point = match moved_to {
                Some(p) => p,
                None => self.param_copies().map_err(internal)?,
            };
            self.trajectory.push(self.step_count(), point);
        }
        if self.step_count().is_multiple_of(SNAPSHOT_EVERY) {
            self.snapshot();
        }
        Ok(record)
    }

    /// Loss and gradients at the current params, as the config says to take them.
    fn gradients(&self) -> Result<crate::compile::Evaluation, Diagnostic> {
        match (self.config.grad, self.config.loss_scale) {
            (GradSource::FiniteDifference, _) => self.evaluator.evaluate_fd(),
            (GradSource::Autograd, LossScale::Off) => self.evaluator.evaluate(),
            (GradSource::Autograd, _) => self.evaluator.evaluate_scaled(self.scale),
        }
    }

    /// The gradients after the config's norm and value clipping, and whether either clipped.
    fn clip(&self, grads: Vec<Tensor>, grad_norm: f64) -> candle_core::Result<(Vec<Tensor>, bool)> {
        let (mut grads, mut clipped) = (grads, false);
        if let Some(max) = self.config.clip_norm {
            let (g, c) = clip_norm(&grads, grad_norm, max)?;
            (grads, clipped) = (g, c);
        }
        if let Some(v) = self.config.clip_value {
            let (g, c) = clip_value(&grads, v)?;
            grads = g;
            clipped |= c;
        }
        Ok((grads, clipped))
    }

    /// The update the next step would make (flat, params in order), without taking it: with the
    /// run's gradients, clipping, learning rate and optimizer state. Every torch update rule is
    /// linear in the learning rate, so `params + s * update` is where the step lands with the
    /// learning rate times `s`.
    pub fn next_update(&self) -> Result<Vec<f64>, Diagnostic> {
        let t = self.step_count();
        let internal = |e: candle_core::Error| Diagnostic::error(format!("step {t} failed: {e}"));
        let eval = self.gradients()?;
        let grad_norm = eval
            .grads
            .iter()
            .map(|g| norm(g).powi(2))
            .sum::<f64>()
            .sqrt();
        let (grads, _) = self.clip(eval.grads, grad_norm).map_err(internal)?;
        let params: Vec<Tensor> = self
            .params()
            .iter()
            .map(|v| v.as_tensor().clone())
            .collect();
        let lr = self.config.schedule.lr(self.config.optimizer.lr(), t) * self.lr_scale;
        let mut state = self.state.clone();
        let new =
            update(&self.config.optimizer, &mut state, &params, &grads, lr).map_err(internal)?;
        let mut out = Vec::new();
        for (old, new) in params.iter().zip(&new) {
            let d = (new - old).and_then(|d| crate::compile::values_f64(&d));
            out.extend(d.map_err(internal)?);
        }
        Ok(out)
    }

    /// Where the run has been heading lately: from its point at 90% of its steps to now (None
    /// before the first step).
    pub fn recent_direction(&self) -> Option<Vec<f64>> {
        let now = self.step_count();
        let then = self
            .trajectory
            .iter()
            .filter(|(k, _)| *k * 10 <= now * 9 && *k < now)
            .last()?;
        let here = self.flat_params();
        Some(
            here.iter()
                .zip(flatten(&then.1))
                .map(|(a, b)| a - b)
                .collect(),
        )
    }

    /// All current param values in one flat vector (params in order, each row-major).
    pub fn flat_params(&self) -> Vec<f64> {
        self.param_values().concat()
    }

    /// Copies of the current params (the Vars change in place).
    fn param_copies(&self) -> candle_core::Result<Vec<Tensor>> {
        self.evaluator
            .params()
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect()
    }

    /// Where the run has been after step `after` (all of it for None): flat params at the kept
    /// steps, ending with the current ones.
    pub fn trajectory(&self, after: Option<u64>) -> Vec<(u64, Vec<f64>)> {
        let now = self.step_count();
        let mut out: Vec<(u64, Vec<f64>)> = self
            .trajectory
            .after(after)
            .map(|(k, p)| (*k, flatten(p)))
            .collect();
        if out.last().is_none_or(|(s, _)| *s != now) && after.is_none_or(|a| a < now) {
            out.push((now, self.flat_params()));
        }
        out
    }

    /// "`w` (3 of 8 values), `b` (1 of 1 values)": the params `which` of `tensors` (one a param)
    /// with their non-finite counts.
    fn name_nonfinite(&self, tensors: &[Tensor], which: &[usize]) -> String {
        let named: Vec<String> = which
            .iter()
            .map(|&i| {
                let (n, total) = count_nonfinite(&tensors[i]);
                format!("`{}` ({n} of {total} values)", self.param_names[i])
            })
            .collect();
        named.join(", ")
    }

    fn broken_update_reason(&self, new: &[Tensor], broken: &[usize]) -> String {
        let spec = &self.config.optimizer;
        let low = matches!(self.dtype, DType::F16 | DType::BF16);
        let hint = match spec.eps() {
            Some(0.0) => "; its eps is 0, so where the squared gradient is 0 the update divides by 0: use eps > 0"
                .to_string(),
            // Below half of f16's smallest subnormal, eps rounds to 0.
            Some(eps) if self.dtype == DType::F16 && eps < 2.9e-8 => format!(
                "; its eps = {} is 0 in f16, so where the squared gradient flushes to 0 the update divides by 0: use eps = 1e-4 or run in f32",
                crate::format::fmt_short(eps),
            ),
            _ if low => format!(
                "; its arithmetic overflowed {}: run in f32 or lower the lr",
                self.dtype.name()
            ),
            _ => String::new(),
        };
        format!(
            "the {} update made {} non-finite from finite gradients{hint}",
            spec.kind().name(),
            self.name_nonfinite(new, broken)
        )
    }

    fn nonfinite_reason(&self, loss: f64, grads: &[Tensor], bad: &[usize]) -> String {
        if !loss.is_finite() {
            return format!("the loss is {}", crate::format::fmt_num(loss));
        }
        format!(
            "the gradient of {} is non-finite",
            self.name_nonfinite(grads, bad)
        )
    }

    /// Goes back to the state just before step `step` (0 = the initial params), re-stepping
    /// from the nearest snapshot. Deterministic stepping makes the re-stepped records identical.
    pub fn rewind_to(&mut self, step: u64) -> Result<(), Diagnostic> {
        let step = step.min(self.step_count());
        let snap = self
            .snapshots
            .iter()
            .rev()
            .find(|s| s.step <= step)
            .cloned()
            .expect("the initial snapshot is always there");
        for (var, p) in self.evaluator.params().iter().zip(&snap.params) {
            var.set(p)
                .map_err(|e| Diagnostic::error(format!("rewind failed: {e}")))?;
        }
        self.state = snap.state;
        self.lr_scale = snap.lr_scale;
        (self.scale, self.clean_steps) = snap.scale;
        self.history.truncate(snap.step as usize);
        self.trajectory.truncate(snap.step);
        self.snapshots.retain(|s| s.step <= snap.step);
        self.halted = None;
        self.first_provenance = self.first_provenance.take().filter(|(s, _)| *s < step);
        self.recount();
        while self.step_count() < step {
            self.step()?;
        }
        Ok(())
    }

    fn recount(&mut self) {
        self.skipped = self.history.count(flags::SKIPPED);
        self.clipped = self.history.count(flags::CLIPPED);
    }

    /// Current param values, flattened row-major, in f64.
    pub fn param_values(&self) -> Vec<Vec<f64>> {
        self.evaluator
            .params()
            .iter()
            .map(|v| crate::compile::values_f64(v.as_tensor()).unwrap_or_default())
            .collect()
    }
}

/// Tensors' values in one flat f64 vector.
fn flatten(tensors: &[Tensor]) -> Vec<f64> {
    tensors
        .iter()
        .flat_map(|t| crate::compile::values_f64(t).unwrap_or_default())
        .collect()
}

fn count_nonfinite(t: &Tensor) -> (usize, usize) {
    crate::compile::trace::nonfinite(t).map_or((0, 0), |(bad, total)| (bad.len(), total))
}
