//! How optimizers step: the [`Rule`] every optimizer implements over all params at once (with
//! what a step may ask of the loss beyond its gradient, [`Oracle`]), the per-param
//! [`UpdateRule`] most of them are written as, and the state a run keeps. Gradients come in
//! detached; state is rebuilt functionally each step (tensors are immutable), which makes
//! snapshots for rewinding a cheap clone. The one exception is Adam's moments of a large param,
//! written in place once a run keeps a step, and only where no clone holds them
//! ([`OptimizerState::commit`]).

use candle_core::{Result, Tensor};

use super::chain::{TrickState, Tricks};
use super::classic::AdamRule;
use super::groups::ParamGroup;
use super::spec::{OptimizerSpec, RuleState};
use super::tricks::{TrickKind, TrickSpec};

/// What a step may ask of the loss besides the gradient at the current params.
pub trait Oracle {
    /// The loss and gradients at `params` (detached; the same program, dtype and loss scaling as
    /// the step's own gradient): LBFGS's closure. The run's params are as before afterwards.
    fn loss_and_grads(&mut self, params: &[Tensor]) -> Result<(f64, Vec<Tensor>)>;

    /// The exact diagonal of the loss's Hessian at `params`, shaped as the params (Sophia's
    /// default). The run's params are as before afterwards. By default there is none: only
    /// the run's own loss has second derivatives.
    fn hessian_diag(&mut self, _params: &[Tensor]) -> Result<Vec<Tensor>> {
        Err(no_second_order())
    }

    /// The Hessian-vector product `H v` at `params` (Hutchinson's estimate of the diagonal).
    /// The run's params are as before afterwards.
    fn hvp(&mut self, _params: &[Tensor], _v: &[Tensor]) -> Result<Vec<Tensor>> {
        Err(no_second_order())
    }
}

/// The oracle of a step that may not evaluate the loss elsewhere: the params a rule sees are
/// not the whole model (Muon's fallback), or a replay has no loss (tests). Asked, it errs, so a
/// rule that needs more can never give a wrong answer.
pub struct NoOracle;

impl Oracle for NoOracle {
    fn loss_and_grads(&mut self, _params: &[Tensor]) -> Result<(f64, Vec<Tensor>)> {
        Err(candle_core::Error::Msg(
            "the loss cannot be evaluated at other params here".into(),
        ))
    }
}

/// What an [`Oracle`] without second derivatives answers when asked for them.
fn no_second_order() -> candle_core::Error {
    candle_core::Error::Msg("this loss gives no second derivatives".into())
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
    /// What it keeps between steps. Cloning it is cheap: tensors are shared, and changed in
    /// place only where no clone holds them (see [`OptimizerState::commit`]).
    type State: Clone + std::fmt::Debug;

    /// Whether a step asks the oracle for the loss elsewhere (LBFGS): such an optimizer cannot
    /// step part of the model on its own (Muon's fallback).
    const NEEDS_ORACLE: bool = false;

    /// The state before the first update of `params`.
    fn init(&self, params: &[Tensor]) -> Result<Self::State>;

    /// The params' new values; the new state replaces `state`.
    fn step(&self, state: &mut Self::State, cx: &mut StepCx) -> Result<Vec<Tensor>>;

    /// The params to evaluate the model at when they differ from the ones gradients are taken
    /// at (schedule-free's x, ASGD's average).
    fn eval_params(&self, _state: &Self::State) -> Option<Vec<Tensor>> {
        None
    }

    /// Whether params may step in groups with their own hyper-parameters (per-param settings),
    /// each group a separate instance of the rule; false where the update couples every param
    /// and torch refuses groups (LBFGS).
    const PARAM_GROUPS: bool = true;

    /// The parts of its state worth showing by name, beyond the params (schedule-free's `z`,
    /// Prodigy's `d`): what tests compare with the references' state.
    fn state_values(&self, _state: &Self::State) -> Vec<(&'static str, StateValue)> {
        Vec::new()
    }
}

/// One named part of an optimizer's state.
#[derive(Debug, Clone)]
pub enum StateValue {
    /// One number for the whole model (Prodigy's `d`).
    Scalar(f64),
    /// One tensor per param, in param order (schedule-free's `z`).
    PerParam(Vec<Tensor>),
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

/// Optimizer state for all params, one rule state a param group, plus the number of updates
/// taken and the state of the tricks around the optimizer ([`super::chain`]).
#[derive(Debug, Clone)]
pub struct OptimizerState {
    pub(super) groups: Vec<(ParamGroup, RuleState)>,
    pub updates: u64,
    pub(super) tricks: Tricks,
}

impl OptimizerState {
    /// The state before the first update of `params`, stepped in `groups` (each param in
    /// exactly one), without tricks.
    pub fn new(groups: Vec<ParamGroup>, params: &[Tensor]) -> Result<Self> {
        Self::with_tricks(groups, &[], params, params)
    }

    /// `spec`'s state before its first update of `params`, all stepped as one group.
    pub fn single(spec: &OptimizerSpec, params: &[Tensor]) -> Result<Self> {
        Self::new(vec![ParamGroup::all(spec, params.len())], params)
    }

    /// The state of `groups` with `tricks` around them before the first update of `params` (in
    /// the run's dtype); `initial` are the same params at full precision, where f32 master
    /// weights start.
    pub fn with_tricks(
        groups: Vec<ParamGroup>,
        tricks: &[TrickSpec],
        params: &[Tensor],
        initial: &[Tensor],
    ) -> Result<Self> {
        let adam = groups.iter().all(|g| AdamRule::of(&g.spec).is_some());
        let (tricks, base_params) = Tricks::new(adam, tricks, params, initial)?;
        let groups = groups
            .into_iter()
            .map(|g| {
                let rule = g.spec.init_state(&pick(&base_params, &g.params))?;
                Ok((g, rule))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            groups,
            updates: 0,
            tricks,
        })
    }

    /// The params to evaluate the model at, when the tricks (ema's average, lookahead's slow
    /// params) or an optimizer keep them apart from the ones gradients are taken at (`params`,
    /// which the other groups' eval params are).
    pub fn eval_params(&self, params: &[Tensor]) -> Option<Vec<Tensor>> {
        if let Some(eval) = self.tricks.eval_params() {
            return Some(eval);
        }
        let mut out = params.to_vec();
        let mut apart = false;
        for (g, rule) in &self.groups {
            if let Some(eval) = g.spec.eval_params_of(rule) {
                apart = true;
                for (&i, e) in g.params.iter().zip(self.tricks.in_run_dtype(eval)?) {
                    out[i] = e;
                }
            }
        }
        apart.then_some(out)
    }

    /// Asks Adam's kernel to leave the moments of every param of at least the allocator's
    /// large-block size to [`Self::commit`], so that a kept step can write them in place: on a
    /// step's working copy, before it steps. Smaller params keep their one-pass update.
    pub fn defer_moments(&mut self, params: &[Tensor]) {
        for (g, rule) in &mut self.groups {
            if let RuleState::Adam(states) | RuleState::AdamW(states) = rule {
                for (&i, s) in g.params.iter().zip(states.iter_mut()) {
                    let p = &params[i];
                    if p.elem_count() * p.dtype().size_in_bytes() >= crate::alloc::LARGE {
                        s.moments.defer();
                    }
                }
            }
        }
    }

    /// Applies the moments' updates the step left (see [`Self::defer_moments`]), in place where
    /// no other state holds them: once the run has kept the step, before its params change.
    pub fn commit(&mut self) -> Result<()> {
        for (_, rule) in &mut self.groups {
            if let RuleState::Adam(states) | RuleState::AdamW(states) = rule {
                for s in states {
                    super::kernels::commit(s)?;
                }
            }
        }
        Ok(())
    }

    /// The f32 params `master_weights` keeps (None without the trick or outside f16/bf16).
    pub fn master_params(&self) -> Option<&[Tensor]> {
        self.tricks.master()
    }

    /// What trick `kind` keeps between steps (None: it is not in the chain).
    pub fn trick(&self, kind: TrickKind) -> Option<&TrickState> {
        self.tricks.state_of(kind)
    }

    /// Each group's params and its rule's state (torch's `optimizer.state`), to inspect.
    pub fn groups(&self) -> impl Iterator<Item = (&[usize], &RuleState)> {
        self.groups
            .iter()
            .map(|(g, rule)| (g.params.as_slice(), rule))
    }

    /// Each of `n` params' learning-rate multiplier (its group's `lr_scale`).
    pub fn lr_scales(&self, n: usize) -> Vec<f64> {
        let mut out = vec![1.0; n];
        for (g, _) in &self.groups {
            for &i in &g.params {
                out[i] = g.lr_scale;
            }
        }
        out
    }

    /// The named parts of the rules' states ([`Rule::state_values`]) for `n` params: a
    /// per-param value where every group's rule has it (placed at its params), a scalar when
    /// the params step as one group.
    pub fn state_values(&self, n: usize) -> Vec<(&'static str, StateValue)> {
        let per_group: Vec<_> = self
            .groups
            .iter()
            .map(|(g, rule)| (g, g.spec.state_values_of(rule)))
            .collect();
        let Some((_, first)) = per_group.first() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, value) in first {
            match value {
                StateValue::Scalar(_) if per_group.len() == 1 => out.push((*name, value.clone())),
                StateValue::Scalar(_) => {}
                StateValue::PerParam(_) => {
                    let mut all: Vec<Option<Tensor>> = vec![None; n];
                    for (g, values) in &per_group {
                        let own = values.iter().find_map(|(k, v)| match v {
                            StateValue::PerParam(t) if k == name => Some(t),
                            _ => None,
                        });
                        for (&i, t) in g.params.iter().zip(own.into_iter().flatten()) {
                            all[i] = Some(t.clone());
                        }
                    }
                    if let Some(all) = all.into_iter().collect::<Option<Vec<_>>>() {
                        out.push((*name, StateValue::PerParam(all)));
                    }
                }
            }
        }
        out
    }
}

/// The tensors of `params` at `which`.
fn pick(params: &[Tensor], which: &[usize]) -> Vec<Tensor> {
    which.iter().map(|&i| params[i].clone()).collect()
}

/// A group's view of the run's oracle: the loss of the whole model with the group's params set
/// to what the rule asks for (the others as they are), and the group's gradients.
struct GroupOracle<'a> {
    run: &'a mut dyn Oracle,
    params: &'a [Tensor],
    members: &'a [usize],
}

impl GroupOracle<'_> {
    /// The run's params with the group's replaced by `own`.
    fn with_own(&self, own: &[Tensor]) -> Vec<Tensor> {
        let mut all = self.params.to_vec();
        for (&i, p) in self.members.iter().zip(own) {
            all[i] = p.clone();
        }
        all
    }
}

impl Oracle for GroupOracle<'_> {
    fn loss_and_grads(&mut self, own: &[Tensor]) -> Result<(f64, Vec<Tensor>)> {
        let all = self.with_own(own);
        let (loss, grads) = self.run.loss_and_grads(&all)?;
        Ok((loss, pick(&grads, self.members)))
    }

    fn hessian_diag(&mut self, own: &[Tensor]) -> Result<Vec<Tensor>> {
        let diag = self.run.hessian_diag(&self.with_own(own))?;
        Ok(pick(&diag, self.members))
    }

    /// `H v` with `v` zero outside the group: the group's block of columns, its rows kept.
    fn hvp(&mut self, own: &[Tensor], v: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut all_v = self
            .params
            .iter()
            .map(Tensor::zeros_like)
            .collect::<Result<Vec<_>>>()?;
        for (&i, t) in self.members.iter().zip(v) {
            all_v[i] = t.clone();
        }
        let hv = self.run.hvp(&self.with_own(own), &all_v)?;
        Ok(pick(&hv, self.members))
    }
}

/// Returns each param's new value, always a tensor of its own (with a zero step size a rule may
/// return its input, which a run could not write back into the param it came from). Each group
/// steps with its own spec and state at `cx.lr` times its multiplier; `cx.t` is set here from
/// the state's count.
pub fn update(state: &mut OptimizerState, cx: &mut StepCx) -> Result<Vec<Tensor>> {
    state.updates += 1;
    cx.t = state.updates;
    let mut new = cx.params.to_vec();
    for (g, rule) in &mut state.groups {
        let (params, grads) = (pick(cx.params, &g.params), pick(cx.grads, &g.params));
        let mut oracle = GroupOracle {
            run: &mut *cx.oracle,
            params: cx.params,
            members: &g.params,
        };
        let stepped = g
            .spec
            .step_all(
                rule,
                &mut StepCx {
                    params: &params,
                    grads: &grads,
                    loss: cx.loss,
                    lr: cx.lr * g.lr_scale,
                    t: cx.t,
                    oracle: &mut oracle,
                },
            )
            .unwrap_or_else(|| {
                Err(candle_core::Error::Msg(format!(
                    "the optimizer state is not {}'s",
                    g.spec.name()
                )))
            })?;
        for (&i, p) in g.params.iter().zip(stepped) {
            new[i] = p;
        }
    }
    new.into_iter()
        .zip(cx.params)
        .map(|(new, p)| fresh(new, p))
        .collect()
}

/// `new`, or a copy of it when it is `old` itself (a zero step): a run writes the new params
/// back into the ones they came from.
pub(super) fn fresh(new: Tensor, old: &Tensor) -> Result<Tensor> {
    if new.id() == old.id() {
        new.copy()
    } else {
        Ok(new)
    }
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

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The loss sum(p_0) + 10 sum(p_1) + 100 sum(p_2), whose gradients are 1, 10 and 100; it
    /// records the params it was asked about.
    struct Weighted(Vec<Vec<f64>>);

    impl Oracle for Weighted {
        fn loss_and_grads(&mut self, params: &[Tensor]) -> Result<(f64, Vec<Tensor>)> {
            let values: Vec<f64> = params
                .iter()
                .map(|p| p.to_scalar::<f64>())
                .collect::<Result<_>>()?;
            let loss = values[0] + 10.0 * values[1] + 100.0 * values[2];
            self.0.push(values);
            let grads = [1.0, 10.0, 100.0].map(|g| Tensor::new(g, &Device::Cpu));
            Ok((loss, grads.into_iter().collect::<Result<_>>()?))
        }
    }

    #[test]
    fn a_group_asks_the_whole_model_with_its_own_params_replaced() {
        let scalar = |x: f64| Tensor::new(x, &Device::Cpu).unwrap();
        let params = [scalar(1.0), scalar(2.0), scalar(3.0)];
        let mut run = Weighted(Vec::new());
        // The group of params 2 and 0, in that order.
        let mut group = GroupOracle {
            run: &mut run,
            params: &params,
            members: &[2, 0],
        };
        let (loss, grads) = group.loss_and_grads(&[scalar(5.0), scalar(7.0)]).unwrap();
        // Param 0 = 7, param 1 as it is (2), param 2 = 5.
        assert_eq!(loss, 7.0 + 20.0 + 500.0);
        let grads: Vec<f64> = grads.iter().map(|g| g.to_scalar().unwrap()).collect();
        assert_eq!(grads, [100.0, 1.0]);
        assert_eq!(run.0, [[7.0, 2.0, 5.0]]);
    }
}
