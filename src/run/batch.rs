//! Several runs of one file stepped as one tensor program: each param gets a leading lane axis,
//! so a step of eight Rosenbrock runs costs about what one costs. Every lane is still a whole
//! [`Run`] for its bookkeeping (history, totals, trajectory, best params, snapshots), fed the
//! numbers the batch computes for all lanes at once; only the tensors are shared.
//!
//! A batch only ever books clean steps. A lane whose update or next evaluation is not finite
//! leaves before that step is booked and takes it alone, so tracing, halting and the non-finite
//! policy see exactly what a run alone sees; so does a lane that is rewound, edited, re-scaled or
//! inspected (the front ends call [`Batch::leave`]). Leaving hands the lane its params, optimizer
//! state and current evaluation: it goes on as if it had always stepped alone.

use std::time::Instant;

use candle_core::Tensor;

use super::{Current, Retention, Run, SNAPSHOT_EVERY, update_ratio};
use crate::compile::lanes::{LaneEvaluation, LaneEvaluator};
use crate::compile::{CompiledFile, Evaluation, norm};
use crate::diagnostic::Diagnostic;
use crate::optim::lanes::LaneState;
use crate::optim::settings::{GradSource, LossScale};
use crate::run::history::Update;

/// Runs stepped together; lane `i` is the run the caller knows as `ids[i]`.
pub struct Batch {
    ids: Vec<u64>,
    eval: LaneEvaluator,
    state: LaneState,
    /// Loss and gradients of every lane at its current params.
    current: LaneEvaluation,
}

fn internal(e: candle_core::Error) -> Diagnostic {
    Diagnostic::error(format!("batched step failed: {e}"))
}

/// Lane `r` of a batched tensor (a view, no copy).
fn lane(t: &Tensor, r: usize) -> candle_core::Result<Tensor> {
    t.narrow(0, r, 1)?.squeeze(0)
}

fn lanes_of(tensors: &[Tensor], r: usize) -> candle_core::Result<Vec<Tensor>> {
    tensors.iter().map(|t| lane(t, r)).collect()
}

/// Each lane's L2 norm of `t`, the number [`crate::compile::norm`] gives a run alone.
fn lane_norms(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    crate::optim::kernels::lane_norms(t, t.dim(0)?)
}

/// Per-lane norms of each tensor: `out[lane][tensor]`.
fn norms_by_lane(tensors: &[Tensor], lanes: usize) -> candle_core::Result<Vec<Vec<f64>>> {
    let per_tensor: Vec<Vec<f64>> = tensors.iter().map(lane_norms).collect::<Result<_, _>>()?;
    Ok((0..lanes)
        .map(|r| per_tensor.iter().map(|n| n[r]).collect())
        .collect())
}

/// Whether a run's settings let it step in a batch: plain autograd gradients, one optimizer
/// over every param, nothing that looks across the whole model between gradient and update
/// (clipping, tricks, loss scaling), no metrics, at its first step with a clean row.
fn batchable(compiled: &CompiledFile, run: &Run) -> bool {
    let c = &run.config;
    c.grad == GradSource::Autograd
        && c.clip_norm.is_none()
        && c.clip_value.is_none()
        && c.tricks.is_empty()
        && c.loss_scaling() == LossScale::Off
        && compiled.runs[run.def].param_settings.is_empty()
        // Metrics are read at the run's own params, which a lane only gets when it leaves.
        && compiled.runs[run.def].metrics.is_none()
        // A large sum of squares is one op for a run alone (lanes sum them as candle does).
        && !run.evaluator.fuses_squares()
        && run.step_count() == 0
        && run.halted.is_none()
        && run.lr_scale == 1.0
        && run.history.core(0).flags == 0
}

/// Groups of `runs` (by position) worth trying as one batch each: batchable runs of one dtype,
/// retention and optimizer whose programs batch together (variants whose consts fold into
/// other ops, such as an `eps = 0`, or with a loss of their own, make groups of their own), two
/// or more.
pub fn groups(compiled: &CompiledFile, runs: &[&Run]) -> Vec<Vec<usize>> {
    let programs_batch = |a: usize, b: usize, dtype| {
        a == b
            || LaneEvaluator::new(compiled, &[a, b], dtype)
                .ok()
                .flatten()
                .is_some_and(|e| e.pays())
    };
    let mut out: Vec<(_, Vec<usize>)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        if !batchable(compiled, run) {
            continue;
        }
        let key = (run.dtype, run.retention, run.config.optimizer.name());
        let dtype = run.evaluator.dtype();
        let home = out
            .iter_mut()
            .find(|(k, members)| *k == key && programs_batch(runs[members[0]].def, run.def, dtype));
        match home {
            Some((_, members)) => members.push(i),
            None => out.push((key, vec![i])),
        }
    }
    out.into_iter()
        .map(|(_, m)| m)
        .filter(|m| m.len() > 1)
        .collect()
}

impl Batch {
    /// `runs` (known to the caller as `ids`) as one batch, when their programs and optimizers
    /// batch (None otherwise: they step alone, as before).
    pub fn new(
        compiled: &CompiledFile,
        runs: &[&Run],
        ids: Vec<u64>,
    ) -> Result<Option<Self>, Diagnostic> {
        if runs.len() < 2 || !runs.iter().all(|r| batchable(compiled, r)) {
            return Ok(None);
        }
        let dtype = runs[0].evaluator.dtype();
        if runs.iter().any(|r| r.evaluator.dtype() != dtype) {
            return Ok(None);
        }
        let defs: Vec<usize> = runs.iter().map(|r| r.def).collect();
        let Some(eval) = LaneEvaluator::new(compiled, &defs, dtype)
            .map_err(internal)?
            .filter(LaneEvaluator::pays)
        else {
            return Ok(None);
        };
        let specs: Vec<_> = runs.iter().map(|r| r.config.optimizer.clone()).collect();
        let params: Vec<Tensor> = eval
            .params()
            .iter()
            .map(|v| v.as_tensor().detach())
            .collect();
        let Some(state) = LaneState::new(&specs, &params) else {
            return Ok(None);
        };
        let current = eval.evaluate()?;
        let clean = norms_by_lane(&current.grads, runs.len())
            .map_err(internal)?
            .iter()
            .zip(&current.losses)
            .all(|(g, l)| l.is_finite() && g.iter().all(|n| n.is_finite()));
        Ok(clean.then_some(Self {
            ids,
            eval,
            state,
            current,
        }))
    }

    /// The caller's ids of the lanes, in lane order.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// Every lane's params, `[R, ..]` (detached views: they change when the batch steps).
    fn params(&self) -> Vec<Tensor> {
        self.eval
            .params()
            .iter()
            .map(|v| v.as_tensor().detach())
            .collect()
    }

    /// Lane `r`'s params and its loss and gradients there (with their norms, as a run alone
    /// takes them), as tensors of its own shape.
    fn lane_now(&self, r: usize) -> candle_core::Result<(Vec<Tensor>, Current)> {
        let params = self.params();
        // Copies: the batch's params change in place on its next step.
        let params: Vec<Tensor> = lanes_of(&params, r)?
            .iter()
            .map(Tensor::copy)
            .collect::<Result<_, _>>()?;
        let grads = lanes_of(&self.current.grads, r)?;
        let current = Current {
            grad_norms: grads.iter().map(norm).collect(),
            param_norms: params.iter().map(norm).collect(),
            eval: Evaluation {
                loss: self.current.losses[r],
                grads,
            },
        };
        Ok((params, current))
    }

    /// Makes `run` (lane `r`) what it would be had it stepped alone: its params, optimizer
    /// state and current evaluation.
    fn hand_over(&self, r: usize, state: &LaneState, run: &mut Run) -> Result<(), Diagnostic> {
        let (params, current) = self.lane_now(r).map_err(internal)?;
        run.set_params(&params).map_err(internal)?;
        run.state = state.lane(r).map_err(internal)?;
        run.current = Some(current);
        Ok(())
    }

    /// Hands lane `r` over to `run` and re-takes its current row alone (the batch's matmuls may
    /// round differently), with a snapshot there: whatever it steps from now on, and every rewind
    /// to a later step, is what it computes alone, to the bit.
    fn go_alone(&self, r: usize, state: &LaneState, run: &mut Run) -> Result<(), Diagnostic> {
        self.hand_over(r, state, run)?;
        let t = run.step_count();
        run.history.truncate(t as usize);
        run.settle(None)?;
        if run.retention == Retention::Everything && t > 0 {
            run.snapshot();
        }
        Ok(())
    }

    /// Gives `run` (lane `r`) its current params and loss and gradients there, for reports that
    /// read them; it stays in the batch (its optimizer state is handed over only on leaving).
    pub fn sync(&self, r: usize, run: &mut Run) -> Result<(), Diagnostic> {
        let (params, current) = self.lane_now(r).map_err(internal)?;
        run.set_params(&params).map_err(internal)?;
        run.current = Some(current);
        Ok(())
    }

    /// Lane `r` (the run `run`) leaves the batch and goes on alone from where it is.
    pub fn leave(&mut self, r: usize, run: &mut Run) -> Result<(), Diagnostic> {
        self.go_alone(r, &self.state, run)?;
        let keep: Vec<usize> = (0..self.ids.len()).filter(|&k| k != r).collect();
        self.keep(&keep).map_err(internal)
    }

    /// Only lanes `keep` (in that order) stay.
    fn keep(&mut self, keep: &[usize]) -> candle_core::Result<()> {
        if keep.len() == self.ids.len() {
            return Ok(());
        }
        if keep.is_empty() {
            // Nothing steps any more; the tensors go with the batch.
            self.ids.clear();
            return Ok(());
        }
        let index = Tensor::new(
            keep.iter().map(|&k| k as u32).collect::<Vec<_>>(),
            &candle_core::Device::Cpu,
        )?;
        self.eval = self.eval.select(keep)?;
        self.state = self.state.select(keep)?;
        self.current = LaneEvaluation {
            losses: keep.iter().map(|&k| self.current.losses[k]).collect(),
            grads: self
                .current
                .grads
                .iter()
                .map(|g| g.index_select(&index, 0))
                .collect::<Result<_, _>>()?,
        };
        self.ids = keep.iter().map(|&k| self.ids[k]).collect();
        Ok(())
    }

    /// Whether lane `r`'s update (of `run`) left a param with a gradient in place (see
    /// [`super::stall::still`]), from its params' `deltas` and its `lr`.
    fn may_stall(&self, r: usize, run: &Run, deltas: &[f64], lr: f64) -> candle_core::Result<bool> {
        if !deltas.contains(&0.0) || !run.can_stall() {
            return Ok(false);
        }
        let grad_norms: Vec<f64> = lanes_of(&self.current.grads, r)?.iter().map(norm).collect();
        let lrs = vec![lr; deltas.len()];
        Ok(!super::stall::still(deltas, &grad_norms, &run.peak_grad_norms, &lrs).is_empty())
    }

    /// How many lanes are left (a batch of one is better off alone).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no lane is left.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// One step of every lane (`runs` in lane order). Lanes whose step is not clean leave and
    /// take it alone; their ids come back (they are no longer in the batch).
    pub fn step(&mut self, runs: &mut [&mut Run]) -> Result<Vec<u64>, Diagnostic> {
        let started = Instant::now();
        let ids = self.ids.clone();
        let n = ids.len();
        let t = runs[0].step_count();
        let lrs: Vec<f64> = runs.iter().map(|r| r.lr_at(t)).collect();
        let params = self.params();
        let before = self.state.clone();
        let new = self
            .state
            .step(&params, &self.current.grads, &lrs)
            .map_err(internal)?;
        let deltas: Vec<Tensor> = new
            .iter()
            .zip(&params)
            .map(|(a, b)| a - b)
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        let deltas = norms_by_lane(&deltas, n).map_err(internal)?;
        let param_norms = norms_by_lane(&params, n).map_err(internal)?;
        // A non-finite update, or one that left a param in place: the lane takes this step
        // alone, from before it (where the run's own step tells a stall from a zero gradient).
        let mut left = Vec::new();
        let mut keep = Vec::new();
        for r in 0..n {
            if deltas[r].iter().all(|d| d.is_finite())
                && !self
                    .may_stall(r, runs[r], &deltas[r], lrs[r])
                    .map_err(internal)?
            {
                keep.push(r);
            } else {
                self.go_alone(r, &before, runs[r])?;
                runs[r].step()?;
                left.push(r);
            }
        }
        let new = if left.is_empty() {
            new
        } else {
            let index = Tensor::new(
                keep.iter().map(|&k| k as u32).collect::<Vec<_>>(),
                &candle_core::Device::Cpu,
            )
            .map_err(internal)?;
            self.keep(&keep).map_err(internal)?;
            new.iter()
                .map(|t| t.index_select(&index, 0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(internal)?
        };
        self.eval.set_params(&new).map_err(internal)?;
        self.current = self.eval.evaluate()?;
        let m = keep.len();
        let grad_norms = norms_by_lane(&self.current.grads, m).map_err(internal)?;
        let new_norms = norms_by_lane(&new, m).map_err(internal)?;
        let wall_us = started.elapsed().as_secs_f32() * 1e6 / n as f32;
        let mut bad = Vec::new();
        for (i, &r) in keep.iter().enumerate() {
            let run = &mut *runs[r];
            let update_norm = deltas[r].iter().map(|d| d * d).sum::<f64>().sqrt();
            let update = Update {
                norm: update_norm as f32,
                ratio: update_ratio(update_norm, &param_norms[r]),
                lr: lrs[r] as f32,
                wall_us,
                flags: 0,
                func_evals: 1,
            };
            let made = lanes_of(&new, i).map_err(internal)?;
            let loss = self.current.losses[i];
            if !loss.is_finite() || grad_norms[i].iter().any(|g| !g.is_finite()) {
                // The update was clean but where it landed is not: the lane settles there alone.
                self.hand_over(i, &self.state, run)?;
                run.current = None;
                run.settle(Some(&made))?;
                run.close_step(t, &update, Some(made))?;
                bad.push(i);
                continue;
            }
            // The lane's gradients stay in the batch until `sync` or leaving hands them over.
            let current = Evaluation {
                loss,
                grads: Vec::new(),
            };
            run.push_row(
                current,
                grad_norms[i].clone(),
                new_norms[i].clone(),
                0,
                None,
                Some(&made),
            )?;
            if run.retention == Retention::Everything && (t + 1).is_multiple_of(SNAPSHOT_EVERY) {
                // The snapshot reads the run's own params and state.
                self.hand_over(i, &self.state, run)?;
            }
            run.close_step(t, &update, Some(made))?;
        }
        if !bad.is_empty() {
            let stay: Vec<usize> = (0..m).filter(|i| !bad.contains(i)).collect();
            left.extend(bad.iter().map(|&i| keep[i]));
            self.keep(&stay).map_err(internal)?;
        }
        Ok(left.iter().map(|&r| ids[r]).collect())
    }
}
