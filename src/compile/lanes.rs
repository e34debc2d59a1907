//! Several runs of one loss file evaluated as one program ("lanes"): every value that depends on
//! a param, or on a constant whose value differs between the runs, carries a leading lane axis
//! `[R] ++ shape`, so one pass of tensor ops and one backward pass serve all R runs. Data and the
//! constants the runs share keep their own shape and broadcast against the lanes.
//!
//! Each lane gets the loss and gradients its run's own [`Evaluator`](super::Evaluator) would:
//! the ops are the same elementwise, reductions run over each lane's elements in the same order,
//! and the backward pass starts from the lanes' losses together (their sum), whose gradient with
//! respect to one lane's params is that lane's own. Matmuls may round differently: a data matrix
//! against a vector per lane goes through the lane kernel (see [`super::plan::VecSide`]), other
//! products through one gemm for all lanes, while a run alone takes gemm's own path. Values that
//! also derive from what has no batched form (user functions, matmuls of rank 3 or more), which go
//! lane by lane, may have their gradients summed in another order. Everything
//! that depends on no param (data, constants, what is made of them) is computed once.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};

use super::fused::{bias_add, matmul_2d};
use super::lane_kernel::{lane_vecmat, lane_vecmat_bias};
use super::lane_tail::lane_tail;
use super::plan::{
    Binary, Instr, Narrow, Op, Plan, Reduce, Reg, VecSide, accumulating, apply, spread_wide,
};
use super::region::Region;
use super::shape::Shape;
use super::{CompiledFile, values_f64};
use crate::diagnostic::{Diagnostic, SourceFile, Span};

/// Several runs of one file stepped as one program: each param gets a leading lane axis. A clone
/// shares the params.
#[derive(Clone, Debug)]
pub struct LaneEvaluator {
    program: Arc<Program>,
    lanes: usize,
    /// Values that depend on no param, computed once: data, constants and what is made of them
    /// (with the lane axis where they differ between lanes). None for the others, and for those
    /// no per-step instruction reads.
    fixed: Vec<Option<Tensor>>,
    /// The per-lane `mul` and `add` (`[R]` each) of affine ops whose coefficients differ.
    affine: Vec<Option<(Tensor, Tensor)>>,
    params: Vec<Var>,
    dtype: DType,
}

/// The lane form of a plan, shared by every batch of its runs.
#[derive(Debug)]
struct Program {
    plan: Plan,
    n_data: usize,
    /// Whether a register's value carries the lane axis.
    batched: Vec<bool>,
    /// Whether it depends on a param, so is computed at every evaluation.
    live: Vec<bool>,
    /// The last instruction reading each register, after which its value is dropped.
    last_use: Vec<usize>,
    /// The elementwise regions (see `region`), by the register of their root.
    region: Vec<Option<Arc<Region>>>,
    /// Registers computed inside a region or a head, which `forward` skips.
    inner: Vec<bool>,
    /// The lane-kernel products with a bias per lane, by the register of their add.
    head: Vec<Option<Head>>,
    /// The reductions of a region on a lane-kernel product, by the register of the reduction.
    tail: Vec<Option<Tail>>,
    /// Per lane-kernel product `X @ w` with a shared `X` (see [`Form::Vec`]): `Xᵀ`, which the
    /// kernel reads, made once.
    transposed: Vec<Option<Tensor>>,
    /// Dtype that reductions and matmuls accumulate in, only when wider than the lanes'.
    accumulate: Option<DType>,
    source: Arc<SourceFile>,
    loss_span: Span,
}

/// `X @ w + b` (or `b + X @ w`, `w @ A + b`) for a lane-kernel product (see [`Form::Vec`]) that
/// only the add reads and a scalar `b` per lane: one op ([`lane_vecmat_bias`]) at the add.
#[derive(Debug, Clone)]
struct Head {
    product: Reg,
    side: VecSide,
    bias: Reg,
    /// The registers it reads: the product's operands, then the bias.
    reads: Vec<Reg>,
}

/// The heads of `plan`, by the register of their add, outside regions (marked `inner`).
fn heads(plan: &Plan, batched: &[bool], live: &[bool], inner: &[bool]) -> Vec<Option<Head>> {
    let readers = plan.readers();
    (0..plan.instrs.len())
        .map(|k| {
            let add = &plan.instrs[k];
            let (Op::Binary(Binary::Add), &[x, y]) = (&add.op, add.args.as_slice()) else {
                return None;
            };
            if !live[k] || inner[k] {
                return None;
            }
            [(x, y), (y, x)].into_iter().find_map(|(product, bias)| {
                let p = &plan.instrs[product];
                let Some(Form::Vec(side)) = form(p, plan, batched) else {
                    return None;
                };
                let fits = readers[product] == [k]
                    && product != plan.output
                    && !inner[product]
                    && p.shape.rank() == 1
                    && p.shape == add.shape
                    && batched[bias]
                    && plan.instrs[bias].shape.rank() == 0;
                fits.then(|| Head {
                    product,
                    side,
                    bias,
                    reads: p.args.iter().copied().chain([bias]).collect(),
                })
            })
        })
        .collect()
}

/// `sum(f(X @ w + b))` or `mean(..)` over each lane's elements, `f` a region whose live leaf is
/// a lane-kernel product (with a head's bias, or alone) that only the region reads: one op
/// ([`lane_tail`]) at the reduction.
#[derive(Debug, Clone)]
struct Tail {
    product: Reg,
    side: VecSide,
    bias: Option<Reg>,
    region: Arc<Region>,
    mean: bool,
    /// The registers it reads: the product's operands, the bias, the region's other leaves.
    reads: Vec<Reg>,
}

/// The tails of `plan` by the register of their reduction, from its regions and heads.
fn tails(
    plan: &Plan,
    batched: &[bool],
    region: &[Option<Arc<Region>>],
    head: &[Option<Head>],
) -> Vec<Option<Tail>> {
    let readers = plan.readers();
    (0..plan.instrs.len())
        .map(|k| {
            let instr = &plan.instrs[k];
            let (Op::Reduce { op, axis: None }, &[root]) = (&instr.op, instr.args.as_slice())
            else {
                return None;
            };
            let mean = match op {
                Reduce::Sum => false,
                Reduce::Mean => true,
                _ => return None,
            };
            let r = region[root].as_ref()?;
            let z = r.live_leaf();
            let shape = &plan.instrs[root].shape;
            let fits = readers[root] == [k]
                && root != plan.output
                && z != plan.output
                && readers[z].iter().all(|q| r.members.contains(q))
                && plan.instrs[z].shape == *shape
                && shape.rank() == 1
                && shape.dims().iter().product::<usize>() > 0;
            if !fits {
                return None;
            }
            let (product, side, bias) = match &head[z] {
                Some(h) => (h.product, h.side, Some(h.bias)),
                None => match form(&plan.instrs[z], plan, batched) {
                    Some(Form::Vec(side)) => (z, side, None),
                    _ => return None,
                },
            };
            let reads = plan.instrs[product]
                .args
                .iter()
                .copied()
                .chain(bias)
                .chain(r.leaves.iter().copied().filter(|&l| l != z))
                .collect();
            Some(Tail {
                product,
                side,
                bias,
                region: Arc::clone(r),
                mean,
                reads,
            })
        })
        .collect()
}

/// The registers `forward` reads to compute register `k`: a tail's or a region's leaves, a
/// head's operands, else the instruction's arguments.
fn reads<'a>(
    plan: &'a Plan,
    region: &'a [Option<Arc<Region>>],
    head: &'a [Option<Head>],
    tail: &'a [Option<Tail>],
    k: usize,
) -> &'a [Reg] {
    match (&tail[k], &region[k], &head[k]) {
        (Some(t), ..) => &t.reads,
        (None, Some(r), _) => &r.leaves,
        (None, None, Some(h)) => &h.reads,
        _ => &plan.instrs[k].args,
    }
}

/// Every lane's loss and gradients at one point.
#[derive(Debug, Clone)]
pub struct LaneEvaluation {
    pub losses: Vec<f64>,
    /// One per param, `[R, ..param dims]`, detached from the graph.
    pub grads: Vec<Tensor>,
}

impl LaneEvaluator {
    /// Runs `defs` (run-definition indexes of `compiled`, may repeat) in `dtype`, every lane at
    /// the file's initial params; Ok(None) when their programs differ beyond the values of
    /// constants (consts, folded constants, affine coefficients) or use an op that does not batch.
    pub fn new(
        compiled: &CompiledFile,
        defs: &[usize],
        dtype: DType,
    ) -> candle_core::Result<Option<Self>> {
        let Some(runs) = defs
            .iter()
            .map(|&d| compiled.runs.get(d))
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
        let Some(first) = runs.first() else {
            return Ok(None);
        };
        let wider = |a: DType| a.size_in_bytes() > dtype.size_in_bytes();
        let accumulate = first.accumulate().filter(|&a| wider(a));
        let plans: Vec<&Plan> = runs.iter().map(|r| &r.plan).collect();
        if runs
            .iter()
            .any(|r| r.accumulate().filter(|&a| wider(a)) != accumulate)
            || plans.iter().any(|p| !same_program(plans[0], p))
        {
            return Ok(None);
        }
        let plan = plans[0].clone();
        let n = plan.instrs.len();
        let n_data = compiled.data.len();
        let lanes = defs.len();
        let mut batched = vec![false; n];
        let mut live = vec![false; n];
        let mut fixed: Vec<Option<Tensor>> = vec![None; n];
        let mut affine = vec![None; n];
        for (k, instr) in plan.instrs.iter().enumerate() {
            match &instr.op {
                Op::Input(i) if *i < n_data => {
                    fixed[k] = Some(compiled.data[*i].value.to_dtype(dtype)?);
                }
                Op::Input(_) => {
                    live[k] = true;
                    batched[k] = true;
                }
                Op::Const(_) => {
                    let (value, varies) = lane_constant(&plans, k)?;
                    fixed[k] = Some(value.to_dtype(dtype)?);
                    batched[k] = varies;
                }
                Op::Affine { .. } => {
                    let column = |v: Vec<f64>| Tensor::new(v, &Device::Cpu)?.to_dtype(dtype);
                    if let Some((muls, adds)) = lane_coefficients(&plans, k) {
                        affine[k] = Some((column(muls)?, column(adds)?));
                        batched[k] = true;
                    }
                }
                _ => {}
            }
            live[k] |= instr.args.iter().any(|&a| live[a]);
            batched[k] |= instr.args.iter().any(|&a| batched[a]);
        }
        // Half-precision matmuls go through candle's gemm, whose sums depend on the shapes.
        let half = !matches!(accumulate.unwrap_or(dtype), DType::F32 | DType::F64);
        let matmul = |(i, &l): (&Instr, &bool)| l && matches!(i.op, Op::MatMul { .. });
        if half && plan.instrs.iter().zip(&live).any(matmul) {
            return Ok(None);
        }
        let mut region = vec![None; n];
        let mut inner = vec![false; n];
        // Regions and heads compute in f32 or f64, with no wider dtype to accumulate in.
        let fuse = accumulate.is_none() && matches!(dtype, DType::F32 | DType::F64);
        if fuse {
            // A region's tape holds one affine for all lanes.
            let taken: Vec<bool> = affine.iter().map(Option::is_some).collect();
            let found = super::region::regions(&plan, |i| i >= n_data, &taken);
            super::region::place(found, &mut region, &mut inner);
        }
        let head = match fuse {
            true => heads(&plan, &batched, &live, &inner),
            false => vec![None; n],
        };
        for h in head.iter().flatten() {
            inner[h.product] = true;
        }
        let tail = match fuse {
            true => tails(&plan, &batched, &region, &head),
            false => vec![None; n],
        };
        for t in tail.iter().flatten() {
            for r in [t.region.root(), t.region.live_leaf(), t.product] {
                inner[r] = true;
            }
        }
        let last_use = plan.last_uses_reading(|k| match inner[k] {
            true => Vec::new(),
            false => reads(&plan, &region, &head, &tail, k).to_vec(),
        });
        let source = Arc::clone(&compiled.file.source);
        let loss_span = plan.instrs[plan.output].span.clone();
        let mut this = Self {
            program: Arc::new(Program {
                plan,
                n_data,
                batched,
                live,
                last_use,
                region,
                inner,
                head,
                tail,
                transposed: vec![None; n],
                accumulate,
                source,
                loss_span,
            }),
            lanes,
            fixed,
            affine,
            params: Vec::new(),
            dtype,
        };
        this.fix()?;
        this.params = compiled
            .params
            .iter()
            .map(|p| {
                let mut dims = vec![lanes];
                dims.extend_from_slice(p.value.dims());
                let v = p.value.to_dtype(dtype)?.unsqueeze(0)?.broadcast_as(dims)?;
                Var::from_tensor(&v.contiguous()?)
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Some(this))
    }

    /// Computes the values that depend on no param, keeps those the per-step instructions (or
    /// the output) read, and transposes the shared matrices of [`Form::Vec`] products.
    fn fix(&mut self) -> candle_core::Result<()> {
        let p = Arc::clone(&self.program);
        for k in 0..p.plan.instrs.len() {
            if !p.live[k] && self.fixed[k].is_none() {
                let v = self.compute(k, &[])?;
                self.fixed[k] = Some(v);
            }
        }
        let mut read = vec![false; p.plan.instrs.len()];
        read[p.plan.output] = true;
        let mut transposed = vec![None; p.plan.instrs.len()];
        for (k, instr) in p.plan.instrs.iter().enumerate() {
            if !p.live[k] {
                continue;
            }
            for &a in &instr.args {
                read[a] = true;
            }
            // The shared data matrix of a lane-kernel product `X @ w`, transposed once.
            let matrix = match form(instr, &p.plan, &p.batched) {
                Some(Form::Vec(VecSide::Right)) => instr.args[0],
                _ => continue,
            };
            if let Some(m) = self.fixed[matrix].as_ref().filter(|_| !p.batched[matrix]) {
                transposed[k] = Some(m.t()?.contiguous()?);
            }
        }
        for (v, read) in self.fixed.iter_mut().zip(read) {
            if !read {
                *v = None;
            }
        }
        drop(p);
        let program = Arc::get_mut(&mut self.program).expect("not shared yet");
        program.transposed = transposed;
        Ok(())
    }

    /// Whether stepping its runs as lanes is faster than apart: not when a matmul multiplies a
    /// matrix per lane (a layer's weights), which costs a gemm per lane either way and loses
    /// a run alone's fused layers (8 runs of the bench MLP: 41 steps/s as lanes, 94 apart).
    pub fn pays(&self) -> bool {
        let p = &self.program;
        p.plan.instrs.iter().all(|instr| {
            !matches!(
                form(instr, &p.plan, &p.batched),
                Some(Form::SharedLhs | Form::Batched | Form::PerLane)
            )
        })
    }

    /// How many runs it evaluates at once.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// The params, `[R, ..param dims]` each.
    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// Sets every param from `[R, ..param dims]` tensors, in the params' order.
    pub fn set_params(&self, batched: &[Tensor]) -> candle_core::Result<()> {
        if batched.len() != self.params.len() {
            return Err(candle_core::Error::Msg(format!(
                "{} tensors for {} params",
                batched.len(),
                self.params.len()
            )));
        }
        for (var, t) in self.params.iter().zip(batched) {
            var.set(&t.to_dtype(self.dtype)?)?;
        }
        Ok(())
    }

    /// Every lane's loss and gradients at the current params, as [`Evaluator::evaluate`] gives
    /// each run (zeros for params a loss does not depend on).
    ///
    /// [`Evaluator::evaluate`]: super::Evaluator::evaluate
    pub fn evaluate(&self) -> Result<LaneEvaluation, Diagnostic> {
        let internal = |e| self.internal(e);
        let out = self.forward()?;
        let losses = self.losses(&out).map_err(internal)?;
        // Backward from the lanes' losses seeds each with 1, as a lone run's backward does.
        let store = out.backward().map_err(internal)?;
        let grads =
            super::param_grads(&store, &self.params, |g| Ok(g.clone())).map_err(internal)?;
        Ok(LaneEvaluation { losses, grads })
    }

    /// The batch of lanes `keep` only (in that order), at their current params: for runs
    /// leaving.
    pub fn select(&self, keep: &[usize]) -> candle_core::Result<Self> {
        if keep.is_empty() || keep.iter().any(|&l| l >= self.lanes) {
            return Err(candle_core::Error::Msg(format!(
                "lanes {keep:?} of a batch of {}",
                self.lanes
            )));
        }
        let ids: Vec<u32> = keep.iter().map(|&l| l as u32).collect();
        let ids = Tensor::from_vec(ids, keep.len(), &Device::Cpu)?;
        let pick = |t: &Tensor| t.index_select(&ids, 0);
        let fixed = self
            .fixed
            .iter()
            .zip(&self.program.batched)
            .map(|(v, &b)| match v {
                Some(t) if b => pick(t).map(Some),
                v => Ok(v.clone()),
            })
            .collect::<candle_core::Result<_>>()?;
        let affine = self
            .affine
            .iter()
            .map(|c| {
                c.as_ref()
                    .map(|(m, a)| Ok((pick(m)?, pick(a)?)))
                    .transpose()
            })
            .collect::<candle_core::Result<_>>()?;
        let params = self
            .params
            .iter()
            .map(|v| Var::from_tensor(&pick(v.as_tensor())?))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            program: Arc::clone(&self.program),
            lanes: keep.len(),
            fixed,
            affine,
            params,
            dtype: self.dtype,
        })
    }

    /// The lanes' losses `[R]` at the current params, with their graph.
    fn forward(&self) -> Result<Tensor, Diagnostic> {
        let p = &self.program;
        let mut regs: Vec<Option<Tensor>> = vec![None; p.plan.instrs.len()];
        for (k, instr) in p.plan.instrs.iter().enumerate() {
            if !p.live[k] || p.inner[k] {
                continue;
            }
            let value = match (&instr.op, &p.tail[k], &p.region[k], &p.head[k]) {
                (Op::Input(i), ..) => Ok(self.params[i - p.n_data].as_tensor().clone()),
                (_, Some(tail), ..) => self.tail(tail, k, &mut regs),
                (_, None, Some(region), _) => self.region(region, &mut regs),
                (_, None, None, Some(head)) => self.head(head, &regs),
                _ => self.compute(k, &regs),
            };
            regs[k] = Some(value.map_err(|e| {
                Diagnostic::error(format!("evaluation failed: {e}"))
                    .at(&p.source, instr.span.clone())
                    .help("this is a gradscope bug: the shapes were checked, so please report it")
            })?);
            for &a in reads(&p.plan, &p.region, &p.head, &p.tail, k) {
                if p.last_use[a] == k {
                    regs[a] = None;
                }
            }
        }
        let out = regs[p.plan.output].take();
        Ok(out
            .or_else(|| self.fixed[p.plan.output].clone())
            .expect("output computed"))
    }

    /// The lanes' losses in f64 from the output (a loss that depends on neither params nor
    /// per-lane constants is one scalar for all).
    fn losses(&self, out: &Tensor) -> candle_core::Result<Vec<f64>> {
        let values = values_f64(out)?;
        Ok(match values.as_slice() {
            [v] if out.rank() == 0 => vec![*v; self.lanes],
            _ => values,
        })
    }

    fn internal(&self, e: candle_core::Error) -> Diagnostic {
        Diagnostic::error(format!("evaluation failed: {e}"))
            .at(&self.program.source, self.program.loss_span.clone())
    }

    /// A region's root value, its leaves read from `regs` or fixed (with the lane axis where
    /// they have it, lifted to the region's rank); op by op where this thread does not fuse.
    fn region(&self, region: &Region, regs: &mut [Option<Tensor>]) -> candle_core::Result<Tensor> {
        let (&root, members) = region.members.split_last().expect("a root");
        if !super::region::fusing() {
            for &m in members {
                regs[m] = Some(self.compute(m, regs)?);
            }
            let value = self.compute(root, regs);
            for &m in members {
                regs[m] = None;
            }
            return value;
        }
        let leaves = self.leaves(region, region.leaves.iter().copied(), regs)?;
        region.apply(&leaves.iter().collect::<Vec<_>>(), &self.dims(root))
    }

    /// Register `k`'s shape with the lane axis.
    fn dims(&self, k: usize) -> Vec<usize> {
        let mut dims = vec![self.lanes];
        dims.extend_from_slice(self.program.plan.instrs[k].shape.dims());
        dims
    }

    /// The values of `leaves` of `region`, with the lane axis where they have it, lifted to
    /// the region's rank.
    fn leaves(
        &self,
        region: &Region,
        leaves: impl Iterator<Item = Reg>,
        regs: &[Option<Tensor>],
    ) -> candle_core::Result<Vec<Tensor>> {
        let p = &self.program;
        let rank = p.plan.instrs[region.root()].shape.rank();
        leaves
            .map(|a| {
                let t = self.value(regs, a);
                match p.batched[a] {
                    true => lift(t, &p.plan.instrs[a].shape, rank),
                    false => Ok(t.clone()),
                }
            })
            .collect()
    }

    /// A tail's reduction (register `k`) as one op; its parts op by op where this thread does
    /// not fuse.
    fn tail(
        &self,
        tail: &Tail,
        k: usize,
        regs: &mut [Option<Tensor>],
    ) -> candle_core::Result<Tensor> {
        let (root, z) = (tail.region.root(), tail.region.live_leaf());
        if !super::region::fusing() {
            regs[tail.product] = Some(self.compute(tail.product, regs)?);
            if z != tail.product {
                regs[z] = Some(self.compute(z, regs)?);
            }
            regs[root] = Some(self.region(&tail.region, regs)?);
            let value = self.compute(k, regs);
            for r in [tail.product, z, root] {
                regs[r] = None;
            }
            return value;
        }
        let (v, m) = self.operands(tail.product, tail.side, regs)?;
        let others = tail.region.leaves.iter().copied().filter(|&l| l != z);
        let others = self.leaves(&tail.region, others, regs)?;
        let region = tail
            .region
            .program(&others.iter().collect::<Vec<_>>(), &self.dims(root))?;
        let bias = tail.bias.map(|b| self.value(regs, b));
        lane_tail(v, bias, &m, region, tail.mean)
    }

    /// Register `a`'s value: computed in this evaluation (in `regs`) or fixed.
    fn value<'a>(&'a self, regs: &'a [Option<Tensor>], a: usize) -> &'a Tensor {
        regs.get(a)
            .and_then(Option::as_ref)
            .or(self.fixed[a].as_ref())
            .expect("defined before use")
    }

    /// A head's value: its product with the lanes' biases added, as one op.
    fn head(&self, head: &Head, regs: &[Option<Tensor>]) -> candle_core::Result<Tensor> {
        let (v, m) = self.operands(head.product, head.side, regs)?;
        lane_vecmat_bias(v, self.value(regs, head.bias), &m)
    }

    /// [`Self::vec_operands`] of lane-kernel product `k`, its arguments read from `regs`.
    fn operands<'a>(
        &'a self,
        k: usize,
        side: VecSide,
        regs: &'a [Option<Tensor>],
    ) -> candle_core::Result<(&'a Tensor, Tensor)> {
        let args = &self.program.plan.instrs[k].args;
        self.vec_operands(
            k,
            side,
            self.value(regs, args[0]),
            self.value(regs, args[1]),
        )
    }

    /// The operands of lane-kernel product `k` of `x` and `y` (see [`Form::Vec`]): the lanes'
    /// vector and the matrix as the kernel reads it (`Xᵀ` for `X @ w`, kept since `fix` when
    /// shared).
    fn vec_operands<'a>(
        &self,
        k: usize,
        side: VecSide,
        x: &'a Tensor,
        y: &'a Tensor,
    ) -> candle_core::Result<(&'a Tensor, Tensor)> {
        Ok(match side {
            VecSide::Right => {
                let xt = match &self.program.transposed[k] {
                    Some(xt) => xt.clone(),
                    None => x.transpose(x.rank() - 2, x.rank() - 1)?.contiguous()?,
                };
                (y, xt)
            }
            VecSide::Left => (x, y.clone()),
        })
    }

    /// Register `k`'s value from its arguments' (in `regs`, or fixed), in the mixed precision of
    /// [`super::plan::Executable`] where it has one.
    fn compute(&self, k: usize, regs: &[Option<Tensor>]) -> candle_core::Result<Tensor> {
        let p = &self.program;
        let instr = &p.plan.instrs[k];
        let args: Vec<&Tensor> = instr.args.iter().map(|&a| self.value(regs, a)).collect();
        accumulating(&instr.op, p.accumulate, &args, |args| {
            self.lane_apply(k, args)
        })
    }

    /// Instruction `k` on its arguments, with the lane axis where they have it.
    fn lane_apply(&self, k: usize, args: &[&Tensor]) -> candle_core::Result<Tensor> {
        let p = &self.program;
        let instr = &p.plan.instrs[k];
        if !p.batched[k] {
            return apply(&instr.op, args, &instr.shape);
        }
        let lanes = self.lanes;
        let laned = |s: &Shape| {
            let mut dims = Vec::with_capacity(s.rank() + 1);
            dims.push(lanes);
            dims.extend_from_slice(s.dims());
            Shape(dims)
        };
        let out = laned(&instr.shape);
        let arg_batched = |i: usize| p.batched[instr.args[i]];
        let arg_shape = |i: usize| &p.plan.instrs[instr.args[i]].shape;
        // Batched arguments lifted to the output's rank, so shared ones broadcast as NumPy would.
        let lifted = || -> candle_core::Result<Vec<Tensor>> {
            (0..args.len())
                .map(|i| match arg_batched(i) {
                    true => lift(args[i], arg_shape(i), instr.shape.rank()),
                    false => Ok(args[i].clone()),
                })
                .collect()
        };
        // Every argument with the lane axis, shared ones broadcast to it (stack, concat).
        let all_laned = || -> candle_core::Result<Vec<Tensor>> {
            (0..args.len())
                .map(|i| match arg_batched(i) {
                    true => Ok(args[i].clone()),
                    false => args[i].unsqueeze(0)?.broadcast_as(laned(arg_shape(i)).0),
                })
                .collect()
        };
        // Each lane on its own, as a run alone computes it, the results stacked: for what has
        // no batched form.
        let per_lane = || -> candle_core::Result<Tensor> {
            let parts = (0..lanes)
                .map(|r| {
                    let own = (0..args.len())
                        .map(|i| match arg_batched(i) {
                            true => args[i].get(r),
                            false => Ok(args[i].clone()),
                        })
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    apply(&instr.op, &own.iter().collect::<Vec<_>>(), &instr.shape)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&parts, 0)
        };
        let run = |op: &Op, args: &[Tensor]| {
            let refs: Vec<&Tensor> = args.iter().collect();
            apply(op, &refs, &out)
        };
        match &instr.op {
            Op::Input(_) | Op::Const(_) => Err(candle_core::Error::Msg(
                "inputs and constants are not computed".into(),
            )),
            Op::Affine { .. } if self.affine[k].is_some() => {
                let (mul, add) = self.affine[k].as_ref().expect("checked");
                let rank = arg_shape(0).rank();
                let x = match arg_batched(0) {
                    true => args[0].clone(),
                    false => args[0].unsqueeze(0)?,
                };
                x.broadcast_mul(&column(mul, rank)?)?
                    .broadcast_add(&column(add, rank)?)
            }
            Op::Unary(_)
            | Op::Affine { .. }
            | Op::Powf(_)
            | Op::Detach
            | Op::Reshape
            | Op::Transpose
            | Op::OneHot { .. } => apply(&instr.op, args, &out),
            Op::Binary(_) => {
                let lifted = lifted()?;
                let refs: Vec<&Tensor> = lifted.iter().collect();
                match spread_wide(&instr.op, p.accumulate, &refs, &out) {
                    Some(spread) => run(&instr.op, &spread?),
                    None => run(&instr.op, &lifted),
                }
            }
            Op::Compare(_) | Op::Where | Op::Clamp => run(&instr.op, &lifted()?),
            Op::BiasAdd => match arg_batched(1) {
                false => bias_add(args[0], args[1]),
                // A bias per lane: `[R, n]` against `[R, .., n]` (or a shared `[.., n]`).
                true => {
                    let b = args[1];
                    let mut dims = vec![b.dim(0)?];
                    dims.resize(out.rank() + 1 - b.rank(), 1);
                    dims.extend_from_slice(&b.dims()[1..]);
                    args[0].broadcast_add(&b.reshape(dims)?)
                }
            },
            Op::MatMul { lhs_grad, .. } => {
                let f = form(instr, &p.plan, &p.batched).expect("a matmul");
                let (x, y) = (args[0], args[1]);
                let (rx, ry) = (arg_shape(0).rank(), arg_shape(1).rank());
                match f {
                    Form::Dot => x.broadcast_mul(y)?.sum(1),
                    // As a run alone computes it (see `plan::vec_matmul`), all lanes at once.
                    Form::Vec(side) => {
                        let (v, m) = self.vec_operands(k, side, x, y)?;
                        lane_vecmat(v, &m)
                    }
                    Form::Rows => {
                        let k = x.dim(candle_core::D::Minus1)?;
                        let y = if ry == 1 { y.unsqueeze(1)? } else { y.clone() };
                        matmul_2d(&x.reshape((x.elem_count() / k, k))?, &y, *lhs_grad, false)?
                            .reshape(out.dims())
                    }
                    Form::SharedLhs => {
                        let x = if rx == 1 { x.unsqueeze(0)? } else { x.clone() };
                        let y = if ry == 1 { y.unsqueeze(2)? } else { y.clone() };
                        x.broadcast_matmul(&y)?.reshape(out.dims())
                    }
                    Form::Batched => {
                        let x = if rx == 1 { x.unsqueeze(1)? } else { x.clone() };
                        let y = if ry == 1 { y.unsqueeze(2)? } else { y.clone() };
                        x.matmul(&y)?.reshape(out.dims())
                    }
                    Form::PerLane => per_lane(),
                }
            }
            Op::Reduce { op, axis } => match axis {
                Some(a) => apply(
                    &Op::Reduce {
                        op: *op,
                        axis: Some(a + 1),
                    },
                    args,
                    &out,
                ),
                // Over every axis of each lane: its elements in a row, reduced along the row.
                None => {
                    let flat = args[0].reshape((lanes, args[0].elem_count() / lanes))?;
                    let op = Op::Reduce {
                        op: *op,
                        axis: Some(1),
                    };
                    apply(&op, &[&flat], &out)
                }
            },
            Op::Softmax { axis, log } => apply(
                &Op::Softmax {
                    axis: axis + 1,
                    log: *log,
                },
                args,
                &out,
            ),
            Op::Index { narrows, squeeze } => {
                let op = Op::Index {
                    narrows: narrows
                        .iter()
                        .map(|n| Narrow {
                            dim: n.dim + 1,
                            ..n.clone()
                        })
                        .collect(),
                    squeeze: squeeze.iter().map(|d| d + 1).collect(),
                };
                apply(&op, args, &out)
            }
            Op::Stack { axis } => run(&Op::Stack { axis: axis + 1 }, &all_laned()?),
            Op::Concat { axis } => run(&Op::Concat { axis: axis + 1 }, &all_laned()?),
            Op::Pad {
                axis,
                before,
                after,
            } => {
                let op = Op::Pad {
                    axis: axis + 1,
                    before: *before,
                    after: *after,
                };
                apply(&op, args, &out)
            }
            Op::ArgReduce { axis, max } => apply(
                &Op::ArgReduce {
                    axis: axis + 1,
                    max: *max,
                },
                args,
                &out,
            ),
            // Its gradient plans are written for one run's shapes.
            Op::Function(_) => per_lane(),
        }
    }
}

/// How a matmul with the lane axis on one or both sides is computed (per-lane ranks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Vector · vector: a product and a sum along each lane's row.
    Dot,
    /// A vector with gradient against a matrix without (`X @ w`, `w @ A`): the lane kernel, as a
    /// run alone computes it, with the lanes' vectors as its rows (the matrix read once for all
    /// where the lanes share it).
    Vec(VecSide),
    /// Each lane's rows @ a shared matrix or vector: the rows of all lanes through one gemm.
    Rows,
    /// A shared vector or matrix @ each lane's vector or matrix: a gemm per lane, the shared side
    /// read in place, its gradient never computed.
    SharedLhs,
    /// Both sides per lane: candle's batched matmul.
    Batched,
    /// An operand of rank 3 or more: lane by lane, as a run alone (candle's gemm folds batches
    /// by shape, so one broadcasting matmul for all lanes would sum differently).
    PerLane,
}

/// The form of matmul `instr` given which registers carry the lane axis; None for another op.
fn form(instr: &Instr, plan: &Plan, batched: &[bool]) -> Option<Form> {
    let (Op::MatMul { .. }, &[x, y]) = (&instr.op, instr.args.as_slice()) else {
        return None;
    };
    let (rx, ry) = (plan.instrs[x].shape.rank(), plan.instrs[y].shape.rank());
    if let Some(side) = VecSide::of(&instr.op, rx, ry) {
        return Some(Form::Vec(side));
    }
    match (batched[x], batched[y], rx, ry) {
        (_, _, 1, 1) => Some(Form::Dot),
        (true, false, _, 1 | 2) => Some(Form::Rows),
        (false, true, 1 | 2, 1 | 2) => Some(Form::SharedLhs),
        (true, true, 1 | 2, 1 | 2) => Some(Form::Batched),
        _ => Some(Form::PerLane),
    }
}

/// A batched value of per-lane shape `s` at rank `rank + 1`: ones inserted after the lane axis,
/// so that it broadcasts against shared values of rank `rank` as NumPy aligns them.
fn lift(t: &Tensor, s: &Shape, rank: usize) -> candle_core::Result<Tensor> {
    if s.rank() >= rank {
        return Ok(t.clone());
    }
    let mut dims = vec![t.dim(0)?];
    dims.resize(1 + rank - s.rank(), 1);
    dims.extend_from_slice(s.dims());
    t.reshape(dims)
}

/// A per-lane value `[R]` as `[R, 1, .., 1]` (`rank` ones), to scale values of that rank.
fn column(t: &Tensor, rank: usize) -> candle_core::Result<Tensor> {
    let mut dims = vec![t.dim(0)?];
    dims.resize(1 + rank, 1);
    t.reshape(dims)
}

/// Constant `k` of the runs' plans: its value, and whether it differs between them (then the
/// values stacked, one per lane).
fn lane_constant(plans: &[&Plan], k: usize) -> candle_core::Result<(Tensor, bool)> {
    let values: Vec<&Tensor> = plans
        .iter()
        .filter_map(|p| match &p.instrs[k].op {
            Op::Const(t) => Some(t),
            _ => None,
        })
        .collect();
    let first = bits(&values_f64(values[0])?);
    for v in &values[1..] {
        if bits(&values_f64(v)?) != first {
            return Ok((Tensor::stack(&values, 0)?, true));
        }
    }
    Ok((values[0].clone(), false))
}

/// The `mul`s and `add`s of affine op `k` of the runs' plans, one per lane, when they differ.
fn lane_coefficients(plans: &[&Plan], k: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    let coefs: Vec<(f64, f64)> = plans
        .iter()
        .filter_map(|p| match p.instrs[k].op {
            Op::Affine { mul, add } => Some((mul, add)),
            _ => None,
        })
        .collect();
    let key = |(m, a): (f64, f64)| (m.to_bits(), a.to_bits());
    coefs
        .iter()
        .any(|&c| key(c) != key(coefs[0]))
        .then(|| coefs.into_iter().unzip())
}

/// The bit patterns of values, so that NaN equals NaN and -0 differs from 0.
fn bits(values: &[f64]) -> Vec<u64> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Whether two plans are one program up to the values of their constants and affine
/// coefficients: same instructions, arguments and shapes.
fn same_program(a: &Plan, b: &Plan) -> bool {
    a.output == b.output
        && a.instrs.len() == b.instrs.len()
        && a.instrs
            .iter()
            .zip(&b.instrs)
            .all(|(x, y)| x.args == y.args && x.shape == y.shape && same_op(&x.op, &y.op))
}

/// Whether two ops are the same but for constant values and affine coefficients.
fn same_op(a: &Op, b: &Op) -> bool {
    match a {
        Op::Input(i) => matches!(b, Op::Input(j) if i == j),
        Op::Const(_) => matches!(b, Op::Const(_)),
        Op::Affine { .. } => matches!(b, Op::Affine { .. }),
        Op::Unary(u) => matches!(b, Op::Unary(v) if u == v),
        Op::Powf(e) => matches!(b, Op::Powf(f) if e.to_bits() == f.to_bits()),
        Op::Binary(x) => matches!(b, Op::Binary(y) if x == y),
        Op::BiasAdd => matches!(b, Op::BiasAdd),
        Op::Compare(x) => matches!(b, Op::Compare(y) if x == y),
        Op::Where => matches!(b, Op::Where),
        Op::Clamp => matches!(b, Op::Clamp),
        Op::MatMul { lhs_grad, rhs_grad } => {
            matches!(b, Op::MatMul { lhs_grad: l, rhs_grad: r } if l == lhs_grad && r == rhs_grad)
        }
        Op::Reduce { op, axis } => {
            matches!(b, Op::Reduce { op: o, axis: x } if o == op && x == axis)
        }
        Op::Softmax { axis, log } => {
            matches!(b, Op::Softmax { axis: x, log: l } if x == axis && l == log)
        }
        Op::Reshape => matches!(b, Op::Reshape),
        Op::Transpose => matches!(b, Op::Transpose),
        Op::Index { narrows, squeeze } => {
            matches!(b, Op::Index { narrows: n, squeeze: s } if n == narrows && s == squeeze)
        }
        Op::Stack { axis } => matches!(b, Op::Stack { axis: x } if x == axis),
        Op::Concat { axis } => matches!(b, Op::Concat { axis: x } if x == axis),
        Op::Pad {
            axis,
            before,
            after,
        } => {
            matches!(b, Op::Pad { axis: x, before: f, after: t } if x == axis && f == before && t == after)
        }
        Op::OneHot { n } => matches!(b, Op::OneHot { n: m } if m == n),
        Op::ArgReduce { axis, max } => {
            matches!(b, Op::ArgReduce { axis: x, max: m } if x == axis && m == max)
        }
        Op::Detach => matches!(b, Op::Detach),
        Op::Function(f) => matches!(b, Op::Function(g) if Arc::ptr_eq(f, g)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::compile::compile;
    use crate::lang::file;

    /// Three linear models' losses: `X @ x + s` with its bias and data in the region, `x @ M`
    /// with a per-lane const, `X @ (2 x)` alone; and two that are no tail (the product read
    /// outside its region, a reduction over one axis).
    const TAILS: &str = "z = X @ x + s\n\
        mean(softplus(z) - lab * z) + sum(log1p((x @ M - c)^2) * c) + mean(exp(-(X @ (2 * x))) * lab) \
        + sum(tanh(X @ (3 * x)) * 2) + sum(X @ (3 * x)) + sum(sin(Y @ x) + 1, 0)[0]";

    fn compiled() -> CompiledFile {
        let text = format!(
            "name = \"t\"\nseed = 1\ndtype = \"f64\"\nloss = \"\"\"\n{TAILS}\n\"\"\"\n[data]\n\
             X = \"randn(40, 3)\"\nY = \"randn(2, 5, 3)\"\nM = \"randn(3, 7)\"\n\
             lab = \"where(randn(40) > 0, 1, 0)\"\n[consts]\nc = 0.7\n\
             [params]\nx = \"randn(3)\"\ns = 0.3\n\
             [[variants]]\nname = \"other\"\nconsts = {{ c = -1.9 }}\n"
        );
        let loaded = file::load_bytes(Path::new("t.toml"), text.into_bytes());
        let (c, d) = compile(
            loaded
                .file
                .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics)),
        );
        c.unwrap_or_else(|| panic!("{d:?}"))
    }

    #[test]
    fn a_linear_models_loss_is_one_op_whose_lanes_keep_their_bits_in_any_batch() {
        let c = compiled();
        let lanes = |defs: &[usize]| {
            LaneEvaluator::new(&c, defs, DType::F64)
                .unwrap()
                .expect("batches")
        };
        let batch = lanes(&[0, 1]);
        let mut tails: Vec<(bool, bool)> = batch
            .program
            .tail
            .iter()
            .flatten()
            .map(|t| (t.bias.is_some(), t.mean))
            .collect();
        tails.sort();
        assert_eq!(tails, [(false, false), (false, true), (true, true)]);
        // Lane by lane, the same bits whatever else the batch holds.
        let bits = |e: &LaneEvaluation, r: usize| {
            let mut v = vec![e.losses[r].to_bits()];
            for g in &e.grads {
                v.extend(
                    values_f64(&g.get(r).unwrap())
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits()),
                );
            }
            v
        };
        let (a, b) = (
            batch.evaluate().unwrap(),
            lanes(&[1, 0, 0]).evaluate().unwrap(),
        );
        assert_eq!(bits(&a, 0), bits(&b, 1));
        assert_eq!(bits(&a, 0), bits(&b, 2));
        assert_eq!(bits(&a, 1), bits(&b, 0));
        assert_ne!(bits(&a, 0), bits(&a, 1));
        // The same bits as its ops one by one (a thread that does not fuse takes that path).
        let apart = std::thread::scope(|s| {
            s.spawn(|| {
                super::super::region::op_by_op();
                batch.evaluate().unwrap()
            })
            .join()
            .unwrap()
        });
        for r in 0..2 {
            assert_eq!(bits(&a, r), bits(&apart, r), "lane {r}");
        }
    }
}
