//! Prodigy (prodigyopt 1.1.2), op by op: Adam whose step size d is estimated from how far the
//! params have moved against the gradients, a sum over the whole model, so it is one
//! [`Rule`] over all params rather than a per-param one.

use candle_core::{DType, Result, Tensor};

use super::lanes::Coef;
use super::spec::Prodigy;
use super::step::{Rule, StateValue, StepCx, add_scaled};

/// Prodigy's state: the package's group-wide estimate and its per-param sums.
#[derive(Debug, Clone)]
pub struct ProdigyState {
    /// The step-size estimate (d0 before the first step).
    pub d: f64,
    /// The largest estimate so far.
    pub d_max: f64,
    /// The last step's raw estimate (none before the first step).
    pub d_hat: Option<f64>,
    /// The running sum r of (d/d0) dlr <g, p0 - p> (the package's `d_numerator`).
    pub d_numerator: f64,
    /// Steps taken: a step whose sums are all zero does not count (the package returns early).
    pub k: u64,
    /// The params before the first step.
    pub p0: Vec<Tensor>,
    /// The running sums s of weighted gradients, whose L1 norm is the estimate's denominator.
    pub s: Vec<Tensor>,
    /// First moments (None with beta1 = 0, as the package allocates none).
    pub exp_avg: Option<Vec<Tensor>>,
    /// Second moments.
    pub exp_avg_sq: Vec<Tensor>,
}

/// A 0-d tensor's value in f64, whatever the run's dtype.
fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

impl Rule for Prodigy {
    type State = ProdigyState;
    /// prodigyopt's d is one estimate over every group: separate instances per group would
    /// estimate another d.
    const PARAM_GROUPS: bool = false;

    fn init(&self, params: &[Tensor]) -> Result<ProdigyState> {
        let zeros = || {
            params
                .iter()
                .map(Tensor::zeros_like)
                .collect::<Result<Vec<_>>>()
        };
        Ok(ProdigyState {
            d: self.d0,
            d_max: self.d0,
            d_hat: None,
            d_numerator: 0.0,
            k: 0,
            // Copies: the run's param tensors change in place.
            p0: params.iter().map(Tensor::copy).collect::<Result<_>>()?,
            s: zeros()?,
            exp_avg: (self.beta1 > 0.0).then(zeros).transpose()?,
            exp_avg_sq: zeros()?,
        })
    }

    fn step(&self, st: &mut ProdigyState, cx: &mut StepCx) -> Result<Vec<Tensor>> {
        let (beta1, beta2, d0, lr) = (self.beta1, self.beta2, self.d0, cx.lr);
        let beta3 = self.beta3.unwrap_or(beta2.sqrt());
        let k = st.k as f64;
        let bias_correction = if self.use_bias_correction {
            (1.0 - beta2.powf(k + 1.0)).sqrt() / (1.0 - beta1.powf(k + 1.0))
        } else {
            1.0
        };
        let mut d = st.d;
        let dlr = d * lr * bias_correction;
        let coupled = self.weight_decay != 0.0 && !self.decouple;
        let grads = cx
            .grads
            .iter()
            .zip(cx.params)
            .map(|(g, p)| match coupled {
                true => add_scaled(g, p, self.weight_decay),
                false => Ok(g.clone()),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut delta_numerator = 0.0;
        let mut d_denom = 0.0;
        // With lr 0 the package leaves the sums alone (and then takes no step).
        if lr > 0.0 {
            let s_coef = (d / d0) * if self.safeguard_warmup { d } else { dlr };
            for (i, (g, p)) in grads.iter().zip(cx.params).enumerate() {
                let dot = scalar(&(g * (&st.p0[i] - p)?)?.sum_all()?)?;
                delta_numerator += (d / d0) * dlr * dot;
                if let Some(m) = &mut st.exp_avg {
                    m[i] = (m[i].affine(beta1, 0.0)? + g.affine(d * (1.0 - beta1), 0.0)?)?;
                }
                let v = &st.exp_avg_sq[i];
                st.exp_avg_sq[i] =
                    (v.affine(beta2, 0.0)? + Coef::All(d * d * (1.0 - beta2)).scaled_square(g)?)?;
                st.s[i] = (st.s[i].affine(beta3, 0.0)? + g.affine(s_coef, 0.0)?)?;
                d_denom += scalar(&st.s[i].abs()?.sum_all()?)?;
            }
        }
        // No progress to estimate from: the package returns before the step (the moments
        // above are kept, its counters are not).
        if d_denom == 0.0 {
            return cx.params.iter().map(Tensor::copy).collect();
        }
        let d_numerator = st.d_numerator * beta3 + delta_numerator;
        let d_hat = self.d_coef * d_numerator / d_denom;
        if d == d0 {
            d = d.max(d_hat);
        }
        let d_max = st.d_max.max(d_hat);
        d = d_max.min(d * self.growth_rate.0);
        st.d_numerator = d_numerator;
        st.d = d;
        st.d_max = d_max;
        st.d_hat = Some(d_hat);
        st.k += 1;
        let mut out = Vec::with_capacity(cx.params.len());
        for (i, (g, p)) in grads.iter().zip(cx.params).enumerate() {
            // The new d in the denominator, the old one in dlr.
            let denom = st.exp_avg_sq[i].sqrt()?.affine(1.0, d * self.eps)?;
            let p = match self.decouple {
                true => add_scaled(p, p, -self.weight_decay * dlr)?,
                false => p.clone(),
            };
            let p = match &st.exp_avg {
                Some(m) => add_scaled(&p, &m[i].div(&denom)?, -dlr)?,
                None => add_scaled(&p, &g.div(&denom)?, -dlr * d)?,
            };
            out.push(p);
        }
        Ok(out)
    }

    fn state_values(&self, st: &ProdigyState) -> Vec<(&'static str, StateValue)> {
        let mut out = vec![
            ("d", StateValue::Scalar(st.d)),
            ("d_max", StateValue::Scalar(st.d_max)),
        ];
        out.extend(st.d_hat.map(|d| ("d_hat", StateValue::Scalar(d))));
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::optim::spec::refused_at;
    use candle_core::{Device, Tensor};

    use super::super::spec::{HyperValue, OptimizerSpec};
    use super::super::step::{NoOracle, OptimizerState, StateValue, StepCx, update};

    /// One update of `spec` from `p0` with gradient `g`: the new params and the state's d.
    fn step(spec: &str, p0: &[f64], g: &[f64]) -> (Vec<f64>, f64) {
        let spec = OptimizerSpec::parse(spec).unwrap();
        let p = vec![Tensor::new(p0, &Device::Cpu).unwrap()];
        let g = vec![Tensor::new(g, &Device::Cpu).unwrap()];
        let mut state = OptimizerState::single(&spec, &p).unwrap();
        let cx = &mut StepCx {
            params: &p,
            grads: &g,
            loss: 0.0,
            lr: spec.lr(),
            t: 0,
            oracle: &mut NoOracle,
        };
        let new = update(&mut state, cx).unwrap();
        let d = state
            .state_values(p.len())
            .into_iter()
            .find_map(|(k, v)| match v {
                StateValue::Scalar(d) if k == "d" => Some(d),
                _ => None,
            });
        (new[0].to_vec1::<f64>().unwrap(), d.unwrap())
    }

    #[test]
    fn defaults_are_the_packages() {
        use HyperValue::{Bool as B, Number as N, Word as W};
        let want = [
            ("lr", N(1.0)),
            ("beta1", N(0.9)),
            ("beta2", N(0.999)),
            ("beta3", W("none")),
            ("eps", N(1e-8)),
            ("weight_decay", N(0.0)),
            ("decouple", B(true)),
            ("use_bias_correction", B(false)),
            ("safeguard_warmup", B(false)),
            ("d0", N(1e-6)),
            ("d_coef", N(1.0)),
            ("growth_rate", N(f64::INFINITY)),
        ];
        assert_eq!(
            OptimizerSpec::parse("prodigy").unwrap().values(),
            want.to_vec()
        );
    }

    #[test]
    fn an_unlimited_growth_rate_and_a_derived_beta3_parse_and_print() {
        let s = OptimizerSpec::parse("prodigy(growth_rate=1.02, beta3=0.99)").unwrap();
        assert_eq!(s.to_string(), "prodigy(lr=1, beta3=0.99, growth_rate=1.02)");
        assert_eq!(OptimizerSpec::parse(&s.to_string()).unwrap(), s);
        let s = OptimizerSpec::parse("prodigy(growth_rate=inf, beta3=none)").unwrap();
        assert_eq!(s, OptimizerSpec::parse("prodigy").unwrap());
        let e = OptimizerSpec::parse("prodigy(growth_rate=nan)").unwrap_err();
        assert_eq!(e.message, "`growth_rate` must be a number or inf");
    }

    #[test]
    fn values_the_package_refuses_are_refused() {
        // prodigyopt's ValueErrors: lr, eps and d0 must be positive, the betas in [0, 1).
        let refused = [
            ("prodigy(lr=0)", "lr"),
            ("prodigy(eps=0)", "eps"),
            ("prodigy(d0=0)", "d0"),
            ("prodigy(beta1=1)", "beta1"),
            ("prodigy(beta2=-0.1)", "beta2"),
        ];
        for (spec, key) in refused {
            refused_at(spec, key);
        }
        assert!(OptimizerSpec::parse("prodigy(beta1=0, weight_decay=-1, d_coef=-1)").is_ok());
    }

    #[test]
    fn the_first_step_without_momentum_is_a_signed_step_of_d0() {
        // p0 = p, so <g, p0 - p> = 0 and d stays d0; v = d0^2 (1 - beta2) g^2, so
        // p1 = p0 - lr d0 g / (|g| sqrt(1 - beta2) + eps).
        let (p0, g) = ([1.0, -1.0], [0.3, -2.0]);
        let (lr, d0, eps, b2): (f64, f64, f64, f64) = (0.5, 1e-3, 1e-8, 0.99);
        let spec = format!("prodigy(lr={lr}, beta1=0, beta2={b2}, d0={d0}, eps={eps})");
        let (p1, d) = step(&spec, &p0, &g);
        assert_eq!(d, d0);
        for i in 0..2 {
            let want = p0[i] - lr * d0 * g[i] / (g[i].abs() * (1.0 - b2).sqrt() + eps);
            assert!((p1[i] - want).abs() <= 1e-15, "{p1:?}");
        }
    }

    #[test]
    fn a_zero_gradient_takes_no_step() {
        // sum |s| = 0: the package returns before its step and keeps d.
        let (p1, d) = step("prodigy(d0=1e-3)", &[1.0, 2.0], &[0.0, 0.0]);
        assert_eq!((p1, d), (vec![1.0, 2.0], 1e-3));
    }
}
