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

/// `x + b` where `b`'s shape is the trailing part of `x`'s (a bias), in each of `lanes` blocks:
/// `x` holds `lanes` tensors of one shape end to end and `b` as many biases (one per run when
/// runs are batched, see [`super::lanes`]). The backward sums the gradient over the leading axes
/// as `ones(1, rows) @ grad` per lane, ~20x faster than candle's `sum_keepdim(0)` on a 4096x256
/// gradient.
#[derive(Debug, Clone, Copy)]
pub struct BiasAdd {
    pub lanes: usize,
}

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
        let lanes = self.lanes.max(1);
        let out = match (x, b) {
            (CpuStorage::F32(x), CpuStorage::F32(b)) => {
                CpuStorage::F32(add_bias(contiguous(x, xl)?, contiguous(b, bl)?, lanes))
            }
            (CpuStorage::F64(x), CpuStorage::F64(b)) => {
                CpuStorage::F64(add_bias(contiguous(x, xl)?, contiguous(b, bl)?, lanes))
            }
            (CpuStorage::F16(x), CpuStorage::F16(b)) => {
                CpuStorage::F16(add_bias(contiguous(x, xl)?, contiguous(b, bl)?, lanes))
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(b)) => {
                CpuStorage::BF16(add_bias(contiguous(x, xl)?, contiguous(b, bl)?, lanes))
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
        let lanes = self.lanes.max(1);
        let n = b.elem_count() / lanes;
        let rows = x.elem_count() / (n * lanes).max(1);
        let ones = Tensor::ones((1, 1, rows), grad.dtype(), grad.device())?
            .broadcast_as((lanes, 1, rows))?;
        let db = ones
            .matmul(&grad.reshape((lanes, rows, n))?)?
            .reshape(b.shape())?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// `x + b` row by row within each of `lanes` blocks, block `l` of `x` taking block `l` of `b`.
fn add_bias<T: Copy + std::ops::Add<Output = T>>(x: &[T], b: &[T], lanes: usize) -> Vec<T> {
    let n = (b.len() / lanes).max(1);
    let per_lane = (x.len() / lanes).max(1);
    let mut out = Vec::with_capacity(x.len());
    for (x, b) in x.chunks(per_lane).zip(b.chunks(n)) {
        for row in x.chunks(n) {
            out.extend(row.iter().zip(b).map(|(&x, &b)| x + b));
        }
    }
    out
}

/// `x + b` through [`BiasAdd`] (both made contiguous), `x` and `b` each holding `lanes` blocks.
pub fn bias_add(x: &Tensor, b: &Tensor, lanes: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&b.contiguous()?, BiasAdd { lanes })
}

/// tanh through [`Tanh`].
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Tanh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// `[rows, cols]` of distinct values around 0, from `phase`.
    fn wavy(rows: usize, cols: usize, phase: f64, dtype: DType) -> Tensor {
        let n = (rows * cols) as u32;
        Tensor::arange(0u32, n, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.affine(0.37, phase)?.sin())
            .and_then(|t| t.reshape((rows, cols))?.to_dtype(dtype))
            .unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u64> {
        let v: Vec<f64> = t
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn lane_products_give_each_lane_the_bits_it_gets_alone() {
        // 11 lanes (tiles of 8, 2 x 1... and of 4 on the way), 19 columns (whole registers and
        // leftovers in f32 and f64), 150 rows (three passes of ROWS).
        let (lanes, n, k) = (11, 150, 19);
        for dtype in [DType::F32, DType::F64] {
            let v = wavy(lanes, n, 0.1, dtype);
            let m = wavy(n, k, 0.7, dtype);
            let mt = m.t().unwrap().contiguous().unwrap();
            let all = lane_vecmat(&v, &m, &mt).unwrap();
            for r in 0..lanes {
                let alone = lane_vecmat(&v.narrow(0, r, 1).unwrap(), &m, &mt).unwrap();
                assert_eq!(
                    bits(&alone),
                    bits(&all.narrow(0, r, 1).unwrap()),
                    "{dtype:?} lane {r}"
                );
            }
            for batch in 1..lanes {
                let some = lane_vecmat(&v.narrow(0, 0, batch).unwrap(), &m, &mt).unwrap();
                assert_eq!(
                    bits(&some),
                    bits(&all.narrow(0, 0, batch).unwrap()),
                    "{dtype:?}"
                );
            }
            // One matrix per lane, each the shared one: the same bits again.
            let own = m.unsqueeze(0).unwrap().repeat((lanes, 1, 1)).unwrap();
            let per_lane = lane_vecmat(&v, &own, &own.transpose(1, 2).unwrap()).unwrap();
            assert_eq!(bits(&per_lane), bits(&all), "{dtype:?}");
            // And the product itself: v @ m in f64.
            let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let want = f64s(&v).matmul(&f64s(&m)).unwrap();
            let err: f64 = (f64s(&all) - &want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-13 };
            assert!(err < tol, "{dtype:?}: off by {err}");
        }
    }

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

/// `a @ b_l` for a row-major contiguous `a` (m x k) and each of the `lanes` matrices `b_l`
/// (k x n) stacked in `b`, the products stacked likewise.
fn gemm_stack<T: Copy + 'static>(
    a: &[T],
    b: &[T],
    (m, k, n): (usize, usize, usize),
    lanes: usize,
    zero: T,
    one: T,
) -> Vec<T> {
    let mut out = vec![zero; lanes * m * n];
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize);
    let par = if threads > 1 && m * n * k > 1 << 18 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for (out, b) in out.chunks_mut((m * n).max(1)).zip(b.chunks((k * n).max(1))) {
        // SAFETY: `a` is m x k, `b` is k x n and `out` m x n, all row-major and contiguous, as
        // the strides say; gemm reads and writes only within those bounds.
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
        // b is one matrix, or a stack of them that all meet the one `a` (lanes, see `lanes`).
        let (stack, n) = match *bl.shape().dims() {
            [_, n] => (None, n),
            [lanes, _, n] => (Some(lanes), n),
            _ => {
                return Err(candle_core::Error::Msg(
                    "fused matmul takes a matrix or a stack of matrices on the right".into(),
                ));
            }
        };
        let lanes = stack.unwrap_or(1);
        let out = match (a, b) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(gemm_stack(
                contiguous(a, al)?,
                contiguous(b, bl)?,
                (m, k, n),
                lanes,
                0.0,
                1.0,
            )),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(gemm_stack(
                contiguous(a, al)?,
                contiguous(b, bl)?,
                (m, k, n),
                lanes,
                0.0,
                1.0,
            )),
            _ => {
                return Err(candle_core::Error::Msg(
                    "fused matmul takes f32 or f64".into(),
                ));
            }
        };
        let shape = match stack {
            Some(lanes) => Shape::from((lanes, m, n)),
            None => Shape::from((m, n)),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // With a stack on the right, `a` met every matrix of it: its gradient sums theirs.
        let da = match (self.lhs_grad, b.rank()) {
            (false, _) => None,
            (true, 2) => Some(grad.matmul(&b.t()?)?),
            (true, _) => Some(grad.matmul(&b.t()?)?.sum(0)?),
        };
        let db = match (self.rhs_grad, b.rank()) {
            (false, _) => None,
            (true, 2) => Some(a.t()?.matmul(grad)?),
            (true, _) => Some(shared_lhs(&a.t()?, b.dim(0)?)?.matmul(grad)?),
        };
        Ok((da, db))
    }
}

/// `a @ b` for a 2-D `a` and a 2-D `b` (or a stack of matrices `[L, k, n]`, each multiplied by
/// `a`), through [`MatMul`] when only one side needs a gradient.
pub fn matmul_2d(a: &Tensor, b: &Tensor, lhs_grad: bool, rhs_grad: bool) -> Result<Tensor> {
    let float = matches!(a.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if float && lhs_grad != rhs_grad {
        a.contiguous()?
            .apply_op2(&b.contiguous()?, MatMul { lhs_grad, rhs_grad })
    } else if b.rank() == 2 {
        a.matmul(b)
    } else {
        shared_lhs(a, b.dim(0)?)?.matmul(b)
    }
}

/// The matrix `a` as a stack of `lanes` copies of itself, without copying (a zero batch stride,
/// which candle's matmul reads as it is).
fn shared_lhs(a: &Tensor, lanes: usize) -> Result<Tensor> {
    let (m, k) = a.dims2()?;
    a.broadcast_as((lanes, m, k))
}

/// `v @ m` for every lane: `v` one vector per lane `[R, n]`, `m` a matrix `[n, k]` shared by
/// the lanes (or one per lane, `[R, n, k]`) that needs no gradient, and `mt` its transpose
/// (contiguous) for the backward pass; `[R, k]`. Each entry is summed over `n` in order, whatever
/// R, the tiling and the CPU's vector width, so a run alone (R = 1) and within a batch of runs
/// (see `lanes`) get the same bits, which gemm does not promise across shapes. `x @ w` for a data
/// matrix `x` is `w @ xᵀ`: the forward reads `xᵀ`, the backward `x`.
pub fn lane_vecmat(v: &Tensor, m: &Tensor, mt: &Tensor) -> Result<Tensor> {
    let op = VecMat { mt: mt.clone() };
    v.contiguous()?.apply_op2(&m.contiguous()?, op)
}

/// Lanes, rows and columns of a lane product, and whether the matrix is shared by the lanes.
#[derive(Debug, Clone, Copy)]
struct LaneDims {
    lanes: usize,
    n: usize,
    k: usize,
    shared: bool,
}

impl LaneDims {
    /// From the vectors' layout `[R, n]` and the matrix's `[n, k]` or `[R, n, k]`.
    fn of(v: &Layout, m: &Layout) -> Result<Self> {
        let (lanes, len) = v.shape().dims2()?;
        let (shared, n, k) = match *m.shape().dims() {
            [n, k] => (true, n, k),
            [l, n, k] if l == lanes => (false, n, k),
            _ => (false, usize::MAX, 0),
        };
        if n != len {
            return Err(candle_core::Error::Msg(format!(
                "a lane product of {:?} vectors with a {:?} matrix",
                v.shape(),
                m.shape()
            )));
        }
        Ok(Self {
            lanes,
            n,
            k,
            shared,
        })
    }
}

/// The arithmetic of the lane kernel on f32 and f64, one by one and in AVX registers.
trait Num: Copy + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    /// `self * a + b`, rounded once.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// An AVX register of them.
    #[cfg(target_arch = "x86_64")]
    type V: Copy;
    /// How many an AVX register holds.
    #[cfg(target_arch = "x86_64")]
    const W: usize;
    /// # Safety
    /// The CPU must have AVX.
    #[cfg(target_arch = "x86_64")]
    unsafe fn zero() -> Self::V;
    /// # Safety
    /// The CPU must have AVX, and `p` address `W` values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load(p: *const Self) -> Self::V;
    /// # Safety
    /// The CPU must have AVX.
    #[cfg(target_arch = "x86_64")]
    unsafe fn splat(x: Self) -> Self::V;
    /// `a * b + c` lane by lane, rounded once (as [`Num::mul_add`]).
    ///
    /// # Safety
    /// The CPU must have FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// # Safety
    /// The CPU must have AVX, and `p` address `W` values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store(p: *mut Self, v: Self::V);
}

macro_rules! num {
    ($t:ty, $v:ident, $w:expr, $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident) => {
        impl Num for $t {
            #[inline(always)]
            fn mul_add(self, a: $t, b: $t) -> $t {
                <$t>::mul_add(self, a, b)
            }
            #[cfg(target_arch = "x86_64")]
            type V = std::arch::x86_64::$v;
            #[cfg(target_arch = "x86_64")]
            const W: usize = $w;
            #[cfg(target_arch = "x86_64")]
            #[inline]
            #[target_feature(enable = "avx")]
            unsafe fn zero() -> Self::V {
                std::arch::x86_64::$zero()
            }
            #[cfg(target_arch = "x86_64")]
            #[inline]
            #[target_feature(enable = "avx")]
            unsafe fn load(p: *const $t) -> Self::V {
                // SAFETY: `p` addresses W values (the caller's promise); unaligned load.
                unsafe { std::arch::x86_64::$load(p) }
            }
            #[cfg(target_arch = "x86_64")]
            #[inline]
            #[target_feature(enable = "avx")]
            unsafe fn splat(x: $t) -> Self::V {
                std::arch::x86_64::$splat(x)
            }
            #[cfg(target_arch = "x86_64")]
            #[inline]
            #[target_feature(enable = "avx,fma")]
            unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
                std::arch::x86_64::$fma(a, b, c)
            }
            #[cfg(target_arch = "x86_64")]
            #[inline]
            #[target_feature(enable = "avx")]
            unsafe fn store(p: *mut $t, v: Self::V) {
                // SAFETY: `p` addresses W values (the caller's promise); unaligned store.
                unsafe { std::arch::x86_64::$store(p, v) }
            }
        }
    };
}

num!(
    f32,
    __m256,
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);
num!(
    f64,
    __m256d,
    4,
    _mm256_setzero_pd,
    _mm256_loadu_pd,
    _mm256_set1_pd,
    _mm256_fmadd_pd,
    _mm256_storeu_pd
);

/// `out[r, c] += Σ_i v[r, i] m_r[i, c]` over the rows `rows` for the `TR` lanes from `r0` and
/// the `TC` registers of columns from `c0`: the sums held in registers over the rows, fused
/// multiply-adds in the order of `i` (continuing a sum stored in `out` adds in the same order as
/// never stopping it).
///
/// # Safety
/// The CPU must have AVX and FMA; `TR` is 1 unless the matrix is shared; the rows, lanes and
/// columns lie within `d`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile<T: Num, const TR: usize, const TC: usize>(
    v: &[T],
    m: &[T],
    d: LaneDims,
    rows: std::ops::Range<usize>,
    (r0, c0): (usize, usize),
    out: &mut [T],
) {
    let LaneDims { n, k, .. } = d;
    let base = if d.shared { 0 } else { r0 * n * k };
    // SAFETY: the CPU has AVX and FMA; every load of the matrix addresses c0 + TC W <= k values
    // of one of its rows, every load and store of `out` TC W values of lane r's output row.
    unsafe {
        let at = |q: usize, t: usize| (r0 + q) * k + c0 + t * T::W;
        let mut acc = [[T::zero(); TC]; TR];
        for (q, acc) in acc.iter_mut().enumerate() {
            for (t, a) in acc.iter_mut().enumerate() {
                *a = T::load(out.as_ptr().add(at(q, t)));
            }
        }
        for i in rows {
            let row = m.as_ptr().add(base + i * k + c0);
            let mut x = [T::zero(); TC];
            for (t, x) in x.iter_mut().enumerate() {
                *x = T::load(row.add(t * T::W));
            }
            for (q, acc) in acc.iter_mut().enumerate() {
                let g = T::splat(v[(r0 + q) * n + i]);
                for t in 0..TC {
                    acc[t] = T::fma(g, x[t], acc[t]);
                }
            }
        }
        for (q, acc) in acc.iter().enumerate() {
            for (t, &a) in acc.iter().enumerate() {
                T::store(out.as_mut_ptr().add(at(q, t)), a);
            }
        }
    }
}

/// Rows of the matrix per pass of [`vecmat_fma`]: 64 rows of 64 f32s (16 kB) stay in L1 while
/// every tile takes its turn, so the matrix comes from memory once however many lanes meet it.
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 64;

/// The lane kernel with AVX and FMA: register tiles of up to 8 lanes where the lanes share the
/// matrix (its rows read once for all of them), else 1 lane x up to 8 registers of columns; the
/// columns past the last whole register one by one, in the same order.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn vecmat_fma<T: Num>(v: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    let LaneDims { lanes, n, k, .. } = d;
    let mut out = vec![T::default(); lanes * k];
    let whole = k / T::W;
    for i0 in (0..n).step_by(ROWS) {
        let rows = i0..(i0 + ROWS).min(n);
        let mut r = 0;
        while r < lanes {
            let group = match lanes - r {
                left if d.shared && left >= 8 => 8,
                left if d.shared && left >= 4 => 4,
                _ => 1,
            };
            let mut c = 0;
            let mut tiles = |width: usize, tile: &mut dyn FnMut(usize)| {
                while c + width <= whole {
                    tile(c * T::W);
                    c += width;
                }
            };
            let (v, m, out) = (v, m, &mut out);
            // SAFETY: AVX2 and FMA (this function's features); the rows, lanes r.. and registers
            // c.. lie within `d`, and tiles of several lanes only where the matrix is shared.
            unsafe {
                match group {
                    8 => tiles(1, &mut |c| {
                        tile::<T, 8, 1>(v, m, d, rows.clone(), (r, c), out)
                    }),
                    4 => {
                        tiles(2, &mut |c| {
                            tile::<T, 4, 2>(v, m, d, rows.clone(), (r, c), out)
                        });
                        tiles(1, &mut |c| {
                            tile::<T, 4, 1>(v, m, d, rows.clone(), (r, c), out)
                        });
                    }
                    _ => {
                        tiles(8, &mut |c| {
                            tile::<T, 1, 8>(v, m, d, rows.clone(), (r, c), out)
                        });
                        tiles(2, &mut |c| {
                            tile::<T, 1, 2>(v, m, d, rows.clone(), (r, c), out)
                        });
                        tiles(1, &mut |c| {
                            tile::<T, 1, 1>(v, m, d, rows.clone(), (r, c), out)
                        });
                    }
                }
            }
            r += group;
        }
    }
    for r in 0..lanes {
        let base = if d.shared { 0 } else { r * n * k };
        for c in whole * T::W..k {
            let mut sum = T::default();
            for i in 0..n {
                sum = v[r * n + i].mul_add(m[base + i * k + c], sum);
            }
            out[r * k + c] = sum;
        }
    }
    out
}

/// The lane kernel one value at a time, for CPUs without AVX2 and FMA (its sums are in the same
/// order but not fused, so they differ from the fused kernel's, never from themselves).
fn vecmat_plain<T: Num>(v: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    let LaneDims { lanes, n, k, .. } = d;
    let mut out = vec![T::default(); lanes * k];
    for (r, out) in out.chunks_exact_mut(k.max(1)).enumerate().take(lanes) {
        let base = if d.shared { 0 } else { r * n * k };
        for i in 0..n {
            let g = v[r * n + i];
            for (o, &x) in out.iter_mut().zip(&m[base + i * k..][..k]) {
                *o = *o + g * x;
            }
        }
    }
    out
}

/// The kernel of [`lane_vecmat`], fused where the CPU allows.
fn vecmat<T: Num>(v: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just now.
        return unsafe { vecmat_fma(v, m, d) };
    }
    vecmat_plain(v, m, d)
}

/// [`lane_vecmat`] as an op on `(v, m)`, holding `mᵀ` for its backward pass.
#[derive(Debug, Clone)]
struct VecMat {
    mt: Tensor,
}

impl CustomOp2 for VecMat {
    fn name(&self) -> &'static str {
        "lane-vecmat"
    }

    fn cpu_fwd(
        &self,
        v: &CpuStorage,
        vl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = LaneDims::of(vl, ml)?;
        let out = match (v, m) {
            (CpuStorage::F32(v), CpuStorage::F32(m)) => {
                CpuStorage::F32(vecmat(contiguous(v, vl)?, contiguous(m, ml)?, d))
            }
            (CpuStorage::F64(v), CpuStorage::F64(m)) => {
                CpuStorage::F64(vecmat(contiguous(v, vl)?, contiguous(m, ml)?, d))
            }
            _ => {
                return Err(candle_core::Error::Msg(
                    "lane products take f32 or f64".into(),
                ));
            }
        };
        Ok((out, Shape::from((d.lanes, d.k))))
    }

    fn bwd(
        &self,
        _v: &Tensor,
        m: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // d/dv (v m) = grad mᵀ
        Ok((Some(lane_vecmat(grad, &self.mt, m)?), None))
    }
}
