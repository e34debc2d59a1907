//! torch.optim's classic optimizers (SGD, Adam, AdamW, RMSprop, Adagrad) and Lion, written
//! after torch.optim's single-tensor implementations so trajectories match it to float rounding.
//! Each is written once over [`Lanes`]: a single run is one lane, several runs step as one.

use candle_core::{Result, Tensor};

use super::lanes::{LaneRule, Lanes};
use super::lowp;
use super::spec::{Adagrad, Adam, AdamW, Lion, OptimizerSpec, RmsProp, Sgd};
use super::step::UpdateRule;

/// SGD's state.
#[derive(Debug, Clone, Default)]
pub struct SgdState {
    /// The momentum buffer (only with momentum).
    pub momentum_buffer: Option<Tensor>,
}

lane_slices!(SgdState { momentum_buffer });
one_lane!(Sgd => SgdState, RmsProp => RmsPropState, Adagrad => AdagradState, Lion => LionState);

impl LaneRule for Sgd {
    type State = SgdState;
    /// Momentum or none, Nesterov's or not.
    type Structure = (bool, bool);

    fn structure(&self) -> (bool, bool) {
        (self.momentum != 0.0, self.nesterov)
    }

    fn step_lanes(
        k: &Lanes<Self>,
        s: &mut SgdState,
        p: &Tensor,
        grad: &Tensor,
        _t: u64,
    ) -> Result<Tensor> {
        let o = k.rule();
        let momentum = k.coef(|o, _| o.momentum);
        let mut g = k.coef(|o, _| o.weight_decay).add_scaled(grad, p)?;
        if o.momentum != 0.0 {
            let buf = match &s.momentum_buffer {
                None => g.clone(),
                Some(buf) => {
                    (momentum.scale(buf)? + k.coef(|o, _| 1.0 - o.dampening).scale(&g)?)?
                }
            };
            g = if o.nesterov {
                momentum.add_scaled(&g, &buf)?
            } else {
                buf.clone()
            };
            s.momentum_buffer = Some(buf);
        }
        k.coef(|_, lr| -lr).add_scaled(p, &g)
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
    /// How the kernel keeps the moments (see [`kernels::Moments`]).
    pub(super) moments: super::kernels::Moments,
}

impl super::lanes::LaneSlices for AdamState {
    fn pick(&self, _keep: &[usize], take: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        use super::lanes::pick_opt;
        // A lane's moments are views of the batch's: never written in place.
        Ok(Self {
            exp_avg: pick_opt(&self.exp_avg, take)?,
            exp_avg_sq: pick_opt(&self.exp_avg_sq, take)?,
            max_exp_avg_sq: pick_opt(&self.max_exp_avg_sq, take)?,
            moments: Default::default(),
        })
    }
}

/// Adam's hyper-parameters, with weight decay coupled (Adam) or decoupled (AdamW).
#[derive(Debug, Clone)]
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
}

impl LaneRule for AdamRule {
    type State = AdamState;
    /// AMSGrad or not, AdamW's decay or Adam's.
    type Structure = (bool, bool);

    fn structure(&self) -> (bool, bool) {
        (self.amsgrad, self.decoupled)
    }

    fn step_lanes(
        k: &Lanes<Self>,
        s: &mut AdamState,
        p: &Tensor,
        grad: &Tensor,
        t: u64,
    ) -> Result<Tensor> {
        // In f16/bf16 every op rounds: torch's own sequence of them, or the numbers drift.
        // Lanes refuse these dtypes (LaneState::new).
        if lowp::is_low(p.dtype()) {
            let Some((rule, lr)) = k.single() else {
                candle_core::bail!("Adam in {:?} steps one run at a time", p.dtype());
            };
            return lowp::adam(rule, s, p, grad, lr, t, None);
        }
        if let Some(new) = super::kernels::adam(&k.each(), s, p, grad, t)? {
            return Ok(new);
        }
        let (o, t) = (k.rule(), t as f64);
        let (p, g) = if o.decoupled {
            let keep = k.coef(|o, lr| 1.0 - lr * o.weight_decay);
            (keep.scale(p)?, grad.clone())
        } else {
            (
                p.clone(),
                k.coef(|o, _| o.weight_decay).add_scaled(grad, p)?,
            )
        };
        let one_minus_b1 = k.coef(|o, _| 1.0 - o.betas.0);
        let m = match &s.exp_avg {
            None => one_minus_b1.scale(&g)?,
            Some(m) => one_minus_b1.lerp(m, &g)?,
        };
        let g2 = k.coef(|o, _| 1.0 - o.betas.1).scaled_square(&g)?;
        let v = match &s.exp_avg_sq {
            None => g2,
            Some(v) => (k.coef(|o, _| o.betas.1).scale(v)? + g2)?,
        };
        let second = if o.amsgrad {
            let vmax = match &s.max_exp_avg_sq {
                None => v.clone(),
                Some(c) => c.maximum(&v)?,
            };
            s.max_exp_avg_sq = Some(vmax.clone());
            vmax
        } else {
            v.clone()
        };
        let inv_bc2_sqrt = k.coef(|o, _| 1.0 / (1.0 - o.betas.1.powf(t)).sqrt());
        let denom = inv_bc2_sqrt.affine(&second.sqrt()?, &k.coef(|o, _| o.eps))?;
        let step_size = k.coef(|o, lr| lr / (1.0 - o.betas.0.powf(t)));
        let new = (&p - step_size.scale(&m.div(&denom)?)?)?;
        s.exp_avg = Some(m);
        s.exp_avg_sq = Some(v);
        s.moments.disown();
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
        AdamRule::step_lanes(&Lanes::one(&rule, &lr), s, p, g, t)
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
        AdamRule::step_lanes(&Lanes::one(&rule, &lr), s, p, g, t)
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

lane_slices!(RmsPropState {
    square_avg,
    grad_avg,
    momentum_buffer
});

impl LaneRule for RmsProp {
    type State = RmsPropState;
    /// Centered or not, momentum or none.
    type Structure = (bool, bool);

    fn structure(&self) -> (bool, bool) {
        (self.centered, self.momentum > 0.0)
    }

    fn step_lanes(
        k: &Lanes<Self>,
        s: &mut RmsPropState,
        p: &Tensor,
        grad: &Tensor,
        _t: u64,
    ) -> Result<Tensor> {
        let o = k.rule();
        let (alpha, eps) = (k.coef(|o, _| o.alpha), k.coef(|o, _| o.eps));
        let one_minus_alpha = k.coef(|o, _| 1.0 - o.alpha);
        let g = k.coef(|o, _| o.weight_decay).add_scaled(grad, p)?;
        let g2 = one_minus_alpha.scaled_square(&g)?;
        let sq = match &s.square_avg {
            None => g2,
            Some(sq) => (alpha.scale(sq)? + g2)?,
        };
        let avg = if o.centered {
            let ga = match &s.grad_avg {
                None => one_minus_alpha.scale(&g)?,
                Some(ga) => one_minus_alpha.lerp(ga, &g)?,
            };
            let avg = eps.shift(&(&sq - ga.sqr()?)?.sqrt()?)?;
            s.grad_avg = Some(ga);
            avg
        } else {
            eps.shift(&sq.sqrt()?)?
        };
        s.square_avg = Some(sq);
        let step = g.div(&avg)?;
        let minus_lr = k.coef(|_, lr| -lr);
        if o.momentum > 0.0 {
            let buf = match &s.momentum_buffer {
                None => step,
                Some(buf) => (k.coef(|o, _| o.momentum).scale(buf)? + step)?,
            };
            let new = minus_lr.add_scaled(p, &buf)?;
            s.momentum_buffer = Some(buf);
            Ok(new)
        } else {
            minus_lr.add_scaled(p, &step)
        }
    }
}

/// Adagrad's state.
#[derive(Debug, Clone, Default)]
pub struct AdagradState {
    /// The sum of all squared gradients so far (from `initial_accumulator_value`).
    pub sum: Option<Tensor>,
}

lane_slices!(AdagradState { sum });

impl LaneRule for Adagrad {
    type State = AdagradState;
    type Structure = ();

    fn structure(&self) {}

    fn step_lanes(
        k: &Lanes<Self>,
        s: &mut AdagradState,
        p: &Tensor,
        grad: &Tensor,
        t: u64,
    ) -> Result<Tensor> {
        let clr = k.coef(|o, lr| lr / (1.0 + (t as f64 - 1.0) * o.lr_decay));
        let g = k.coef(|o, _| o.weight_decay).add_scaled(grad, p)?;
        let sum = match &s.sum {
            None => k
                .coef(|o, _| o.initial_accumulator_value)
                .shift(&g.sqr()?)?,
            Some(sum) => (sum + g.sqr()?)?,
        };
        let std = k.coef(|o, _| o.eps).shift(&sum.sqrt()?)?;
        let new = clr.map(|c| -c).add_scaled(p, &g.div(&std)?)?;
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

lane_slices!(LionState { exp_avg });

impl LaneRule for Lion {
    type State = LionState;
    type Structure = ();

    fn structure(&self) {}

    fn step_lanes(
        k: &Lanes<Self>,
        s: &mut LionState,
        p: &Tensor,
        grad: &Tensor,
        _t: u64,
    ) -> Result<Tensor> {
        let m = match &s.exp_avg {
            None => grad.zeros_like()?,
            Some(m) => m.clone(),
        };
        let c = k.coef(|o, _| 1.0 - o.beta1).lerp(&m, grad)?;
        let p = k.coef(|o, lr| 1.0 - lr * o.weight_decay).scale(p)?;
        let new = k.coef(|_, lr| -lr).add_scaled(&p, &c.sign()?)?;
        s.exp_avg = Some(k.coef(|o, _| 1.0 - o.beta2).lerp(&m, grad)?);
        Ok(new)
    }
}
