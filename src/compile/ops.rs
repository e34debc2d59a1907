//! Elementwise functions candle lacks or differentiates differently from PyTorch, as custom ops
//! with their own backward: numerically stable sigmoid and softplus, an accurate log1p, abs
//! whose gradient at 0 is 0 (candle's is 1), and the exact gelu (candle's backward rounds
//! 1/sqrt(2 pi) to 0.398942, a 7e-7 relative error).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use std::f64::consts::FRAC_1_SQRT_2;

/// 1 / sqrt(2π), to full f64 precision.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// A custom elementwise op. Forward runs in f64 and rounds once to the storage dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elementwise {
    Sigmoid,
    Softplus,
    Log1p,
    Abs,
    Gelu,
}

impl Elementwise {
    fn f(self, x: f64) -> f64 {
        match self {
            Elementwise::Sigmoid => sigmoid(x),
            Elementwise::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
            Elementwise::Log1p => x.ln_1p(),
            Elementwise::Abs => x.abs(),
            // x Φ(x), with erfc for accuracy at negative x
            Elementwise::Gelu => 0.5 * x * candle_core::cpu::erf::erfc_f64(-x * FRAC_1_SQRT_2),
        }
    }

    /// Runs the op on `x` (made contiguous, as custom ops need).
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self)
    }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn map<T: Copy>(data: &[T], layout: &Layout, f: impl Fn(T) -> T) -> Result<Vec<T>> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("custom op on a non-contiguous tensor".into()))?;
    Ok(data[start..end].iter().map(|&x| f(x)).collect())
}

impl CustomOp1 for Elementwise {
    fn name(&self) -> &'static str {
        match self {
            Elementwise::Sigmoid => "sigmoid",
            Elementwise::Softplus => "softplus",
            Elementwise::Log1p => "log1p",
            Elementwise::Abs => "abs",
            Elementwise::Gelu => "gelu",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = *self;
        let out = match storage {
            CpuStorage::F64(d) => CpuStorage::F64(map(d, layout, |x| op.f(x))?),
            CpuStorage::F32(d) => CpuStorage::F32(map(d, layout, |x| op.f(x as f64) as f32)?),
            CpuStorage::F16(d) => {
                CpuStorage::F16(map(d, layout, |x| f16::from_f64(op.f(x.to_f64())))?)
            }
            CpuStorage::BF16(d) => {
                CpuStorage::BF16(map(d, layout, |x| bf16::from_f64(op.f(x.to_f64())))?)
            }
            _ => {
                return Err(candle_core::Error::Msg(format!(
                    "{} takes floating-point tensors",
                    self.name()
                )));
            }
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = match self {
            // σ' = σ (1 - σ)
            Elementwise::Sigmoid => (grad * res)?.mul(&res.affine(-1.0, 1.0)?)?,
            // softplus' = σ
            Elementwise::Softplus => grad.mul(&Elementwise::Sigmoid.apply(arg)?)?,
            // log1p' = 1 / (1 + x)
            Elementwise::Log1p => grad.div(&arg.affine(1.0, 1.0)?)?,
            // |x|' = sign(x), 0 at 0 as in PyTorch
            Elementwise::Abs => grad.mul(&arg.sign()?)?,
            // gelu' = Φ(x) + x φ(x), φ(x) = exp(-x²/2) / sqrt(2π)
            Elementwise::Gelu => {
                let cdf = arg.affine(FRAC_1_SQRT_2, 0.0)?.erf()?.affine(0.5, 0.5)?;
                let pdf = arg
                    .sqr()?
                    .affine(-0.5, 0.0)?
                    .exp()?
                    .affine(FRAC_1_SQRT_2PI, 0.0)?;
                grad.mul(&(cdf + arg.mul(&pdf)?)?)?
            }
        };
        Ok(Some(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn sigmoid_and_softplus_do_not_overflow() {
        let x = Tensor::new(&[-1000.0f32, -30.0, 0.0, 30.0, 1000.0], &Device::Cpu).unwrap();
        let s: Vec<f32> = Elementwise::Sigmoid.apply(&x).unwrap().to_vec1().unwrap();
        assert_eq!(s[0], 0.0);
        assert_eq!(s[2], 0.5);
        assert_eq!(s[4], 1.0);
        let sp: Vec<f32> = Elementwise::Softplus.apply(&x).unwrap().to_vec1().unwrap();
        assert_eq!(sp[4], 1000.0);
        assert!(sp.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn abs_gradient_is_zero_at_zero() {
        let v = Var::new(&[-2.0f64, 0.0, 3.0], &Device::Cpu).unwrap();
        let y = Elementwise::Abs
            .apply(v.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap();
        let g = y.backward().unwrap();
        let g: Vec<f64> = g.get(&v).unwrap().to_vec1().unwrap();
        assert_eq!(g, vec![-1.0, 0.0, 1.0]);
    }
}
