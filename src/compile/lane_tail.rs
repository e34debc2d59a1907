//! A linear model's loss for a batch of runs as one op: the sum or mean over each lane's
//! elements of an elementwise region (see `region`) on a lane-kernel product, `mean(f(X @ w +
//! b))` (with or without the bias; `w @ A` as well as `X @ w`). As separate ops, candle's
//! backward pass adds every `[R, k]` gradient it passes on (from the mean to the region, from
//! the region to the product) into a zeroed tensor and keeps each `[R, k]` value as a tensor of
//! its own. Here the product's values are kept for the backward pass and the gradients stay
//! plain vectors: 8 lanes of the bench's logistic regression went from 2.2x to 2.5-2.7x the
//! steps/s of the runs apart (`gradscope bench`). Each
//! value is computed as the ops compute it (the region's own kernels, candle's sums), so the
//! numbers are those of the separate ops.

use std::sync::{Mutex, PoisonError};

use candle_core::cpu::kernels::VecOps;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
    WithDType,
};

use super::fused::float_only;
use super::lane_kernel::{add_bias, lane_product};
use super::region::Program;

/// Each lane's `sum` (or, with `mean`, mean) of `region` on `v @ m + b` (see
/// [`super::lane_kernel::lane_vecmat_bias`]; `b` None for `v @ m` alone): `[R]`.
pub fn lane_tail(
    v: &Tensor,
    b: Option<&Tensor>,
    m: &Tensor,
    region: Program,
    mean: bool,
) -> Result<Tensor> {
    let op = LaneTail {
        region,
        mean,
        z: Mutex::new(None),
    };
    let (v, m) = (v.contiguous()?, m.contiguous()?);
    match b {
        Some(b) => v.apply_op3(&b.contiguous()?, &m, op),
        None => v.apply_op2(&m, op),
    }
}

struct LaneTail {
    region: Program,
    mean: bool,
    /// The product's values (its bias added), from the forward pass for the backward pass.
    z: Mutex<Option<CpuStorage>>,
}

impl LaneTail {
    fn forward(
        &self,
        (v, vl): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
        (m, ml): (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let (mut z, d) = lane_product(v, vl, m, ml, false)?;
        if let Some(b) = bias {
            add_bias(&mut z, b, d)?;
        }
        let losses = match self.region.run(&z, None)? {
            CpuStorage::F32(r) => CpuStorage::F32(reduce(&r, d.lanes, self.mean)),
            CpuStorage::F64(r) => CpuStorage::F64(reduce(&r, d.lanes, self.mean)),
            _ => return float_only(),
        };
        *self.z.lock().unwrap_or_else(PoisonError::into_inner) = Some(z);
        Ok((losses, Shape::from(d.lanes)))
    }

    /// The gradients of `v` and of the bias from the losses' `grad`.
    fn backward(&self, m: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
        match grad.dtype() {
            DType::F32 => self.gradients::<f32>(m, grad),
            DType::F64 => self.gradients::<f64>(m, grad),
            _ => float_only(),
        }
    }

    /// [`LaneTail::backward`] in `T`.
    fn gradients<T: WithDType + VecOps>(
        &self,
        m: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let lanes = grad.elem_count();
        let held = self.z.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(z) = held.as_ref() else {
            candle_core::bail!("a lane tail's backward pass before its forward pass")
        };
        let k = T::cpu_storage_as_slice(z)?.len() / lanes.max(1);
        let seeds = T::to_cpu_storage_owned(seed(&grad.to_vec1::<T>()?, k, self.mean));
        let dz = self.region.run(z, Some(&seeds))?;
        drop(held);
        let (m, ml) = m.storage_and_layout();
        let Storage::Cpu(m) = &*m else {
            candle_core::bail!("lane tails run on the CPU")
        };
        let (dv, d) = lane_product(&dz, &Layout::contiguous((lanes, k)), m, ml, true)?;
        // The bias's gradient: each lane's sum, as candle sums a broadcast's gradient.
        let db = reduce(T::cpu_storage_as_slice(&dz)?, lanes, false);
        Ok((
            Tensor::from_vec(T::cpu_storage_data(dv)?, (d.lanes, d.n), &Device::Cpu)?,
            Tensor::from_vec(db, lanes, &Device::Cpu)?,
        ))
    }
}

/// Each of `lanes` rows' sum by candle's kernel (as `sum` over a row sums it), or its mean as
/// `mean` takes it (the sum times 1/n rounded, plus 0). The rows are not empty (see `lanes`).
fn reduce<T: WithDType + VecOps>(values: &[T], lanes: usize, mean: bool) -> Vec<T> {
    let k = (values.len() / lanes.max(1)).max(1);
    let scale = T::from_f64(1.0 / k as f64);
    values
        .chunks_exact(k)
        .map(|row| {
            let mut sum = T::zero();
            // SAFETY: `row` holds `k` values and `sum` is one.
            unsafe { T::vec_reduce_sum(row.as_ptr(), &mut sum, k) };
            match mean {
                true => sum * scale + T::zero(),
                false => sum,
            }
        })
        .collect()
}

/// The gradient each of a lane's `k` elements gets from the lane's loss gradient `g`, as the
/// mean's (or sum's) backward pass hands it on: `g / n` rounded as the mean's affine computes
/// it, added into a zero.
fn seed<T: WithDType + VecOps>(grads: &[T], k: usize, mean: bool) -> Vec<T> {
    let scale = T::from_f64(1.0 / k.max(1) as f64);
    let mut out = Vec::with_capacity(grads.len() * k);
    for &g in grads {
        let g = match mean {
            true => g * scale + T::zero(),
            false => g,
        };
        out.resize(out.len() + k, T::zero() + g);
    }
    out
}

impl CustomOp2 for LaneTail {
    fn name(&self) -> &'static str {
        "lane-tail"
    }

    fn cpu_fwd(
        &self,
        v: &CpuStorage,
        vl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((v, vl), None, (m, ml))
    }

    fn bwd(
        &self,
        _v: &Tensor,
        m: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dv, _) = self.backward(m, grad)?;
        Ok((Some(dv), None))
    }
}

impl CustomOp3 for LaneTail {
    fn name(&self) -> &'static str {
        "lane-tail-bias"
    }

    fn cpu_fwd(
        &self,
        v: &CpuStorage,
        vl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((v, vl), Some((b, bl)), (m, ml))
    }

    fn bwd(
        &self,
        _v: &Tensor,
        b: &Tensor,
        m: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dv, db) = self.backward(m, grad)?;
        Ok((Some(dv), Some(db.reshape(b.shape())?), None))
    }
}
