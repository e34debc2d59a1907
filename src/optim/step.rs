//! How optimizers step: the [`Rule`] every optimizer implements over all params at once (with
//! what a step may ask of the loss beyond its gradient, [`Oracle`]), the per-param
//! [`UpdateRule`] most of them are written as, and the state a run keeps. Gradients come in
//! detached; state is rebuilt functionally each step (tensors are immutable), which makes
//! snapshots for rewinding a cheap clone.

use candle_core::{Result, Tensor};

use super::spec::{OptimizerSpec, RuleState};

/// What a step may ask of the loss besides the gradient at the current params.
pub trait Oracle {
    /// The loss and gradients at `params` (detached; the same program, dtype and loss scaling as
    /// the step's own gradient): LBFGS's closure. The run's params are as before afterwards.
    fn loss_and_grads(&mut self, params: &[Tensor]) -> Result<(f64, Vec<Tensor>)>;
}

/// One step's inputs: the params and their gradients (after clipping), the loss there, this
/// step's learning rate (after the schedule) and the 1-based update count.
pub struct StepCx<'a> {
    pub params: &'a [Tensor],
    pub grads: &'a [Tensor],
    pub loss: f64,
    pub lr: f64,
    pub t: u64,
    pub oracle: &'a mut dyn Oracle,
}

/// An optimizer's update of all params at once: what every optimizer implements (per-param ones
/// through [`UpdateRule`]).
pub trait Rule {
    /// What it keeps between steps. Cloning it is cheap: tensors are shared, never changed in
    /// place.
    type State: Clone + std::fmt::Debug;

    /// The state before the first update of `params`.
    fn init(&self, params: &[Tensor]) -> Result<Self::State>;

    /// The params' new values; the new state replaces `state`.
    fn step(&self, state: &mut Self::State, cx: &mut StepCx) -> Result<Vec<Tensor>>;

    /// The params to evaluate the model at when they differ from the ones gradients are taken
    /// at (schedule-free's x, ASGD's average).
    fn eval_params(&self, _state: &Self::State) -> Option<Vec<Tensor>> {
        None
    }
}

/// One optimizer's update of one param, over tensors only: how the elementwise optimizers are
/// written; each is a [`Rule`] param by param.
pub trait UpdateRule {
    /// What the rule keeps per param between steps (torch's `state[p]`), empty before the
    /// first update.
    type State: Clone + std::fmt::Debug + Default;

    /// The param's new value from its current value, its (detached) gradient, this step's
    /// learning rate and the 1-based update count `t`; the new state replaces `state`.
    fn step(
        &self,
        state: &mut Self::State,
        param: &Tensor,
        grad: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor>;
}

impl<R: UpdateRule> Rule for R {
    type State = Vec<R::State>;

    fn init(&self, params: &[Tensor]) -> Result<Self::State> {
        Ok(vec![R::State::default(); params.len()])
    }

    fn step(&self, states: &mut Self::State, cx: &mut StepCx) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(cx.params.len());
        for ((p, g), s) in cx.params.iter().zip(cx.grads).zip(states.iter_mut()) {
            out.push(UpdateRule::step(self, s, p, g, cx.lr, cx.t)?);
        }
        Ok(out)
    }
}

/// Optimizer state for all params, plus the number of updates taken.
#[derive(Debug, Clone)]
pub struct OptimizerState {
    rule: RuleState,
    pub updates: u64,
}

impl OptimizerState {
    /// `spec`'s state before its first update of `params`.
    pub fn new(spec: &OptimizerSpec, params: &[Tensor]) -> Result<Self> {
        Ok(Self {
            rule: spec.init_state(params)?,
            updates: 0,
        })
    }

    /// The optimizer's own state.
    pub fn rule(&self) -> &RuleState {
        &self.rule
    }

    /// The params to evaluate the model at, when `spec` keeps them apart from the ones it
    /// takes gradients at.
    pub fn eval_params(&self, spec: &OptimizerSpec) -> Option<Vec<Tensor>> {
        spec.eval_params_of(&self.rule)
    }
}

/// Returns each param's new value, always a tensor of its own (with a zero step size a rule may
/// return its input, which a run could not write back into the param it came from). `cx.t` is
/// set here from the state's count.
pub fn update(
    spec: &OptimizerSpec,
    state: &mut OptimizerState,
    cx: &mut StepCx,
) -> Result<Vec<Tensor>> {
    state.updates += 1;
    cx.t = state.updates;
    let new = spec.step_all(&mut state.rule, cx).unwrap_or_else(|| {
        Err(candle_core::Error::Msg(format!(
            "the optimizer state is not {}'s",
            spec.name()
        )))
    })?;
    new.into_iter()
        .zip(cx.params)
        .map(|(new, p)| {
            if new.id() == p.id() {
                new.copy()
            } else {
                Ok(new)
            }
        })
        .collect()
}

/// torch's lerp: `a + w * (b - a)`.
pub(super) fn lerp(a: &Tensor, b: &Tensor, w: f64) -> Result<Tensor> {
    a + (b - a)?.affine(w, 0.0)?
}

/// Scales and adds: `x + k * y`, with k = 0 a no-op as in torch.
pub(super) fn add_scaled(x: &Tensor, y: &Tensor, k: f64) -> Result<Tensor> {
    if k == 0.0 {
        Ok(x.clone())
    } else {
        x + y.affine(k, 0.0)?
    }
}
