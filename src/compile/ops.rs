//! Elementwise functions candle lacks or differentiates differently from PyTorch, as custom ops
//! with their own backward: numerically stable sigmoid and softplus, an accurate log1p, abs
//! and relu whose gradient at 0 is 0 (candle's is 1), the exact gelu (candle's backward rounds
//! 1/sqrt(2 pi) to 0.398942, a 7e-7 relative error), elu through expm1 (candle's e^x - 1 loses
//! every digit of elu(-1e-7) in f32) and silu.
//!
//! The derivatives of gelu, silu and elu are ops of their own ([`Slope`]), computed as one
//! value and rounded once, as torch's backward kernels compute them: made of the dtype's ops
//! they cancel (silu' near its zero at x = -1.28 was 24% off in bf16; elu' as elu(x) + alpha
//! was 0 in f32 below x = -17).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use half::{bf16, f16};
use std::f64::consts::FRAC_1_SQRT_2;

use super::fused::contiguous;

/// 1 / sqrt(2π), to full f64 precision.
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// A custom elementwise op. Forward runs in f64 and rounds once to the storage dtype (f32's
/// sigmoid, softplus, relu and silu through vectorised f32 kernels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Elementwise {
    Sigmoid,
    Softplus,
    Log1p,
    Abs,
    Gelu,
    Relu,
    Silu,
    /// elu with this alpha.
    Elu(f64),
}

impl Elementwise {
    fn f(self, x: f64) -> f64 {
        match self {
            Elementwise::Sigmoid => sigmoid(x),
            Elementwise::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
            Elementwise::Log1p => x.ln_1p(),
            Elementwise::Abs => x.abs(),
            Elementwise::Gelu => x * normal_cdf(x),
            // NaN passes: it is not <= 0.
            Elementwise::Relu => {
                if x <= 0.0 {
                    0.0
                } else {
                    x
                }
            }
            Elementwise::Silu => x * sigmoid(x),
            Elementwise::Elu(alpha) => {
                if x > 0.0 {
                    x
                } else {
                    alpha * x.exp_m1()
                }
            }
        }
    }

    /// The f32 kernel of the ops that have one.
    fn f32_kernel(self) -> Option<Kernel> {
        match self {
            Elementwise::Sigmoid => Some(Kernel::Sigmoid),
            Elementwise::Softplus => Some(Kernel::Softplus),
            Elementwise::Relu => Some(Kernel::Relu),
            Elementwise::Silu => Some(Kernel::Silu),
            _ => None,
        }
    }

    /// Runs the op on `x` (made contiguous, as custom ops need).
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self)
    }
}

impl Elementwise {
    /// Its values over a chunk, exactly as its forward computes them (for [`super::region`]).
    /// One `match` a chunk, so each loop vectorises.
    #[inline(always)]
    pub(super) fn values_f32(self, x: &[f32], y: &mut [f32]) {
        match self {
            Elementwise::Sigmoid => each(x, y, sigmoid_f32),
            Elementwise::Softplus => each(x, y, softplus_f32),
            Elementwise::Relu => each(x, y, |x| if x <= 0.0 { 0.0 } else { x }),
            Elementwise::Silu => each(x, y, |x| x * sigmoid_f32(x)),
            op => each(x, y, |x| op.f(f64::from(x)) as f32),
        }
    }

    /// [`Elementwise::values_f32`] in f64.
    #[inline(always)]
    pub(super) fn values_f64(self, x: &[f64], y: &mut [f64]) {
        each(x, y, |x| self.f(x))
    }

    /// `g f'(x)` over a chunk, as its backward computes it from `x`, its values `y` and the
    /// gradient `g`.
    #[inline(always)]
    pub(super) fn adjoint_f32(self, x: &[f32], y: &[f32], g: &[f32], out: &mut [f32]) {
        match self {
            Elementwise::Sigmoid => each3(y, g, out, |y, g| (g * y) * (1.0 - y)),
            Elementwise::Softplus => each3(x, g, out, |x, g| g * sigmoid_f32(x)),
            Elementwise::Silu => each3(x, g, out, |x, g| {
                let s = sigmoid_f32(x);
                g * (s * x.mul_add(1.0 - s, 1.0))
            }),
            op => each3(x, g, out, |x, g| g * op.slope(f64::from(x)) as f32),
        }
    }

    /// [`Elementwise::adjoint_f32`] in f64.
    #[inline(always)]
    pub(super) fn adjoint_f64(self, x: &[f64], y: &[f64], g: &[f64], out: &mut [f64]) {
        match self {
            Elementwise::Sigmoid => each3(y, g, out, |y, g| (g * y) * (1.0 - y)),
            op => each3(x, g, out, |x, g| g * op.slope(x)),
        }
    }

    /// Whether [`Elementwise::adjoint_f32`] and [`Elementwise::adjoint_f64`] read the op's
    /// values `y` rather than its argument `x`.
    pub(super) fn adjoint_reads_value(self) -> bool {
        self == Elementwise::Sigmoid
    }

    /// f'(x), as its backward multiplies the gradient by it (sigmoid's aside, which its
    /// backward takes from its value).
    fn slope(self, x: f64) -> f64 {
        match self {
            Elementwise::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            Elementwise::Softplus => sigmoid(x),
            Elementwise::Log1p => 1.0 / (x + 1.0),
            Elementwise::Abs => sign(x),
            Elementwise::Relu => f64::from(u8::from(x > 0.0)),
            Elementwise::Gelu => Slope::Gelu.f(x),
            Elementwise::Silu => Slope::Silu.f(x),
            Elementwise::Elu(alpha) => Slope::Elu(alpha).f(x),
        }
    }
}

/// `y = f(x)` over a chunk, inlined into its caller's loop.
#[inline(always)]
pub(super) fn each<T: Copy>(x: &[T], y: &mut [T], f: impl Fn(T) -> T) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = f(x);
    }
}

/// `out = f(a, b)` over a chunk, inlined into its caller's loop.
#[inline(always)]
pub(super) fn each3<T: Copy>(a: &[T], b: &[T], out: &mut [T], f: impl Fn(T, T) -> T) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = f(a, b);
    }
}

/// sign(x), 0 at 0 as candle's and torch's.
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0 * x
    }
}

/// Φ(x), with erfc for accuracy at negative x.
fn normal_cdf(x: f64) -> f64 {
    0.5 * candle_core::cpu::erf::erfc_f64(-x * FRAC_1_SQRT_2)
}

/// The derivative of an activation as an op of its own: its value computed in f64 (silu's in
/// f32 for f32, as its forward) and rounded once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slope {
    /// Φ(x) + x φ(x)
    Gelu,
    /// σ(x) (1 + x (1 - σ(x)))
    Silu,
    /// 1 for x > 0, alpha e^x else
    Elu(f64),
}

impl Slope {
    fn f(self, x: f64) -> f64 {
        match self {
            Slope::Gelu => normal_cdf(x) + x * gauss(x),
            Slope::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            Slope::Elu(alpha) => {
                if x > 0.0 {
                    1.0
                } else {
                    alpha * x.exp()
                }
            }
        }
    }

    fn f32_kernel(self) -> Option<Kernel> {
        match self {
            Slope::Silu => Some(Kernel::SiluSlope),
            _ => None,
        }
    }

    /// `grad` times the slope at `x`.
    fn times(self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        grad.mul(&x.contiguous()?.apply_op1(self)?)
    }
}

/// φ(x), the standard normal density.
fn gauss(x: f64) -> f64 {
    (-0.5 * x * x).exp() * FRAC_1_SQRT_2PI
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// e^x for x <= 0 in f32 to about an ulp, branch-free so that a loop over it vectorises 16
/// values wide (libm's exp is a call per element): Cephes' expf, 2^k times a degree-6
/// polynomial on [-ln2/2, ln2/2]; results below f32's normal range round gradually to
/// subnormals and 0, as libm's do, without arithmetic on subnormals (see [`scaled`]).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to a whole number, which then sits in the low mantissa bits.
    const SHIFT: f32 = 12_582_912.0;
    const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    // Below -104, e^x rounds to 0 in f32.
    let x = x.clamp(-104.0, 0.0);
    let t = x.mul_add(std::f32::consts::LOG2_E, SHIFT);
    let k = t - SHIFT;
    let r = k.mul_add(-LN2_LO, k.mul_add(-LN2_HI, x));
    let p = P[1..].iter().fold(P[0], |p, &c| p.mul_add(r, c));
    let e = p.mul_add(r * r, r) + 1.0;
    // k in -150..=0: k + 64 + 127 in 41..=191 is a normal exponent.
    let k = t.to_bits().wrapping_sub(SHIFT.to_bits()) as i32;
    let y = scaled(e, k);
    if x.is_nan() { x } else { y }
}

/// e 2^k for e in [1/2, 2) and k in -150..=0, rounded to nearest even as a multiply rounds it,
/// with no subnormal operand or result: an x86 multiply that meets one takes a microcode assist
/// (3 ns a value against 0.06 here), and a logistic regression on separable data drives most
/// of its exps below 2^-126 (softplus took 7.6 ns a value there, 0.9 elsewhere). A normal result
/// is e with k added to its exponent; a subnormal one is a multiple of 2^-149, the nearest to
/// e 2^(k+149) (a normal value below 2^23), which adding 2^23 rounds to an integer.
#[inline(always)]
fn scaled(e: f32, k: i32) -> f32 {
    const GRID: f32 = 8_388_608.0;
    let bits = e.to_bits() as i32;
    let normal = f32::from_bits(bits.wrapping_add(k << 23) as u32);
    let w = e * f32::from_bits((((k + 149).min(23) + 127) as u32) << 23);
    let subnormal = f32::from_bits((w + GRID).to_bits().wrapping_sub(GRID.to_bits()));
    if (bits >> 23) + k >= 1 {
        normal
    } else {
        subnormal
    }
}

/// Whether e^-|x| from [`exp_nonpositive`] is below f32's normal range, where softplus and
/// sigmoid take their values by choice rather than arithmetic on a subnormal; and `e` as +0
/// there, by a mask the compiler does not turn back into `e` (a select, it did).
#[inline(always)]
fn tiny(e: f32) -> (bool, f32) {
    let tiny = e.to_bits() < f32::MIN_POSITIVE.to_bits();
    (
        tiny,
        f32::from_bits(e.to_bits() & u32::from(!tiny).wrapping_neg()),
    )
}

/// ln(1 + e) for e in [0, 1] in f32 to about an ulp, branch-free: Cephes' logf kernel on 1 + e,
/// plus the first-order correction for the rounding of 1 + e.
#[inline(always)]
fn log1p_unit(e: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const P: [f32; 9] = [
        7.037_683_6e-2,
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_4e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ];
    let u = 1.0 + e;
    // u in [1, 2]: halved above sqrt 2 so that f = m - 1 is within [sqrt 2 / 2 - 1, sqrt 2 - 1].
    let big = u > std::f32::consts::SQRT_2;
    let (m, j): (f32, f32) = if big { (0.5 * u, 1.0) } else { (u, 0.0) };
    let f = m - 1.0;
    let z = f * f;
    let y = P[1..].iter().fold(P[0], |p, &c| p.mul_add(f, c)) * f * z;
    let y = j.mul_add(LN2_LO, y);
    let y = z.mul_add(-0.5, y);
    let ln_u = j.mul_add(LN2_HI, f + y);
    ln_u + (e - (u - 1.0)) / u
}

/// [`sigmoid`] in f32 through [`exp_nonpositive`].
#[inline(always)]
fn sigmoid_f32(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    // With e subnormal, e / (1 + e) is e and 1 / (1 + e) is 1 / (1 + 0).
    let (tiny, safe) = tiny(e);
    let s = (if x >= 0.0 { 1.0 } else { safe }) / (1.0 + safe);
    if tiny && x < 0.0 { e } else { s }
}

/// Softplus in f32 through [`exp_nonpositive`] and [`log1p_unit`].
#[inline(always)]
fn softplus_f32(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    // With e subnormal, ln(1 + e) is e, and x + e is x + 0 for x > 87.
    let (tiny, safe) = tiny(e);
    let y = x.max(0.0) + log1p_unit(safe);
    if tiny && x <= 0.0 { e } else { y }
}

/// `f` over f32 values, compiled for AVX-512 or AVX2 and FMA where the CPU has them (`f`
/// branch-free, so the loop vectorises; the same operations, so the same bits).
fn map_f32(x: &[f32], f: impl Fn(f32) -> f32 + Copy) -> Vec<f32> {
    #[inline(always)]
    fn each(x: &[f32], f: impl Fn(f32) -> f32) -> Vec<f32> {
        // A plain loop: `collect`'s iterator code is not inlined into the callers below, so it
        // would miss their target features (and call libm's fmaf per element).
        let mut out = vec![0.0; x.len()];
        for (o, &v) in out.iter_mut().zip(x) {
            *o = f(v);
        }
        out
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512(x: &[f32], f: impl Fn(f32) -> f32) -> Vec<f32> {
            each(x, f)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(x: &[f32], f: impl Fn(f32) -> f32) -> Vec<f32> {
            each(x, f)
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512, checked just now.
            return unsafe { avx512(x, f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just now.
            return unsafe { avx2(x, f) };
        }
    }
    each(x, f)
}

fn map<T: Copy>(data: &[T], layout: &Layout, f: impl Fn(T) -> T) -> Result<Vec<T>> {
    Ok(contiguous(data, layout)?.iter().map(|&x| f(x)).collect())
}

/// The vectorised f32 kernels. Each arm hands [`map_f32`] a function of its own, which it
/// inlines into its loop: through a function pointer every element was a call, and a logistic
/// regression step 5x slower.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Sigmoid,
    Softplus,
    Relu,
    Silu,
    SiluSlope,
}

impl Kernel {
    fn map(self, x: &[f32]) -> Vec<f32> {
        match self {
            Kernel::Sigmoid => map_f32(x, sigmoid_f32),
            Kernel::Softplus => map_f32(x, softplus_f32),
            Kernel::Relu => map_f32(x, |x| if x <= 0.0 { 0.0 } else { x }),
            Kernel::Silu => map_f32(x, |x| x * sigmoid_f32(x)),
            Kernel::SiluSlope => map_f32(x, |x| {
                let s = sigmoid_f32(x);
                s * x.mul_add(1.0 - s, 1.0)
            }),
        }
    }
}

/// `f` (or the f32 `kernel`, for f32) over a float storage, rounded once to its dtype: an
/// elementwise op's forward.
fn map_storage(
    name: &str,
    storage: &CpuStorage,
    layout: &Layout,
    f: impl Fn(f64) -> f64,
    kernel: Option<Kernel>,
) -> Result<(CpuStorage, Shape)> {
    let out = match storage {
        CpuStorage::F64(d) => CpuStorage::F64(map(d, layout, f)?),
        // Vectorised in f32 to within a few ulp of the f64 values rounded (torch's vectorised
        // CPU kernels build on Sleef's 1-ulp exp and log1p): computed in f64, sigmoid and
        // softplus were a third of a batched logistic-regression step.
        CpuStorage::F32(d) => CpuStorage::F32(match kernel {
            Some(k) => k.map(contiguous(d, layout)?),
            None => map(d, layout, |x| f(f64::from(x)) as f32)?,
        }),
        CpuStorage::F16(d) => CpuStorage::F16(map(d, layout, |x| f16::from_f64(f(x.to_f64())))?),
        CpuStorage::BF16(d) => CpuStorage::BF16(map(d, layout, |x| bf16::from_f64(f(x.to_f64())))?),
        _ => {
            return Err(candle_core::Error::Msg(format!(
                "{name} takes floating-point tensors"
            )));
        }
    };
    Ok((out, layout.shape().clone()))
}

impl CustomOp1 for Elementwise {
    fn name(&self) -> &'static str {
        match self {
            Elementwise::Sigmoid => "sigmoid",
            Elementwise::Softplus => "softplus",
            Elementwise::Log1p => "log1p",
            Elementwise::Abs => "abs",
            Elementwise::Gelu => "gelu",
            Elementwise::Relu => "relu",
            Elementwise::Silu => "silu",
            Elementwise::Elu(_) => "elu",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = *self;
        map_storage(self.name(), storage, layout, |x| op.f(x), op.f32_kernel())
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = match *self {
            // σ' = σ (1 - σ), from σ as rounded, as torch's sigmoid_backward takes it
            Elementwise::Sigmoid => (grad * res)?.mul(&res.affine(-1.0, 1.0)?)?,
            // softplus' = σ
            Elementwise::Softplus => grad.mul(&Elementwise::Sigmoid.apply(arg)?)?,
            // log1p' = 1 / (1 + x)
            Elementwise::Log1p => grad.div(&arg.affine(1.0, 1.0)?)?,
            // |x|' = sign(x), 0 at 0 as in PyTorch
            Elementwise::Abs => grad.mul(&arg.sign()?)?,
            // 0 at 0, as in PyTorch and JAX: a zero-initialised layer passes no gradient
            Elementwise::Relu => grad.mul(&arg.gt(0.0)?.to_dtype(grad.dtype())?)?,
            Elementwise::Gelu => Slope::Gelu.times(arg, grad)?,
            Elementwise::Silu => Slope::Silu.times(arg, grad)?,
            Elementwise::Elu(alpha) => Slope::Elu(alpha).times(arg, grad)?,
        };
        Ok(Some(g))
    }
}

impl CustomOp1 for Slope {
    fn name(&self) -> &'static str {
        match self {
            Slope::Gelu => "gelu'",
            Slope::Silu => "silu'",
            Slope::Elu(_) => "elu'",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = *self;
        map_storage(self.name(), storage, layout, |x| op.f(x), op.f32_kernel())
    }

    /// The second derivatives, of the dtype's ops: only the Hessian reads them, in f64.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let second = match *self {
            // gelu'' = φ(x) (2 - x²)
            Slope::Gelu => {
                let pdf = arg
                    .sqr()?
                    .affine(-0.5, 0.0)?
                    .exp()?
                    .affine(FRAC_1_SQRT_2PI, 0.0)?;
                pdf.mul(&arg.sqr()?.affine(-1.0, 2.0)?)?
            }
            // silu'' = σ (1 - σ) (2 + x (1 - 2σ))
            Slope::Silu => {
                let s = Elementwise::Sigmoid.apply(arg)?;
                let ds = s.mul(&s.affine(-1.0, 1.0)?)?;
                ds.mul(&arg.mul(&s.affine(-2.0, 1.0)?)?.affine(1.0, 2.0)?)?
            }
            // elu'' = alpha e^x for x <= 0, 0 else
            Slope::Elu(alpha) => {
                let below = arg.le(0.0)?.to_dtype(arg.dtype())?;
                arg.exp()?.affine(alpha, 0.0)?.mul(&below)?
            }
        };
        Ok(Some(grad.mul(&second)?))
    }
}

/// `x ^ y` of two tensors, as torch computes it: a negative base with a whole exponent is a
/// number ((-2)^3 = -8) and 0^0 = 1, where candle's exp(y ln x) is NaN for both; with torch's
/// gradients, none to x where y = 0 and none to y where x = 0 and y >= 0.
#[derive(Debug, Clone, Copy)]
pub struct Pow;

impl Pow {
    /// `x ^ y`, the two broadcast against each other.
    pub fn apply(x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let shape = x.shape().broadcast_shape_binary_op(y.shape(), "pow")?;
        let x = x.broadcast_as(&shape)?.contiguous()?;
        let y = y.broadcast_as(&shape)?.contiguous()?;
        x.apply_op2(&y, Pow)
    }
}

/// `f` over the pairs of two contiguous storages of one shape.
fn zip_map<T: Copy>(
    a: &[T],
    al: &Layout,
    b: &[T],
    bl: &Layout,
    f: impl Fn(T, T) -> T,
) -> Result<Vec<T>> {
    let (a, b) = (contiguous(a, al)?, contiguous(b, bl)?);
    Ok(a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect())
}

impl CustomOp2 for Pow {
    fn name(&self) -> &'static str {
        "pow"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use CpuStorage as S;
        let out = match (a, b) {
            (S::F64(a), S::F64(b)) => S::F64(zip_map(a, al, b, bl, f64::powf)?),
            (S::F32(a), S::F32(b)) => S::F32(zip_map(a, al, b, bl, |x, y| {
                f64::from(x).powf(f64::from(y)) as f32
            })?),
            (S::F16(a), S::F16(b)) => S::F16(zip_map(a, al, b, bl, |x, y| {
                f16::from_f64(x.to_f64().powf(y.to_f64()))
            })?),
            (S::BF16(a), S::BF16(b)) => S::BF16(zip_map(a, al, b, bl, |x, y| {
                bf16::from_f64(x.to_f64().powf(y.to_f64()))
            })?),
            _ => {
                return Err(candle_core::Error::Msg(
                    "pow takes floating-point tensors of one dtype".into(),
                ));
            }
        };
        Ok((out, al.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let zero = x.zeros_like()?;
        // y x^(y-1), 0 where y = 0
        let dx = y.mul(&Pow::apply(x, &y.affine(1.0, -1.0)?)?)?;
        let dx = y.eq(0.0)?.where_cond(&zero, &dx)?;
        // x^y ln x, 0 where x = 0 and y >= 0
        let dy = res.mul(&x.log()?)?;
        let at_zero = x.eq(0.0)?.mul(&y.ge(0.0)?)?;
        let dy = at_zero.where_cond(&zero, &dy)?;
        Ok((Some(grad.mul(&dx)?), Some(grad.mul(&dy)?)))
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

    /// Every 1009th f32 in [-120, 120] (about 2 million), the extremes and the specials.
    fn sweep() -> Vec<f32> {
        let (lo, hi) = ((-120.0f32).to_bits(), 120.0f32.to_bits());
        let negative = (0..lo - 0x8000_0000)
            .step_by(1009)
            .map(|b| f32::from_bits(b + 0x8000_0000));
        let positive = (0..hi).step_by(1009).map(f32::from_bits);
        let special = [0.0, -0.0, 1e-45, -1e-45, 200.0, -200.0, f32::MAX, f32::MIN];
        let inf = [f32::INFINITY, f32::NEG_INFINITY];
        negative.chain(positive).chain(special).chain(inf).collect()
    }

    /// The distance in f32 steps between `a` and `b` (of one sign, or zeros).
    fn ulps(a: f32, b: f32) -> u32 {
        let key = |x: f32| {
            let b = x.to_bits() as i64;
            if b < 0x8000_0000 { b } else { 0x8000_0000 - b }
        };
        (key(a) - key(b)).unsigned_abs() as u32
    }

    #[test]
    fn f32_sigmoid_and_softplus_are_within_two_ulp_of_the_f64_values_rounded() {
        let x = sweep();
        for (name, fast, exact) in [
            (
                "sigmoid",
                sigmoid_f32 as fn(f32) -> f32,
                sigmoid as fn(f64) -> f64,
            ),
            ("softplus", softplus_f32, |x: f64| {
                Elementwise::Softplus.f(x)
            }),
        ] {
            let got = map_f32(&x, fast);
            let worst = x
                .iter()
                .zip(&got)
                .map(|(&x, &g)| (ulps(g, exact(f64::from(x)) as f32), x, g))
                .max_by_key(|w| w.0)
                .unwrap();
            assert!(worst.0 <= 2, "{name}: (ulps, x, fast) {worst:?}");
            // Each input alone gives the bits it gives in a vector (the tail is not vectorised).
            for (&x, &g) in x.iter().zip(&got).step_by(997) {
                assert_eq!(fast(x).to_bits(), g.to_bits(), "{name}({x})");
            }
        }
        let nan = map_f32(&[f32::NAN], softplus_f32)[0];
        assert!(nan.is_nan() && map_f32(&[f32::NAN], sigmoid_f32)[0].is_nan());
    }

    #[test]
    fn scaling_in_integers_rounds_as_a_multiply_does() {
        // Every 61st f32 in [1/2, 2) (the polynomial's range), and its ends, times 2^k for
        // every k the exp takes: the multiplies `scaled` replaces, which round to subnormals.
        let e = (0.5f32.to_bits()..2.0f32.to_bits())
            .step_by(61)
            .chain([2.0f32.to_bits() - 1])
            .map(f32::from_bits);
        let mut subnormal = 0;
        for e in e {
            for k in -150..=0 {
                let scale = f32::from_bits(((k + 64 + 127) as u32) << 23);
                let want = e * scale * f32::from_bits((127 - 64) << 23);
                assert_eq!(scaled(e, k).to_bits(), want.to_bits(), "{e} 2^{k}");
                subnormal += usize::from(want != 0.0 && !want.is_normal());
            }
        }
        assert!(subnormal > 1_000_000, "{subnormal} subnormal results");
    }

    /// Each activation's gradient at `x` in `dtype`, as autograd gives it, in f64.
    fn gradients(op: Elementwise, x: &[f64], dtype: candle_core::DType) -> Vec<f64> {
        let v = Var::from_tensor(
            &Tensor::new(x, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap(),
        )
        .unwrap();
        let g = op.apply(v.as_tensor()).unwrap().sum_all().unwrap();
        let g = g.backward().unwrap();
        let g = g
            .get(&v)
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap();
        g.to_vec1().unwrap()
    }

    #[test]
    fn activation_slopes_are_their_f64_values_rounded_once_in_every_dtype() {
        use candle_core::DType;
        let x: Vec<f64> = (0..=480).map(|i| -20.0 + i as f64 / 20.0).collect();
        for (op, slope) in [
            (Elementwise::Gelu, Slope::Gelu),
            (Elementwise::Silu, Slope::Silu),
            (Elementwise::Elu(1.0), Slope::Elu(1.0)),
            (Elementwise::Elu(0.5), Slope::Elu(0.5)),
        ] {
            // The formulas against central differences of the functions in f64 (off elu's
            // kink at 0, where its slope is alpha, as torch's).
            for &x in x.iter().filter(|&&x| x != 0.0) {
                let h = 1e-6;
                let fd = (op.f(x + h) - op.f(x - h)) / (2.0 * h);
                let d = slope.f(x);
                assert!(
                    (fd - d).abs() <= 1e-8 * (1.0 + d.abs()),
                    "{op:?}' at {x}: {d} vs {fd}"
                );
            }
            for dtype in [DType::BF16, DType::F16] {
                // x itself rounds to the dtype first.
                let xr: Vec<f64> = Tensor::new(x.as_slice(), &Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype)?.to_dtype(DType::F64)?.to_vec1())
                    .unwrap();
                let got = gradients(op, &x, dtype);
                for (&x, &g) in xr.iter().zip(&got) {
                    let want = Tensor::new(&[slope.f(x)], &Device::Cpu)
                        .and_then(|t| t.to_dtype(dtype)?.to_dtype(DType::F64)?.to_vec1::<f64>())
                        .unwrap()[0];
                    // Below the normal range candle's vectorised bf16 conversions flush to 0
                    // (AVX-512's VCVTNEPS2BF16 does): there it need only be as small.
                    let normal = match dtype {
                        DType::BF16 => f64::from(f32::MIN_POSITIVE),
                        _ => 6.103_515_625e-5,
                    };
                    let tiny = want.abs() < normal && g.abs() < normal;
                    assert!(
                        g == want || tiny,
                        "{op:?}' at {x} in {dtype:?}: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn f32_elu_keeps_small_values_and_tiny_slopes() {
        use candle_core::DType;
        let x = Tensor::new(&[-1e-7f32, -20.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = Elementwise::Elu(1.0).apply(&x).unwrap().to_vec1().unwrap();
        assert_eq!(y[0], (-1e-7f64).exp_m1() as f32);
        let g = gradients(Elementwise::Elu(1.0), &[-20.0], DType::F32);
        assert_eq!(g[0], f64::from((-20.0f64).exp() as f32));
    }

    #[test]
    fn relu_passes_no_gradient_at_zero_and_keeps_nan() {
        let g = gradients(
            Elementwise::Relu,
            &[-1.0, 0.0, 2.0],
            candle_core::DType::F64,
        );
        assert_eq!(g, vec![0.0, 0.0, 1.0]);
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            let x = Tensor::new(&[f64::NAN, -0.0], &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap();
            let y: Vec<f64> = Elementwise::Relu
                .apply(&x)
                .and_then(|t| t.to_dtype(candle_core::DType::F64)?.to_vec1())
                .unwrap();
            assert!(y[0].is_nan() && y[1] == 0.0, "{dtype:?}: {y:?}");
        }
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
