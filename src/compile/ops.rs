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

/// e^x for x <= 0 in f32 to about an ulp, branch-free so that a loop over it vectorises 16
/// values wide (libm's exp is a call per element): Cephes' expf, 2^k times a degree-6
/// polynomial on [-ln2/2, ln2/2]; 2^k is applied as 2^(k+64) 2^-64 so that results below
/// f32's normal range round gradually to subnormals and 0, as libm's do.
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
    let scale = f32::from_bits(((k + 64 + 127) as u32) << 23);
    e * scale * f32::from_bits((127 - 64) << 23)
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
    (if x >= 0.0 { 1.0 } else { e }) / (1.0 + e)
}

/// Softplus in f32 through [`exp_nonpositive`] and [`log1p_unit`].
#[inline(always)]
fn softplus_f32(x: f32) -> f32 {
    x.max(0.0) + log1p_unit(exp_nonpositive(-x.abs()))
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
            // The two of a logistic loss, vectorised in f32 to within 2 ulp of the f64 values
            // rounded (torch's vectorised CPU kernels build on Sleef's 1-ulp exp and log1p):
            // computed in f64 they were a third of a batched logistic-regression step.
            CpuStorage::F32(d) if matches!(op, Elementwise::Sigmoid | Elementwise::Softplus) => {
                let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
                    candle_core::Error::Msg("custom op on a non-contiguous tensor".into())
                })?;
                CpuStorage::F32(match op {
                    Elementwise::Sigmoid => map_f32(&d[start..end], sigmoid_f32),
                    _ => map_f32(&d[start..end], softplus_f32),
                })
            }
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
