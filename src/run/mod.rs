//! Runs: one loss file, one run definition, one optimizer and dtype, stepped iteration by
//! iteration. Each step computes gradients, inspects them (norms, finiteness), applies clipping
//! and the non-finite policy, and only then updates. Snapshots let a run rewind and re-step to
//! the same numbers bit for bit.

pub mod batch;
pub mod export;
pub mod history;
pub mod lrfind;
pub mod metrics;
pub mod save;
pub mod stall;
pub mod summary;
pub mod sweep;
pub mod trajectory;
pub mod turns;
pub mod worker;

use std::time::Instant;

use candle_core::{Tensor, Var};

use self::history::{Core, History, StepRecord, Totals, Update, flags};
use self::stall::Stall;
use self::trajectory::Decimated;
use crate::compile::trace::Provenance;
use crate::compile::{CompiledFile, Evaluator, norm};
use crate::diagnostic::Diagnostic;
use crate::lang::file::DType;
use crate::optim::chain::{self, Verdict};
use crate::optim::groups::param_groups;
use crate::optim::kernels::norm_of_norms;
use crate::optim::optax::sm3_refuses_a_scalar;
use crate::optim::schedule::{clip_norm, clip_value};
use crate::optim::settings::{GradSource, LossScale, NonFinitePolicy, RunSettings};
use crate::optim::spec::OptimizerKind;
use crate::optim::step::{OptimizerState, Oracle, StateValue, StepCx};
use crate::optim::tricks::TrickKind;

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
    /// What the run keeps of its past (everything, unless asked otherwise).
    pub retention: Retention,
}

/// What a run keeps of its past steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Every row, a snapshot every 100 steps and the params at the best loss: to chart, export,
    /// save and rewind.
    Everything,
    /// [`Totals`], the counts and a window of recent rows (enough to tell a divergence): a
    /// headless run of any length in constant memory, which cannot rewind. It keeps the params
    /// at the best loss only with `best` (to save them): for a large model they are another
    /// copy of the params.
    Totals { best: bool },
    /// [`Totals`](Retention::Totals) without the best params and with a short path (the params
    /// along the way: pictures draw it, a halt reads the curvature at its lowest loss from
    /// it): what a sweep reads of each of its many runs. On a small loss the full path is a
    /// copy of the params every step, most of the cost of a batched step.
    Outcome,
}

impl RunRequest {
    /// Definition `def` of `compiled` in its own dtype, named `name`, with `settings`.
    pub fn new(compiled: &CompiledFile, def: usize, name: String, settings: RunSettings) -> Self {
        Self {
            def,
            name,
            dtype: compiled.runs[def].dtype,
            settings,
            retention: Retention::Everything,
        }
    }

    /// Definition `def` as the file describes it (None: there is no such definition).
    pub fn of(compiled: &CompiledFile, def: usize) -> Option<Self> {
        let d = compiled.runs.get(def)?;
        Some(Self::new(compiled, def, d.name.clone(), d.settings.clone()))
    }

    /// The run it asks for, or why it cannot start (sm3 on a scalar param) as an error pointing
    /// at the optimizer its definition names, when it runs that one: `check` and the TUI's
    /// worker report a run that cannot start alike.
    pub fn start(self, compiled: &CompiledFile) -> Result<Run, Diagnostic> {
        let def = &compiled.runs[self.def];
        let own = self.settings.optimizer == def.settings.optimizer;
        let name = self.name.clone();
        Run::new(compiled, self).map_err(|e| {
            let d = Diagnostic::error(format!("run `{name}` cannot start: {e}"));
            let source = &compiled.file.source;
            match def.optimizer.iter().find(|s| s.key.node == "name") {
                Some(s) if own => d.at(source, s.value.span.clone()).label("this optimizer"),
                _ => d.in_file(&source.path),
            }
        })
    }
}

/// Why a run stopped before its last step.
#[derive(Debug, Clone, PartialEq)]
pub struct Halt {
    /// The step it halted at: its last row.
    pub step: u64,
    /// One line on why, e.g. `the loss is NaN` or `diverged: loss grew from ...`.
    pub reason: String,
    /// The op where the non-finite values started, when it could be found.
    pub provenance: Option<Provenance>,
    /// Whether the loss diverged: then the provenance is only where it overflowed, not a cause.
    pub diverged: bool,
}

impl Halt {
    /// The report with a caret at the op where the non-finite values started (for a
    /// divergence: where they overflowed), as `run` prints it; None without a provenance.
    pub fn diagnostic(
        &self,
        source: &std::sync::Arc<crate::diagnostic::SourceFile>,
    ) -> Option<Diagnostic> {
        let p = self.provenance.as_ref()?;
        Some(if self.diverged {
            p.overflow_diagnostic(source, Some(self.step))
        } else {
            p.diagnostic(source, Some(self.step))
        })
    }
}

/// How much the loss must grow from its lowest recent value to call a halt a divergence.
const DIVERGENCE_GROWTH: f64 = 1e3;
/// Steps before a halt searched for the lowest loss.
const DIVERGENCE_WINDOW: usize = 50;

/// Params and optimizer state at a step, to rewind to.
#[derive(Debug, Clone)]
struct Snapshot {
    step: u64,
    params: Vec<Tensor>,
    state: OptimizerState,
    lr_scale: f64,
    scale: (f64, u32),
    /// The best row up to this step, so a rewind forgets only later bests.
    best: Option<Best>,
    /// The gradient norms' peaks up to this step, for the same reason.
    peak_grad_norms: Vec<f64>,
}

/// The params of the row with the lowest finite loss so far (the earliest of equal ones), as
/// the summary's "best loss (step)" counts it. Copied when the best improves: one copy of the
/// params per improving step, nothing otherwise, and no re-stepping to recover them.
#[derive(Debug, Clone)]
pub struct Best {
    pub step: u64,
    pub loss: f64,
    pub params: Vec<Tensor>,
}

/// The evaluation at the current params and the norms its row was made from, kept for the
/// next update (each norm is a pass over a param or gradient: taken once).
struct Current {
    eval: crate::compile::Evaluation,
    grad_norms: Vec<f64>,
    param_norms: Vec<f64>,
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
    retention: Retention,
    /// Best and last loss and the first non-finite step, over every row stepped from.
    totals: Totals,
    history: History,
    snapshots: Vec<Snapshot>,
    pub halted: Option<Halt>,
    pub skipped: u64,
    pub clipped: u64,
    /// Updates that left a param with a gradient exactly where it was (see [`stall`]).
    pub stalled: u64,
    /// The first of them.
    pub first_stall: Option<Stall>,
    /// Each param's largest finite gradient norm over the rows so far, which a stalled
    /// param's is measured against (see [`stall::still`]).
    peak_grad_norms: Vec<f64>,
    /// Multiplier on the scheduled learning rate (the TUI's `+`/`-`).
    pub lr_scale: f64,
    /// The first non-finite step and where its values started.
    pub first_provenance: Option<(u64, Provenance)>,
    /// The current loss scale and the clean steps since it last changed.
    pub scale: f64,
    clean_steps: u32,
    param_names: Vec<String>,
    /// Loss and gradients at the current params (the last row's), for the next update.
    current: Option<Current>,
    /// Params at the start of each kept step, for landscapes: the tensors the optimizer made
    /// (immutable, so keeping them costs no copy), read out only when asked for.
    trajectory: Decimated<Vec<Tensor>>,
    best: Option<Best>,
}

/// What a run starts from: [`Run::new`]'s fresh state or [`Run::fork`]'s copy.
struct Start {
    name: String,
    def: usize,
    dtype: DType,
    config: RunSettings,
    evaluator: Evaluator,
    state: OptimizerState,
    retention: Retention,
    lr_scale: f64,
    /// The loss scale and the clean steps since it last changed.
    scale: (f64, u32),
    param_names: Vec<String>,
}

/// Memory a run's trajectory may hold: every step of small losses, a handful of points of
/// large models (a 64-256-256-1 MLP keeps 12), none of params larger than this.
const TRAJECTORY_BYTES: usize = 8 << 20;
/// Most points a trajectory keeps.
const TRAJECTORY_POINTS: usize = 16384;
/// Most points the trajectory of a [`Retention::Outcome`] run keeps (always step 0, where a
/// run that diverges from the start has its lowest loss).
const OUTCOME_POINTS: usize = 64;

impl Run {
    /// The run `request` asks for of `compiled`, at the initial params.
    pub fn new(compiled: &CompiledFile, request: RunRequest) -> candle_core::Result<Self> {
        let RunRequest {
            def: run,
            name,
            dtype,
            settings: config,
            retention,
        } = request;
        let evaluator = Evaluator::with_dtype(compiled, run, dtype)?;
        let config_scale = config.loss_scaling();
        let names: Vec<String> = compiled.params.iter().map(|p| p.name.clone()).collect();
        let groups = param_groups(
            &config.optimizer,
            &compiled.runs[run].param_settings,
            &names,
        )
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        // sm3 keeps an accumulator per dimension and refuses a scalar in its init, which knows
        // params only by position: said here, by name.
        for g in groups
            .iter()
            .filter(|g| g.spec.kind() == Some(OptimizerKind::Sm3))
        {
            if let Some(&i) = g
                .params
                .iter()
                .find(|&&i| compiled.params[i].value.rank() == 0)
            {
                return Err(sm3_refuses_a_scalar(&format!("`{}`", names[i])));
            }
        }
        // Settings from -o or the TUI did not pass the file's check.
        if config.grad == GradSource::FiniteDifference
            && let Some(why) = crate::compile::finite_differences_refused(compiled.param_count())
        {
            return Err(candle_core::Error::Msg(format!(
                "{why}: {}",
                crate::compile::FD_HELP
            )));
        }
        let initial: Vec<Tensor> = compiled.params.iter().map(|p| p.value.clone()).collect();
        let state = OptimizerState::with_tricks(
            groups,
            &config.tricks,
            &param_tensors(evaluator.params()),
            &initial,
        )?;
        let scale = match config_scale {
            LossScale::Off => 1.0,
            LossScale::Fixed(s) => s,
            LossScale::Dynamic => SCALE_INIT,
        };
        let start = Start {
            name,
            def: run,
            dtype,
            config,
            evaluator,
            state,
            retention,
            lr_scale: 1.0,
            scale: (scale, 0),
            param_names: names,
        };
        Self::start(start).map_err(|d| candle_core::Error::Msg(d.headline()))
    }

    /// A copy of this run at its current params, optimizer state, lr multiplier and loss scale,
    /// with a history of its own starting there (step 0) kept as `retention` says: stepping the
    /// copy leaves this run as it is.
    pub fn fork(&self, retention: Retention) -> Result<Self, Diagnostic> {
        let evaluator = self
            .evaluator
            .detached()
            .map_err(|e| Diagnostic::error(format!("the run could not be copied: {e}")))?;
        Self::start(Start {
            name: self.name.clone(),
            def: self.def,
            dtype: self.dtype,
            config: self.config.clone(),
            evaluator,
            state: self.state.clone(),
            retention,
            lr_scale: self.lr_scale,
            scale: (self.scale, self.clean_steps),
            param_names: self.param_names.clone(),
        })
    }

    /// The run `start` describes, at step 0: its params evaluated and a first snapshot taken.
    fn start(start: Start) -> Result<Self, Diagnostic> {
        let dim: usize = start
            .evaluator
            .params()
            .iter()
            .map(|v| v.as_tensor().elem_count())
            .sum();
        let n = start.param_names.len();
        let mut r = Self {
            name: start.name,
            def: start.def,
            dtype: start.dtype,
            config: start.config,
            evaluator: start.evaluator,
            state: start.state,
            retention: start.retention,
            totals: Totals::default(),
            history: match start.retention {
                Retention::Everything => History::new(n),
                Retention::Totals { .. } | Retention::Outcome => {
                    History::windowed(n, DIVERGENCE_WINDOW + 1)
                }
            },
            snapshots: Vec::new(),
            halted: None,
            skipped: 0,
            clipped: 0,
            stalled: 0,
            first_stall: None,
            peak_grad_norms: Vec::new(),
            lr_scale: start.lr_scale,
            first_provenance: None,
            scale: start.scale.0,
            clean_steps: start.scale.1,
            param_names: start.param_names,
            current: None,
            trajectory: Decimated::new((TRAJECTORY_BYTES / (8 * dim.max(1))).min(
                match start.retention {
                    Retention::Outcome => OUTCOME_POINTS,
                    _ => TRAJECTORY_POINTS,
                },
            )),
            best: None,
        };
        if r.trajectory.wants(0) {
            let copies = r
                .param_copies()
                .map_err(|e| Diagnostic::error(format!("the run could not start: {e}")))?;
            r.trajectory.push(0, copies);
        }
        r.snapshot();
        r.settle(None)?;
        Ok(r)
    }

    /// Updates taken so far: the run is at step `step_count`, its history holds rows 0..=that.
    pub fn step_count(&self) -> u64 {
        self.history.len().saturating_sub(1) as u64
    }

    /// Row k for every step k so far, the current one last (only the recent ones under
    /// [`Retention::Totals`]).
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Best and last loss and the first non-finite step, over every row stepped from (the
    /// current row, θ_N, is not counted until the run steps from it).
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The optimizer's state and its tricks', as the next step starts from it.
    pub fn optimizer_state(&self) -> &OptimizerState {
        &self.state
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

    /// The Hessian at the current params, of every param or of param `param`'s block.
    pub fn hessian(
        &self,
        param: Option<usize>,
        options: &crate::compile::hessian::Options,
    ) -> Result<crate::compile::hessian::Hessian, Diagnostic> {
        crate::compile::hessian::hessian_exact(&self.evaluator, &self.param_names, param, options)
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

    /// Keeps the params and state to rewind to (not under [`Retention::Totals`]).
    fn snapshot(&mut self) {
        if self.retention != Retention::Everything {
            return;
        }
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
                best: self.best.clone(),
                peak_grad_norms: self.peak_grad_norms.clone(),
            });
        }
    }

    /// The params at the lowest finite loss of the rows so far, the current one included
    /// (None while no loss was finite, or when the run's [`Retention`] keeps none).
    pub fn best(&self) -> Option<&Best> {
        self.best.as_ref()
    }

    /// Whether the run keeps the params at its best loss (see [`Retention`]).
    fn keeps_best(&self) -> bool {
        matches!(
            self.retention,
            Retention::Everything | Retention::Totals { best: true }
        )
    }

    /// Keeps the current params when the current row's loss beats the best: the tensors the
    /// optimizer `made` when there are some (immutable, so kept without a copy), else a copy.
    fn keep_best(
        &mut self,
        step: u64,
        loss: f64,
        made: Option<&[Tensor]>,
    ) -> Result<(), Diagnostic> {
        if !self.keeps_best()
            || !loss.is_finite()
            || self.best.as_ref().is_some_and(|b| loss >= b.loss)
        {
            return Ok(());
        }
        let params = match made {
            Some(made) => made.to_vec(),
            None => self
                .param_copies()
                .map_err(|e| Diagnostic::error(format!("step {step}: {e}")))?,
        };
        self.best = Some(Best { step, loss, params });
        Ok(())
    }

    /// One step from the current params θ_t: the gradients already taken there, inspection,
    /// the update (filling in row t's update), then row t+1 at the new params. Returns row t.
    pub fn step(&mut self) -> Result<StepRecord, Diagnostic> {
        let started = Instant::now();
        let t = self.step_count();
        // A halted run keeps its evaluation at θ_t (the inspector shows its gradients).
        let halted = self.halted.is_some();
        let Current {
            eval,
            grad_norms: param_grad_norms,
            param_norms,
        } = match self.current.take_if(|_| !halted) {
            Some(c) => c,
            None => return Err(Diagnostic::error(format!("step {t}: the run has halted"))),
        };
        let internal = |e: candle_core::Error| Diagnostic::error(format!("step {t} failed: {e}"));
        let grad_norm = norm_of_norms(&param_grad_norms);
        let grads_finite = param_grad_norms.iter().all(|n| n.is_finite());
        let lr = self.lr_at(t);
        let mut f = 0u8;
        let mut bad_step = !eval.loss.is_finite() || !grads_finite;
        let mut scaler_skip = false;
        if self.config.loss_scaling() == LossScale::Dynamic {
            if bad_step && eval.loss.is_finite() {
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
        let params = param_tensors(self.evaluator.params());
        let mut update_norm = 0.0;
        let mut moved_to = None;
        // The evaluation at θ_t counts, as torch's LBFGS counts its first closure call.
        let mut evals = 1;
        // The chain's skip tricks judge the gradient first (their counters advance either way);
        // what they let through with non-finite values is the run's policy's.
        let verdict = match scaler_skip {
            true => Verdict::Step,
            false => chain::admit(&mut self.state, &eval.grads).map_err(internal)?,
        };
        let trick_skip = verdict != Verdict::Step;
        // Under `stop` a non-finite row halted the run when it was evaluated.
        let apply = !scaler_skip
            && !trick_skip
            && (!bad_step || self.config.on_nonfinite == NonFinitePolicy::Continue);
        if trick_skip || (bad_step && self.config.on_nonfinite == NonFinitePolicy::Skip) {
            f |= flags::SKIPPED;
            self.skipped += 1;
        }
        if apply {
            let (grads, clipped) = self.clip(eval.grads, Some(grad_norm)).map_err(internal)?;
            let mut state = self.state.clone();
            state.defer_moments(&params);
            let mut oracle = Closure::new(self);
            let stepped = chain::step(
                &mut state,
                &mut StepCx {
                    params: &params,
                    grads: &grads,
                    loss: eval.loss,
                    lr,
                    t: 0,
                    oracle: &mut oracle,
                },
            )
            .map_err(internal)?;
            evals += oracle.evals;
            if clipped || oracle.clipped || stepped.clipped {
                f |= flags::CLIPPED;
                self.clipped += 1;
            }
            let new = stepped.params;
            let deltas: Vec<f64> = params
                .iter()
                .zip(&new)
                .map(|(old, new)| crate::compile::distance(new, old))
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
            if let Some(&first) = broken.first() {
                f |= flags::UPDATE_NONFINITE;
                // An optimizer written in the loss language: the op of its update that did it.
                let provenance = crate::compile::optimizer::trace_update(
                    &self.config.optimizer,
                    &self.state,
                    &params,
                    &grads,
                    eval.loss,
                    lr,
                    first,
                );
                if self.first_provenance.is_none() {
                    self.first_provenance = provenance.clone().map(|p| (t, p));
                }
                match self.config.on_nonfinite {
                    NonFinitePolicy::Stop => {
                        self.halted = Some(Halt {
                            step: t,
                            reason: self.broken_update_reason(&new, &broken),
                            provenance,
                            diverged: false,
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
                // The state first: its moments' update reads the params the step started from.
                self.state = state;
                self.state.commit().map_err(internal)?;
                self.set_params(&new).map_err(internal)?;
                update_norm = deltas.iter().map(|d| d * d).sum::<f64>().sqrt();
                if deltas.contains(&0.0) && self.can_stall() {
                    let lrs = self.state.lr_scales(params.len());
                    let lrs: Vec<f64> = lrs.iter().map(|s| lr * s).collect();
                    let still =
                        stall::still(&deltas, &param_grad_norms, &self.peak_grad_norms, &lrs);
                    if !still.is_empty() {
                        f |= flags::STALLED;
                        self.note_stall(t, &still, &params, &grads)
                            .map_err(internal)?;
                    }
                }
                // Held through the next evaluation only when they are to be kept.
                if self.trajectory.wants(t + 1) || self.keeps_best() {
                    moved_to = Some(new);
                }
            }
        }
        if self.halted.is_none() {
            self.settle(moved_to.as_deref())?;
        }
        let update = Update {
            norm: update_norm as f32,
            ratio: update_ratio(update_norm, &param_norms),
            lr: lr as f32,
            wall_us: started.elapsed().as_secs_f32() * 1e6,
            flags: f,
            func_evals: u16::try_from(evals).unwrap_or(u16::MAX),
        };
        self.close_step(t, &update, moved_to)
    }

    /// Fills in row t's update and keeps what the step leaves behind: the trajectory point
    /// (the tensors the optimizer `moved_to`, if it moved), the totals and a snapshot when due.
    /// Returns row t.
    fn close_step(
        &mut self,
        t: u64,
        update: &Update,
        moved_to: Option<Vec<Tensor>>,
    ) -> Result<StepRecord, Diagnostic> {
        let internal = |e: candle_core::Error| Diagnostic::error(format!("step {t} failed: {e}"));
        self.history.finish(t as usize, update);
        if self.halted.is_none() && self.trajectory.wants(self.step_count()) {
            let point = match moved_to {
                Some(p) => p,
                None => self.param_copies().map_err(internal)?,
            };
            self.trajectory.push(self.step_count(), point);
        }
        if let Some(row) = self.history.get(t as usize) {
            self.totals.add(&row);
        }
        if self.retention == Retention::Everything
            && self.step_count() > t
            && self.step_count().is_multiple_of(SNAPSHOT_EVERY)
        {
            self.snapshot();
        }
        self.history
            .get(t as usize)
            .ok_or_else(|| Diagnostic::error(format!("step {t}: no row")))
    }

    /// The learning rate of the update from step `t`: the schedule's, times the multiplier.
    fn lr_at(&self, t: u64) -> f64 {
        self.config.schedule.lr(self.config.optimizer.lr(), t) * self.lr_scale
    }

    /// Evaluates the current params and appends their row (with an empty update). A non-finite
    /// row is traced (the first one), and halts the run under the `stop` policy. `made`: the
    /// tensors the optimizer made the current params from, when a step just set them.
    fn settle(&mut self, made: Option<&[Tensor]>) -> Result<(), Diagnostic> {
        let t = self.history.len() as u64;
        let eval = self.gradients()?;
        let param_grad_norms: Vec<f64> = eval.grads.iter().map(norm).collect();
        let nonfinite: Vec<usize> = (0..param_grad_norms.len())
            .filter(|&i| !param_grad_norms[i].is_finite())
            .collect();
        let param_norms: Vec<f64> = self
            .evaluator
            .params()
            .iter()
            .map(|v| norm(v.as_tensor()))
            .collect();
        let mut f = 0u8;
        if !eval.loss.is_finite() {
            f |= flags::LOSS_NONFINITE;
        }
        if !nonfinite.is_empty() {
            f |= flags::GRAD_NONFINITE;
        }
        // Dynamic loss scaling skips an overflowed gradient of a finite loss instead, and
        // `skip_nonfinite` a non-finite gradient until it gives up.
        let bad = !eval.loss.is_finite()
            || (!nonfinite.is_empty()
                && self.config.loss_scaling() != LossScale::Dynamic
                && !chain::absorbs_nonfinite(&self.state));
        if bad {
            // Tracing re-evaluates the step op by op: only for the first non-finite step.
            if self.first_provenance.is_none() {
                self.first_provenance = self.evaluator.trace().ok().flatten().map(|p| (t, p));
            }
            if self.config.on_nonfinite == NonFinitePolicy::Stop {
                let provenance = self
                    .first_provenance
                    .as_ref()
                    .filter(|(s, _)| *s == t)
                    .map(|(_, p)| p.clone());
                let divergence = self.divergence();
                let reason = match &divergence {
                    Some(d) => match &provenance {
                        Some(p) => format!("{d}; it overflowed at `{}`", p.op),
                        None => d.clone(),
                    },
                    None => self.nonfinite_reason(eval.loss, &eval.grads, &nonfinite),
                };
                self.halted = Some(Halt {
                    step: t,
                    reason,
                    provenance,
                    diverged: divergence.is_some(),
                });
            }
        }
        let eval_loss = self.eval_loss().map(|l| l.unwrap_or(f64::NAN));
        self.push_row(eval, param_grad_norms, param_norms, f, eval_loss, made)
    }

    /// Appends row t (the next one) at params θ_t with the loss and gradients `eval` there and
    /// their norms, and makes `eval` the current evaluation. `made`: as for [`Self::settle`].
    fn push_row(
        &mut self,
        eval: crate::compile::Evaluation,
        param_grad_norms: Vec<f64>,
        param_norms: Vec<f64>,
        f: u8,
        eval_loss: Option<f64>,
        made: Option<&[Tensor]>,
    ) -> Result<(), Diagnostic> {
        let t = self.history.len() as u64;
        let grad_norm = norm_of_norms(&param_grad_norms);
        self.peak_grad_norms.resize(param_grad_norms.len(), 0.0);
        for (peak, &n) in self.peak_grad_norms.iter_mut().zip(&param_grad_norms) {
            if n.is_finite() {
                *peak = peak.max(n);
            }
        }
        self.history.push(&StepRecord {
            step: t,
            core: Core {
                loss: eval.loss,
                grad_norm: grad_norm as f32,
                // No update from here yet: empty until the run steps.
                update_norm: f32::NAN,
                update_ratio: f32::NAN,
                lr: self.lr_at(t) as f32,
                wall_us: 0.0,
                loss_scale_log2: self.scale.log2().round().clamp(-128.0, 127.0) as i8,
                flags: f,
                func_evals: 0,
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
            // A failed forward at the eval params is a NaN there, as a NaN loss would be.
            eval_loss,
        });
        self.keep_best(t, eval.loss, made)?;
        self.current = Some(Current {
            eval,
            grad_norms: param_grad_norms,
            param_norms,
        });
        Ok(())
    }

    /// `diverged: loss grew from 5 to 1.4e34 over 12 steps; ...` when the finite losses of the
    /// last rows grew more than [`DIVERGENCE_GROWTH`]-fold from their lowest, with the lr
    /// against the optimizer's stability bound there; None otherwise.
    fn divergence(&self) -> Option<String> {
        let cores = self.history.cores();
        let first = self.history.first();
        let from = cores.len().saturating_sub(DIVERGENCE_WINDOW);
        let finite = || (from..cores.len()).filter(|&k| cores[k].loss.is_finite());
        let low = finite().min_by(|&a, &b| cores[a].loss.total_cmp(&cores[b].loss))?;
        let high = finite()
            .filter(|&k| k > low)
            .max_by(|&a, &b| cores[a].loss.total_cmp(&cores[b].loss))?;
        let (lo, hi) = (cores[low].loss, cores[high].loss);
        if hi <= lo || hi - lo <= DIVERGENCE_GROWTH * lo.abs() {
            return None;
        }
        Some(format!(
            "diverged: loss grew from {} to {} over {} steps; {}",
            crate::format::fmt_short(lo),
            crate::format::fmt_short(hi),
            high - low,
            self.stability((first + low) as u64, f64::from(cores[low].lr)),
        ))
    }

    /// The lr of step `at` against the optimizer's stability bound at θ_at: 2/λ for gradient
    /// descent, 2(1+β)/λ with heavy-ball momentum β, 2(1+β)/((1+2β)λ) with Nesterov's.
    fn stability(&self, at: u64, lr: f64) -> String {
        use crate::optim::spec::OptimizerSpec;
        let lr_text = crate::format::fmt_short(lr);
        let OptimizerSpec::Sgd(o) = &self.config.optimizer else {
            return format!(
                "{} adapts its steps, so no curvature bound applies: the loss diverged at lr {lr_text}",
                self.config.optimizer.name()
            );
        };
        let b = o.momentum;
        let beta = crate::format::fmt_short(b);
        // On a quadratic of curvature λ, the update is stable while lr·λ stays below this.
        let (limit, form, given) = match (b == 0.0, o.nesterov) {
            (true, _) => (2.0, "2/λ", String::new()),
            (false, false) => (
                2.0 * (1.0 + b) / (1.0 - o.dampening),
                "2(1+β)/λ",
                format!("β = {beta}, "),
            ),
            (false, true) => (
                2.0 * (1.0 + b) / (1.0 + 2.0 * b),
                "2(1+β)/((1+2β)λ)",
                format!("β = {beta}, "),
            ),
        };
        match self.curvature_at(at) {
            Ok(lambda) if lambda + o.weight_decay > 0.0 => {
                let bound = limit / (lambda + o.weight_decay);
                let side = if lr > bound { "above" } else { "below" };
                format!(
                    "lr {lr_text} is {side} the stability bound {form} = {} ({given}λ = {} at step {at}, the lowest loss)",
                    crate::format::fmt_short(bound),
                    crate::format::fmt_short(lambda),
                )
            }
            Ok(lambda) => format!(
                "the curvature at step {at} is λ = {}, so no bound {form} applies",
                crate::format::fmt_short(lambda)
            ),
            Err(why) => format!("the stability bound {form} could not be computed: {why}"),
        }
    }

    /// The Hessian's top eigenvalue at θ_at, from the kept trajectory (the params are put back).
    fn curvature_at(&self, at: u64) -> Result<f64, String> {
        let Some((_, point)) = self.trajectory.iter().find(|(k, _)| *k == at) else {
            return Err(format!("the params of step {at} are no longer kept"));
        };
        let c = self
            .at(point, |run| {
                crate::compile::curvature::top_eigenvalue_exact(&run.evaluator, 100, 0)
            })
            .map_err(|e| e.to_string())?;
        Ok(c.map_err(|d| d.message)?.lambda)
    }

    /// Loss and gradients at the current params, as the config says to take them.
    fn gradients(&self) -> Result<crate::compile::Evaluation, Diagnostic> {
        match (self.config.grad, self.config.loss_scaling()) {
            (GradSource::FiniteDifference, _) => self.evaluator.evaluate_fd(),
            (GradSource::Autograd, LossScale::Off) => self.evaluator.evaluate(),
            (GradSource::Autograd, _) => self.evaluator.evaluate_scaled(self.scale),
        }
    }

    /// The gradients after the config's norm and value clipping, and whether either clipped
    /// (`grad_norm`: their global norm when known).
    fn clip(
        &self,
        grads: Vec<Tensor>,
        grad_norm: Option<f64>,
    ) -> candle_core::Result<(Vec<Tensor>, bool)> {
        let (mut grads, mut clipped) = (grads, false);
        if let Some(max) = self.config.clip_norm {
            // As the step's own norm is taken (`Current::grad_norms`).
            let total = grad_norm
                .unwrap_or_else(|| norm_of_norms(&grads.iter().map(norm).collect::<Vec<_>>()));
            let (g, c) = clip_norm(&grads, total, max)?;
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
        let (grads, _) = self.clip(eval.grads, None).map_err(internal)?;
        let params = param_tensors(self.params());
        let mut state = self.state.clone();
        let new = chain::step(
            &mut state,
            &mut StepCx {
                params: &params,
                grads: &grads,
                loss: eval.loss,
                lr: self.lr_at(t),
                t: 0,
                oracle: &mut Closure::new(self),
            },
        )
        .map_err(internal)?
        .params;
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

    /// The params the optimizer evaluates the model at, when it keeps them apart from the ones
    /// it takes gradients at (schedule-free's x, ASGD's average), flattened row-major in f64.
    pub fn eval_param_values(&self) -> Option<Vec<Vec<f64>>> {
        let eval = self.state.eval_params(&param_tensors(self.params()))?;
        Some(values(&eval))
    }

    /// The named parts of the optimizer's state beyond the params (schedule-free's `z`,
    /// Prodigy's `d`).
    pub fn state_values(&self) -> Vec<(&'static str, StateValue)> {
        self.state.state_values(self.param_names.len())
    }

    /// The loss at the eval params ([`Self::eval_param_values`]), forward only; the params are
    /// put back.
    pub fn eval_loss(&self) -> Option<Result<f64, Diagnostic>> {
        let eval = self.state.eval_params(&param_tensors(self.params()))?;
        Some(
            self.at(&eval, |run| run.evaluator.loss())
                .map_err(|e| Diagnostic::error(format!("eval params: {e}")))
                .and_then(|loss| loss),
        )
    }

    /// The f32 master params of a `master_weights` run in f16/bf16 (the run's own params are
    /// their rounding), flattened row-major in f64.
    pub fn master_param_values(&self) -> Option<Vec<Vec<f64>>> {
        Some(values(self.state.master_params()?))
    }

    /// `f` with the run's params at `params`, put back after. Params given as the run's own
    /// tensors (a step's `cx.params`, detached views of the Vars; the groups an optimizer keeps
    /// no eval params for) are left alone: a Var refuses to be set from its own storage, and
    /// nothing else makes a same-shaped set fail.
    fn at<T>(&self, params: &[Tensor], f: impl FnOnce(&Self) -> T) -> candle_core::Result<T> {
        let mut moved: Vec<(&Var, Tensor)> = Vec::new();
        for (var, p) in self.evaluator.params().iter().zip(params) {
            let here = var.as_tensor().copy()?;
            match var.set(p) {
                Ok(()) => moved.push((var, here)),
                Err(_) if p.dims() == var.as_tensor().dims() => {}
                Err(e) => return Err(e),
            }
        }
        let out = f(self);
        for (var, v) in &moved {
            var.set(v)?;
        }
        Ok(out)
    }

    /// Sets the params to `values`.
    fn set_params(&self, values: &[Tensor]) -> candle_core::Result<()> {
        for (var, v) in self.evaluator.params().iter().zip(values) {
            // An optimizer may hand back a view of the param's own storage (LBFGS's flat vector
            // of a lone param is the param itself), which `Var::set` refuses: set a copy then.
            if var.set(v).is_err() {
                var.set(&v.copy()?)?;
            }
        }
        Ok(())
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
            spec.name(),
            self.name_nonfinite(new, broken)
        )
    }

    fn nonfinite_reason(&self, loss: f64, grads: &[Tensor], bad: &[usize]) -> String {
        if !loss.is_finite() {
            return format!("the loss is {}", crate::format::fmt_num(loss));
        }
        format!(
            "the gradient of {} {} non-finite",
            self.name_nonfinite(grads, bad),
            if bad.len() == 1 { "is" } else { "are" }
        )
    }

    /// Goes back to step `step` (0 = the initial params), re-stepping from the nearest
    /// snapshot. Deterministic stepping makes the re-stepped records identical.
    pub fn rewind_to(&mut self, step: u64) -> Result<(), Diagnostic> {
        let step = step.min(self.step_count());
        let snap = self
            .snapshots
            .iter()
            .rev()
            .find(|s| s.step <= step)
            .cloned()
            .ok_or_else(|| Diagnostic::error("a headless run keeps no snapshots to rewind to"))?;
        for (var, p) in self.evaluator.params().iter().zip(&snap.params) {
            var.set(p)
                .map_err(|e| Diagnostic::error(format!("rewind failed: {e}")))?;
        }
        self.state = snap.state;
        self.best = snap.best;
        self.peak_grad_norms = snap.peak_grad_norms;
        self.lr_scale = snap.lr_scale;
        (self.scale, self.clean_steps) = snap.scale;
        self.history.truncate(snap.step as usize);
        self.trajectory.truncate(snap.step);
        self.snapshots.retain(|s| s.step <= snap.step);
        self.halted = None;
        self.first_provenance = self.first_provenance.take().filter(|(s, _)| *s < snap.step);
        self.first_stall = self.first_stall.take().filter(|s| s.step < snap.step);
        self.recount();
        self.settle(None)?;
        while self.step_count() < step && self.halted.is_none() {
            self.step()?;
        }
        Ok(())
    }

    /// Where the first non-finite values of a run that went on past them (`--on-nonfinite
    /// skip` or `continue`) started, as a warning: a halted run's halt says it instead.
    pub fn nonfinite_report(&self) -> Option<(u64, Diagnostic)> {
        if self.halted.is_some() {
            return None;
        }
        let (step, p) = self.first_provenance.as_ref()?;
        let mut d = p.diagnostic(self.source(), Some(*step));
        d.severity = crate::diagnostic::Severity::Warning;
        Some((*step, d))
    }

    /// Whether a param that stays put means its update was lost: not where the optimizer may
    /// hold it on purpose (see [`OptimizerKind::may_hold_still`]), nor where a trick keeps
    /// what rounding drops outside the params (master weights, Kahan, stochastic rounding:
    /// their params move only when that adds up) or centralizes a gradient to zero.
    fn can_stall(&self) -> bool {
        let held = self
            .config
            .optimizer
            .kind()
            .is_some_and(OptimizerKind::may_hold_still);
        !held
            && !self.config.tricks.iter().any(|t| {
                matches!(
                    t.kind(),
                    TrickKind::MasterWeights
                        | TrickKind::Kahan
                        | TrickKind::StochasticRounding
                        | TrickKind::Centralize
                )
            })
    }

    /// Counts a stalled update from row `t` of the `still` params (see [`stall::still`]).
    fn note_stall(
        &mut self,
        t: u64,
        still: &[usize],
        params: &[Tensor],
        grads: &[Tensor],
    ) -> candle_core::Result<()> {
        self.stalled += 1;
        if self.first_stall.is_none() {
            let squares = self
                .config
                .optimizer
                .kind()
                .is_some_and(OptimizerKind::keeps_squares);
            self.first_stall = Some(Stall::new(t, still, params, grads, self.dtype, squares)?);
        }
        Ok(())
    }

    fn recount(&mut self) {
        self.skipped = self.history.count(flags::SKIPPED);
        self.clipped = self.history.count(flags::CLIPPED);
        self.stalled = self.history.count(flags::STALLED);
        self.totals = self.history.totals();
    }

    /// Loss and gradients at the current params θ_k (None only before the first evaluation).
    pub fn current(&self) -> Option<&crate::compile::Evaluation> {
        self.current.as_ref().map(|c| &c.eval)
    }

    /// Current param values, flattened row-major, in f64.
    pub fn param_values(&self) -> Vec<Vec<f64>> {
        values(&param_tensors(self.params()))
    }
}

/// An update's norm over the norm of all params before it (NaN at zero params).
fn update_ratio(update_norm: f64, param_norms: &[f64]) -> f32 {
    let total = norm_of_norms(param_norms);
    if total > 0.0 {
        (update_norm / total) as f32
    } else {
        f32::NAN
    }
}

/// The params' tensors (sharing the Vars' storage: read them before the Vars change), detached:
/// state an optimizer builds from tracked params (an ema, Adam's moments of agc-clipped
/// gradients) would chain each step's graph to the last, growing without bound until dropping
/// it overflows the stack.
fn param_tensors(vars: &[Var]) -> Vec<Tensor> {
    vars.iter().map(|v| v.as_tensor().detach()).collect()
}

/// The run's loss as a step's [`Oracle`]: evaluated elsewhere with the params put back after,
/// counting the evaluations. Its gradients are clipped as the step's first one was, as a torch
/// closure that clips does for LBFGS.
struct Closure<'a> {
    run: &'a Run,
    /// Evaluations made so far.
    evals: u32,
    /// Whether the clipping changed one of their gradients.
    clipped: bool,
}

impl<'a> Closure<'a> {
    fn new(run: &'a Run) -> Self {
        Self {
            run,
            evals: 0,
            clipped: false,
        }
    }
}

/// A diagnostic from the run's evaluator, as a step's error.
fn step_error(d: Diagnostic) -> candle_core::Error {
    candle_core::Error::Msg(d.message)
}

impl Oracle for Closure<'_> {
    fn loss_and_grads(&mut self, params: &[Tensor]) -> candle_core::Result<(f64, Vec<Tensor>)> {
        let eval = self.run.at(params, |run| run.gradients())?;
        self.evals += 1;
        let eval = eval.map_err(step_error)?;
        let (grads, clipped) = self.run.clip(eval.grads, None)?;
        self.clipped |= clipped;
        Ok((eval.loss, grads))
    }

    fn hessian_diag(&mut self, params: &[Tensor]) -> candle_core::Result<Vec<Tensor>> {
        self.run
            .at(params, |run| {
                let ev = run.evaluator.clone();
                crate::compile::curvature::second_order(move || {
                    crate::compile::curvature::hessian_diagonal(&ev)
                })
            })?
            .map_err(step_error)
    }

    fn hvp(&mut self, params: &[Tensor], v: &[Tensor]) -> candle_core::Result<Vec<Tensor>> {
        let v = v.to_vec();
        self.run
            .at(params, |run| {
                let ev = run.evaluator.clone();
                crate::compile::curvature::second_order(move || {
                    crate::compile::curvature::hvp(&ev, &v)
                })
            })?
            .map_err(step_error)
    }
}

/// Tensors' values in one flat f64 vector.
fn flatten(tensors: &[Tensor]) -> Vec<f64> {
    values(tensors).concat()
}

/// Each tensor's values, row-major in f64 (none for one that cannot be read).
fn values(tensors: &[Tensor]) -> Vec<Vec<f64>> {
    tensors
        .iter()
        .map(|t| crate::compile::values_f64(t).unwrap_or_default())
        .collect()
}

fn count_nonfinite(t: &Tensor) -> (usize, usize) {
    crate::compile::trace::nonfinite(t).map_or((0, 0), |(bad, total)| (bad.len(), total))
}
