//! Optimizer specifications: names, hyper-parameters and torch.optim's defaults, and the run
//! settings an `[optimizer]` table may also hold. Pure data, so the loss-file checker and the
//! command line validate against the same table.

/// The optimizers gradscope implements, with torch.optim's update rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptimizerKind {
    Sgd,
    Adam,
    AdamW,
    RmsProp,
    Adagrad,
    Lion,
}

/// A hyper-parameter's default value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HyperDefault {
    Number(f64),
    Bool(bool),
}

impl OptimizerKind {
    pub const ALL: [OptimizerKind; 6] = [
        OptimizerKind::Sgd,
        OptimizerKind::Adam,
        OptimizerKind::AdamW,
        OptimizerKind::RmsProp,
        OptimizerKind::Adagrad,
        OptimizerKind::Lion,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::RmsProp => "rmsprop",
            OptimizerKind::Adagrad => "adagrad",
            OptimizerKind::Lion => "lion",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Hyper-parameters in torch.optim's order, with its defaults.
    pub fn hyper_parameters(self) -> &'static [(&'static str, HyperDefault)] {
        use HyperDefault::{Bool as B, Number as N};
        match self {
            OptimizerKind::Sgd => &[
                ("lr", N(1e-3)),
                ("momentum", N(0.0)),
                ("dampening", N(0.0)),
                ("nesterov", B(false)),
                ("weight_decay", N(0.0)),
            ],
            OptimizerKind::Adam => &[
                ("lr", N(1e-3)),
                ("beta1", N(0.9)),
                ("beta2", N(0.999)),
                ("eps", N(1e-8)),
                ("weight_decay", N(0.0)),
                ("amsgrad", B(false)),
            ],
            OptimizerKind::AdamW => &[
                ("lr", N(1e-3)),
                ("beta1", N(0.9)),
                ("beta2", N(0.999)),
                ("eps", N(1e-8)),
                ("weight_decay", N(0.01)),
                ("amsgrad", B(false)),
            ],
            OptimizerKind::RmsProp => &[
                ("lr", N(1e-2)),
                ("alpha", N(0.99)),
                ("eps", N(1e-8)),
                ("weight_decay", N(0.0)),
                ("momentum", N(0.0)),
                ("centered", B(false)),
            ],
            OptimizerKind::Adagrad => &[
                ("lr", N(1e-2)),
                ("lr_decay", N(0.0)),
                ("weight_decay", N(0.0)),
                ("initial_accumulator_value", N(0.0)),
                ("eps", N(1e-10)),
            ],
            OptimizerKind::Lion => &[
                ("lr", N(1e-4)),
                ("beta1", N(0.9)),
                ("beta2", N(0.99)),
                ("weight_decay", N(0.0)),
            ],
        }
    }
}

/// What kind of value a run setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    Count,
    Number,
    Choice(&'static [&'static str]),
    /// A power of two, or `dynamic` (GradScaler's rule).
    Scale,
}

/// Run settings an `[optimizer]` table may hold besides the optimizer's own hyper-parameters.
pub const RUN_SETTINGS: &[(&str, SettingKind)] = &[
    ("steps", SettingKind::Count),
    ("clip_norm", SettingKind::Number),
    ("clip_value", SettingKind::Number),
    (
        "on_nonfinite",
        SettingKind::Choice(&["stop", "skip", "continue"]),
    ),
    (
        "schedule",
        SettingKind::Choice(&["constant", "step", "exponential", "cosine"]),
    ),
    ("warmup", SettingKind::Count),
    ("step_size", SettingKind::Count),
    ("gamma", SettingKind::Number),
    ("min_lr", SettingKind::Number),
    ("grad", SettingKind::Choice(&["autograd", "fd"])),
    ("loss_scale", SettingKind::Scale),
    ("accumulate", SettingKind::Choice(&["f32", "f64"])),
];

/// Why a setting is not acceptable, with the help to show.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingError {
    pub message: String,
    pub help: Option<String>,
}

/// A setting's value as written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawValue<'a> {
    Number(f64),
    Bool(bool),
    Text(&'a str),
}

/// Checks one `key = value` for optimizer `kind` (None: not yet known, only run settings and
/// keys of some optimizer are accepted).
pub fn check_setting(
    kind: Option<OptimizerKind>,
    key: &str,
    value: RawValue,
) -> Result<(), SettingError> {
    if let Some(&(_, k)) = RUN_SETTINGS.iter().find(|(n, _)| *n == key) {
        return match (k, value) {
            (SettingKind::Count, RawValue::Number(n)) if n >= 0.0 && n.fract() == 0.0 => Ok(()),
            (SettingKind::Count, _) => Err(SettingError {
                message: format!("`{key}` must be a whole number"),
                help: None,
            }),
            (SettingKind::Number, RawValue::Number(n)) if n.is_finite() && n >= 0.0 => Ok(()),
            (SettingKind::Number, _) => Err(SettingError {
                message: format!("`{key}` must be a non-negative number"),
                help: None,
            }),
            (SettingKind::Choice(options), RawValue::Text(t)) if options.contains(&t) => Ok(()),
            (SettingKind::Choice(options), _) => Err(SettingError {
                message: format!("`{key}` must be one of {}", options.join(", ")),
                help: None,
            }),
            (SettingKind::Scale, RawValue::Text("dynamic")) => Ok(()),
            (SettingKind::Scale, RawValue::Number(n)) if n > 0.0 && n.log2().fract() == 0.0 => {
                Ok(())
            }
            (SettingKind::Scale, _) => Err(SettingError {
                message: format!("`{key}` must be a power of two or \"dynamic\""),
                help: Some(
                    "e.g. loss_scale = \"dynamic\" (start at 2^16, as torch's GradScaler) or 1024"
                        .into(),
                ),
            }),
        };
    }
    let kinds: Vec<OptimizerKind> = match kind {
        Some(k) => vec![k],
        None => OptimizerKind::ALL.to_vec(),
    };
    let found = kinds
        .iter()
        .find_map(|k| k.hyper_parameters().iter().find(|(n, _)| *n == key));
    let Some((_, default)) = found else {
        let valid: Vec<&str> = kinds
            .iter()
            .flat_map(|k| k.hyper_parameters().iter().map(|(n, _)| *n))
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
    match (default, value) {
        (HyperDefault::Number(_), RawValue::Number(n)) if n.is_finite() => Ok(()),
        (HyperDefault::Bool(_), RawValue::Bool(_)) => Ok(()),
        (HyperDefault::Number(_), _) => Err(SettingError {
            message: format!("`{key}` must be a number"),
            help: None,
        }),
        (HyperDefault::Bool(_), _) => Err(SettingError {
            message: format!("`{key}` must be true or false"),
            help: None,
        }),
    }
}

/// Resolves an optimizer name, with "did you mean" help otherwise.
pub fn kind_from_name(name: &str) -> Result<OptimizerKind, SettingError> {
    OptimizerKind::from_name(name).ok_or_else(|| SettingError {
        message: format!("unknown optimizer `{name}`"),
        help: Some(
            crate::diagnostic::did_you_mean(name, OptimizerKind::ALL.iter().map(|k| k.name()))
                .unwrap_or_else(|| {
                    let names: Vec<&str> = OptimizerKind::ALL.iter().map(|k| k.name()).collect();
                    format!("valid optimizers: {}", names.join(", "))
                }),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn unknown_optimizer_suggests_the_closest() {
        let e = kind_from_name("adma").unwrap_err();
        assert_eq!(e.help.as_deref(), Some("did you mean `adam`?"));
    }
}

/// A resolved optimizer: its kind and every hyper-parameter (defaults filled in).
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerSpec {
    pub kind: OptimizerKind,
    values: Vec<(&'static str, HyperDefault)>,
}

impl OptimizerSpec {
    /// The optimizer with torch.optim's defaults.
    pub fn new(kind: OptimizerKind) -> Self {
        Self {
            kind,
            values: kind.hyper_parameters().to_vec(),
        }
    }

    /// Sets one hyper-parameter, checked against the table.
    pub fn set(&mut self, key: &str, value: RawValue) -> Result<(), SettingError> {
        check_setting(Some(self.kind), key, value)?;
        let slot = self.values.iter_mut().find(|(k, _)| *k == key);
        match (slot, value) {
            (Some((_, v)), RawValue::Number(n)) => *v = HyperDefault::Number(n),
            (Some((_, v)), RawValue::Bool(b)) => *v = HyperDefault::Bool(b),
            _ => {
                return Err(SettingError {
                    message: format!(
                        "`{key}` is a run setting, not a hyper-parameter of `{}`",
                        self.kind.name()
                    ),
                    help: Some("pass it as its own option, e.g. --steps or --clip-norm".into()),
                });
            }
        }
        Ok(())
    }

    /// A number-valued hyper-parameter (0 for unknown names).
    pub fn num(&self, key: &str) -> f64 {
        match self.values.iter().find(|(k, _)| *k == key) {
            Some((_, HyperDefault::Number(n))) => *n,
            _ => 0.0,
        }
    }

    /// A boolean hyper-parameter (false for unknown names).
    pub fn flag(&self, key: &str) -> bool {
        matches!(
            self.values.iter().find(|(k, _)| *k == key),
            Some((_, HyperDefault::Bool(true)))
        )
    }

    pub fn lr(&self) -> f64 {
        self.num("lr")
    }

    /// Every hyper-parameter with its value, in torch.optim's order.
    pub fn values(&self) -> &[(&'static str, HyperDefault)] {
        &self.values
    }

    /// Parses `name` or `name(key=value, ...)`.
    pub fn parse(text: &str) -> Result<Self, SettingError> {
        let text = text.trim();
        let (name, args) = match text.split_once('(') {
            Some((name, rest)) => {
                let Some(args) = rest.trim_end().strip_suffix(')') else {
                    return Err(SettingError {
                        message: format!("`{text}` is missing its closing `)`"),
                        help: Some("write e.g. sgd(lr=0.01, momentum=0.9)".into()),
                    });
                };
                (name.trim(), args)
            }
            None => (text, ""),
        };
        let mut spec = Self::new(kind_from_name(name)?);
        for part in args.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(SettingError {
                    message: format!("`{part}` is not `key=value`"),
                    help: Some("write e.g. sgd(lr=0.01, momentum=0.9)".into()),
                });
            };
            let value = value.trim();
            let raw = match value {
                "true" => RawValue::Bool(true),
                "false" => RawValue::Bool(false),
                v => RawValue::Number(v.parse().map_err(|_| SettingError {
                    message: format!("`{v}` is not a number"),
                    help: None,
                })?),
            };
            spec.set(key.trim(), raw)?;
        }
        Ok(spec)
    }
}

impl std::fmt::Display for OptimizerSpec {
    /// `name(lr=..., key=value, ...)`: the learning rate and the hyper-parameters that differ
    /// from the defaults.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let changed: Vec<String> = self
            .values
            .iter()
            .zip(self.kind.hyper_parameters())
            .filter(|(a, b)| a.0 == "lr" || a.1 != b.1)
            .map(|((k, v), _)| match v {
                // Shortest round-trip form; exponents for very small or large values.
                HyperDefault::Number(n) if *n != 0.0 && !(1e-4..1e6).contains(&n.abs()) => {
                    format!("{k}={n:e}")
                }
                HyperDefault::Number(n) => format!("{k}={n}"),
                HyperDefault::Bool(b) => format!("{k}={b}"),
            })
            .collect();
        write!(f, "{}({})", self.kind.name(), changed.join(", "))
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn extreme_values_print_with_exponents_and_parse_back() {
        let s = OptimizerSpec::parse("adagrad(lr=1e-300, lr_decay=1e300, eps=1e-10)").unwrap();
        assert_eq!(s.to_string(), "adagrad(lr=1e-300, lr_decay=1e300)");
        assert_eq!(OptimizerSpec::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn specs_parse_and_print_round_trip() {
        let s = OptimizerSpec::parse("sgd(lr=0.01, momentum=0.9, nesterov=true)").unwrap();
        assert_eq!(s.kind, OptimizerKind::Sgd);
        assert_eq!(s.num("momentum"), 0.9);
        assert!(s.flag("nesterov"));
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
}
