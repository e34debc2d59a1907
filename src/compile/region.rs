//! Elementwise regions as one op. A loss usually ends in a few elementwise ops on one value
//! that depends on the params (`mean(softplus(z) - y * z)`, `mean(log((p - y)^2 + eps))`).
//! Op by op, candle makes a tensor for every intermediate and every intermediate's gradient,
//! and its backward pass visits each: for a logistic regression, a dozen passes over the
//! elements and as many allocations a step. A region makes one pass forward, each value
//! computed as its op alone computes it (so the loss is the same to the bit), and one pass
//! backward, which computes the values again and sweeps the gradient back through them, each
//! step as its op's backward computes it (so what overflows or turns NaN is what does op by op).
//!
//! First order only: the backward op has no backward of its own, so the curvature thread,
//! which differentiates gradients again, runs a region's ops one by one ([`op_by_op`]).

use std::cell::Cell;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Storage, Tensor};

use super::fused::{contiguous, tanh_f32};
use super::ops::{Elementwise, each, each3};
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

    /// What the contribution to argument `k`'s gradient reads (see [`contributions`]): the
    /// first argument, the second, the step's own values.
    fn reads(self, k: usize) -> [bool; 3] {
        match self {
            Func::Neg | Func::Affine(..) | Func::Add | Func::Sub => [false; 3],
            Func::Exp | Func::Sqrt | Func::Tanh => [false, false, true],
            Func::Log | Func::Sqr | Func::Sin | Func::Cos | Func::Powf(_) => [true, false, false],
            Func::Elem(e) if e.adjoint_reads_value() => [false, false, true],
            Func::Elem(_) => [true, false, false],
            Func::Mul => [k == 1, k == 0, false],
            Func::Div => [k == 1, true, false],
            Func::Max | Func::Min => [true, true, true],
        }
    }
}

/// One function of a region on its slots (leaves first, then the steps' results), which of
/// its arguments depend on the region's live leaf, and whether the backward pass reads its
/// values (computing them again costs as much as the forward pass: `softplus(z) - y * z`
/// needs none of its values to sweep the gradient back, only `z` and `y`).
#[derive(Debug, Clone, Copy)]
struct Step {
    func: Func,
    args: [usize; 2],
    carries: [bool; 2],
    recompute: bool,
}

impl Step {
    /// Whether its argument `k` takes a gradient from it (a unary function's second argument
    /// is its first again).
    fn passes(&self, k: usize) -> bool {
        self.carries[k] && !(k == 1 && is_unary(self.func))
    }
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
    let carries = plan.carrying(is_param);
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

/// `found` placed by the register of each one's root, and the registers they compute inside
/// marked `inner`, for an executor that skips those and runs a region at its root.
pub fn place(found: Vec<Region>, root: &mut [Option<Arc<Region>>], inner: &mut [bool]) {
    for region in found {
        let (&r, members) = region.members.split_last().expect("a root");
        for &m in members {
            inner[m] = true;
        }
        root[r] = Some(Arc::new(region));
    }
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
                    recompute: false,
                }
            })
            .collect::<Vec<_>>();
        let steps = recomputed(steps, leaves.len());
        let live = leaves.iter().position(|&l| l == live_leaf).expect("a leaf");
        Region {
            members,
            leaves,
            live,
            steps,
        }
    }

    /// The register of its last instruction, whose value is read outside.
    pub fn root(&self) -> Reg {
        *self.members.last().expect("a region has members")
    }

    /// The leaf that carries gradient.
    pub fn live_leaf(&self) -> Reg {
        self.leaves[self.live]
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
        let others: Vec<&Tensor> = (0..leaves.len())
            .filter(|&i| i != self.live)
            .map(|i| leaves[i])
            .collect();
        live.apply_op1(self.program(&others, dims)?.0)
    }

    /// The region at `dims` on storages, for an op that computes its live leaf itself: `others`
    /// are the other leaves' values (in [`Region::leaves`] order, the live one left out).
    pub fn program(&self, others: &[&Tensor], dims: &[usize]) -> Result<Program> {
        let mut others = others.iter();
        let others = (0..self.leaves.len())
            .map(|i| match i == self.live {
                true => Ok(None),
                false => match others.next() {
                    Some(t) => Leaf::new(t, dims).map(Some),
                    None => candle_core::bail!("a region without its leaves"),
                },
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Program(Fused {
            steps: Arc::clone(&self.steps),
            live: self.live,
            others: others.into(),
        }))
    }
}

/// A [`Region`] with its leaves, run on the live leaf's values by [`Program::run`].
pub struct Program(Fused);

impl Program {
    /// The root's values (`grad` None), or the live leaf's gradient from the root's `grad`
    /// (each element's), all contiguous in the region's element order.
    pub fn run(&self, live: &CpuStorage, grad: Option<&CpuStorage>) -> Result<CpuStorage> {
        let layout = |s: &CpuStorage| Layout::contiguous(storage_len(s));
        let grad = grad.map(|g| (g, layout(g)));
        self.0
            .storage((live, &layout(live)), grad.as_ref().map(|(g, l)| (*g, l)))
    }
}

/// The number of elements of a storage of floats.
fn storage_len(s: &CpuStorage) -> usize {
    match s {
        CpuStorage::F32(v) => v.len(),
        CpuStorage::F64(v) => v.len(),
        _ => 0,
    }
}

/// `steps` with [`Step::recompute`] set where the backward pass reads the step's values: for
/// a contribution to an argument that carries gradient, or to compute another such value.
/// Later steps read earlier ones, so one sweep from the root back settles it.
fn recomputed(mut steps: Vec<Step>, leaves: usize) -> Arc<[Step]> {
    let mut read = vec![false; leaves + steps.len()];
    for s in (0..steps.len()).rev() {
        let step = steps[s];
        for k in 0..2 {
            if step.passes(k) {
                let [a, b, own] = step.func.reads(k);
                read[step.args[0]] |= a;
                read[step.args[1]] |= b;
                read[leaves + s] |= own;
            }
        }
        if read[leaves + s] {
            steps[s].recompute = true;
            read[step.args[0]] = true;
            read[step.args[1]] = true;
        }
    }
    steps.into()
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

/// The region's program and the leaves that carry no gradient, shared by its forward op and
/// its backward op.
#[derive(Clone)]
struct Fused {
    steps: Arc<[Step]>,
    live: usize,
    others: Arc<[Option<Leaf>]>,
}

/// The backward op: the live leaf's gradient from the root's, by a reverse sweep over the
/// region with the gradient that came in, each step's contribution as its op's backward
/// computes it (an intermediate such as 1/x of a tiny x is never formed on its own, so what
/// overflows or is NaN is what is so op by op).
struct Backward(Fused);

impl Fused {
    /// The root's values (`grad` None), or the live leaf's gradient from the root's `grad`.
    fn run<T: Float>(&self, live: &[T], grad: Option<&[T]>) -> Result<Vec<T>> {
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
                        Storage::Cpu(s) => typed::<T>(s, layout)?,
                        _ => candle_core::bail!("elementwise regions run on the CPU"),
                    };
                    let access = self.others[i].as_ref().map_or(Access::Full, |l| l.access);
                    (data, access)
                }
            });
        }
        let mut out = Vec::with_capacity(live.len());
        T::interpret(&self.steps, &leaves, self.live, grad, &mut out);
        Ok(out)
    }

    fn storage(
        &self,
        live: (&CpuStorage, &Layout),
        grad: Option<(&CpuStorage, &Layout)>,
    ) -> Result<CpuStorage> {
        fn of<T: Float>(
            f: &Fused,
            (s, l): (&CpuStorage, &Layout),
            grad: Option<(&CpuStorage, &Layout)>,
        ) -> Result<CpuStorage> {
            let grad = grad.map(|(g, gl)| typed::<T>(g, gl)).transpose()?;
            Ok(T::storage(f.run(typed::<T>(s, l)?, grad)?))
        }
        match live.0 {
            CpuStorage::F32(_) => of::<f32>(self, live, grad),
            CpuStorage::F64(_) => of::<f64>(self, live, grad),
            _ => candle_core::bail!("elementwise regions take f32 or f64"),
        }
    }
}

/// The elements of a storage of `T`s; an error for another dtype.
fn typed<'a, T: Float>(s: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    let data = T::slice(s)
        .ok_or_else(|| candle_core::Error::Msg("a region's values differ in dtype".into()))?;
    contiguous(data, layout)
}

impl CustomOp1 for Fused {
    fn name(&self) -> &'static str {
        "elementwise region"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((
            self.storage((storage, layout), None)?,
            layout.shape().clone(),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let backward = Backward(self.clone());
        Ok(Some(arg.apply_op2(&grad.contiguous()?, backward)?))
    }
}

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "elementwise region's backward"
    }

    fn cpu_fwd(
        &self,
        live: &CpuStorage,
        live_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = self
            .0
            .storage((live, live_layout), Some((grad, grad_layout)))?;
        Ok((out, live_layout.shape().clone()))
    }
}

/// Values a chunk of the region's elements at a time, held in L1.
const CHUNK: usize = 256;

/// f32 and f64 as the region computes them: each function as its op computes it (std's for
/// the arithmetic candle's ops take from std; tanh and the custom ops as gradscope's own).
trait Float: num_traits::Float + Default + Send + Sync {
    fn from_f64(x: f64) -> Self;
    /// The storage's elements if they are `Self`s.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    fn storage(v: Vec<Self>) -> CpuStorage;
    /// tanh as [`super::fused::tanh`] computes it.
    fn tanh_op(self) -> Self;
    fn values(e: Elementwise, x: &[Self], y: &mut [Self]);
    fn adjoint(e: Elementwise, x: &[Self], y: &[Self], g: &[Self], out: &mut [Self]);
    /// Runs `steps` over the elements, compiled for the widest registers the CPU has.
    fn interpret(
        steps: &[Step],
        leaves: &[(&[Self], Access)],
        live: usize,
        grad: Option<&[Self]>,
        out: &mut Vec<Self>,
    );
}

macro_rules! float {
    ($t:ty, $variant:ident, $values:ident, $adjoint:ident, $tanh:expr) => {
        impl Float for $t {
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            #[inline(always)]
            fn tanh_op(self) -> Self {
                $tanh(self)
            }
            #[inline(always)]
            fn values(e: Elementwise, x: &[Self], y: &mut [Self]) {
                e.$values(x, y)
            }
            #[inline(always)]
            fn adjoint(e: Elementwise, x: &[Self], y: &[Self], g: &[Self], out: &mut [Self]) {
                e.$adjoint(x, y, g, out)
            }
            super::fused::widest!(
                fn interpret(
                    steps: &[Step],
                    leaves: &[(&[$t], Access)],
                    live: usize,
                    grad: Option<&[$t]>,
                    out: &mut Vec<$t>,
                ) {
                    interpret(steps, leaves, live, grad, out)
                }
            );
        }
    };
}

float!(f32, F32, values_f32, adjoint_f32, tanh_f32);
float!(f64, F64, values_f64, adjoint_f64, f64::tanh);

/// The region over every element (the live leaf's), a chunk at a time, appended to `out`:
/// leaves loaded into their slots (or read in place where they have the region's shape), each
/// step's values from its arguments'; then, with `grad`, the gradients back from the root's to
/// the live leaf's, each slot's the sum of what the steps after it contribute, in reverse order
/// of the steps, as candle's backward pass adds them into a zero (the first as `0 + c`, so a -0
/// becomes +0 as it does there).
#[inline(always)]
fn interpret<T: Float>(
    steps: &[Step],
    leaves: &[(&[T], Access)],
    live: usize,
    grad: Option<&[T]>,
    out: &mut Vec<T>,
) {
    let n = leaves[live].0.len();
    let width = CHUNK.min(n.max(1));
    let slots = leaves.len() + steps.len();
    let root = slots - 1;
    let mut v = vec![T::default(); slots * width];
    let mut adj = vec![T::default(); if grad.is_some() { slots * width } else { 0 }];
    let mut parts = vec![T::default(); if grad.is_some() { 2 * width } else { 0 }];
    let mut started = vec![false; slots];
    let mut start = 0;
    while start < n {
        let len = width.min(n - start);
        let at = |slot: usize| slot * width..slot * width + len;
        for (i, &(data, access)) in leaves.iter().enumerate() {
            if !matches!(access, Access::Full) {
                Leaf::fill(access, data, start, &mut v[at(i)]);
            }
        }
        for (s, step) in steps.iter().enumerate() {
            if grad.is_some() && !step.recompute {
                continue;
            }
            let (args, own) = v.split_at_mut((leaves.len() + s) * width);
            value(
                step,
                chunk(leaves, args, step.args[0], start, width, len),
                chunk(leaves, args, step.args[1], start, width, len),
                &mut own[..len],
            );
        }
        let Some(grad) = grad else {
            out.extend_from_slice(&v[at(root)]);
            start += len;
            continue;
        };
        started.fill(false);
        for (s, step) in steps.iter().enumerate().rev() {
            let o = leaves.len() + s;
            // A step's arguments are slots before its own: their gradients lie below its.
            let (below, own) = adj.split_at_mut(o * width);
            let g = match o == root {
                true => &grad[start..start + len],
                false => &own[..len],
            };
            let (ca, cb) = parts.split_at_mut(width);
            let (ca, cb) = (&mut ca[..len], &mut cb[..len]);
            let a = chunk(leaves, &v, step.args[0], start, width, len);
            let b = chunk(leaves, &v, step.args[1], start, width, len);
            let hows = contributions(step, a, b, &v[at(o)], g, ca, cb);
            for (k, (buffer, how)) in [(&*ca, hows[0]), (&*cb, hows[1])].into_iter().enumerate() {
                if !step.passes(k) {
                    continue;
                }
                let (part, subtract) = match how {
                    Part::Added => (buffer, false),
                    Part::Subtracted => (buffer, true),
                    Part::Passed => (g, false),
                    Part::PassedNegated => (g, true),
                };
                let slot = step.args[k];
                let into = &mut below[at(slot)];
                let base = |x: T| if started[slot] { x } else { T::default() };
                match subtract {
                    false => into
                        .iter_mut()
                        .zip(part)
                        .for_each(|(x, &c)| *x = base(*x) + c),
                    true => into
                        .iter_mut()
                        .zip(part)
                        .for_each(|(x, &c)| *x = base(*x) - c),
                }
                started[slot] = true;
            }
        }
        out.extend_from_slice(&adj[at(live)]);
        start += len;
    }
}

/// A slot's values in the chunk of `len` from `start`: a full leaf's where they lie, else the
/// chunk's copy in `v` (slots of `width`).
#[inline(always)]
fn chunk<'a, T>(
    leaves: &[(&'a [T], Access)],
    v: &'a [T],
    slot: usize,
    start: usize,
    width: usize,
    len: usize,
) -> &'a [T] {
    match leaves.get(slot) {
        Some(&(data, Access::Full)) => &data[start..start + len],
        _ => &v[slot * width..slot * width + len],
    }
}

fn is_unary(f: Func) -> bool {
    !matches!(
        f,
        Func::Add | Func::Sub | Func::Mul | Func::Div | Func::Max | Func::Min
    )
}

/// One step's values over a chunk from its arguments'.
#[inline(always)]
fn value<T: Float>(step: &Step, a: &[T], b: &[T], y: &mut [T]) {
    match step.func {
        Func::Neg => each(a, y, |x| -x),
        Func::Exp => each(a, y, T::exp),
        Func::Log => each(a, y, T::ln),
        Func::Sqrt => each(a, y, T::sqrt),
        Func::Sqr => each(a, y, |x| x * x),
        Func::Sin => each(a, y, T::sin),
        Func::Cos => each(a, y, T::cos),
        Func::Tanh => each(a, y, T::tanh_op),
        Func::Elem(e) => T::values(e, a, y),
        Func::Affine(mul, add) => {
            let (mul, add) = (T::from_f64(mul), T::from_f64(add));
            each(a, y, |x| x * mul + add)
        }
        Func::Powf(e) => {
            let e = T::from_f64(e);
            each(a, y, |x| x.powf(e))
        }
        Func::Add => each3(a, b, y, |x, z| x + z),
        Func::Sub => each3(a, b, y, |x, z| x - z),
        Func::Mul => each3(a, b, y, |x, z| x * z),
        Func::Div => each3(a, b, y, |x, z| x / z),
        // candle's: the left one unless the right is larger (smaller), so NaN on the left passes.
        Func::Max => each3(a, b, y, |x, z| if x < z { z } else { x }),
        Func::Min => each3(a, b, y, |x, z| if x > z { z } else { x }),
    }
}

/// How a step's contribution to an argument's gradient goes in: its buffer added or
/// subtracted, or the step's own gradient as it is (an add or a subtract passes it on, and its
/// copy was a pass over the chunk for nothing).
#[derive(Debug, Clone, Copy)]
enum Part {
    Added,
    Subtracted,
    Passed,
    PassedNegated,
}

/// What one step adds to its arguments' gradients (those it passes one to), from its
/// arguments `a`, `b`, its values `y` and its own gradient `g`, in the arithmetic of candle's
/// backward for the op (or the op's own backward), and how each goes in (see [`Part`]).
#[inline(always)]
fn contributions<T: Float>(
    step: &Step,
    a: &[T],
    b: &[T],
    y: &[T],
    g: &[T],
    ca: &mut [T],
    cb: &mut [T],
) -> [Part; 2] {
    let two = T::from_f64(2.0);
    let wants = [step.passes(0), step.passes(1)];
    match step.func {
        Func::Neg => each3(a, g, ca, |_, g| -g),
        Func::Exp => each3(y, g, ca, |y, g| g * y),
        Func::Log => each3(a, g, ca, |x, g| g / x),
        Func::Sqrt => each3(y, g, ca, |y, g| g / (y * two)),
        Func::Sqr => each3(a, g, ca, |x, g| (x * g) * two),
        Func::Sin => each3(a, g, ca, |x, g| g * x.cos()),
        // candle subtracts g sin(x).
        Func::Cos => {
            each3(a, g, ca, |x, g| g * x.sin());
            return [Part::Subtracted, Part::Added];
        }
        Func::Tanh => each3(y, g, ca, |y, g| g * (T::one() - y * y)),
        Func::Elem(e) => T::adjoint(e, a, y, g, ca),
        Func::Affine(mul, _) => {
            let mul = T::from_f64(mul);
            each3(a, g, ca, |_, g| g * mul)
        }
        Func::Powf(e) => {
            let (p, q) = (T::from_f64(e), T::from_f64(e - 1.0));
            each3(a, g, ca, |x, g| (x.powf(q) * p) * g)
        }
        Func::Add => return [Part::Passed, Part::Passed],
        Func::Sub => return [Part::Passed, Part::PassedNegated],
        Func::Mul => {
            if wants[0] {
                each3(b, g, ca, |z, g| g * z);
            }
            if wants[1] {
                each3(a, g, cb, |x, g| g * x);
            }
        }
        Func::Div => {
            if wants[0] {
                each3(b, g, ca, |z, g| g / z);
            }
            if wants[1] {
                for (((c, &x), &z), &g) in cb.iter_mut().zip(a).zip(b).zip(g) {
                    *c = (g * x) / (z * z);
                }
            }
            return [Part::Added, Part::Subtracted];
        }
        // The masks of candle's backward: which side the result equals, halved at a tie.
        Func::Max | Func::Min => {
            let mask = |on: bool| if on { T::one() } else { T::default() };
            for ((((ca, cb), &x), &z), (&y, &g)) in ca
                .iter_mut()
                .zip(cb.iter_mut())
                .zip(a)
                .zip(b)
                .zip(y.iter().zip(g))
            {
                let (mx, mz) = (mask(y == x), mask(y == z));
                *ca = (mx * g) / (mz + T::one());
                *cb = (mz * g) / (mx + T::one());
            }
        }
    }
    [Part::Added, Part::Added]
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
    fn regions_give_the_ops_losses_and_gradients_to_the_bit() {
        for dtype in ["f64", "f32"] {
            for loss in LOSSES {
                let c = compiled(loss, dtype);
                assert!(!regions_of(&c).is_empty(), "{loss}: no region");
                let (fused, apart) = both(&c);
                assert_eq!(fused.loss.to_bits(), apart.loss.to_bits(), "{dtype} {loss}");
                let bits = |e: &Evaluation| flat(e).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fused), bits(&apart), "{dtype} {loss}");
            }
        }
    }

    #[test]
    fn a_gradient_that_stays_finite_op_by_op_stays_finite_in_a_region() {
        // d/dw sum(m * log(w)) at a subnormal w with m = 0: op by op (m g) / w = 0, where the
        // slope of log alone, 1 / w = 1e40, would overflow f32 and make 0 · ∞ = NaN.
        let text = "name = \"r\"\ndtype = \"f32\"\nloss = \"sum(m * log(w))\"\n\
                    [data]\nm = \"[0, 1]\"\n[params]\nw = \"[1e-40, 0.5]\"\n";
        let loaded = file::load_bytes(Path::new("r.toml"), text.as_bytes().to_vec());
        let (c, d) = compile(loaded.file.expect("loads"));
        let c = c.unwrap_or_else(|| panic!("{d:?}"));
        assert_eq!(regions_of(&c).len(), 1);
        let (fused, apart) = both(&c);
        assert_eq!(flat(&fused), vec![0.0, 2.0]);
        assert_eq!(flat(&apart), vec![0.0, 2.0]);
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
