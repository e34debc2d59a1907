//! The run settings an `[optimizer]` table may hold besides the optimizer's hyper-parameters,
//! typed once when a file is compiled: steps, clipping, schedule, non-finite policy, gradient
//! source and loss scaling. Each word a setting takes is spelled once, in its enum here.

use std::sync::Arc;

use super::custom::UpdateProgram;
use super::schedule::{LrSchedule, Schedule};
use super::spec::{OptimizerKind, OptimizerSpec, RawValue, SettingError};
use super::tricks::{ChainSpec, TrickSpec};

words! {
    /// What to do when the loss or a gradient is NaN or Inf.
    NonFinitePolicy {
        /// Halt at that step and say why.
        Stop = "stop",
        /// Skip the update and count it, as torch's GradScaler does.
        Skip = "skip",
        /// Update anyway.
        Continue = "continue",
    }
}

words! {
    /// Autograd, or central finite differences (to see what numerical differentiation costs).
    GradSource {
        /// candle's reverse-mode autodiff.
        Autograd = "autograd",
        /// Central finite differences in f64.
        FiniteDifference = "fd",
    }
}

words! {
    /// Which learning-rate schedule a `schedule` setting names (its numbers are other settings).
    ScheduleKind {
        /// No schedule.
        Constant = "constant",
        /// StepLR: `step_size`, `gamma` (or `lr_gamma`).
        Step = "step",
        /// ExponentialLR: `gamma` (or `lr_gamma`).
        Exponential = "exponential",
        /// CosineAnnealingLR over `steps`, down to `min_lr`.
        Cosine = "cosine",
    }
}

/// The word for dynamic loss scaling.
const DYNAMIC: &str = "dynamic";

/// Loss scaling for low-precision runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossScale {
    Off,
    Fixed(f64),
    /// torch's GradScaler: start at 2^16, halve and skip the step on a non-finite gradient,
    /// double after 2,000 clean steps.
    Dynamic,
}

/// What kind of value a run setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    /// A whole number from `min` on.
    Count {
        min: u64,
    },
    Number,
    Choice(&'static [&'static str]),
    /// A power of two, or `dynamic` (GradScaler's rule).
    Scale,
    /// A chain of tricks, `agc(clipping=0.05) + ema` (a file's list, joined).
    Tricks,
}

/// Run settings an `[optimizer]` table may hold besides the optimizer's own hyper-parameters.
pub const RUN_SETTINGS: &[(&str, SettingKind)] = &[
    ("steps", SettingKind::Count { min: 1 }),
    ("clip_norm", SettingKind::Number),
    ("clip_value", SettingKind::Number),
    ("on_nonfinite", SettingKind::Choice(NonFinitePolicy::NAMES)),
    ("schedule", SettingKind::Choice(ScheduleKind::NAMES)),
    ("warmup", SettingKind::Count { min: 0 }),
    ("step_size", SettingKind::Count { min: 1 }),
    ("gamma", SettingKind::Number),
    ("lr_gamma", SettingKind::Number),
    ("min_lr", SettingKind::Number),
    ("grad", SettingKind::Choice(GradSource::NAMES)),
    ("loss_scale", SettingKind::Scale),
    ("accumulate", SettingKind::Choice(&["f32", "f64"])),
    ("tricks", SettingKind::Tricks),
];

/// Whether `key` is a run setting.
pub fn is_run_setting(key: &str) -> bool {
    RUN_SETTINGS.iter().any(|(n, _)| *n == key)
}

/// Checks `key = value` if `key` is a run setting (None: it is not one).
pub fn check_run_setting(key: &str, value: RawValue) -> Option<Result<(), SettingError>> {
    let &(_, kind) = RUN_SETTINGS.iter().find(|(n, _)| *n == key)?;
    Some(match (kind, value) {
        (SettingKind::Count { min }, RawValue::Number(n))
            if n >= min as f64 && n.fract() == 0.0 =>
        {
            Ok(())
        }
        (SettingKind::Count { min }, _) => Err(SettingError {
            message: format!("`{key}` must be a whole number, {min} or more"),
            help: unquoted_help(key, value)
                .or_else(|| Some(format!("e.g. `{key} = {}`", min.max(1) * 100))),
        }),
        (SettingKind::Number, RawValue::Number(n)) if n.is_finite() && n >= 0.0 => Ok(()),
        (SettingKind::Number, _) => Err(SettingError {
            message: format!("`{key}` must be a non-negative number"),
            help: unquoted_help(key, value),
        }),
        (SettingKind::Choice(options), RawValue::Text(t)) if options.contains(&t) => Ok(()),
        (SettingKind::Choice(options), _) => Err(SettingError {
            message: format!("`{key}` must be one of {}", options.join(", ")),
            help: match value {
                RawValue::Text(t) => crate::diagnostic::did_you_mean(t, options.iter().copied()),
                _ => None,
            },
        }),
        (SettingKind::Scale, RawValue::Text(DYNAMIC)) => Ok(()),
        (SettingKind::Scale, RawValue::Number(n)) if n > 0.0 && n.log2().fract() == 0.0 => Ok(()),
        (SettingKind::Scale, _) => Err(SettingError {
            message: format!("`{key}` must be a power of two or \"{DYNAMIC}\""),
            help: Some(format!(
                "e.g. loss_scale = \"{DYNAMIC}\" (start at 2^16, as torch's GradScaler) or 1024"
            )),
        }),
        (SettingKind::Tricks, RawValue::Text(t)) => TrickSpec::parse_list(t).map(|_| ()),
        (SettingKind::Tricks, _) => Err(SettingError {
            message: format!("`{key}` must be a list of tricks"),
            help: Some("e.g. tricks = [\"agc(clipping=0.05)\", \"ema(decay=0.99)\"]".into()),
        }),
    })
}

/// [`RawValue::quoted_number_help`] for run setting `key`.
fn unquoted_help(key: &str, value: RawValue) -> Option<String> {
    value.quoted_number_help(key, |n| matches!(check_run_setting(key, n), Some(Ok(()))))
}

/// Default number of steps when neither the file nor the command line gives one.
pub const DEFAULT_STEPS: u64 = 100;

/// Everything that defines how a run steps: a run definition's `[optimizer]` table, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    pub optimizer: OptimizerSpec,
    pub steps: u64,
    pub clip_norm: Option<f64>,
    pub clip_value: Option<f64>,
    pub schedule: LrSchedule,
    pub on_nonfinite: NonFinitePolicy,
    /// Where gradients come from.
    pub grad: GradSource,
    pub loss_scale: LossScale,
    /// Stabilization tricks around the optimizer, in the order they were written (after the
    /// `clip_norm`, `clip_value` and `loss_scale` keys, which act first).
    pub tricks: Vec<TrickSpec>,
}

impl RunSettings {
    /// Sets how many steps the run takes; a cosine schedule, which anneals over the run's
    /// steps, follows (`--steps 30` on a file with `steps = 20` anneals over 30).
    pub fn set_steps(&mut self, n: u64) {
        self.steps = n;
        if let Schedule::Cosine { total, .. } = &mut self.schedule.schedule {
            *total = n;
        }
    }

    /// The settings an `[optimizer]` table's checked `key = value` pairs describe (adam with
    /// torch's defaults when there are none). Keys of another optimizer (from a file-level table
    /// under a variant's new `name`) are not hyper-parameters of this one and are left out.
    pub fn from_table<'a>(table: &[(&'a str, RawValue<'a>)]) -> Self {
        Self::from_table_with(table, &[])
    }

    /// [`RunSettings::from_table`] where the table may name one of `own`, the loss file's own
    /// optimizers.
    pub fn from_table_with<'a>(
        table: &[(&'a str, RawValue<'a>)],
        own: &[Arc<dyn UpdateProgram>],
    ) -> Self {
        let get = |key: &str| table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let num = |key: &str| match get(key) {
            Some(RawValue::Number(n)) => Some(n),
            _ => None,
        };
        let text = |key: &str| match get(key) {
            Some(RawValue::Text(t)) => Some(t),
            _ => None,
        };
        let mut optimizer = text("name")
            .and_then(|name| OptimizerSpec::named(name, own).ok())
            .unwrap_or_else(|| OptimizerSpec::new(OptimizerKind::Adam));
        for &(key, value) in table {
            if optimizer.get(key).is_some() {
                let _ = optimizer.set(key, value);
            }
        }
        let steps = num("steps").map_or(DEFAULT_STEPS, |n| n as u64);
        // An optimizer's own `gamma` (Sophia's) is not the schedule's.
        let gamma = num("lr_gamma").or(num("gamma").filter(|_| optimizer.get("gamma").is_none()));
        let schedule = match text("schedule").and_then(ScheduleKind::from_name) {
            Some(ScheduleKind::Step) => Schedule::Step {
                step_size: num("step_size").unwrap_or(100.0) as u64,
                gamma: gamma.unwrap_or(0.1),
            },
            Some(ScheduleKind::Exponential) => Schedule::Exponential {
                gamma: gamma.unwrap_or(0.99),
            },
            Some(ScheduleKind::Cosine) => Schedule::Cosine {
                total: steps,
                min_lr: num("min_lr").unwrap_or(0.0),
            },
            Some(ScheduleKind::Constant) | None => Schedule::Constant,
        };
        Self {
            optimizer,
            steps,
            clip_norm: num("clip_norm"),
            clip_value: num("clip_value"),
            schedule: LrSchedule {
                schedule,
                warmup: num("warmup").unwrap_or(0.0) as u64,
            },
            on_nonfinite: text("on_nonfinite")
                .and_then(NonFinitePolicy::from_name)
                .unwrap_or(NonFinitePolicy::Stop),
            grad: text("grad")
                .and_then(GradSource::from_name)
                .unwrap_or(GradSource::Autograd),
            loss_scale: match (text("loss_scale"), num("loss_scale")) {
                (Some(DYNAMIC), _) => LossScale::Dynamic,
                (_, Some(n)) => LossScale::Fixed(n),
                _ => LossScale::Off,
            },
            tricks: text("tricks")
                .and_then(|t| TrickSpec::parse_list(t).ok())
                .unwrap_or_default(),
        }
    }

    /// The optimizer with its tricks, as specs write it.
    pub fn chain(&self) -> ChainSpec {
        ChainSpec {
            base: self.optimizer.clone(),
            tricks: self.tricks.clone(),
        }
    }

    /// The loss scaling a run uses: a `loss_scale` trick's, else the `loss_scale` key's.
    pub fn loss_scaling(&self) -> LossScale {
        self.tricks
            .iter()
            .find_map(|t| match t {
                TrickSpec::LossScaling(s) => Some(s.scale),
                _ => None,
            })
            .unwrap_or(self.loss_scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cosine schedule anneals over the run's steps: `--steps` moves its end with them.
    #[test]
    fn set_steps_moves_a_cosine_schedules_end() {
        let table = [
            ("schedule", RawValue::Text("cosine")),
            ("steps", RawValue::Number(20.0)),
        ];
        let mut s = RunSettings::from_table(&table);
        assert_eq!(s.schedule.lr(1.0, 20), 0.0);
        s.set_steps(30);
        assert_eq!(s.steps, 30);
        assert!((s.schedule.lr(1.0, 15) - 0.5).abs() < 1e-15);
        assert_eq!(s.schedule.lr(1.0, 30), 0.0);
        let mut constant = RunSettings::from_table(&[("steps", RawValue::Number(20.0))]);
        constant.set_steps(30);
        assert_eq!(constant.schedule, LrSchedule::constant());
    }
}
