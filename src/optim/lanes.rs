//! Several runs' optimizers stepped as one: each run is a lane of a leading axis of every param
//! (`[R, ..dims]`), and one program of tensor ops updates them all. The elementwise rules are
//! written once over [`Lanes`], whose numbers ([`Coef`]) are one per lane: a single run is one
//! lane and runs exactly the scalar ops it always did; several lanes enter each number as
//! candle's scalar op would, lane by lane, so every lane gets the bits its run would alone.

use std::fmt;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};

use super::chain::Tricks;
use super::classic::AdamRule;
use super::groups::ParamGroup;
use super::lowp;
use super::spec::{OptimizerSpec, RuleState};
use super::step::{OptimizerState, fresh};

/// A number of one step for every lane: the same in all (then the rules use candle's scalar
/// ops, as a single run does) or one per lane.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Coef {
    All(f64),
    Each(Vec<f64>),
}

impl Coef {
    /// The lanes' `values`, as one number when they are all the same bits.
    fn of(values: Vec<f64>) -> Self {
        match values.split_first() {
            Some((first, rest)) if rest.iter().all(|v| v.to_bits() == first.to_bits()) => {
                Coef::All(*first)
            }
            _ => Coef::Each(values),
        }
    }

    /// Lane `r`'s number.
    pub(super) fn at(&self, r: usize) -> f64 {
        match self {
            Coef::All(v) => *v,
            Coef::Each(values) => values[r],
        }
    }

    /// `f` of every lane's number.
    pub(super) fn map(&self, f: impl Fn(f64) -> f64) -> Self {
        match self {
            Coef::All(v) => Coef::All(f(*v)),
            Coef::Each(values) => Coef::of(values.iter().map(|&v| f(v)).collect()),
        }
    }

    /// Whether `f` holds of each lane's number.
    fn mask(&self, f: impl Fn(f64) -> bool) -> Mask {
        match self {
            Coef::All(v) => Mask::All(f(*v)),
            Coef::Each(values) => Mask::of(values.iter().map(|&v| f(v)).collect()),
        }
    }

    /// `x * self + add` in x's dtype: candle's `affine`, with each lane's own numbers.
    pub(super) fn affine(&self, x: &Tensor, add: &Coef) -> Result<Tensor> {
        match (self, add) {
            (Coef::All(mul), Coef::All(add)) => x.affine(*mul, *add),
            _ => x
                .contiguous()?
                .apply_op1_no_bwd(&LaneAffine { mul: self, add }),
        }
    }

    /// `x * self` (as candle's `affine(k, 0)`).
    pub(super) fn scale(&self, x: &Tensor) -> Result<Tensor> {
        self.affine(x, &Coef::All(0.0))
    }

    /// `(self * g) * g`, in the order torch's `addcmul_(g, g, value=self)` multiplies: where g²
    /// alone overflows, `(1 - β) g` may bring it back in range, and a 0 weight gives 0, not
    /// `0 * inf` (NaN), as torch's does.
    pub(super) fn scaled_square(&self, g: &Tensor) -> Result<Tensor> {
        self.scale(g)?.mul(g)
    }

    /// `x + self` (as candle's `affine(1, a)`).
    pub(super) fn shift(&self, x: &Tensor) -> Result<Tensor> {
        Coef::All(1.0).affine(x, self)
    }

    /// `x + self * y`, and exactly `x` in the lanes where self is 0 (as torch's `add_` with
    /// `alpha = 0`, which even an infinite `y` leaves alone).
    pub(super) fn add_scaled(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        self.mask(|k| k == 0.0)
            .choose(|| Ok(x.clone()), || x + self.scale(y)?)
    }

    /// torch's lerp: `a + self * (b - a)`.
    pub(super) fn lerp(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a + self.scale(&(b - a)?)?
    }

    /// A tensor shaped and typed like `like` holding each lane's number in its lane: what
    /// candle makes of a scalar operand (`maximum(x, 0.5)`).
    pub(super) fn full(&self, like: &Tensor) -> Result<Tensor> {
        let lanes = match self {
            Coef::All(v) => Tensor::new(*v, like.device())?,
            Coef::Each(values) => Tensor::new(values.as_slice(), like.device())?
                .reshape(lane_column(values.len(), like.rank()))?,
        };
        lanes.to_dtype(like.dtype())?.broadcast_as(like.shape())
    }
}

/// The shape `[lanes, 1, .., 1]` of a per-lane column for a tensor of rank `rank`.
fn lane_column(lanes: usize, rank: usize) -> Vec<usize> {
    let mut shape = vec![1; rank.max(1)];
    shape[0] = lanes;
    shape
}

/// Whether something holds, in every lane alike or lane by lane.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Mask {
    All(bool),
    Each(Vec<bool>),
}

impl Mask {
    /// The lanes' `values`, as one when they agree.
    fn of(values: Vec<bool>) -> Self {
        match values.split_first() {
            Some((&first, rest)) if rest.iter().all(|&v| v == first) => Mask::All(first),
            _ => Mask::Each(values),
        }
    }

    /// `yes()` in the lanes where it holds, `no()` elsewhere; only the one needed when all
    /// lanes agree (a single run computes exactly one branch).
    pub(super) fn choose(
        &self,
        yes: impl FnOnce() -> Result<Tensor>,
        no: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        match self {
            Mask::All(true) => yes(),
            Mask::All(false) => no(),
            Mask::Each(values) => {
                let (yes, no) = (yes()?, no()?);
                let column: Vec<u8> = values.iter().map(|&v| u8::from(v)).collect();
                Tensor::new(column.as_slice(), yes.device())?
                    .reshape(lane_column(values.len(), yes.rank()))?
                    .broadcast_as(yes.shape())?
                    .where_cond(&yes, &no)
            }
        }
    }
}

/// candle's affine `v * mul + add` (the numbers cast to the dtype first) with lane `r`'s own
/// `mul` and `add` over the entries of `x[r]`.
struct LaneAffine<'a> {
    mul: &'a Coef,
    add: &'a Coef,
}

impl LaneAffine<'_> {
    fn map<T: WithDType>(&self, values: &[T], shape: &Shape) -> Result<Vec<T>> {
        let lanes = shape.dims().first().copied().unwrap_or(1);
        for c in [self.mul, self.add] {
            if let Coef::Each(v) = c
                && v.len() != lanes
            {
                candle_core::bail!("{} numbers for {lanes} lanes", v.len());
            }
        }
        let per_lane = values.len() / lanes.max(1);
        let mut out = Vec::with_capacity(values.len());
        for (r, lane) in values.chunks(per_lane.max(1)).enumerate() {
            let (mul, add) = (T::from_f64(self.mul.at(r)), T::from_f64(self.add.at(r)));
            out.extend(lane.iter().map(|&v| v * mul + add));
        }
        Ok(out)
    }
}

impl CustomOp1 for LaneAffine<'_> {
    fn name(&self) -> &'static str {
        "lane-affine"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("lane-affine needs a contiguous tensor");
        };
        let shape = layout.shape();
        let out = match storage {
            CpuStorage::F64(v) => CpuStorage::F64(self.map(&v[start..end], shape)?),
            CpuStorage::F32(v) => CpuStorage::F32(self.map(&v[start..end], shape)?),
            CpuStorage::F16(v) => CpuStorage::F16(self.map(&v[start..end], shape)?),
            CpuStorage::BF16(v) => CpuStorage::BF16(self.map(&v[start..end], shape)?),
            other => candle_core::bail!("lane-affine of {:?}", other.dtype()),
        };
        Ok((out, shape.clone()))
    }
}

/// One step of a rule for one or more lanes: each lane's hyper-parameters and learning rate.
pub(super) struct Lanes<'a, O> {
    rules: &'a [O],
    lrs: &'a [f64],
}

impl<'a, O> Lanes<'a, O> {
    /// A single run: one lane.
    pub(super) fn one(rule: &'a O, lr: &'a f64) -> Self {
        Self {
            rules: std::slice::from_ref(rule),
            lrs: std::slice::from_ref(lr),
        }
    }

    /// The rule of the first lane, for what every lane shares ([`LaneRule::Structure`]).
    pub(super) fn rule(&self) -> &O {
        &self.rules[0]
    }

    /// How many lanes step.
    pub(super) fn count(&self) -> usize {
        self.rules.len()
    }

    /// Every lane's rule and lr, in lane order.
    pub(super) fn each(&self) -> Vec<(&'a O, f64)> {
        self.rules.iter().zip(self.lrs.iter().copied()).collect()
    }

    /// The single lane's rule and lr (None: several lanes step).
    pub(super) fn single(&self) -> Option<(&O, f64)> {
        match (self.rules, self.lrs) {
            ([rule], [lr]) => Some((rule, *lr)),
            _ => None,
        }
    }

    /// `f(rule, lr)` of every lane, computed as a single run computes it.
    pub(super) fn coef(&self, f: impl Fn(&O, f64) -> f64) -> Coef {
        self.coef_lane(|_, o, lr| f(o, lr))
    }

    /// `f(r, rule, lr)` of every lane `r`: for numbers a rule keeps per lane (NAdam's product).
    pub(super) fn coef_lane(&self, f: impl Fn(usize, &O, f64) -> f64) -> Coef {
        match self.single() {
            Some((rule, lr)) => Coef::All(f(0, rule, lr)),
            None => Coef::of(
                self.rules
                    .iter()
                    .zip(self.lrs)
                    .enumerate()
                    .map(|(r, (o, &lr))| f(r, o, lr))
                    .collect(),
            ),
        }
    }

    /// Whether `f(rule, lr)` holds in each lane.
    pub(super) fn mask(&self, f: impl Fn(&O, f64) -> bool) -> Mask {
        match self.single() {
            Some((rule, lr)) => Mask::All(f(rule, lr)),
            None => Mask::of(
                self.rules
                    .iter()
                    .zip(self.lrs)
                    .map(|(o, &lr)| f(o, lr))
                    .collect(),
            ),
        }
    }
}

/// What a rule keeps per param, with a leading lane axis on every tensor when lanes step as one.
pub(super) trait LaneSlices: Sized {
    /// The state of lanes `keep`, in that order: `take` picks them out of each tensor, numbers
    /// kept per lane are picked directly.
    fn pick(&self, keep: &[usize], take: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self>;
}

/// `t` picked by `take`, if there is one.
pub(super) fn pick_opt(
    t: &Option<Tensor>,
    take: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Option<Tensor>> {
    t.as_ref().map(take).transpose()
}

/// An elementwise optimizer whose step, given each lane's numbers, is the same tensor program
/// for every lane: written once over [`Lanes`], it is its own single-run
/// [`super::step::UpdateRule`] (`one_lane!`).
pub(super) trait LaneRule: Clone + fmt::Debug + Send + Sync + 'static {
    /// What it keeps per param (torch's `state[p]`), empty before the first update.
    type State: LaneSlices + Clone + fmt::Debug + Default + Send + Sync;
    /// What must be the same in every lane for one program to step them: the flags that switch
    /// a part of the step on or off (amsgrad, nesterov, momentum or none).
    type Structure: PartialEq;

    fn structure(&self) -> Self::Structure;

    /// The params' new value (`[R, ..]` for R lanes) from their values, their detached
    /// gradients and the 1-based update count `t`; the new state replaces `state`.
    fn step_lanes(
        lanes: &Lanes<Self>,
        state: &mut Self::State,
        param: &Tensor,
        grad: &Tensor,
        t: u64,
    ) -> Result<Tensor>;
}

/// Optimizer state of several runs stepped as one (params with a leading lane axis).
#[derive(Debug)]
pub struct LaneState {
    specs: Vec<OptimizerSpec>,
    batch: Box<dyn Batched>,
    /// Updates taken so far, the same in every lane.
    updates: u64,
    /// The params' dtype (what a lane's tricks, none, are kept in).
    dtype: DType,
}

impl Clone for LaneState {
    fn clone(&self) -> Self {
        Self {
            specs: self.specs.clone(),
            batch: self.batch.boxed(),
            updates: self.updates,
            dtype: self.dtype,
        }
    }
}

impl LaneState {
    /// The state before the first update of lanes whose optimizers are `specs` (one per lane)
    /// over batched `params` (each `[specs.len(), ..]`, one dtype). None unless every spec is
    /// the same elementwise optimizer with the same flags (numbers may differ), and not Adam in
    /// f16/bf16 (stepped op by op as torch, [`lowp`]). Tricks and per-param groups are the
    /// run's to refuse.
    pub fn new(specs: &[OptimizerSpec], params: &[Tensor]) -> Option<Self> {
        let dtype = params.first().map_or(DType::F32, Tensor::dtype);
        let batched = params
            .iter()
            .all(|p| p.dtype() == dtype && p.dims().first() == Some(&specs.len()));
        if specs.is_empty() || !batched {
            return None;
        }
        macro_rules! each_kind {
            ($($Kind:ident),*) => {
                match &specs[0] {
                    $( OptimizerSpec::$Kind(_) => Typed::batch(
                        specs,
                        params.len(),
                        |s| match s {
                            OptimizerSpec::$Kind(o) => Some(o.clone()),
                            _ => None,
                        },
                        RuleState::$Kind,
                    ), )*
                    OptimizerSpec::Adam(_) | OptimizerSpec::AdamW(_) if !lowp::is_low(dtype) => {
                        // Adam and AdamW differ in `decoupled`, part of the structure.
                        let wrap = match &specs[0] {
                            OptimizerSpec::Adam(_) => RuleState::Adam,
                            _ => RuleState::AdamW,
                        };
                        Typed::batch(specs, params.len(), AdamRule::of, wrap)
                    }
                    _ => None,
                }
            };
        }
        let batch = each_kind!(
            Sgd, RmsProp, Adagrad, Lion, Adadelta, Adamax, NAdam, RAdam, Rprop
        )?;
        Some(Self {
            specs: specs.to_vec(),
            batch,
            updates: 0,
            dtype,
        })
    }

    /// How many lanes step.
    pub fn lanes(&self) -> usize {
        self.specs.len()
    }

    /// Updates taken so far (every lane's count).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// One update of every lane: `lrs[r]` is lane r's lr this step (after its schedule),
    /// `grads` are `[R, ..]` and detached. Returns the new batched params, each a tensor of its
    /// own.
    pub fn step(
        &mut self,
        params: &[Tensor],
        grads: &[Tensor],
        lrs: &[f64],
    ) -> Result<Vec<Tensor>> {
        let n = self.batch.params();
        if lrs.len() != self.lanes() || params.len() != n || grads.len() != n {
            candle_core::bail!(
                "{} lrs, {} params and {} gradients for {} lanes of {n} params",
                lrs.len(),
                params.len(),
                grads.len(),
                self.lanes(),
            );
        }
        self.updates += 1;
        self.batch.step(params, grads, lrs, self.updates)
    }

    /// Lane `r`'s state as the [`OptimizerState`] its run would have had stepping alone (its
    /// spec, the update count, the rule's state taken out of the lane axis), so the run
    /// continues exactly when it leaves the batch.
    pub fn lane(&self, r: usize) -> Result<OptimizerState> {
        let Some(spec) = self.specs.get(r) else {
            candle_core::bail!("no lane {r} of {}", self.lanes());
        };
        let rule = self.batch.lane(r)?;
        Ok(OptimizerState {
            groups: vec![(ParamGroup::all(spec, self.batch.params()), rule)],
            updates: self.updates,
            tricks: Tricks::none(self.dtype),
        })
    }

    /// Only lanes `keep` (at least one), in that order.
    pub fn select(&self, keep: &[usize]) -> Result<Self> {
        if keep.is_empty() {
            candle_core::bail!("a batch keeps at least one lane");
        }
        if let Some(r) = keep.iter().find(|&&r| r >= self.lanes()) {
            candle_core::bail!("no lane {r} of {}", self.lanes());
        }
        Ok(Self {
            specs: keep.iter().map(|&r| self.specs[r].clone()).collect(),
            batch: self.batch.select(keep)?,
            updates: self.updates,
            dtype: self.dtype,
        })
    }
}

/// One rule's lanes and per-param states, whatever the rule: what [`LaneState`] steps.
trait Batched: fmt::Debug + Send + Sync {
    fn step(
        &mut self,
        params: &[Tensor],
        grads: &[Tensor],
        lrs: &[f64],
        t: u64,
    ) -> Result<Vec<Tensor>>;
    /// How many params each lane has.
    fn params(&self) -> usize;
    /// Lane `r`'s rule state, without the lane axis.
    fn lane(&self, r: usize) -> Result<RuleState>;
    fn select(&self, keep: &[usize]) -> Result<Box<dyn Batched>>;
    fn boxed(&self) -> Box<dyn Batched>;
}

/// The lanes of rule `O`: each lane's rule, each param's state over all lanes, and the variant
/// of [`RuleState`] a lane's state goes back into.
#[derive(Debug, Clone)]
struct Typed<O: LaneRule> {
    rules: Vec<O>,
    states: Vec<O::State>,
    wrap: fn(Vec<O::State>) -> RuleState,
}

impl<O: LaneRule> Typed<O> {
    /// The lanes of `specs` (None: one is not `O`'s, or not with the first's structure), before
    /// the first update of `params` params.
    fn batch(
        specs: &[OptimizerSpec],
        params: usize,
        of: impl Fn(&OptimizerSpec) -> Option<O>,
        wrap: fn(Vec<O::State>) -> RuleState,
    ) -> Option<Box<dyn Batched>> {
        let rules = specs.iter().map(of).collect::<Option<Vec<O>>>()?;
        let structure = rules[0].structure();
        if rules.iter().any(|o| o.structure() != structure) {
            return None;
        }
        Some(Box::new(Self {
            rules,
            states: vec![O::State::default(); params],
            wrap,
        }))
    }

    /// Every param's state picked for `keep` by `take`.
    fn picked(
        &self,
        keep: &[usize],
        take: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Vec<O::State>> {
        self.states.iter().map(|s| s.pick(keep, take)).collect()
    }
}

impl<O: LaneRule> Batched for Typed<O> {
    fn step(
        &mut self,
        params: &[Tensor],
        grads: &[Tensor],
        lrs: &[f64],
        t: u64,
    ) -> Result<Vec<Tensor>> {
        let lanes = Lanes {
            rules: &self.rules,
            lrs,
        };
        params
            .iter()
            .zip(grads)
            .zip(&mut self.states)
            .map(|((p, g), s)| fresh(O::step_lanes(&lanes, s, p, g, t)?, p))
            .collect()
    }

    fn params(&self) -> usize {
        self.states.len()
    }

    fn lane(&self, r: usize) -> Result<RuleState> {
        // A copy: the lane's state no longer holds the batch's tensors.
        let states = self.picked(&[r], &|t| t.get(r)?.copy())?;
        Ok((self.wrap)(states))
    }

    fn select(&self, keep: &[usize]) -> Result<Box<dyn Batched>> {
        let ids: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
        let take = |t: &Tensor| t.index_select(&Tensor::new(ids.as_slice(), t.device())?, 0);
        Ok(Box::new(Self {
            rules: keep.iter().map(|&r| self.rules[r].clone()).collect(),
            states: self.picked(keep, &take)?,
            wrap: self.wrap,
        }))
    }

    fn boxed(&self) -> Box<dyn Batched> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The bits of a tensor's values, widened to f64 (exact for every float dtype).
    fn bits(t: &Tensor) -> Vec<u64> {
        let v: Vec<f64> = t
            .to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Three lanes of four values, with a signed zero, an infinity and a NaN among them.
    fn lanes(dtype: DType) -> Tensor {
        let v = [
            1.5,
            -0.0,
            f64::INFINITY,
            0.1,
            -2.25,
            0.0,
            f64::NAN,
            1e-3,
            7.0,
            -0.3,
            0.0,
            -0.0,
        ];
        Tensor::new(&v, &Device::Cpu)
            .and_then(|t| t.reshape((3, 2, 2)))
            .and_then(|t| t.to_dtype(dtype))
            .unwrap()
    }

    #[test]
    fn each_lane_is_candles_affine_with_its_numbers() {
        let (mul, add) = ([0.1, -1.0, 0.0], [0.0, 1e-8, -0.0]);
        for dtype in [DType::F64, DType::F32, DType::F16, DType::BF16] {
            let x = lanes(dtype);
            let got = Coef::Each(mul.to_vec())
                .affine(&x, &Coef::Each(add.to_vec()))
                .unwrap();
            for r in 0..3 {
                let want = x.get(r).unwrap().affine(mul[r], add[r]).unwrap();
                assert_eq!(
                    bits(&got.get(r).unwrap()),
                    bits(&want),
                    "{dtype:?} lane {r}"
                );
            }
        }
    }

    #[test]
    fn a_lane_scaled_by_zero_adds_nothing_not_even_a_nan() {
        let x = lanes(DType::F64);
        let y = x.flip(&[0]).unwrap();
        let k = [0.0, 2.0, -0.0];
        let got = Coef::Each(k.to_vec()).add_scaled(&x, &y).unwrap();
        for (r, &kr) in k.iter().enumerate() {
            let (xr, yr) = (x.get(r).unwrap(), y.get(r).unwrap());
            let want = if kr == 0.0 {
                xr
            } else {
                (&xr + yr.affine(kr, 0.0).unwrap()).unwrap()
            };
            assert_eq!(bits(&got.get(r).unwrap()), bits(&want), "lane {r}");
        }
    }

    #[test]
    fn numbers_alike_in_every_lane_are_one() {
        assert_eq!(Coef::of(vec![0.5, 0.5, 0.5]), Coef::All(0.5));
        // 0 and -0 are different bits: x * 0 and x * -0 differ in sign.
        assert!(matches!(Coef::of(vec![0.0, -0.0]), Coef::Each(_)));
        assert_eq!(
            Coef::of(vec![0.1, 0.2]).map(|v| (v * 10.0).round()),
            Coef::Each(vec![1.0, 2.0])
        );
        assert_eq!(Coef::of(vec![0.1, 0.1]).map(|v| 1.0 - v), Coef::All(0.9));
    }
}
