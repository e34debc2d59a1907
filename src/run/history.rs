//! A run's per-step record, stored compactly: a 32-byte core per step plus per-param norms in
//! flat f32 arrays (32 + 8 bytes per param a step: a million steps of a 6-param MLP take 80 MB),
//! and 8 bytes more for the loss at the eval params of the optimizers that have them.
//!
//! Row k is the state at θ_k, the params after k updates: the loss, gradient and norms there,
//! plus the update then taken from θ_k. A run of N steps holds rows 0..=N; the last row's update
//! is empty (no [`flags::STEPPED`]) unless the run halted on a broken update from there.

/// Flags of one step.
pub mod flags {
    /// The gradient was clipped.
    pub const CLIPPED: u8 = 1;
    /// The update was skipped (non-finite policy `skip`, or a loss-scale overflow).
    pub const SKIPPED: u8 = 2;
    /// The loss was NaN or Inf.
    pub const LOSS_NONFINITE: u8 = 4;
    /// A gradient had a NaN or Inf.
    pub const GRAD_NONFINITE: u8 = 8;
    /// The optimizer's update turned finite params non-finite.
    pub const UPDATE_NONFINITE: u8 = 16;
    /// An update was taken (or, skipped or broken, attempted) from this row's params: its update
    /// fields are filled. The last row of a run lacks it.
    pub const STEPPED: u8 = 32;
    /// The update left a param whose gradient was not zero exactly where it was (see
    /// [`crate::run::stall`]).
    pub const STALLED: u8 = 64;
    /// Any of the non-finite flags.
    pub const NONFINITE: u8 = LOSS_NONFINITE | GRAD_NONFINITE | UPDATE_NONFINITE;
}

/// What happened at one step, without the per-param numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Core {
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    pub update_norm: f32,
    /// Update norm over param norm (all params together).
    pub update_ratio: f32,
    pub lr: f32,
    pub wall_us: f32,
    /// log2 of the loss scale this step used (0 without scaling); fits the struct's padding.
    pub loss_scale_log2: i8,
    pub flags: u8,
    /// Loss evaluations the step made, the gradient at θ_k included (L-BFGS makes several, the
    /// others 1; 0 before stepping; saturates at u16::MAX); fits the struct's padding.
    pub func_evals: u16,
}

/// The update taken from a row's params, filled in when the run steps from there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Update {
    /// Norm of the change of all params together.
    pub norm: f32,
    /// `norm` over the params' norm.
    pub ratio: f32,
    /// The learning rate it used.
    pub lr: f32,
    /// Time the step took (the update and the next row's evaluation).
    pub wall_us: f32,
    /// Update flags: clipped, skipped, non-finite update.
    pub flags: u8,
    /// Loss evaluations the step made ([`Core::func_evals`]).
    pub func_evals: u16,
}

/// One step as reported: the core and the per-param numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub step: u64,
    pub core: Core,
    /// Each param's gradient norm; NaN exactly when that gradient had a non-finite value (a finite
    /// norm beyond f32's range is stored as f32::MAX).
    pub param_grad_norms: Vec<f32>,
    pub param_norms: Vec<f32>,
    /// The loss at the optimizer's eval params after the same updates (schedule-free's x,
    /// ASGD's average), forward only; None when it evaluates where it takes gradients.
    pub eval_loss: Option<f64>,
}

impl StepRecord {
    /// Whether a [`flags`] bit is set.
    pub fn has(&self, flag: u8) -> bool {
        self.core.flags & flag != 0
    }

    /// A plausible record with the given loss, for benchmarks that need long histories.
    pub fn synthetic(step: u64, loss: f64, n_params: usize) -> Self {
        StepRecord {
            step,
            core: Core {
                loss,
                grad_norm: 1.0,
                update_norm: 0.01,
                update_ratio: 0.001,
                lr: 1e-3,
                wall_us: 5.0,
                loss_scale_log2: 0,
                flags: flags::STEPPED,
                func_evals: 1,
            },
            param_grad_norms: vec![1.0; n_params],
            param_norms: vec![1.0; n_params],
            eval_loss: None,
        }
    }

    /// Whether the run stepped from this row's params (its update fields are filled).
    pub fn stepped(&self) -> bool {
        self.has(flags::STEPPED)
    }

    /// Indices of the params whose gradient had a non-finite value.
    pub fn nonfinite_params(&self) -> impl Iterator<Item = usize> + '_ {
        self.param_grad_norms
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_nan())
            .map(|(i, _)| i)
    }
}

/// What a run's summary needs, kept as it steps: a few numbers however long the run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// The lowest finite loss and its step.
    pub best: Option<(u64, f64)>,
    /// The first step with a non-finite loss, gradient or update.
    pub first_nonfinite: Option<u64>,
    /// The last row's loss.
    pub last_loss: Option<f64>,
}

impl Totals {
    /// Counts one more row (counting the same row again changes nothing).
    pub fn add(&mut self, r: &StepRecord) {
        let loss = r.core.loss;
        if loss.is_finite() && self.best.is_none_or(|(_, b)| loss < b) {
            self.best = Some((r.step, loss));
        }
        if r.has(flags::NONFINITE) && self.first_nonfinite.is_none() {
            self.first_nonfinite = Some(r.step);
        }
        self.last_loss = Some(loss);
    }
}

/// The rows of a run, in order from step 0 (θ_0) to its current step: all of them, or (for a
/// headless run of any length) a window of the most recent ones.
#[derive(Debug, Clone, Default)]
pub struct History {
    n_params: usize,
    /// The step of the first row kept (rows before it were dropped from a window).
    first: usize,
    /// Keep at least this many recent rows and at most twice as many (None: keep all).
    window: Option<usize>,
    cores: Vec<Core>,
    grad_norms: Vec<f32>,
    param_norms: Vec<f32>,
    /// Each kept row's eval loss, once a row had one (NaN for rows without); empty until then,
    /// so runs without eval params pay nothing.
    eval_losses: Vec<f64>,
}

impl History {
    /// An empty history for a loss with `n_params` params, keeping every row.
    pub fn new(n_params: usize) -> Self {
        Self {
            n_params,
            ..Self::default()
        }
    }

    /// An empty history that keeps only the last `rows` rows or so: constant memory however
    /// many steps, and enough recent rows to tell a divergence.
    pub fn windowed(n_params: usize, rows: usize) -> Self {
        Self {
            n_params,
            window: Some(rows.max(1)),
            ..Self::default()
        }
    }

    /// The index of step `step`'s row in the kept rows.
    fn at(&self, step: usize) -> Option<usize> {
        step.checked_sub(self.first)
            .filter(|&i| i < self.cores.len())
    }

    /// Rows recorded, kept or not (one more than the updates taken, once the run has its row 0).
    pub fn len(&self) -> usize {
        self.first + self.cores.len()
    }

    /// Whether no row was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The step of the first row still kept (0 unless the history is a window).
    pub fn first(&self) -> usize {
        self.first
    }

    /// Appends one row (dropping the oldest ones past twice the window).
    pub fn push(&mut self, r: &StepRecord) {
        self.cores.push(r.core);
        self.grad_norms.extend_from_slice(&r.param_grad_norms);
        self.param_norms.extend_from_slice(&r.param_norms);
        if r.eval_loss.is_some() || !self.eval_losses.is_empty() {
            self.eval_losses.resize(self.cores.len() - 1, f64::NAN);
            self.eval_losses.push(r.eval_loss.unwrap_or(f64::NAN));
        }
        if let Some(w) = self.window
            && self.cores.len() > 2 * w
        {
            let drop = self.cores.len() - w;
            self.cores.drain(..drop);
            self.grad_norms.drain(..drop * self.n_params);
            self.param_norms.drain(..drop * self.n_params);
            self.eval_losses.drain(..drop.min(self.eval_losses.len()));
            self.first += drop;
        }
    }

    /// Fills in row `row`'s update and adds its flags (with [`flags::STEPPED`]).
    pub fn finish(&mut self, row: usize, update: &Update) {
        if let Some(c) = self.at(row).map(|i| &mut self.cores[i]) {
            c.update_norm = update.norm;
            c.update_ratio = update.ratio;
            c.lr = update.lr;
            c.wall_us = update.wall_us;
            c.flags |= update.flags | flags::STEPPED;
            c.func_evals = update.func_evals;
        }
    }

    /// The core of step `step` (panics when the row is not kept, as slice indexing).
    pub fn core(&self, step: usize) -> &Core {
        &self.cores[step - self.first]
    }

    /// Param `i`'s gradient norm at `step` (NaN when that row or param is not held: the curves
    /// of an earlier version of a file may have fewer params).
    pub fn param_grad_norm(&self, step: usize, i: usize) -> f32 {
        self.per_param(&self.grad_norms, step, i)
    }

    /// Param `i`'s value norm at `step` (NaN when that row or param is not held).
    pub fn param_norm(&self, step: usize, i: usize) -> f32 {
        self.per_param(&self.param_norms, step, i)
    }

    fn per_param(&self, values: &[f32], step: usize, i: usize) -> f32 {
        match self.at(step) {
            Some(row) if i < self.n_params => values[row * self.n_params + i],
            _ => f32::NAN,
        }
    }

    /// The loss at the eval params at `step`: None when no kept row has one (the optimizer
    /// has no eval params) or the row is not kept, NaN for a row without one among rows with.
    pub fn eval_loss(&self, step: usize) -> Option<f64> {
        self.at(step).and_then(|i| self.eval_losses.get(i).copied())
    }

    /// Whether any kept row has an eval loss (the run's optimizer has eval params).
    pub fn has_eval_loss(&self) -> bool {
        !self.eval_losses.is_empty()
    }

    /// The kept rows' cores, in order from step [`History::first`].
    pub fn cores(&self) -> &[Core] {
        &self.cores
    }

    /// Step `step` as a whole record, per-param norms included (None when not kept).
    pub fn get(&self, step: usize) -> Option<StepRecord> {
        let i = self.at(step)?;
        let r = i * self.n_params..(i + 1) * self.n_params;
        Some(StepRecord {
            step: step as u64,
            core: self.cores[i],
            param_grad_norms: self.grad_norms[r.clone()].to_vec(),
            param_norms: self.param_norms[r].to_vec(),
            eval_loss: self.eval_loss(step),
        })
    }

    /// Kept rows with `flag` set.
    pub fn count(&self, flag: u8) -> u64 {
        self.cores.iter().filter(|c| c.flags & flag != 0).count() as u64
    }

    /// The totals of the kept rows that the run has stepped from.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for step in self.first..self.len() {
            if let Some(r) = self.get(step).filter(|r| r.has(flags::STEPPED)) {
                t.add(&r);
            }
        }
        t
    }

    /// `stepped` (the totals of the rows stepped from) with the current row, θ_N, counted too:
    /// what a run's summary and the TUI's comparison report.
    pub fn with_current(&self, mut stepped: Totals) -> Totals {
        if let Some(current) = self.len().checked_sub(1).and_then(|k| self.get(k)) {
            stepped.add(&current);
        }
        stepped
    }

    /// Drops every row from `len` on (rewinding).
    pub fn truncate(&mut self, len: usize) {
        let keep = len.saturating_sub(self.first);
        self.cores.truncate(keep);
        self.grad_norms.truncate(keep * self.n_params);
        self.param_norms.truncate(keep * self.n_params);
        self.eval_losses.truncate(keep);
        self.first = self.first.min(len);
    }

    /// Bytes held, for the memory benchmark.
    pub fn bytes(&self) -> usize {
        self.cores.capacity() * std::mem::size_of::<Core>()
            + (self.grad_norms.capacity() + self.param_norms.capacity()) * 4
            + self.eval_losses.capacity() * 8
    }
}

impl crate::landscape::StepLosses for History {
    fn loss_at(&self, step: usize) -> Option<f64> {
        self.at(step).map(|i| self.cores[i].loss)
    }

    fn last_loss(&self) -> Option<f64> {
        self.cores.last().map(|c| c.loss)
    }

    fn recorded(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_param_norms_outside_the_rows_and_params_held_are_nan() {
        // An earlier version of a file may have had fewer params: its curves are read with
        // the new version's param indices.
        let mut h = History::new(2);
        h.push(&StepRecord::synthetic(0, 1.0, 2));
        assert!(h.param_norm(0, 1).is_finite());
        assert!(h.param_norm(0, 2).is_nan());
        assert!(h.param_grad_norm(1, 0).is_nan());
    }

    #[test]
    fn eval_losses_stay_with_their_rows_through_windows_and_truncation() {
        let with_eval = |k: u64| StepRecord {
            eval_loss: Some(100.0 + k as f64),
            ..StepRecord::synthetic(k, k as f64, 1)
        };
        let mut h = History::new(1);
        h.push(&StepRecord::synthetic(0, 0.0, 1));
        assert!(!h.has_eval_loss());
        assert_eq!(h.get(0).unwrap().eval_loss, None);
        h.push(&with_eval(1));
        assert!(h.eval_loss(0).unwrap().is_nan());
        assert_eq!(h.get(1).unwrap().eval_loss, Some(101.0));
        h.truncate(1);
        assert_eq!(h.eval_loss(1), None);
        let mut w = History::windowed(1, 3);
        for k in 0..10 {
            w.push(&with_eval(k));
        }
        for k in w.first()..10 {
            assert_eq!(w.eval_loss(k), Some(100.0 + k as f64));
        }
    }

    #[test]
    fn a_window_keeps_between_one_and_two_windows_of_rows_and_their_steps() {
        let mut h = History::windowed(1, 3);
        for k in 0..10 {
            h.push(&StepRecord::synthetic(k, k as f64, 1));
        }
        assert_eq!(h.len(), 10);
        assert!((3..=6).contains(&h.cores().len()));
        assert_eq!(h.first() + h.cores().len(), 10);
        assert_eq!(h.get(9).map(|r| r.core.loss), Some(9.0));
        assert_eq!(h.get(h.first() - 1), None);
    }
}
