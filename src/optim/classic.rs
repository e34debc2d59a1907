//! torch.optim's classic optimizers (SGD, Adam, AdamW, RMSprop, Adagrad) and Lion, written
//! after torch.optim's single-tensor implementations so trajectories match it to float rounding.

use candle_core::{Result, Tensor};

use super::lowp;
use super::spec::{Adagrad, Adam, AdamW, Lion, OptimizerSpec, RmsProp, Sgd};
use super::step::{UpdateRule, add_scaled, lerp};

/// SGD's state.
#[derive(Debug, Clone, Default)]
pub struct SgdState {
    /// The momentum buffer (only with momentum).
    pub momentum_buffer: Option<Tensor>,
}

impl UpdateRule for Sgd {
    type State = SgdState;

    fn step(
        &self,
        s: &mut SgdState,
        p: &Tensor,
        grad: &Tensor,
        lr: f64,
        _t: u64,
    ) -> Result<Tensor> {
        let (momentum, dampening) = (self.momentum, self.dampening);
        let mut g = add_scaled(grad, p, self.weight_decay)?;
        if momentum != 0.0 {
            let buf = match &s.momentum_buffer {
                None => g.clone(),
                Some(buf) => (buf.affine(momentum, 0.0)? + g.affine(1.0 - dampening, 0.0)?)?,
            };
            g = if self.nesterov {
                add_scaled(&g, &buf, momentum)?
            } else {
                buf.clone()
            };
            s.momentum_buffer = Some(buf);
        }
        add_scaled(p, &g, -lr)
    }
}

/// Adam's and AdamW's state.
#[derive(Debug, Clone, Default)]
pub struct AdamState {
    /// First moment: the running average of gradients.
    pub exp_avg: Option<Tensor>,
    /// Second moment: the running average of squared gradients.
    pub exp_avg_sq: Option<Tensor>,
    /// The largest second moment so far (only with amsgrad).
    pub max_exp_avg_sq: Option<Tensor>,
}

/// Adam's hyper-parameters, with weight decay coupled (Adam) or decoupled (AdamW).
pub(super) struct AdamRule {
    pub(super) betas: (f64, f64),
    pub(super) eps: f64,
    pub(super) weight_decay: f64,
    pub(super) amsgrad: bool,
    pub(super) decoupled: bool,
}

impl AdamRule {
    /// The rule of an `adam` or `adamw` spec (None for any other optimizer).
    pub(super) fn of(spec: &OptimizerSpec) -> Option<Self> {
        Some(match spec {
            OptimizerSpec::Adam(o) => Self {
                betas: (o.beta1, o.beta2),
                eps: o.eps,
                weight_decay: o.weight_decay,
                amsgrad: o.amsgrad,
                decoupled: false,
            },
            OptimizerSpec::AdamW(o) => Self {
                betas: (o.beta1, o.beta2),
                eps: o.eps,
                weight_decay: o.weight_decay,
                amsgrad: o.amsgrad,
                decoupled: true,
            },
            _ => return None,
        })
    }

    fn step(
        &self,
        s: &mut AdamState,
        p: &Tensor,
        grad: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor> {
        // In f16/bf16 every op rounds: torch's own sequence of them, or the numbers drift.
        if lowp::is_low(p.dtype()) {
            return lowp::adam(self, s, p, grad, lr, t, None);
        }
        if let Some(new) = super::kernels::adam(self, s, p, grad, lr, t)? {
            return Ok(new);
        }
        let ((b1, b2), eps, wd, t) = (self.betas, self.eps, self.weight_decay, t as f64);
        let (p, g) = if self.decoupled {
            (p.affine(1.0 - lr * wd, 0.0)?, grad.clone())
        } else {
            (p.clone(), add_scaled(grad, p, wd)?)
        };
        let m = match &s.exp_avg {
            None => g.affine(1.0 - b1, 0.0)?,
            Some(m) => lerp(m, &g, 1.0 - b1)?,
        };
        let g2 = g.sqr()?;
        let v = match &s.exp_avg_sq {
            None => g2.affine(1.0 - b2, 0.0)?,
            Some(v) => (v.affine(b2, 0.0)? + g2.affine(1.0 - b2, 0.0)?)?,
        };
        let bc1 = 1.0 - b1.powf(t);
        let bc2_sqrt = (1.0 - b2.powf(t)).sqrt();
        let second = if self.amsgrad {
            let vmax = match &s.max_exp_avg_sq {
                None => v.clone(),
                Some(c) => c.maximum(&v)?,
            };
            s.max_exp_avg_sq = Some(vmax.clone());
            vmax
        } else {
            v.clone()
        };
        let denom = second.sqrt()?.affine(1.0 / bc2_sqrt, eps)?;
        let new = (&p - m.div(&denom)?.affine(lr / bc1, 0.0)?)?;
        s.exp_avg = Some(m);
        s.exp_avg_sq = Some(v);
        Ok(new)
    }
}

impl UpdateRule for Adam {
    type State = AdamState;

    fn step(&self, s: &mut AdamState, p: &Tensor, g: &Tensor, lr: f64, t: u64) -> Result<Tensor> {
        let rule = AdamRule {
            betas: (self.beta1, self.beta2),
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            decoupled: false,
        };
        rule.step(s, p, g, lr, t)
    }
}

impl UpdateRule for AdamW {
    type State = AdamState;

    fn step(&self, s: &mut AdamState, p: &Tensor, g: &Tensor, lr: f64, t: u64) -> Result<Tensor> {
        let rule = AdamRule {
            betas: (self.beta1, self.beta2),
            eps: self.eps,
            weight_decay: self.weight_decay,
            amsgrad: self.amsgrad,
            decoupled: true,
        };
        rule.step(s, p, g, lr, t)
    }
}

/// RMSprop's state.
#[derive(Debug, Clone, Default)]
pub struct RmsPropState {
    /// The running average of squared gradients.
    pub square_avg: Option<Tensor>,
    /// The running average of gradients (only when centered).
    pub grad_avg: Option<Tensor>,
    /// The momentum buffer (only with momentum).
    pub momentum_buffer: Option<Tensor>,
}

impl UpdateRule for RmsProp {
    type State = RmsPropState;

    fn step(
        &self,
        s: &mut RmsPropState,
        p: &Tensor,
        grad: &Tensor,
        lr: f64,
        _t: u64,
    ) -> Result<Tensor> {
        let (alpha, eps, momentum) = (self.alpha, self.eps, self.momentum);
        let g = add_scaled(grad, p, self.weight_decay)?;
        let sq = match &s.square_avg {
            None => g.sqr()?.affine(1.0 - alpha, 0.0)?,
            Some(sq) => (sq.affine(alpha, 0.0)? + g.sqr()?.affine(1.0 - alpha, 0.0)?)?,
        };
        let avg = if self.centered {
            let ga = match &s.grad_avg {
                None => g.affine(1.0 - alpha, 0.0)?,
                Some(ga) => lerp(ga, &g, 1.0 - alpha)?,
            };
            let avg = (&sq - ga.sqr()?)?.sqrt()?.affine(1.0, eps)?;
            s.grad_avg = Some(ga);
            avg
        } else {
            sq.sqrt()?.affine(1.0, eps)?
        };
        s.square_avg = Some(sq);
        let step = g.div(&avg)?;
        if momentum > 0.0 {
            let buf = match &s.momentum_buffer {
                None => step,
                Some(buf) => (buf.affine(momentum, 0.0)? + step)?,
            };
            let new = add_scaled(p, &buf, -lr)?;
            s.momentum_buffer = Some(buf);
            Ok(new)
        } else {
            add_scaled(p, &step, -lr)
        }
    }
}

/// Adagrad's state.
#[derive(Debug, Clone, Default)]
pub struct AdagradState {
    /// The sum of all squared gradients so far (from `initial_accumulator_value`).
    pub sum: Option<Tensor>,
}

impl UpdateRule for Adagrad {
    type State = AdagradState;

    fn step(
        &self,
        s: &mut AdagradState,
        p: &Tensor,
        grad: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor> {
        let clr = lr / (1.0 + (t as f64 - 1.0) * self.lr_decay);
        let g = add_scaled(grad, p, self.weight_decay)?;
        let sum = match &s.sum {
            None => g.sqr()?.affine(1.0, self.initial_accumulator_value)?,
            Some(sum) => (sum + g.sqr()?)?,
        };
        let std = sum.sqrt()?.affine(1.0, self.eps)?;
        let new = add_scaled(p, &g.div(&std)?, -clr)?;
        s.sum = Some(sum);
        Ok(new)
    }
}

/// Lion's state.
#[derive(Debug, Clone, Default)]
pub struct LionState {
    /// The momentum: a running average of gradients.
    pub exp_avg: Option<Tensor>,
}

impl UpdateRule for Lion {
    type State = LionState;

    fn step(
        &self,
        s: &mut LionState,
        p: &Tensor,
        grad: &Tensor,
        lr: f64,
        _t: u64,
    ) -> Result<Tensor> {
        let (b1, b2) = (self.beta1, self.beta2);
        let m = match &s.exp_avg {
            None => grad.zeros_like()?,
            Some(m) => m.clone(),
        };
        let c = lerp(&m, grad, 1.0 - b1)?;
        let p = p.affine(1.0 - lr * self.weight_decay, 0.0)?;
        let new = add_scaled(&p, &c.sign()?, -lr)?;
        s.exp_avg = Some(lerp(&m, grad, 1.0 - b2)?);
        Ok(new)
    }
}
