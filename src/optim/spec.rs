//! The optimizer registry: every optimizer declared once (name, doc, hyper-parameters with
//! torch.optim's defaults and docs), as a typed struct per optimizer and the closed
//! [`OptimizerSpec`] enum over them, and the one spec parser. The loss-file checker, the
//! command line and the TUI all validate against this table.

use std::fmt;
use std::str::FromStr;

use std::sync::Arc;

use super::custom::{Custom, Signature, UpdateProgram};
use super::lbfgs::{LineSearchFn, lbfgs_needs_room};
use super::muon::{AdjustLrFn, Preconditioning};
use super::optax::HessianDiag;
use super::settings::{RUN_SETTINGS, check_run_setting};
use super::step::{Rule, StepCx};

/// A hyper-parameter's value, by name: what parsing reads and printing writes. Rules read the
/// typed fields instead.
#[derive(Debug, Clone, PartialEq)]
pub enum HyperValue {
    Number(f64),
    Bool(bool),
    /// A word from a closed set (`line_search_fn=strong_wolfe`), or `none` for an optional
    /// value left to the optimizer (Prodigy's `beta3`).
    Word(&'static str),
    /// A nested optimizer (Muon's `fallback=adamw(lr=3e-4)`).
    Spec(Box<OptimizerSpec>),
}

impl fmt::Display for HyperValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Shortest round-trip form; exponents for very small or large values.
            HyperValue::Number(n) if *n != 0.0 && !(1e-4..1e6).contains(&n.abs()) => {
                write!(f, "{n:e}")
            }
            HyperValue::Number(n) => write!(f, "{n}"),
            HyperValue::Bool(b) => write!(f, "{b}"),
            HyperValue::Word(w) => write!(f, "{w}"),
            HyperValue::Spec(s) => write!(f, "{s}"),
        }
    }
}

/// A Rust type a hyper-parameter field may have: how it reads a written value and shows itself.
pub trait Hyper: Sized {
    /// What a written value must be, for the error message ("a number").
    const EXPECTS: &'static str;
    /// The value `raw` stands for; Err: why it is none of this type, completing "`key` ..."
    /// (by default "must be " and [`Self::EXPECTS`]).
    fn from_raw(raw: RawValue) -> Result<Self, String>;
    /// The value as parsing and printing see it.
    fn to_value(&self) -> HyperValue;
}

/// The default refusal of [`Hyper::from_raw`].
fn expected<T: Hyper>() -> String {
    format!("must be {}", T::EXPECTS)
}

impl Hyper for f64 {
    const EXPECTS: &'static str = "a finite number";
    fn from_raw(raw: RawValue) -> Result<Self, String> {
        match raw {
            RawValue::Number(n) if n.is_finite() => Ok(n),
            _ => Err(expected::<Self>()),
        }
    }
    fn to_value(&self) -> HyperValue {
        HyperValue::Number(*self)
    }
}

/// A count (`ns_steps`, `max_iter`): a whole number, at least 0.
impl Hyper for u64 {
    const EXPECTS: &'static str = "a whole number";
    fn from_raw(raw: RawValue) -> Result<Self, String> {
        match raw {
            RawValue::Number(n) if n >= 0.0 && n.fract() == 0.0 && n < 2f64.powi(53) => {
                Ok(n as u64)
            }
            _ => Err(expected::<Self>()),
        }
    }
    fn to_value(&self) -> HyperValue {
        HyperValue::Number(*self as f64)
    }
}

/// The word an optional value is unset with (torch's `None`).
pub const NONE: &str = "none";

/// A value the optimizer derives when it is not given (Prodigy's `beta3 = sqrt(beta2)`),
/// written as a number or `none`.
impl<T: Hyper> Hyper for Option<T> {
    const EXPECTS: &'static str = "a number or none";
    fn from_raw(raw: RawValue) -> Result<Self, String> {
        match raw {
            RawValue::Text(NONE) => Ok(None),
            raw => T::from_raw(raw).map(Some).map_err(|_| expected::<Self>()),
        }
    }
    fn to_value(&self) -> HyperValue {
        self.as_ref()
            .map_or(HyperValue::Word(NONE), |v| v.to_value())
    }
}

impl Hyper for bool {
    const EXPECTS: &'static str = "true or false";
    fn from_raw(raw: RawValue) -> Result<Self, String> {
        match raw {
            RawValue::Bool(b) => Ok(b),
            _ => Err(expected::<Self>()),
        }
    }
    fn to_value(&self) -> HyperValue {
        HyperValue::Bool(*self)
    }
}

/// A number that may be infinite: a limit that is off by default (Prodigy's `growth_rate =
/// inf`), written as a number or `inf`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit(pub f64);

impl Hyper for Limit {
    const EXPECTS: &'static str = "a number or inf";
    fn from_raw(raw: RawValue) -> Result<Self, String> {
        match raw {
            RawValue::Number(n) if !n.is_nan() => Ok(Limit(n)),
            _ => Err(expected::<Self>()),
        }
    }
    fn to_value(&self) -> HyperValue {
        HyperValue::Number(self.0)
    }
}

/// A nested optimizer, written as a spec: `fallback=adamw(lr=3e-4)`.
impl Hyper for Box<OptimizerSpec> {
    const EXPECTS: &'static str = "an optimizer spec";
    fn from_raw(raw: RawValue) -> Result<Self, String> {
        match raw {
            RawValue::Text(t) => OptimizerSpec::parse(t)
                .map(Box::new)
                .map_err(|e| format!("is not a valid optimizer: {e}")),
            _ => Err(expected::<Self>()),
        }
    }
    fn to_value(&self) -> HyperValue {
        HyperValue::Spec(self.clone())
    }
}

/// A hyper-parameter's name, one-line doc and the values torch accepts, in the registry's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HyperParam {
    /// The name specs and loss files use (torch's keyword argument).
    pub name: &'static str,
    /// One line on what it does.
    pub doc: &'static str,
    /// The values torch's constructor accepts.
    pub bound: Bound,
}

/// The range torch's constructor checks a hyper-parameter against (`ValueError` otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// No check (flags, and values torch takes as they come).
    Any,
    /// `0 <= x`.
    NonNegative,
    /// `0 <= x < 1` (Adam's betas).
    Fraction,
    /// `0 <= x <= 1` (lion-pytorch's betas).
    Unit,
    /// `0 < x < 1` (Rprop's `etaminus`).
    OpenUnit,
    /// `1 < x` (Rprop's `etaplus`).
    AboveOne,
    /// `x <= 0` (Adafactor's `beta2_decay`).
    NonPositive,
    /// `1 <= x` (Adafactor's clipping threshold `d`).
    AtLeastOne,
    /// `0 < x` (Prodigy's `lr`, `eps`, `d0`).
    Positive,
    /// `0 < x < 1` (schedule-free's momentum: its eval params divide by it).
    Open,
}

impl Bound {
    /// Whether torch accepts `value`.
    pub fn admits(self, value: &HyperValue) -> bool {
        let HyperValue::Number(x) = *value else {
            return true;
        };
        match self {
            Bound::Any => true,
            Bound::NonNegative => x >= 0.0,
            Bound::Fraction => (0.0..1.0).contains(&x),
            Bound::Unit => (0.0..=1.0).contains(&x),
            Bound::OpenUnit => 0.0 < x && x < 1.0,
            Bound::AboveOne => x > 1.0,
            Bound::NonPositive => x <= 0.0,
            Bound::AtLeastOne => x >= 1.0,
            Bound::Positive => x > 0.0,
            Bound::Open => x > 0.0 && x < 1.0,
        }
    }

    /// The accepted range in words, for the error message.
    pub fn describe(self) -> &'static str {
        match self {
            Bound::Any => "anything",
            Bound::NonNegative => "at least 0",
            Bound::Fraction => "in [0, 1)",
            Bound::Unit => "in [0, 1]",
            Bound::OpenUnit => "in (0, 1)",
            Bound::AboveOne => "greater than 1",
            Bound::NonPositive => "at most 0",
            Bound::AtLeastOne => "at least 1",
            Bound::Positive => "greater than 0",
            Bound::Open => "in (0, 1)",
        }
    }
}

/// Hyper-parameters torch refuses together: the key to point at, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The hyper-parameter whose value makes the combination invalid.
    pub key: &'static str,
    /// The message and help.
    pub error: SettingError,
}

/// torch's SGD: "Nesterov momentum requires a momentum and zero dampening".
fn nesterov_needs_momentum(o: &Sgd) -> Result<(), Conflict> {
    if o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0) {
        return Err(Conflict {
            key: "nesterov",
            error: SettingError {
                message: format!(
                    "nesterov needs momentum > 0 and dampening = 0 (here momentum = {}, dampening = {})",
                    HyperValue::Number(o.momentum),
                    HyperValue::Number(o.dampening)
                ),
                help: Some(
                    "torch.optim.SGD refuses it: set momentum, e.g. 0.9, and leave dampening at 0"
                        .into(),
                ),
            },
        });
    }
    Ok(())
}

/// Declares every optimizer once: for each, a typed struct of its hyper-parameters with
/// torch's defaults and ranges (`=> Bound`), the checks between them (`where`), and its variant of [`OptimizerKind`], [`OptimizerSpec`] and the per-param
/// state (so an optimizer without an [`UpdateRule`] does not build).
macro_rules! optimizers {
    ($(
        $(#[doc = $doc:literal])*
        $Name:ident = $name:literal in $group:ident $(where $together:path)? {
            $( $(#[doc = $hdoc:literal])* $field:ident : $ty:ty = $default:expr => $bound:ident, )*
        }
    )*) => {
        $(
            typed_params! {
                $(#[doc = $doc])*
                $Name { $( $(#[doc = $hdoc])* $field : $ty = $default => $bound, )* }
            }

            impl $Name {
                /// The constraints torch checks between hyper-parameters.
                fn check_together(&self) -> Result<(), Conflict> {
                    $( $together(self)?; )?
                    Ok(())
                }
            }
        )*

        /// The optimizers gradscope implements, with torch.optim's update rules.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum OptimizerKind {
            $( $Name, )*
        }

        impl OptimizerKind {
            /// Every optimizer, in the registry's order.
            pub const ALL: &'static [OptimizerKind] = &[$( OptimizerKind::$Name, )*];

            /// The name specs and loss files use.
            pub fn name(self) -> &'static str {
                match self {
                    $( OptimizerKind::$Name => $name, )*
                }
            }

            /// Where it comes from (torch.optim, the authors' packages, optax).
            pub fn group(self) -> Group {
                match self {
                    $( OptimizerKind::$Name => Group::$group, )*
                }
            }

            /// One line on what it is.
            pub fn doc(self) -> &'static str {
                match self {
                    $( OptimizerKind::$Name => concat!($($doc),*).trim_ascii(), )*
                }
            }

            /// Whether its steps ask for the loss at other params ([`Rule::NEEDS_ORACLE`]).
            pub fn needs_oracle(self) -> bool {
                match self {
                    $( OptimizerKind::$Name => <$Name as Rule>::NEEDS_ORACLE, )*
                }
            }

            /// Whether params may step in groups with their own settings ([`Rule::PARAM_GROUPS`]).
            pub fn takes_param_groups(self) -> bool {
                match self {
                    $( OptimizerKind::$Name => <$Name as Rule>::PARAM_GROUPS, )*
                }
            }

            /// Hyper-parameters in torch.optim's order (defaults: [`OptimizerSpec::new`]).
            pub fn hyper_parameters(self) -> &'static [HyperParam] {
                match self {
                    $( OptimizerKind::$Name => $Name::PARAMS, )*
                }
            }
        }

        /// A resolved optimizer: its kind and every hyper-parameter, typed.
        #[derive(Debug, Clone, PartialEq)]
        pub enum OptimizerSpec {
            $( $Name($Name), )*
            /// One the loss file defines (`[optimizers.NAME]`).
            Custom(Custom),
        }

        impl OptimizerSpec {
            /// The optimizer with torch.optim's defaults.
            pub fn new(kind: OptimizerKind) -> Self {
                match kind {
                    $( OptimizerKind::$Name => OptimizerSpec::$Name($Name::default()), )*
                }
            }

            /// Which registry optimizer it is (None: the file's own).
            pub fn kind(&self) -> Option<OptimizerKind> {
                match self {
                    $( OptimizerSpec::$Name(_) => Some(OptimizerKind::$Name), )*
                    OptimizerSpec::Custom(_) => None,
                }
            }

            /// Its name, as specs and loss files write it.
            pub fn name(&self) -> &str {
                match self {
                    $( OptimizerSpec::$Name(_) => $name, )*
                    OptimizerSpec::Custom(o) => o.name(),
                }
            }

            /// The same optimizer with its defaults (torch's, or those its definition gives).
            pub fn defaults(&self) -> Self {
                match self {
                    $( OptimizerSpec::$Name(_) => OptimizerSpec::$Name($Name::default()), )*
                    OptimizerSpec::Custom(o) => {
                        OptimizerSpec::Custom(Custom::new(Arc::clone(o.program())))
                    }
                }
            }

            /// The base learning rate (every optimizer has one; a file's own must declare it).
            pub fn lr(&self) -> f64 {
                match self {
                    $( OptimizerSpec::$Name(o) => o.lr, )*
                    OptimizerSpec::Custom(o) => o.get("lr").unwrap_or_default(),
                }
            }

            /// Every hyper-parameter with its value, in torch.optim's order (a file's own: as
            /// written).
            pub fn values(&self) -> Vec<(&str, HyperValue)> {
                match self {
                    $( OptimizerSpec::$Name(o) => o.values(), )*
                    OptimizerSpec::Custom(o) => o.values(),
                }
            }

            fn set_field(&mut self, key: &str, raw: RawValue) -> Option<Result<(), String>> {
                match self {
                    $( OptimizerSpec::$Name(o) => o.set(key, raw), )*
                    OptimizerSpec::Custom(o) => o.set(key, raw),
                }
            }

            /// Takes hyper-parameter `key`'s (checked) value from `from`, the same optimizer.
            fn copy_field(&mut self, from: &Self, key: &str) {
                match (self, from) {
                    $( (OptimizerSpec::$Name(o), OptimizerSpec::$Name(from)) => match key {
                        $( stringify!($field) => o.$field = from.$field.clone(), )*
                        _ => {}
                    }, )*
                    (OptimizerSpec::Custom(o), OptimizerSpec::Custom(from)) => {
                        if let Some(v) = from.get(key) {
                            o.set(key, RawValue::Number(v));
                        }
                    }
                    _ => {}
                }
            }

            /// Where it comes from, for grouping in lists.
            pub fn group(&self) -> Group {
                self.kind().map_or(Group::Own, OptimizerKind::group)
            }

            /// Refuses what torch's constructor refuses between hyper-parameters (each value on
            /// its own was checked when it was set).
            pub fn check_together(&self) -> Result<(), Conflict> {
                match self {
                    $( OptimizerSpec::$Name(o) => o.check_together(), )*
                    OptimizerSpec::Custom(_) => Ok(()),
                }
            }

            /// Fresh state for `params`, before the first update.
            pub(super) fn init_state(
                &self,
                params: &[candle_core::Tensor],
            ) -> candle_core::Result<RuleState> {
                Ok(match self {
                    $( OptimizerSpec::$Name(o) => RuleState::$Name(Rule::init(o, params)?), )*
                    OptimizerSpec::Custom(o) => RuleState::Custom(Rule::init(o, params)?),
                })
            }

            /// One update of every param, with `state` (None: it belongs to another optimizer).
            pub(super) fn step_all(
                &self,
                state: &mut RuleState,
                cx: &mut StepCx,
            ) -> Option<candle_core::Result<Vec<candle_core::Tensor>>> {
                match (self, state) {
                    $( (OptimizerSpec::$Name(o), RuleState::$Name(s)) => Some(Rule::step(o, s, cx)), )*
                    (OptimizerSpec::Custom(o), RuleState::Custom(s)) => Some(Rule::step(o, s, cx)),
                    _ => None,
                }
            }

            /// The params to evaluate the model at, where the optimizer keeps them apart from
            /// the ones it takes gradients at (None: they are the same).
            pub(super) fn eval_params_of(
                &self,
                state: &RuleState,
            ) -> Option<Vec<candle_core::Tensor>> {
                match (self, state) {
                    $( (OptimizerSpec::$Name(o), RuleState::$Name(s)) => Rule::eval_params(o, s), )*
                    (OptimizerSpec::Custom(o), RuleState::Custom(s)) => Rule::eval_params(o, s),
                    _ => None,
                }
            }

            /// The named parts of the optimizer's state (empty when `state` is another's).
            pub(super) fn state_values_of(
                &self,
                state: &RuleState,
            ) -> Vec<(&'static str, super::step::StateValue)> {
                match (self, state) {
                    $( (OptimizerSpec::$Name(o), RuleState::$Name(s)) => Rule::state_values(o, s), )*
                    _ => Vec::new(),
                }
            }
        }

        /// The state of each optimizer (its [`Rule::State`]).
        #[derive(Debug, Clone)]
        pub enum RuleState {
            $( $Name(<$Name as Rule>::State), )*
            Custom(<Custom as Rule>::State),
        }
    };
}

optimizers! {
    /// Stochastic gradient descent, with momentum, dampening and Nesterov's variant.
    Sgd = "sgd" in Torch where nesterov_needs_momentum {
        /// Learning rate.
        lr: f64 = 1e-3 => NonNegative,
        /// Momentum factor (0: none).
        momentum: f64 = 0.0 => NonNegative,
        /// Dampening for momentum.
        dampening: f64 = 0.0 => Any,
        /// Nesterov momentum.
        nesterov: bool = false => Any,
        /// L2 penalty added to the gradient.
        weight_decay: f64 = 0.0 => NonNegative,
    }
    /// Adam: bias-corrected first and second moment estimates.
    Adam = "adam" in Torch {
        /// Learning rate.
        lr: f64 = 1e-3 => NonNegative,
        /// Decay of the first moment (torch's `betas[0]`).
        beta1: f64 = 0.9 => Fraction,
        /// Decay of the second moment (torch's `betas[1]`).
        beta2: f64 = 0.999 => Fraction,
        /// Added to the denominator for numerical stability.
        eps: f64 = 1e-8 => NonNegative,
        /// L2 penalty added to the gradient.
        weight_decay: f64 = 0.0 => NonNegative,
        /// Divide by the largest second moment so far (AMSGrad).
        amsgrad: bool = false => Any,
    }
    /// AdamW: Adam with weight decay decoupled from the gradient.
    AdamW = "adamw" in Torch {
        /// Learning rate.
        lr: f64 = 1e-3 => NonNegative,
        /// Decay of the first moment (torch's `betas[0]`).
        beta1: f64 = 0.9 => Fraction,
        /// Decay of the second moment (torch's `betas[1]`).
        beta2: f64 = 0.999 => Fraction,
        /// Added to the denominator for numerical stability.
        eps: f64 = 1e-8 => NonNegative,
        /// Decoupled weight decay: params shrink by `lr * weight_decay` each step.
        weight_decay: f64 = 0.01 => NonNegative,
        /// Divide by the largest second moment so far (AMSGrad).
        amsgrad: bool = false => Any,
    }
    /// RMSprop: divide by a running average of squared gradients.
    RmsProp = "rmsprop" in Torch {
        /// Learning rate.
        lr: f64 = 1e-2 => NonNegative,
        /// Smoothing constant of the squared-gradient average.
        alpha: f64 = 0.99 => NonNegative,
        /// Added to the denominator for numerical stability.
        eps: f64 = 1e-8 => NonNegative,
        /// L2 penalty added to the gradient.
        weight_decay: f64 = 0.0 => NonNegative,
        /// Momentum factor (0: none).
        momentum: f64 = 0.0 => NonNegative,
        /// Normalise by the gradient's estimated variance instead of its second moment.
        centered: bool = false => Any,
    }
    /// Adagrad: divide by the root of the sum of all squared gradients so far.
    Adagrad = "adagrad" in Torch {
        /// Learning rate.
        lr: f64 = 1e-2 => NonNegative,
        /// Learning-rate decay: `lr / (1 + (t - 1) * lr_decay)`.
        lr_decay: f64 = 0.0 => NonNegative,
        /// L2 penalty added to the gradient.
        weight_decay: f64 = 0.0 => NonNegative,
        /// Starting value of the squared-gradient sum.
        initial_accumulator_value: f64 = 0.0 => NonNegative,
        /// Added to the denominator for numerical stability.
        eps: f64 = 1e-10 => NonNegative,
    }
    /// Lion: the sign of an interpolated momentum (Chen et al. 2023, as lion-pytorch).
    Lion = "lion" in Modern {
        /// Learning rate.
        lr: f64 = 1e-4 => NonNegative,
        /// Interpolation between momentum and gradient for the update.
        beta1: f64 = 0.9 => Unit,
        /// Decay of the momentum.
        beta2: f64 = 0.99 => Unit,
        /// Decoupled weight decay: params shrink by `lr * weight_decay` each step.
        weight_decay: f64 = 0.0 => Any,
    }
    /// Adadelta: steps scaled by the ratio of running RMS of updates to running RMS of gradients.
    Adadelta = "adadelta" in Torch {
        /// Learning rate (scales the adapted step; 1 is Zeiler's method as published).
        lr: f64 = 1.0 => NonNegative,
        /// Decay of the running averages of squared gradients and squared updates.
        rho: f64 = 0.9 => Unit,
        /// Added inside both square roots for numerical stability.
        eps: f64 = 1e-6 => NonNegative,
        /// L2 penalty added to the gradient.
        weight_decay: f64 = 0.0 => NonNegative,
    }
    /// Adamax: Adam with the infinity norm of past gradients in place of the second moment.
    Adamax = "adamax" in Torch {
        /// Learning rate.
        lr: f64 = 2e-3 => NonNegative,
        /// Decay of the first moment (torch's `betas[0]`).
        beta1: f64 = 0.9 => Fraction,
        /// Decay of the infinity norm (torch's `betas[1]`).
        beta2: f64 = 0.999 => Fraction,
        /// Added to |g| inside the max for numerical stability.
        eps: f64 = 1e-8 => NonNegative,
        /// L2 penalty added to the gradient.
        weight_decay: f64 = 0.0 => NonNegative,
    }
    /// ASGD: SGD with a decaying step whose evaluation params are the average of the iterates.
    Asgd = "asgd" in Torch {
        /// Learning rate.
        lr: f64 = 1e-2 => NonNegative,
        /// Decay term: shrinks params by `lambd * eta` and slows the decay of eta.
        lambd: f64 = 1e-4 => NonNegative,
        /// Power of the step-size decay `eta = lr / (1 + lambd * lr * t)^alpha`.
        alpha: f64 = 0.75 => NonNegative,
        /// Step after which averaging starts.
        t0: f64 = 1e6 => Any,
        /// L2 penalty added to the gradient.
        weight_decay: f64 = 0.0 => NonNegative,
    }
    /// NAdam: Adam with Nesterov momentum and a warming-up momentum schedule.
    NAdam = "nadam" in Torch {
        /// Learning rate.
        lr: f64 = 2e-3 => NonNegative,
        /// Decay of the first moment (torch's `betas[0]`).
        beta1: f64 = 0.9 => Fraction,
        /// Decay of the second moment (torch's `betas[1]`).
        beta2: f64 = 0.999 => Fraction,
        /// Added to the denominator for numerical stability.
        eps: f64 = 1e-8 => NonNegative,
        /// L2 penalty added to the gradient (or decoupled, see below).
        weight_decay: f64 = 0.0 => NonNegative,
        /// Speed of the momentum schedule `beta1 (1 - 0.5 * 0.96^(t * momentum_decay))`.
        momentum_decay: f64 = 4e-3 => NonNegative,
        /// Shrink params by `lr * weight_decay` (AdamW style) instead of adding to the gradient.
        decoupled_weight_decay: bool = false => Any,
    }
    /// RAdam: Adam whose adaptive step is switched on and rectified once its variance is tractable.
    RAdam = "radam" in Torch {
        /// Learning rate.
        lr: f64 = 1e-3 => NonNegative,
        /// Decay of the first moment (torch's `betas[0]`).
        beta1: f64 = 0.9 => Fraction,
        /// Decay of the second moment (torch's `betas[1]`).
        beta2: f64 = 0.999 => Fraction,
        /// Added to sqrt(v) (not to its bias-corrected value) for numerical stability.
        eps: f64 = 1e-8 => NonNegative,
        /// L2 penalty added to the gradient (or decoupled, see below).
        weight_decay: f64 = 0.0 => NonNegative,
        /// Shrink params by `lr * weight_decay` (AdamW style) instead of adding to the gradient.
        decoupled_weight_decay: bool = false => Any,
    }
    /// Rprop: per-entry step sizes grown while the gradient keeps its sign, shrunk when it flips.
    Rprop = "rprop" in Torch {
        /// Learning rate: the initial step size (a schedule does not change it later, as in torch).
        lr: f64 = 1e-2 => NonNegative,
        /// Step-size factor after a sign flip (torch's `etas[0]`).
        etaminus: f64 = 0.5 => OpenUnit,
        /// Step-size factor while the sign holds (torch's `etas[1]`).
        etaplus: f64 = 1.2 => AboveOne,
        /// Smallest step size (torch's `step_sizes[0]`).
        step_size_min: f64 = 1e-6 => Any,
        /// Largest step size (torch's `step_sizes[1]`).
        step_size_max: f64 = 50.0 => Any,
    }
    /// L-BFGS: quasi-Newton steps from a short history of curvature pairs; one step makes up
    /// to `max_iter` iterations, each evaluating the loss again.
    Lbfgs = "lbfgs" in Torch where lbfgs_needs_room {
        /// Step length (the first iteration ever: scaled down by the gradient's size).
        lr: f64 = 1.0 => NonNegative,
        /// Most iterations per step.
        max_iter: u64 = 20 => Any,
        /// Most loss evaluations per step (none: max_iter * 5 / 4).
        max_eval: Option<u64> = None => Any,
        /// Stop when the largest gradient entry is at most this.
        tolerance_grad: f64 = 1e-7 => Any,
        /// Stop when the loss or the params change less than this.
        tolerance_change: f64 = 1e-9 => Any,
        /// Curvature pairs kept.
        history_size: u64 = 100 => Any,
        /// none (a fixed step of lr) or strong_wolfe (a strong-Wolfe line search).
        line_search_fn: LineSearchFn = LineSearchFn::None => Any,
    }
    /// Muon: momentum orthogonalized by Newton–Schulz for 2-D params; the others go to
    /// `fallback` (torch.optim.Muon, Newton–Schulz in the run's dtype).
    Muon = "muon" in Torch where super::muon::muon_checks {
        /// Learning rate.
        lr: f64 = 1e-3 => NonNegative,
        /// Decoupled weight decay: params shrink by `lr * weight_decay` each step.
        weight_decay: f64 = 0.1 => NonNegative,
        /// Momentum factor.
        momentum: f64 = 0.95 => NonNegative,
        /// Nesterov momentum.
        nesterov: bool = true => Any,
        /// Newton–Schulz coefficient a of `a X + b A X + c A A X` (torch's `ns_coefficients[0]`).
        ns_a: f64 = 3.4445 => Any,
        /// Newton–Schulz coefficient b (torch's `ns_coefficients[1]`).
        ns_b: f64 = -4.7750 => Any,
        /// Newton–Schulz coefficient c (torch's `ns_coefficients[2]`).
        ns_c: f64 = 2.0315 => Any,
        /// Lower bound on the Frobenius norm the momentum is divided by.
        eps: f64 = 1e-7 => Any,
        /// Newton–Schulz iterations (fewer than 100).
        ns_steps: u64 = 5 => Any,
        /// How the lr is scaled by the param's shape.
        adjust_lr_fn: AdjustLrFn = AdjustLrFn::Original => Any,
        /// The optimizer for params that are not 2-D: its own state, its own lr under the schedule.
        fallback: Box<OptimizerSpec> = Box::new(OptimizerSpec::new(OptimizerKind::AdamW)) => Any,
    }
    /// Adafactor: a factored second moment and a relative step size (torch.optim.Adafactor).
    Adafactor = "adafactor" in Torch {
        /// Learning rate: the largest relative step size, and the weight decay's factor.
        lr: f64 = 1e-2 => NonNegative,
        /// The second moment's decay is `1 - t^beta2_decay`.
        beta2_decay: f64 = -0.8 => NonPositive,
        /// Floor of the second moment estimate (torch's `eps[0]`; none: the dtype's epsilon).
        eps1: Option<f64> = None => NonNegative,
        /// Floor of the params' RMS the step is relative to (torch's `eps[1]`).
        eps2: f64 = 1e-3 => NonNegative,
        /// Clipping threshold on the update's RMS.
        d: f64 = 1.0 => AtLeastOne,
        /// Decoupled weight decay: params shrink by `lr * weight_decay` each step.
        weight_decay: f64 = 0.0 => NonNegative,
    }
    /// Muon as optax.contrib.muon: bias-corrected momentum orthogonalized by Newton–Schulz for
    /// 2-D params, AdamW for the others.
    OptaxMuon = "optax_muon" in Optax {
        /// Learning rate (optax's `learning_rate`; required there).
        lr: f64 = 0.02 => Any,
        /// Newton–Schulz coefficient a of `a X + b A X + c A A X` (optax's `ns_coeffs[0]`).
        ns_a: f64 = 3.4445 => Any,
        /// Newton–Schulz coefficient b (optax's `ns_coeffs[1]`).
        ns_b: f64 = -4.7750 => Any,
        /// Newton–Schulz coefficient c (optax's `ns_coeffs[2]`).
        ns_c: f64 = 2.0315 => Any,
        /// Newton–Schulz iterations.
        ns_steps: u64 = 5 => Any,
        /// Decay of the momentum (optax's `beta`).
        momentum: f64 = 0.95 => Any,
        /// Added to the norm the momentum is divided by, and to AdamW's denominator.
        eps: f64 = 1e-8 => Any,
        /// Weight decay of the 2-D params, times the lr.
        weight_decay: f64 = 0.0 => Any,
        /// Nesterov momentum (also for the AdamW).
        nesterov: bool = true => Any,
        /// Scale the update by its inner product with the momentum.
        adaptive: bool = false => Any,
        /// How the momentum is scaled for Newton–Schulz.
        preconditioning: Preconditioning = Preconditioning::Frobenius => Any,
        /// AdamW's first-moment decay (optax's `adam_b1`).
        adam_beta1: f64 = 0.9 => Any,
        /// AdamW's second-moment decay (optax's `adam_b2`).
        adam_beta2: f64 = 0.999 => Any,
        /// Added to AdamW's second moment inside the root.
        adam_eps_root: f64 = 0.0 => Any,
        /// AdamW's weight decay, times its lr.
        adam_weight_decay: f64 = 0.0 => Any,
        /// AdamW's learning rate (optax's `adam_learning_rate`; none: lr), under the schedule.
        adam_lr: Option<f64> = None => Any,
        /// Scale updates to RMS `consistent_rms` by `sqrt(max(rows, cols))` (none: width scaling).
        consistent_rms: Option<f64> = None => Any,
    }
    /// Adafactor as optax.adafactor: factored second moment over the two largest dims, clipping,
    /// param-scaled steps.
    OptaxAdafactor = "optax_adafactor" in Optax {
        /// Learning rate (optax's `learning_rate`; its default none scales by 1).
        lr: f64 = 1.0 => Any,
        /// Factor the second moment only when the two largest dims are at least this big.
        min_dim_size_to_factor: u64 = 128 => Any,
        /// The second moment's decay is `1 - t^-decay_rate`.
        decay_rate: f64 = 0.8 => Any,
        /// Steps subtracted from t in the decay (for fine-tuning).
        decay_offset: u64 = 0 => Any,
        /// Scale updates by the param's RMS (at least 1e-3).
        multiply_by_parameter_scale: bool = true => Any,
        /// Clip the update's RMS to this (none: no clipping).
        clipping_threshold: Option<f64> = Some(1.0) => Any,
        /// Momentum of the updates, without debiasing (none: no momentum).
        momentum: Option<f64> = None => Any,
        /// Weight decay added to the update, not times the lr (optax's `weight_decay_rate`).
        weight_decay: Option<f64> = None => Any,
        /// Added to g² in the second moment.
        eps: f64 = 1e-30 => Any,
        /// Factor the second moment of params with 2 or more dims.
        factored: bool = true => Any,
    }
    /// Schedule-free AdamW (Defazio et al. 2024, as schedulefree): no schedule to tune, the
    /// model is evaluated at an average of the iterates (eval params).
    ScheduleFreeAdamW = "schedulefree_adamw" in Modern {
        /// Learning rate.
        lr: f64 = 0.0025 => NonNegative,
        /// Interpolation between the average and the iterate where gradients are taken.
        beta1: f64 = 0.9 => Open,
        /// Decay of the second moment (the package's `betas[1]`).
        beta2: f64 = 0.999 => Fraction,
        /// Added to the denominator for numerical stability.
        eps: f64 = 1e-8 => NonNegative,
        /// Weight decay, taken at the gradient's point y.
        weight_decay: f64 = 0.0 => NonNegative,
        /// Steps of linear learning-rate warmup.
        warmup_steps: u64 = 0 => Any,
        /// Polynomial weighting of the average: step k weighs k^r.
        r: f64 = 0.0 => Any,
        /// The average weighs each step by its peak lr to this power.
        weight_lr_power: f64 = 2.0 => Any,
    }
    /// Schedule-free SGD (Defazio et al. 2024, as schedulefree): momentum as an interpolation
    /// with an average of the iterates, which are the eval params.
    ScheduleFreeSgd = "schedulefree_sgd" in Modern {
        /// Learning rate.
        lr: f64 = 1.0 => NonNegative,
        /// Interpolation between the average and the iterate where gradients are taken.
        momentum: f64 = 0.9 => Open,
        /// Weight decay, taken at the gradient's point y.
        weight_decay: f64 = 0.0 => NonNegative,
        /// Steps of linear learning-rate warmup.
        warmup_steps: u64 = 0 => Any,
        /// Polynomial weighting of the average: step k weighs k^r.
        r: f64 = 0.0 => Any,
        /// The average weighs each step by its peak lr to this power.
        weight_lr_power: f64 = 2.0 => Any,
    }
    /// Prodigy (Mishchenko & Defazio 2023, as prodigyopt): Adam whose step size d is estimated
    /// from the distance travelled, over the whole model.
    Prodigy = "prodigy" in Modern {
        /// Multiplier on the estimated step size (leave at 1).
        lr: f64 = 1.0 => Positive,
        /// Decay of the first moment (the package's `betas[0]`; 0: no momentum).
        beta1: f64 = 0.9 => Fraction,
        /// Decay of the second moment (the package's `betas[1]`).
        beta2: f64 = 0.999 => Fraction,
        /// Decay of the step-size estimate's sums (none: sqrt(beta2)).
        beta3: Option<f64> = None => Any,
        /// Added to the denominator (times d) for numerical stability.
        eps: f64 = 1e-8 => Positive,
        /// Weight decay, decoupled (AdamW's) unless `decouple` is false.
        weight_decay: f64 = 0.0 => Any,
        /// Decoupled (AdamW) weight decay; false: added to the gradient (Adam's).
        decouple: bool = true => Any,
        /// Adam's bias correction, in the step size.
        use_bias_correction: bool = false => Any,
        /// Leave the lr out of the estimate's denominator (steadier under warmup).
        safeguard_warmup: bool = false => Any,
        /// The initial step-size estimate.
        d0: f64 = 1e-6 => Positive,
        /// Multiplier on the step-size estimate: the preferred knob.
        d_coef: f64 = 1.0 => Any,
        /// Most the estimate may grow per step, as a factor (inf: no limit).
        growth_rate: Limit = Limit(f64::INFINITY) => Any,
    }
    /// AdaBelief: Adam over the gradient's deviation from its momentum (optax.adabelief).
    AdaBelief = "adabelief" in Optax {
        /// Learning rate (optax has no default; 1e-3 as adabelief-pytorch).
        lr: f64 = 1e-3 => NonNegative,
        /// Decay of the momentum (optax's `b1`).
        beta1: f64 = 0.9 => Fraction,
        /// Decay of the squared deviation (optax's `b2`).
        beta2: f64 = 0.999 => Fraction,
        /// Added to the denominator's root.
        eps: f64 = 1e-16 => NonNegative,
        /// Added to the squared-deviation average every step (it accumulates in the state).
        eps_root: f64 = 1e-16 => NonNegative,
        /// Nesterov momentum: the bias-corrected momentum looks one step ahead.
        nesterov: bool = false => Any,
    }
    /// LAMB: Adam's step rescaled per tensor by ||p|| / ||step|| (optax.lamb).
    Lamb = "lamb" in Optax {
        /// Learning rate (optax has no default; 1e-3 as pytorch-lamb).
        lr: f64 = 1e-3 => NonNegative,
        /// Decay of the first moment (optax's `b1`).
        beta1: f64 = 0.9 => Fraction,
        /// Decay of the second moment (optax's `b2`).
        beta2: f64 = 0.999 => Fraction,
        /// Added to the denominator's root.
        eps: f64 = 1e-6 => NonNegative,
        /// Added to the second moment inside the root.
        eps_root: f64 = 0.0 => NonNegative,
        /// Weight decay added to the step before the trust ratio.
        weight_decay: f64 = 0.0 => NonNegative,
    }
    /// LARS: the gradient rescaled per tensor by trust_coefficient ||p|| / ||g||, then momentum
    /// (optax.lars).
    Lars = "lars" in Optax {
        /// Learning rate (optax has no default; 1.0, with the trust ratio setting the scale).
        lr: f64 = 1.0 => NonNegative,
        /// Weight decay added to the gradient before the trust ratio.
        weight_decay: f64 = 0.0 => NonNegative,
        /// Scales the trust ratio ||p|| / ||g||.
        trust_coefficient: f64 = 0.001 => NonNegative,
        /// Added to ||g|| in the trust ratio.
        eps: f64 = 0.0 => NonNegative,
        /// Decay of the momentum trace (taken after the learning rate).
        momentum: f64 = 0.9 => NonNegative,
        /// Nesterov momentum.
        nesterov: bool = false => Any,
    }
    /// NovoGrad: a second moment per tensor (one number: ||g||^2), no bias correction
    /// (optax.novograd).
    NovoGrad = "novograd" in Optax {
        /// Learning rate (optax has no default; 1e-3 as NVIDIA's NovoGrad).
        lr: f64 = 1e-3 => NonNegative,
        /// Decay of the momentum, which sums steps (no `1 - beta1`; optax's `b1`).
        beta1: f64 = 0.9 => Unit,
        /// Decay of the per-tensor ||g||^2 average (optax's `b2`).
        beta2: f64 = 0.25 => Unit,
        /// Added to the denominator's root.
        eps: f64 = 1e-6 => NonNegative,
        /// Added to the ||g||^2 average inside the root.
        eps_root: f64 = 0.0 => NonNegative,
        /// Weight decay added to the normalised gradient.
        weight_decay: f64 = 0.0 => NonNegative,
    }
    /// SM3: Adagrad with one accumulator per row and per column instead of per entry
    /// (optax.sm3; params of at least one dimension).
    Sm3 = "sm3" in Optax {
        /// Learning rate (optax has no default; 0.1 as the authors' SM3).
        lr: f64 = 0.1 => NonNegative,
        /// Decay of the momentum average (0: none).
        momentum: f64 = 0.9 => Unit,
    }
    /// Sophia: momentum over a running Hessian diagonal, clipped per entry
    /// (optax.contrib.sophia).
    Sophia = "sophia" in Optax {
        /// Learning rate (optax has no default; 1e-4 as the authors' Sophia).
        lr: f64 = 1e-4 => NonNegative,
        /// Decay of the momentum (optax's `b1`).
        beta1: f64 = 0.965 => Fraction,
        /// Decay of the Hessian-diagonal average, per Hessian update (optax's `b2`).
        beta2: f64 = 0.99 => Unit,
        /// Floor of gamma * h in the denominator.
        eps: f64 = 1e-8 => NonNegative,
        /// Decoupled weight decay, added to the clipped step.
        weight_decay: f64 = 1e-4 => NonNegative,
        /// Scales the Hessian diagonal in the denominator.
        gamma: f64 = 0.01 => NonNegative,
        /// Each entry of the step is clipped to +-clip_threshold (none: no clipping).
        clip_threshold: Option<f64> = Some(1.0) => NonNegative,
        /// Steps between Hessian-diagonal updates (at steps 1, 1 + interval, ...).
        update_interval: u64 = 10 => AtLeastOne,
        /// exact (one more backward pass per param entry) or hutchinson (one Hessian-vector
        /// product with a Rademacher vector).
        hessian_diag: HessianDiag = HessianDiag::Exact => Any,
        /// Seed of hutchinson's Rademacher vectors.
        seed: u64 = 0 => Any,
    }
}

/// Where an optimizer comes from: the groups lists show it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// torch.optim.
    Torch,
    /// Recent optimizers from their authors' packages.
    Modern,
    /// optax (and optax.contrib).
    Optax,
    /// Written in the loss file (or an `optimizers/` folder above it).
    Own,
}

impl Group {
    /// The heading lists show it under.
    pub fn title(self) -> &'static str {
        match self {
            Group::Torch => "torch.optim",
            Group::Modern => "modern",
            Group::Optax => "optax",
            Group::Own => "written for this file (its own, optimizers/)",
        }
    }
}

/// Why a setting or a spec is not acceptable, with the help to show.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingError {
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for SettingError {
    /// The message, with the help in parentheses (as the command line shows it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.help {
            Some(h) => write!(f, "{} ({h})", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for SettingError {}

/// A setting's value as written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawValue<'a> {
    Number(f64),
    Bool(bool),
    Text(&'a str),
}

impl RawValue<'_> {
    /// The number a string holds (`"0.01"`, which TOML reads as text).
    pub fn unquoted(self) -> Option<f64> {
        match self {
            RawValue::Text(t) => t.trim().parse().ok(),
            _ => None,
        }
    }

    /// Help for a number written in quotes where, unquoted, `valid` accepts it.
    pub fn quoted_number_help(self, key: &str, valid: impl Fn(RawValue) -> bool) -> Option<String> {
        let n = self.unquoted().filter(|&n| valid(RawValue::Number(n)))?;
        Some(format!(
            "that is a string: write the number without quotes, `{key} = {n}`"
        ))
    }
}

/// Checks one `key = value` for optimizer `kind` (None: not yet known, only run settings and
/// keys of some optimizer are accepted). A key that is both a run setting and one of `kind`'s
/// hyper-parameters is the optimizer's (Sophia's `gamma`; the schedule's is also `lr_gamma`).
pub fn check_setting(
    kind: Option<OptimizerKind>,
    key: &str,
    value: RawValue,
) -> Result<(), SettingError> {
    let own = kind.is_some_and(|k| k.hyper_parameters().iter().any(|h| h.name == key));
    if let Some(checked) = check_run_setting(key, value).filter(|_| !own) {
        return checked;
    }
    let kinds = match &kind {
        Some(k) => std::slice::from_ref(k),
        None => OptimizerKind::ALL,
    };
    let owner = kinds
        .iter()
        .find(|k| k.hyper_parameters().iter().any(|h| h.name == key));
    let Some(&owner) = owner else {
        let valid: Vec<&str> = kinds
            .iter()
            .flat_map(|k| k.hyper_parameters().iter().map(|h| h.name))
            .chain(RUN_SETTINGS.iter().map(|(n, _)| *n))
            .collect();
        let what = kind.map_or("an optimizer".to_string(), |k| format!("`{}`", k.name()));
        let mut unique = valid.clone();
        unique.sort_unstable();
        unique.dedup();
        return Err(SettingError {
            message: format!("unknown setting `{key}` for {what}"),
            help: Some(
                crate::diagnostic::did_you_mean(key, valid.iter().copied())
                    .unwrap_or_else(|| format!("valid settings: {}", unique.join(", "))),
            ),
        });
    };
    let mut probe = OptimizerSpec::new(owner);
    if let Some(Err(why)) = probe.set_field(key, value) {
        return Err(SettingError {
            message: format!("`{key}` {why}"),
            help: value.quoted_number_help(key, |n| check_setting(kind, key, n).is_ok()),
        });
    }
    let hyper = owner.hyper_parameters().iter().find(|h| h.name == key);
    match (hyper, probe.get(key)) {
        (Some(h), Some(v)) if !h.bound.admits(&v) => Err(SettingError {
            message: format!("`{key}` must be {}, not {v}", h.bound.describe()),
            help: Some(match owner.group() {
                // optax checks nothing: these are the values its update is defined for.
                Group::Optax => format!(
                    "optax does not check it, but `{}` is defined only for {key} {}",
                    owner.name(),
                    h.bound.describe()
                ),
                Group::Torch | Group::Modern | Group::Own => {
                    format!("torch.optim refuses {key} = {v} for `{}`", owner.name())
                }
            }),
        }),
        _ => Ok(()),
    }
}

/// Checks one `key = value` for `own`, an optimizer the loss file defines: a run setting as
/// for any optimizer, or one of its hyper-parameters, a number (`lr` at least 0).
pub fn check_own_setting(own: &Signature, key: &str, value: RawValue) -> Result<(), SettingError> {
    if let Some(checked) = check_run_setting(key, value) {
        return checked;
    }
    if !own.hyper.iter().any(|(n, _)| n == key) {
        let valid: Vec<&str> = own
            .hyper
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(RUN_SETTINGS.iter().map(|(n, _)| *n))
            .collect();
        return Err(SettingError {
            message: format!("unknown setting `{key}` for `{}`", own.name),
            help: Some(
                crate::diagnostic::did_you_mean(key, valid.iter().copied())
                    .unwrap_or_else(|| format!("valid settings: {}", valid.join(", "))),
            ),
        });
    }
    let n = f64::from_raw(value).map_err(|why| SettingError {
        message: format!("`{key}` {why}"),
        help: None,
    })?;
    if key == "lr" && !Bound::NonNegative.admits(&HyperValue::Number(n)) {
        return Err(SettingError {
            message: format!(
                "`lr` must be {}, not {}",
                Bound::NonNegative.describe(),
                HyperValue::Number(n)
            ),
            help: None,
        });
    }
    Ok(())
}

/// Resolves an optimizer name, with "did you mean" help otherwise.
pub fn kind_from_name(name: &str) -> Result<OptimizerKind, SettingError> {
    OptimizerKind::from_name(name).ok_or_else(|| unknown_optimizer(name, []))
}

/// Why `name` names no optimizer, the registry's or one of `own` (a file's own), with the
/// closest name as help.
pub fn unknown_optimizer<'a>(name: &str, own: impl IntoIterator<Item = &'a str>) -> SettingError {
    let names: Vec<&str> = OptimizerKind::ALL
        .iter()
        .map(|k| k.name())
        .chain(own)
        .collect();
    SettingError {
        message: format!("unknown optimizer `{name}`"),
        help: Some(
            crate::diagnostic::did_you_mean(name, names.iter().copied())
                .unwrap_or_else(|| format!("valid optimizers: {}", names.join(", "))),
        ),
    }
}

impl OptimizerKind {
    /// The optimizer called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// Whether its state holds squares of the gradient (a second moment, an accumulator),
    /// which overflow where the gradient's square does.
    pub fn keeps_squares(self) -> bool {
        use OptimizerKind::*;
        matches!(
            self,
            Adam | AdamW
                | RmsProp
                | Adagrad
                | Adadelta
                | NAdam
                | RAdam
                | Adafactor
                | OptaxAdafactor
                | ScheduleFreeAdamW
                | Prodigy
                | AdaBelief
                | Lamb
                | NovoGrad
                | Sm3
        )
    }

    /// Whether a step may leave a param in place by design: Rprop skips an element whose
    /// gradient changed sign, L-BFGS stops at its tolerances.
    pub fn may_hold_still(self) -> bool {
        matches!(self, OptimizerKind::Rprop | OptimizerKind::Lbfgs)
    }
}

impl OptimizerSpec {
    /// The eps added to the denominator, for the optimizers that divide by a gradient
    /// statistic (None for those that do not).
    pub fn eps(&self) -> Option<f64> {
        match self {
            // LARS adds its eps to a norm it has checked is not 0, SM3 guards its own, and
            // Sophia's floors a Hessian statistic, not a gradient one.
            OptimizerSpec::Lars(_) | OptimizerSpec::Sm3(_) | OptimizerSpec::Sophia(_) => None,
            _ => match self.get("eps") {
                Some(HyperValue::Number(eps)) => Some(eps),
                _ => None,
            },
        }
    }
}

/// How to write a spec, for the parser's help.
const SPEC_EXAMPLE: &str = "write e.g. sgd(lr=0.01, momentum=0.9)";

impl OptimizerSpec {
    /// A hyper-parameter's value by name (None: not one of this optimizer's), for printing and
    /// tests; update rules read the typed fields.
    pub fn get(&self, key: &str) -> Option<HyperValue> {
        self.values()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Sets one hyper-parameter by name, checked against the registry (a file's own optimizer:
    /// against its definition).
    pub fn set(&mut self, key: &str, value: RawValue) -> Result<(), SettingError> {
        match self {
            OptimizerSpec::Custom(o) => check_own_setting(o.program().signature(), key, value)?,
            _ => check_setting(self.kind(), key, value)?,
        }
        match self.set_field(key, value) {
            Some(r) => r.map_err(|why| SettingError {
                message: format!("`{key}` {why}"),
                help: None,
            }),
            None => Err(SettingError {
                message: format!(
                    "`{key}` is a run setting, not a hyper-parameter of `{}`",
                    self.name()
                ),
                help: Some("pass it as its own option, e.g. --steps or --clip-norm".into()),
            }),
        }
    }

    /// Parses `name` or `name(key=value, ...)` over torch's defaults ([`SpecOverride::parse`]).
    pub fn parse(text: &str) -> Result<Self, SettingError> {
        Self::parse_with(text, &[])
    }

    /// [`OptimizerSpec::parse`] where `own`, a loss file's own optimizers, may be named too.
    pub fn parse_with(text: &str, own: &[Arc<dyn UpdateProgram>]) -> Result<Self, SettingError> {
        SpecOverride::parse_with(text, own)?.over_defaults()
    }

    /// The optimizer called `name` with its defaults: the registry's, or one of `own`.
    pub fn named(name: &str, own: &[Arc<dyn UpdateProgram>]) -> Result<Self, SettingError> {
        if let Some(p) = own.iter().find(|p| p.signature().name == name) {
            return Ok(OptimizerSpec::Custom(Custom::new(Arc::clone(p))));
        }
        OptimizerKind::from_name(name)
            .map(Self::new)
            .ok_or_else(|| unknown_optimizer(name, own.iter().map(|p| p.signature().name.as_str())))
    }
}

/// An optimizer spec as typed: its optimizer and the hyper-parameters written, each checked.
/// Laid [`over`](SpecOverride::over) a base spec, it changes only those keys.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecOverride {
    /// The optimizer with the typed values over torch's defaults.
    typed: OptimizerSpec,
    /// The hyper-parameters written, in order.
    keys: Vec<String>,
}

impl SpecOverride {
    /// Parses `name` or `name(key=value, ...)`; a value is a number or `true`/`false`. Each
    /// value is checked against the registry (its type and torch's range).
    pub fn parse(text: &str) -> Result<Self, SettingError> {
        Self::parse_with(text, &[])
    }

    /// [`SpecOverride::parse`] where `own`, a loss file's own optimizers, may be named too.
    pub fn parse_with(text: &str, own: &[Arc<dyn UpdateProgram>]) -> Result<Self, SettingError> {
        let (name, args) = split_call(text)?;
        let mut typed = OptimizerSpec::named(name, own)?;
        let mut keys = Vec::new();
        for argument in arguments(args, SPEC_EXAMPLE) {
            let (key, raw) = argument?;
            typed
                .set(key, raw)
                .map_err(|e| match (raw, typed.get(key)) {
                    (RawValue::Text(v), _) if matches!(value_list(v), Ok(Some(_))) => {
                        SettingError {
                            message: format!("`{key}={v}` is a list of values"),
                            help: Some("only `gradscope sweep` takes value lists".into()),
                        }
                    }
                    (RawValue::Text(v), Some(HyperValue::Number(_))) => SettingError {
                        message: format!("`{v}` is not a number"),
                        help: None,
                    },
                    _ => e,
                })?;
            if typed.get(key).is_some() {
                keys.push(key.to_string());
            }
        }
        Ok(Self { typed, keys })
    }

    /// The name of the optimizer it names.
    pub fn name(&self) -> &str {
        self.typed.name()
    }

    /// The spec it makes of its optimizer's defaults.
    pub fn over_defaults(&self) -> Result<OptimizerSpec, SettingError> {
        self.over(&self.typed.defaults())
    }

    /// The spec it makes of `base`: the typed keys over `base` when `base` is the same
    /// optimizer, over its defaults otherwise; refused when torch refuses the combination.
    pub fn over(&self, base: &OptimizerSpec) -> Result<OptimizerSpec, SettingError> {
        if base.name() != self.name() {
            return self.over_defaults();
        }
        let mut spec = base.clone();
        for key in &self.keys {
            spec.copy_field(&self.typed, key);
        }
        spec.check_together().map_err(|c| c.error)?;
        Ok(spec)
    }
}

impl fmt::Display for SpecOverride {
    /// `name(key=value, ...)` with the keys as typed (just `name` when there are none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let typed: Vec<String> = self
            .typed
            .values()
            .into_iter()
            .filter(|(k, _)| self.keys.iter().any(|key| key == k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        match typed.is_empty() {
            true => write!(f, "{}", self.name()),
            false => write!(f, "{}({})", self.name(), typed.join(", ")),
        }
    }
}

impl FromStr for SpecOverride {
    type Err = SettingError;

    /// [`SpecOverride::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `name(args)` split into the name and the text between the parentheses (`name` alone: no
/// args), both trimmed.
pub(super) fn split_call(text: &str) -> Result<(&str, &str), SettingError> {
    let text = text.trim();
    match text.split_once('(') {
        Some((name, rest)) => match rest.trim_end().strip_suffix(')') {
            Some(args) => Ok((name.trim(), args)),
            None => Err(SettingError {
                message: format!("`{text}` is missing its closing `)`"),
                help: Some(SPEC_EXAMPLE.into()),
            }),
        },
        None => Ok((text, "")),
    }
}

/// The `key=value` arguments of a call's `args` in order, each value typed ([`typed_value`]);
/// an Err (with `example` as its help) for a part that is not `key=value`, and for a key given
/// twice (which value was meant is not for us to guess).
pub(super) fn arguments<'a>(
    args: &'a str,
    example: &'static str,
) -> impl Iterator<Item = Result<(&'a str, RawValue<'a>), SettingError>> {
    let mut seen = Vec::new();
    split_top_level(args)
        .filter(|p| !p.is_empty())
        .map(move |part| match part.split_once('=') {
            Some((key, _)) if seen.contains(&key.trim()) => Err(twice(key.trim())),
            Some((key, value)) => {
                seen.push(key.trim());
                Ok((key.trim(), typed_value(value.trim())))
            }
            None => Err(SettingError {
                message: format!("`{part}` is not `key=value`"),
                help: Some(example.into()),
            }),
        })
}

/// A key given twice in one call, a sweep's form or its `--const`s.
pub fn twice(key: &str) -> SettingError {
    SettingError {
        message: format!("`{key}` is given twice"),
        help: Some(format!("give `{key}` once (a list of values sweeps it)")),
    }
}

/// A written value: `true`/`false`, a number, or a word.
fn typed_value(value: &str) -> RawValue<'_> {
    match value {
        "true" => RawValue::Bool(true),
        "false" => RawValue::Bool(false),
        v => v.parse().map_or(RawValue::Text(v), RawValue::Number),
    }
}

/// `args` split at the commas outside parentheses and brackets (so a nested spec or a value
/// list stays one argument), each trimmed.
pub(super) fn split_top_level(args: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0i32;
    args.split(move |c| {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            _ => {}
        }
        c == ',' && depth == 0
    })
    .map(str::trim)
}

/// The most values one value list may make (a typo such as `logspace(1e-4, 1, 1e9)` would
/// otherwise ask for a billion runs).
pub const LIST_MAX: usize = 10_000;

/// How to write a value list, for the help of its errors.
const LIST_EXAMPLE: &str = "write [a, b, ...], logspace(lo, hi, n) or linspace(lo, hi, n), e.g. lr=logspace(1e-4, 1e-1, 13)";

/// The values a value list stands for, each as it would be written alone: `[a, b, ...]` as
/// written, `logspace(lo, hi, n)` (n values from lo to hi evenly in log, both ends exact) and
/// `linspace(lo, hi, n)` (evenly); None for a plain value. A sweep's `-o` and `--const` take
/// them, so one command writes a whole grid.
pub fn value_list(text: &str) -> Result<Option<Vec<String>>, SettingError> {
    let text = text.trim();
    let error = |message: String| SettingError {
        message,
        help: Some(LIST_EXAMPLE.into()),
    };
    if let Some(inner) = text.strip_prefix('[') {
        let Some(inner) = inner.strip_suffix(']') else {
            return Err(error(format!("`{text}` is missing its closing `]`")));
        };
        let items: Vec<String> = split_top_level(inner).map(str::to_string).collect();
        if items.iter().any(String::is_empty) {
            return Err(error(format!("`{text}` has an empty value")));
        }
        if items.len() > LIST_MAX {
            return Err(error(format!("`{text}` has more than {LIST_MAX} values")));
        }
        return Ok(Some(items));
    }
    let (name, args) = match text.split_once('(') {
        Some((name @ ("logspace" | "linspace"), _)) => (name, split_call(text)?.1),
        _ => return Ok(None),
    };
    let args: Vec<&str> = split_top_level(args).collect();
    let [lo, hi, n] = args[..] else {
        return Err(error(format!(
            "`{name}` takes three values (lo, hi, n), not {}",
            args.len()
        )));
    };
    let number = |what: &str, v: &str| match v.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(error(format!(
            "`{name}`'s {what} must be a finite number, not `{v}`"
        ))),
    };
    let (lo, hi) = (number("lo", lo)?, number("hi", hi)?);
    let n = match n.parse::<f64>() {
        Ok(x) if x >= 1.0 && x.fract() == 0.0 && x <= LIST_MAX as f64 => x as usize,
        _ => {
            return Err(error(format!(
                "`{name}`'s n must be a whole number from 1 to {LIST_MAX}, not `{n}`"
            )));
        }
    };
    if name == "logspace" && (lo <= 0.0 || hi <= 0.0) {
        return Err(error(format!(
            "`logspace` needs lo and hi above 0 (they are the values, not their powers of ten), not {lo} and {hi}"
        )));
    }
    // The points between the ends to six significant digits: a point is then named
    // `adam(lr=0.0316228)`, not `adam(lr=0.031622776601683794)`, and that name, typed again (the
    // TUI's `enter` on a Sweep tab point, `-o` on the command line), is the very run it stepped.
    let at = |i: usize| {
        let t = i as f64 / (n - 1) as f64;
        match (i, name) {
            (0, _) => lo,
            (i, _) if i == n - 1 => hi,
            (_, "logspace") => {
                significant(10f64.powf(lo.log10() + t * (hi.log10() - lo.log10())), 6)
            }
            _ => significant(lo + t * (hi - lo), 6),
        }
    };
    Ok(Some((0..n).map(|i| at(i).to_string()).collect()))
}

/// `x` to `digits` significant digits.
pub fn significant(x: f64, digits: usize) -> f64 {
    format!("{x:.*e}", digits.saturating_sub(1))
        .parse()
        .unwrap_or(x)
}

impl FromStr for OptimizerSpec {
    type Err = SettingError;

    /// [`OptimizerSpec::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for OptimizerSpec {
    /// `name(lr=..., key=value, ...)`: the learning rate and the hyper-parameters that differ
    /// from the defaults.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let changed: Vec<String> = self
            .values()
            .into_iter()
            .zip(self.defaults().values())
            .filter(|((k, v), (_, default))| *k == "lr" || v != default)
            .map(|((k, v), _)| format!("{k}={v}"))
            .collect();
        write!(f, "{}({})", self.name(), changed.join(", "))
    }
}

/// The error of `spec`, which must be refused for its value of `key` ("`key` must be ...").
#[cfg(test)]
pub(super) fn refused_at(spec: &str, key: &str) -> SettingError {
    let e = OptimizerSpec::parse(spec).unwrap_err();
    assert!(
        e.message.starts_with(&format!("`{key}` must be")),
        "{spec}: {e}"
    );
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_lists_give_their_values() {
        let list = |t: &str| value_list(t).unwrap().unwrap();
        assert_eq!(list("[1e-3, 0.01, true]"), ["1e-3", "0.01", "true"]);
        assert_eq!(value_list("0.01").unwrap(), None);
        assert_eq!(value_list("none").unwrap(), None);
        // linspace(0, 1, 5): 0, 1/4, 1/2, 3/4, 1, exactly.
        assert_eq!(list("linspace(0, 1, 5)"), ["0", "0.25", "0.5", "0.75", "1"]);
        assert_eq!(list("linspace(2, 3, 1)"), ["2"]);
        // logspace(1e-4, 1e-1, 13): 10^(-4 + k/4) to six significant digits, the ends exactly
        // as written, so each reads as it is typed back (1e-3 is 0.001, not 0.0010000000000000002).
        let texts = list("logspace(1e-4, 1e-1, 13)");
        let values: Vec<f64> = texts.iter().map(|v| v.parse().unwrap()).collect();
        assert_eq!(values.len(), 13);
        assert_eq!((values[0], values[12]), (1e-4, 1e-1));
        assert_eq!(
            (texts[4].as_str(), texts[2].as_str()),
            ("0.001", "0.000316228")
        );
        for (k, v) in values.iter().enumerate() {
            let expected = 10f64.powf(-4.0 + k as f64 / 4.0);
            assert!((v / expected - 1.0).abs() < 5e-6, "{k}: {v} vs {expected}");
        }
    }

    #[test]
    fn malformed_value_lists_say_what_is_wrong() {
        let cases = [
            ("logspace(1e-4, 1e-1, 0)", "n must be a whole number from 1"),
            ("linspace(0, 1, 2.5)", "n must be a whole number from 1"),
            ("logspace(0, 1e-1, 3)", "needs lo and hi above 0"),
            ("logspace(-1, 1, 3)", "needs lo and hi above 0"),
            ("linspace(0, 1)", "takes three values"),
            ("linspace(a, 1, 3)", "lo must be a finite number"),
            ("[1, , 2]", "has an empty value"),
            ("[1, 2", "missing its closing `]`"),
            ("logspace(1, 2, 3", "missing its closing `)`"),
            ("linspace(0, 1, 1e9)", "n must be a whole number from 1"),
        ];
        for (text, message) in cases {
            let e = value_list(text).unwrap_err();
            assert!(e.message.contains(message), "{text}: {e}");
        }
    }

    #[test]
    fn a_plain_spec_refuses_a_value_list() {
        let e = OptimizerSpec::parse("adam(lr=[1e-3, 1e-2])").unwrap_err();
        assert_eq!(e.message, "`lr=[1e-3, 1e-2]` is a list of values");
    }

    #[test]
    fn settings_are_checked_against_the_optimizer() {
        let adam = Some(OptimizerKind::Adam);
        assert!(check_setting(adam, "beta1", RawValue::Number(0.8)).is_ok());
        assert!(check_setting(adam, "momentum", RawValue::Number(0.8)).is_err());
        assert!(check_setting(adam, "amsgrad", RawValue::Number(1.0)).is_err());
        assert!(check_setting(adam, "steps", RawValue::Number(1.5)).is_err());
        assert!(check_setting(None, "momentum", RawValue::Number(0.9)).is_ok());
        let e = check_setting(adam, "betaa1", RawValue::Number(0.9)).unwrap_err();
        assert_eq!(e.help.as_deref(), Some("did you mean `beta1`?"));
    }

    #[test]
    fn an_override_of_the_same_optimizer_keeps_the_base_values() {
        let base = OptimizerSpec::parse("adam(lr=0.01, eps=1e-6)").unwrap();
        let over = SpecOverride::parse("adam(beta2=0.99)").unwrap();
        let spec = over.over(&base).unwrap();
        assert_eq!(spec.to_string(), "adam(lr=0.01, beta2=0.99, eps=1e-6)");
        let plain = SpecOverride::parse("adam").unwrap().over(&base).unwrap();
        assert_eq!(plain, base);
    }

    #[test]
    fn an_override_of_another_optimizer_starts_from_torch_defaults() {
        let base = OptimizerSpec::parse("adam(lr=0.01)").unwrap();
        let spec = SpecOverride::parse("sgd(momentum=0.9)")
            .unwrap()
            .over(&base)
            .unwrap();
        assert_eq!(spec.to_string(), "sgd(lr=0.001, momentum=0.9)");
    }

    #[test]
    fn an_override_is_checked_against_its_base() {
        // momentum comes from the base, so nesterov is fine there and refused from defaults.
        let over = SpecOverride::parse("sgd(nesterov=true)").unwrap();
        let base = OptimizerSpec::parse("sgd(lr=0.1, momentum=0.9)").unwrap();
        assert!(over.over(&base).is_ok());
        let e = over
            .over(&OptimizerSpec::new(OptimizerKind::Sgd))
            .unwrap_err();
        assert!(e.message.starts_with("nesterov needs momentum > 0"), "{e}");
    }

    #[test]
    fn values_torch_refuses_are_refused() {
        // torch.optim's constructors (lion-pytorch's asserts for Lion): (spec, refused key).
        let refused = [
            ("sgd(lr=-0.1)", "lr"),
            ("sgd(momentum=-0.5)", "momentum"),
            ("sgd(weight_decay=-1)", "weight_decay"),
            ("adam(beta1=1)", "beta1"),
            ("adam(beta2=-0.1)", "beta2"),
            ("adam(eps=-1e-8)", "eps"),
            ("adamw(beta1=1.5)", "beta1"),
            ("adamw(weight_decay=-0.01)", "weight_decay"),
            ("rmsprop(alpha=-0.9)", "alpha"),
            ("rmsprop(momentum=-0.1)", "momentum"),
            ("rmsprop(eps=-1)", "eps"),
            ("adagrad(lr_decay=-0.1)", "lr_decay"),
            (
                "adagrad(initial_accumulator_value=-1)",
                "initial_accumulator_value",
            ),
            ("lion(lr=-1)", "lr"),
            ("lion(beta2=1.1)", "beta2"),
        ];
        for (spec, key) in refused {
            refused_at(spec, key);
        }
        let accepted = [
            "sgd(lr=0)",
            "adam(beta1=0, beta2=0.999999)",
            "lion(lr=0, beta1=1, beta2=0)",
            "sgd(dampening=-1)",
            "rmsprop(alpha=0)",
        ];
        for spec in accepted {
            assert!(OptimizerSpec::parse(spec).is_ok(), "{spec}");
        }
    }

    #[test]
    fn nesterov_needs_momentum_and_no_dampening() {
        for spec in [
            "sgd(nesterov=true)",
            "sgd(momentum=0.9, dampening=0.1, nesterov=true)",
        ] {
            let e = OptimizerSpec::parse(spec).unwrap_err();
            assert!(
                e.message.starts_with("nesterov needs momentum > 0"),
                "{spec}: {e}"
            );
        }
        assert!(OptimizerSpec::parse("sgd(momentum=0.9, nesterov=true)").is_ok());
    }

    #[test]
    fn unknown_optimizer_suggests_the_closest() {
        let e = kind_from_name("adma").unwrap_err();
        assert_eq!(e.help.as_deref(), Some("did you mean `adam`?"));
    }

    #[test]
    fn extreme_values_print_with_exponents_and_parse_back() {
        let s = OptimizerSpec::parse("adagrad(lr=1e-300, lr_decay=1e300, eps=1e-10)").unwrap();
        assert_eq!(s.to_string(), "adagrad(lr=1e-300, lr_decay=1e300)");
        assert_eq!(OptimizerSpec::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn specs_parse_and_print_round_trip() {
        let s = OptimizerSpec::parse("sgd(lr=0.01, momentum=0.9, nesterov=true)").unwrap();
        assert_eq!(s.kind(), Some(OptimizerKind::Sgd));
        let OptimizerSpec::Sgd(sgd) = &s else {
            panic!("{s:?} is not sgd")
        };
        assert_eq!(sgd.momentum, 0.9);
        assert!(sgd.nesterov);
        assert_eq!(s.to_string(), "sgd(lr=0.01, momentum=0.9, nesterov=true)");
        assert_eq!(
            OptimizerSpec::parse("adam").unwrap().to_string(),
            "adam(lr=0.001)"
        );
        assert_eq!(OptimizerSpec::parse("adam").unwrap().lr(), 1e-3);
        assert!(OptimizerSpec::parse("adam(lr=x)").is_err());
        assert!(OptimizerSpec::parse("adam(momentum=0.9)").is_err());
        assert!(OptimizerSpec::parse("adam(lr=0.1").is_err());
    }

    #[test]
    fn a_misspelt_hyper_parameter_is_an_error_not_zero() {
        let e = "sgd(lr=0.1, momentun=0.9)"
            .parse::<OptimizerSpec>()
            .unwrap_err();
        assert_eq!(e.message, "unknown setting `momentun` for `sgd`");
        assert_eq!(e.help.as_deref(), Some("did you mean `momentum`?"));
        assert_eq!(OptimizerSpec::new(OptimizerKind::Sgd).get("momentun"), None);
        let e = "adam(lr=x)".parse::<OptimizerSpec>().unwrap_err();
        assert_eq!(e.to_string(), "`x` is not a number");
    }

    #[test]
    fn registry_defaults_are_torchs() {
        use HyperValue::{Bool as B, Number as N};
        // torch.optim's signatures (and lion-pytorch's for Lion); betas split into beta1, beta2.
        let torch: [(&str, &[(&str, HyperValue)]); 6] = [
            (
                "sgd",
                &[
                    ("lr", N(1e-3)),
                    ("momentum", N(0.0)),
                    ("dampening", N(0.0)),
                    ("nesterov", B(false)),
                    ("weight_decay", N(0.0)),
                ],
            ),
            (
                "adam",
                &[
                    ("lr", N(1e-3)),
                    ("beta1", N(0.9)),
                    ("beta2", N(0.999)),
                    ("eps", N(1e-8)),
                    ("weight_decay", N(0.0)),
                    ("amsgrad", B(false)),
                ],
            ),
            (
                "adamw",
                &[
                    ("lr", N(1e-3)),
                    ("beta1", N(0.9)),
                    ("beta2", N(0.999)),
                    ("eps", N(1e-8)),
                    ("weight_decay", N(0.01)),
                    ("amsgrad", B(false)),
                ],
            ),
            (
                "rmsprop",
                &[
                    ("lr", N(1e-2)),
                    ("alpha", N(0.99)),
                    ("eps", N(1e-8)),
                    ("weight_decay", N(0.0)),
                    ("momentum", N(0.0)),
                    ("centered", B(false)),
                ],
            ),
            (
                "adagrad",
                &[
                    ("lr", N(1e-2)),
                    ("lr_decay", N(0.0)),
                    ("weight_decay", N(0.0)),
                    ("initial_accumulator_value", N(0.0)),
                    ("eps", N(1e-10)),
                ],
            ),
            (
                "lion",
                &[
                    ("lr", N(1e-4)),
                    ("beta1", N(0.9)),
                    ("beta2", N(0.99)),
                    ("weight_decay", N(0.0)),
                ],
            ),
        ];
        let names: Vec<&str> = OptimizerKind::ALL.iter().map(|k| k.name()).collect();
        let classic: Vec<&str> = torch.iter().map(|(n, _)| *n).collect();
        assert_eq!(names[..torch.len()], classic);
        for (name, defaults) in &torch {
            let spec = OptimizerSpec::parse(name).unwrap();
            assert_eq!(spec.values(), defaults.to_vec(), "{name}");
            let documented: Vec<&str> = OptimizerKind::from_name(name)
                .unwrap()
                .hyper_parameters()
                .iter()
                .map(|h| h.name)
                .collect();
            let declared: Vec<&str> = defaults.iter().map(|(k, _)| *k).collect();
            assert_eq!(documented, declared, "{name}");
        }
    }
}
