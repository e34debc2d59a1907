//! `sum(x^2)` as one op, for the large tensors where memory counts. Unfused, the squares are a
//! tensor the graph holds until the backward pass ends, and the sum's backward spreads its
//! scalar gradient into another full tensor before the square's backward multiplies it in
//! (two more temporaries): five tensors of `x`'s size beside `x`. Fused, the forward keeps
//! nothing and the backward makes `2 g x` in one op (differentiable, so double backward still
//! works). `plan::Fusion` uses it only past the allocator's large-block size: below it the
//! unfused ops run, so every smaller loss keeps candle's order of summation bit for bit.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::contiguous;
use super::threads::{ELEMENT_TASK, tasks};

/// Values summed per part: the parts' sums are added in order, so the result does not depend
/// on how many threads summed them.
const PART: usize = 1 << 16;

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
            CpuStorage::F32(v) => CpuStorage::F32(vec![squares(contiguous(v, l)?) as f32]),
            CpuStorage::F64(v) => CpuStorage::F64(vec![squares(contiguous(v, l)?)]),
            _ => candle_core::bail!("sum-squares takes f32 or f64"),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.broadcast_mul(&grad.affine(2.0, 0.0)?)?))
    }
}

/// The sum of the squares of `xs`, each square and sum in f64.
fn squares<T: Copy + Into<f64> + Sync>(xs: &[T]) -> f64 {
    let part = |p: &[T]| -> f64 {
        // Eight running sums, so the loop vectorises.
        let mut acc = [0.0f64; 8];
        let blocks = p.chunks_exact(8);
        let rest: f64 = blocks
            .remainder()
            .iter()
            .map(|&x| x.into() * x.into())
            .sum();
        for b in blocks {
            for (a, &x) in acc.iter_mut().zip(b) {
                let x: f64 = x.into();
                *a += x * x;
            }
        }
        acc.iter().sum::<f64>() + rest
    };
    let parts: Vec<f64> = match tasks(xs.len(), ELEMENT_TASK) > 1 {
        true => xs.par_chunks(PART).map(part).collect(),
        false => xs.chunks(PART).map(part).collect(),
    };
    parts.iter().sum()
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
