//! Low-precision arithmetic as torch does it on CPU: every f16/bf16 tensor op computes in f32
//! and rounds its result once to the dtype (nearest, ties to even), fused ops (lerp, addcmul)
//! with one f32 rounding (fma). Adam's step is written out op by op here so a bf16 or f16 run
//! reproduces torch's bit for bit (tests/data/REFERENCE_README.md, "The Adam step, op by op"),
//! with the Kahan-compensated variant and stochastic rounding beside it.

use candle_core::{DType, Result, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::classic::{AdamRule, AdamState};

/// Whether tensors of `dtype` are stored below f32, so their ops round after every step.
pub fn is_low(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// `x` rounded to `dtype` (nearest, ties to even), back in f32; f32 values stay as they are.
/// Inline: it runs several times per value of every low-precision optimizer step.
#[inline(always)]
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::BF16 => bf16::from_f32(x).to_f32(),
        DType::F16 => f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// A tensor's values in f32, flattened (exact for f16, bf16 and f32).
pub fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// `values` (already representable in `dtype`) as a tensor of `dtype` shaped like `like`.
pub fn tensor(values: Vec<f32>, like: &Tensor, dtype: DType) -> Result<Tensor> {
    Tensor::from_vec(values, like.shape(), like.device())?.to_dtype(dtype)
}

/// torch's single-tensor Adam/AdamW step for one param of a low-precision dtype (or f32
/// master params), op by op; with `comp`, the last op adds the update through a Kahan
/// compensation buffer of the param's dtype instead. Returns the new param.
pub(super) fn adam(
    rule: &AdamRule,
    s: &mut AdamState,
    param: &Tensor,
    g: &Tensor,
    lr: f64,
    t: u64,
    comp: Option<&mut Tensor>,
) -> Result<Tensor> {
    let d = param.dtype();
    let rd = |x: f32| round_to(d, x);
    let (b1, b2) = rule.betas;
    let tf = t as f64;
    let bc1 = 1.0 - b1.powf(tf);
    let bc2_sqrt = (1.0 - b2.powf(tf)).sqrt();
    let step_size = lr / bc1;
    let (mut p, mut g) = (values(param)?, values(g)?);
    let n = p.len();
    let zeros = || vec![0f32; n];
    let mut m = s.exp_avg.as_ref().map_or_else(|| Ok(zeros()), values)?;
    let mut v = s.exp_avg_sq.as_ref().map_or_else(|| Ok(zeros()), values)?;
    // The running max, only kept under amsgrad (else an empty chunk each).
    let mut vmax = match rule.amsgrad {
        true => s
            .max_exp_avg_sq
            .as_ref()
            .map_or_else(|| Ok(zeros()), values)?,
        false => Vec::new(),
    };
    let wd = rule.weight_decay;
    let (keep, wd32) = ((1.0 - lr * wd) as f32, wd as f32);
    // torch.lerp(m, g, w): fma from whichever end is nearer.
    let w = (1.0 - b1) as f32;
    let (beta2, one_minus) = (b2 as f32, (1.0 - b2) as f32);
    let (bc2_sqrt, eps, neg_step) = (bc2_sqrt as f32, rule.eps as f32, (-step_size) as f32);
    // Each element's ops in torch's order; the elements are independent, so chunks of them
    // run on the pool (the same numbers on any thread count). `g` becomes the update.
    let each = |p: &mut f32, g: &mut f32, m: &mut f32, v: &mut f32, vmax: Option<&mut f32>| {
        if wd != 0.0 && rule.decoupled {
            *p = rd(*p * keep);
        } else if wd != 0.0 {
            *g = rd(*g + wd32 * *p);
        }
        let diff = *g - *m;
        *m = rd(if w < 0.5 {
            w.mul_add(diff, *m)
        } else {
            (-diff).mul_add(1.0 - w, *g)
        });
        *v = rd(*v * beta2);
        *v = rd((one_minus * *g).mul_add(*g, *v));
        let second = match vmax {
            Some(a) => {
                *a = a.max(*v);
                *a
            }
            None => *v,
        };
        let s = rd(rd(rd(second.sqrt()) / bc2_sqrt) + eps);
        *g = (neg_step * *m) / s;
    };
    let chunk = CHUNK.min(n.max(1));
    let pass = |((((p, g), m), v), vmax): ChunkOf| {
        let mut vmax = vmax.iter_mut();
        for (((p, g), m), v) in p.iter_mut().zip(g.iter_mut()).zip(m.iter_mut()).zip(v) {
            each(p, g, m, v, vmax.next());
        }
    };
    if n >= 2 * CHUNK {
        let count = n.div_ceil(chunk);
        let vmaxes: Vec<&mut [f32]> = match rule.amsgrad {
            true => vmax.chunks_mut(chunk).collect(),
            false => (0..count).map(|_| &mut [][..]).collect(),
        };
        p.par_chunks_mut(chunk)
            .zip(g.par_chunks_mut(chunk))
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk))
            .zip(vmaxes)
            .for_each(pass);
    } else {
        pass((
            (((&mut p[..], &mut g[..]), &mut m[..]), &mut v[..]),
            &mut vmax[..],
        ));
    }
    let update = g;
    let like = param;
    match comp {
        Some(c) => {
            let mut cv = values(c)?;
            kahan_add(d, &mut p, &mut cv, &update);
            *c = tensor(cv, like, d)?;
        }
        None => p.iter_mut().zip(&update).for_each(|(p, u)| *p = rd(*p + u)),
    }
    if rule.amsgrad {
        s.max_exp_avg_sq = Some(tensor(vmax, like, d)?);
    }
    s.exp_avg = Some(tensor(m, like, d)?);
    s.exp_avg_sq = Some(tensor(v, like, d)?);
    s.moments.disown();
    tensor(p, like, d)
}

/// Elements of an Adam step a task on the pool takes (below two of them, the caller does all).
const CHUNK: usize = 16 << 10;

/// One chunk of each of Adam's arrays: param, gradient (then update), moments, running max.
type ChunkOf<'a> = (
    (
        ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]),
        &'a mut [f32],
    ),
    &'a mut [f32],
);

/// Adds `update` (f32) to params `p` through compensation `c`, both stored in `dtype`:
/// `c <- rd(c + u); old <- p; p <- rd(p + c); c <- rd(c + rd(old - p))`, so what a rounding of
/// `p` loses is carried in `c` to the next step.
pub fn kahan_add(dtype: DType, p: &mut [f32], c: &mut [f32], update: &[f32]) {
    let rd = |x: f32| round_to(dtype, x);
    for ((p, c), &u) in p.iter_mut().zip(c.iter_mut()).zip(update) {
        *c = rd(*c + u);
        let old = *p;
        *p = rd(old + *c);
        *c = rd(*c + rd(old - *p));
    }
}

/// A seeded stream of random bits (splitmix64): small, fast, and its whole state one number,
/// so a snapshot of a run carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bits(pub u64);

impl Bits {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `x` rounded stochastically to `dtype` with 16 random bits `r`: to the neighbour away from
/// zero with probability (|x| - |lo|) / (|hi| - |lo|), else to `lo`, the neighbour nearer zero.
/// NaN, infinities and values of `dtype` stay as they are. For bf16 this is the usual bit
/// trick (add `r` to the low 16 bits, clear them), whose probability is exact.
pub fn stochastic_round(dtype: DType, x: f32, r: u16) -> f32 {
    if !x.is_finite() {
        return x;
    }
    match dtype {
        DType::BF16 => {
            let bits = x.to_bits();
            if bits & 0xFFFF == 0 {
                return x;
            }
            f32::from_bits(bits.wrapping_add(u32::from(r)) & 0xFFFF_0000)
        }
        DType::F16 => {
            let near = f16::from_f32(x);
            if near.to_f32() == x {
                return x;
            }
            let (sign, mag) = (near.to_bits() & 0x8000, near.to_bits() & 0x7FFF);
            let lo = if f16::from_bits(mag).to_f32() > x.abs() {
                mag - 1
            } else {
                mag
            };
            let at = |m: u16| f64::from(f16::from_bits(m).to_f32());
            // Past the largest finite value the spacing stays that of the last binade.
            let width = if lo + 1 >= 0x7C00 {
                at(lo) - at(lo - 1)
            } else {
                at(lo + 1) - at(lo)
            };
            let p_hi = (f64::from(x.abs()) - at(lo)) / width;
            let up = f64::from(r) < p_hi * 65536.0;
            f16::from_bits(sign | if up { lo + 1 } else { lo }).to_f32()
        }
        _ => x,
    }
}

/// Every value of `x` rounded stochastically to `dtype`, drawing from `bits`.
pub fn stochastic_round_all(dtype: DType, x: &[f32], bits: &mut Bits) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    let mut word = 0u64;
    for (i, &x) in x.iter().enumerate() {
        if i % 4 == 0 {
            word = bits.next_u64();
        }
        out.push(stochastic_round(dtype, x, (word >> (16 * (i % 4))) as u16));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fraction of `n` roundings of `x` that land on `hi`, checking each is `lo` or `hi`.
    fn fraction_up(dtype: DType, x: f32, lo: f32, hi: f32, n: usize, seed: u64) -> f64 {
        let mut bits = Bits(seed);
        let out = stochastic_round_all(dtype, &vec![x; n], &mut bits);
        let stray = out.iter().find(|&&y| y != lo && y != hi);
        assert!(stray.is_none(), "{x} rounded to {stray:?}");
        out.iter().filter(|&&y| y == hi).count() as f64 / n as f64
    }

    #[test]
    fn bf16_stochastic_rounding_is_unbiased() {
        // (x, lo, hi, P(hi)), as the reference README's statistical specification lists them.
        let tenth = f32::from_bits(0x3DCC_CCCD); // float32(0.1)
        let cases = [
            (1.0 + 2f32.powi(-10), 1.0, 1.0078125, 1.0 / 8.0),
            (-(3.0 + 3.0 * 2f32.powi(-8)), -3.0, -3.015625, 3.0 / 4.0),
            (
                tenth,
                f32::from_bits(0x3DCC_0000), // 0.099609375
                f32::from_bits(0x3DCD_0000), // 0.10009765625
                52429.0 / 65536.0,
            ),
            (
                1e-40,
                f32::from_bits(0x0001_0000),
                f32::from_bits(0x0002_0000),
                // 1e-40's bits are 0x000116C2: the low 16 bits over 2^16.
                f64::from(0x16C2u32) / 65536.0,
            ),
        ];
        let n = 10_000;
        for (x, lo, hi, p) in cases {
            let got = fraction_up(DType::BF16, x, lo, hi, n, 7);
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!((got - p).abs() <= 3.0 * se, "{x}: {got} vs {p}");
        }
    }

    #[test]
    fn bf16_values_and_non_finite_values_are_kept() {
        let mut bits = Bits(3);
        for x in [1.5f32, 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY] {
            let out = stochastic_round_all(DType::BF16, &vec![x; 100], &mut bits);
            assert!(out.iter().all(|y| y.to_bits() == x.to_bits()), "{x}");
        }
        let out = stochastic_round_all(DType::BF16, &[f32::NAN; 100], &mut bits);
        assert!(out.iter().all(|y| y.is_nan()));
    }

    #[test]
    fn a_seed_reproduces_its_roundings() {
        let x: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 * 1e-4).collect();
        let run = |seed| stochastic_round_all(DType::BF16, &x, &mut Bits(seed));
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }

    #[test]
    fn f16_stochastic_rounding_is_unbiased() {
        // f16's spacing at 1 is 2^-10: x = 1 + 2^-12 is a quarter of the way up.
        let p = fraction_up(
            DType::F16,
            1.0 + 2f32.powi(-12),
            1.0,
            1.0 + 2f32.powi(-10),
            10_000,
            5,
        );
        let se = (0.25f64 * 0.75 / 10_000.0).sqrt();
        assert!((p - 0.25).abs() <= 3.0 * se, "{p}");
        // Beyond the largest finite f16 (65504, spacing 32) the neighbour above is inf.
        let p = fraction_up(DType::F16, -65512.0, -65504.0, f32::NEG_INFINITY, 10_000, 5);
        assert!((p - 0.25).abs() <= 3.0 * se, "{p}");
    }

    #[test]
    fn a_large_params_adam_step_on_the_pool_is_each_elements_step_alone() {
        use crate::optim::spec::OptimizerSpec;
        // Past two chunks the elements go to the pool in chunks; each element's numbers are
        // those of the same element stepped alone (in a tensor of 5), in f16, with amsgrad.
        let n = 2 * CHUNK + 777;
        let dev = &candle_core::Device::Cpu;
        let big = |k: f32| {
            let v: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) * k).collect();
            Tensor::from_vec(v, n, dev)
                .and_then(|t| t.to_dtype(DType::F16))
                .unwrap()
        };
        let rule =
            AdamRule::of(&OptimizerSpec::parse("adam(lr=0.01, amsgrad=true, eps=1e-4)").unwrap())
                .unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let (mut p, g) = (big(0.01), big(0.003));
        let mut s = AdamState::default();
        for t in 1..=3 {
            p = pool
                .install(|| adam(&rule, &mut s, &p, &g, 0.01, t, None))
                .unwrap();
        }
        for at in [0, CHUNK - 2, 2 * CHUNK + 770] {
            let part = |x: &Tensor| x.narrow(0, at, 5).unwrap();
            let (mut q, h) = (part(&big(0.01)), part(&g));
            let mut r = AdamState::default();
            for t in 1..=3 {
                q = adam(&rule, &mut r, &q, &h, 0.01, t, None).unwrap();
            }
            assert_eq!(values(&part(&p)).unwrap(), values(&q).unwrap(), "at {at}");
        }
    }

    #[test]
    fn adam_op_by_op_agrees_with_the_tensor_ops_in_f32() {
        use crate::optim::spec::OptimizerSpec;
        use crate::optim::step::UpdateRule;
        // Every branch: coupled and decoupled decay, amsgrad, and lerp's other end (1 - beta1
        // >= 0.5). In f32 the two differ only where fma rounds once instead of twice.
        for spec in [
            "adam(lr=0.01, weight_decay=0.1)",
            "adamw(lr=0.01, weight_decay=0.1, amsgrad=true)",
            "adam(lr=0.01, beta1=0.3, beta2=0.9)",
        ] {
            let spec = OptimizerSpec::parse(spec).unwrap();
            let rule = AdamRule::of(&spec).unwrap();
            let dev = &candle_core::Device::Cpu;
            let p0 = Tensor::new(&[0.5f32, -1.5, 2.0, 0.0], dev).unwrap();
            let (mut p, mut q) = (p0.clone(), p0);
            let (mut s, mut r) = (AdamState::default(), AdamState::default());
            for t in 1..=20u64 {
                // A gradient that changes sign and size from step to step.
                let g = (&p * (t as f64).sin()).unwrap().affine(1.0, 0.3).unwrap();
                p = adam(&rule, &mut s, &p, &g, 0.01, t, None).unwrap();
                let h = (&q * (t as f64).sin()).unwrap().affine(1.0, 0.3).unwrap();
                q = match &spec {
                    OptimizerSpec::Adam(o) => o.step(&mut r, &q, &h, 0.01, t),
                    OptimizerSpec::AdamW(o) => o.step(&mut r, &q, &h, 0.01, t),
                    _ => unreachable!("adam specs only"),
                }
                .unwrap();
            }
            for (a, b) in values(&p).unwrap().iter().zip(values(&q).unwrap()) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{spec}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn kahan_keeps_what_rounding_loses() {
        // 1 + 2^-9, a quarter of a bf16 ulp at 1, a hundred times: plain rounding never moves,
        // the compensated sum lands within one ulp of 1 + 100 * 2^-9.
        let (mut p, mut c) = (vec![1.0f32], vec![0.0f32]);
        let mut plain = 1.0f32;
        for _ in 0..100 {
            kahan_add(DType::BF16, &mut p, &mut c, &[2f32.powi(-9)]);
            plain = round_to(DType::BF16, plain + 2f32.powi(-9));
        }
        assert_eq!(plain, 1.0);
        let want = 1.0 + 100.0 * 2f32.powi(-9);
        assert!(
            (p[0] + c[0] - want).abs() <= 2f32.powi(-7),
            "{} + {}",
            p[0],
            c[0]
        );
    }
}
