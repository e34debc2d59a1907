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
