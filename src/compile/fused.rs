//! Fused kernels for the hottest patterns, each a candle custom op whose backward is again made
//! of differentiable ops (so double backward still works): tanh with a vectorisable f32 kernel
//! (candle's calls libm per element and dominated an MLP step), and bias addition whose backward
//! sums columns with a matmul instead of candle's slow `sum_keepdim(0)`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use half::{bf16, f16};

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused op on a non-contiguous tensor".into()))?;
    Ok(&data[start..end])
}

/// Runs `f` on f32 or f64 slices; f16 and bf16 go through f32 and are rounded once.
fn map_float(
    storage: &CpuStorage,
    layout: &Layout,
    f32_fn: impl Fn(&[f32]) -> Vec<f32>,
    f64_fn: impl Fn(&[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    Ok(match storage {
        CpuStorage::F32(d) => CpuStorage::F32(f32_fn(contiguous(d, layout)?)),
        CpuStorage::F64(d) => CpuStorage::F64(f64_fn(contiguous(d, layout)?)),
        CpuStorage::F16(d) => {
            let x: Vec<f32> = contiguous(d, layout)?.iter().map(|v| v.to_f32()).collect();
            CpuStorage::F16(f32_fn(&x).into_iter().map(f16::from_f32).collect())
        }
        CpuStorage::BF16(d) => {
            let x: Vec<f32> = contiguous(d, layout)?.iter().map(|v| v.to_f32()).collect();
            CpuStorage::BF16(f32_fn(&x).into_iter().map(bf16::from_f32).collect())
        }
        _ => {
            return Err(candle_core::Error::Msg(
                "fused ops take floating-point tensors".into(),
            ));
        }
    })
}

/// tanh for f32 as a rational function (Eigen's `generic_fast_tanh_float`), a few ulp from the
/// correctly rounded value; branch-free so the loop vectorises.
#[inline]
pub fn tanh_f32(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A: [f32; 7] = [
        -2.760_768_5e-16,
        2.000_188e-13,
        -8.604_672e-11,
        5.122_297e-8,
        1.485_722_4e-5,
        6.372_619_3e-4,
        4.893_524_6e-3,
    ];
    const B: [f32; 4] = [1.198_258_4e-6, 1.185_347_1e-4, 2.268_434_6e-3, 4.893_525e-3];
    let c = x.clamp(-CLAMP, CLAMP);
    let x2 = c * c;
    let mut p = A[0];
    for a in &A[1..] {
        p = p * x2 + a;
    }
    p *= c;
    let mut q = B[0];
    for b in &B[1..] {
        q = q * x2 + b;
    }
    if x.abs() < 0.0004 { x } else { p / q }
}

/// tanh with its backward fused into one pass over (gradient, result).
#[derive(Debug, Clone, Copy)]
pub struct Tanh;

impl CustomOp1 for Tanh {
    fn name(&self) -> &'static str {
        "tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = map_float(
            s,
            l,
            |x| x.iter().map(|&v| tanh_f32(v)).collect(),
            |x| x.iter().map(|v| v.tanh()).collect(),
        )?;
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op2(&res.contiguous()?, TanhBackward)?,
        ))
    }
}

fn zip_map<T: Copy>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> Vec<T> {
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

/// Applies `f` elementwise to two same-shape contiguous tensors, computing f16/bf16 in f32.
fn binary(
    a: &CpuStorage,
    al: &Layout,
    b: &CpuStorage,
    bl: &Layout,
    f: impl Fn(f64, f64) -> f64 + Copy,
    f32_fn: impl Fn(f32, f32) -> f32 + Copy,
) -> Result<CpuStorage> {
    Ok(match (a, b) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            CpuStorage::F32(zip_map(contiguous(a, al)?, contiguous(b, bl)?, f32_fn))
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            CpuStorage::F64(zip_map(contiguous(a, al)?, contiguous(b, bl)?, f))
        }
        (CpuStorage::F16(a), CpuStorage::F16(b)) => {
            CpuStorage::F16(zip_map(contiguous(a, al)?, contiguous(b, bl)?, |x, y| {
                f16::from_f32(f32_fn(x.to_f32(), y.to_f32()))
            }))
        }
        (CpuStorage::BF16(a), CpuStorage::BF16(b)) => {
            CpuStorage::BF16(zip_map(contiguous(a, al)?, contiguous(b, bl)?, |x, y| {
                bf16::from_f32(f32_fn(x.to_f32(), y.to_f32()))
            }))
        }
        _ => {
            return Err(candle_core::Error::Msg(
                "fused ops take two floating-point tensors of one dtype".into(),
            ));
        }
    })
}

/// `g * (1 - y²)` in one pass.
#[derive(Debug, Clone, Copy)]
struct TanhBackward;

impl CustomOp2 for TanhBackward {
    fn name(&self) -> &'static str {
        "tanh-backward"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        y: &CpuStorage,
        yl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = binary(
            g,
            gl,
            y,
            yl,
            |g, y| g * (1.0 - y * y),
            |g, y| g * (1.0 - y * y),
        )?;
        Ok((out, gl.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // d/dg = 1 - y², d/dy = -2 y g
        let dg = grad.mul(&y.sqr()?.affine(-1.0, 1.0)?)?;
        let dy = grad.mul(&y.mul(g)?.affine(-2.0, 0.0)?)?;
        Ok((Some(dg), Some(dy)))
    }
}

/// `x + b` where `b`'s shape is the trailing part of `x`'s (a bias). The backward sums the
/// gradient over the leading axes as `ones(1, rows) @ grad`, ~20x faster than candle's
/// `sum_keepdim(0)` on a 4096x256 gradient.
#[derive(Debug, Clone, Copy)]
pub struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn add<T: Copy + std::ops::Add<Output = T>>(x: &[T], b: &[T]) -> Vec<T> {
            let n = b.len().max(1);
            let mut out = Vec::with_capacity(x.len());
            for row in x.chunks(n) {
                out.extend(row.iter().zip(b).map(|(&x, &b)| x + b));
            }
            out
        }
        let out = match (x, b) {
            (CpuStorage::F32(x), CpuStorage::F32(b)) => {
                CpuStorage::F32(add(contiguous(x, xl)?, contiguous(b, bl)?))
            }
            (CpuStorage::F64(x), CpuStorage::F64(b)) => {
                CpuStorage::F64(add(contiguous(x, xl)?, contiguous(b, bl)?))
            }
            (CpuStorage::F16(x), CpuStorage::F16(b)) => {
                CpuStorage::F16(add(contiguous(x, xl)?, contiguous(b, bl)?))
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(b)) => {
                CpuStorage::BF16(add(contiguous(x, xl)?, contiguous(b, bl)?))
            }
            _ => {
                return Err(candle_core::Error::Msg(
                    "bias-add takes two floating-point tensors of one dtype".into(),
                ));
            }
        };
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = b.elem_count();
        let rows = x.elem_count() / n.max(1);
        let ones = Tensor::ones((1, rows), grad.dtype(), grad.device())?;
        let db = ones.matmul(&grad.reshape((rows, n))?)?.reshape(b.shape())?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// `x + b` through [`BiasAdd`] (both made contiguous).
pub fn bias_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd)
}

/// tanh through [`Tanh`].
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Tanh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_tanh_is_within_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -12.0f32;
        while x < 12.0 {
            let want = (x as f64).tanh();
            let got = tanh_f32(x) as f64;
            let ulp = (want.abs() as f32).max(f32::MIN_POSITIVE) as f64 * f32::EPSILON as f64;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.000_37;
        }
        assert!(worst < 4.0, "worst error {worst} ulp");
    }
}

/// A 2-D matmul that computes in backward only the gradients that are needed: candle's own
/// always computes both sides, so `X @ W` with data `X` paid for a full gradient of `X`.
#[derive(Debug, Clone, Copy)]
pub struct MatMul {
    pub lhs_grad: bool,
    pub rhs_grad: bool,
}

fn gemm_into<T: Copy + 'static>(
    a: &[T],
    b: &[T],
    m: usize,
    k: usize,
    n: usize,
    zero: T,
    one: T,
) -> Vec<T> {
    let mut out = vec![zero; m * n];
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize);
    let par = if threads > 1 && m * n * k > 1 << 18 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `a` is m x k, `b` is k x n and `out` m x n, all row-major and contiguous, as the
    // strides say; gemm reads and writes only within those bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            zero,
            one,
            false,
            false,
            false,
            par,
        );
    }
    out
}

impl CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = al.shape().dims2()?;
        let (_, n) = bl.shape().dims2()?;
        let out = match (a, b) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(gemm_into(
                contiguous(a, al)?,
                contiguous(b, bl)?,
                m,
                k,
                n,
                0.0,
                1.0,
            )),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(gemm_into(
                contiguous(a, al)?,
                contiguous(b, bl)?,
                m,
                k,
                n,
                0.0,
                1.0,
            )),
            _ => {
                return Err(candle_core::Error::Msg(
                    "fused matmul takes f32 or f64".into(),
                ));
            }
        };
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let da = if self.lhs_grad {
            Some(grad.matmul(&b.t()?)?)
        } else {
            None
        };
        let db = if self.rhs_grad {
            Some(a.t()?.matmul(grad)?)
        } else {
            None
        };
        Ok((da, db))
    }
}

/// `a @ b` for 2-D operands, through [`MatMul`] when only one side needs a gradient.
pub fn matmul_2d(a: &Tensor, b: &Tensor, lhs_grad: bool, rhs_grad: bool) -> Result<Tensor> {
    let float = matches!(a.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if float && lhs_grad != rhs_grad {
        a.contiguous()?
            .apply_op2(&b.contiguous()?, MatMul { lhs_grad, rhs_grad })
    } else {
        a.matmul(b)
    }
}
