//! User functions with their own gradient (`[functions.NAME]`), run as candle custom ops: the
//! forward evaluates the `value` plan, the backward the `grad` plans, so the rest of the graph is
//! untouched and the backward is itself differentiable.

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor,
};

use super::plan::{Executable, Plan};

/// A compiled user function at one call site (its shapes are fixed).
#[derive(Debug)]
pub struct FnOp {
    pub name: String,
    /// Inputs: the arguments.
    pub value: Plan,
    /// One per argument; inputs: the arguments, then `g`.
    pub grads: Vec<Plan>,
}

fn run(plan: &Plan, inputs: &[&Tensor]) -> Result<Tensor> {
    let dtype = inputs.first().map_or(DType::F32, |t| t.dtype());
    Executable::new(plan.clone(), dtype, None)?
        .run(inputs)
        .map_err(|e| e.error)
}

fn tensor_of(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("function on a non-contiguous tensor".into()))?;
    let shape = l.shape().clone();
    match s {
        CpuStorage::F32(d) => Tensor::from_slice(&d[a..b], shape, &Device::Cpu),
        CpuStorage::F64(d) => Tensor::from_slice(&d[a..b], shape, &Device::Cpu),
        CpuStorage::F16(d) => Tensor::from_slice(&d[a..b], shape, &Device::Cpu),
        CpuStorage::BF16(d) => Tensor::from_slice(&d[a..b], shape, &Device::Cpu),
        _ => Err(candle_core::Error::Msg(
            "functions take floating-point tensors".into(),
        )),
    }
}

fn storage_of(t: &Tensor) -> Result<(CpuStorage, Shape)> {
    let flat = t.flatten_all()?;
    let s = match t.dtype() {
        DType::F32 => CpuStorage::F32(flat.to_vec1()?),
        DType::F64 => CpuStorage::F64(flat.to_vec1()?),
        DType::F16 => CpuStorage::F16(flat.to_vec1()?),
        DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
        _ => {
            return Err(candle_core::Error::Msg(
                "functions return floating-point tensors".into(),
            ));
        }
    };
    Ok((s, t.shape().clone()))
}

/// The custom op for a call of `f`.
#[derive(Debug, Clone)]
pub struct UserOp(pub Arc<FnOp>);

impl UserOp {
    fn forward(&self, args: &[Tensor]) -> Result<(CpuStorage, Shape)> {
        let refs: Vec<&Tensor> = args.iter().collect();
        storage_of(&run(&self.0.value, &refs)?)
    }

    fn backward(&self, args: &[&Tensor], grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let mut inputs: Vec<&Tensor> = args.to_vec();
        inputs.push(grad);
        self.0
            .grads
            .iter()
            .map(|p| run(p, &inputs).map(Some))
            .collect()
    }

    /// Applies `f` to `args` (one to three tensors).
    pub fn apply(&self, args: &[&Tensor]) -> Result<Tensor> {
        let c: Vec<Tensor> = args.iter().map(|a| a.contiguous()).collect::<Result<_>>()?;
        match c.as_slice() {
            [a] => a.apply_op1(self.clone()),
            [a, b] => a.apply_op2(b, self.clone()),
            [a, b, d] => a.apply_op3(b, d, self.clone()),
            _ => Err(candle_core::Error::Msg(
                "functions take 1 to 3 arguments".into(),
            )),
        }
    }
}

impl CustomOp1 for UserOp {
    fn name(&self) -> &'static str {
        "user-function"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward(&[tensor_of(s, l)?])
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.backward(&[arg], grad)?.pop().flatten())
    }
}

impl CustomOp2 for UserOp {
    fn name(&self) -> &'static str {
        "user-function"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(&[tensor_of(s1, l1)?, tensor_of(s2, l2)?])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.backward(&[a, b], grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl CustomOp3 for UserOp {
    fn name(&self) -> &'static str {
        "user-function"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(&[tensor_of(s1, l1)?, tensor_of(s2, l2)?, tensor_of(s3, l3)?])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.backward(&[a, b, c], grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

/// Checks a function's gradient against central differences of its value at a few scalar
/// points; a warning where they disagree (on purpose for a straight-through estimator).
pub fn verify(
    fd: &crate::lang::file::FunctionDef,
    source: &Arc<crate::diagnostic::SourceFile>,
) -> Option<crate::diagnostic::Diagnostic> {
    use super::lower::{Kind, Lowerer};
    use super::shape::Shape;
    let n = fd.args.len();
    let plan = |e: &crate::lang::ast::Expr, with_g: bool| {
        let mut lw = Lowerer::new(source, 0, "verify");
        for (i, a) in fd.args.iter().enumerate() {
            lw.bind_input(&a.node, i, Kind::Data, Shape::scalar(), a.span.clone());
        }
        if with_g {
            lw.bind_input("g", n, Kind::Data, Shape::scalar(), fd.name.span.clone());
        }
        lw.expression(e).0
    };
    let value = plan(&fd.value, false)?;
    let eval = |p: &Plan, xs: &[f64]| -> Option<f64> {
        let ts: Vec<Tensor> = xs
            .iter()
            .map(|&x| Tensor::new(x, &Device::Cpu))
            .collect::<Result<_>>()
            .ok()?;
        let refs: Vec<&Tensor> = ts.iter().collect();
        run(p, &refs).ok()?.to_scalar::<f64>().ok()
    };
    for (i, g) in fd.grads.iter().enumerate() {
        let grad = plan(g, true)?;
        for x in [-1.7, -0.45, 0.3, 1.2, 2.6] {
            let mut at = vec![x; n];
            let h = 1e-6;
            at[i] = x + h;
            let up = eval(&value, &at)?;
            at[i] = x - h;
            let down = eval(&value, &at)?;
            at[i] = x;
            let fd_grad = (up - down) / (2.0 * h);
            at.push(1.0);
            let custom = eval(&grad, &at)?;
            if (custom - fd_grad).abs() > 1e-4 * (1.0 + fd_grad.abs()) {
                let arg = &fd.args[i].node;
                return Some(
                    crate::diagnostic::Diagnostic::warning(format!(
                        "the gradient of `{}` for `{arg}` disagrees with finite differences of its value (at {arg} = {x}: {custom} vs {})",
                        fd.name.node,
                        crate::format::fmt_num(fd_grad)
                    ))
                    .at(source, g.span.clone())
                    .help("intended for a straight-through estimator; otherwise check this expression"),
                );
            }
        }
    }
    None
}
