//! Optimizers, exactly as torch.optim defines them, plus schedules and clipping.

pub mod schedule;
pub mod settings;
pub mod spec;
pub mod step;
