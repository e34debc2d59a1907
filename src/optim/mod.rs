//! Optimizers, exactly as torch.optim defines them, plus schedules and clipping.

pub mod spec;
