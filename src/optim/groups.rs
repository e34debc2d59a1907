//! Per-param settings (torch's param groups): `[optimizer.params.b] weight_decay = 0` gives `b`
//! its own hyper-parameters, `lr_scale = 0.1` its own learning-rate multiplier. Params whose
//! settings come out the same step together as one group, with its own spec and state, as torch
//! steps each param group with its own hyper-parameters.

use std::fmt;

use super::settings::is_run_setting;
use super::spec::{OptimizerKind, OptimizerSpec, RawValue, SettingError};

/// The key of a param's learning-rate multiplier.
pub const LR_SCALE: &str = "lr_scale";

/// A setting's value as written, kept past the text it was read from.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Number(f64),
    Bool(bool),
    Text(String),
}

impl Written {
    /// The value as written.
    pub fn of(raw: RawValue) -> Self {
        match raw {
            RawValue::Number(n) => Written::Number(n),
            RawValue::Bool(b) => Written::Bool(b),
            RawValue::Text(t) => Written::Text(t.to_string()),
        }
    }

    /// The value as the registry reads it.
    pub fn raw(&self) -> RawValue<'_> {
        match self {
            Written::Number(n) => RawValue::Number(*n),
            Written::Bool(b) => RawValue::Bool(*b),
            Written::Text(t) => RawValue::Text(t),
        }
    }
}

/// One param's own settings: hyper-parameters of the run's optimizer and a multiplier of its
/// learning rate.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSettings {
    /// The param's name in `[params]`.
    pub param: String,
    /// Hyper-parameters as written, in order. Keys the run's optimizer does not have (after a
    /// variant or `-o` changed it) are left out, as in `[optimizer]`.
    pub hyper: Vec<(String, Written)>,
    /// Multiplies the param's learning rate at every step, after the schedule.
    pub lr_scale: f64,
}

impl ParamSettings {
    /// The settings a checked table of `key = value` pairs gives `param`.
    pub fn from_table(param: &str, table: &[(&str, RawValue)]) -> Self {
        let mut out = Self {
            param: param.to_string(),
            hyper: Vec::new(),
            lr_scale: 1.0,
        };
        for &(key, value) in table {
            match (key, value) {
                (LR_SCALE, RawValue::Number(n)) => out.lr_scale = n,
                _ => out.hyper.push((key.to_string(), Written::of(value))),
            }
        }
        out
    }

    /// `base` with these settings laid over it, and the lr multiplier.
    fn over(&self, base: &OptimizerSpec) -> Result<(OptimizerSpec, f64), GroupError> {
        let refused = |key: &str, error| GroupError {
            param: self.param.clone(),
            key: Some(key.to_string()),
            error,
        };
        let mut spec = base.clone();
        for (key, value) in &self.hyper {
            if let Some(e) = run_wide(key) {
                return Err(refused(key, e));
            }
            if spec.get(key).is_some() {
                spec.set(key, value.raw()).map_err(|e| refused(key, e))?;
            }
        }
        spec.check_together().map_err(|c| refused(c.key, c.error))?;
        Ok((spec, self.lr_scale))
    }
}

/// Params stepped together with one spec: a torch param group.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// The run's optimizer with the group's own hyper-parameters.
    pub spec: OptimizerSpec,
    /// Multiplies the learning rate of each step.
    pub lr_scale: f64,
    /// Indices into the run's params, ascending.
    pub params: Vec<usize>,
}

impl ParamGroup {
    /// Every one of `n` params with `spec`: the run without per-param settings.
    pub fn all(spec: &OptimizerSpec, n: usize) -> Self {
        Self {
            spec: spec.clone(),
            lr_scale: 1.0,
            params: (0..n).collect(),
        }
    }
}

/// Why per-param settings make no groups: the param and key to point at, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupError {
    pub param: String,
    /// The key that is refused (None: the param itself).
    pub key: Option<String>,
    pub error: SettingError,
}

impl fmt::Display for GroupError {
    /// `[optimizer.params.b]: ...`, as the command line shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[optimizer.params.{}]: {}", self.param, self.error)
    }
}

impl std::error::Error for GroupError {}

/// The param groups of params `names` under `spec` with `per_param` settings (at most one
/// entry a param): params whose settings give the same spec and lr multiplier form one group,
/// in the order of their first param.
pub fn param_groups(
    spec: &OptimizerSpec,
    per_param: &[ParamSettings],
    names: &[String],
) -> Result<Vec<ParamGroup>, GroupError> {
    if let Some(s) = per_param.iter().find(|s| !names.contains(&s.param)) {
        return Err(GroupError {
            param: s.param.clone(),
            key: None,
            error: unknown_param(&s.param, names.iter().map(String::as_str)),
        });
    }
    let mut groups: Vec<ParamGroup> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (own, lr_scale) = match per_param.iter().find(|s| s.param == *name) {
            Some(s) => s.over(spec)?,
            None => (spec.clone(), 1.0),
        };
        match groups
            .iter_mut()
            .find(|g| g.spec == own && g.lr_scale == lr_scale)
        {
            Some(g) => g.params.push(i),
            None => groups.push(ParamGroup {
                spec: own,
                lr_scale,
                params: vec![i],
            }),
        }
    }
    if groups.len() > 1 && !spec.kind().is_none_or(OptimizerKind::takes_param_groups) {
        // A param whose settings split it off (every param without settings has `spec`).
        let split = per_param
            .iter()
            .find(|s| s.over(spec).is_ok_and(|own| own != (spec.clone(), 1.0)));
        return Err(GroupError {
            param: split.map_or_else(|| names[groups[1].params[0]].clone(), |s| s.param.clone()),
            key: None,
            error: SettingError {
                message: format!(
                    "`{}` steps every param as one group: it takes no per-param settings",
                    spec.name()
                ),
                help: Some(
                    "as torch's: remove the [optimizer.params.*] tables or pick another optimizer"
                        .into(),
                ),
            },
        });
    }
    Ok(groups)
}

/// Checks one `key = value` of a param's table for optimizer `kind` (None: not known, a key
/// of any optimizer is accepted): a hyper-parameter it has, with a value torch accepts, or
/// `lr_scale`.
pub fn check_param_setting(
    kind: Option<OptimizerKind>,
    key: &str,
    value: RawValue,
) -> Result<(), SettingError> {
    match key {
        LR_SCALE => {
            return match value {
                RawValue::Number(n) if n.is_finite() && n >= 0.0 => Ok(()),
                _ => Err(SettingError {
                    message: format!("`{LR_SCALE}` must be a non-negative number"),
                    help: Some("e.g. lr_scale = 0.1 steps this param at a tenth of the lr".into()),
                }),
            };
        }
        "name" => {
            return Err(SettingError {
                message: "a param cannot have its own optimizer".into(),
                help: Some("set `name` in [optimizer]; a param may change its hyper-parameters and lr_scale".into()),
            });
        }
        _ => {}
    }
    if let Some(e) = run_wide(key) {
        return Err(e);
    }
    if is_run_setting(key) && !is_hyper(kind, key) {
        return Err(SettingError {
            message: format!("`{key}` is a run setting: it is the same for every param"),
            help: Some("set it in [optimizer]".into()),
        });
    }
    if !is_hyper(kind, key) {
        let valid = candidates(&kind)
            .iter()
            .flat_map(|k| k.hyper_parameters().iter().map(|h| h.name))
            .filter(|n| *n != "lr")
            .chain([LR_SCALE]);
        let what = kind.map_or("an optimizer".to_string(), |k| format!("`{}`", k.name()));
        let mut listed: Vec<&str> = valid.clone().collect();
        listed.sort_unstable();
        listed.dedup();
        return Err(SettingError {
            message: format!("unknown per-param setting `{key}` for {what}"),
            help: Some(
                crate::diagnostic::did_you_mean(key, valid)
                    .unwrap_or_else(|| format!("a param may set {}", listed.join(", "))),
            ),
        });
    }
    super::spec::check_setting(kind, key, value)
}

/// `kind`, or every optimizer for None.
fn candidates(kind: &Option<OptimizerKind>) -> &[OptimizerKind] {
    kind.as_ref()
        .map_or(OptimizerKind::ALL, std::slice::from_ref)
}

/// Whether `key` is a hyper-parameter of `kind` (of any optimizer for None).
fn is_hyper(kind: Option<OptimizerKind>, key: &str) -> bool {
    candidates(&kind)
        .iter()
        .any(|k| k.hyper_parameters().iter().any(|h| h.name == key))
}

/// Why a hyper-parameter is not a per-param setting: `lr` (a param scales it), and Adagrad's
/// `initial_accumulator_value`, which torch.optim reads from the optimizer for every param and
/// ignores in a param group (a per-param value would step differently from torch).
fn run_wide(key: &str) -> Option<SettingError> {
    match key {
        "lr" => Some(lr_refused()),
        "initial_accumulator_value" => Some(SettingError {
            message: "`initial_accumulator_value` is the run's: torch.optim's Adagrad starts every param's accumulator from the optimizer's value and ignores a param group's".into(),
            help: Some("set it in [optimizer]".into()),
        }),
        _ => None,
    }
}

/// Why `lr` is not a per-param setting.
fn lr_refused() -> SettingError {
    SettingError {
        message: "a param's lr is set with `lr_scale`, a multiplier of the run's lr".into(),
        help: Some(
            "e.g. lr_scale = 0.1: the param follows the run's lr, schedule and `-o` included, at a tenth"
                .into(),
        ),
    }
}

/// `param` is none of `names`.
pub fn unknown_param<'a>(
    param: &str,
    names: impl Iterator<Item = &'a str> + Clone,
) -> SettingError {
    let listed: Vec<&str> = names.clone().collect();
    SettingError {
        message: format!("unknown param `{param}`"),
        help: Some(
            crate::diagnostic::did_you_mean(param, names)
                .unwrap_or_else(|| format!("the params are {}", listed.join(", "))),
        ),
    }
}
