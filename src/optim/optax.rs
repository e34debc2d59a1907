//! optax's AdaBelief, LAMB, LARS, NovoGrad, SM3 and optax.contrib's Sophia, written after
//! optax's gradient transformations (tests/data/REFERENCE_README.md gives each formula) so
//! trajectories match optax in float64. State is named as optax names it (`mu`, `nu`,
//! `trace`); updates are added to the params as optax's `apply_updates` does.

use candle_core::{DType, Result, Tensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::spec::{AdaBelief, Lamb, Lars, NovoGrad, Sm3, Sophia};
use super::step::{Oracle, Rule, StepCx, UpdateRule, add_scaled};

words! {
    /// Where Sophia's Hessian diagonal comes from.
    HessianDiag {
        /// The exact diagonal at the current params (one more backward pass per param entry).
        Exact = "exact",
        /// Hutchinson's unbiased estimate z * (H z) with a seeded Rademacher z (one
        /// Hessian-vector product): optax's default estimator.
        Hutchinson = "hutchinson",
    }
}

/// optax's `update_moment`: `(1 - decay) x + decay m`, with m = 0 before the first update.
fn moment(x: &Tensor, m: Option<&Tensor>, decay: f64) -> Result<Tensor> {
    let x = x.affine(1.0 - decay, 0.0)?;
    match m {
        None => Ok(x),
        Some(m) => x + m.affine(decay, 0.0)?,
    }
}

/// optax's `bias_correction`: `m / (1 - decay^t)`.
fn debias(m: &Tensor, decay: f64, t: u64) -> Result<Tensor> {
    m.affine(1.0 / (1.0 - decay.powf(t as f64)), 0.0)
}

/// The L2 norm of a whole tensor, in f64.
fn norm(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f64>()
}

/// optax's `scale_by_trust_ratio`: `coefficient ||p|| / (||u|| + eps)`, or 1 when either norm
/// is 0 (a param at 0, such as a fresh bias, moves by the plain step).
fn trust_ratio(p: &Tensor, u: &Tensor, coefficient: f64, eps: f64) -> Result<f64> {
    let (pn, un) = (norm(p)?, norm(u)?);
    Ok(if pn == 0.0 || un == 0.0 {
        1.0
    } else {
        coefficient * pn / (un + eps)
    })
}

/// AdaBelief's state (optax's `ScaleByBeliefState`).
#[derive(Debug, Clone, Default)]
pub struct AdaBeliefState {
    /// The momentum.
    pub mu: Option<Tensor>,
    /// The running average of (g - mu)^2, plus eps_root each step.
    pub nu: Option<Tensor>,
}

impl UpdateRule for AdaBelief {
    type State = AdaBeliefState;

    fn step(
        &self,
        s: &mut AdaBeliefState,
        p: &Tensor,
        g: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor> {
        let (b1, b2) = (self.beta1, self.beta2);
        let mu = moment(g, s.mu.as_ref(), b1)?;
        let deviation = (g - &mu)?.sqr()?;
        let nu = moment(&deviation, s.nu.as_ref(), b2)?.affine(1.0, self.eps_root)?;
        let mu_hat = if self.nesterov {
            (debias(&mu, b1, t + 1)?.affine(b1, 0.0)? + debias(g, b1, t)?.affine(1.0 - b1, 0.0)?)?
        } else {
            debias(&mu, b1, t)?
        };
        let denom = debias(&nu, b2, t)?.sqrt()?.affine(1.0, self.eps)?;
        let new = add_scaled(p, &mu_hat.div(&denom)?, -lr)?;
        s.mu = Some(mu);
        s.nu = Some(nu);
        Ok(new)
    }
}

/// LAMB's state (optax's `ScaleByAdamState`).
#[derive(Debug, Clone, Default)]
pub struct LambState {
    /// First moment.
    pub mu: Option<Tensor>,
    /// Second moment.
    pub nu: Option<Tensor>,
}

impl UpdateRule for Lamb {
    type State = LambState;

    fn step(&self, s: &mut LambState, p: &Tensor, g: &Tensor, lr: f64, t: u64) -> Result<Tensor> {
        let (b1, b2) = (self.beta1, self.beta2);
        let mu = moment(g, s.mu.as_ref(), b1)?;
        let nu = moment(&g.sqr()?, s.nu.as_ref(), b2)?;
        let denom = debias(&nu, b2, t)?
            .affine(1.0, self.eps_root)?
            .sqrt()?
            .affine(1.0, self.eps)?;
        let u = add_scaled(&debias(&mu, b1, t)?.div(&denom)?, p, self.weight_decay)?;
        let u = u.affine(trust_ratio(p, &u, 1.0, 0.0)?, 0.0)?;
        let new = add_scaled(p, &u, -lr)?;
        s.mu = Some(mu);
        s.nu = Some(nu);
        Ok(new)
    }
}

/// LARS's state (optax's `TraceState`).
#[derive(Debug, Clone, Default)]
pub struct LarsState {
    /// The momentum trace of updates, taken after the learning rate (so it holds the signed
    /// steps added to the param).
    pub trace: Option<Tensor>,
}

impl UpdateRule for Lars {
    type State = LarsState;

    fn step(&self, s: &mut LarsState, p: &Tensor, g: &Tensor, lr: f64, _t: u64) -> Result<Tensor> {
        let u = add_scaled(g, p, self.weight_decay)?;
        let ratio = trust_ratio(p, &u, self.trust_coefficient, self.eps)?;
        let u = u.affine(ratio, 0.0)?.affine(-lr, 0.0)?;
        let trace = match &s.trace {
            None => u.clone(),
            Some(b) => (&u + b.affine(self.momentum, 0.0)?)?,
        };
        let step = if self.nesterov {
            (&u + trace.affine(self.momentum, 0.0)?)?
        } else {
            trace.clone()
        };
        s.trace = Some(trace);
        p + step
    }
}

/// NovoGrad's state (optax's `ScaleByNovogradState`).
#[derive(Debug, Clone, Default)]
pub struct NovoGradState {
    /// The momentum of normalised gradients (a sum: no `1 - beta1`).
    pub mu: Option<Tensor>,
    /// The running average of ||g||^2: one number per param tensor.
    pub nu: Option<f64>,
}

impl UpdateRule for NovoGrad {
    type State = NovoGradState;

    fn step(
        &self,
        s: &mut NovoGradState,
        p: &Tensor,
        g: &Tensor,
        lr: f64,
        _t: u64,
    ) -> Result<Tensor> {
        let sq = norm(g)?.powi(2);
        let nu = match s.nu {
            None => sq,
            Some(nu) => (1.0 - self.beta2) * sq + self.beta2 * nu,
        };
        let u = g.affine(1.0 / ((nu + self.eps_root).sqrt() + self.eps), 0.0)?;
        let u = add_scaled(&u, p, self.weight_decay)?;
        let mu = match &s.mu {
            None => u,
            Some(m) => (m.affine(self.beta1, 0.0)? + u)?,
        };
        let new = add_scaled(p, &mu, -lr)?;
        s.mu = Some(mu);
        s.nu = Some(nu);
        Ok(new)
    }
}

/// SM3's state (optax's `ScaleBySM3State`), per param.
#[derive(Debug, Clone)]
pub struct Sm3State {
    /// One accumulator per dimension of each param: for a matrix, the largest squared-gradient
    /// sum of each row and of each column; for a vector, Adagrad's sum.
    pub mu: Vec<Vec<Tensor>>,
    /// The momentum of the normalised gradients.
    pub nu: Vec<Tensor>,
}

/// Added to SM3's accumulator inside the root (optax's fixed `eps`).
const SM3_EPS: f64 = 1e-8;

impl Sm3 {
    /// The accumulator entry of every element, `g^2 + min` over its row and column
    /// accumulators (for a vector, its own sum), and the new accumulators from it.
    fn accumulate(g: &Tensor, mu: &[Tensor]) -> Result<(Tensor, Vec<Tensor>)> {
        let dims = g.dims();
        if let [acc] = mu {
            let nu = (g.sqr()? + acc)?;
            return Ok((nu.clone(), vec![nu]));
        }
        let mut least: Option<Tensor> = None;
        for (i, acc) in mu.iter().enumerate() {
            let mut shape = vec![1; dims.len()];
            shape[i] = dims[i];
            let spread = acc.reshape(shape)?.broadcast_as(dims)?;
            least = Some(match least {
                None => spread,
                Some(l) => l.minimum(&spread)?,
            });
        }
        let nu = match least {
            Some(l) => (g.sqr()? + l)?,
            None => g.sqr()?,
        };
        let mut new = Vec::with_capacity(dims.len());
        for (i, &n) in dims.iter().enumerate() {
            let mut m = nu.clone();
            for d in (0..dims.len()).rev().filter(|&d| d != i) {
                m = m.max_keepdim(d)?;
            }
            new.push(m.reshape(n)?);
        }
        Ok((nu, new))
    }
}

/// Why sm3 cannot step `param` (named, or `param 1 of 3`), a scalar.
pub fn sm3_refuses_a_scalar(param: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "sm3 keeps one accumulator per dimension of a param, so it cannot step {param}, a \
         scalar (optax.sm3 fails on scalars too): make it a 1-element vector or pick another \
         optimizer"
    ))
}

impl Rule for Sm3 {
    type State = Sm3State;

    /// Refuses 0-d params: SM3 keeps one accumulator per dimension, and optax.sm3 fails on
    /// them.
    fn init(&self, params: &[Tensor]) -> Result<Sm3State> {
        if let Some(i) = params.iter().position(|p| p.rank() == 0) {
            return Err(sm3_refuses_a_scalar(&format!(
                "param {} of {}",
                i + 1,
                params.len()
            )));
        }
        let mu = params
            .iter()
            .map(|p| {
                p.dims()
                    .iter()
                    .map(|&n| Tensor::zeros(n, p.dtype(), p.device()))
                    .collect()
            })
            .collect::<Result<_>>()?;
        let nu = params
            .iter()
            .map(Tensor::zeros_like)
            .collect::<Result<_>>()?;
        Ok(Sm3State { mu, nu })
    }

    fn step(&self, s: &mut Sm3State, cx: &mut StepCx) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(cx.params.len());
        for (i, (p, g)) in cx.params.iter().zip(cx.grads).enumerate() {
            let (acc, mu) = Self::accumulate(g, &s.mu[i])?;
            let inv = acc.affine(1.0, SM3_EPS)?.sqrt()?.recip()?;
            let inv = acc.gt(0.0)?.where_cond(&inv, &inv.zeros_like()?)?;
            let u = (g * inv)?;
            let nu = moment(&u, Some(&s.nu[i]), self.momentum)?;
            out.push(add_scaled(p, &nu, -cx.lr)?);
            s.mu[i] = mu;
            s.nu[i] = nu;
        }
        Ok(out)
    }
}

/// Sophia's state (optax's `SophiaState`).
#[derive(Debug, Clone)]
pub struct SophiaState {
    /// The momentum, per param.
    pub mu: Vec<Tensor>,
    /// The running average of the Hessian diagonal, per param (0 until the first update).
    pub nu: Vec<Tensor>,
}

/// A Rademacher vector shaped as `params` (entries +-1, equally likely), the same for the same
/// `seed` and `t` so a rewound run redraws it.
pub fn rademacher(params: &[Tensor], seed: u64, t: u64) -> Result<Vec<Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(t);
    params
        .iter()
        .map(|p| {
            let signs: Vec<f64> = (0..p.elem_count())
                .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
                .collect();
            Tensor::from_vec(signs, p.dims(), p.device())?.to_dtype(p.dtype())
        })
        .collect()
}

/// Hutchinson's estimate of the Hessian diagonal at `params`: z * (H z) for the Rademacher z
/// of `seed` and step `t`. Unbiased, since E[z_i z_j] is 1 for i = j and 0 otherwise; entry i's
/// variance is the sum of H_ij^2 over j != i.
pub fn hutchinson(
    oracle: &mut dyn Oracle,
    params: &[Tensor],
    seed: u64,
    t: u64,
) -> Result<Vec<Tensor>> {
    let z = rademacher(params, seed, t)?;
    let hz = oracle.hvp(params, &z)?;
    z.iter().zip(&hz).map(|(z, hz)| z * hz).collect()
}

/// The most param entries Sophia takes the exact Hessian diagonal of. It costs one backward
/// pass per entry (about a second for 4,096 entries of a small MLP), so beyond this every
/// Hessian update would stall the run for minutes.
pub const EXACT_DIAG_MAX_ENTRIES: usize = 4096;

impl Rule for Sophia {
    type State = SophiaState;

    /// Refuses the exact diagonal of models beyond [`EXACT_DIAG_MAX_ENTRIES`].
    fn init(&self, params: &[Tensor]) -> Result<SophiaState> {
        let entries: usize = params.iter().map(Tensor::elem_count).sum();
        if self.hessian_diag == HessianDiag::Exact && entries > EXACT_DIAG_MAX_ENTRIES {
            return Err(candle_core::Error::Msg(format!(
                "sophia's exact Hessian diagonal takes one backward pass per param entry, and \
                 this model has {entries} (at most {EXACT_DIAG_MAX_ENTRIES}): use \
                 sophia(hessian_diag=hutchinson), one Hessian-vector product per update"
            )));
        }
        let zeros = || params.iter().map(Tensor::zeros_like).collect::<Result<_>>();
        Ok(SophiaState {
            mu: zeros()?,
            nu: zeros()?,
        })
    }

    /// The step divides by the Hessian average as it was before this step (0 at t = 1, so
    /// the first step is lr clip_threshold sign(m)); the average is then updated at steps
    /// 1, 1 + update_interval, ... from the diagonal at the params before the update.
    fn step(&self, s: &mut SophiaState, cx: &mut StepCx) -> Result<Vec<Tensor>> {
        let mu: Vec<Tensor> = cx
            .grads
            .iter()
            .zip(&s.mu)
            .map(|(g, m)| moment(g, Some(m), self.beta1))
            .collect::<Result<_>>()?;
        let mut steps = Vec::with_capacity(mu.len());
        for (m, h) in mu.iter().zip(&s.nu) {
            let floor = h.affine(self.gamma, 0.0)?.maximum(self.eps)?;
            let u = debias(m, self.beta1, cx.t)?.div(&floor)?;
            steps.push(match self.clip_threshold {
                Some(c) => u.clamp(-c, c)?,
                None => u,
            });
        }
        if (cx.t - 1).is_multiple_of(self.update_interval) {
            let diag = match self.hessian_diag {
                HessianDiag::Exact => cx.oracle.hessian_diag(cx.params)?,
                HessianDiag::Hutchinson => hutchinson(cx.oracle, cx.params, self.seed, cx.t)?,
            };
            s.nu = diag
                .iter()
                .zip(&s.nu)
                .map(|(d, h)| moment(d, Some(h), self.beta2))
                .collect::<Result<_>>()?;
        }
        s.mu = mu;
        cx.params
            .iter()
            .zip(steps)
            .map(|(p, u)| add_scaled(p, &add_scaled(&u, p, self.weight_decay)?, -cx.lr))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::optim::spec::refused_at;
    use candle_core::Device;

    use super::*;
    use crate::optim::spec::{HyperValue, OptimizerSpec, RawValue, check_setting};
    use crate::optim::step::{OptimizerState, update};

    #[test]
    fn registry_defaults_are_optaxs() {
        use HyperValue::{Bool as B, Number as N, Word as W};
        // optax 0.2.8's signatures, b1/b2 as beta1/beta2; optax has no default learning rate
        // (see each `lr` doc for where these come from).
        let optax: [(&str, &[(&str, HyperValue)]); 6] = [
            (
                "adabelief",
                &[
                    ("lr", N(1e-3)),
                    ("beta1", N(0.9)),
                    ("beta2", N(0.999)),
                    ("eps", N(1e-16)),
                    ("eps_root", N(1e-16)),
                    ("nesterov", B(false)),
                ],
            ),
            (
                "lamb",
                &[
                    ("lr", N(1e-3)),
                    ("beta1", N(0.9)),
                    ("beta2", N(0.999)),
                    ("eps", N(1e-6)),
                    ("eps_root", N(0.0)),
                    ("weight_decay", N(0.0)),
                ],
            ),
            (
                "lars",
                &[
                    ("lr", N(1.0)),
                    ("weight_decay", N(0.0)),
                    ("trust_coefficient", N(0.001)),
                    ("eps", N(0.0)),
                    ("momentum", N(0.9)),
                    ("nesterov", B(false)),
                ],
            ),
            (
                "novograd",
                &[
                    ("lr", N(1e-3)),
                    ("beta1", N(0.9)),
                    ("beta2", N(0.25)),
                    ("eps", N(1e-6)),
                    ("eps_root", N(0.0)),
                    ("weight_decay", N(0.0)),
                ],
            ),
            ("sm3", &[("lr", N(0.1)), ("momentum", N(0.9))]),
            (
                "sophia",
                &[
                    ("lr", N(1e-4)),
                    ("beta1", N(0.965)),
                    ("beta2", N(0.99)),
                    ("eps", N(1e-8)),
                    ("weight_decay", N(1e-4)),
                    ("gamma", N(0.01)),
                    ("clip_threshold", N(1.0)),
                    ("update_interval", N(10.0)),
                    ("hessian_diag", W("exact")),
                    ("seed", N(0.0)),
                ],
            ),
        ];
        for (name, defaults) in &optax {
            let spec = OptimizerSpec::parse(name).unwrap();
            assert_eq!(spec.values(), defaults.to_vec(), "{name}");
            assert_eq!(spec.group().title(), "optax", "{name}");
        }
    }

    #[test]
    fn values_optax_cannot_step_with_are_refused() {
        // (spec, refused key): bias corrections divide by 1 - beta^t, a Hessian update every
        // 0 steps never comes.
        let refused = [
            ("adabelief(beta1=1)", "beta1"),
            ("lamb(beta2=1)", "beta2"),
            ("novograd(beta2=1.5)", "beta2"),
            ("sm3(momentum=-0.1)", "momentum"),
            ("lars(trust_coefficient=-1)", "trust_coefficient"),
            ("sophia(update_interval=0)", "update_interval"),
            ("sophia(gamma=-0.01)", "gamma"),
            ("sophia(clip_threshold=-1)", "clip_threshold"),
        ];
        for (spec, key) in refused {
            let e = refused_at(spec, key);
            assert!(
                e.help.unwrap().starts_with("optax does not check it"),
                "{spec}"
            );
        }
        let e = OptimizerSpec::parse("sophia(hessian_diag=approx)").unwrap_err();
        assert_eq!(e.message, "`hessian_diag` must be one of exact, hutchinson");
        let accepted = [
            "novograd(beta1=1, beta2=0)",
            "sophia(clip_threshold=none, update_interval=1, hessian_diag=hutchinson, seed=7)",
        ];
        for spec in accepted {
            assert!(OptimizerSpec::parse(spec).is_ok(), "{spec}");
        }
    }

    #[test]
    fn sophias_gamma_is_its_own_and_other_optimizers_gamma_is_the_schedules() {
        let sophia = Some(crate::optim::spec::OptimizerKind::Sophia);
        let adam = Some(crate::optim::spec::OptimizerKind::Adam);
        // As a run setting gamma takes any non-negative number; as Sophia's it is checked as
        // Sophia's (and a word is refused by its type, not as a schedule setting).
        assert!(check_setting(sophia, "gamma", RawValue::Number(0.05)).is_ok());
        let e = check_setting(sophia, "gamma", RawValue::Text("x")).unwrap_err();
        assert_eq!(e.message, "`gamma` must be a finite number");
        assert!(check_setting(adam, "gamma", RawValue::Number(0.5)).is_ok());
        assert!(check_setting(adam, "lr_gamma", RawValue::Number(0.5)).is_ok());
        let OptimizerSpec::Sophia(s) = OptimizerSpec::parse("sophia(gamma=0.05)").unwrap() else {
            panic!("not sophia")
        };
        assert_eq!(s.gamma, 0.05);
        let e = OptimizerSpec::parse("adam(gamma=0.5)").unwrap_err();
        assert_eq!(
            e.message,
            "`gamma` is a run setting, not a hyper-parameter of `adam`"
        );
    }

    #[test]
    fn in_an_optimizer_table_gamma_is_sophias_and_lr_gamma_the_schedules() {
        use crate::optim::schedule::Schedule;
        use crate::optim::settings::RunSettings;
        let table = |name, extra: &[(&'static str, RawValue<'static>)]| {
            let mut t = vec![
                ("name", RawValue::Text(name)),
                ("schedule", RawValue::Text("exponential")),
            ];
            t.extend_from_slice(extra);
            RunSettings::from_table(&t)
        };
        let gamma = |s: &RunSettings| match s.schedule.schedule {
            Schedule::Exponential { gamma } => gamma,
            ref other => panic!("{other:?}"),
        };
        let n = RawValue::Number;
        let s = table("sophia", &[("gamma", n(0.05)), ("lr_gamma", n(0.9))]);
        assert_eq!(s.optimizer.get("gamma"), Some(HyperValue::Number(0.05)));
        assert_eq!(gamma(&s), 0.9);
        // Sophia's gamma alone leaves the schedule at its default.
        assert_eq!(gamma(&table("sophia", &[("gamma", n(0.05))])), 0.99);
        assert_eq!(gamma(&table("adam", &[("gamma", n(0.5))])), 0.5);
        assert_eq!(gamma(&table("adam", &[("lr_gamma", n(0.5))])), 0.5);
    }

    /// The loss 0.5 p^T A p of one param: Hessian A.
    struct Quadratic {
        a: Tensor,
        /// The params each Hessian was asked at.
        asked: Vec<Vec<f64>>,
    }

    impl Oracle for Quadratic {
        fn loss_and_grads(&mut self, p: &[Tensor]) -> Result<(f64, Vec<Tensor>)> {
            let ap = self.a.matmul(&p[0].unsqueeze(1)?)?.squeeze(1)?;
            let loss = (&p[0] * &ap)?.sum_all()?.to_scalar::<f64>()? / 2.0;
            Ok((loss, vec![ap]))
        }
        fn hessian_diag(&mut self, p: &[Tensor]) -> Result<Vec<Tensor>> {
            self.asked.push(p[0].to_vec1()?);
            let n = self.a.dim(0)?;
            let eye = Tensor::eye(n, DType::F64, &Device::Cpu)?;
            Ok(vec![(&self.a * eye)?.sum(1)?])
        }
        fn hvp(&mut self, _p: &[Tensor], v: &[Tensor]) -> Result<Vec<Tensor>> {
            Ok(vec![self.a.matmul(&v[0].unsqueeze(1)?)?.squeeze(1)?])
        }
    }

    fn quadratic() -> Quadratic {
        let a = [[2.0, 1.0, 0.0], [1.0, 4.0, -1.5], [0.0, -1.5, 3.0]];
        Quadratic {
            a: Tensor::new(&a, &Device::Cpu).unwrap(),
            asked: Vec::new(),
        }
    }

    /// Steps `spec` `n` times on the quadratic from p = [1, -1, 0.5]; the params after each.
    fn steps(spec: &str, oracle: &mut Quadratic, n: usize) -> Vec<Vec<f64>> {
        let spec = OptimizerSpec::parse(spec).unwrap();
        let mut p = Tensor::new(&[1.0, -1.0, 0.5], &Device::Cpu).unwrap();
        let mut state = OptimizerState::single(&spec, std::slice::from_ref(&p)).unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            let (loss, grads) = oracle.loss_and_grads(std::slice::from_ref(&p)).unwrap();
            let params = [p.clone()];
            let mut cx = StepCx {
                params: &params,
                grads: &grads,
                loss,
                lr: spec.lr(),
                t: 0,
                oracle,
            };
            p = update(&mut state, &mut cx).unwrap().remove(0);
            out.push(p.to_vec1().unwrap());
        }
        out
    }

    #[test]
    fn sophias_first_step_is_a_clipped_sign_step() {
        // h = 0 at t = 1, so m_hat / max(gamma h, eps) = g / 1e-8 clips to +-clip_threshold:
        // p1 = p0 - lr (clip sign(g) + wd p0). g = A p0 = [1, -3.75, 3].
        let mut q = quadratic();
        let p1 = &steps(
            "sophia(lr=0.1, weight_decay=0.01, clip_threshold=0.5)",
            &mut q,
            1,
        )[0];
        let want = [
            1.0 - 0.1 * (0.5 + 0.01),
            -1.0 - 0.1 * (-0.5 - 0.01),
            0.5 - 0.1 * (0.5 + 0.005),
        ];
        for (g, w) in p1.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{p1:?} vs {want:?}");
        }
    }

    #[test]
    fn sophia_updates_its_hessian_at_step_1_and_every_update_interval_after() {
        let mut q = quadratic();
        let params = steps("sophia(lr=0.01, update_interval=3)", &mut q, 8);
        // Steps 1, 4 and 7, each at the params before that step's update.
        let before = |t: usize| match t {
            1 => vec![1.0, -1.0, 0.5],
            t => params[t - 2].clone(),
        };
        assert_eq!(q.asked, vec![before(1), before(4), before(7)]);
    }

    #[test]
    fn hutchinson_is_the_exact_diagonal_on_average() {
        // E[z * Az] = diag(A) = [2, 4, 3]; entry i's variance is sum over j != i of A_ij^2:
        // [1, 3.25, 2.25]. The mean of N draws is within 4 standard errors.
        let mut q = quadratic();
        let p = [Tensor::new(&[1.0, -1.0, 0.5], &Device::Cpu).unwrap()];
        let n = 4000;
        let mut sum = [0.0; 3];
        for t in 1..=n {
            let h: Vec<f64> = hutchinson(&mut q, &p, 7, t).unwrap()[0].to_vec1().unwrap();
            for (s, h) in sum.iter_mut().zip(h) {
                *s += h;
            }
        }
        for ((s, want), var) in sum.iter().zip([2.0, 4.0, 3.0]).zip([1.0, 3.25, 2.25]) {
            let se = (var / n as f64).sqrt();
            assert!((s / n as f64 - want).abs() < 4.0 * se, "{sum:?}");
        }
        // Each draw is exact when A is diagonal: z_i^2 = 1.
        let mut d = Quadratic {
            a: Tensor::new(&[[2.0, 0.0], [0.0, 5.0]], &Device::Cpu).unwrap(),
            asked: Vec::new(),
        };
        let p = [Tensor::new(&[1.0, 1.0], &Device::Cpu).unwrap()];
        let h: Vec<f64> = hutchinson(&mut d, &p, 0, 1).unwrap()[0].to_vec1().unwrap();
        assert_eq!(h, [2.0, 5.0]);
    }

    #[test]
    fn rademacher_vectors_are_signs_redrawn_the_same_for_a_seed_and_step() {
        let p = [Tensor::zeros((4, 5), DType::F32, &Device::Cpu).unwrap()];
        let draw = |seed, t| -> Vec<f32> {
            let z = rademacher(&p, seed, t).unwrap().remove(0);
            assert_eq!(z.dims(), [4, 5]);
            assert_eq!(z.dtype(), DType::F32);
            z.flatten_all().unwrap().to_vec1().unwrap()
        };
        let z = draw(3, 1);
        assert!(z.iter().all(|x| x.abs() == 1.0), "{z:?}");
        assert_eq!(z, draw(3, 1));
        assert_ne!(z, draw(3, 2));
        assert_ne!(z, draw(4, 1));
    }

    #[test]
    fn sophia_refuses_the_exact_diagonal_of_a_large_model() {
        let params = [Tensor::zeros((64, 65), DType::F32, &Device::Cpu).unwrap()];
        let exact = OptimizerSpec::parse("sophia").unwrap();
        let e = OptimizerState::single(&exact, &params).unwrap_err();
        assert!(
            e.to_string().contains(
                "this model has 4160 (at most 4096): use sophia(hessian_diag=hutchinson)"
            ),
            "{e}"
        );
        let estimate = OptimizerSpec::parse("sophia(hessian_diag=hutchinson)").unwrap();
        assert!(OptimizerState::single(&estimate, &params).is_ok());
        assert!(OptimizerState::single(&exact, &[params[0].narrow(0, 0, 63).unwrap()]).is_ok());
    }

    #[test]
    fn sm3_refuses_scalar_params() {
        let spec = OptimizerSpec::parse("sm3").unwrap();
        let params = [
            Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap(),
            Tensor::new(1.0f64, &Device::Cpu).unwrap(),
        ];
        let e = OptimizerState::single(&spec, &params).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("sm3 keeps one accumulator per dimension of a param, so it cannot step param 2 of 2, a scalar"),
            "{e}"
        );
        assert!(OptimizerState::single(&spec, &params[..1]).is_ok());
    }

    #[test]
    fn trust_ratios_are_1_for_a_param_at_zero() {
        // p0 = 0, g = [3, -4]: LAMB's first step is lr g / (|g| + eps) per entry, LARS's lr g.
        let p = Tensor::zeros(2, DType::F64, &Device::Cpu).unwrap();
        let g = Tensor::new(&[3.0, -4.0], &Device::Cpu).unwrap();
        let lamb = OptimizerSpec::parse("lamb(lr=0.1, eps=0)").unwrap();
        let lars = OptimizerSpec::parse("lars(lr=0.1)").unwrap();
        for (spec, want) in [(lamb, [-0.1, 0.1]), (lars, [-0.3, 0.4])] {
            let mut state = OptimizerState::single(&spec, std::slice::from_ref(&p)).unwrap();
            let mut q = quadratic();
            let params = [p.clone()];
            let grads = [g.clone()];
            let mut cx = StepCx {
                params: &params,
                grads: &grads,
                loss: 0.0,
                lr: 0.1,
                t: 0,
                oracle: &mut q,
            };
            let new: Vec<f64> = update(&mut state, &mut cx).unwrap()[0].to_vec1().unwrap();
            let off = new
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(off < 1e-15, "{spec}: {new:?} vs {want:?}");
        }
    }
}
