//! Lowering: syntax tree to [`Plan`]. Names are resolved, shapes checked, gradient-less ops
//! refused, and anything computable at compile time folded into constants, each problem becoming
//! a diagnostic on the exact span. Errors poison the value they occur in, so one mistake is
//! reported once and the rest of the file is still checked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod calls;
mod lines;
mod metrics;
mod update;

pub use metrics::VariantLoss;
pub use update::{INIT_HYPER, Lowered as LoweredUpdate, UPDATE_HYPER};

use super::plan::{Binary, Compare, Instr, Op, Plan, Reg, Unary, apply};
use super::shape::{self, MAX_ELEMENTS, Shape};
use crate::diagnostic::{Diagnostic, SourceFile, Span, did_you_mean};
use crate::lang::ast::{BinOp, Expr, ExprKind, Program, Spanned};
use crate::lang::builtins::Builtin;
use crate::lang::file::FunctionDef;

/// Code that cannot call the file's `[functions]`.
#[derive(Debug, Clone)]
pub enum NoFunctions {
    /// The body of the function of this name.
    Body(String),
    /// The data entry of this name.
    Data(String),
}

/// What a name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Data,
    Param,
    Const,
    Local,
    /// A hyper-parameter of an optimizer written in the loss language.
    Hyper,
    /// A value every update is given: `p`, `g`, `lr`, `t`, `gnorm`, `step_loss`.
    Given,
    /// What such an optimizer keeps per param; its update may assign it.
    State,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Data => "a data tensor",
            Kind::Param => "a param",
            Kind::Const => "a const",
            Kind::Local => "a name defined in this program",
            Kind::Hyper => "a hyper-parameter",
            Kind::Given => "a value every update is given",
            Kind::State => "a state of this optimizer",
        }
    }
}

#[derive(Debug, Clone)]
enum Value {
    Known(Tensor),
    Reg(Reg),
    /// Its definition failed; uses stay silent so the error is reported once.
    Poisoned,
}

#[derive(Debug, Clone)]
struct Binding {
    value: Value,
    kind: Kind,
}

/// Error already reported as a diagnostic.
#[derive(Debug)]
pub struct Reported;

type Lowered = Result<Reg, Reported>;

/// Builds one plan. Create it with the names in scope, lower, then take the plan.
pub struct Lowerer {
    source: Arc<SourceFile>,
    instrs: Vec<Instr>,
    grad: Vec<bool>,
    /// Each instruction's longest chain of instructions back to an input (itself included).
    chain: Vec<usize>,
    env: HashMap<String, Binding>,
    used: HashSet<String>,
    rng: ChaCha8Rng,
    functions: Arc<Vec<FunctionDef>>,
    /// Values of the data inputs, by input index, for checks that need them (one_hot's labels).
    data_values: HashMap<usize, Tensor>,
    /// How many `detach(...)` calls enclose the expression being lowered.
    detached: usize,
    /// The inputs whose values came from a file, by input index: their name and origin
    /// (`read from data/x.npy`), so a shape report can name the file.
    origins: HashMap<usize, (String, String)>,
    /// Where the file's `[functions]` cannot be called (a function's body calls builtins only;
    /// data are computed before functions), and their names, so the error can say so.
    no_functions: Option<(NoFunctions, Vec<String>)>,
    pub diags: Vec<Diagnostic>,
}

/// The longest chain of operations a loss may be: each is a level of recursion in candle's
/// backward pass (see [`crate::GRAPH_STACK`]).
pub const MAX_CHAIN: usize = 20_000;

/// "never used" warnings given one by one in a program; the rest are counted in one.
const UNUSED_SHOWN: usize = 10;

/// A deterministic per-entry RNG stream, so adding or reordering entries changes no other entry.
pub fn rng_for(seed: u64, context: &str) -> ChaCha8Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in context.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ h)
}

impl Lowerer {
    /// A lowerer for one program of `source`; random constructors draw from `seed` mixed with
    /// `context`, so every program of a file gets its own stream.
    pub fn new(source: &Arc<SourceFile>, seed: u64, context: &str) -> Self {
        Self {
            source: Arc::clone(source),
            instrs: Vec::new(),
            grad: Vec::new(),
            chain: Vec::new(),
            env: HashMap::new(),
            used: HashSet::new(),
            rng: rng_for(seed, context),
            functions: Arc::new(Vec::new()),
            data_values: HashMap::new(),
            detached: 0,
            origins: HashMap::new(),
            no_functions: None,
            diags: Vec::new(),
        }
    }

    /// Says, when `names` (the file's `[functions]`) are called here, why they cannot be.
    pub fn without_functions(mut self, here: NoFunctions, names: Vec<String>) -> Self {
        self.no_functions = Some((here, names));
        self
    }

    /// Makes the file's `[functions]` callable.
    pub fn with_functions(mut self, functions: Arc<Vec<FunctionDef>>) -> Self {
        self.functions = functions;
        self
    }

    /// Binds a name to a value known now (f64).
    pub fn bind_known(&mut self, name: &str, value: Tensor, kind: Kind) {
        self.bind(name, Value::Known(value), kind);
    }

    /// Marks a name whose definition failed.
    pub fn bind_poisoned(&mut self, name: &str, kind: Kind) {
        self.bind(name, Value::Poisoned, kind);
    }

    fn bind(&mut self, name: &str, value: Value, kind: Kind) {
        self.env.insert(name.to_string(), Binding { value, kind });
    }

    fn warn(&mut self, message: impl Into<String>, span: &Span) -> &mut Diagnostic {
        self.diags
            .push(Diagnostic::warning(message).at(&self.source, span.clone()));
        self.diags.last_mut().expect("just pushed")
    }

    fn error(&mut self, message: impl Into<String>, span: &Span) -> &mut Diagnostic {
        self.diags
            .push(Diagnostic::error(message).at(&self.source, span.clone()));
        self.diags.last_mut().expect("just pushed")
    }

    fn fail(&mut self, message: impl Into<String>, span: &Span, help: Option<String>) -> Reported {
        self.error(message, span).help = help;
        Reported
    }

    fn shape(&self, r: Reg) -> &Shape {
        &self.instrs[r].shape
    }

    fn known(&self, r: Reg) -> Option<&Tensor> {
        match &self.instrs[r].op {
            Op::Const(t) => Some(t),
            _ => None,
        }
    }

    fn known_scalar(&self, r: Reg) -> Option<f64> {
        self.known(r)
            .filter(|t| t.rank() == 0)
            .and_then(|t| t.to_scalar::<f64>().ok())
    }

    /// Refuses a shape past [`MAX_ELEMENTS`] before anything is allocated; `what` names it.
    fn check_size(&mut self, what: &str, shape: &Shape, span: &Span) -> Result<(), Reported> {
        match shape.elements() {
            Some(n) if n <= MAX_ELEMENTS => Ok(()),
            n => {
                let count = n.map_or("more than 2^64".to_string(), |n| n.to_string());
                Err(self.fail(
                    format!("{what}{shape} would hold {count} elements"),
                    span,
                    Some(format!(
                        "gradscope builds tensors of at most {MAX_ELEMENTS} elements (2 GiB in f64)"
                    )),
                ))
            }
        }
    }

    /// Refuses a constant of `shape` (built now, in f64) that the memory free would not hold:
    /// past it the allocation aborts the process, taking every other file with it.
    pub(super) fn check_room(&mut self, shape: &Shape, span: &Span) -> Result<(), Reported> {
        let bytes = shape.elements().map_or(u64::MAX, |n| n as u64 * 8);
        let free = (bytes >= crate::alloc::LARGE as u64)
            .then(crate::alloc::free_memory)
            .flatten();
        match free {
            Some(free) if bytes > free => Err(self.fail(
                format!(
                    "building this {shape} constant needs {}, more than the {} of memory free",
                    crate::format::gib(bytes),
                    crate::format::gib(free)
                ),
                span,
                Some(
                    "use smaller shapes: the data and constants built before it hold the rest"
                        .into(),
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Appends an instruction, folding it into a constant when all its inputs are known.
    fn emit(&mut self, op: Op, args: Vec<Reg>, shape: Shape, span: &Span) -> Lowered {
        self.check_size("a tensor ", &shape, span)?;
        let foldable = !matches!(op, Op::Input(_) | Op::Const(_))
            && args.iter().all(|&a| self.known(a).is_some());
        let (op, args) = if foldable {
            self.check_room(&shape, span)?;
            let values: Vec<&Tensor> = args
                .iter()
                .map(|&a| self.known(a).expect("known"))
                .collect();
            match apply(&op, &values, &shape) {
                Ok(t) => (Op::Const(t), Vec::new()),
                Err(e) => {
                    return Err(self.fail(
                        format!("could not evaluate this constant: {e}"),
                        span,
                        None,
                    ));
                }
            }
        } else {
            (op, args)
        };
        let grad = match &op {
            Op::Input(_) => false,
            op if op.passes_gradient() => args.iter().any(|&a| self.grad[a]),
            _ => false,
        };
        let chain = 1 + args.iter().map(|&a| self.chain[a]).max().unwrap_or(0);
        if chain > MAX_CHAIN {
            return Err(self.fail(
                format!("this ends a chain of more than {MAX_CHAIN} operations, one after another"),
                span,
                Some(format!(
                    "gradscope differentiates chains of at most {MAX_CHAIN} operations (candle's \
                     backward pass recurses once per operation); shorten the chain"
                )),
            ));
        }
        self.instrs.push(Instr {
            op,
            args,
            shape,
            span: span.clone(),
        });
        self.grad.push(grad);
        self.chain.push(chain);
        Ok(self.instrs.len() - 1)
    }

    fn constant(&mut self, t: Tensor, span: &Span) -> Lowered {
        let shape = Shape(t.dims().to_vec());
        self.emit(Op::Const(t), Vec::new(), shape, span)
    }

    fn scalar(&mut self, v: f64, span: &Span) -> Lowered {
        let t = Tensor::new(v, &Device::Cpu).map_err(|e| self.fail(e.to_string(), span, None))?;
        self.constant(t, span)
    }

    /// Lowers a single expression (a data or param value) and returns the plan.
    pub fn expression(mut self, e: &Expr) -> (Option<Plan>, Vec<Diagnostic>) {
        let out = self.expr(e).ok();
        let diags = std::mem::take(&mut self.diags);
        (out.map(|output| self.finish(output)), diags)
    }

    /// Lowers a program; the result must be a scalar.
    pub fn program(self, p: &Spanned<Program>) -> (Option<Plan>, Vec<Diagnostic>) {
        let (plan, _, diags) = self.program_with(p, |_| None);
        (plan, diags)
    }

    /// Lowers a program, then `extra` over the names it defines (before unused names are
    /// reported, so a name `extra` reads counts as used). Returns the loss plan, the plan of the
    /// register `extra` gives, and the diagnostics.
    fn program_with(
        mut self,
        p: &Spanned<Program>,
        extra: impl FnOnce(&mut Self) -> Option<Reg>,
    ) -> (Option<Plan>, Option<Plan>, Vec<Diagnostic>) {
        let mut locals: Vec<&Spanned<String>> = Vec::new();
        for stmt in &p.node.stmts {
            let name = &stmt.name;
            if let Some(b) = self.env.get(&name.node).filter(|b| b.kind != Kind::Local) {
                let kind = b.kind.describe();
                self.error(format!("`{}` is already {kind}", name.node), &name.span)
                    .help = Some("pick another name for this step".into());
                continue;
            }
            let earlier = locals.iter().rposition(|n| n.node == name.node);
            let value = match self.expr(&stmt.value) {
                Ok(r) => {
                    locals.push(name);
                    Value::Reg(r)
                }
                Err(Reported) => {
                    self.mark_used(&stmt.value);
                    Value::Poisoned
                }
            };
            // Assigned again before anything read it: that earlier value is dead, though the
            // name is used in the end.
            if let Some(i) = earlier.filter(|_| !self.used.contains(&name.node)) {
                let dead = locals.remove(i);
                self.diags.push(
                    Diagnostic::warning(format!(
                        "`{}` is never used before it is assigned again",
                        dead.node
                    ))
                    .at(&self.source, dead.span.clone())
                    .help("remove this line, or give one of the two values its own name"),
                );
            }
            self.used.remove(&name.node);
            self.bind(&name.node, value, Kind::Local);
        }
        let result = self.expr(&p.node.result);
        if result.is_err() {
            self.mark_used(&p.node.result);
        }
        let extra = extra(&mut self);
        let unused: Vec<_> = locals
            .into_iter()
            .filter(|name| !self.used.contains(&name.node))
            .collect();
        for name in unused.iter().take(UNUSED_SHOWN) {
            self.diags.push(
                Diagnostic::warning(format!("`{}` is never used", name.node))
                    .at(&self.source, name.span.clone())
                    .help("remove it, or use it in the loss"),
            );
        }
        // A generated file can leave thousands unused: one warning stands for the rest.
        if let Some(next) = unused.get(UNUSED_SHOWN) {
            let more = unused.len() - UNUSED_SHOWN;
            self.diags.push(
                Diagnostic::warning(format!(
                    "{more} more lines are never used, from `{}` on",
                    next.node
                ))
                .at(&self.source, next.span.clone())
                .help("remove them, or use them in the loss"),
            );
        }
        let Ok(out) = result else {
            return (None, None, self.diags);
        };
        if !self.shape(out).is_scalar() {
            let shape = self.shape(out).clone();
            self.error(
                format!("the loss must be a scalar, but this has shape {shape}"),
                &p.node.result.span,
            )
            .help = Some("reduce it with mean(...) or sum(...)".into());
            return (None, None, self.diags);
        }
        let diags = std::mem::take(&mut self.diags);
        if diags.iter().any(Diagnostic::is_error) {
            return (None, None, diags);
        }
        let extra = extra.map(|r| self.finish(r));
        (Some(self.finish(out)), extra, diags)
    }

    /// Counts every name in a failed expression as used: lowering stopped at the error, so the
    /// names after it were never looked up, and "never used" would be a follow-on error.
    fn mark_used(&mut self, e: &Expr) {
        self.used.extend(super::data::free_names(e));
    }

    /// Keeps only the instructions the output needs.
    fn finish(&self, output: Reg) -> Plan {
        self.finish_all(&[output]).0
    }

    /// Keeps only the instructions the `outputs` need: a plan whose output is the first, and
    /// where each of them is in it.
    fn finish_all(&self, outputs: &[Reg]) -> (Plan, Vec<Reg>) {
        let mut live = vec![false; self.instrs.len()];
        for &o in outputs {
            live[o] = true;
        }
        for k in (0..self.instrs.len()).rev() {
            if live[k] {
                for &a in &self.instrs[k].args {
                    live[a] = true;
                }
            }
        }
        let mut new_index = vec![usize::MAX; self.instrs.len()];
        let mut instrs = Vec::new();
        for (k, instr) in self.instrs.iter().enumerate() {
            if live[k] {
                let mut instr = instr.clone();
                instr.args.iter_mut().for_each(|a| *a = new_index[*a]);
                new_index[k] = instrs.len();
                instrs.push(instr);
            }
        }
        let outputs: Vec<Reg> = outputs.iter().map(|&o| new_index[o]).collect();
        let plan = Plan {
            instrs,
            output: outputs[0],
        };
        (plan, outputs)
    }

    fn expr(&mut self, e: &Expr) -> Lowered {
        match &e.kind {
            ExprKind::Number(n) => self.scalar(*n, &e.span),
            ExprKind::Name(name) => self.name(name, &e.span),
            ExprKind::Array(items) => self.array(items, &e.span),
            ExprKind::Neg(x) => {
                let x = self.expr(x)?;
                let shape = self.shape(x).clone();
                self.emit(Op::Unary(Unary::Neg), vec![x], shape, &e.span)
            }
            ExprKind::Binary {
                op,
                op_span,
                lhs,
                rhs,
            } => {
                let (l, r) = (self.expr(lhs), self.expr(rhs));
                self.binary(*op, l?, r?, op_span, &e.span)
            }
            ExprKind::Call { func, args, kwargs } => self.call(func, args, kwargs, &e.span),
            ExprKind::Index { target, items } => {
                let t = self.expr(target)?;
                self.index(t, items, &e.span)
            }
            ExprKind::Transposed { target, t_span } => {
                let t = self.expr(target)?;
                let rank = self.shape(t).rank();
                if rank > 2 {
                    let s = self.shape(t).clone();
                    return Err(self.fail(
                        format!("`.T` is for matrices, but this has shape {s}"),
                        t_span,
                        Some(
                            "NumPy's .T would reverse every axis; transpose(x) swaps the last two"
                                .into(),
                        ),
                    ));
                }
                self.transpose(t, &e.span)
            }
        }
    }

    fn name(&mut self, name: &str, span: &Span) -> Lowered {
        let Some(binding) = self.env.get(name).cloned() else {
            if let Some(c) = crate::lang::builtins::constant(name) {
                return self.scalar(c, span);
            }
            let help = if Builtin::from_name(name).is_some() {
                Some(format!("`{name}` is a function: call it as {name}(...)"))
            } else if matches!(
                name.to_ascii_lowercase().as_str(),
                "nan" | "inf" | "infinity"
            ) {
                Some(
                    "NaN and infinity have no names in expressions: write 0 / 0 or 1 / 0 \
                     (or a bare TOML number for a scalar entry, w = nan)"
                        .into(),
                )
            } else {
                did_you_mean(name, self.env.keys().map(String::as_str))
                    .or_else(|| Some(in_scope(self.env.keys())))
            };
            self.error(format!("unknown name `{name}`"), span).help = help;
            return Err(Reported);
        };
        self.used.insert(name.to_string());
        let reg = match binding.value {
            Value::Reg(r) => return Ok(r),
            Value::Poisoned => return Err(Reported),
            Value::Known(t) => self.constant(t, span)?,
        };
        self.bind(name, Value::Reg(reg), binding.kind);
        Ok(reg)
    }

    /// Binds `name` to the run-time input `index` (data first, then params). `span` is where the
    /// input is defined (a param's or data entry's key, a function's argument), for reports
    /// about the input itself.
    pub fn bind_input(&mut self, name: &str, index: usize, kind: Kind, shape: Shape, span: Span) {
        self.instrs.push(Instr {
            op: Op::Input(index),
            args: Vec::new(),
            shape,
            span,
        });
        self.grad.push(kind == Kind::Param);
        self.chain.push(1);
        let reg = self.instrs.len() - 1;
        self.bind(name, Value::Reg(reg), kind);
    }

    /// Binds a data entry as run-time input `index`, keeping its value for checks that need it.
    pub fn bind_data(&mut self, name: &str, index: usize, value: &Tensor, span: Span) {
        let shape = Shape(value.dims().to_vec());
        self.bind_input(name, index, Kind::Data, shape, span);
        self.data_values.insert(index, value.clone());
    }

    /// Records that input `index`, bound as `name`, came from a file (`origin`: `read from
    /// data/x.npy`): shape mismatches it takes part in then say so.
    pub fn note_origin(&mut self, index: usize, name: &str, origin: &str) {
        self.origins
            .insert(index, (name.to_string(), origin.to_string()));
    }

    /// `` (`X` [100, 3] is read from data/x.npy)``: the file-read inputs that `regs` are
    /// computed from, for a shape mismatch's message; empty when none is.
    fn file_note(&self, regs: &[Reg]) -> String {
        let mut seen = HashSet::new();
        let mut stack = regs.to_vec();
        let mut found = Vec::new();
        while let Some(r) = stack.pop() {
            if !seen.insert(r) {
                continue;
            }
            let instr = &self.instrs[r];
            if let Op::Input(i) = instr.op
                && let Some((name, origin)) = self.origins.get(&i)
            {
                found.push((r, format!("`{name}` {} is {origin}", instr.shape)));
            }
            stack.extend(&instr.args);
        }
        found.sort();
        match found.len() {
            0 => String::new(),
            _ => {
                let notes: Vec<String> = found.into_iter().map(|(_, n)| n).collect();
                format!(" ({})", notes.join("; "))
            }
        }
    }

    /// The value of `r` when it reads only constants and data bound with [`Lowerer::bind_data`];
    /// None when it reads a param. `memo` holds the values already computed.
    fn value_before_run(&self, r: Reg, memo: &mut HashMap<Reg, Option<Tensor>>) -> Option<Tensor> {
        if let Some(v) = memo.get(&r) {
            return v.clone();
        }
        let instr = &self.instrs[r];
        let v = match &instr.op {
            Op::Const(t) => Some(t.clone()),
            Op::Input(i) => self.data_values.get(i).cloned(),
            op => instr
                .args
                .iter()
                .map(|&a| self.value_before_run(a, memo))
                .collect::<Option<Vec<Tensor>>>()
                .and_then(|args| apply(op, &args.iter().collect::<Vec<_>>(), &instr.shape).ok()),
        };
        memo.insert(r, v.clone());
        v
    }

    fn array(&mut self, items: &[Expr], span: &Span) -> Lowered {
        let regs: Vec<Lowered> = items.iter().map(|e| self.expr(e)).collect();
        let regs: Vec<Reg> = regs.into_iter().collect::<Result<_, _>>()?;
        let first = self.shape(regs[0]).clone();
        for (r, e) in regs.iter().zip(items) {
            if *self.shape(*r) != first {
                let msg = format!(
                    "array elements must have the same shape: {first} and {}",
                    self.shape(*r)
                );
                return Err(self.fail(msg, &e.span, None));
            }
        }
        let mut dims = vec![regs.len()];
        dims.extend_from_slice(first.dims());
        self.emit(Op::Stack { axis: 0 }, regs, Shape(dims), span)
    }

    fn broadcast(&mut self, op: &str, a: Reg, b: Reg, span: &Span) -> Result<Shape, Reported> {
        let (sa, sb) = (self.shape(a).clone(), self.shape(b).clone());
        self.broadcast_shapes(op, sa, sb, &[a, b], span)
    }

    /// The broadcast of `sa` and `sb`, the shapes of (or computed from) `regs`.
    fn broadcast_shapes(
        &mut self,
        op: &str,
        sa: Shape,
        sb: Shape,
        regs: &[Reg],
        span: &Span,
    ) -> Result<Shape, Reported> {
        match shape::broadcast(&sa, &sb) {
            Some(s) => {
                if sa.rank() == 2 && sa.dims()[1] == 1 && sb.rank() == 1 && sb.dims()[0] == sa.dims()[0]
                    || sb.rank() == 2 && sb.dims()[1] == 1 && sa.rank() == 1 && sa.dims()[0] == sb.dims()[0]
                {
                    self.diags.push(
                        Diagnostic::warning(format!("`{op}` broadcasts {sa} with {sb} to {s}"))
                            .at(&self.source, span.clone())
                            .label("a column meets a vector: every pair is combined")
                            .help("if you meant elementwise, flatten the column with reshape(x, -1)"),
                    );
                }
                Ok(s)
            }
            None => Err(self.fail(
                format!(
                    "shape mismatch: `{op}` cannot broadcast {sa} with {sb}{}",
                    self.file_note(regs)
                ),
                span,
                Some("shapes broadcast when, from the last axis back, each pair of sizes is equal or one of them is 1".into()),
            )),
        }
    }

    fn binary(&mut self, op: BinOp, l: Reg, r: Reg, op_span: &Span, span: &Span) -> Lowered {
        let sym = op.symbol();
        match op {
            BinOp::MatMul => {
                let (sa, sb) = (self.shape(l).clone(), self.shape(r).clone());
                match shape::matmul(&sa, &sb) {
                    Ok(s) => {
                        let op = Op::MatMul {
                            lhs_grad: self.grad[l],
                            rhs_grad: self.grad[r],
                        };
                        self.emit(op, vec![l, r], s, span)
                    }
                    Err(why) => Err(self.fail(
                        format!(
                            "shape mismatch: `@` cannot multiply {sa} by {sb}{}",
                            self.file_note(&[l, r])
                        ),
                        op_span,
                        Some(why.to_string()),
                    )),
                }
            }
            BinOp::Pow => self.power(l, r, op_span, span),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne => {
                let cmp = match op {
                    BinOp::Lt => Compare::Lt,
                    BinOp::Le => Compare::Le,
                    BinOp::Gt => Compare::Gt,
                    BinOp::Ge => Compare::Ge,
                    BinOp::Eq => Compare::Eq,
                    _ => Compare::Ne,
                };
                let s = self.broadcast(sym, l, r, op_span)?;
                self.emit(Op::Compare(cmp), vec![l, r], s, span)
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => {
                self.arithmetic(op, l, r, op_span, span)
            }
        }
    }

    /// `+ - * /`, using candle's fused affine where one side is a known scalar and the result is
    /// bit-identical to the plain op.
    fn arithmetic(&mut self, op: BinOp, l: Reg, r: Reg, op_span: &Span, span: &Span) -> Lowered {
        let (cl, cr) = (self.known_scalar(l), self.known_scalar(r));
        let affine = match (op, cl, cr) {
            (BinOp::Add, _, Some(c)) => Some((l, 1.0, c)),
            (BinOp::Add, Some(c), _) => Some((r, 1.0, c)),
            (BinOp::Sub, _, Some(c)) => Some((l, 1.0, -c)),
            (BinOp::Sub, Some(c), _) => Some((r, -1.0, c)),
            (BinOp::Mul, _, Some(c)) if c != 0.0 && c.is_finite() => Some((l, c, 0.0)),
            (BinOp::Mul, Some(c), _) if c != 0.0 && c.is_finite() => Some((r, c, 0.0)),
            (BinOp::Div, _, Some(c)) if is_power_of_two(c) => Some((l, 1.0 / c, 0.0)),
            _ => None,
        };
        if let Some((x, mul, add)) = affine {
            let shape = self.shape(x).clone();
            return self.emit(Op::Affine { mul, add }, vec![x], shape, span);
        }
        if op == BinOp::Add {
            let (sl, sr) = (self.shape(l).clone(), self.shape(r).clone());
            let is_bias = |x: &Shape, b: &Shape| {
                x.rank() >= 2
                    && b.rank() >= 1
                    && b.rank() < x.rank()
                    && x.dims().ends_with(b.dims())
            };
            if is_bias(&sl, &sr) {
                return self.emit(Op::BiasAdd, vec![l, r], sl, span);
            }
            if is_bias(&sr, &sl) {
                return self.emit(Op::BiasAdd, vec![r, l], sr, span);
            }
        }
        let b = match op {
            BinOp::Add => Binary::Add,
            BinOp::Sub => Binary::Sub,
            BinOp::Mul => Binary::Mul,
            _ => Binary::Div,
        };
        let s = self.broadcast(op.symbol(), l, r, op_span)?;
        self.emit(Op::Binary(b), vec![l, r], s, span)
    }

    fn power(&mut self, base: Reg, exp: Reg, op_span: &Span, span: &Span) -> Lowered {
        let shape = self.shape(base).clone();
        if let Some(e) = self.known_scalar(exp) {
            if e < 0.0 && shape.rank() >= 2 && self.grad[base] {
                self.warn(
                    format!("`^{e}` is elementwise: it raises each entry of this {shape} matrix to the power {e}"),
                    span,
                )
                .help = Some(format!(
                    "it is not a matrix inverse; write {} to say the elementwise reciprocal is meant",
                    if e == -1.0 { "1 / x".to_string() } else { format!("1 / x^{}", -e) }
                ));
            }
            let op = match e {
                1.0 => return Ok(base),
                2.0 => Op::Unary(Unary::Sqr),
                0.5 => Op::Unary(Unary::Sqrt),
                e => Op::Powf(e),
            };
            return self.emit(op, vec![base], shape, span);
        }
        let s = self.broadcast("^", base, exp, op_span)?;
        self.emit(Op::Binary(Binary::Pow), vec![base, exp], s, span)
    }
}

/// The help for a name that is close to none in scope: the names that are (a dozen at most),
/// since a typo far from every name is often a name from another file or an earlier version.
fn in_scope<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let mut names: Vec<&str> = names.map(String::as_str).collect();
    names.sort_unstable();
    let more = names.len().saturating_sub(12);
    let shown: Vec<String> = names.iter().take(12).map(|n| format!("`{n}`")).collect();
    let listed = match (shown.is_empty(), more) {
        (true, _) => "none but the constants".to_string(),
        (false, 0) => shown.join(", "),
        (false, n) => format!("{} and {n} more", shown.join(", ")),
    };
    format!("names defined here: {listed} (and the constants `pi`, `e`)")
}

fn is_power_of_two(c: f64) -> bool {
    c.is_finite() && c != 0.0 && {
        let (m, _) = frexp(c.abs());
        m == 0.5
    }
}

/// Mantissa in [0.5, 1) and exponent, as C's frexp.
fn frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    let e = x.abs().log2().floor() as i32 + 1;
    (x / 2f64.powi(e), e)
}
