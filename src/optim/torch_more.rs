//! The rest of torch.optim's elementwise optimizers: Adadelta, Adamax, ASGD, NAdam, RAdam and
//! Rprop, written after torch.optim's single-tensor implementations (state named as torch names
//! it) so trajectories match torch to float rounding.

use candle_core::{Result, Tensor};

use super::spec::{Adadelta, Adamax, Asgd, NAdam, RAdam, Rprop};
use super::step::{Rule, StepCx, UpdateRule, add_scaled, lerp};

/// Adadelta's state.
#[derive(Debug, Clone, Default)]
pub struct AdadeltaState {
    /// The running average of squared gradients.
    pub square_avg: Option<Tensor>,
    /// The running average of squared updates.
    pub acc_delta: Option<Tensor>,
}

impl UpdateRule for Adadelta {
    type State = AdadeltaState;

    fn step(
        &self,
        s: &mut AdadeltaState,
        p: &Tensor,
        grad: &Tensor,
        lr: f64,
        _t: u64,
    ) -> Result<Tensor> {
        let (rho, eps) = (self.rho, self.eps);
        let g = add_scaled(grad, p, self.weight_decay)?;
        let square_avg = match &s.square_avg {
            None => g.sqr()?.affine(1.0 - rho, 0.0)?,
            Some(v) => (v.affine(rho, 0.0)? + g.sqr()?.affine(1.0 - rho, 0.0)?)?,
        };
        let acc_delta = match &s.acc_delta {
            None => g.zeros_like()?,
            Some(u) => u.clone(),
        };
        // eps sits inside both roots, so the very first step is sqrt(eps) / sqrt(v + eps) * g.
        let std = square_avg.affine(1.0, eps)?.sqrt()?;
        let delta = acc_delta.affine(1.0, eps)?.sqrt()?.div(&std)?.mul(&g)?;
        let acc_delta = (acc_delta.affine(rho, 0.0)? + delta.sqr()?.affine(1.0 - rho, 0.0)?)?;
        let new = add_scaled(p, &delta, -lr)?;
        s.square_avg = Some(square_avg);
        s.acc_delta = Some(acc_delta);
        Ok(new)
    }
}

/// Adamax's state.
#[derive(Debug, Clone, Default)]
pub struct AdamaxState {
    /// First moment: the running average of gradients.
    pub exp_avg: Option<Tensor>,
    /// The decayed infinity norm of past gradients.
    pub exp_inf: Option<Tensor>,
}

impl UpdateRule for Adamax {
    type State = AdamaxState;

    fn step(
        &self,
        s: &mut AdamaxState,
        p: &Tensor,
        grad: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor> {
        let (b1, b2) = (self.beta1, self.beta2);
        let g = add_scaled(grad, p, self.weight_decay)?;
        let exp_avg = match &s.exp_avg {
            None => g.affine(1.0 - b1, 0.0)?,
            Some(m) => lerp(m, &g, 1.0 - b1)?,
        };
        // eps goes inside the max: u = max(beta2 u, |g| + eps).
        let bound = g.abs()?.affine(1.0, self.eps)?;
        let exp_inf = match &s.exp_inf {
            None => bound,
            Some(u) => u.affine(b2, 0.0)?.maximum(&bound)?,
        };
        let clr = lr / (1.0 - b1.powf(t as f64));
        let new = add_scaled(p, &exp_avg.div(&exp_inf)?, -clr)?;
        s.exp_avg = Some(exp_avg);
        s.exp_inf = Some(exp_inf);
        Ok(new)
    }
}

/// ASGD's state: torch keeps `eta` and `mu` per param, but they are the same for every param.
#[derive(Debug, Clone)]
pub struct AsgdState {
    /// The step size of the next update; None before the first, which takes that step's lr.
    pub eta: Option<f64>,
    /// The averaging weight of the next update: 1 copies the params into `ax`.
    pub mu: f64,
    /// The averaged params (the evaluation params); empty before the first update.
    pub ax: Vec<Tensor>,
}

/// ASGD is whole-model only for its evaluation params (`ax`); the update is elementwise.
impl Rule for Asgd {
    type State = AsgdState;

    fn init(&self, _params: &[Tensor]) -> Result<AsgdState> {
        Ok(AsgdState {
            eta: None,
            mu: 1.0,
            ax: Vec::new(),
        })
    }

    fn step(&self, s: &mut AsgdState, cx: &mut StepCx) -> Result<Vec<Tensor>> {
        let (lambd, lr, t) = (self.lambd, cx.lr, cx.t as f64);
        // This step uses the eta computed after the previous one (lr itself on the first).
        let eta = s.eta.unwrap_or(lr);
        let mut new = Vec::with_capacity(cx.params.len());
        let mut ax = Vec::with_capacity(cx.params.len());
        for (i, (p, grad)) in cx.params.iter().zip(cx.grads).enumerate() {
            let g = add_scaled(grad, p, self.weight_decay)?;
            let p = add_scaled(&p.affine(1.0 - lambd * eta, 0.0)?, &g, -eta)?;
            let avg = match s.ax.get(i) {
                Some(a) if s.mu != 1.0 => add_scaled(a, &(&p - a)?, s.mu)?,
                _ => p.clone(),
            };
            new.push(p);
            ax.push(avg);
        }
        s.ax = ax;
        s.eta = Some(lr / (1.0 + lambd * lr * t).powf(self.alpha));
        s.mu = 1.0 / (t - self.t0).max(1.0);
        Ok(new)
    }

    /// The average of the iterates since averaging started (the params until then).
    fn eval_params(&self, s: &AsgdState) -> Option<Vec<Tensor>> {
        (!s.ax.is_empty()).then(|| s.ax.clone())
    }
}

/// Adam's moments for NAdam and RAdam.
#[derive(Debug, Clone, Default)]
pub struct MomentState {
    /// First moment: the running average of gradients.
    pub exp_avg: Option<Tensor>,
    /// Second moment: the running average of squared gradients.
    pub exp_avg_sq: Option<Tensor>,
}

impl MomentState {
    /// Updates both moments with `g` (torch's lerp and mul/addcmul) and returns them.
    fn update(&mut self, g: &Tensor, b1: f64, b2: f64) -> Result<(Tensor, Tensor)> {
        let m = match &self.exp_avg {
            None => g.affine(1.0 - b1, 0.0)?,
            Some(m) => lerp(m, g, 1.0 - b1)?,
        };
        let g2 = g.sqr()?.affine(1.0 - b2, 0.0)?;
        let v = match &self.exp_avg_sq {
            None => g2,
            Some(v) => (v.affine(b2, 0.0)? + g2)?,
        };
        self.exp_avg = Some(m.clone());
        self.exp_avg_sq = Some(v.clone());
        Ok((m, v))
    }
}

/// Weight decay as NAdam and RAdam apply it: the (possibly decayed) param and the gradient.
fn weight_decay(
    p: &Tensor,
    grad: &Tensor,
    lr: f64,
    wd: f64,
    decoupled: bool,
) -> Result<(Tensor, Tensor)> {
    if wd == 0.0 {
        Ok((p.clone(), grad.clone()))
    } else if decoupled {
        Ok((p.affine(1.0 - lr * wd, 0.0)?, grad.clone()))
    } else {
        Ok((p.clone(), add_scaled(grad, p, wd)?))
    }
}

/// NAdam's state.
#[derive(Debug, Clone)]
pub struct NAdamState {
    /// The product of the momentum schedule mu_1 ... mu_t so far.
    pub mu_product: f64,
    /// Both moments.
    pub moments: MomentState,
}

impl Default for NAdamState {
    /// Before the first update the product is empty: 1.
    fn default() -> Self {
        Self {
            mu_product: 1.0,
            moments: MomentState::default(),
        }
    }
}

impl UpdateRule for NAdam {
    type State = NAdamState;

    fn step(
        &self,
        s: &mut NAdamState,
        p: &Tensor,
        grad: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor> {
        let (b1, b2, t) = (self.beta1, self.beta2, t as f64);
        let bias_correction2 = 1.0 - b2.powf(t);
        let (p, g) = weight_decay(
            p,
            grad,
            lr,
            self.weight_decay,
            self.decoupled_weight_decay,
        )?;
        let schedule = |t: f64| b1 * (1.0 - 0.5 * 0.96f64.powf(t * self.momentum_decay));
        let (mu, mu_next) = (schedule(t), schedule(t + 1.0));
        s.mu_product *= mu;
        let (m, v) = s.moments.update(&g, b1, b2)?;
        let denom = v.affine(1.0 / bias_correction2, 0.0)?.sqrt()?.affine(1.0, self.eps)?;
        let mu_product_next = s.mu_product * mu_next;
        let p = add_scaled(
            &p,
            &g.div(&denom)?,
            -lr * (1.0 - mu) / (1.0 - s.mu_product),
        )?;
        add_scaled(
            &p,
            &m.div(&denom)?,
            -lr * mu_next / (1.0 - mu_product_next),
        )
    }
}

impl UpdateRule for RAdam {
    type State = MomentState;

    fn step(
        &self,
        s: &mut MomentState,
        p: &Tensor,
        grad: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor> {
        let (b1, b2, t) = (self.beta1, self.beta2, t as f64);
        let (p, g) = weight_decay(
            p,
            grad,
            lr,
            self.weight_decay,
            self.decoupled_weight_decay,
        )?;
        let (m, v) = s.update(&g, b1, b2)?;
        let bias_correction1 = 1.0 - b1.powf(t);
        let bias_correction2 = 1.0 - b2.powf(t);
        let m_hat = m.affine(1.0 / bias_correction1, 0.0)?;
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        let rho_t = rho_inf - 2.0 * t * b2.powf(t) / bias_correction2;
        if rho_t > 5.0 {
            let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                .sqrt();
            // eps is added to sqrt(v), not to the bias-corrected sqrt(v / bias_correction2).
            let adaptive = v
                .sqrt()?
                .affine(1.0, self.eps)?
                .recip()?
                .affine(bias_correction2.sqrt(), 0.0)?;
            let step = m_hat.affine(lr, 0.0)?.mul(&adaptive)?.affine(rect, 0.0)?;
            &p - step
        } else {
            // While the variance of the adaptive step is intractable: a plain momentum step.
            add_scaled(&p, &m_hat, -lr)
        }
    }
}

/// Rprop's state.
#[derive(Debug, Clone, Default)]
pub struct RpropState {
    /// The previous step's gradient, zeroed where its sign flipped.
    pub prev: Option<Tensor>,
    /// Each entry's step size (starts at the lr of the first step).
    pub step_size: Option<Tensor>,
}

/// A tensor shaped and typed like `like`, every entry `value`.
fn filled(like: &Tensor, value: f64) -> Result<Tensor> {
    like.ones_like()?.affine(value, 0.0)
}

impl UpdateRule for Rprop {
    type State = RpropState;

    fn step(
        &self,
        s: &mut RpropState,
        p: &Tensor,
        grad: &Tensor,
        lr: f64,
        _t: u64,
    ) -> Result<Tensor> {
        let prev = match &s.prev {
            None => grad.zeros_like()?,
            Some(prev) => prev.clone(),
        };
        let step_size = match &s.step_size {
            None => filled(grad, lr)?,
            Some(step) => step.clone(),
        };
        let sign = grad.mul(&prev)?.sign()?;
        // torch overwrites sign: > 0 -> etaplus, < 0 -> etaminus, == 0 -> 1 (NaN stays NaN).
        let flipped = sign.lt(0.0)?;
        let factor = sign.gt(0.0)?.where_cond(
            &filled(grad, self.etaplus)?,
            &flipped.where_cond(
                &filled(grad, self.etaminus)?,
                &sign.eq(0.0)?.where_cond(&filled(grad, 1.0)?, &sign)?,
            )?,
        )?;
        let step_size = step_size
            .mul(&factor)?
            .clamp(self.step_size_min, self.step_size_max)?;
        // Where the sign flipped the entry does not move and the next step sees no sign.
        let g = flipped.where_cond(&grad.zeros_like()?, grad)?;
        let new = (p - g.sign()?.mul(&step_size)?)?;
        s.prev = Some(g);
        s.step_size = Some(step_size);
        Ok(new)
    }
}
