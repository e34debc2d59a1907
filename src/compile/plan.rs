//! The compiled form of an expression or program: a straight-line list of instructions with
//! known shapes and source spans, and the one function that executes an instruction on tensors
//! (used both at run time and for constant folding, so the two can never disagree).

use candle_core::{DType, Result, Tensor};

use super::dense::{self, Chain};
use super::ops::Elementwise;
use super::region::Region;
use super::shape::Shape;
use crate::diagnostic::Span;

/// Index of an instruction, whose result it names.
pub type Reg = usize;

/// Elementwise functions of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    Neg,
    Exp,
    Log,
    Sqrt,
    Sqr,
    Sin,
    Cos,
    Tanh,
    Relu,
    Elu(f64),
    Silu,
    Erf,
    Round,
    Floor,
    Ceil,
    Sign,
    Custom(Elementwise),
}

/// Elementwise binary ops, with broadcasting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
    Pow,
}

/// Elementwise comparisons: 0/1 masks with no gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Compare {
    /// The comparison as written.
    pub fn symbol(self) -> &'static str {
        match self {
            Compare::Lt => "<",
            Compare::Le => "<=",
            Compare::Gt => ">",
            Compare::Ge => ">=",
            Compare::Eq => "==",
            Compare::Ne => "!=",
        }
    }
}

/// Reductions, over one axis or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
    LogSumExp,
    Norm,
}

/// One narrowing step of an index expression: `len` elements of `dim` from `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narrow {
    pub dim: usize,
    pub start: usize,
    pub len: usize,
}

/// One instruction's operation: a closed set, executed by one `match` in `Executable::run`.
#[derive(Debug, Clone)]
pub enum Op {
    /// The i-th input: data first, then params.
    Input(usize),
    /// A value known at compile time, held in f64 and cast to the run's dtype once.
    Const(Tensor),
    Unary(Unary),
    /// `x * mul + add` with `mul != 0` (candle's affine with mul 0 cuts the graph).
    Affine {
        mul: f64,
        add: f64,
    },
    Powf(f64),
    Binary(Binary),
    /// `x + b` with `b` broadcast over the leading axes of `x` (args: x, b).
    BiasAdd,
    Compare(Compare),
    Where,
    Clamp,
    /// NumPy `@`; the flags say which side carries gradient, so the other's is never computed.
    MatMul {
        lhs_grad: bool,
        rhs_grad: bool,
    },
    Reduce {
        op: Reduce,
        axis: Option<usize>,
    },
    Softmax {
        axis: usize,
        log: bool,
    },
    Reshape,
    Transpose,
    Index {
        narrows: Vec<Narrow>,
        squeeze: Vec<usize>,
    },
    /// The arguments (of one shape) stacked along a new axis; an array literal stacks on axis 0.
    Stack {
        axis: usize,
    },
    /// The arguments joined along an existing axis.
    Concat {
        axis: usize,
    },
    /// `before` zeros ahead of the values along `axis` and `after` behind them: the gradient of a
    /// slice, and with a reshape, of a single index (`put`, `pad`).
    Pad {
        axis: usize,
        before: usize,
        after: usize,
    },
    /// Integer labels to 0/1 rows of length `n` (a new last axis); no gradient.
    OneHot {
        n: usize,
    },
    /// The index of the largest (`max`) or smallest element along an axis; no gradient.
    ArgReduce {
        axis: usize,
        max: bool,
    },
    Detach,
    /// A user function with its own gradient.
    Function(std::sync::Arc<super::function::FnOp>),
}

impl Op {
    /// The op with every argument's gradient computed. Tracing adds a probe to every value, so
    /// an argument the program never differentiates (the data side of `A @ w`) carries gradient
    /// there too, and candle panics on a node whose gradient was never made.
    pub fn traced(&self) -> std::borrow::Cow<'_, Op> {
        match self {
            Op::MatMul { .. } => std::borrow::Cow::Owned(Op::MatMul {
                lhs_grad: true,
                rhs_grad: true,
            }),
            op => std::borrow::Cow::Borrowed(op),
        }
    }

    /// Whether the op's result carries gradient when its inputs do.
    pub fn passes_gradient(&self) -> bool {
        !matches!(
            self,
            Op::Detach
                | Op::Compare(_)
                | Op::Const(_)
                | Op::Input(_)
                | Op::OneHot { .. }
                | Op::ArgReduce { .. }
        )
    }
}

/// One instruction: its op, the registers it reads, its output shape and its source span.
#[derive(Debug, Clone)]
pub struct Instr {
    pub op: Op,
    pub args: Vec<Reg>,
    pub shape: Shape,
    pub span: Span,
}

/// A compiled program: instructions in evaluation order and the register holding the result.
#[derive(Debug, Clone)]
pub struct Plan {
    pub instrs: Vec<Instr>,
    pub output: Reg,
}

impl Plan {
    /// For each register, whether it carries gradient: an input `is_param` says is a param, or
    /// an op that passes gradient from an argument that carries it.
    pub fn carrying(&self, is_param: impl Fn(usize) -> bool) -> Vec<bool> {
        let mut carries = vec![false; self.instrs.len()];
        for (k, instr) in self.instrs.iter().enumerate() {
            carries[k] = match instr.op {
                Op::Input(i) => is_param(i),
                ref op => op.passes_gradient() && instr.args.iter().any(|&a| carries[a]),
            };
        }
        carries
    }

    /// For each register, the instructions that read it, in order.
    pub fn readers(&self) -> Vec<Vec<Reg>> {
        let mut readers = vec![Vec::new(); self.instrs.len()];
        for (k, instr) in self.instrs.iter().enumerate() {
            for &a in &instr.args {
                readers[a].push(k);
            }
        }
        readers
    }

    /// For each register, the last instruction that reads it (itself if none does; never for
    /// the output), after which its value can be dropped.
    pub fn last_uses(&self) -> Vec<usize> {
        self.last_uses_reading(|k| self.instrs[k].args.clone())
    }

    /// [`Plan::last_uses`] for an executor that reads `reads(k)` to compute register `k` (a
    /// fused op reads its inputs, the registers inside it read nothing).
    pub fn last_uses_reading(&self, reads: impl Fn(Reg) -> Vec<Reg>) -> Vec<usize> {
        let mut last_use: Vec<usize> = (0..self.instrs.len()).collect();
        for k in 0..self.instrs.len() {
            for a in reads(k) {
                last_use[a] = k;
            }
        }
        last_use[self.output] = usize::MAX;
        last_use
    }
}

/// `f` on `args` for instruction `op`; where `op` sums (reductions, softmax, matmuls) and
/// `accumulate` is given, on the args cast to that wider dtype, the result cast back.
pub fn accumulating(
    op: &Op,
    accumulate: Option<DType>,
    args: &[&Tensor],
    f: impl FnOnce(&[&Tensor]) -> Result<Tensor>,
) -> Result<Tensor> {
    match accumulate {
        Some(acc)
            if matches!(
                op,
                Op::Reduce { .. } | Op::Softmax { .. } | Op::MatMul { .. }
            ) =>
        {
            let wide = args
                .iter()
                .map(|a| a.to_dtype(acc))
                .collect::<Result<Vec<_>>>()?;
            f(&wide.iter().collect::<Vec<_>>())?.to_dtype(args[0].dtype())
        }
        _ => f(args),
    }
}

/// A binary op's broadcast operands spread to the result's shape `out` through the wider
/// `accumulate` dtype, so their gradients (sums over the broadcast axes) sum wide, as torch's
/// f16 backward does, where candle's broadcasting op sums them in the run's dtype. None when
/// nothing is spread.
pub fn spread_wide(
    op: &Op,
    accumulate: Option<DType>,
    args: &[&Tensor],
    out: &Shape,
) -> Option<Result<Vec<Tensor>>> {
    let acc = accumulate?;
    if !matches!(op, Op::Binary(_)) || args.iter().all(|a| a.dims() == out.dims()) {
        return None;
    }
    Some(
        args.iter()
            .map(|a| match a.dims() == out.dims() {
                true => Ok((*a).clone()),
                false => a
                    .to_dtype(acc)?
                    .broadcast_as(out.dims())?
                    .to_dtype(a.dtype()),
            })
            .collect(),
    )
}

/// Executes one instruction. `out` is the result shape computed by the shape rules.
pub fn apply(op: &Op, args: &[&Tensor], out: &Shape) -> Result<Tensor> {
    let a = || args[0];
    match op {
        Op::Input(_) | Op::Const(_) => Err(candle_core::Error::Msg(
            "inputs and constants are not computed".into(),
        )),
        Op::Unary(u) => unary(*u, a()),
        Op::Affine { mul, add } => a().affine(*mul, *add),
        // x^0 is 1 with no gradient, as torch's pow_backward has it: candle's 0 · x^-1 is NaN
        // at x = 0 (the gamma = 0 of a focal loss once a point is fitted).
        Op::Powf(0.0) => a().ones_like(),
        Op::Powf(e) => a().powf(*e),
        Op::Binary(b) => binary(*b, args[0], args[1]),
        Op::BiasAdd => super::fused::bias_add(args[0], args[1]),
        Op::Compare(c) => compare(*c, args[0], args[1], out),
        Op::Where => {
            let dims = out.dims();
            let mask = args[0].ne(0.0)?.broadcast_as(dims)?;
            mask.where_cond(&args[1].broadcast_as(dims)?, &args[2].broadcast_as(dims)?)
        }
        Op::Clamp => args[0]
            .broadcast_maximum(args[1])?
            .broadcast_minimum(args[2]),
        Op::MatMul { lhs_grad, rhs_grad } => matmul(args[0], args[1], *lhs_grad, *rhs_grad),
        Op::Reduce { op, axis } => reduce(*op, a(), *axis),
        Op::Softmax { axis, log } => {
            let x = a();
            let m = x.max_keepdim(*axis)?.detach();
            let z = x.broadcast_sub(&m)?;
            let lse = z.exp()?.sum_keepdim(*axis)?.log()?;
            let ls = z.broadcast_sub(&lse)?;
            if *log { Ok(ls) } else { ls.exp() }
        }
        Op::Reshape => a().reshape(out.dims()),
        Op::Transpose => {
            let r = a().rank();
            a().transpose(r - 2, r - 1)
        }
        Op::Index { narrows, squeeze } => {
            let mut t = a().clone();
            for n in narrows {
                t = t.narrow(n.dim, n.start, n.len)?;
            }
            for &d in squeeze.iter().rev() {
                t = t.squeeze(d)?;
            }
            Ok(t)
        }
        Op::Stack { axis } => Tensor::stack(args, *axis),
        Op::Concat { axis } => Tensor::cat(args, *axis),
        Op::Pad {
            axis,
            before,
            after,
        } => a().pad_with_zeros(*axis, *before, *after),
        Op::OneHot { n } => {
            let x = a();
            let classes = Tensor::arange(0u32, *n as u32, x.device())?.to_dtype(x.dtype())?;
            compare(Compare::Eq, &x.unsqueeze(x.rank())?, &classes, out)
        }
        Op::ArgReduce { axis, max } => {
            let x = a();
            let i = if *max {
                x.argmax(*axis)?
            } else {
                x.argmin(*axis)?
            };
            i.to_dtype(x.dtype())
        }
        Op::Detach => Ok(a().detach()),
        Op::Function(f) => super::function::UserOp(f.clone()).apply(args),
    }
}

fn unary(u: Unary, x: &Tensor) -> Result<Tensor> {
    match u {
        Unary::Neg => x.neg(),
        Unary::Exp => x.exp(),
        Unary::Log => x.log(),
        Unary::Sqrt => x.sqrt(),
        Unary::Sqr => x.sqr(),
        Unary::Sin => x.sin(),
        Unary::Cos => x.cos(),
        Unary::Tanh => super::fused::tanh(x),
        Unary::Relu => Elementwise::Relu.apply(x),
        Unary::Elu(alpha) => Elementwise::Elu(alpha).apply(x),
        Unary::Silu => Elementwise::Silu.apply(x),
        Unary::Erf => x.erf(),
        Unary::Round => x.round(),
        Unary::Floor => x.floor(),
        Unary::Ceil => x.ceil(),
        Unary::Sign => x.sign(),
        Unary::Custom(op) => op.apply(x),
    }
}

fn binary(b: Binary, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let same = x.shape() == y.shape();
    match b {
        Binary::Add if same => x.add(y),
        Binary::Sub if same => x.sub(y),
        Binary::Mul if same => x.mul(y),
        Binary::Div if same => x.div(y),
        Binary::Add => x.broadcast_add(y),
        Binary::Sub => x.broadcast_sub(y),
        Binary::Mul => x.broadcast_mul(y),
        Binary::Div => x.broadcast_div(y),
        Binary::Min => x.broadcast_minimum(y),
        Binary::Max => x.broadcast_maximum(y),
        Binary::Pow => super::ops::Pow::apply(x, y),
    }
}

fn compare(c: Compare, x: &Tensor, y: &Tensor, out: &Shape) -> Result<Tensor> {
    use candle_core::op::CmpOp;
    let op = match c {
        Compare::Lt => CmpOp::Lt,
        Compare::Le => CmpOp::Le,
        Compare::Gt => CmpOp::Gt,
        Compare::Ge => CmpOp::Ge,
        Compare::Eq => CmpOp::Eq,
        Compare::Ne => CmpOp::Ne,
    };
    let dtype = x.dtype();
    x.broadcast_as(out.dims())?
        .cmp(&y.broadcast_as(out.dims())?, op)?
        .to_dtype(dtype)
}

/// Which side of a matmul is a vector that needs a gradient against a matrix that does not (`X @
/// w`, `w @ A` for data `X`, `A`): those go through [`super::lane_kernel::lane_vecmat`], whose
/// sums do not depend on how many runs are batched (see `lanes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VecSide {
    /// `X @ w`: computed as `w @ Xᵀ`.
    Right,
    /// `w @ A`.
    Left,
}

impl VecSide {
    /// The side of matmul `op` whose operands have ranks `rx` and `ry`, if it is such a product.
    pub fn of(op: &Op, rx: usize, ry: usize) -> Option<Self> {
        match (op, rx, ry) {
            (
                Op::MatMul {
                    lhs_grad: false,
                    rhs_grad: true,
                },
                2,
                1,
            ) => Some(VecSide::Right),
            (
                Op::MatMul {
                    lhs_grad: true,
                    rhs_grad: false,
                },
                1,
                2,
            ) => Some(VecSide::Left),
            _ => None,
        }
    }
}

/// NumPy `@`: 1-D operands are promoted and the added axis removed again.
fn matmul(x: &Tensor, y: &Tensor, lg: bool, rg: bool) -> Result<Tensor> {
    use super::fused::matmul_2d;
    match (x.rank(), y.rank()) {
        (1, 1) => x.mul(y)?.sum_all(),
        // Data against a param: read in place (gemm would pack the data on every call).
        (2, 1) => match (!lg).then(|| super::matvec::matvec(x, y)).flatten() {
            Some(product) => product,
            None => matmul_2d(x, &y.unsqueeze(1)?, lg, rg)?.squeeze(1),
        },
        (1, 2) => match (!rg).then(|| super::matvec::vecmat_of(x, y)).flatten() {
            Some(product) => product,
            None => matmul_2d(&x.unsqueeze(0)?, y, lg, rg)?.squeeze(0),
        },
        (2, 2) => matmul_2d(x, y, lg, rg),
        (1, _) => {
            let r = y.rank();
            let out = x.unsqueeze(0)?.broadcast_matmul(y)?;
            out.squeeze(r - 2)
        }
        (r, 1) => x.broadcast_matmul(&y.unsqueeze(1)?)?.squeeze(r - 1),
        (rx, ry) if rx == ry && x.dims()[..rx - 2] == y.dims()[..ry - 2] => x.matmul(y),
        _ => x.broadcast_matmul(y),
    }
}

fn reduce(op: Reduce, x: &Tensor, axis: Option<usize>) -> Result<Tensor> {
    let (x, axis) = match axis {
        Some(a) => (x.clone(), a),
        None if op == Reduce::Sum => return x.sum_all(),
        None if op == Reduce::Mean => return x.mean_all(),
        None => (x.flatten_all()?, 0),
    };
    match op {
        Reduce::Sum => x.sum(axis),
        Reduce::Mean => x.mean(axis),
        Reduce::Max => extreme(&x, axis, true),
        Reduce::Min => extreme(&x, axis, false),
        Reduce::Norm => x.sqr()?.sum(axis)?.sqrt(),
        Reduce::LogSumExp => {
            let m = x.max_keepdim(axis)?.detach();
            x.broadcast_sub(&m)?
                .exp()?
                .sum_keepdim(axis)?
                .log()?
                .add(&m)?
                .squeeze(axis)
        }
    }
}

/// The max (or min) over `axis`, whose gradient the tied elements share equally, as torch's
/// `amax` and JAX's `max` share it (candle's gives each of them the whole, `k` times too much
/// for `k` ties: every element of a zero-initialised param ties). Its value is candle's
/// extreme `m` exactly; where `k > 1` elements tie at a finite extreme it is
/// `m̄ + (m - m̄) / k` with `m̄` the detached `m`, which adds zero and divides the gradient by `k`.
fn extreme(x: &Tensor, axis: usize, max: bool) -> Result<Tensor> {
    let m = if max {
        x.max_keepdim(axis)?
    } else {
        x.min_keepdim(axis)?
    };
    let fixed = m.detach();
    // Counted in f32 at least: bf16 counts exactly only up to 256.
    let wide = match x.dtype() {
        DType::F64 => DType::F64,
        _ => DType::F32,
    };
    let ties = x
        .broadcast_eq(&fixed)?
        .to_dtype(wide)?
        .sum_keepdim(axis)?
        .to_dtype(x.dtype())?;
    let shared = ties.gt(1.0)?.mul(&fixed.abs()?.lt(f64::INFINITY)?)?;
    let split = fixed.add(&m.sub(&fixed)?.div(&ties)?)?;
    shared.where_cond(&split, &m)?.squeeze(axis)
}

/// A plan made ready for one dtype: constants cast, and each register's last use known so
/// intermediate tensors are dropped as soon as possible.
#[derive(Debug, Clone)]
pub struct Executable {
    plan: Plan,
    consts: Vec<Option<Tensor>>,
    last_use: Vec<usize>,
    /// The run's dtype.
    dtype: DType,
    /// Dtype that reductions and matmuls accumulate in, only when wider than the run's.
    accumulate: Option<DType>,
    /// How `run` executes the plan's dense chains, large sums of squares and elementwise
    /// regions.
    fusion: Fusion,
    /// The first param among the inputs, when `run` fuses elementwise regions (which needs to
    /// know what carries gradient).
    params_from: Option<usize>,
}

/// The dense chains `run` executes as one node each (`dense`), the sums of squares it executes
/// as one op (`squares`), and each register's last use among what `run` executes.
#[derive(Debug, Clone)]
struct Fusion {
    /// The chain whose result each register is.
    chain: Vec<Option<Chain>>,
    /// Sums (or means) of all of a large tensor's squares, by the register of the sum.
    squares: Vec<bool>,
    /// The elementwise regions, by the register of their root.
    region: Vec<Option<std::sync::Arc<Region>>>,
    /// Registers computed inside a chain, a sum of squares or a region, which `run` skips.
    inner: Vec<bool>,
    last_use: Vec<usize>,
}

impl Fusion {
    /// The chains, sums of squares and (with `params_from`, in f32 and f64) regions of `plan`
    /// in `dtype`; none when it accumulates in a wider dtype (a chain would not widen its
    /// matmuls as `eval` does).
    fn of(
        plan: &Plan,
        dtype: DType,
        accumulate: Option<DType>,
        params_from: Option<usize>,
    ) -> Self {
        let n = plan.instrs.len();
        let mut fusion = Fusion {
            chain: vec![None; n],
            squares: vec![false; n],
            region: vec![None; n],
            inner: vec![false; n],
            last_use: Vec::new(),
        };
        if accumulate.is_none() {
            for chain in dense::chains(plan) {
                for &r in &chain.regs {
                    fusion.inner[r] = true;
                }
                let out = chain.output();
                fusion.inner[out] = false;
                fusion.chain[out] = Some(chain);
            }
            for k in large_sums_of_squares(plan, dtype) {
                fusion.squares[k] = true;
                fusion.inner[plan.instrs[k].args[0]] = true;
            }
        }
        match params_from {
            Some(first) => fusion.with_regions(plan, dtype, accumulate, first),
            None => {
                fusion.last_use = plan.last_uses_reading(|k| fusion.reads(plan, k));
                fusion
            }
        }
    }

    /// The same with the plan's elementwise regions (in f32 and f64, without a wider
    /// accumulating dtype) outside its chains and sums of squares; `first` is the first param.
    fn with_regions(
        mut self,
        plan: &Plan,
        dtype: DType,
        accumulate: Option<DType>,
        first: usize,
    ) -> Self {
        if accumulate.is_none() && matches!(dtype, DType::F32 | DType::F64) {
            let taken: Vec<bool> = (0..plan.instrs.len())
                .map(|k| self.inner[k] || self.squares[k] || self.chain[k].is_some())
                .collect();
            let found = super::region::regions(plan, |i| i >= first, &taken);
            super::region::place(found, &mut self.region, &mut self.inner);
        }
        self.last_use = plan.last_uses_reading(|k| self.reads(plan, k));
        self
    }

    /// The registers `run` reads to compute register `k` (none for one inside a chain).
    fn reads(&self, plan: &Plan, k: Reg) -> Vec<Reg> {
        match (&self.chain[k], self.inner[k]) {
            (_, true) => Vec::new(),
            (Some(chain), _) => chain.reads(),
            (None, _) if self.squares[k] => plan.instrs[plan.instrs[k].args[0]].args.clone(),
            (None, _) if let Some(region) = &self.region[k] => region.leaves.clone(),
            (None, _) => plan.instrs[k].args.clone(),
        }
    }
}

/// The sums and means over all elements of a square no other op reads, of at least the
/// allocator's large-block size in `dtype` (f32 or f64): where holding the squares and the
/// spread gradient costs memory worth saving.
fn large_sums_of_squares(plan: &Plan, dtype: DType) -> Vec<Reg> {
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Vec::new();
    }
    let readers = plan.readers();
    let large = |r: Reg| {
        let n = plan.instrs[r].shape.elements().unwrap_or(0);
        n.saturating_mul(dtype.size_in_bytes()) >= crate::alloc::LARGE
    };
    (0..plan.instrs.len())
        .filter(|&k| {
            let instr = &plan.instrs[k];
            let sums_all = matches!(
                instr.op,
                Op::Reduce {
                    op: Reduce::Sum | Reduce::Mean,
                    axis: None
                }
            );
            sums_all && {
                let s = instr.args[0];
                matches!(plan.instrs[s].op, Op::Unary(Unary::Sqr))
                    && readers[s] == [k]
                    && s != plan.output
                    && large(s)
            }
        })
        .collect()
}

/// An instruction that failed at run time; should not happen once shapes are checked.
#[derive(Debug)]
pub struct ExecError {
    pub span: Span,
    pub error: candle_core::Error,
}

impl Executable {
    /// A plan ready to run in `dtype`: constants cast once, and each register's last use known so
    /// intermediates are freed early. `accumulate` is a wider dtype for reductions of f16/bf16 runs.
    pub fn new(plan: Plan, dtype: DType, accumulate: Option<DType>) -> Result<Self> {
        let consts = plan
            .instrs
            .iter()
            .map(|i| match &i.op {
                Op::Const(t) => t.to_dtype(dtype).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_>>()?;
        let last_use = plan.last_uses();
        let accumulate = accumulate.filter(|&a| a.size_in_bytes() > dtype.size_in_bytes());
        Ok(Self {
            fusion: Fusion::of(&plan, dtype, accumulate, None),
            params_from: None,
            dtype,
            plan,
            consts,
            last_use,
            accumulate,
        })
    }

    /// The same, running each elementwise region (see `region`) as one op: `params_from` is
    /// the first input that is a param.
    pub fn with_regions(mut self, params_from: usize) -> Self {
        self.fusion =
            self.fusion
                .with_regions(&self.plan, self.dtype, self.accumulate, params_from);
        self.params_from = Some(params_from);
        self
    }

    /// Whether `run` takes a large sum of squares as one op (see `squares`).
    pub fn fuses_squares(&self) -> bool {
        self.fusion.squares.contains(&true)
    }

    /// The plan it runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The same program with other register shapes (a batched copy of the plan: same
    /// instructions, so the cast constants and last uses carry over).
    pub fn with_shapes(&self, plan: Plan) -> Self {
        debug_assert_eq!(plan.instrs.len(), self.plan.instrs.len());
        Self {
            fusion: Fusion::of(&plan, self.dtype, self.accumulate, self.params_from),
            plan,
            ..self.clone()
        }
    }

    /// Evaluates the plan on `inputs` (data first, then params), each dense chain as one node.
    pub fn run(&self, inputs: &[&Tensor]) -> std::result::Result<Tensor, ExecError> {
        let fusion = &self.fusion;
        let mut regs: Vec<Option<Tensor>> = vec![None; self.plan.instrs.len()];
        for k in 0..self.plan.instrs.len() {
            if fusion.inner[k] {
                continue;
            }
            regs[k] = Some(match &fusion.chain[k] {
                Some(chain) => {
                    let read = |r: Reg| regs[r].as_ref().expect("defined before use");
                    let params: Vec<&Tensor> =
                        chain.reads()[1..].iter().map(|&r| read(r)).collect();
                    dense::apply(chain, read(chain.input), &params).map_err(|error| ExecError {
                        span: self.plan.instrs[k].span.clone(),
                        error,
                    })?
                }
                None if fusion.squares[k] => {
                    let x = fusion.reads(&self.plan, k)[0];
                    let x = regs[x].as_ref().expect("defined before use");
                    let mean = matches!(
                        self.plan.instrs[k].op,
                        Op::Reduce {
                            op: Reduce::Mean,
                            ..
                        }
                    );
                    super::squares::sum_squares(x)
                        .and_then(|s| match mean {
                            // As candle's `mean_all`.
                            true => s / x.elem_count() as f64,
                            false => Ok(s),
                        })
                        .map_err(|error| ExecError {
                            span: self.plan.instrs[k].span.clone(),
                            error,
                        })?
                }
                None if let Some(region) = &fusion.region[k] => {
                    let fail = |error| ExecError {
                        span: self.plan.instrs[k].span.clone(),
                        error,
                    };
                    if super::region::fusing() {
                        let leaves: Vec<&Tensor> = region
                            .leaves
                            .iter()
                            .map(|&r| regs[r].as_ref().expect("defined before use"))
                            .collect();
                        region
                            .apply(&leaves, self.plan.instrs[k].shape.dims())
                            .map_err(fail)?
                    } else {
                        for &m in &region.members {
                            regs[m] = Some(self.eval(m, &regs, inputs, false)?);
                        }
                        for &m in &region.members {
                            if m != k {
                                regs[m] = None;
                            }
                        }
                        regs[k].take().expect("computed just now")
                    }
                }
                None => self.eval(k, &regs, inputs, false)?,
            });
            for a in fusion.reads(&self.plan, k) {
                if fusion.last_use[a] == k {
                    regs[a] = None;
                }
            }
        }
        Ok(regs[self.plan.output].take().expect("output computed"))
    }

    /// Evaluates the plan on `inputs` and returns the values of registers `outputs`, in order
    /// (an update's new param and new state).
    pub fn run_outputs(
        &self,
        inputs: &[&Tensor],
        outputs: &[Reg],
    ) -> std::result::Result<Vec<Tensor>, ExecError> {
        let mut regs: Vec<Option<Tensor>> = vec![None; self.plan.instrs.len()];
        for k in 0..self.plan.instrs.len() {
            regs[k] = Some(self.eval(k, &regs, inputs, false)?);
            for &a in &self.plan.instrs[k].args {
                if self.last_use[a] == k && !outputs.contains(&a) {
                    regs[a] = None;
                }
            }
        }
        Ok(outputs
            .iter()
            .map(|&r| regs[r].clone().expect("outputs are kept"))
            .collect())
    }

    /// Evaluates the plan keeping every intermediate value. With `probe`, each computed value
    /// gets a zero-valued Var added, so the backward pass yields dL/dt for every intermediate t
    /// (candle keeps gradients for Vars only). Returns the values (before the probe) and probes.
    pub fn run_traced(
        &self,
        inputs: &[&Tensor],
        probe: bool,
    ) -> std::result::Result<(Vec<Tensor>, Vec<Option<candle_core::Var>>), ExecError> {
        let n = self.plan.instrs.len();
        let mut regs: Vec<Option<Tensor>> = vec![None; n];
        let mut values = Vec::with_capacity(n);
        let mut probes = Vec::with_capacity(n);
        for k in 0..n {
            let v = self.eval(k, &regs, inputs, probe)?;
            let computed = !matches!(self.plan.instrs[k].op, Op::Input(_) | Op::Const(_));
            let p = if probe && computed {
                candle_core::Var::zeros(v.shape(), v.dtype(), v.device()).ok()
            } else {
                None
            };
            let fed = match &p {
                Some(p) => (&v + p.as_tensor()).map_err(|error| ExecError {
                    span: self.plan.instrs[k].span.clone(),
                    error,
                })?,
                None => v.clone(),
            };
            regs[k] = Some(fed);
            values.push(v);
            probes.push(p);
        }
        Ok((values, probes))
    }

    /// Register `k`'s value; `probing` evaluates ops as [`Op::traced`] does.
    fn eval(
        &self,
        k: usize,
        regs: &[Option<Tensor>],
        inputs: &[&Tensor],
        probing: bool,
    ) -> std::result::Result<Tensor, ExecError> {
        let instr = &self.plan.instrs[k];
        let op = if probing {
            instr.op.traced()
        } else {
            std::borrow::Cow::Borrowed(&instr.op)
        };
        let value = match op.as_ref() {
            Op::Input(i) => Ok(inputs[*i].clone()),
            Op::Const(_) => Ok(self.consts[k].clone().expect("cast in new")),
            op => {
                let args: Vec<&Tensor> = instr
                    .args
                    .iter()
                    .map(|&a| regs[a].as_ref().expect("defined before use"))
                    .collect();
                // Mixed precision: sums in the wider dtype, the result back in the run's.
                match spread_wide(op, self.accumulate, &args, &instr.shape) {
                    Some(spread) => {
                        spread.and_then(|a| apply(op, &a.iter().collect::<Vec<_>>(), &instr.shape))
                    }
                    None => {
                        accumulating(op, self.accumulate, &args, |a| apply(op, a, &instr.shape))
                    }
                }
            }
        };
        value.map_err(|error| ExecError {
            span: instr.span.clone(),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::compile::compile;
    use crate::lang::file;

    /// The sums of squares `run` fuses in the loss `loss` of param `w = init`, in `dtype`.
    fn fused(loss: &str, init: &str, dtype: DType) -> Vec<Reg> {
        let text =
            format!("name = \"s\"\nloss = \"\"\"\n{loss}\n\"\"\"\n[params]\nw = \"{init}\"\n");
        let loaded = file::load_bytes(Path::new("s.toml"), text.into_bytes());
        let (c, d) = compile(loaded.file.expect("loads"));
        let c = c.unwrap_or_else(|| panic!("{loss}: {d:?}"));
        large_sums_of_squares(&c.runs[0].plan, dtype)
    }

    #[test]
    fn only_large_sums_of_squares_no_other_op_reads_are_fused() {
        // 2900² f32 values pass the allocator's 32 MiB; 2000² do not (2000² f64 do not either).
        let large = "zeros(2900, 2900)";
        assert_eq!(fused("sum(w^2) + mean(w^2)", large, DType::F32).len(), 2);
        assert_eq!(fused("sum(w^2)", large, DType::F64).len(), 1);
        assert!(fused("sum(w^2)", "zeros(2000, 2000)", DType::F32).is_empty());
        assert!(fused("sum(w^2)", "zeros(2000, 2000)", DType::F64).is_empty());
        // Half precisions keep the unfused ops (and their rounding).
        assert!(fused("sum(w^2)", large, DType::F16).is_empty());
        // Along one axis, a square read twice, or another reduction: unfused.
        assert!(fused("sum(sum(w^2, 0))", large, DType::F32).is_empty());
        assert!(fused("s = w^2\nsum(s) + amax(s)", large, DType::F32).is_empty());
        assert!(fused("amax(w^2)", large, DType::F32).is_empty());
    }
}
