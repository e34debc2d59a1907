//! Optimizers a loss file writes itself (`[optimizers.NAME]`), as the optimizer layer sees them:
//! a [`Signature`] that specs and `[optimizer]` tables are checked against, and an
//! [`UpdateProgram`] that makes each param's state and updates it. How an update is written and
//! compiled is the language's and the compiler's business; here it is a trait object.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::schedule::global_norm;
use super::spec::{Hyper, HyperValue, RawValue};
use super::step::{Rule, StepCx};

/// What specs and settings see of an optimizer a loss file defines.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    pub name: String,
    /// One line on what it is (the table's `about`).
    pub about: String,
    /// Hyper-parameters with their defaults, in the order written; `lr` is one of them.
    pub hyper: Vec<(String, f64)>,
}

/// What one update may read besides the param's own tensors and the hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Globals {
    /// This step's learning rate, after the schedule.
    pub lr: f64,
    /// The 1-based update count.
    pub t: u64,
    /// The global norm of the gradients the optimizer is given (after clipping).
    pub gnorm: f64,
    /// The loss where the gradients were taken.
    pub step_loss: f64,
}

impl Globals {
    /// The values of update `t` with learning rate `lr`, from `grads` (after clipping) and the
    /// `loss` where they were taken.
    pub fn new(lr: f64, t: u64, grads: &[Tensor], loss: f64) -> Result<Self> {
        Ok(Self {
            lr,
            t,
            gnorm: global_norm(grads)?,
            step_loss: loss,
        })
    }
}

/// An optimizer a loss file defines, compiled: it makes every param's state and updates one
/// param at a time. The compiler implements it over the file's update program.
pub trait UpdateProgram: Any + Send + Sync + fmt::Debug {
    /// Its name, doc and hyper-parameters.
    fn signature(&self) -> &Signature;

    /// Each param's state before the first update, one tensor per declared state, in the
    /// declared order; `hyper` holds the hyper-parameters' values in signature order.
    fn init(&self, hyper: &[f64], params: &[Tensor]) -> Result<Vec<Vec<Tensor>>>;

    /// The new value of `param`, whose state `state` is replaced by the updated one.
    fn update(
        &self,
        hyper: &[f64],
        state: &mut [Tensor],
        param: &Tensor,
        grad: &Tensor,
        globals: &Globals,
    ) -> Result<Tensor>;
}

/// A file's own optimizer with a value for each of its hyper-parameters.
#[derive(Clone)]
pub struct Custom {
    program: Arc<dyn UpdateProgram>,
    values: Vec<f64>,
}

impl Custom {
    /// `program` with the defaults its definition gives.
    pub fn new(program: Arc<dyn UpdateProgram>) -> Self {
        let values = program.signature().hyper.iter().map(|(_, v)| *v).collect();
        Self { program, values }
    }

    /// The compiled definition it steps with.
    pub fn program(&self) -> &Arc<dyn UpdateProgram> {
        &self.program
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.program.signature().name
    }

    /// The hyper-parameters' values, in signature order.
    pub fn hyper(&self) -> &[f64] {
        &self.values
    }

    /// Every hyper-parameter with its value, in the order written.
    pub fn values(&self) -> Vec<(&str, HyperValue)> {
        let names = self
            .program
            .signature()
            .hyper
            .iter()
            .map(|(n, _)| n.as_str());
        names
            .zip(&self.values)
            .map(|(n, v)| (n, HyperValue::Number(*v)))
            .collect()
    }

    /// Hyper-parameter `key`'s value (None: it has none of that name).
    pub fn get(&self, key: &str) -> Option<f64> {
        let at = self.index(key)?;
        Some(self.values[at])
    }

    /// None when `key` is not one of its hyper-parameters; Err: why the value is refused.
    pub(super) fn set(
        &mut self,
        key: &str,
        raw: RawValue,
    ) -> Option<std::result::Result<(), String>> {
        let at = self.index(key)?;
        Some(f64::from_raw(raw).map(|v| self.values[at] = v))
    }

    fn index(&self, key: &str) -> Option<usize> {
        let hyper = &self.program.signature().hyper;
        hyper.iter().position(|(n, _)| n == key)
    }
}

impl fmt::Debug for Custom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Custom")
            .field("name", &self.name())
            .field("values", &self.values)
            .finish()
    }
}

/// The same definition (not merely the same name: a reloaded file compiles a new one) with the
/// same values.
impl PartialEq for Custom {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.program, &other.program) && self.values == other.values
    }
}

impl Rule for Custom {
    /// Each param's state tensors, in the definition's order.
    type State = Vec<Vec<Tensor>>;

    fn init(&self, params: &[Tensor]) -> Result<Self::State> {
        self.program.init(&self.values, params)
    }

    fn step(&self, state: &mut Self::State, cx: &mut StepCx) -> Result<Vec<Tensor>> {
        let globals = Globals::new(cx.lr, cx.t, cx.grads, cx.loss)?;
        let mut out = Vec::with_capacity(cx.params.len());
        for ((p, g), s) in cx.params.iter().zip(cx.grads).zip(state.iter_mut()) {
            out.push(self.program.update(&self.values, s, p, g, &globals)?);
        }
        Ok(out)
    }
}
