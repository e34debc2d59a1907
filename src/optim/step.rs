//! The update rules, written after torch.optim's single-tensor implementations so trajectories
//! match it to float rounding. Gradients come in detached; state is rebuilt functionally each step
//! (tensors are immutable), which makes snapshots for rewinding a cheap clone.

use candle_core::{Result, Tensor};

use super::spec::{OptimizerKind, OptimizerSpec};

/// Per-param optimizer state.
#[derive(Debug, Clone, Default)]
pub struct ParamState {
    /// First moment / momentum buffer / Adagrad sum / Lion momentum.
    a: Option<Tensor>,
    /// Second moment / RMSprop square average.
    b: Option<Tensor>,
    /// AMSGrad max / RMSprop centered gradient average.
    c: Option<Tensor>,
    /// RMSprop momentum buffer.
    d: Option<Tensor>,
}

/// Optimizer state for all params, plus the number of updates taken.
#[derive(Debug, Clone, Default)]
pub struct OptimizerState {
    params: Vec<ParamState>,
    pub updates: u64,
}

impl OptimizerState {
    pub fn new(n_params: usize) -> Self {
        Self {
            params: vec![ParamState::default(); n_params],
            updates: 0,
        }
    }
}

fn lerp(a: &Tensor, b: &Tensor, w: f64) -> Result<Tensor> {
    // torch's lerp: a + w * (b - a)
    a + (b - a)?.affine(w, 0.0)?
}

/// Scales and adds: `x + k * y`, with k = 0 a no-op as in torch.
fn add_scaled(x: &Tensor, y: &Tensor, k: f64) -> Result<Tensor> {
    if k == 0.0 {
        Ok(x.clone())
    } else {
        x + y.affine(k, 0.0)?
    }
}

/// Returns each param's new value, always a tensor of its own (with a zero step size a rule may
/// return its input, which a run could not write back into the param it came from). `lr` is this
/// step's learning rate (after the schedule).
pub fn update(
    spec: &OptimizerSpec,
    state: &mut OptimizerState,
    params: &[Tensor],
    grads: &[Tensor],
    lr: f64,
) -> Result<Vec<Tensor>> {
    state.updates += 1;
    let t = state.updates as f64;
    let mut out = Vec::with_capacity(params.len());
    for ((p, g), s) in params.iter().zip(grads).zip(state.params.iter_mut()) {
        let new = update_one(spec, s, p, g, lr, t)?;
        out.push(if new.id() == p.id() { new.copy()? } else { new });
    }
    Ok(out)
}

fn update_one(
    spec: &OptimizerSpec,
    s: &mut ParamState,
    p: &Tensor,
    grad: &Tensor,
    lr: f64,
    t: f64,
) -> Result<Tensor> {
    let wd = spec.num("weight_decay");
    match spec.kind {
        OptimizerKind::Sgd => {
            let (momentum, dampening) = (spec.num("momentum"), spec.num("dampening"));
            let mut g = add_scaled(grad, p, wd)?;
            if momentum != 0.0 {
                let buf = match &s.a {
                    None => g.clone(),
                    Some(buf) => (buf.affine(momentum, 0.0)? + g.affine(1.0 - dampening, 0.0)?)?,
                };
                g = if spec.flag("nesterov") {
                    add_scaled(&g, &buf, momentum)?
                } else {
                    buf.clone()
                };
                s.a = Some(buf);
            }
            add_scaled(p, &g, -lr)
        }
        OptimizerKind::Adam | OptimizerKind::AdamW => {
            let (b1, b2, eps) = (spec.num("beta1"), spec.num("beta2"), spec.num("eps"));
            let (p, g) = if spec.kind == OptimizerKind::AdamW {
                (p.affine(1.0 - lr * wd, 0.0)?, grad.clone())
            } else {
                (p.clone(), add_scaled(grad, p, wd)?)
            };
            let m = match &s.a {
                None => g.affine(1.0 - b1, 0.0)?,
                Some(m) => lerp(m, &g, 1.0 - b1)?,
            };
            let g2 = g.sqr()?;
            let v = match &s.b {
                None => g2.affine(1.0 - b2, 0.0)?,
                Some(v) => (v.affine(b2, 0.0)? + g2.affine(1.0 - b2, 0.0)?)?,
            };
            let bc1 = 1.0 - b1.powf(t);
            let bc2_sqrt = (1.0 - b2.powf(t)).sqrt();
            let second = if spec.flag("amsgrad") {
                let vmax = match &s.c {
                    None => v.clone(),
                    Some(c) => c.maximum(&v)?,
                };
                s.c = Some(vmax.clone());
                vmax
            } else {
                v.clone()
            };
            let denom = second.sqrt()?.affine(1.0 / bc2_sqrt, eps)?;
            let new = (&p - m.div(&denom)?.affine(lr / bc1, 0.0)?)?;
            s.a = Some(m);
            s.b = Some(v);
            Ok(new)
        }
        OptimizerKind::RmsProp => {
            let (alpha, eps, momentum) = (spec.num("alpha"), spec.num("eps"), spec.num("momentum"));
            let g = add_scaled(grad, p, wd)?;
            let sq = match &s.b {
                None => g.sqr()?.affine(1.0 - alpha, 0.0)?,
                Some(sq) => (sq.affine(alpha, 0.0)? + g.sqr()?.affine(1.0 - alpha, 0.0)?)?,
            };
            let avg = if spec.flag("centered") {
                let ga = match &s.c {
                    None => g.affine(1.0 - alpha, 0.0)?,
                    Some(ga) => lerp(ga, &g, 1.0 - alpha)?,
                };
                let avg = (&sq - ga.sqr()?)?.sqrt()?.affine(1.0, eps)?;
                s.c = Some(ga);
                avg
            } else {
                sq.sqrt()?.affine(1.0, eps)?
            };
            s.b = Some(sq);
            let step = g.div(&avg)?;
            if momentum > 0.0 {
                let buf = match &s.d {
                    None => step,
                    Some(buf) => (buf.affine(momentum, 0.0)? + step)?,
                };
                let new = add_scaled(p, &buf, -lr)?;
                s.d = Some(buf);
                Ok(new)
            } else {
                add_scaled(p, &step, -lr)
            }
        }
        OptimizerKind::Adagrad => {
            let clr = lr / (1.0 + (t - 1.0) * spec.num("lr_decay"));
            let g = add_scaled(grad, p, wd)?;
            let sum = match &s.a {
                None => g
                    .sqr()?
                    .affine(1.0, spec.num("initial_accumulator_value"))?,
                Some(sum) => (sum + g.sqr()?)?,
            };
            let std = sum.sqrt()?.affine(1.0, spec.num("eps"))?;
            let new = add_scaled(p, &g.div(&std)?, -clr)?;
            s.a = Some(sum);
            Ok(new)
        }
        OptimizerKind::Lion => {
            let (b1, b2) = (spec.num("beta1"), spec.num("beta2"));
            let m = match &s.a {
                None => grad.zeros_like()?,
                Some(m) => m.clone(),
            };
            let c = lerp(&m, grad, 1.0 - b1)?;
            let p = p.affine(1.0 - lr * wd, 0.0)?;
            let new = add_scaled(&p, &c.sign()?, -lr)?;
            s.a = Some(lerp(&m, grad, 1.0 - b2)?);
            Ok(new)
        }
    }
}
