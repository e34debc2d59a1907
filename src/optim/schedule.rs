//! Learning-rate schedules with optional linear warmup, and gradient clipping as torch does it.

use candle_core::{Result, Tensor};

/// How the learning rate changes with the step (0-based).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Constant,
    /// `lr * gamma^floor(t / step_size)` (StepLR).
    Step {
        step_size: u64,
        gamma: f64,
    },
    /// `lr * gamma^t` (ExponentialLR).
    Exponential {
        gamma: f64,
    },
    /// `min_lr + (lr - min_lr) (1 + cos(pi t / total)) / 2` (CosineAnnealingLR).
    Cosine {
        total: u64,
        min_lr: f64,
    },
}

/// A schedule with an optional linear warmup over the first `warmup` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub schedule: Schedule,
    pub warmup: u64,
}

impl LrSchedule {
    /// The lr as given at every step, with no warm-up.
    pub fn constant() -> Self {
        Self {
            schedule: Schedule::Constant,
            warmup: 0,
        }
    }

    /// The learning rate at step `t` for base rate `lr`.
    pub fn lr(&self, lr: f64, t: u64) -> f64 {
        let scheduled = match self.schedule {
            Schedule::Constant => lr,
            Schedule::Step { step_size, gamma } => lr * gamma.powi((t / step_size.max(1)) as i32),
            Schedule::Exponential { gamma } => lr * gamma.powf(t as f64),
            Schedule::Cosine { total, min_lr } => {
                let frac = (t.min(total) as f64) / (total.max(1) as f64);
                min_lr + (lr - min_lr) * (1.0 + (std::f64::consts::PI * frac).cos()) / 2.0
            }
        };
        if t < self.warmup {
            scheduled * (t + 1) as f64 / self.warmup as f64
        } else {
            scheduled
        }
    }
}

/// The L2 norm of all `tensors` together, accumulated in f64.
pub fn global_norm(tensors: &[Tensor]) -> Result<f64> {
    let mut sum = 0.0;
    for t in tensors {
        sum += t
            .to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sum.sqrt())
}

/// Scales all gradients so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`: coefficient `max_norm / (total + 1e-6)`, capped at 1.
pub fn clip_norm(grads: &[Tensor], total: f64, max_norm: f64) -> Result<(Vec<Tensor>, bool)> {
    let coef = max_norm / (total + 1e-6);
    if coef >= 1.0 {
        return Ok((grads.to_vec(), false));
    }
    let out = grads
        .iter()
        .map(|g| g.affine(coef, 0.0))
        .collect::<Result<_>>()?;
    Ok((out, true))
}

/// Clamps every gradient element to `[-v, v]`, as `clip_grad_value_`.
pub fn clip_value(grads: &[Tensor], v: f64) -> Result<(Vec<Tensor>, bool)> {
    let mut clipped = false;
    let out = grads
        .iter()
        .map(|g| {
            let c = g.clamp(-v, v)?;
            let max = g
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(candle_core::DType::F64)?;
            clipped |= max.to_scalar::<f64>()? > v;
            Ok(c)
        })
        .collect::<Result<_>>()?;
    Ok((out, clipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedules_follow_their_closed_forms() {
        let s = |schedule, warmup| LrSchedule { schedule, warmup };
        assert_eq!(s(Schedule::Constant, 0).lr(0.1, 50), 0.1);
        let step = s(
            Schedule::Step {
                step_size: 10,
                gamma: 0.5,
            },
            0,
        );
        assert_eq!(step.lr(0.1, 9), 0.1);
        assert_eq!(step.lr(0.1, 10), 0.05);
        assert_eq!(step.lr(0.1, 25), 0.025);
        let exp = s(Schedule::Exponential { gamma: 0.9 }, 0);
        assert!((exp.lr(1.0, 3) - 0.729).abs() < 1e-15);
        let cos = s(
            Schedule::Cosine {
                total: 100,
                min_lr: 0.0,
            },
            0,
        );
        assert_eq!(cos.lr(1.0, 0), 1.0);
        assert!((cos.lr(1.0, 50) - 0.5).abs() < 1e-15);
        assert!(cos.lr(1.0, 100).abs() < 1e-15);
        let warm = s(Schedule::Constant, 4);
        assert_eq!(warm.lr(1.0, 0), 0.25);
        assert_eq!(warm.lr(1.0, 3), 1.0);
        assert_eq!(warm.lr(1.0, 4), 1.0);
    }

    #[test]
    fn clip_norm_scales_to_the_max_norm() {
        // g = [3, 4] has norm 5; clipping to 1 scales by 1 / (5 + 1e-6).
        let g = Tensor::new(&[3.0f64, 4.0], &Device::Cpu).unwrap();
        let (c, clipped) = clip_norm(std::slice::from_ref(&g), 5.0, 1.0).unwrap();
        assert!(clipped);
        let v: Vec<f64> = c[0].to_vec1().unwrap();
        assert!((v[0] - 3.0 / (5.0 + 1e-6)).abs() < 1e-15);
        let (_, clipped) = clip_norm(&[g], 5.0, 10.0).unwrap();
        assert!(!clipped);
    }

    #[test]
    fn clip_value_clamps_each_element() {
        let g = Tensor::new(&[-3.0f64, 0.5, 2.0], &Device::Cpu).unwrap();
        let (c, clipped) = clip_value(&[g], 1.0).unwrap();
        assert!(clipped);
        assert_eq!(c[0].to_vec1::<f64>().unwrap(), vec![-1.0, 0.5, 1.0]);
    }
}
