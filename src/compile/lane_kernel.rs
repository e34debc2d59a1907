//! The lane kernel: products of a matrix that needs no gradient with one vector per lane (runs
//! of a loss file stepped together, see `lanes`; one lane for a run alone, see `matvec`), each
//! entry summed in one order whatever the number of lanes, the tiling and the CPU's registers.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::fused::{contiguous, float_only};

/// `v @ m` for every lane: `v` one vector per lane `[R, n]`, `m` a matrix `[n, k]` shared by
/// the lanes (or one per lane, `[R, n, k]`) that needs no gradient; `[R, k]`. Each entry is
/// summed over `n` in order, whatever R, the tiling and the CPU's vector width, so a run alone
/// (R = 1) and within a batch of runs (see `lanes`) get the same bits, which gemm does not
/// promise across shapes. `x @ w` for a data matrix `x` is `w @ xᵀ`. Its backward pass is
/// [`lane_dots`] on the same matrix, so a batch reads one copy of its data, not also the
/// transpose (logreg's two are 2 MB, this CPU's whole L2). The subnormal values of `v` count
/// as zeros (see `normal_values`).
pub fn lane_vecmat(v: &Tensor, m: &Tensor) -> Result<Tensor> {
    LaneProduct { dots: false }.apply(v, m)
}

/// `g @ mᵀ` for every lane: `g` one row per lane `[R, k]`, `m` `[n, k]` shared by the lanes (or
/// one per lane, `[R, n, k]`); `[R, n]`, with the subnormal values of `g` taken as zeros (see
/// `dots`). The backward pass of [`lane_vecmat`], and it of this.
/// Each entry is a dot product of two rows of k: element c goes into running sum c mod
/// [`Num::SUMS`] (fused multiply-adds in order of c), the sums are added in order, then the
/// last k mod SUMS elements in order, whatever R, the tiling and the CPU's vector width.
pub fn lane_dots(g: &Tensor, m: &Tensor) -> Result<Tensor> {
    LaneProduct { dots: true }.apply(g, m)
}

/// [`lane_vecmat`] plus a scalar per lane, `v @ m + b[r]` for lane r (`X @ w + b` for runs of a
/// linear model), as one op: candle's backward adds each `[R, k]` gradient it passes on into a
/// zeroed tensor, and the add of a per-lane bias passed on two (to the product and to the
/// broadcast bias). Each value is the add's (`x + b`, rounded once), and the bias's gradient
/// each row's sum as candle's broadcast sums it, so the numbers are those of the two ops.
pub fn lane_vecmat_bias(v: &Tensor, b: &Tensor, m: &Tensor) -> Result<Tensor> {
    v.contiguous()?
        .apply_op3(&b.contiguous()?, &m.contiguous()?, VecMatBias)
}

/// [`lane_vecmat_bias`] as an op on `(v, b, m)`.
#[derive(Debug, Clone)]
struct VecMatBias;

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
        let (mut out, d) = lane_product(v, vl, m, ml, false)?;
        add_bias(&mut out, (b, bl), d)?;
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
        let dv = lane_dots(&grad, m)?;
        let db = grad.sum_keepdim(1)?.reshape(b.shape())?;
        Ok((Some(dv), Some(db), None))
    }
}

/// Adds lane r's bias `b[r]` to each of its `k` products in `out`, the add's rounding.
pub(super) fn add_bias(
    out: &mut CpuStorage,
    (b, bl): (&CpuStorage, &Layout),
    d: LaneDims,
) -> Result<()> {
    fn add<T: Num>(out: &mut [T], b: &[T], k: usize) {
        for (row, &b) in out.chunks_exact_mut(k.max(1)).zip(b) {
            for x in row {
                *x = *x + b;
            }
        }
    }
    if bl.shape().elem_count() != d.lanes {
        return Err(candle_core::Error::Msg(format!(
            "a lane product's bias of {:?} for {} lanes",
            bl.shape(),
            d.lanes
        )));
    }
    match (out, b) {
        (CpuStorage::F32(out), CpuStorage::F32(b)) => add(out, contiguous(b, bl)?, d.k),
        (CpuStorage::F64(out), CpuStorage::F64(b)) => add(out, contiguous(b, bl)?, d.k),
        _ => return float_only(),
    }
    Ok(())
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
    /// From the vectors' layout `[R, n]` and the matrix's `[n, k]` or `[R, n, k]`; with `dots`,
    /// the rows' `[R, k]` that [`lane_dots`] takes.
    fn of(v: &Layout, m: &Layout, dots: bool) -> Result<Self> {
        let (lanes, len) = v.shape().dims2()?;
        let matrix = match *m.shape().dims() {
            [n, k] => Some((true, n, k)),
            [l, n, k] if l == lanes => Some((false, n, k)),
            _ => None,
        };
        match matrix {
            Some((shared, n, k)) if len == if dots { k } else { n } => Ok(Self {
                lanes,
                n,
                k,
                shared,
            }),
            _ => Err(candle_core::Error::Msg(format!(
                "a lane product of {:?} vectors with a {:?} matrix",
                v.shape(),
                m.shape()
            ))),
        }
    }
}

/// The arithmetic of the lane kernel on f32 and f64: one by one, and in AVX2 and AVX-512
/// registers.
pub(super) trait Num:
    Send + Sync + Copy + Default + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    /// How many running sums a dot product of [`lane_dots`] keeps: an AVX-512 register's worth.
    const SUMS: usize;
    /// `self * a + b`, rounded once.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// Whether it is below the normal range and not zero.
    fn subnormal(self) -> bool;
    /// 0 of its sign where it is below the normal range, else itself.
    fn flushed(self) -> Self;
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
            const SUMS: usize = 64 / std::mem::size_of::<$t>();
            #[inline(always)]
            fn mul_add(self, a: $t, b: $t) -> $t {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            fn subnormal(self) -> bool {
                self != 0.0 && self.abs() < <$t>::MIN_POSITIVE
            }
            #[inline(always)]
            fn flushed(self) -> $t {
                if self.abs() < <$t>::MIN_POSITIVE {
                    <$t>::copysign(0.0, self)
                } else {
                    self
                }
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

/// `v` with its values below the normal range as zeros of their sign, copied only where it has
/// any. The vector of a product with data, as every kernel here takes it: an x86 multiply-add
/// with a subnormal operand takes a microcode assist (45 ns on the Xeon against 1), and a
/// broadcast one takes it across a whole row of the matrix. Late on separable data 5% of a
/// logistic regression's gradient values are subnormal, and a 20,000-step run alone went at
/// 6.5-7.4k steps/s against 12-13k over its first 500 (10.3-11.5k with them zeroed). What such
/// a value adds to a sum is below 2^-126 (2^-1022 in f64) times the matrix's entry: it shows
/// only in a sum that ends up that small (its other terms that small, or cancelling).
pub(super) fn normal_values<T: Num>(v: &[T]) -> std::borrow::Cow<'_, [T]> {
    match v.iter().any(|x| x.subnormal()) {
        true => v.iter().map(|x| x.flushed()).collect(),
        false => std::borrow::Cow::Borrowed(v),
    }
}

/// The lane kernel in AVX-512 registers (`WIDE`) then AVX2 ones, and the columns past the last
/// whole register one by one, in the same order.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and AVX-512 if `WIDE`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn vecmat_simd<T: Num, const WIDE: bool>(v: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    let v = &*normal_values(v);
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
    let v = &*normal_values(v);
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
/// AVX2 registers), with `v`'s subnormal values as zeros ([`normal_values`]). AVX-512 only
/// where lanes share the matrix in tiles of 4 or 8: one lane alone over 64 columns has 8 sums
/// in flight in AVX2 registers and 4 in AVX-512 ones, and ran a logistic regression step 8%
/// slower.
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

/// Columns of the rows [`lane_dots`] takes per pass: 512 of every lane's row, copied side by side
/// (16 kB for 8 lanes of f32s), stay in L1 while every row of the matrix meets them. In place,
/// rows of 4,096 lie 16 kB apart and all fall in the L1 sets of the matrix rows they meet.
const DOT_COLUMNS: usize = 512;

/// The running sums `[R, n, SUMS]` of [`lane_dots`] over columns `cols` (whole SUMS) for `TR`
/// lanes from `r0` and `TI` rows of the matrix from `i0`: `A` registers `S` per sum's SUMS.
///
/// # Safety
/// The CPU must have `S`'s instruction set and FMA; `A` registers hold SUMS values; `TR` is 1
/// unless the matrix is shared; the lanes, rows and columns lie within `d`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_tile<T: Num, S: Simd<T>, const TI: usize, const TR: usize, const A: usize>(
    (g, gk): (&[T], usize),
    m: &[T],
    d: LaneDims,
    (r0, i0): (usize, usize),
    cols: std::ops::Range<usize>,
    sums: &mut [T],
) {
    let LaneDims { n, k, .. } = d;
    let base = if d.shared { 0 } else { r0 * n * k };
    // SAFETY: the CPU has S's instruction set and FMA; every load of a row or a lane's row
    // addresses A W = SUMS values of columns below `cols.end` <= k, every load and store of
    // `sums` the SUMS of one lane and row.
    unsafe {
        let at = |q: usize, t: usize, a: usize| ((r0 + q) * n + i0 + t) * T::SUMS + a * S::W;
        let mut acc = [[[S::zero(); A]; TI]; TR];
        for (q, acc) in acc.iter_mut().enumerate() {
            for (t, acc) in acc.iter_mut().enumerate() {
                for (a, acc) in acc.iter_mut().enumerate() {
                    *acc = S::load(sums.as_ptr().add(at(q, t, a)));
                }
            }
        }
        let rows: [*const T; TI] = std::array::from_fn(|t| m.as_ptr().add(base + (i0 + t) * k));
        let g0 = cols.start;
        let lanes: [*const T; TR] = std::array::from_fn(|q| g.as_ptr().add((r0 + q) * gk));
        for c in cols.step_by(T::SUMS) {
            let x: [[S; A]; TI] = std::array::from_fn(|t| {
                std::array::from_fn(|a| S::load(rows[t].add(c + a * S::W)))
            });
            for (q, acc) in acc.iter_mut().enumerate() {
                for a in 0..A {
                    let y = S::load(lanes[q].add(c - g0 + a * S::W));
                    for t in 0..TI {
                        acc[t][a] = S::fma(y, x[t][a], acc[t][a]);
                    }
                }
            }
        }
        for (q, acc) in acc.iter().enumerate() {
            for (t, acc) in acc.iter().enumerate() {
                for (a, &acc) in acc.iter().enumerate() {
                    S::store(sums.as_mut_ptr().add(at(q, t, a)), acc);
                }
            }
        }
    }
}

/// [`dot_tile`]s of `TI` rows for the `TR` lanes from `r`, from row `i` on while they fit; `i`
/// ends after the last.
///
/// # Safety
/// As for [`dot_tile`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_tiles<T: Num, S: Simd<T>, const TI: usize, const TR: usize, const A: usize>(
    g: (&[T], usize),
    m: &[T],
    d: LaneDims,
    (r, i): (usize, &mut usize),
    cols: &std::ops::Range<usize>,
    sums: &mut [T],
) {
    while *i + TI <= d.n {
        // SAFETY: the caller's promise, and the tile's rows end by n.
        unsafe { dot_tile::<T, S, TI, TR, A>(g, m, d, (r, *i), cols.clone(), sums) };
        *i += TI;
    }
}

/// [`lane_dots`]'s running sums in registers `S` (`A` of them per SUMS), in tiles of up to 8
/// lanes where they share the matrix (each row read once for all), as many rows as the
/// registers hold; then the sums added and the last columns, as [`dots_finish`].
///
/// # Safety
/// The CPU must have `S`'s instruction set and FMA; `A` registers hold SUMS values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dots_simd<T: Num, S: Simd<T>, const A: usize>(g: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    let LaneDims { lanes, n, k, .. } = d;
    let whole = k / T::SUMS * T::SUMS;
    let mut sums = vec![T::default(); lanes * n * T::SUMS];
    let wide = S::REGS >= 32;
    let mut packed = vec![T::default(); lanes * DOT_COLUMNS];
    for c0 in (0..whole).step_by(DOT_COLUMNS) {
        let cols = c0..(c0 + DOT_COLUMNS).min(whole);
        let w = cols.len();
        for (l, p) in packed.chunks_exact_mut(w).enumerate().take(lanes) {
            for (p, x) in p.iter_mut().zip(&g[l * k + c0..l * k + c0 + w]) {
                *p = x.flushed();
            }
        }
        let g = (&packed[..], w);
        let mut r = 0;
        while r < lanes {
            let group = match lanes - r {
                left if d.shared && wide && left >= 8 => 8,
                left if d.shared && left >= 4 => 4,
                _ => 1,
            };
            let mut i = 0;
            let s = &mut sums;
            // SAFETY: S's instruction set and FMA (the caller's promise); lanes r.. and the
            // columns lie within `d`, and tiles of several lanes only where the matrix is
            // shared. Tiles keep their sums, a row of the matrix per tile and a lane's row in
            // the registers: 28 of AVX-512's 32, 11 of AVX2's 16.
            unsafe {
                match (group, wide) {
                    (8, _) => dot_tiles::<T, S, 3, 8, A>(g, m, d, (r, &mut i), &cols, s),
                    (4, true) => dot_tiles::<T, S, 5, 4, A>(g, m, d, (r, &mut i), &cols, s),
                    (4, false) => {}
                    (_, true) => dot_tiles::<T, S, 8, 1, A>(g, m, d, (r, &mut i), &cols, s),
                    (_, false) => dot_tiles::<T, S, 3, 1, A>(g, m, d, (r, &mut i), &cols, s),
                }
                match group {
                    8 => dot_tiles::<T, S, 1, 8, A>(g, m, d, (r, &mut i), &cols, s),
                    4 => dot_tiles::<T, S, 1, 4, A>(g, m, d, (r, &mut i), &cols, s),
                    _ => dot_tiles::<T, S, 1, 1, A>(g, m, d, (r, &mut i), &cols, s),
                }
            }
            r += group;
        }
    }
    dots_finish(g, m, d, &sums)
}

/// Each entry of [`lane_dots`] from its running sums `[R, n, SUMS]`: the sums added in order,
/// then the columns past the last whole SUMS in order.
#[inline(always)]
fn dots_finish<T: Num>(g: &[T], m: &[T], d: LaneDims, sums: &[T]) -> Vec<T> {
    let LaneDims { lanes, n, k, .. } = d;
    let whole = k / T::SUMS * T::SUMS;
    let mut out = vec![T::default(); lanes * n];
    for (r, out) in out.chunks_exact_mut(n.max(1)).enumerate().take(lanes) {
        let base = if d.shared { 0 } else { r * n * k };
        for (i, out) in out.iter_mut().enumerate() {
            let s = &sums[(r * n + i) * T::SUMS..][..T::SUMS];
            let mut sum = s.iter().fold(T::default(), |a, &b| a + b);
            for c in whole..k {
                sum = g[r * k + c].flushed().mul_add(m[base + i * k + c], sum);
            }
            *out = sum;
        }
    }
    out
}

/// [`dots_simd`] in AVX2 registers, two per SUMS.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2<T: Num>(g: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    // SAFETY: this function's features; an AVX2 register holds half of SUMS.
    unsafe { dots_simd::<T, T::V, 2>(g, m, d) }
}

/// [`dots_simd`] in AVX-512 registers, one per SUMS.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn dots_avx512<T: Num>(g: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    // SAFETY: this function's features; an AVX-512 register holds SUMS.
    unsafe { dots_simd::<T, T::V512, 1>(g, m, d) }
}

/// [`lane_dots`]'s kernel one value at a time, for CPUs without AVX2 and FMA: the same order,
/// its running sums not fused (as [`vecmat_plain`]'s), so they differ from the fused kernel's,
/// never from themselves.
fn dots_plain<T: Num>(g: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    let LaneDims { lanes, n, k, .. } = d;
    let whole = k / T::SUMS * T::SUMS;
    let mut sums = vec![T::default(); lanes * n * T::SUMS];
    for (r, sums) in sums
        .chunks_exact_mut((n * T::SUMS).max(1))
        .enumerate()
        .take(lanes)
    {
        let base = if d.shared { 0 } else { r * n * k };
        for (i, sums) in sums.chunks_exact_mut(T::SUMS).enumerate() {
            for c in 0..whole {
                let s = &mut sums[c % T::SUMS];
                *s = *s + g[r * k + c].flushed() * m[base + i * k + c];
            }
        }
    }
    dots_finish(g, m, d, &sums)
}

/// The kernel of [`lane_dots`], fused where the CPU allows (the same bits in AVX-512 as in
/// AVX2 registers). Values of `g` below the normal range count as zeros of their sign, as in
/// [`normal_values`]: a register of 16 values (8 in AVX2) takes the assist for one among them,
/// and in half of a logistic regression's registers late on separable data, 8 batched runs of
/// 20,000 steps took 50 s, and 6.2 s with them zeroed. Each kernel zeroes them as it copies or
/// reads `g`.
pub(super) fn dots<T: Num>(g: &[T], m: &[T], d: LaneDims) -> Vec<T> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512, AVX2 and FMA, checked just now.
            return unsafe { dots_avx512(g, m, d) };
        }
        // SAFETY: the CPU has AVX2 and FMA, checked just now.
        return unsafe { dots_avx2(g, m, d) };
    }
    dots_plain(g, m, d)
}

/// The lane kernel on storages: `v @ m` (or, with `dots`, [`lane_dots`]'s `v @ mᵀ`) and its
/// dimensions.
pub(super) fn lane_product(
    v: &CpuStorage,
    vl: &Layout,
    m: &CpuStorage,
    ml: &Layout,
    dots: bool,
) -> Result<(CpuStorage, LaneDims)> {
    fn product<T: Num>(v: &[T], m: &[T], d: LaneDims, dots: bool) -> Vec<T> {
        match dots {
            true => self::dots(v, m, d),
            false => vecmat(v, m, d),
        }
    }
    let d = LaneDims::of(vl, ml, dots)?;
    let out = match (v, m) {
        (CpuStorage::F32(v), CpuStorage::F32(m)) => {
            CpuStorage::F32(product(contiguous(v, vl)?, contiguous(m, ml)?, d, dots))
        }
        (CpuStorage::F64(v), CpuStorage::F64(m)) => {
            CpuStorage::F64(product(contiguous(v, vl)?, contiguous(m, ml)?, d, dots))
        }
        _ => {
            return Err(candle_core::Error::Msg(
                "lane products take f32 or f64".into(),
            ));
        }
    };
    Ok((out, d))
}

/// [`lane_vecmat`] (`v @ m`) or, with `dots`, [`lane_dots`] (`v @ mᵀ`) as an op on `(v, m)`:
/// each is the other's backward pass.
#[derive(Debug, Clone, Copy)]
struct LaneProduct {
    dots: bool,
}

impl LaneProduct {
    fn apply(self, v: &Tensor, m: &Tensor) -> Result<Tensor> {
        v.contiguous()?.apply_op2(&m.contiguous()?, self)
    }
}

impl CustomOp2 for LaneProduct {
    fn name(&self) -> &'static str {
        match self.dots {
            true => "lane-dots",
            false => "lane-vecmat",
        }
    }

    fn cpu_fwd(
        &self,
        v: &CpuStorage,
        vl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, d) = lane_product(v, vl, m, ml, self.dots)?;
        let columns = if self.dots { d.n } else { d.k };
        Ok((out, Shape::from((d.lanes, columns))))
    }

    fn bwd(
        &self,
        _v: &Tensor,
        m: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // d/dv (v m) = grad mᵀ, and d/dv (v mᵀ) = grad m.
        let other = LaneProduct { dots: !self.dots };
        Ok((Some(other.apply(grad, m)?), None))
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

    /// Each entry of [`lane_dots`] as its running sums, one fused multiply-add after another,
    /// added in order, then the last columns.
    fn dots_in_order<T: Num>(g: &[T], m: &[T], d: LaneDims) -> Vec<T> {
        let LaneDims { lanes, n, k, .. } = d;
        let whole = k / T::SUMS * T::SUMS;
        let mut out = vec![T::default(); lanes * n];
        for r in 0..lanes {
            let base = if d.shared { 0 } else { r * n * k };
            for i in 0..n {
                let mut sums = vec![T::default(); T::SUMS];
                for c in 0..whole {
                    let s = &mut sums[c % T::SUMS];
                    *s = g[r * k + c].mul_add(m[base + i * k + c], *s);
                }
                let mut sum = sums.iter().fold(T::default(), |a, &b| a + b);
                for c in whole..k {
                    sum = g[r * k + c].mul_add(m[base + i * k + c], sum);
                }
                out[r * n + i] = sum;
            }
        }
        out
    }

    /// Both lane products and their gradients (each the other op) equal candle's matmuls to
    /// within rounding, for a shared matrix and one per lane, in f32 and f64.
    #[test]
    fn lane_products_and_their_gradients_are_matmuls() {
        let (lanes, n, k) = (3, 37, 1100);
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-12)] {
            let randn = |dims: &[usize]| {
                Tensor::randn(0f32, 1.0, dims, &Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap()
            };
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let flat = |t: &Tensor| -> Vec<f64> {
                    let t = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
                    t.to_vec1().unwrap()
                };
                let (a, b) = (flat(a), flat(b));
                assert_eq!(a.len(), b.len(), "{what}");
                let scale = b.iter().fold(1.0f64, |s, x| s.max(x.abs()));
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= tol * scale, "{what} {dtype:?}: {x} vs {y}");
                }
            };
            for shared in [true, false] {
                let m = match shared {
                    true => randn(&[n, k]),
                    false => randn(&[lanes, n, k]),
                };
                let mt = m.transpose(m.rank() - 2, m.rank() - 1).unwrap();
                let batched = |t: &Tensor| match shared {
                    true => t.broadcast_left(lanes).unwrap(),
                    false => t.clone(),
                };
                // v @ m with its gradient, then g @ mᵀ with its.
                for (len, out_len, dots) in [(n, k, false), (k, n, true)] {
                    let v = Var::from_tensor(&randn(&[lanes, len])).unwrap();
                    let weights = randn(&[lanes, out_len]);
                    let ours = match dots {
                        true => lane_dots(v.as_tensor(), &m),
                        false => lane_vecmat(v.as_tensor(), &m),
                    }
                    .unwrap();
                    let matrix = if dots { batched(&mt) } else { batched(&m) };
                    let theirs = v
                        .as_tensor()
                        .unsqueeze(1)
                        .and_then(|v| v.matmul(&matrix.contiguous()?))
                        .and_then(|t| t.squeeze(1))
                        .unwrap();
                    let what = format!("dots {dots}, shared {shared}");
                    close(&ours, &theirs, &what);
                    let grad = |out: &Tensor| {
                        let g = (out * &weights).unwrap().sum_all().unwrap().backward();
                        g.unwrap().get(&v).unwrap().clone()
                    };
                    close(&grad(&ours), &grad(&theirs), &format!("gradient, {what}"));
                }
            }
        }
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
                    true => lane_vecmat_bias(v.as_tensor(), b.as_tensor(), &xt),
                    false => lane_vecmat(v.as_tensor(), &xt)
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

    /// A logistic regression's gradient late on separable data, `lanes` rows of `len`: some
    /// values normal, many small, some below the normal range; the first row all below it.
    /// With it, the same values with those below the normal range zeroed (of their sign).
    fn late_gradient<T: Num>(
        (lanes, len): (usize, usize),
        cast: impl Fn(f64) -> T,
        back: impl Fn(T) -> f64,
        tiny: f64,
    ) -> (Vec<T>, Vec<T>) {
        let unit = |i: usize| (i as f64 * 0.618_034 + 0.3).fract() * 2.0 - 1.0;
        let g: Vec<T> = (0..lanes * len)
            .map(|i| match (i < len, i % 5) {
                (true, _) | (false, 1 | 2) => cast(unit(i) * tiny),
                (false, 3) => cast(unit(i) * 1e-30),
                _ => cast(unit(i) * 1e-3),
            })
            .collect();
        let zeroed: Vec<T> = g.iter().map(|&x| x.flushed()).collect();
        let below = g.iter().filter(|&&x| x.subnormal()).count();
        assert!(below > g.len() / 3 && zeroed.iter().all(|x| !x.subnormal()));
        assert!(
            g.iter()
                .zip(&zeroed)
                .all(|(&a, &b)| back(a) == back(b) || back(b) == 0.0)
        );
        (g, zeroed)
    }

    /// Both lane products count their vectors' subnormal values as zeros of their sign, on
    /// every path: a lane of them alone sums to 0, and lanes with some sum as with them zeroed.
    #[test]
    fn lane_products_count_subnormal_vector_values_as_zeros() {
        type Kernel<T> = fn(&[T], &[T], LaneDims) -> Vec<T>;
        /// `kernel`'s paths on `v` against `in_order` on the zeroed `v`, whose zero lane is `len`
        /// long in the output.
        fn agree<T: Num + PartialEq + std::fmt::Debug>(
            [any, avx2, avx512, plain]: [Kernel<T>; 4],
            in_order: Kernel<T>,
            (v, zeroed, m): (&[T], &[T], &[T]),
            d: LaneDims,
            len: usize,
            back: impl Fn(T) -> f64,
        ) {
            let out = any(v, m, d);
            assert_eq!(out, in_order(zeroed, m, d), "{d:?}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                assert_eq!(avx2(v, m, d), out, "AVX2, {d:?}");
                if std::arch::is_x86_feature_detected!("avx512f") {
                    assert_eq!(avx512(v, m, d), out, "AVX-512, {d:?}");
                }
            }
            assert_eq!(plain(v, m, d), plain(zeroed, m, d), "{d:?}");
            assert!(out[..len].iter().all(|&x| back(x) == 0.0), "{d:?}");
            assert!(out[len..].iter().all(|&x| back(x) != 0.0), "{d:?}");
        }
        fn check<T: Num + PartialEq + std::fmt::Debug>(
            cast: impl Fn(f64) -> T + Copy,
            back: impl Fn(T) -> f64 + Copy,
            tiny: f64,
        ) {
            let unit = |i: usize| (i as f64 * 0.618_034 + 0.7).fract() * 2.0 - 1.0;
            // SAFETY (of the paths below): each is called only where the CPU has its features.
            #[cfg(target_arch = "x86_64")]
            let [vm_avx2, vm_avx512, d_avx2, d_avx512]: [Kernel<T>; 4] = [
                |v, m, d| unsafe { vecmat_avx2(v, m, d) },
                |v, m, d| unsafe { vecmat_avx512(v, m, d) },
                |g, m, d| unsafe { dots_avx2(g, m, d) },
                |g, m, d| unsafe { dots_avx512(g, m, d) },
            ];
            #[cfg(not(target_arch = "x86_64"))]
            let [vm_avx2, vm_avx512, d_avx2, d_avx512]: [Kernel<T>; 4] =
                [vecmat, vecmat, dots, dots];
            for lanes in [1, 8] {
                for shared in [true, false] {
                    // Rows of 1,100 for the dots, and 70 of 50 columns for the vecmat.
                    for (n, k, dots_side) in [(5, 1100, true), (70, 50, false)] {
                        let d = LaneDims {
                            lanes,
                            n,
                            k,
                            shared,
                        };
                        let len = if shared { n * k } else { lanes * n * k };
                        let m: Vec<T> = (0..len).map(|i| cast(unit(i))).collect();
                        let (rows, out_len) = if dots_side { (k, n) } else { (n, k) };
                        let (v, zeroed) = late_gradient((lanes, rows), cast, back, tiny);
                        let vz = (&v[..], &zeroed[..], &m[..]);
                        match dots_side {
                            true => agree(
                                [dots, d_avx2, d_avx512, dots_plain],
                                dots_in_order,
                                vz,
                                d,
                                out_len,
                                back,
                            ),
                            false => agree(
                                [vecmat, vm_avx2, vm_avx512, vecmat_plain],
                                vecmat_in_order,
                                vz,
                                d,
                                out_len,
                                back,
                            ),
                        }
                    }
                }
            }
        }
        check(|x| x as f32, f64::from, 1e-39);
        check(|x| x, |x| x, 1e-310);
    }

    /// The lane kernels' tiles (8, 4 and 1 lanes, of every width; AVX-512 then AVX2 then one by
    /// one) give each entry the bits of summing it alone in its order, for every shape:
    /// [`lane_vecmat`]'s in order of the rows, [`lane_dots`]'s in its running sums.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn lane_products_sum_every_entry_in_their_order_whatever_the_tiles() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        /// A kernel dispatched, in AVX2 registers and, where the CPU has them, in AVX-512 ones
        /// gives `want`.
        type Forms<T> = [unsafe fn(&[T], &[T], LaneDims) -> Vec<T>; 3];
        fn agree<T: Num + PartialEq + std::fmt::Debug>(
            [any, avx2, avx512]: Forms<T>,
            v: &[T],
            m: &[T],
            d: LaneDims,
            want: Vec<T>,
        ) {
            // SAFETY: the CPU has AVX2 and FMA (checked by the test) for all but the last,
            // and AVX-512 for it (checked just below).
            unsafe {
                assert_eq!(any(v, m, d), want, "{d:?}");
                assert_eq!(avx2(v, m, d), want, "AVX2, {d:?}");
                if std::arch::is_x86_feature_detected!("avx512f") {
                    assert_eq!(avx512(v, m, d), want, "AVX-512, {d:?}");
                }
            }
        }
        fn check<T: Num + PartialEq + std::fmt::Debug>(cast: impl Fn(f64) -> T) {
            for lanes in [1, 3, 4, 8, 13] {
                for n in [1, 65, 130] {
                    for k in [1, 7, 8, 24, 40, 64, 100, 1100] {
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
                            agree([vecmat, vecmat_avx2, vecmat_avx512], &v, &m, d, want);
                            let g = fill(lanes * k, 0.3);
                            let want = dots_in_order(&g, &m, d);
                            agree([dots, dots_avx2, dots_avx512], &g, &m, d, want);
                        }
                    }
                }
            }
        }
        check(|x| x as f32);
        check(|x| x);
    }
}
