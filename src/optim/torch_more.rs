//! The rest of torch.optim's elementwise optimizers: Adadelta, Adamax, ASGD, NAdam, RAdam and
//! Rprop, written after torch.optim's single-tensor implementations (state named as torch names
//! it) so trajectories match torch to float rounding. All but ASGD are written over [`Lanes`]: a
//! single run is one lane, several runs step as one.

use candle_core::{Result, Tensor};

use super::lanes::{Coef, LaneRule, LaneSlices, Lanes};
use super::spec::{Adadelta, Adamax, Asgd, NAdam, RAdam, Rprop};
use super::step::{Rule, StateValue, StepCx, add_scaled};

/// Adadelta's state.
#[derive(Debug, Clone, Default)]
pub struct AdadeltaState {
    /// The running average of squared gradients.
    pub square_avg: Option<Tensor>,
    /// The running average of squared updates.
    pub acc_delta: Option<Tensor>,
}

lane_slices!(AdadeltaState {
    square_avg,
    acc_delta
});
one_lane!(
    Adadelta => AdadeltaState,
    Adamax => AdamaxState,
    NAdam => NAdamState,
    RAdam => MomentState,
    Rprop => RpropState,
);

impl LaneRule for Adadelta {
    type State = AdadeltaState;
    type Structure = ();

    fn structure(&self) {}

    fn step_lanes(
        k: &Lanes<Self>,
        s: &mut AdadeltaState,
        p: &Tensor,
        grad: &Tensor,
        _t: u64,
    ) -> Result<Tensor> {
        let (rho, eps) = (k.coef(|o, _| o.rho), k.coef(|o, _| o.eps));
        let one_minus_rho = k.coef(|o, _| 1.0 - o.rho);
        let g = k.coef(|o, _| o.weight_decay).add_scaled(grad, p)?;
        let g2 = one_minus_rho.scaled_square(&g)?;
        let square_avg = match &s.square_avg {
            None => g2,
            Some(v) => (rho.scale(v)? + g2)?,
        };
        let acc_delta = match &s.acc_delta {
            None => g.zeros_like()?,
            Some(u) => u.clone(),
        };
        // eps sits inside both roots, so the very first step is sqrt(eps) / sqrt(v + eps) * g.
        let std = eps.shift(&square_avg)?.sqrt()?;
        let delta = eps.shift(&acc_delta)?.sqrt()?.div(&std)?.mul(&g)?;
        let acc_delta = (rho.scale(&acc_delta)? + one_minus_rho.scaled_square(&delta)?)?;
        let new = k.coef(|_, lr| -lr).add_scaled(p, &delta)?;
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

lane_slices!(AdamaxState { exp_avg, exp_inf });

impl LaneRule for Adamax {
    type State = AdamaxState;
    type Structure = ();

    fn structure(&self) {}

    fn step_lanes(
        k: &Lanes<Self>,
        s: &mut AdamaxState,
        p: &Tensor,
        grad: &Tensor,
        t: u64,
    ) -> Result<Tensor> {
        let g = k.coef(|o, _| o.weight_decay).add_scaled(grad, p)?;
        let one_minus_b1 = k.coef(|o, _| 1.0 - o.beta1);
        let exp_avg = match &s.exp_avg {
            None => one_minus_b1.scale(&g)?,
            Some(m) => one_minus_b1.lerp(m, &g)?,
        };
        // eps goes inside the max: u = max(beta2 u, |g| + eps).
        let bound = k.coef(|o, _| o.eps).shift(&g.abs()?)?;
        let exp_inf = match &s.exp_inf {
            None => bound,
            Some(u) => k.coef(|o, _| o.beta2).scale(u)?.maximum(&bound)?,
        };
        let clr = k.coef(|o, lr| lr / (1.0 - o.beta1.powf(t as f64)));
        let new = clr.map(|c| -c).add_scaled(p, &exp_avg.div(&exp_inf)?)?;
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

    /// torch's `eta`, `mu` and `ax` after the step (ax only once there is one).
    fn state_values(&self, s: &AsgdState) -> Vec<(&'static str, StateValue)> {
        let mut out: Vec<(&'static str, StateValue)> = s
            .eta
            .map(|eta| ("eta", StateValue::Scalar(eta)))
            .into_iter()
            .collect();
        out.push(("mu", StateValue::Scalar(s.mu)));
        if !s.ax.is_empty() {
            out.push(("ax", StateValue::PerParam(s.ax.clone())));
        }
        out
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

lane_slices!(MomentState {
    exp_avg,
    exp_avg_sq
});

impl MomentState {
    /// Updates both moments with `g` (torch's lerp and mul/addcmul) and returns them.
    fn update(&mut self, g: &Tensor, b1: &Coef, b2: &Coef) -> Result<(Tensor, Tensor)> {
        let one_minus_b1 = b1.map(|b| 1.0 - b);
        let m = match &self.exp_avg {
            None => one_minus_b1.scale(g)?,
            Some(m) => one_minus_b1.lerp(m, g)?,
        };
        let g2 = b2.map(|b| 1.0 - b).scaled_square(g)?;
        let v = match &self.exp_avg_sq {
            None => g2,
            Some(v) => (b2.scale(v)? + g2)?,
        };
        self.exp_avg = Some(m.clone());
        self.exp_avg_sq = Some(v.clone());
        Ok((m, v))
    }
}

/// Weight decay as NAdam and RAdam apply it (`weight_decay` of each lane's rule, decoupled or
/// not in all): the (possibly decayed) param and the gradient.
fn weight_decay<O>(
    k: &Lanes<O>,
    p: &Tensor,
    grad: &Tensor,
    wd: impl Fn(&O) -> f64 + Copy,
    decoupled: bool,
) -> Result<(Tensor, Tensor)> {
    if decoupled {
        let p = k.mask(|o, _| wd(o) == 0.0).choose(
            || Ok(p.clone()),
            || k.coef(|o, lr| 1.0 - lr * wd(o)).scale(p),
        )?;
        Ok((p, grad.clone()))
    } else {
        Ok((p.clone(), k.coef(|o, _| wd(o)).add_scaled(grad, p)?))
    }
}

/// NAdam's state.
#[derive(Debug, Clone, Default)]
pub struct NAdamState {
    /// The product of the momentum schedule mu_1 ... mu_t so far, one per lane (a run is one
    /// lane); empty before the first update (the empty product, 1).
    pub mu_product: Vec<f64>,
    /// Both moments.
    pub moments: MomentState,
}

impl LaneSlices for NAdamState {
    fn pick(&self, keep: &[usize], take: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let mu_product = match self.mu_product.as_slice() {
            [] => Vec::new(),
            mu => keep.iter().map(|&r| mu[r]).collect(),
        };
        Ok(Self {
            mu_product,
            moments: self.moments.pick(keep, take)?,
        })
    }
}

impl LaneRule for NAdam {
    type State = NAdamState;
    /// Decoupled weight decay or not.
    type Structure = bool;

    fn structure(&self) -> bool {
        self.decoupled_weight_decay
    }

    fn step_lanes(
        k: &Lanes<Self>,
        s: &mut NAdamState,
        p: &Tensor,
        grad: &Tensor,
        t: u64,
    ) -> Result<Tensor> {
        let t = t as f64;
        let decoupled = k.rule().decoupled_weight_decay;
        let (p, g) = weight_decay(k, p, grad, |o| o.weight_decay, decoupled)?;
        let schedule =
            |o: &NAdam, t: f64| o.beta1 * (1.0 - 0.5 * 0.96f64.powf(t * o.momentum_decay));
        let mu = k.coef(|o, _| schedule(o, t));
        let mu_product: Vec<f64> = (0..k.count())
            .map(|r| s.mu_product.get(r).copied().unwrap_or(1.0) * mu.at(r))
            .collect();
        let (m, v) = s
            .moments
            .update(&g, &k.coef(|o, _| o.beta1), &k.coef(|o, _| o.beta2))?;
        let inv_bc2 = k.coef(|o, _| 1.0 / (1.0 - o.beta2.powf(t)));
        let denom = k.coef(|o, _| o.eps).shift(&inv_bc2.scale(&v)?.sqrt()?)?;
        let grad_step =
            k.coef_lane(|r, o, lr| -lr * (1.0 - schedule(o, t)) / (1.0 - mu_product[r]));
        let p = grad_step.add_scaled(&p, &g.div(&denom)?)?;
        let moment_step = k.coef_lane(|r, o, lr| {
            let mu_next = schedule(o, t + 1.0);
            -lr * mu_next / (1.0 - mu_product[r] * mu_next)
        });
        s.mu_product = mu_product;
        moment_step.add_scaled(&p, &m.div(&denom)?)
    }
}

impl LaneRule for RAdam {
    type State = MomentState;
    /// Decoupled weight decay or not.
    type Structure = bool;

    fn structure(&self) -> bool {
        self.decoupled_weight_decay
    }

    fn step_lanes(
        k: &Lanes<Self>,
        s: &mut MomentState,
        p: &Tensor,
        grad: &Tensor,
        t: u64,
    ) -> Result<Tensor> {
        let t = t as f64;
        let decoupled = k.rule().decoupled_weight_decay;
        let (p, g) = weight_decay(k, p, grad, |o| o.weight_decay, decoupled)?;
        let (m, v) = s.update(&g, &k.coef(|o, _| o.beta1), &k.coef(|o, _| o.beta2))?;
        let m_hat = k.coef(|o, _| 1.0 / (1.0 - o.beta1.powf(t))).scale(&m)?;
        // The length of the approximated SMA, and where it is heading.
        let rho = |o: &RAdam| {
            let bias_correction2 = 1.0 - o.beta2.powf(t);
            let rho_inf = 2.0 / (1.0 - o.beta2) - 1.0;
            (
                rho_inf,
                rho_inf - 2.0 * t * o.beta2.powf(t) / bias_correction2,
            )
        };
        k.mask(|o, _| rho(o).1 > 5.0).choose(
            || {
                let rect = k.coef(|o, _| {
                    let (rho_inf, rho_t) = rho(o);
                    ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
                        .sqrt()
                });
                // eps is added to sqrt(v), not to the bias-corrected sqrt(v / bias_correction2).
                let adaptive = k
                    .coef(|o, _| (1.0 - o.beta2.powf(t)).sqrt())
                    .scale(&k.coef(|o, _| o.eps).shift(&v.sqrt()?)?.recip()?)?;
                let step = rect.scale(&k.coef(|_, lr| lr).scale(&m_hat)?.mul(&adaptive)?)?;
                &p - step
            },
            // While the variance of the adaptive step is intractable: a plain momentum step.
            || k.coef(|_, lr| -lr).add_scaled(&p, &m_hat),
        )
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

lane_slices!(RpropState { prev, step_size });

/// A tensor shaped and typed like `like`, every entry its lane's `value`.
fn filled(like: &Tensor, value: &Coef) -> Result<Tensor> {
    value.scale(&like.ones_like()?)
}

impl LaneRule for Rprop {
    type State = RpropState;
    type Structure = ();

    fn structure(&self) {}

    fn step_lanes(
        k: &Lanes<Self>,
        s: &mut RpropState,
        p: &Tensor,
        grad: &Tensor,
        _t: u64,
    ) -> Result<Tensor> {
        let prev = match &s.prev {
            None => grad.zeros_like()?,
            Some(prev) => prev.clone(),
        };
        let step_size = match &s.step_size {
            None => filled(grad, &k.coef(|_, lr| lr))?,
            Some(step) => step.clone(),
        };
        let sign = grad.mul(&prev)?.sign()?;
        // torch overwrites sign: > 0 -> etaplus, < 0 -> etaminus, == 0 -> 1 (NaN stays NaN).
        let flipped = sign.lt(0.0)?;
        let factor = sign.gt(0.0)?.where_cond(
            &filled(grad, &k.coef(|o, _| o.etaplus))?,
            &flipped.where_cond(
                &filled(grad, &k.coef(|o, _| o.etaminus))?,
                &sign
                    .eq(0.0)?
                    .where_cond(&filled(grad, &Coef::All(1.0))?, &sign)?,
            )?,
        )?;
        // torch's clamp(min, max): the maximum with min, then the minimum with max.
        let step_size = step_size.mul(&factor)?;
        let step_size = step_size
            .maximum(&k.coef(|o, _| o.step_size_min).full(&step_size)?)?
            .minimum(&k.coef(|o, _| o.step_size_max).full(&step_size)?)?;
        // Where the sign flipped the entry does not move and the next step sees no sign.
        let g = flipped.where_cond(&grad.zeros_like()?, grad)?;
        let new = (p - g.sign()?.mul(&step_size)?)?;
        s.prev = Some(g);
        s.step_size = Some(step_size);
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use serde_json::Value;

    use super::*;
    use crate::optim::spec::{HyperValue, OptimizerSpec};
    use crate::optim::step::{NoOracle, UpdateRule};

    fn scalar(x: f64) -> Tensor {
        Tensor::new(x, &Device::Cpu).unwrap()
    }

    fn value(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    /// The param after each step of `rule` from `p`, fed `grads` in turn.
    fn trajectory<R: UpdateRule>(rule: &R, p: f64, grads: &[f64], lr: f64) -> Vec<f64> {
        let (mut state, mut p) = (R::State::default(), scalar(p));
        let mut out = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            p = UpdateRule::step(rule, &mut state, &p, &scalar(*g), lr, t as u64 + 1).unwrap();
            out.push(value(&p));
        }
        out
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-14 * w.abs().max(1.0),
                "step {}: {got:?} vs {want:?}",
                i + 1
            );
        }
    }

    #[test]
    fn registry_defaults_are_torchs_signatures() {
        use HyperValue::{Bool as B, Number as N};
        // torch.optim's signatures; betas split into beta1, beta2, Rprop's etas into etaminus,
        // etaplus and its step_sizes into step_size_min, step_size_max.
        let torch: [(&str, &[(&str, HyperValue)]); 6] = [
            (
                "adadelta",
                &[
                    ("lr", N(1.0)),
                    ("rho", N(0.9)),
                    ("eps", N(1e-6)),
                    ("weight_decay", N(0.0)),
                ],
            ),
            (
                "adamax",
                &[
                    ("lr", N(2e-3)),
                    ("beta1", N(0.9)),
                    ("beta2", N(0.999)),
                    ("eps", N(1e-8)),
                    ("weight_decay", N(0.0)),
                ],
            ),
            (
                "asgd",
                &[
                    ("lr", N(1e-2)),
                    ("lambd", N(1e-4)),
                    ("alpha", N(0.75)),
                    ("t0", N(1e6)),
                    ("weight_decay", N(0.0)),
                ],
            ),
            (
                "nadam",
                &[
                    ("lr", N(2e-3)),
                    ("beta1", N(0.9)),
                    ("beta2", N(0.999)),
                    ("eps", N(1e-8)),
                    ("weight_decay", N(0.0)),
                    ("momentum_decay", N(4e-3)),
                    ("decoupled_weight_decay", B(false)),
                ],
            ),
            (
                "radam",
                &[
                    ("lr", N(1e-3)),
                    ("beta1", N(0.9)),
                    ("beta2", N(0.999)),
                    ("eps", N(1e-8)),
                    ("weight_decay", N(0.0)),
                    ("decoupled_weight_decay", B(false)),
                ],
            ),
            (
                "rprop",
                &[
                    ("lr", N(1e-2)),
                    ("etaminus", N(0.5)),
                    ("etaplus", N(1.2)),
                    ("step_size_min", N(1e-6)),
                    ("step_size_max", N(50.0)),
                ],
            ),
        ];
        for (name, defaults) in &torch {
            let spec = OptimizerSpec::parse(name).unwrap();
            assert_eq!(spec.values(), defaults.to_vec(), "{name}");
            assert_eq!(spec.group().title(), "torch.optim", "{name}");
        }
    }

    /// Asserts torch refuses `key = value` for each optimizer in `names`, saying what it accepts.
    fn assert_refused(names: &[&str], key: &str, value: &str, accepts: &str) {
        for name in names {
            let spec = format!("{name}({key}={value})");
            let e = OptimizerSpec::parse(&spec).unwrap_err();
            assert_eq!(
                e.message,
                format!("`{key}` must be {accepts}, not {value}"),
                "{spec}"
            );
            let help = format!("torch.optim refuses {key} = {value} for `{name}`");
            assert_eq!(e.help.as_deref(), Some(help.as_str()), "{spec}");
        }
    }

    fn assert_accepted(names: &[&str], key: &str, value: &str) {
        for name in names {
            let spec = format!("{name}({key}={value})");
            assert!(OptimizerSpec::parse(&spec).is_ok(), "{spec}");
        }
    }

    const ALL: &[&str] = &["adadelta", "adamax", "asgd", "nadam", "radam", "rprop"];

    #[test]
    fn lr_must_be_at_least_zero() {
        assert_refused(ALL, "lr", "-0.1", "at least 0");
        assert_accepted(ALL, "lr", "0");
    }

    #[test]
    fn adadeltas_rho_must_be_in_0_1() {
        assert_refused(&["adadelta"], "rho", "-0.1", "in [0, 1]");
        assert_refused(&["adadelta"], "rho", "1.1", "in [0, 1]");
        assert_accepted(&["adadelta"], "rho", "0");
        assert_accepted(&["adadelta"], "rho", "1");
    }

    #[test]
    fn eps_must_be_at_least_zero() {
        let with_eps = ["adadelta", "adamax", "nadam", "radam"];
        assert_refused(&with_eps, "eps", "-1e-8", "at least 0");
        assert_accepted(&with_eps, "eps", "0");
    }

    #[test]
    fn weight_decay_must_be_at_least_zero() {
        let with_decay = ["adadelta", "adamax", "asgd", "nadam", "radam"];
        assert_refused(&with_decay, "weight_decay", "-0.01", "at least 0");
        assert_accepted(&with_decay, "weight_decay", "0");
    }

    #[test]
    fn betas_must_be_in_0_1_open_above() {
        let adams = ["adamax", "nadam", "radam"];
        for beta in ["beta1", "beta2"] {
            assert_refused(&adams, beta, "1", "in [0, 1)");
            assert_refused(&adams, beta, "-0.1", "in [0, 1)");
            assert_accepted(&adams, beta, "0");
        }
    }

    #[test]
    fn nadams_momentum_decay_must_be_at_least_zero() {
        assert_refused(&["nadam"], "momentum_decay", "-0.004", "at least 0");
        assert_accepted(&["nadam"], "momentum_decay", "0");
    }

    #[test]
    fn rprops_etaminus_must_be_in_0_1_open() {
        // torch: 0 < etaminus < 1 < etaplus.
        for v in ["0", "1", "1.5"] {
            assert_refused(&["rprop"], "etaminus", v, "in (0, 1)");
        }
        assert_accepted(&["rprop"], "etaminus", "0.01");
    }

    #[test]
    fn rprops_etaplus_must_exceed_1() {
        for v in ["1", "0.5"] {
            assert_refused(&["rprop"], "etaplus", v, "greater than 1");
        }
        assert_accepted(&["rprop"], "etaplus", "1.01");
    }

    /// torch 2.x refuses a negative `lambd` or `alpha` ("Invalid lambd value").
    #[test]
    fn asgd_refuses_negative_decay() {
        for key in ["lambd", "alpha"] {
            assert_refused(&["asgd"], key, "-0.5", "at least 0");
            assert_accepted(&["asgd"], key, "0");
        }
    }

    #[test]
    fn what_torch_does_not_check_is_accepted() {
        assert_accepted(&["asgd"], "t0", "-1");
        assert_accepted(&["rprop"], "step_size_min", "-1");
        assert_accepted(&["rprop"], "step_size_max", "-1");
    }

    #[test]
    fn radam_takes_momentum_steps_until_the_variance_is_tractable() {
        // Constant g = 1, eps = 0: m_hat = 1, so steps 1..5 move by lr (rho_5 = 4.996 <= 5);
        // step 6 is rectified: lr * sqrt(bc2) / sqrt(v) * r = lr * r, with v = bc2.
        let radam = RAdam {
            eps: 0.0,
            ..RAdam::default()
        };
        let (lr, b2) = (0.1, 0.999f64);
        let rho_inf = 2.0 / (1.0 - b2) - 1.0;
        // powf, as torch's `**` with a float step: rho_t cancels ~2000 down to ~6, so an ulp
        // of beta2^t shows at 1e-11.
        let rho6 = rho_inf - 2.0 * 6.0 * b2.powf(6.0) / (1.0 - b2.powf(6.0));
        let r6 = ((rho6 - 4.0) * (rho6 - 2.0) * rho_inf
            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho6))
            .sqrt();
        let want = [-0.1, -0.2, -0.3, -0.4, -0.5, -0.5 - lr * r6];
        assert_close(&trajectory(&radam, 0.0, &[1.0; 6], lr), &want);
    }

    #[test]
    fn rprop_grows_steps_while_the_sign_holds_and_skips_a_flip() {
        // lr 0.1: step 0.1, then 0.12 (same sign); the flip halves it to 0.06 and does not
        // move; the next step sees no sign (prev was zeroed) and moves by 0.06, then 0.072.
        let want = [-0.1, -0.22, -0.22, -0.16, -0.088];
        let got = trajectory(&Rprop::default(), 0.0, &[1.0, 1.0, -1.0, -1.0, -1.0], 0.1);
        assert_close(&got, &want);
    }

    #[test]
    fn rprop_clamps_the_step_size() {
        let rprop = Rprop {
            step_size_min: 0.07,
            step_size_max: 0.11,
            ..Rprop::default()
        };
        // 0.12 clamps to 0.11; the flip's 0.055 clamps to 0.07.
        let want = [-0.1, -0.21, -0.21, -0.14];
        let got = trajectory(&rprop, 0.0, &[1.0, 1.0, -1.0, -1.0], 0.1);
        assert_close(&got, &want);
    }

    /// The gradient of lstsq's `mean((X @ w + b - y)^2)` at (w, b), by hand.
    fn lstsq_grads(x: &[f64], y: &[f64], w: &[f64], b: f64) -> (Vec<f64>, f64) {
        let n = y.len() as f64;
        let (mut gw, mut gb) = (vec![0.0; w.len()], 0.0);
        for (row, yi) in x.chunks(w.len()).zip(y) {
            let r = row.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + b - yi;
            for (g, a) in gw.iter_mut().zip(row) {
                *g += 2.0 * r * a / n;
            }
            gb += 2.0 * r / n;
        }
        (gw, gb)
    }

    fn floats(v: &Value) -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    }

    #[test]
    fn asgd_state_matches_torchs_eta_mu_and_ax() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/optim_more.json");
        let data: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let problem = &data["problems"]["lstsq"];
        let (x, y) = (
            floats(&problem["data"]["X"]["values"]),
            floats(&problem["data"]["y"]["values"]),
        );
        let cases = data["cases"].as_array().unwrap().iter().filter(|c| {
            c["problem"] == "lstsq" && c["optimizer"].as_str().unwrap().starts_with("asgd")
        });
        let mut checked = 0;
        for case in cases {
            let name = case["optimizer"].as_str().unwrap();
            let OptimizerSpec::Asgd(asgd) = OptimizerSpec::parse(name).unwrap() else {
                panic!("{name} is not asgd")
            };
            let mut params = vec![
                Tensor::new(floats(&problem["params"]["w"]["values"]), &Device::Cpu).unwrap(),
                scalar(floats(&problem["params"]["b"]["values"])[0]),
            ];
            let mut state = Rule::init(&asgd, &params).unwrap();
            assert!(
                asgd.eval_params(&state).is_none(),
                "no average before a step"
            );
            for t in 1..=30u64 {
                let w = params[0].to_vec1::<f64>().unwrap();
                let (gw, gb) = lstsq_grads(&x, &y, &w, value(&params[1]));
                let grads = [Tensor::new(gw, &Device::Cpu).unwrap(), scalar(gb)];
                let mut cx = StepCx {
                    params: &params,
                    grads: &grads,
                    loss: f64::NAN,
                    lr: asgd.lr,
                    t,
                    oracle: &mut NoOracle,
                };
                params = Rule::step(&asgd, &mut state, &mut cx).unwrap();
                let want = &case["state_after_steps"][t.to_string()];
                let ax = asgd.eval_params(&state).unwrap();
                let mut got = ax[0].to_vec1::<f64>().unwrap();
                got.push(value(&ax[1]));
                let mut expected = floats(&want["ax"]["w"]);
                expected.extend(floats(&want["ax"]["b"]));
                let close = |g: f64, w: f64| (g - w).abs() <= 1e-12 * w.abs().max(1e-3);
                for (g, w) in got.iter().zip(&expected) {
                    assert!(close(*g, *w), "{name} step {t}: ax {got:?} vs {expected:?}");
                }
                let (eta, mu) = (want["eta"].as_f64().unwrap(), want["mu"].as_f64().unwrap());
                assert!(close(state.eta.unwrap(), eta), "{name} step {t}: eta");
                assert!(
                    close(state.mu, mu),
                    "{name} step {t}: mu {} vs {mu}",
                    state.mu
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 60, "both lstsq asgd cases, 30 steps each");
    }
}
