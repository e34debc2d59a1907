//! Optimizers written in the loss language, compiled: an `[optimizers.NAME]` table lowered for
//! every param shape of a file, stepped by the optimizer layer as an [`UpdateProgram`], and
//! traced op by op when an update makes a param non-finite.

use std::any::Any;
use std::sync::Arc;

use candle_core::{DType as CDType, Device, Result, Tensor};

use super::lower::{INIT_HYPER, Lowerer, UPDATE_HYPER};
use super::plan::{Executable, Plan, Reg};
use super::shape::Shape;
use super::trace::{self, Provenance};
use crate::diagnostic::Diagnostic;
use crate::lang::file::OptimizerDef;
use crate::optim::custom::{Globals, Signature, UpdateProgram};
use crate::optim::spec::{OptimizerSpec, RuleState};
use crate::optim::step::OptimizerState;

/// An optimizer of the loss language, ready for params of the shapes it was built for.
#[derive(Debug)]
pub struct CompiledOptimizer {
    def: Arc<OptimizerDef>,
    signature: Signature,
    shapes: Vec<ForShape>,
}

/// Its programs for params of one shape.
#[derive(Debug)]
struct ForShape {
    dims: Vec<usize>,
    /// Each state's initial value (inputs: `p`, then the hyper-parameters).
    init: Vec<Plan>,
    /// The update in f64 and in f32 (inputs: the values every update is given, the
    /// hyper-parameters, the states), see [`compute_dtype`].
    update: [Executable; 2],
    /// Registers of the update holding the new param, then each state's new value.
    outputs: Vec<Reg>,
}

/// The dtype an update computes in for params of `dtype`: f64 for f64, f32 otherwise (f16 and
/// bf16 params compute in f32 and round the results back, as torch's kernels do).
fn compute_dtype(dtype: CDType) -> CDType {
    if dtype == CDType::F64 {
        CDType::F64
    } else {
        CDType::F32
    }
}

/// Lowers `def` for params of each of `shapes`. None when it fails for one of them (its
/// errors are among the diagnostics; the shapes after the failing one are not tried).
pub fn build(
    def: &Arc<OptimizerDef>,
    shapes: &[(Vec<usize>, String)],
) -> (Option<Arc<CompiledOptimizer>>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut built = Vec::new();
    for (dims, params) in shapes {
        let (one, mut d) = for_shape(def, &Shape(dims.clone()));
        let failed = d.iter().any(Diagnostic::is_error);
        // The same update compiles once a shape: its errors name the params it failed for.
        if !params.is_empty() {
            for e in d.iter_mut().filter(|d| d.is_error()) {
                e.message = format!("{}, in the update of {params}", e.message);
            }
        }
        diags.extend(d);
        match one {
            Some(one) if !failed => built.push(one),
            _ => return (None, diags),
        }
    }
    let compiled = CompiledOptimizer {
        def: Arc::clone(def),
        signature: def.signature(),
        shapes: built,
    };
    (Some(Arc::new(compiled)), diags)
}

fn for_shape(def: &OptimizerDef, shape: &Shape) -> (Option<ForShape>, Vec<Diagnostic>) {
    let lowerer = || Lowerer::new(&def.source, 0, &def.name.node);
    let mut diags = Vec::new();
    let mut init = Vec::new();
    for s in &def.state {
        let (plan, d) = lowerer().state_init(def, s, shape);
        diags.extend(d);
        init.extend(plan);
    }
    if init.len() < def.state.len() {
        return (None, diags);
    }
    let state_shapes: Vec<Shape> = init
        .iter()
        .map(|p| p.instrs[p.output].shape.clone())
        .collect();
    let (lowered, d) = lowerer().update(def, shape, &state_shapes);
    diags.extend(d);
    let Some(lowered) = lowered else {
        return (None, diags);
    };
    let exec = |dtype| Executable::new(lowered.plan.clone(), dtype, None);
    let update = match (exec(CDType::F64), exec(CDType::F32)) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(e), _) | (_, Err(e)) => {
            let d = Diagnostic::error(format!("cannot prepare the update: {e}"))
                .at(&def.source, def.update.span.clone());
            diags.push(d);
            return (None, diags);
        }
    };
    let one = ForShape {
        dims: shape.dims().to_vec(),
        init,
        update,
        outputs: lowered.outputs,
    };
    (Some(one), diags)
}

impl CompiledOptimizer {
    /// The programs for params of `dims`.
    fn for_dims(&self, dims: &[usize]) -> Result<&ForShape> {
        self.shapes.iter().find(|s| s.dims == dims).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "optimizer `{}` was compiled for its loss file's params, not for shape {dims:?}",
                self.signature.name
            ))
        })
    }

    /// The inputs of an update of `param`, in the dtype it computes in.
    fn update_inputs(
        hyper: &[f64],
        state: &[Tensor],
        param: &Tensor,
        grad: &Tensor,
        g: &Globals,
    ) -> Result<Vec<Tensor>> {
        let dtype = compute_dtype(param.dtype());
        // In the order of UPDATE_INPUTS: p, g, then these.
        let given = [g.lr, g.t as f64, g.gnorm, g.step_loss];
        let mut inputs = vec![param.to_dtype(dtype)?, grad.to_dtype(dtype)?];
        for v in given.iter().chain(hyper) {
            inputs.push(Tensor::new(*v, &Device::Cpu)?.to_dtype(dtype)?);
        }
        debug_assert_eq!(inputs.len(), UPDATE_HYPER + hyper.len());
        for s in state {
            inputs.push(s.to_dtype(dtype)?);
        }
        Ok(inputs)
    }

    /// The update executable for params of `dtype`.
    fn exec(one: &ForShape, dtype: CDType) -> &Executable {
        match compute_dtype(dtype) {
            CDType::F64 => &one.update[0],
            _ => &one.update[1],
        }
    }
}

impl UpdateProgram for CompiledOptimizer {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn init(&self, hyper: &[f64], params: &[Tensor]) -> Result<Vec<Vec<Tensor>>> {
        let mut out = Vec::with_capacity(params.len());
        for p in params {
            let one = self.for_dims(p.dims())?;
            let dtype = compute_dtype(p.dtype());
            let mut inputs = vec![p.to_dtype(dtype)?];
            for v in hyper {
                inputs.push(Tensor::new(*v, &Device::Cpu)?.to_dtype(dtype)?);
            }
            debug_assert_eq!(inputs.len(), INIT_HYPER + hyper.len());
            let refs: Vec<&Tensor> = inputs.iter().collect();
            let mut states = Vec::with_capacity(one.init.len());
            for plan in &one.init {
                let exec = Executable::new(plan.clone(), dtype, None)?;
                let s = exec.run(&refs).map_err(|e| e.error)?;
                states.push(s.to_dtype(p.dtype())?);
            }
            out.push(states);
        }
        Ok(out)
    }

    fn update(
        &self,
        hyper: &[f64],
        state: &mut [Tensor],
        param: &Tensor,
        grad: &Tensor,
        globals: &Globals,
    ) -> Result<Tensor> {
        let one = self.for_dims(param.dims())?;
        let inputs = Self::update_inputs(hyper, state, param, grad, globals)?;
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let exec = Self::exec(one, param.dtype());
        let out = exec.run_outputs(&refs, &one.outputs).map_err(|e| e.error)?;
        for (s, new) in state.iter_mut().zip(&out[1..]) {
            *s = new.to_dtype(param.dtype())?;
        }
        out[0].to_dtype(param.dtype())
    }
}

/// Where the update of param `i` first made a non-finite value, when `spec` is an optimizer of
/// the loss language: `before` is its state before the update, and `params`, `grads` (after
/// clipping), `loss` and `lr` what the update was given. None for other optimizers, or when
/// every value of the update is finite.
pub fn trace_update(
    spec: &OptimizerSpec,
    before: &OptimizerState,
    params: &[Tensor],
    grads: &[Tensor],
    loss: f64,
    lr: f64,
    i: usize,
) -> Option<Provenance> {
    let OptimizerSpec::Custom(custom) = spec else {
        return None;
    };
    // The group holding param i, and i's place in it.
    let (members, RuleState::Custom(states)) = before.groups().find(|(ps, _)| ps.contains(&i))?
    else {
        return None;
    };
    let k = members.iter().position(|&j| j == i)?;
    let program: &dyn Any = custom.program().as_ref();
    let compiled = program.downcast_ref::<CompiledOptimizer>()?;
    let (param, grad, state) = (params.get(i)?, grads.get(i)?, states.get(k)?);
    let globals = Globals::new(lr, before.updates + 1, grads, loss).ok()?;
    let one = compiled.for_dims(param.dims()).ok()?;
    let inputs = CompiledOptimizer::update_inputs(custom.hyper(), state, param, grad, &globals);
    let inputs = inputs.ok()?;
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let exec = CompiledOptimizer::exec(one, param.dtype());
    trace::trace_update(exec, &compiled.def.source, &refs).ok()?
}
