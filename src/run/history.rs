//! A run's per-step record, stored compactly: a 32-byte core per step plus per-param norms in
//! flat f32 arrays (32 + 8 bytes per param a step: a million steps of a 6-param MLP take 80 MB).

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
                flags: 0,
            },
            param_grad_norms: vec![1.0; n_params],
            param_norms: vec![1.0; n_params],
        }
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
    /// The last step's loss.
    pub last_loss: Option<f64>,
}

impl Totals {
    /// Counts one more step.
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

/// Every step of a run, in order from step 0.
#[derive(Debug, Clone, Default)]
pub struct History {
    n_params: usize,
    cores: Vec<Core>,
    grad_norms: Vec<f32>,
    param_norms: Vec<f32>,
}

impl History {
    /// An empty history for a loss with `n_params` params.
    pub fn new(n_params: usize) -> Self {
        Self {
            n_params,
            ..Self::default()
        }
    }

    /// Steps recorded.
    pub fn len(&self) -> usize {
        self.cores.len()
    }

    /// Whether no step was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }

    /// Appends one step.
    pub fn push(&mut self, r: &StepRecord) {
        self.cores.push(r.core);
        self.grad_norms.extend_from_slice(&r.param_grad_norms);
        self.param_norms.extend_from_slice(&r.param_norms);
    }

    /// The core of step `step` (panics past the end, as slice indexing).
    pub fn core(&self, step: usize) -> &Core {
        &self.cores[step]
    }

    /// Param `i`'s gradient norm at `step`.
    pub fn param_grad_norm(&self, step: usize, i: usize) -> f32 {
        self.grad_norms[step * self.n_params + i]
    }

    /// Param `i`'s value norm at `step`.
    pub fn param_norm(&self, step: usize, i: usize) -> f32 {
        self.param_norms[step * self.n_params + i]
    }

    /// Every step's core, in order.
    pub fn cores(&self) -> &[Core] {
        &self.cores
    }

    /// Step `step` as a whole record, per-param norms included.
    pub fn get(&self, step: usize) -> Option<StepRecord> {
        let core = *self.cores.get(step)?;
        let r = step * self.n_params..(step + 1) * self.n_params;
        Some(StepRecord {
            step: step as u64,
            core,
            param_grad_norms: self.grad_norms[r.clone()].to_vec(),
            param_norms: self.param_norms[r].to_vec(),
        })
    }

    /// The totals of every recorded step.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for step in 0..self.len() {
            t.add(&StepRecord {
                step: step as u64,
                core: self.cores[step],
                param_grad_norms: Vec::new(),
                param_norms: Vec::new(),
            });
        }
        t
    }

    /// Steps with `flag` set.
    pub fn count(&self, flag: u8) -> u64 {
        self.cores.iter().filter(|c| c.flags & flag != 0).count() as u64
    }

    /// Drops every step from `len` on (rewinding).
    pub fn truncate(&mut self, len: usize) {
        self.cores.truncate(len);
        self.grad_norms.truncate(len * self.n_params);
        self.param_norms.truncate(len * self.n_params);
    }

    /// Bytes held, for the memory benchmark.
    pub fn bytes(&self) -> usize {
        self.cores.capacity() * std::mem::size_of::<Core>()
            + (self.grad_norms.capacity() + self.param_norms.capacity()) * 4
    }
}

impl crate::landscape::StepLosses for History {
    fn loss_at(&self, step: usize) -> Option<f64> {
        self.cores.get(step).map(|c| c.loss)
    }

    fn last_loss(&self) -> Option<f64> {
        self.cores.last().map(|c| c.loss)
    }
}
