//! The lane kernel: products of a matrix that needs no gradient with one vector per lane (runs
//! of a loss file stepped together, see `lanes`; one lane for a run alone, see `matvec`), each
//! entry summed in one order whatever the number of lanes, the tiling and the CPU's registers.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::fused::{contiguous, float_only};

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

/// [`lane_vecmat`] plus a scalar per lane, `v @ m + b[r]` for lane r (`X @ w + b` for runs of a
/// linear model), as one op: candle's backward adds each `[R, k]` gradient it passes on into a
/// zeroed tensor, and the add of a per-lane bias passed on two (to the product and to the
/// broadcast bias). Each value is the add's (`x + b`, rounded once), and the bias's gradient
/// each row's sum as candle's broadcast sums it, so the numbers are those of the two ops.
pub fn lane_vecmat_bias(v: &Tensor, b: &Tensor, m: &Tensor, mt: &Tensor) -> Result<Tensor> {
    let op = VecMatBias { mt: mt.clone() };
    v.contiguous()?
        .apply_op3(&b.contiguous()?, &m.contiguous()?, op)
}

/// [`lane_vecmat_bias`] as an op on `(v, b, m)`, holding `mᵀ` for its backward pass.
#[derive(Debug, Clone)]
struct VecMatBias {
    mt: Tensor,
}

impl CustomOp3 for VecMatBias {
    fn name(&self) -> &'static str {
        "lane-vecmat-bias"
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
        fn add<T: Num>(out: &mut [T], b: &[T], k: usize) {
            for (row, &b) in out.chunks_exact_mut(k.max(1)).zip(b) {
                for x in row {
                    *x = *x + b;
                }
            }
        }
        let (mut out, d) = lane_product(v, vl, m, ml)?;
        if bl.shape().elem_count() != d.lanes {
            return Err(candle_core::Error::Msg(format!(
                "a lane product's bias of {:?} for {} lanes",
                bl.shape(),
                d.lanes
            )));
        }
        match (&mut out, b) {
            (CpuStorage::F32(out), CpuStorage::F32(b)) => add(out, contiguous(b, bl)?, d.k),
            (CpuStorage::F64(out), CpuStorage::F64(b)) => add(out, contiguous(b, bl)?, d.k),
            _ => return float_only(),
        }
        Ok((out, Shape::from((d.lanes, d.k))))
    }

    fn bwd(
        &self,
        _v: &Tensor,
        b: &Tensor,
        m: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // candle hands a broadcast's backward the sum of the gradients into zero: a copy.
        let grad = grad.contiguous()?;
        let dv = lane_vecmat(&grad, &self.mt, m)?;
        let db = grad.sum_keepdim(1)?.reshape(b.shape())?;
        Ok((Some(dv), Some(db), None))
    }
}

/// Lanes, rows and columns of a lane product, and whether the matrix is shared by the lanes.
#[derive(Debug, Clone, Copy)]
pub(super) struct LaneDims {
    pub(super) lanes: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) shared: bool,
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

/// The arithmetic of the lane kernel on f32 and f64: one by one, and in AVX2 and AVX-512
/// registers.
pub(super) trait Num:
    Send + Sync + Copy + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    /// `self * a + b`, rounded once.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// An AVX2 register of them.
    #[cfg(target_arch = "x86_64")]
    type V: Simd<Self>;
    /// An AVX-512 register of them.
    #[cfg(target_arch = "x86_64")]
    type V512: Simd<Self>;
}

/// A vector register of `T`s: what the kernels do with one.
#[cfg(target_arch = "x86_64")]
pub(super) trait Simd<T>: Copy {
    /// How many values it holds.
    const W: usize;
    /// How many such registers the CPU has (how large a tile of sums stays in them).
    const REGS: usize;
    /// # Safety
    /// The CPU must have the register's instruction set.
    unsafe fn zero() -> Self;
    /// # Safety
    /// The CPU must have the register's instruction set, and `p` address `W` values.
    unsafe fn load(p: *const T) -> Self;
    /// # Safety
    /// The CPU must have the register's instruction set.
    unsafe fn splat(x: T) -> Self;
    /// `a * b + c` lane by lane, rounded once (as [`Num::mul_add`]).
    ///
    /// # Safety
    /// The CPU must have the register's instruction set and FMA.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    /// # Safety
    /// The CPU must have the register's instruction set, and `p` address `W` values.
    unsafe fn store(p: *mut T, v: Self);
}

macro_rules! simd {
    ($t:ty, $v:ident, $w:expr, $regs:expr, $features:literal,
     $zero:ident, $load:ident, $splat:ident, $fma:ident, $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        impl Simd<$t> for std::arch::x86_64::$v {
            const W: usize = $w;
            const REGS: usize = $regs;
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn zero() -> Self {
                std::arch::x86_64::$zero()
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load(p: *const $t) -> Self {
                // SAFETY: `p` addresses W values (the caller's promise); unaligned load.
                unsafe { std::arch::x86_64::$load(p) }
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn splat(x: $t) -> Self {
                std::arch::x86_64::$splat(x)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
                std::arch::x86_64::$fma(a, b, c)
            }
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn store(p: *mut $t, v: Self) {
                // SAFETY: `p` addresses W values (the caller's promise); unaligned store.
                unsafe { std::arch::x86_64::$store(p, v) }
            }
        }
    };
}

simd!(
    f32,
    __m256,
    8,
    16,
    "avx2,fma",
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);
simd!(
    f64,
    __m256d,
    4,
    16,
    "avx2,fma",
    _mm256_setzero_pd,
    _mm256_loadu_pd,
    _mm256_set1_pd,
    _mm256_fmadd_pd,
    _mm256_storeu_pd
);
simd!(
    f32,
    __m512,
    16,
    32,
    "avx512f",
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);
simd!(
    f64,
    __m512d,
    8,
    32,
    "avx512f",
    _mm512_setzero_pd,
    _mm512_loadu_pd,
    _mm512_set1_pd,
    _mm512_fmadd_pd,
    _mm512_storeu_pd
);

macro_rules! num {
    ($t:ty, $v:ident, $v512:ident) => {
        impl Num for $t {
            #[inline(always)]
            fn mul_add(self, a: $t, b: $t) -> $t {
                <$t>::mul_add(self, a, b)
            }
            #[cfg(target_arch = "x86_64")]
            type V = std::arch::x86_64::$v;
            #[cfg(target_arch = "x86_64")]
            type V512 = std::arch::x86_64::$v512;
        }
    };
}

num!(f32, __m256, __m512);
num!(f64, __m256d, __m512d);

/// `out[r, c] += Σ_i v[r, i] m_r[i, c]` over the rows `rows` for the `TR` lanes from `r0` and
/// the `TC` registers `S` of columns from column `c0`: the sums held in registers over the
/// rows, fused multiply-adds in the order of `i` (continuing a sum stored in `out` adds in the
/// same order as never stopping it), so every register width gives the same bits.
///
/// # Safety
/// The CPU must have `S`'s instruction set and FMA; `TR` is 1 unless the matrix is shared; the
/// rows, lanes and columns lie within `d`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile<T: Num, S: Simd<T>, const TR: usize, const TC: usize>(
    v: &[T],
    m: &[T],
    d: LaneDims,
    rows: std::ops::Range<usize>,
    (r0, c0): (usize, usize),
    out: &mut [T],
) {
    let LaneDims { n, k, .. } = d;
    let base = if d.shared { 0 } else { r0 * n * k };
    // SAFETY: the CPU has S's instruction set and FMA; every load of the matrix addresses
    // c0 + TC W <= k values of one of its rows, every load and store of `out` TC W values of
    // lane r's output row, every read of a lane's vector one of its n values.
    unsafe {
        let at = |q: usize, t: usize| (r0 + q) * k + c0 + t * S::W;
        let mut acc = [[S::zero(); TC]; TR];
        for (q, acc) in acc.iter_mut().enumerate() {
            for (t, a) in acc.iter_mut().enumerate() {
                *a = S::load(out.as_ptr().add(at(q, t)));
            }
        }
        // Pointers, not `v[(r0 + q) * n + i]`: a bounds check on every broadcast took half the
        // kernel's time (an 8-lane logistic regression's products 72 -> 40 us forward).
        let lane: [*const T; TR] = std::array::from_fn(|q| v.as_ptr().add((r0 + q) * n));
        for i in rows {
            let row = m.as_ptr().add(base + i * k + c0);
            let mut x = [S::zero(); TC];
            for (t, x) in x.iter_mut().enumerate() {
                *x = S::load(row.add(t * S::W));
            }
            for (q, acc) in acc.iter_mut().enumerate() {
                let g = S::splat(*lane[q].add(i));
                for t in 0..TC {
                    acc[t] = S::fma(g, x[t], acc[t]);
                }
            }
        }
        for (q, acc) in acc.iter().enumerate() {
            for (t, &a) in acc.iter().enumerate() {
                S::store(out.as_mut_ptr().add(at(q, t)), a);
            }
        }
    }
}

/// Rows of the matrix per pass of [`columns`]: 64 rows of 64 f32s (16 kB) stay in L1 while
/// every tile takes its turn, so the matrix comes from memory once however many lanes meet it.
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 64;

/// [`tile`]s of `TR` lanes from `r` and `TC` registers, from column `c` on while they fit
/// before `end`; `c` ends after the last.
///
/// # Safety
/// As for [`tile`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tiles<T: Num, S: Simd<T>, const TR: usize, const TC: usize>(
    v: &[T],
    m: &[T],
    d: LaneDims,
    rows: &std::ops::Range<usize>,
    r: usize,
    (c, end): (&mut usize, usize),
    out: &mut [T],
) {
    while *c + TC * S::W <= end {
        // SAFETY: the caller's promise, and the tile's columns end by `end`.
        unsafe { tile::<T, S, TR, TC>(v, m, d, rows.clone(), (r, *c), out) };
        *c += TC * S::W;
    }
}

/// The lane kernel's columns from `from` to the last whole register `S` of them, in register
/// tiles: of up to 8 lanes where the lanes share the matrix (its rows read once for all of
/// them; two registers of columns wide where the CPU has 32), else 1 lane x up to 8 registers.
/// Returns the column where it stopped.
///
/// # Safety
/// The CPU must have `S`'s instruction set and FMA; `out` is `[lanes, k]`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn columns<T: Num, S: Simd<T>>(
    v: &[T],
    m: &[T],
    d: LaneDims,
    from: usize,
    out: &mut [T],
) -> usize {
    let LaneDims { lanes, n, k, .. } = d;
    let end = from + (k - from) / S::W * S::W;
    for i0 in (0..n).step_by(ROWS) {
        let rows = i0..(i0 + ROWS).min(n);
        let mut r = 0;
        while r < lanes {
            let group = match lanes - r {
                left if d.shared && left >= 8 => 8,
                left if d.shared && left >= 4 => 4,
                _ => 1,
            };
            let mut c = from;
            // SAFETY: S's instruction set and FMA (the caller's promise); the rows, lanes r..
            // and columns c.. lie within `d`, and tiles of several lanes only where the matrix
            // is shared. Plain inlined calls, not closures: a closure does not inherit its
            // function's target features, and its register loads and FMAs became calls.
            unsafe {
                match group {
                    8 => {
                        if S::REGS >= 32 {
                            tiles::<T, S, 8, 2>(v, m, d, &rows, r, (&mut c, end), out);
                        }
                        tiles::<T, S, 8, 1>(v, m, d, &rows, r, (&mut c, end), out);
                    }
                    4 => {
                        tiles::<T, S, 4, 2>(v, m, d, &rows, r, (&mut c, end), out);
                        tiles::<T, S, 4, 1>(v, m, d, &rows, r, (&mut c, end), out);
                    }
                    _ => {
                        tiles::<T, S, 1, 8>(v, m, d, &rows, r, (&mut c, end), out);
                        tiles::<T, S, 1, 2>(v, m, d, &rows, r, (&mut c, end), out);
                        tiles::<T, S, 1, 1>(v, m, d, &rows, r, (&mut c, end), out);
                    }
                }
            }
            r += group;
        }
    }
    end
}

/// The lane kernel in AVX-512 registers (`WIDE`) then AVX2 ones, and the columns past the last
/// whole register one by one, in the same order.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and AVX-512 if `WIDE`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn vecmat_simd<T: Num, const WIDE: bool>(v: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    let LaneDims { lanes, n, k, .. } = d;
    let mut out = vec![T::default(); lanes * k];
    // SAFETY: the instruction sets are the caller's promise; `out` is `[lanes, k]`.
    let whole = unsafe {
        let wide = if WIDE {
            columns::<T, T::V512>(v, m, d, 0, &mut out)
        } else {
            0
        };
        columns::<T, T::V>(v, m, d, wide, &mut out)
    };
    for r in 0..lanes {
        let base = if d.shared { 0 } else { r * n * k };
        for c in whole..k {
            let mut sum = T::default();
            for i in 0..n {
                sum = v[r * n + i].mul_add(m[base + i * k + c], sum);
            }
            out[r * k + c] = sum;
        }
    }
    out
}

/// [`vecmat_simd`] compiled for AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn vecmat_avx2<T: Num>(v: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    // SAFETY: this function's features.
    unsafe { vecmat_simd::<T, false>(v, m, d) }
}

/// [`vecmat_simd`] compiled for AVX-512: twice the columns a register, and twice the registers
/// for the 8-lane tile, which halves a batch's products here.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn vecmat_avx512<T: Num>(v: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    // SAFETY: this function's features.
    unsafe { vecmat_simd::<T, true>(v, m, d) }
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

/// The kernel of [`lane_vecmat`], fused where the CPU allows (the same bits in AVX-512 as in
/// AVX2 registers). AVX-512 only where lanes share the matrix in tiles of 4 or 8: one lane
/// alone over 64 columns has 8 sums in flight in AVX2 registers and 4 in AVX-512 ones, and ran
/// a logistic regression step 8% slower.
pub(super) fn vecmat<T: Num>(v: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        if d.shared && d.lanes >= 4 && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512, AVX2 and FMA, checked just now.
            return unsafe { vecmat_avx512(v, m, d) };
        }
        // SAFETY: the CPU has AVX2 and FMA, checked just now.
        return unsafe { vecmat_avx2(v, m, d) };
    }
    vecmat_plain(v, m, d)
}

/// The lane kernel on storages: `v @ m` and its dimensions.
fn lane_product(
    v: &CpuStorage,
    vl: &Layout,
    m: &CpuStorage,
    ml: &Layout,
) -> Result<(CpuStorage, LaneDims)> {
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
    Ok((out, d))
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
        let (out, d) = lane_product(v, vl, m, ml)?;
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

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    /// Each entry of a lane product as one fused multiply-add after another over the rows.
    fn vecmat_in_order<T: Num>(v: &[T], m: &[T], d: LaneDims) -> Vec<T> {
        let LaneDims { lanes, n, k, .. } = d;
        let mut out = vec![T::default(); lanes * k];
        for r in 0..lanes {
            let base = if d.shared { 0 } else { r * n * k };
            for c in 0..k {
                for i in 0..n {
                    out[r * k + c] = v[r * n + i].mul_add(m[base + i * k + c], out[r * k + c]);
                }
            }
        }
        out
    }

    /// The lane product with its per-lane bias as one op gives the values and gradients of the
    /// product and the broadcast add one after the other, to the bit, in f32 and f64.
    #[test]
    fn a_lane_product_with_its_bias_is_the_two_ops_to_the_bit() {
        let (lanes, n, k) = (5, 37, 300);
        for dtype in [DType::F32, DType::F64] {
            let randn = |dims: &[usize]| {
                Tensor::randn(0f32, 1.0, dims, &Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap()
            };
            let x = randn(&[k, n]);
            let xt = x.t().unwrap().contiguous().unwrap();
            let weights = randn(&[lanes, k]);
            let (v0, b0) = (randn(&[lanes, n]), randn(&[lanes]));
            let mut results = Vec::new();
            for fused in [true, false] {
                let (v, b) = (
                    Var::from_tensor(&v0).unwrap(),
                    Var::from_tensor(&b0).unwrap(),
                );
                let out = match fused {
                    true => lane_vecmat_bias(v.as_tensor(), b.as_tensor(), &xt, &x),
                    false => lane_vecmat(v.as_tensor(), &xt, &x)
                        .and_then(|p| p.broadcast_add(&b.as_tensor().reshape((lanes, 1))?)),
                }
                .unwrap();
                let grads = (&out * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let bits = |t: &Tensor| -> Vec<u64> {
                    let t = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
                    t.to_vec1::<f64>()
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect()
                };
                results.push([
                    bits(&out),
                    bits(grads.get(&v).unwrap()),
                    bits(grads.get(&b).unwrap()),
                ]);
            }
            assert_eq!(results[0], results[1], "{dtype:?}");
        }
    }

    /// The lane kernel's tiles (8 and 4 lanes, 1 to 8 registers wide, AVX-512 then AVX2 then
    /// one by one) give each entry the bits of summing it alone in order, for every shape.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn lane_products_sum_every_entry_in_order_whatever_the_tiles() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        fn check<T: Num + PartialEq + std::fmt::Debug>(cast: impl Fn(f64) -> T) {
            for lanes in [1, 3, 4, 8, 13] {
                for n in [1, 65, 130] {
                    for k in [1, 7, 8, 24, 40, 64, 100] {
                        for shared in [true, false] {
                            let d = LaneDims {
                                lanes,
                                n,
                                k,
                                shared,
                            };
                            let fill = |len: usize, seed: f64| -> Vec<T> {
                                (0..len)
                                    .map(|i| {
                                        cast((i as f64 * 0.618_034 + seed).fract() * 2.0 - 1.0)
                                    })
                                    .collect()
                            };
                            let v = fill(lanes * n, 0.1);
                            let m = fill(if shared { n * k } else { lanes * n * k }, 0.7);
                            let want = vecmat_in_order(&v, &m, d);
                            assert_eq!(vecmat(&v, &m, d), want, "{d:?}");
                            // SAFETY: the CPU has AVX2 and FMA, checked above.
                            assert_eq!(unsafe { vecmat_avx2(&v, &m, d) }, want, "AVX2, {d:?}");
                            if std::arch::is_x86_feature_detected!("avx512f") {
                                // SAFETY: the CPU has AVX-512 too, checked just now.
                                let wide = unsafe { vecmat_avx512(&v, &m, d) };
                                assert_eq!(wide, want, "AVX-512, {d:?}");
                            }
                        }
                    }
                }
            }
        }
        check(|x| x as f32);
        check(|x| x);
    }
}
