//! Fused kernels for the hottest patterns, each a candle custom op whose backward is again made
//! of differentiable ops (so double backward still works): tanh with a vectorisable f32 kernel
//! (candle's calls libm per element and dominated an MLP step), bias addition whose backward
//! sums columns in one pass (candle's `sum_keepdim(0)` is ~20x slower), and a 2-D matmul that
//! computes in backward only the gradients that are needed and reads transposed operands in
//! place.
//!
//! They are also where an MLP step's time goes, so they are the ops that use the thread pool
//! (`threads`): in large chunks, and only when a tensor is large enough. f16 and bf16 compute
//! in f32 and round each result once (candle's half kernels convert element by element, and
//! its f16 matmul rounds partial sums to f16): what a low-precision run shows is still every
//! op's result in its dtype, as torch's CPU half kernels give it.

use std::mem::MaybeUninit;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use half::{bf16, f16};
use rayon::prelude::*;

use super::threads::{ELEMENT_TASK, MATMUL_TASK, tasks};

/// The elements of a custom op's contiguous input (its ops are given contiguous tensors).
pub(super) fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("custom op on a non-contiguous tensor".into()))?;
    Ok(&data[start..end])
}

pub(super) fn float_only<T>() -> Result<T> {
    Err(candle_core::Error::Msg(
        "fused ops take floating-point tensors of one dtype".into(),
    ))
}

/// f16 and bf16 as the kernels widen them to f32 and round them back, a whole slice at a time:
/// half's slice conversions call a feature-gated function per 8 values, which took a tenth of
/// an f16 MLP step. Both round to nearest, ties to even, as half's do.
///
/// The conversions write into uninitialised memory (every value of `dst`, as long as `src`), so
/// a new vector is filled once: a zero-fill or a copy through a buffer first was another pass
/// over every activation of a half-precision MLP (a tenth of an f16 step in `memmove`).
trait Half: Copy + Default + Send + Sync + 'static {
    fn widen_into(src: &[Self], dst: &mut [MaybeUninit<f32>]);
    fn narrow_into(src: &[f32], dst: &mut [MaybeUninit<Self>]);
    fn widen(src: &[Self], dst: &mut [f32]) {
        // SAFETY: widen_into writes only f32 values.
        Self::widen_into(src, unsafe { uninit(dst) })
    }
    fn narrow(src: &[f32], dst: &mut [Self]) {
        // SAFETY: narrow_into writes only values of Self.
        Self::narrow_into(src, unsafe { uninit(dst) })
    }
    /// `src` widened into a new vector.
    fn widened(src: &[Self]) -> Vec<f32> {
        converted(src, Self::widen_into)
    }
}

/// `values` as memory to write into.
///
/// # Safety
/// Only initialised values may be written through the result (`T` is `Copy`: nothing to drop).
unsafe fn uninit<T: Copy>(values: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: MaybeUninit<T> has T's layout; the caller writes only initialised values.
    unsafe { &mut *(std::ptr::from_mut(values) as *mut [MaybeUninit<T>]) }
}

impl Half for bf16 {
    fn widen_into(src: &[Self], dst: &mut [MaybeUninit<f32>]) {
        bf16_bits::widen(src, dst)
    }
    fn narrow_into(src: &[f32], dst: &mut [MaybeUninit<Self>]) {
        bf16_bits::narrow(src, dst)
    }
}

/// `fn name(args) body`, the body compiled for AVX-512 and for AVX2 with FMA besides the plain
/// build, the widest the CPU has chosen when called: loops written for it vectorise 16 or 8
/// values wide (the body must be safe on any CPU; the features only widen its code).
macro_rules! widest {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn plain($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    plain($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    plain($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512, checked just now.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA, checked just now.
                    return unsafe { avx2($($arg),*) };
                }
            }
            plain($($arg),*)
        }
    };
}
pub(super) use widest;

/// bf16 <-> f32 as the bit operations they are, in loops that vectorise (half's slice
/// conversions made a call per few values: a fifth of a bf16 MLP step on a CPU with
/// AVX512-BF16). The same bits as half's `to_f32` and `from_f32`: NaNs keep their top bits and
/// are made quiet, the rest rounds to nearest, ties to even.
mod bf16_bits {
    use std::mem::MaybeUninit;

    use half::bf16;

    #[inline(always)]
    fn widen_each(src: &[bf16], dst: &mut [MaybeUninit<f32>]) {
        for (d, s) in dst.iter_mut().zip(src) {
            let x = u32::from(s.to_bits());
            let nan = x & 0x7FFF > 0x7F80;
            d.write(f32::from_bits(if nan { x | 0x40 } else { x } << 16));
        }
    }

    #[inline(always)]
    fn narrow_each(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
        for (d, s) in dst.iter_mut().zip(src) {
            let x = s.to_bits();
            let nan = x & 0x7FFF_FFFF > 0x7F80_0000;
            let nearest = x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16;
            d.write(bf16::from_bits(
                if nan { (x >> 16) | 0x40 } else { nearest } as u16,
            ));
        }
    }

    super::widest!(
        pub(super) fn widen(src: &[bf16], dst: &mut [MaybeUninit<f32>]) {
            widen_each(src, dst)
        }
    );
    super::widest!(
        pub(super) fn narrow(src: &[f32], dst: &mut [MaybeUninit<bf16>]) {
            narrow_each(src, dst)
        }
    );
}

impl Half for f16 {
    fn widen_into(src: &[Self], dst: &mut [MaybeUninit<f32>]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU has F16C (and so AVX), checked just now.
            return unsafe { f16c::widen(src, dst) };
        }
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(s.to_f32());
        }
    }
    fn narrow_into(src: &[f32], dst: &mut [MaybeUninit<Self>]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU has F16C (and so AVX), checked just now.
            return unsafe { f16c::narrow(src, dst) };
        }
        for (d, s) in dst.iter_mut().zip(src) {
            d.write(f16::from_f32(*s));
        }
    }
}

/// f16 <-> f32 with F16C, eight values an instruction.
#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::mem::MaybeUninit;

    use half::f16;
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_storeu_si128, _mm256_cvtph_ps, _mm256_cvtps_ph,
        _mm256_loadu_ps, _mm256_storeu_ps,
    };

    /// # Safety
    /// The CPU must have F16C and AVX.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn widen(src: &[f16], dst: &mut [MaybeUninit<f32>]) {
        let n = src.len().min(dst.len());
        let whole = n / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= whole <= both lengths; unaligned loads and stores.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i).cast(), _mm256_cvtph_ps(h));
            }
        }
        for i in whole..n {
            dst[i].write(src[i].to_f32());
        }
    }

    /// # Safety
    /// The CPU must have F16C and AVX.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn narrow(src: &[f32], dst: &mut [MaybeUninit<f16>]) {
        // Round to nearest, ties to even (the immediate's 0), as `f16::from_f32`.
        const NEAREST: i32 = 0;
        let n = src.len().min(dst.len());
        let whole = n / 8 * 8;
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= whole <= both lengths; unaligned loads and stores.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<NEAREST>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast::<__m128i>(), h);
            }
        }
        for i in whole..n {
            dst[i].write(f16::from_f32(src[i]));
        }
    }
}

/// The arithmetic of an elementwise kernel, in f32 (also for f16 and bf16) and f64; unary
/// kernels ignore `b`.
trait Kernel: Sync {
    fn f32(&self, a: f32, b: f32) -> f32;
    fn f64(&self, a: f64, b: f64) -> f64;
}

/// A float storage element: `zip` writes `k(a[i], b[i])` into `out[i]`.
trait Elem: Copy + Send + Sync + 'static {
    fn zip<K: Kernel>(k: &K, a: &[Self], b: &[Self], out: &mut [MaybeUninit<Self>]);
}

impl Elem for f32 {
    #[inline(always)]
    fn zip<K: Kernel>(k: &K, a: &[f32], b: &[f32], out: &mut [MaybeUninit<f32>]) {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            o.write(k.f32(a, b));
        }
    }
}

impl Elem for f64 {
    #[inline(always)]
    fn zip<K: Kernel>(k: &K, a: &[f64], b: &[f64], out: &mut [MaybeUninit<f64>]) {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            o.write(k.f64(a, b));
        }
    }
}

/// f16 and bf16: blocks widened to f32, computed, rounded.
#[inline(always)]
fn zip_half<H: Half, K: Kernel>(k: &K, a: &[H], b: &[H], out: &mut [MaybeUninit<H>]) {
    const BLOCK: usize = 256;
    let (mut wa, mut wb) = ([0f32; BLOCK], [0f32; BLOCK]);
    for ((a, b), out) in a
        .chunks(BLOCK)
        .zip(b.chunks(BLOCK))
        .zip(out.chunks_mut(BLOCK))
    {
        let n = a.len();
        H::widen(a, &mut wa[..n]);
        H::widen(b, &mut wb[..n]);
        for (x, &y) in wa[..n].iter_mut().zip(&wb[..n]) {
            *x = k.f32(*x, y);
        }
        H::narrow_into(&wa[..n], out);
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn zip<K: Kernel>(k: &K, a: &[f16], b: &[f16], out: &mut [MaybeUninit<f16>]) {
        zip_half(k, a, b, out)
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn zip<K: Kernel>(k: &K, a: &[bf16], b: &[bf16], out: &mut [MaybeUninit<bf16>]) {
        zip_half(k, a, b, out)
    }
}

/// [`Elem::zip`] compiled for AVX2 when the CPU has it (the build targets baseline x86-64,
/// whose 4-wide SSE2 halves the speed of the tanh kernel); the same IEEE operations either way.
fn zip<T: Elem, K: Kernel>(k: &K, a: &[T], b: &[T], out: &mut [MaybeUninit<T>]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2<T: Elem, K: Kernel>(k: &K, a: &[T], b: &[T], out: &mut [MaybeUninit<T>]) {
            T::zip(k, a, b, out)
        }
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { avx2(k, a, b, out) };
    }
    T::zip(k, a, b, out)
}

/// The types kernels compute in (f16 and bf16 compute in f32): `update` overwrites `a[i]` with
/// `k(a[i], b[i])`, or with `k(a[i], a[i])` when there is no `b` (a unary kernel).
trait Wide: Copy + Send + Sync + 'static {
    fn update<K: Kernel>(k: &K, a: &mut [Self], b: Option<&[Self]>);
}

impl Wide for f32 {
    #[inline(always)]
    fn update<K: Kernel>(k: &K, a: &mut [f32], b: Option<&[f32]>) {
        match b {
            Some(b) => a.iter_mut().zip(b).for_each(|(x, &y)| *x = k.f32(*x, y)),
            None => a.iter_mut().for_each(|x| *x = k.f32(*x, *x)),
        }
    }
}

impl Wide for f64 {
    #[inline(always)]
    fn update<K: Kernel>(k: &K, a: &mut [f64], b: Option<&[f64]>) {
        match b {
            Some(b) => a.iter_mut().zip(b).for_each(|(x, &y)| *x = k.f64(*x, y)),
            None => a.iter_mut().for_each(|x| *x = k.f64(*x, *x)),
        }
    }
}

/// [`Wide::update`], compiled for AVX2 when the CPU has it (as [`zip`]).
fn update<W: Wide, K: Kernel>(k: &K, a: &mut [W], b: Option<&[W]>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2<W: Wide, K: Kernel>(k: &K, a: &mut [W], b: Option<&[W]>) {
            W::update(k, a, b)
        }
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { avx2(k, a, b) };
    }
    W::update(k, a, b)
}

/// `k(a, b)` elementwise into a new vector, where `b` is as long as `a` or is one row that
/// repeats along it (a bias); in chunks of whole rows, on the pool when `parallel`.
fn map<T: Elem, K: Kernel>(k: &K, a: &[T], b: &[T], parallel: bool) -> Vec<T> {
    let same = b.len() == a.len();
    let row = if same { 1 } else { b.len().max(1) };
    let chunk = (ELEMENT_TASK / row).max(1) * row;
    let mut out = Vec::with_capacity(a.len());
    let work = |(c, out): (usize, &mut [MaybeUninit<T>])| {
        let at = c * chunk;
        let a = &a[at..at + out.len()];
        if same {
            zip(k, a, &b[at..at + out.len()], out);
        } else {
            for (a, out) in a.chunks(row).zip(out.chunks_mut(row)) {
                zip(k, a, b, out);
            }
        }
    };
    let spare = &mut out.spare_capacity_mut()[..a.len()];
    if parallel {
        spare.par_chunks_mut(chunk).enumerate().for_each(work);
    } else {
        spare.chunks_mut(chunk).enumerate().for_each(work);
    }
    // SAFETY: every element below a.len() was written by one chunk above.
    unsafe { out.set_len(a.len()) };
    out
}

/// `src` converted into a new vector by `convert` (which writes every value of its
/// destination, as long as its source), on the pool when large.
fn converted<S: Copy + Sync, D: Copy + Send>(
    src: &[S],
    convert: impl Fn(&[S], &mut [MaybeUninit<D>]) + Sync,
) -> Vec<D> {
    let mut out = Vec::with_capacity(src.len());
    let work = |(c, out): (usize, &mut [MaybeUninit<D>])| {
        convert(&src[c * ELEMENT_TASK..][..out.len()], out);
    };
    let spare = &mut out.spare_capacity_mut()[..src.len()];
    if tasks(src.len(), ELEMENT_TASK) > 1 {
        spare
            .par_chunks_mut(ELEMENT_TASK)
            .enumerate()
            .for_each(work);
    } else {
        spare.chunks_mut(ELEMENT_TASK).enumerate().for_each(work);
    }
    // SAFETY: every element below src.len() was written by `convert` in one chunk above.
    unsafe { out.set_len(src.len()) };
    out
}

/// [`map`] on two storages of one float dtype; the result has `a`'s layout made contiguous.
fn map_storage<K: Kernel>(
    k: &K,
    a: &CpuStorage,
    al: &Layout,
    b: &CpuStorage,
    bl: &Layout,
) -> Result<CpuStorage> {
    use CpuStorage as S;
    let p = tasks(al.shape().elem_count(), ELEMENT_TASK) > 1;
    Ok(match (a, b) {
        (S::F32(a), S::F32(b)) => S::F32(map(k, contiguous(a, al)?, contiguous(b, bl)?, p)),
        (S::F64(a), S::F64(b)) => S::F64(map(k, contiguous(a, al)?, contiguous(b, bl)?, p)),
        (S::F16(a), S::F16(b)) => S::F16(map(k, contiguous(a, al)?, contiguous(b, bl)?, p)),
        (S::BF16(a), S::BF16(b)) => S::BF16(map(k, contiguous(a, al)?, contiguous(b, bl)?, p)),
        _ => return float_only(),
    })
}

/// tanh for f32 as a rational function (Eigen's `generic_fast_tanh_float`), a few ulp from the
/// correctly rounded value; branch-free so the loop vectorises.
#[inline(always)]
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

struct TanhKernel;

impl Kernel for TanhKernel {
    #[inline(always)]
    fn f32(&self, x: f32, _: f32) -> f32 {
        tanh_f32(x)
    }
    #[inline(always)]
    fn f64(&self, x: f64, _: f64) -> f64 {
        x.tanh()
    }
}

/// tanh with its backward fused into one pass over (gradient, result).
#[derive(Debug, Clone, Copy)]
pub struct Tanh;

impl CustomOp1 for Tanh {
    fn name(&self) -> &'static str {
        "tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((map_storage(&TanhKernel, s, l, s, l)?, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(tanh_backward(grad, res)?))
    }
}

/// `g * (1 - y²)`: the gradient `g` of a tanh's result `y` carried to its argument.
pub fn tanh_backward(g: &Tensor, y: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op2(&y.contiguous()?, TanhBackward)
}

struct TanhBackwardKernel;

impl Kernel for TanhBackwardKernel {
    #[inline(always)]
    fn f32(&self, g: f32, y: f32) -> f32 {
        g * (1.0 - y * y)
    }
    #[inline(always)]
    fn f64(&self, g: f64, y: f64) -> f64 {
        g * (1.0 - y * y)
    }
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
        let out = map_storage(&TanhBackwardKernel, g, gl, y, yl)?;
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

struct AddKernel;

impl Kernel for AddKernel {
    #[inline(always)]
    fn f32(&self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn f64(&self, a: f64, b: f64) -> f64 {
        a + b
    }
}

/// `x + b` where `b`'s shape is the trailing part of `x`'s (a bias). The backward sums the
/// gradient over the leading axes with [`ColumnSum`].
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
        Ok((map_storage(&AddKernel, x, xl, b, bl)?, xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // A bias of any shape: the gradient's rows are runs of `b`'s elements.
        let db = grad
            .contiguous()?
            .reshape(((), b.elem_count()))?
            .apply_op1(ColumnSum)?
            .reshape(b.shape())?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// The sums of a `[rows, n]` tensor's columns (its last axis is `n`, every other a row), as a
/// `[n]` vector. Rows are summed in fixed blocks whose partial sums are added in order, so the
/// result does not depend on the thread count; f16 and bf16 accumulate in f32 and round once,
/// as a matmul with a row of ones would.
#[derive(Debug, Clone, Copy)]
pub struct ColumnSum;

/// Sums `[rows, n]` row-major `x` over its rows into `n` accumulators of type `W`, the blocks
/// on the pool when `parallel`.
fn column_sums<T: Copy + Send + Sync, W: Copy + Default + Send + std::ops::AddAssign>(
    x: &[T],
    n: usize,
    widen: impl Fn(&[T], &mut [W]) + Sync,
    parallel: bool,
) -> Vec<W> {
    let block = (ELEMENT_TASK / n).max(1) * n;
    let sum_block = |rows: &[T]| {
        let (mut acc, mut wide) = (vec![W::default(); n], vec![W::default(); n]);
        for row in rows.chunks(n) {
            widen(row, &mut wide);
            for (a, &w) in acc.iter_mut().zip(&wide) {
                *a += w;
            }
        }
        acc
    };
    let partials: Vec<Vec<W>> = if parallel {
        x.par_chunks(block).map(sum_block).collect()
    } else {
        x.chunks(block).map(sum_block).collect()
    };
    let mut total = vec![W::default(); n];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

fn copy<T: Copy>(x: &[T], wide: &mut [T]) {
    wide.copy_from_slice(x)
}

fn widen<H: Half>(x: &[H], wide: &mut [f32]) {
    H::widen(x, wide)
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        use CpuStorage as S;
        let n = l.dims().last().copied().unwrap_or(1);
        let p = tasks(l.shape().elem_count(), ELEMENT_TASK) > 1;
        let out = match s {
            S::F32(x) => S::F32(column_sums(contiguous(x, l)?, n, copy, p)),
            S::F64(x) => S::F64(column_sums(contiguous(x, l)?, n, copy, p)),
            S::F16(x) => {
                let sums = column_sums(contiguous(x, l)?, n, widen, p);
                S::F16(sums.iter().map(|&v| f16::from_f32(v)).collect())
            }
            S::BF16(x) => {
                let sums = column_sums(contiguous(x, l)?, n, widen, p);
                S::BF16(sums.iter().map(|&v| bf16::from_f32(v)).collect())
            }
            _ => return float_only(),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.broadcast_as(arg.shape())?.contiguous()?))
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

/// A 2-D matmul that computes in backward only the gradients that are needed (candle's own
/// always computes both sides, so `X @ W` with data `X` paid for a full gradient of `X`).
#[derive(Debug, Clone, Copy)]
pub struct MatMul {
    pub lhs_grad: bool,
    pub rhs_grad: bool,
}

/// A 2-D operand as gemm reads it: the slice from its first element, and its row and column
/// strides (a transposed view is read in place).
struct Operand<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T: Copy> Operand<'a, T> {
    fn new(data: &'a [T], layout: &Layout) -> Result<Self> {
        let (rows, cols) = layout.shape().dims2()?;
        let (row_stride, col_stride) = match layout.stride() {
            &[r, c] => (r, c),
            _ => return float_only(),
        };
        // The span of elements it reads: up to the last row's last column.
        let span = if rows * cols == 0 {
            0
        } else {
            (rows - 1) * row_stride + (cols - 1) * col_stride + 1
        };
        let start = layout.start_offset();
        let data = data
            .get(start..start + span)
            .ok_or_else(|| candle_core::Error::Msg("matmul operand out of bounds".into()))?;
        Ok(Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// Rows `row..row + rows` of it.
    fn rows_from(&self, row: usize, rows: usize) -> Operand<'a, T> {
        let start = row * self.row_stride;
        Operand {
            data: &self.data[start.min(self.data.len())..],
            rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    /// Its elements widened to f32 (f16, bf16), for [`Operand::over`].
    fn widened(&self) -> Vec<f32>
    where
        T: Half,
    {
        T::widened(self.data)
    }

    /// The same shape and strides over other elements (its widened ones).
    fn over<'b, U>(&self, data: &'b [U]) -> Operand<'b, U> {
        Operand {
            data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }
}

/// The fewest rows of one task when [`gemm_into`] splits a product by rows: each task packs its
/// own copy of the right side, cheap next to its share of the product, and runs gemm's main
/// kernels, whose sums over k go in the same order as for the whole product (fewer rows could
/// take gemm's small-matrix path, which sums in another), so the split changes no number.
const GEMM_ROWS: usize = 256;

/// One gemm call writing `a @ b` into `dst`, an `a.rows` x `b.cols` row-major block.
fn gemm_call<T: Copy + 'static>(
    a: &Operand<T>,
    b: &Operand<T>,
    dst: &mut [T],
    zero: T,
    one: T,
    par: gemm::Parallelism,
) {
    debug_assert_eq!(dst.len(), a.rows * b.cols);
    // SAFETY: `a` is rows x cols and `b` cols x n with the strides given, each within its slice
    // (checked in `Operand::new`/`Operand::rows`); `dst` is rows x n row-major; gemm reads and
    // writes only within those.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst.as_mut_ptr(),
            1,
            b.cols as isize,
            false,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            zero,
            one,
            false,
            false,
            false,
            par,
        );
    }
}

/// What runs on each block of rows a product wrote, while it is still in cache (a dense
/// layer's bias and tanh; nothing for a plain matmul); also an f16/bf16 rounding in place.
type Finish<'a, T> = &'a (dyn Fn(&mut [T]) + Sync);

/// `a @ b` into a new row-major vector, on `threads` threads of the pool, with `finish` run on
/// each block of whole rows. A tall product is split by rows into tasks the pool's threads take
/// as they come free (gemm's own split gives each thread a fixed share, so the product waits
/// for the slowest, and on a busy machine for one the scheduler has not run); a short one (a
/// weight gradient, `Xᵀ g`) is split by gemm.
fn gemm_into<T: Copy + Send + Sync + 'static>(
    a: &Operand<T>,
    b: &Operand<T>,
    (zero, one): (T, T),
    threads: usize,
    finish: Finish<T>,
) -> Vec<T> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if threads < 2 || m < 2 * GEMM_ROWS || n < 2 || k < 3 {
        // Filled, not allocated zeroed: a large zeroed block is a fresh mapping (`alloc`),
        // which the product would fault in page by page.
        let mut out = Vec::with_capacity(m * n);
        out.resize(m * n, zero);
        let par = match threads {
            0 | 1 => gemm::Parallelism::None,
            t => gemm::Parallelism::Rayon(t),
        };
        gemm_call(a, b, &mut out, zero, one, par);
        finish(&mut out);
        return out;
    }
    let mut out = Vec::with_capacity(m * n);
    // Four blocks a thread (an idle thread takes the next; each block packs its own copy of
    // `b`, so more of them cost more), of at least GEMM_ROWS rows; the last takes the remainder.
    let block = (m / (4 * threads)).max(GEMM_ROWS);
    let mut parts = Vec::new();
    let mut rest = &mut out.spare_capacity_mut()[..m * n];
    let mut row = 0;
    while row < m {
        let rows = if m - row < 2 * block { m - row } else { block };
        let (part, tail) = rest.split_at_mut(rows * n);
        parts.push((a.rows_from(row, rows), part));
        rest = tail;
        row += rows;
    }
    parts.into_par_iter().for_each(|(a, part)| {
        for x in part.iter_mut() {
            x.write(zero);
        }
        // SAFETY: every element of `part` was just written.
        let part = unsafe { &mut *(part as *mut [MaybeUninit<T>] as *mut [T]) };
        gemm_call(&a, b, part, zero, one, gemm::Parallelism::None);
        finish(part);
    });
    // SAFETY: the parts cover all m * n elements, and each was written above.
    unsafe { out.set_len(m * n) };
    out
}

/// [`gemm_into`] for f16 and bf16: both operands widened to f32, `finish` run in f32, the
/// result rounded once.
fn gemm_half<H: Half>(
    a: &Operand<H>,
    b: &Operand<H>,
    threads: usize,
    finish: Finish<f32>,
) -> Vec<H> {
    let (wa, wb) = (a.widened(), b.widened());
    let wide = gemm_into(&a.over(&wa), &b.over(&wb), (0.0, 1.0), threads, finish);
    converted(&wide, H::narrow_into)
}

/// Rounds f32 values to `H` and back in place: an f16/bf16 op's result, computed in f32.
fn round_through<H: Half>(values: &mut [f32]) {
    let mut h = [H::default(); 256];
    for block in values.chunks_mut(256) {
        let h = &mut h[..block.len()];
        H::narrow(block, h);
        H::widen(h, block);
    }
}

/// A product's threads: the pool's when it fills two tasks, else 1.
fn product_threads(m: usize, k: usize, n: usize) -> usize {
    match tasks(m * k * n, MATMUL_TASK) {
        0 | 1 => 1,
        _ => super::threads::count(),
    }
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
        use CpuStorage as S;
        let (m, k) = al.shape().dims2()?;
        let (_, n) = bl.shape().dims2()?;
        let t = product_threads(m, k, n);
        let out = match (a, b) {
            (S::F32(a), S::F32(b)) => {
                let (a, b) = (&Operand::new(a, al)?, &Operand::new(b, bl)?);
                S::F32(gemm_into(a, b, (0.0, 1.0), t, &|_| {}))
            }
            (S::F64(a), S::F64(b)) => {
                let (a, b) = (&Operand::new(a, al)?, &Operand::new(b, bl)?);
                S::F64(gemm_into(a, b, (0.0, 1.0), t, &|_| {}))
            }
            (S::F16(a), S::F16(b)) => S::F16(gemm_half(
                &Operand::new(a, al)?,
                &Operand::new(b, bl)?,
                t,
                &|_| {},
            )),
            (S::BF16(a), S::BF16(b)) => S::BF16(gemm_half(
                &Operand::new(a, al)?,
                &Operand::new(b, bl)?,
                t,
                &|_| {},
            )),
            _ => return float_only(),
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
        let both = MatMul {
            lhs_grad: true,
            rhs_grad: true,
        };
        let da = match self.lhs_grad {
            true => Some(grad.apply_op2(&b.t()?, both)?),
            false => None,
        };
        let db = match self.rhs_grad {
            true => Some(a.t()?.apply_op2(grad, both)?),
            false => None,
        };
        Ok((da, db))
    }
}

/// `a @ b` for 2-D operands of one float dtype through [`MatMul`], which computes the
/// gradients of only the sides that carry one.
pub fn matmul_2d(a: &Tensor, b: &Tensor, lhs_grad: bool, rhs_grad: bool) -> Result<Tensor> {
    match a.dtype() {
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
            a.apply_op2(b, MatMul { lhs_grad, rhs_grad })
        }
        _ => a.matmul(b),
    }
}

/// A dense layer, `x @ W`, then `+ b` (over the columns) when there is a `b`, then tanh when
/// `tanh`, as one op: gemm writes a block of rows and the bias and tanh run on it while it is
/// still in cache (one pass over the output instead of three, one task a block). Each op's
/// result is rounded to the dtype as the ops one by one round it, so the values are theirs.
#[derive(Debug, Clone, Copy)]
pub struct Dense {
    pub tanh: bool,
    /// Whether `x` needs a gradient.
    pub x_grad: bool,
}

impl Dense {
    fn fwd(
        &self,
        (x, xl): (&CpuStorage, &Layout),
        (w, wl): (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        use CpuStorage as S;
        let (m, k) = xl.shape().dims2()?;
        let (_, n) = wl.shape().dims2()?;
        let t = product_threads(m, k, n);
        let tanh = self.tanh;
        let out = match (x, w, b) {
            (S::F32(x), S::F32(w), None | Some((S::F32(_), _))) => {
                S::F32(dense_wide(x, xl, w, wl, b, t, tanh)?)
            }
            (S::F64(x), S::F64(w), None | Some((S::F64(_), _))) => {
                S::F64(dense_wide(x, xl, w, wl, b, t, tanh)?)
            }
            (S::F16(x), S::F16(w), None | Some((S::F16(_), _))) => {
                S::F16(dense_half(x, xl, w, wl, b, t, tanh)?)
            }
            (S::BF16(x), S::BF16(w), None | Some((S::BF16(_), _))) => {
                S::BF16(dense_half(x, xl, w, wl, b, t, tanh)?)
            }
            _ => return float_only(),
        };
        Ok((out, Shape::from((m, n))))
    }

    /// The gradients of x, W and b: made of differentiable ops, for second derivatives (a
    /// chain's node computes the first ones itself, `dense`).
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let both = MatMul {
            lhs_grad: true,
            rhs_grad: true,
        };
        let g = match self.tanh {
            true => tanh_backward(grad, res)?,
            false => grad.clone(),
        };
        let dx = match self.x_grad {
            true => Some(g.apply_op2(&w.t()?, both)?),
            false => None,
        };
        let dw = x.t()?.apply_op2(&g, both)?;
        let db = b
            .map(|_| g.contiguous()?.apply_op1(ColumnSum))
            .transpose()?;
        Ok((dx, Some(dw), db))
    }
}

/// A dense layer's rows in f32 or f64: gemm with the bias and tanh run on each block of rows.
fn dense_wide<W: Wide + candle_core::WithDType>(
    x: &[W],
    xl: &Layout,
    w: &[W],
    wl: &Layout,
    b: Option<(&CpuStorage, &Layout)>,
    threads: usize,
    tanh: bool,
) -> Result<Vec<W>> {
    let n = wl.shape().dims2()?.1;
    let bias = b.map(|(b, l)| b.as_slice::<W>().and_then(|b| contiguous(b, l)));
    let bias = bias.transpose()?;
    let finish = |rows: &mut [W]| finish_rows(rows, n, bias, tanh, None);
    let units = (W::from_f64(0.0), W::from_f64(1.0));
    Ok(gemm_into(
        &Operand::new(x, xl)?,
        &Operand::new(w, wl)?,
        units,
        threads,
        &finish,
    ))
}

/// [`dense_wide`] for f16 and bf16: in f32, each result rounded as the ops one by one round it.
fn dense_half<H: Half + candle_core::WithDType>(
    x: &[H],
    xl: &Layout,
    w: &[H],
    wl: &Layout,
    b: Option<(&CpuStorage, &Layout)>,
    threads: usize,
    tanh: bool,
) -> Result<Vec<H>> {
    let n = wl.shape().dims2()?.1;
    let bias = b.map(|(b, l)| b.as_slice::<H>().and_then(|b| contiguous(b, l)));
    let bias: Option<Vec<f32>> = bias.transpose()?.map(H::widened);
    let round: Finish<f32> = &round_through::<H>;
    let finish = |rows: &mut [f32]| finish_rows(rows, n, bias.as_deref(), tanh, Some(round));
    Ok(gemm_half(
        &Operand::new(x, xl)?,
        &Operand::new(w, wl)?,
        threads,
        &finish,
    ))
}

/// A dense layer's bias and tanh on whole rows of `n` values a product just wrote; `round`
/// rounds f32 values to an f16/bf16 run's dtype after each op (the product's result first).
fn finish_rows<W: Wide>(
    rows: &mut [W],
    n: usize,
    bias: Option<&[W]>,
    tanh: bool,
    round: Option<Finish<W>>,
) {
    let round = |v: &mut [W]| round.iter().for_each(|r| r(v));
    round(rows);
    if let Some(b) = bias {
        for row in rows.chunks_mut(n.max(1)) {
            update(&AddKernel, row, Some(b));
        }
        round(rows);
    }
    if tanh {
        update(&TanhKernel, rows, None);
    }
}

impl CustomOp2 for Dense {
    fn name(&self) -> &'static str {
        "dense"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd((x, xl), (w, wl), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, None, res, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Dense {
    fn name(&self) -> &'static str {
        "dense"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd((x, xl), (w, wl), Some((b, bl)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, Some(b), res, grad)
    }
}

/// `x @ W (+ b) (then tanh)` through [`Dense`], for 2-D `x` and `W` and a `b` of W's width.
pub fn dense(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    tanh: bool,
    x_grad: bool,
) -> Result<Tensor> {
    let op = Dense { tanh, x_grad };
    match b {
        Some(b) => x.apply_op3(w, &b.contiguous()?, op),
        None => x.apply_op2(w, op),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

    /// Deterministic values in [-3, 3) of `shape`, in `dtype`.
    fn values(shape: &[usize], seed: f64, dtype: DType) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| ((i as f64 * 0.618_034 + seed).fract()) * 6.0 - 3.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.to_vec1())
            .unwrap()
    }

    /// The same computation in f32, rounded once to `dtype` (what f16/bf16 kernels promise).
    fn via_f32(t: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>, dtype: DType) -> Tensor {
        f(&t.to_dtype(DType::F32).unwrap())
            .and_then(|r| r.to_dtype(dtype))
            .unwrap()
    }

    #[test]
    fn whole_slice_half_conversions_are_halfs_bit_for_bit() {
        conversions_are_halfs(
            f16::from_bits,
            f16::to_bits,
            f16::to_f32,
            f16::from_f32,
            65520.0,
        );
        conversions_are_halfs(
            bf16::from_bits,
            bf16::to_bits,
            bf16::to_f32,
            bf16::from_f32,
            3.395e38,
        );
    }

    /// Every value widened; and f32s around every 7th value (halfway points, just off them,
    /// subnormals, overflow, infinities, NaN) rounded back. Lengths that leave a tail.
    fn conversions_are_halfs<H: Half + PartialEq + std::fmt::Debug>(
        from_bits: fn(u16) -> H,
        to_bits: fn(H) -> u16,
        to_f32: fn(H) -> f32,
        from_f32: fn(f32) -> H,
        overflow: f32,
    ) {
        let every: Vec<H> = (0..=u16::MAX).map(from_bits).collect();
        let mut wide = vec![0f32; every.len()];
        H::widen(&every, &mut wide);
        for (&h, w) in every.iter().zip(&wide) {
            assert_eq!(w.to_bits(), to_f32(h).to_bits(), "{h:?}");
        }
        let mut xs: Vec<f32> = Vec::new();
        for &h in every.iter().step_by(7) {
            let x = to_f32(h);
            let next = to_f32(from_bits(to_bits(h).wrapping_add(1)));
            let mid = (x + next) / 2.0;
            xs.extend([x, mid, f32::from_bits(mid.to_bits().wrapping_add(1)), next]);
        }
        xs.extend([
            1e-8,
            -1e-8,
            overflow,
            -overflow,
            1e10,
            f32::INFINITY,
            f32::NAN,
            3.0,
        ]);
        let mut narrow = vec![H::default(); xs.len()];
        H::narrow(&xs, &mut narrow);
        for (x, &h) in xs.iter().zip(&narrow) {
            match x.is_nan() {
                true => assert!(to_f32(h).is_nan()),
                false => assert_eq!(to_bits(h), to_bits(from_f32(*x)), "{x}"),
            }
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

    #[test]
    fn bias_add_equals_candles_broadcast_add_in_every_dtype() {
        // [300, 257] is more than two tasks: the pool's chunking is exercised where it has one.
        for dtype in DTYPES {
            let (x, b) = (values(&[300, 257], 0.1, dtype), values(&[257], 0.7, dtype));
            let want = x.broadcast_add(&b).unwrap();
            assert_eq!(flat(&bias_add(&x, &b).unwrap()), flat(&want), "{dtype:?}");
            // A bias as long as a row of one column, and as the whole tensor.
            let (x1, b1) = (values(&[40, 1], 0.2, dtype), values(&[1], 0.3, dtype));
            let want = x1.broadcast_add(&b1).unwrap();
            assert_eq!(flat(&bias_add(&x1, &b1).unwrap()), flat(&want), "{dtype:?}");
            let same = values(&[40, 1], 0.4, dtype);
            let want = x1.add(&same).unwrap();
            assert_eq!(
                flat(&bias_add(&x1, &same).unwrap()),
                flat(&want),
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn tanh_is_candles_in_f64_and_the_fast_f32_kernel_rounded_once_below() {
        let x = values(&[300, 257], 0.3, DType::F64);
        assert_eq!(flat(&tanh(&x).unwrap()), flat(&x.tanh().unwrap()));
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let x = values(&[300, 257], 0.3, dtype);
            let fast: Vec<f32> = flat(&x).iter().map(|&v| tanh_f32(v as f32)).collect();
            let want = Tensor::from_vec(fast, x.shape(), &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap();
            assert_eq!(flat(&tanh(&x).unwrap()), flat(&want), "{dtype:?}");
        }
    }

    /// `sum(y * c)` for `y = f(vars)`, and the gradients of `vars`.
    fn grads_of(
        vars: &[&Var],
        f: impl Fn(&[&Tensor]) -> Result<Tensor>,
        c: &Tensor,
    ) -> Vec<Tensor> {
        let ts: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
        let store = f(&ts)
            .unwrap()
            .mul(c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        vars.iter()
            .map(|v| store.get(v.as_tensor()).unwrap().clone())
            .collect()
    }

    #[test]
    fn tanh_backward_equals_candles_ops() {
        // dL/dx = c (1 - tanh(x)²), with y = tanh(x) as the fused op gives it.
        for dtype in DTYPES {
            let x = Var::from_tensor(&values(&[300, 257], 0.3, dtype)).unwrap();
            let c = values(&[300, 257], 0.9, dtype);
            let got = grads_of(&[&x], |t| tanh(t[0]), &c);
            let y = tanh(x.as_tensor()).unwrap();
            let plain = |y: &Tensor, c: &Tensor| c.mul(&y.sqr()?.affine(-1.0, 1.0)?);
            let want = match dtype {
                DType::F32 | DType::F64 => plain(&y, &c).unwrap(),
                _ => via_f32(&y, |y| plain(y, &c.to_dtype(DType::F32)?), dtype),
            };
            assert_eq!(flat(&got[0]), flat(&want), "{dtype:?}");
        }
    }

    #[test]
    fn bias_add_backward_sums_the_gradient_over_rows() {
        // dL/dx = c, dL/db = sum of c over rows: candle's sum in f32/f64 up to the order of the
        // additions, and in f32 rounded once for f16/bf16.
        for dtype in DTYPES {
            let x = Var::from_tensor(&values(&[3000, 33], 0.1, dtype)).unwrap();
            let b = Var::from_tensor(&values(&[33], 0.5, dtype)).unwrap();
            let c = values(&[3000, 33], 0.9, dtype);
            let got = grads_of(&[&x, &b], |t| bias_add(t[0], t[1]), &c);
            assert_eq!(flat(&got[0]), flat(&c), "{dtype:?}");
            let want = match dtype {
                DType::F32 | DType::F64 => flat(&c.sum(0).unwrap()),
                _ => flat(&via_f32(&c, |c| c.sum(0), dtype)),
            };
            let tolerance = match dtype {
                DType::F64 => 1e-13,
                DType::F32 => 1e-5,
                // One rounding of the dtype, where the f32 sums round to either side.
                DType::F16 => 1e-3,
                _ => 8e-3,
            };
            for (g, w) in flat(&got[1]).iter().zip(&want) {
                assert!(
                    (g - w).abs() <= tolerance * w.abs().max(1.0),
                    "{dtype:?}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn matmul_equals_candles_in_f32_and_f64_and_its_f32_result_rounded_once_below() {
        for dtype in DTYPES {
            let (a, b) = (
                values(&[300, 70], 0.1, dtype),
                values(&[70, 90], 0.4, dtype),
            );
            // Also read transposed in place: a 70 x 300 tensor's transpose.
            let at = values(&[70, 300], 0.2, dtype).t().unwrap();
            for (l, r) in [(&a, &b), (&at, &b)] {
                let got = matmul_2d(l, r, true, true).unwrap();
                let want = match dtype {
                    DType::F32 | DType::F64 => l.matmul(r).unwrap(),
                    _ => via_f32(l, |l| l.matmul(&r.to_dtype(DType::F32)?), dtype),
                };
                assert_eq!(flat(&got), flat(&want), "{dtype:?}");
            }
        }
    }

    #[test]
    fn matmul_backward_computes_the_gradients_asked_for_as_candle_does() {
        // dL/da = c bᵀ, dL/db = aᵀ c.
        for dtype in DTYPES {
            let a = Var::from_tensor(&values(&[300, 70], 0.1, dtype)).unwrap();
            let b = Var::from_tensor(&values(&[70, 90], 0.4, dtype)).unwrap();
            let c = values(&[300, 90], 0.9, dtype);
            let got = grads_of(&[&a, &b], |t| matmul_2d(t[0], t[1], true, true), &c);
            let (at, bt) = (a.as_tensor(), b.as_tensor());
            let want = match dtype {
                DType::F32 | DType::F64 => grads_of(&[&a, &b], |t| t[0].matmul(t[1]), &c),
                _ => vec![
                    via_f32(&c, |c| c.matmul(&bt.to_dtype(DType::F32)?.t()?), dtype),
                    via_f32(at, |a| a.t()?.matmul(&c.to_dtype(DType::F32)?), dtype),
                ],
            };
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(flat(g), flat(w), "{dtype:?}");
            }
            // Only the side asked for: the data side gets no gradient at all.
            let ts = [a.as_tensor(), b.as_tensor()];
            let out = matmul_2d(ts[0], ts[1], false, true).unwrap();
            let store = out.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(store.get(ts[0]).is_none(), "{dtype:?}");
            assert_eq!(flat(store.get(ts[1]).unwrap()), flat(&want[1]), "{dtype:?}");
        }
    }

    #[test]
    fn the_pool_changes_no_result() {
        // Elementwise chunks, column-sum blocks and gemm's tasks: the same bits on 1 thread as
        // on several.
        let x: Vec<f32> = flat(&values(&[300, 257], 0.3, DType::F32))
            .iter()
            .map(|&v| v as f32)
            .collect();
        let b = &x[..257];
        assert_eq!(map(&AddKernel, &x, b, true), map(&AddKernel, &x, b, false));
        assert_eq!(
            map(&TanhKernel, &x, &x, true),
            map(&TanhKernel, &x, &x, false)
        );
        assert_eq!(
            column_sums(&x, 257, copy, true),
            column_sums(&x, 257, copy, false)
        );
        // A short product split by gemm, a tall one split by rows (also read transposed).
        let matrix = |shape: &[usize], seed| {
            let t = values(shape, seed, DType::F32);
            t.to_vec2::<f32>().unwrap().concat()
        };
        let op = |data, rows, cols, row_stride, col_stride| Operand {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        };
        let (short, b700) = (matrix(&[300, 700], 0.1), matrix(&[700, 90], 0.4));
        let (tall, b70) = (matrix(&[1300, 70], 0.2), matrix(&[70, 90], 0.5));
        let transposed = matrix(&[70, 1300], 0.6);
        for (a, b) in [
            (op(&short, 300, 700, 700, 1), op(&b700, 700, 90, 90, 1)),
            (op(&tall, 1300, 70, 70, 1), op(&b70, 70, 90, 90, 1)),
            (op(&transposed, 1300, 70, 1, 1300), op(&b70, 70, 90, 90, 1)),
        ] {
            // With a dense layer's bias and tanh run on each block of rows.
            let bias: Vec<f32> = (0..90).map(|j| j as f32 / 50.0 - 1.0).collect();
            let layer = |rows: &mut [f32]| finish_rows(rows, 90, Some(&bias), true, None);
            let nothing = |_: &mut [f32]| {};
            let finishes: [Finish<f32>; 2] = [&nothing, &layer];
            for finish in finishes {
                let serial = gemm_into(&a, &b, (0.0, 1.0), 1, finish);
                assert_eq!(serial, gemm_into(&a, &b, (0.0, 1.0), 4, finish));
            }
        }
    }

    #[test]
    fn a_dense_layer_equals_its_ops_one_by_one_with_their_gradients() {
        // tanh(x @ W + b) and the variants without bias or tanh: the same values, and the
        // gradients its own backward gives (which second derivatives go through).
        for dtype in DTYPES {
            for (bias, tanh) in [(true, true), (true, false), (false, true), (false, false)] {
                let x = Var::from_tensor(&values(&[300, 70], 0.1, dtype)).unwrap();
                let w = Var::from_tensor(&values(&[70, 90], 0.4, dtype)).unwrap();
                let b = Var::from_tensor(&values(&[90], 0.7, dtype)).unwrap();
                let c = values(&[300, 90], 0.9, dtype);
                let fused = |t: &[&Tensor]| dense(t[0], t[1], bias.then(|| t[2]), tanh, true);
                let apart = |t: &[&Tensor]| {
                    let mut h = matmul_2d(t[0], t[1], true, true)?;
                    if bias {
                        h = bias_add(&h, t[2])?;
                    }
                    if tanh {
                        h = super::tanh(&h)?;
                    }
                    Ok(h)
                };
                let ts = [x.as_tensor(), w.as_tensor(), b.as_tensor()];
                let label = format!("{dtype:?} bias {bias} tanh {tanh}");
                assert_eq!(
                    flat(&fused(&ts).unwrap()),
                    flat(&apart(&ts).unwrap()),
                    "{label}"
                );
                let vars = if bias { vec![&x, &w, &b] } else { vec![&x, &w] };
                let got = grads_of(&vars, fused, &c);
                for (g, want) in got.iter().zip(grads_of(&vars, apart, &c)) {
                    assert_eq!(flat(g), flat(&want), "{label}");
                }
            }
        }
    }
}
