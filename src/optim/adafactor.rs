//! Adafactor, a second moment kept as row and column factors: torch.optim.Adafactor (factors
//! over the last two dims of every param with 2 or more, relative step min(lr, 1/sqrt(t))) and
//! optax.adafactor (factors over the two largest dims when both are big enough, an ordinary
//! learning rate); two different algorithms under one name.

use candle_core::{DType, Result, Tensor};

use super::spec::{Adafactor, OptaxAdafactor};
use super::step::{UpdateRule, add_scaled, lerp};

/// torch Adafactor's state for one param.
#[derive(Debug, Clone, Default)]
pub struct AdafactorState {
    /// The row factor: the average over the last dim of g² (params with 2 or more dims).
    pub row_var: Option<Tensor>,
    /// The column factor: the average over the second-last dim of g².
    pub col_var: Option<Tensor>,
    /// The average of g² (params with fewer than 2 dims).
    pub variance: Option<Tensor>,
}

/// `torch.finfo(dtype).eps`: torch Adafactor's eps1 when it is not given.
fn machine_eps(dtype: DType) -> Result<f64> {
    match dtype {
        DType::F64 => Ok(f64::EPSILON),
        DType::F32 => Ok(f64::from(f32::EPSILON)),
        DType::F16 => Ok(2f64.powi(-10)),
        DType::BF16 => Ok(2f64.powi(-7)),
        other => Err(candle_core::Error::Msg(format!(
            "adafactor needs floating-point params, not {other:?}"
        ))),
    }
}

/// The root mean square of all entries, as a host number.
fn rms(x: &Tensor) -> Result<f64> {
    let norm = x.sqr()?.sum_all()?.sqrt()?.to_dtype(DType::F64)?;
    Ok(norm.to_scalar::<f64>()? / (x.elem_count() as f64).sqrt())
}

/// `lerp(old, new, w)`, from zeros when there is no `old`.
fn average(old: Option<&Tensor>, new: &Tensor, w: f64) -> Result<Tensor> {
    match old {
        None => new.affine(w, 0.0),
        Some(old) => lerp(old, new, w),
    }
}

impl UpdateRule for Adafactor {
    type State = AdafactorState;

    /// torch's `_single_tensor_adafactor`.
    fn step(
        &self,
        s: &mut AdafactorState,
        p: &Tensor,
        g: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor> {
        let eps1 = match self.eps1 {
            Some(e) => e,
            None => machine_eps(p.dtype())?,
        };
        let t = t as f64;
        let w = t.powf(self.beta2_decay);
        let rho = lr.min(1.0 / t.sqrt());
        let alpha = self.eps2.max(rms(p)?) * rho;
        let p = if self.weight_decay != 0.0 {
            p.affine(1.0 - lr * self.weight_decay, 0.0)?
        } else {
            p.clone()
        };
        let g2 = g.sqr()?;
        let estimate = if g.rank() > 1 {
            let last = g.rank() - 1;
            let row = average(s.row_var.as_ref(), &g2.mean_keepdim(last)?, w)?;
            let col = average(s.col_var.as_ref(), &g2.mean_keepdim(last - 1)?, w)?;
            let row_mean = row.mean_keepdim(last - 1)?.maximum(eps1)?;
            let estimate = row.broadcast_mul(&col)?.broadcast_div(&row_mean)?;
            s.row_var = Some(row);
            s.col_var = Some(col);
            estimate
        } else {
            let v = average(s.variance.as_ref(), &g2, w)?;
            s.variance = Some(v.clone());
            v
        };
        let u = estimate.maximum(eps1 * eps1)?.sqrt()?.recip()?.mul(g)?;
        let denom = (rms(&u)? / self.d).max(1.0);
        add_scaled(&p, &u, -alpha / denom)
    }
}

/// optax Adafactor's state for one param (optax's `v_row`, `v_col`, `v` and momentum `ema`).
#[derive(Debug, Clone, Default)]
pub struct OptaxAdafactorState {
    /// The row factor: the average of g² + eps over the largest dim (factored params).
    pub v_row: Option<Tensor>,
    /// The column factor: the average of g² + eps over the second-largest dim.
    pub v_col: Option<Tensor>,
    /// The average of g² + eps (params that are not factored).
    pub v: Option<Tensor>,
    /// The momentum of the updates (only with `momentum`).
    pub ema: Option<Tensor>,
}

/// optax's `_factored_dims`: the second-largest and the largest dim (the first of equal ones
/// counts as smaller), when both are at least `min_size`.
fn factored_dims(dims: &[usize], factored: bool, min_size: u64) -> Option<(usize, usize)> {
    if !factored || dims.len() < 2 {
        return None;
    }
    let mut order: Vec<usize> = (0..dims.len()).collect();
    order.sort_by_key(|&i| dims[i]);
    let (second, largest) = (order[dims.len() - 2], order[dims.len() - 1]);
    (dims[second] as u64 >= min_size).then_some((second, largest))
}

/// `decay v + (1 - decay) new`, from zeros.
fn decayed(v: Option<&Tensor>, new: &Tensor, decay: f64) -> Result<Tensor> {
    let fresh = new.affine(1.0 - decay, 0.0)?;
    match v {
        None => Ok(fresh),
        Some(v) => v.affine(decay, 0.0)? + fresh,
    }
}

impl UpdateRule for OptaxAdafactor {
    type State = OptaxAdafactorState;

    /// optax.adafactor's chain: factored RMS scaling, block-RMS clipping, the lr, the param
    /// scale, momentum, weight decay.
    fn step(
        &self,
        s: &mut OptaxAdafactorState,
        p: &Tensor,
        g: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor> {
        // 1 - (count + 1 - offset)^-decay_rate, in f64 (optax: f32).
        let decay = 1.0 - (t as f64 - self.decay_offset as f64).powf(-self.decay_rate);
        let g2 = g.sqr()?.affine(1.0, self.eps)?;
        let factored = factored_dims(g.dims(), self.factored, self.min_dim_size_to_factor);
        let mut u = match factored {
            Some((second, largest)) => {
                let row = decayed(s.v_row.as_ref(), &g2.mean_keepdim(largest)?, decay)?;
                let col = decayed(s.v_col.as_ref(), &g2.mean_keepdim(second)?, decay)?;
                let row_factor = row.broadcast_div(&row.mean_keepdim(second)?)?.powf(-0.5)?;
                let u = g
                    .broadcast_mul(&row_factor)?
                    .broadcast_mul(&col.powf(-0.5)?)?;
                s.v_row = Some(row);
                s.v_col = Some(col);
                u
            }
            None => {
                let v = decayed(s.v.as_ref(), &g2, decay)?;
                let u = g.mul(&v.powf(-0.5)?)?;
                s.v = Some(v);
                u
            }
        };
        if let Some(threshold) = self.clipping_threshold {
            u = (&u / (rms(&u)? / threshold).max(1.0))?;
        }
        u = u.affine(lr, 0.0)?;
        if self.multiply_by_parameter_scale {
            u = u.affine(rms(p)?.max(1e-3), 0.0)?;
        }
        if let Some(beta) = self.momentum {
            let ema = decayed(s.ema.as_ref(), &u, beta)?;
            s.ema = Some(ema.clone());
            u = ema;
        }
        if let Some(wd) = self.weight_decay {
            u = (u + p.affine(wd, 0.0)?)?;
        }
        p - u
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::optim::spec::{HyperValue, OptimizerSpec};

    #[test]
    fn defaults_are_torchs_and_optaxs() {
        use HyperValue::{Bool as B, Number as N, Word as W};
        assert_eq!(
            OptimizerSpec::parse("adafactor").unwrap().values(),
            vec![
                ("lr", N(1e-2)),
                ("beta2_decay", N(-0.8)),
                ("eps1", W("none")),
                ("eps2", N(1e-3)),
                ("d", N(1.0)),
                ("weight_decay", N(0.0)),
            ]
        );
        assert_eq!(
            OptimizerSpec::parse("optax_adafactor").unwrap().values(),
            vec![
                ("lr", N(1.0)),
                ("min_dim_size_to_factor", N(128.0)),
                ("decay_rate", N(0.8)),
                ("decay_offset", N(0.0)),
                ("multiply_by_parameter_scale", B(true)),
                ("clipping_threshold", N(1.0)),
                ("momentum", W("none")),
                ("weight_decay", W("none")),
                ("eps", N(1e-30)),
                ("factored", B(true)),
            ]
        );
    }

    #[test]
    fn values_torch_refuses_are_refused() {
        let refused = [
            ("adafactor(lr=-0.01)", "`lr` must be at least 0"),
            (
                "adafactor(beta2_decay=0.5)",
                "`beta2_decay` must be at most 0",
            ),
            ("adafactor(eps1=-1e-30)", "`eps1` must be at least 0"),
            ("adafactor(eps2=-1e-3)", "`eps2` must be at least 0"),
            ("adafactor(d=0.5)", "`d` must be at least 1"),
            (
                "adafactor(weight_decay=-0.1)",
                "`weight_decay` must be at least 0",
            ),
            (
                "optax_adafactor(min_dim_size_to_factor=-1)",
                "`min_dim_size_to_factor` must be",
            ),
            (
                "optax_adafactor(momentum=high)",
                "`momentum` must be a number or none",
            ),
        ];
        for (spec, message) in refused {
            let e = OptimizerSpec::parse(spec).unwrap_err();
            assert!(e.message.starts_with(message), "{spec}: {e}");
        }
        for spec in [
            "adafactor(beta2_decay=0, d=1, eps1=none, eps2=0)",
            "adafactor(eps1=1e-30)",
            "optax_adafactor(clipping_threshold=none, momentum=0.9, weight_decay=0)",
        ] {
            assert!(OptimizerSpec::parse(spec).is_ok(), "{spec}");
        }
    }

    #[test]
    fn eps1_defaults_to_the_dtypes_machine_epsilon() {
        assert_eq!(machine_eps(DType::F64).unwrap(), 2f64.powi(-52));
        assert_eq!(machine_eps(DType::F32).unwrap(), 2f64.powi(-23));
        assert_eq!(machine_eps(DType::F16).unwrap(), 2f64.powi(-10));
        assert_eq!(machine_eps(DType::BF16).unwrap(), 2f64.powi(-7));
        assert!(machine_eps(DType::U32).is_err());
    }

    #[test]
    fn optax_factors_the_two_largest_dims_when_both_are_big_enough() {
        // (dims, factored, min_dim_size_to_factor) -> (second-largest, largest).
        type Case = (&'static [usize], bool, u64, Option<(usize, usize)>);
        let cases: [Case; 8] = [
            (&[3, 4], true, 2, Some((0, 1))),
            (&[5, 3], true, 2, Some((1, 0))),
            (&[3, 3], true, 2, Some((0, 1))),
            (&[2, 7, 5], true, 2, Some((2, 1))),
            (&[3, 4], true, 4, None),
            (&[3, 4], true, 3, Some((0, 1))),
            (&[3, 4], false, 1, None),
            (&[4], true, 1, None),
        ];
        for (dims, factored, min, want) in cases {
            assert_eq!(factored_dims(dims, factored, min), want, "{dims:?} {min}");
        }
    }

    /// torch's first step on a matrix: w = 1, so R and C are the row and column means of g^2,
    /// V = R C / mean(R), u = g / sqrt(V), and the step is min(lr, 1) max(eps2, RMS(p)) times u
    /// over max(1, RMS(u) / d).
    #[test]
    fn torch_factors_over_the_last_two_dims() {
        let dev = &Device::Cpu;
        let g = Tensor::new(&[[1.0f64, 2.0], [3.0, 4.0], [0.5, -1.0]], dev).unwrap();
        let p = Tensor::new(&[[0.2f64, -0.1], [0.0, 0.3], [0.1, 0.1]], dev).unwrap();
        let gv: Vec<Vec<f64>> = g.to_vec2().unwrap();
        let r: Vec<f64> = gv
            .iter()
            .map(|row| (row[0] * row[0] + row[1] * row[1]) / 2.0)
            .collect();
        let c: Vec<f64> = (0..2)
            .map(|j| gv.iter().map(|row| row[j] * row[j]).sum::<f64>() / 3.0)
            .collect();
        let mean_r = r.iter().sum::<f64>() / 3.0;
        let u: Vec<Vec<f64>> = (0..3)
            .map(|i| {
                (0..2)
                    .map(|j| gv[i][j] / (r[i] * c[j] / mean_r).sqrt())
                    .collect()
            })
            .collect();
        let rms_u = (u.iter().flatten().map(|x| x * x).sum::<f64>() / 6.0).sqrt();
        let pv: Vec<Vec<f64>> = p.to_vec2().unwrap();
        let rms_p = (pv.iter().flatten().map(|x| x * x).sum::<f64>() / 6.0).sqrt();
        let OptimizerSpec::Adafactor(rule) =
            OptimizerSpec::parse("adafactor(lr=0.5, d=1.2)").unwrap()
        else {
            unreachable!()
        };
        let new = rule
            .step(&mut AdafactorState::default(), &p, &g, 0.5, 1)
            .unwrap();
        let step = 0.5 * rms_p.max(1e-3) / (rms_u / 1.2).max(1.0);
        let new: Vec<Vec<f64>> = new.to_vec2().unwrap();
        for i in 0..3 {
            for j in 0..2 {
                let want = pv[i][j] - step * u[i][j];
                assert!((new[i][j] - want).abs() < 1e-15, "{new:?}");
            }
        }
    }
}
