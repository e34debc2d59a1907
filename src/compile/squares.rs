//! `sum(x^2)` as one op, for the large tensors where memory counts. Unfused, the squares are a
//! tensor the graph holds until the backward pass ends, and the sum's backward spreads its
//! scalar gradient into another full tensor before the square's backward multiplies it in
//! (two more temporaries): five tensors of `x`'s size beside `x`. Fused, the forward keeps
//! nothing and the backward makes `2 g x` in one op (differentiable, so double backward still
//! works); the forward sums in f64 as the norms do (`optim::kernels::slice_squares`, the same on
//! any thread count). `plan::Fusion` uses it only past the allocator's large-block size: below it the
//! unfused ops run, so every smaller loss keeps candle's order of summation bit for bit.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::fused::contiguous;
use crate::optim::kernels::slice_squares;

/// `sum(x^2)` of a float tensor, as a scalar of its dtype.
pub fn sum_squares(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SumSquares)
}

#[derive(Debug, Clone, Copy)]
struct SumSquares;

impl CustomOp1 for SumSquares {
    fn name(&self) -> &'static str {
        "sum-squares"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(vec![slice_squares(contiguous(v, l)?, None) as f32])
            }
            CpuStorage::F64(v) => CpuStorage::F64(vec![slice_squares(contiguous(v, l)?, None)]),
            _ => candle_core::bail!("sum-squares takes f32 or f64"),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.broadcast_mul(&grad.affine(2.0, 0.0)?)?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn the_fused_sum_and_its_gradients_match_the_unfused_ops() {
        let x =
            Var::from_tensor(&Tensor::randn(0f64, 1.0, (300, 700), &Device::Cpu).expect("randn"))
                .expect("var");
        let fused = sum_squares(x.as_tensor()).expect("fused");
        let plain = x
            .as_tensor()
            .sqr()
            .and_then(|s| s.sum_all())
            .expect("plain");
        let (f, p) = (
            fused.to_scalar::<f64>().expect("f"),
            plain.to_scalar::<f64>().expect("p"),
        );
        assert!((f - p).abs() <= 1e-12 * p, "{f} against {p}");
        let gf = fused
            .affine(3.0, 0.0)
            .and_then(|l| l.backward())
            .expect("grads");
        let gp = plain
            .affine(3.0, 0.0)
            .and_then(|l| l.backward())
            .expect("grads");
        let (gf, gp) = (
            gf.get(x.as_tensor())
                .expect("g")
                .flatten_all()
                .expect("flat"),
            gp.get(x.as_tensor())
                .expect("g")
                .flatten_all()
                .expect("flat"),
        );
        // 6x exactly, both ways: the same bits.
        assert_eq!(
            gf.to_vec1::<f64>().expect("v"),
            gp.to_vec1::<f64>().expect("v")
        );
        let expected = x.as_tensor().affine(6.0, 0.0).expect("6x");
        assert_eq!(
            gf.to_vec1::<f64>().expect("v"),
            expected
                .flatten_all()
                .and_then(|t| t.to_vec1::<f64>())
                .expect("v")
        );
    }
}
