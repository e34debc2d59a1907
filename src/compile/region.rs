//! Elementwise regions as one op. A loss usually ends in a few elementwise ops on one value
//! that depends on the params (`mean(softplus(z) - y * z)`, `mean(log((p - y)^2 + eps))`).
//! Op by op, candle makes a tensor for every intermediate and every intermediate's gradient,
//! and its backward pass visits each: for a logistic regression, a dozen passes over the
//! elements and as many allocations a step. A region makes one pass: each value computed as
//! its op alone computes it (so the loss is the same to the bit), and with it, in forward mode,
//! its derivative with respect to that one value; the region's backward is one product.
//!
//! First order only: the slope is a constant to the graph, so the curvature thread, which
//! differentiates gradients again, runs a region's ops one by one ([`op_by_op`]).

use std::cell::Cell;
use std::ops::{Add, Div, Mul, Neg, Sub};
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

use super::fused::{contiguous, tanh_f32};
use super::ops::{Elementwise, tangent as map1};
use super::plan::{Binary, Op, Plan, Reg, Unary};

thread_local! {
    static ONE_BY_ONE: Cell<bool> = const { Cell::new(false) };
}

/// Makes this thread evaluate regions op by op, with gradients that can be differentiated
/// again (for the curvature thread).
pub fn op_by_op() {
    ONE_BY_ONE.with(|c| c.set(true));
}

/// Whether this thread evaluates regions as one op.
pub fn fusing() -> bool {
    !ONE_BY_ONE.with(Cell::get)
}

/// An elementwise function a region computes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Neg,
    Exp,
    Log,
    Sqrt,
    Sqr,
    Sin,
    Cos,
    Tanh,
    Elem(Elementwise),
    Affine(f64, f64),
    Powf(f64),
    Add,
    Sub,
    Mul,
    Div,
    /// candle's `maximum` and `minimum`: a tie gives each side half the gradient.
    Max,
    Min,
}

impl Func {
    /// The plan op as a region function; None for what stays an op of its own: no gradient,
    /// erf, clamp, and `where`, whose backward selects a zero for the branch not taken (so an
    /// infinite gradient from above stays out of it), where a region's product with its slope
    /// would make 0 · ∞ = NaN.
    fn of(op: &Op) -> Option<Self> {
        Some(match *op {
            Op::Unary(u) => match u {
                Unary::Neg => Func::Neg,
                Unary::Exp => Func::Exp,
                Unary::Log => Func::Log,
                Unary::Sqrt => Func::Sqrt,
                Unary::Sqr => Func::Sqr,
                Unary::Sin => Func::Sin,
                Unary::Cos => Func::Cos,
                Unary::Tanh => Func::Tanh,
                Unary::Relu => Func::Elem(Elementwise::Relu),
                Unary::Elu(alpha) => Func::Elem(Elementwise::Elu(alpha)),
                Unary::Silu => Func::Elem(Elementwise::Silu),
                Unary::Custom(e) => Func::Elem(e),
                Unary::Erf | Unary::Round | Unary::Floor | Unary::Ceil | Unary::Sign => {
                    return None;
                }
            },
            Op::Affine { mul, add } => Func::Affine(mul, add),
            // x^0 is 1 with no gradient (see `plan::apply`).
            Op::Powf(e) if e != 0.0 => Func::Powf(e),
            Op::Binary(Binary::Add) => Func::Add,
            Op::Binary(Binary::Sub) => Func::Sub,
            Op::Binary(Binary::Mul) => Func::Mul,
            Op::Binary(Binary::Div) => Func::Div,
            Op::Binary(Binary::Max) => Func::Max,
            Op::Binary(Binary::Min) => Func::Min,
            _ => return None,
        })
    }
}

/// One function of a region on its slots (leaves first, then the steps' results), and which
/// of its arguments depend on the region's live leaf.
#[derive(Debug, Clone, Copy)]
struct Step {
    func: Func,
    args: [usize; 2],
    carries: [bool; 2],
}

/// Elementwise instructions of one shape that only one another read, with one value from
/// outside that carries gradient (the live leaf): executed as one op by [`Region::apply`].
#[derive(Debug, Clone)]
pub struct Region {
    /// Its instructions in program order; the last, the root, is the one read outside.
    pub members: Vec<Reg>,
    /// The registers it reads from outside, in slot order.
    pub leaves: Vec<Reg>,
    /// Which leaf carries gradient.
    live: usize,
    steps: Arc<[Step]>,
}

/// The regions of `plan` of two instructions or more, none of them `taken` (computed by
/// another fusion); `is_param(i)` tells which inputs carry gradient.
pub fn regions(plan: &Plan, is_param: impl Fn(usize) -> bool, taken: &[bool]) -> Vec<Region> {
    let n = plan.instrs.len();
    let mut carries = vec![false; n];
    for (k, instr) in plan.instrs.iter().enumerate() {
        carries[k] = match instr.op {
            Op::Input(i) => is_param(i),
            ref op => op.passes_gradient() && instr.args.iter().any(|&a| carries[a]),
        };
    }
    let readers = plan.readers();
    let mut taken = taken.to_vec();
    let fusable =
        |k: Reg, taken: &[bool]| !taken[k] && carries[k] && Func::of(&plan.instrs[k].op).is_some();
    let mut found = Vec::new();
    for root in (0..n).rev() {
        if !fusable(root, &taken) {
            continue;
        }
        let shape = &plan.instrs[root].shape;
        let mut member = vec![false; n];
        member[root] = true;
        let mut members = vec![root];
        for r in (0..root).rev() {
            let inside = !readers[r].is_empty() && readers[r].iter().all(|&q| member[q]);
            if inside && r != plan.output && fusable(r, &taken) && plan.instrs[r].shape == *shape {
                member[r] = true;
                members.push(r);
            }
        }
        // Then, while more than one value from outside carries gradient, the first member
        // becomes one from outside (no other member reads what it reads from inside).
        let live = |members: &[Reg], member: &[bool]| {
            let mut live: Vec<Reg> = Vec::new();
            for &m in members {
                for &a in &plan.instrs[m].args {
                    if carries[a] && !member[a] && !live.contains(&a) {
                        live.push(a);
                    }
                }
            }
            live
        };
        let mut leaves = live(&members, &member);
        while leaves.len() > 1 && members.len() > 2 {
            let first = members.pop().expect("members");
            member[first] = false;
            leaves = live(&members, &member);
        }
        if members.len() < 2 || leaves.len() != 1 {
            continue;
        }
        members.reverse();
        for &m in &members {
            taken[m] = true;
        }
        found.push(Region::new(plan, members, leaves[0]));
    }
    found.reverse();
    found
}

impl Region {
    fn new(plan: &Plan, members: Vec<Reg>, live_leaf: Reg) -> Self {
        let mut leaves: Vec<Reg> = Vec::new();
        for &m in &members {
            for &a in &plan.instrs[m].args {
                if !members.contains(&a) && !leaves.contains(&a) {
                    leaves.push(a);
                }
            }
        }
        let slot = |a: Reg| match members.iter().position(|&m| m == a) {
            Some(s) => leaves.len() + s,
            None => leaves.iter().position(|&l| l == a).expect("a leaf"),
        };
        let carries = |a: Reg| a == live_leaf || members.contains(&a);
        let steps = members
            .iter()
            .map(|&m| {
                let instr = &plan.instrs[m];
                // Unary functions read their argument twice.
                let arg = |i: usize| instr.args[i.min(instr.args.len() - 1)];
                Step {
                    func: Func::of(&instr.op).expect("fusable"),
                    args: [0, 1].map(|i| slot(arg(i))),
                    carries: [0, 1].map(|i| carries(arg(i))),
                }
            })
            .collect();
        let live = leaves.iter().position(|&l| l == live_leaf).expect("a leaf");
        Region {
            members,
            leaves,
            live,
            steps,
        }
    }

    /// The root's value, of shape `dims`, from the leaves' values (in [`Region::leaves`]
    /// order), each broadcast to `dims` as the ops would broadcast it.
    pub fn apply(&self, leaves: &[&Tensor], dims: &[usize]) -> Result<Tensor> {
        // candle's broadcast is a node even to the same shape, whose backward sums over no axes
        // an element at a time.
        let live = match leaves[self.live] {
            t if t.dims() == dims => t.contiguous()?,
            t => t.broadcast_as(dims)?.contiguous()?,
        };
        let others = leaves
            .iter()
            .enumerate()
            .map(|(i, t)| match i == self.live {
                true => Ok(None),
                false => Leaf::new(t, dims).map(Some),
            })
            .collect::<Result<_>>()?;
        live.apply_op1(Fused {
            steps: Arc::clone(&self.steps),
            live: self.live,
            others,
            slope: OnceLock::new(),
        })
    }
}

/// How a leaf's elements line up with the region's (row-major) elements.
#[derive(Debug, Clone, Copy)]
enum Access {
    Full,
    /// Element `i` reads `i % p`: a leaf broadcast over leading axes (a scalar has p = 1).
    Periodic(usize),
    /// Element `i` reads `i / b`: a leaf broadcast over trailing axes (a per-lane value).
    Blocked(usize),
}

#[derive(Debug, Clone)]
struct Leaf {
    t: Tensor,
    access: Access,
}

impl Leaf {
    /// `t` as the region reads it at `dims`; broadcasts other than over leading or trailing
    /// axes are made into a full tensor.
    fn new(t: &Tensor, dims: &[usize]) -> Result<Self> {
        let own = t.dims();
        let mut padded = vec![1; dims.len().saturating_sub(own.len())];
        padded.extend_from_slice(own);
        let product = |d: &[usize]| d.iter().product::<usize>();
        let ones = |d: &[usize]| d.iter().all(|&x| x == 1);
        let first = padded.iter().position(|&x| x != 1).unwrap_or(dims.len());
        let last = padded.iter().rposition(|&x| x != 1).map_or(0, |j| j + 1);
        let access = if padded == dims {
            Access::Full
        } else if padded[first..] == dims[first..] {
            Access::Periodic(product(&dims[first..]))
        } else if padded[..last] == dims[..last] && ones(&padded[last..]) {
            Access::Blocked(product(&dims[last..]))
        } else {
            let full = t.broadcast_as(dims)?.contiguous()?;
            return Ok(Leaf {
                t: full,
                access: Access::Full,
            });
        };
        Ok(Leaf {
            t: t.contiguous()?,
            access,
        })
    }

    /// Its values for the region's elements `start..start + out.len()`.
    #[inline(always)]
    fn fill<T: Copy>(access: Access, data: &[T], start: usize, out: &mut [T]) {
        match access {
            Access::Full => out.copy_from_slice(&data[start..start + out.len()]),
            Access::Periodic(p) => {
                let (mut j, mut out) = (start % p, out);
                while !out.is_empty() {
                    let run = (p - j).min(out.len());
                    let (head, rest) = out.split_at_mut(run);
                    head.copy_from_slice(&data[j..j + run]);
                    (j, out) = (0, rest);
                }
            }
            Access::Blocked(b) => {
                let (mut j, mut used, mut out) = (start / b, start % b, out);
                while !out.is_empty() {
                    let run = (b - used).min(out.len());
                    let (head, rest) = out.split_at_mut(run);
                    head.fill(data[j]);
                    (j, used, out) = (j + 1, 0, rest);
                }
            }
        }
    }
}

/// The op: the root's values forward; the live leaf's gradient is the incoming one times the
/// slope the forward pass kept.
struct Fused {
    steps: Arc<[Step]>,
    live: usize,
    others: Vec<Option<Leaf>>,
    slope: OnceLock<Tensor>,
}

impl Fused {
    fn run<T: Float>(
        &self,
        live: &[T],
        shape: &Shape,
        slice: impl Fn(&CpuStorage) -> Option<&[T]>,
    ) -> Result<Vec<T>> {
        let guards: Vec<_> = self
            .others
            .iter()
            .map(|l| l.as_ref().map(|l| l.t.storage_and_layout()))
            .collect();
        let mut leaves = Vec::with_capacity(guards.len());
        for (i, g) in guards.iter().enumerate() {
            leaves.push(match g {
                None => (live, Access::Full),
                Some((storage, layout)) => {
                    let data = match &**storage {
                        Storage::Cpu(s) => slice(s),
                        _ => None,
                    };
                    let data = data.ok_or_else(|| {
                        candle_core::Error::Msg("a region's values differ in dtype".into())
                    })?;
                    let access = self.others[i].as_ref().map_or(Access::Full, |l| l.access);
                    (contiguous(data, layout)?, access)
                }
            });
        }
        let n = live.len();
        let (mut out, mut slope) = (vec![T::default(); n], vec![T::default(); n]);
        T::interpret(&self.steps, &leaves, self.live, &mut out, &mut slope);
        let slope = T::tensor(slope, shape)?;
        let _ = self.slope.set(slope);
        Ok(out)
    }
}

impl CustomOp1 for Fused {
    fn name(&self) -> &'static str {
        "elementwise region"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = layout.shape();
        let out = match storage {
            CpuStorage::F32(v) => {
                CpuStorage::F32(self.run(contiguous(v, layout)?, shape, |s| match s {
                    CpuStorage::F32(v) => Some(v.as_slice()),
                    _ => None,
                })?)
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(self.run(contiguous(v, layout)?, shape, |s| match s {
                    CpuStorage::F64(v) => Some(v.as_slice()),
                    _ => None,
                })?)
            }
            _ => candle_core::bail!("elementwise regions take f32 or f64"),
        };
        Ok((out, shape.clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let slope = self.slope.get().ok_or_else(|| {
            candle_core::Error::Msg("a region's backward before its forward".into())
        })?;
        Ok(Some(grad.mul(slope)?))
    }
}

/// Values a chunk of the region's elements at a time, held in L1.
const CHUNK: usize = 256;

/// f32 and f64 as the region computes them: each function as its op computes it.
trait Float:
    Copy
    + Default
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn tanh(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn tangent(e: Elementwise, x: &[Self], dx: &[Self], y: &mut [Self], dy: &mut [Self]);
    fn tensor(v: Vec<Self>, shape: &Shape) -> Result<Tensor>;
    /// Runs `steps` over the elements, compiled for the widest registers the CPU has.
    fn interpret(
        steps: &[Step],
        leaves: &[(&[Self], Access)],
        live: usize,
        out: &mut [Self],
        slope: &mut [Self],
    );
}

macro_rules! float {
    ($t:ty, $tangent:ident, $tanh:expr) => {
        impl Float for $t {
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn tangent(e: Elementwise, x: &[Self], dx: &[Self], y: &mut [Self], dy: &mut [Self]) {
                e.$tangent(x, dx, y, dy)
            }
            fn tensor(v: Vec<Self>, shape: &Shape) -> Result<Tensor> {
                Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
            }
            fn interpret(
                steps: &[Step],
                leaves: &[(&[Self], Access)],
                live: usize,
                out: &mut [Self],
                slope: &mut [Self],
            ) {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f")]
                    fn avx512(
                        s: &[Step],
                        l: &[(&[$t], Access)],
                        live: usize,
                        o: &mut [$t],
                        d: &mut [$t],
                    ) {
                        interpret(s, l, live, o, d)
                    }
                    #[target_feature(enable = "avx2,fma")]
                    fn avx2(
                        s: &[Step],
                        l: &[(&[$t], Access)],
                        live: usize,
                        o: &mut [$t],
                        d: &mut [$t],
                    ) {
                        interpret(s, l, live, o, d)
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the CPU has AVX-512, checked just now.
                        return unsafe { avx512(steps, leaves, live, out, slope) };
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the CPU has AVX2 and FMA, checked just now.
                        return unsafe { avx2(steps, leaves, live, out, slope) };
                    }
                }
                interpret(steps, leaves, live, out, slope)
            }
        }
    };
}

float!(f32, tangent_f32, tanh_f32);
float!(f64, tangent_f64, f64::tanh);

/// The region over every element, a chunk at a time: leaves loaded into their slots (the live
/// leaf's derivative is 1), then each step's value and derivative from its arguments'.
#[inline(always)]
fn interpret<T: Float>(
    steps: &[Step],
    leaves: &[(&[T], Access)],
    live: usize,
    out: &mut [T],
    slope: &mut [T],
) {
    let n = out.len();
    let width = CHUNK.min(n.max(1));
    let slots = leaves.len() + steps.len();
    let mut v = vec![T::default(); slots * width];
    let mut d = vec![T::default(); slots * width];
    d[live * width..(live + 1) * width].fill(T::ONE);
    let mut start = 0;
    while start < n {
        let len = width.min(n - start);
        for (i, &(data, access)) in leaves.iter().enumerate() {
            Leaf::fill(access, data, start, &mut v[i * width..i * width + len]);
        }
        for (s, step) in steps.iter().enumerate() {
            let at = (leaves.len() + s) * width;
            let (va, vo) = v.split_at_mut(at);
            let (da, dout) = d.split_at_mut(at);
            let arg = |k: usize| {
                let j = step.args[k] * width;
                (&va[j..j + len], &da[j..j + len])
            };
            let out = (&mut vo[..len], &mut dout[..len]);
            evaluate(step, [arg(0), arg(1)], out);
        }
        let root = (slots - 1) * width;
        out[start..start + len].copy_from_slice(&v[root..root + len]);
        slope[start..start + len].copy_from_slice(&d[root..root + len]);
        start += len;
    }
}

/// One step over a chunk: `(y, dy)` from its arguments' values and derivatives.
#[inline(always)]
fn evaluate<T: Float>(step: &Step, args: [(&[T], &[T]); 2], (y, dy): (&mut [T], &mut [T])) {
    let [(a, da), (b, db)] = args;
    match step.func {
        Func::Neg => map1(a, da, y, dy, |x, dx| (-x, -dx)),
        Func::Exp => map1(a, da, y, dy, |x, dx| {
            let e = x.exp();
            (e, dx * e)
        }),
        Func::Log => map1(a, da, y, dy, |x, dx| (x.ln(), dx / x)),
        Func::Sqrt => map1(a, da, y, dy, |x, dx| {
            let r = x.sqrt();
            (r, dx / (r * T::from_f64(2.0)))
        }),
        Func::Sqr => map1(a, da, y, dy, |x, dx| (x * x, (x * dx) * T::from_f64(2.0))),
        Func::Sin => map1(a, da, y, dy, |x, dx| (x.sin(), dx * x.cos())),
        Func::Cos => map1(a, da, y, dy, |x, dx| (x.cos(), dx * -x.sin())),
        Func::Tanh => map1(a, da, y, dy, |x, dx| {
            let t = x.tanh();
            (t, dx * (T::ONE - t * t))
        }),
        Func::Elem(e) => T::tangent(e, a, da, y, dy),
        Func::Affine(mul, add) => {
            let (mul, add) = (T::from_f64(mul), T::from_f64(add));
            map1(a, da, y, dy, |x, dx| (x * mul + add, dx * mul))
        }
        Func::Powf(e) => {
            let (p, q) = (T::from_f64(e), T::from_f64(e - 1.0));
            map1(a, da, y, dy, |x, dx| (x.powf(p), dx * (x.powf(q) * p)))
        }
        Func::Add => match step.carries {
            [true, true] => map2(a, da, b, db, y, dy, |x, dx, z, dz| (x + z, dx + dz)),
            [true, false] => map2(a, da, b, db, y, dy, |x, dx, z, _| (x + z, dx)),
            _ => map2(a, da, b, db, y, dy, |x, _, z, dz| (x + z, dz)),
        },
        Func::Sub => match step.carries {
            [true, true] => map2(a, da, b, db, y, dy, |x, dx, z, dz| (x - z, dx - dz)),
            [true, false] => map2(a, da, b, db, y, dy, |x, dx, z, _| (x - z, dx)),
            _ => map2(a, da, b, db, y, dy, |x, _, z, dz| (x - z, -dz)),
        },
        Func::Mul => match step.carries {
            [true, true] => map2(a, da, b, db, y, dy, |x, dx, z, dz| (x * z, dx * z + x * dz)),
            [true, false] => map2(a, da, b, db, y, dy, |x, dx, z, _| (x * z, dx * z)),
            _ => map2(a, da, b, db, y, dy, |x, _, z, dz| (x * z, x * dz)),
        },
        Func::Div => match step.carries {
            [true, true] => map2(a, da, b, db, y, dy, |x, dx, z, dz| {
                (x / z, dx / z - (dz * x) / (z * z))
            }),
            [true, false] => map2(a, da, b, db, y, dy, |x, dx, z, _| (x / z, dx / z)),
            _ => map2(a, da, b, db, y, dy, |x, _, z, dz| {
                (x / z, -((dz * x) / (z * z)))
            }),
        },
        // The masks of candle's backward: which side the result equals, halved at a tie.
        Func::Max | Func::Min => {
            let max = step.func == Func::Max;
            let [left, right] = step.carries;
            map2(a, da, b, db, y, dy, |x, dx, z, dz| {
                let v = match max {
                    true if x < z => z,
                    false if x > z => z,
                    _ => x,
                };
                let (mx, mz) = (mask::<T>(v == x), mask::<T>(v == z));
                let d = match (left, right) {
                    (true, true) => (mx * dx) / (mz + T::ONE) + (mz * dz) / (mx + T::ONE),
                    (true, false) => (mx * dx) / (mz + T::ONE),
                    _ => (mz * dz) / (mx + T::ONE),
                };
                (v, d)
            })
        }
    }
}

/// 1 where `on`, else 0.
#[inline(always)]
fn mask<T: Float>(on: bool) -> T {
    if on { T::ONE } else { T::default() }
}

#[inline(always)]
fn map2<T: Copy>(
    a: &[T],
    da: &[T],
    b: &[T],
    db: &[T],
    y: &mut [T],
    dy: &mut [T],
    f: impl Fn(T, T, T, T) -> (T, T),
) {
    let args = a.iter().zip(da).zip(b.iter().zip(db));
    for (((&x, &dx), (&z, &dz)), (y, dy)) in args.zip(y.iter_mut().zip(dy.iter_mut())) {
        (*y, *dy) = f(x, dx, z, dz);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use candle_core::DType;

    use super::*;
    use crate::compile::lanes::LaneEvaluator;
    use crate::compile::{CompiledFile, Evaluation, Evaluator, compile, values_f64};
    use crate::lang::file;

    /// Losses whose tails are regions: every function, each side of every binary op carrying
    /// gradient alone and both, ties of max and min, and leaves broadcast every way (a live scalar and vector, data
    /// over leading axes, over trailing axes, and over a middle axis).
    const LOSSES: [&str; 10] = [
        "z = X @ w + b\nmean(softplus(z) - y * z)",
        "p = X @ w + b\nmean(log((p - y)^2 + 1e-3))",
        "z = X @ w\nsum(-z + exp(z / 4) + sqrt(z^2 + 1) + sin(z) * cos(z) + tanh(z))",
        "z = X @ w\nsum(sigmoid(z) + log1p(z^2) + abs(z) * gelu(z) + relu(z) - silu(z) + elu(z) + elu(z, 0.5))",
        "z = X @ w\nsum((z^2 + 1)^1.5 + z^3 + z * z - (2 - z))",
        "z = X @ w\nsum(y / (z^2 + 1) + z / 3 + z / (z^2 + 2))",
        "sum((b - X)^2 * 0.5)",
        "sum((X * w - v)^2 / c)",
        "sum((T * w - m)^2)",
        "z = X @ w\nsum(max(z, 1 - z) + min(z^2, 2) + max(z, z) + min(y, z))",
    ];

    fn compiled(loss: &str, dtype: &str) -> CompiledFile {
        let text = format!(
            "name = \"r\"\nseed = 0\ndtype = \"{dtype}\"\nloss = \"\"\"\n{loss}\n\"\"\"\n[data]\n\
             X = \"randn(6, 3)\"\ny = \"where(randn(6) > 0, 1, 0)\"\nv = \"randn(3)\"\n\
             c = \"1 + rand(6, 1)\"\nT = \"randn(2, 3, 3)\"\nm = \"randn(2, 1, 3)\"\n\
             [params]\nw = \"randn(3)\"\nb = 0.5\n"
        );
        let loaded = file::load_bytes(Path::new("r.toml"), text.into_bytes());
        let (c, d) = compile(loaded.file.expect("loads"));
        c.unwrap_or_else(|| panic!("{loss}: {d:?}"))
    }

    fn regions_of(c: &CompiledFile) -> Vec<Region> {
        let plan = &c.runs[0].plan;
        regions(plan, |i| i >= c.data.len(), &vec![false; plan.instrs.len()])
    }

    /// One evaluation with regions fused, and one op by op on a thread that does not fuse.
    fn both(c: &CompiledFile) -> (Evaluation, Evaluation) {
        let ev = Evaluator::new(c, 0).unwrap();
        let fused = ev.evaluate().unwrap();
        let apart = std::thread::scope(|s| {
            s.spawn(|| {
                op_by_op();
                ev.evaluate().unwrap()
            })
            .join()
            .unwrap()
        });
        (fused, apart)
    }

    fn flat(e: &Evaluation) -> Vec<f64> {
        e.grads
            .iter()
            .flat_map(|g| values_f64(g).unwrap())
            .collect()
    }

    #[test]
    fn regions_give_the_ops_loss_to_the_bit_and_their_gradients_to_rounding() {
        for (dtype, tol) in [("f64", 1e-13), ("f32", 2e-6)] {
            for loss in LOSSES {
                let c = compiled(loss, dtype);
                assert!(!regions_of(&c).is_empty(), "{loss}: no region");
                let (fused, apart) = both(&c);
                assert_eq!(fused.loss.to_bits(), apart.loss.to_bits(), "{dtype} {loss}");
                let (g, h) = (flat(&fused), flat(&apart));
                let scale = h.iter().fold(1e-300_f64, |m, x| m.max(x.abs()));
                for (a, b) in g.iter().zip(&h) {
                    assert!(
                        (a - b).abs() <= tol * scale,
                        "{dtype} {loss}: {g:?} vs {h:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_region_has_one_value_from_outside_that_carries_gradient() {
        let c = compiled("z = X @ w + b\nmean(softplus(z) - y * z)", "f64");
        let plan = &c.runs[0].plan;
        let found = regions_of(&c);
        assert_eq!(found.len(), 1);
        let ops: Vec<String> = found[0]
            .members
            .iter()
            .map(|&m| format!("{:?}", plan.instrs[m].op))
            .collect();
        // `+ b` would bring the product and b: it stays an op, and z is the live leaf.
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert!(ops.iter().all(|o| !o.contains("Add")), "{ops:?}");
        let live = found[0].leaves[found[0].live];
        assert!(matches!(plan.instrs[live].op, Op::Binary(Binary::Add)));
        // One elementwise op is no region, nor are ops that stay ops of their own (clamp, erf).
        assert!(regions_of(&compiled("sum(softplus(X @ w))", "f64")).is_empty());
        assert!(regions_of(&compiled("sum(clamp(X @ w, 0, 1) * 2)", "f64")).is_empty());
        assert!(regions_of(&compiled("sum(erf(X @ w) * 2)", "f64")).is_empty());
        assert!(regions_of(&compiled("z = X @ w\nsum(where(z > 0, z, 0) * 2)", "f64")).is_empty());
    }

    #[test]
    fn lanes_take_each_runs_region_as_the_run_alone() {
        let c = compiled(LOSSES[0], "f64");
        let alone = Evaluator::new(&c, 0).unwrap().evaluate().unwrap();
        let lanes = LaneEvaluator::new(&c, &[0, 0, 0], DType::F64)
            .unwrap()
            .expect("batches");
        let batch = lanes.evaluate().unwrap();
        let g = flat(&alone);
        for r in 0..3 {
            assert_eq!(batch.losses[r].to_bits(), alone.loss.to_bits());
            let lane: Vec<f64> = batch
                .grads
                .iter()
                .flat_map(|t| values_f64(&t.get(r).unwrap()).unwrap())
                .collect();
            for (a, b) in lane.iter().zip(&g) {
                assert!(
                    (a - b).abs() <= 1e-15 * b.abs().max(1.0),
                    "{lane:?} vs {g:?}"
                );
            }
        }
    }
}
