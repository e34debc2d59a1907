//! The trick registry: stabilization pieces written after an optimizer spec with ` + ` (`adam(lr=0.01)
//! + agc(clipping=0.05) + ema(decay=0.99)`), each declared once with typed parameters, defaults
//! and one-line docs, like the optimizers in [`super::spec`]. How a chain steps is
//! [`super::chain`]; this module parses, checks and prints.

use std::fmt;
use std::str::FromStr;

use super::settings::LossScale;
use super::spec::{
    Hyper, HyperParam, HyperValue, LIST_MAX, OptimizerKind, OptimizerSpec, RawValue, SettingError,
    SpecOverride, arguments, split_call, split_top_level, value_list,
};

/// A loss scale as a trick parameter: a power of two, or `dynamic` (torch's GradScaler).
impl Hyper for LossScale {
    const EXPECTS: &'static str = "a power of two or dynamic";
    fn from_raw(raw: RawValue) -> Result<Self, String> {
        match raw {
            RawValue::Text("dynamic") => Ok(LossScale::Dynamic),
            RawValue::Number(n) if n > 0.0 && n.is_finite() && n.log2().fract() == 0.0 => {
                Ok(LossScale::Fixed(n))
            }
            _ => Err(format!("must be {}", Self::EXPECTS)),
        }
    }
    fn to_value(&self) -> HyperValue {
        match self {
            LossScale::Dynamic => HyperValue::Word("dynamic"),
            LossScale::Fixed(n) => HyperValue::Number(*n),
            LossScale::Off => HyperValue::Number(1.0),
        }
    }
}

/// A check of a trick's parameters beyond each one's range: why they are refused.
type Check<T> = fn(&T) -> Result<(), String>;

/// A count that must be at least 1 (`sync_period`, `window`).
fn at_least_one(key: &str, n: u64) -> Result<(), String> {
    match n {
        0 => Err(format!("`{key}` must be at least 1")),
        _ => Ok(()),
    }
}

fn lookahead_period(t: &Lookahead) -> Result<(), String> {
    at_least_one("sync_period", t.sync_period)
}

fn spikes_window(t: &SkipSpikes) -> Result<(), String> {
    at_least_one("window", t.window)
}

/// Declares every trick once: a typed struct of its parameters with their defaults and ranges,
/// an optional check (`where`), and its variant of [`TrickKind`] and [`TrickSpec`].
macro_rules! tricks {
    ($(
        $(#[doc = $doc:literal])*
        $Name:ident = $name:literal $(where $check:path)? {
            $( $(#[doc = $hdoc:literal])* $field:ident : $ty:ty = $default:expr => $bound:ident, )*
        }
    )*) => {
        $(
            typed_params! {
                $(#[doc = $doc])*
                $Name { $( $(#[doc = $hdoc])* $field : $ty = $default => $bound, )* }
            }

            impl $Name {
                fn check(&self) -> Result<(), String> {
                    $( let check: Check<Self> = $check; check(self)?; )?
                    Ok(())
                }
            }
        )*

        /// The tricks a chain may hold.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum TrickKind {
            $( $Name, )*
        }

        impl TrickKind {
            /// Every trick, in the registry's order.
            pub const ALL: &'static [TrickKind] = &[$( TrickKind::$Name, )*];

            /// The name chains use.
            pub fn name(self) -> &'static str {
                match self {
                    $( TrickKind::$Name => $name, )*
                }
            }

            /// One line on what it does.
            pub fn doc(self) -> &'static str {
                match self {
                    $( TrickKind::$Name => concat!($($doc),*).trim_ascii(), )*
                }
            }

            /// Its parameters, with docs and ranges (defaults: [`TrickSpec::new`]).
            pub fn parameters(self) -> &'static [HyperParam] {
                match self {
                    $( TrickKind::$Name => $Name::PARAMS, )*
                }
            }
        }

        /// A trick with every parameter, typed.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TrickSpec {
            $( $Name($Name), )*
        }

        impl TrickSpec {
            /// The trick with its defaults.
            pub fn new(kind: TrickKind) -> Self {
                match kind {
                    $( TrickKind::$Name => TrickSpec::$Name($Name::default()), )*
                }
            }

            /// Which trick it is.
            pub fn kind(&self) -> TrickKind {
                match self {
                    $( TrickSpec::$Name(_) => TrickKind::$Name, )*
                }
            }

            /// Every parameter with its value, in the registry's order.
            pub fn values(&self) -> Vec<(&'static str, HyperValue)> {
                match self {
                    $( TrickSpec::$Name(t) => t.values(), )*
                }
            }

            fn set_field(&mut self, key: &str, raw: RawValue) -> Option<Result<(), String>> {
                match self {
                    $( TrickSpec::$Name(t) => t.set(key, raw), )*
                }
            }

            fn check_together(&self) -> Result<(), String> {
                match self {
                    $( TrickSpec::$Name(t) => t.check(), )*
                }
            }
        }
    };
}

tricks! {
    /// Adaptive gradient clipping, unitwise (Brock et al. 2021, as optax.adaptive_grad_clip).
    Agc = "agc" {
        /// Largest gradient norm allowed, as a fraction of the param's norm (unit by unit).
        clipping: f64 = 0.01 => NonNegative,
        /// Floor on the param's norm, so params at 0 can still move.
        eps: f64 = 1e-3 => NonNegative,
    }
    /// Gradient centralization: subtract each gradient's mean over all axes but the first.
    Centralize = "centralize" {}
    /// Lookahead: fast params step, slow params follow every `sync_period` steps (eval params).
    Lookahead = "lookahead" where lookahead_period {
        /// Steps between synchronisations of the slow params.
        sync_period: u64 = 5 => Any,
        /// How far the slow params move towards the fast ones at a synchronisation.
        slow_step_size: f64 = 0.5 => Unit,
    }
    /// An exponential moving average of the params, as eval params (torch's AveragedModel).
    Ema = "ema" {
        /// Weight of the old average at each step.
        decay: f64 = 0.999 => Unit,
    }
    /// Skip steps with a non-finite gradient, giving up after `max_consecutive` in a row.
    SkipNonfinite = "skip_nonfinite" {
        /// Non-finite gradients in a row that are skipped; the next one is applied.
        max_consecutive: u64 = 5 => Any,
    }
    /// Skip a step whose gradient norm exceeds `factor` times the mean of the last `window`.
    SkipSpikes = "skip_spikes" where spikes_window {
        /// How many times the running mean a gradient norm may reach before its step is skipped.
        factor: f64 = 10.0 => NonNegative,
        /// Steps the running mean is taken over, skipped ones too (so a spike that persists
        /// passes after about window / factor tries); none is skipped before it fills.
        window: u64 = 20 => Any,
    }
    /// Scale the global gradient norm down to `max_norm` (torch's clip_grad_norm_).
    ClipNorm = "clip_norm" {
        /// Largest global L2 norm of the gradient.
        max_norm: f64 = 1.0 => NonNegative,
    }
    /// Clamp every gradient element to [-clip_value, clip_value] (torch's clip_grad_value_).
    ClipValue = "clip_value" {
        /// Largest absolute value of a gradient element.
        clip_value: f64 = 1.0 => NonNegative,
    }
    /// Loss scaling for f16/bf16 runs: a fixed power of two, or dynamic (torch's GradScaler).
    LossScaling = "loss_scale" {
        /// The scale, or `dynamic` (start at 2^16, halve and skip on overflow, double after 2000).
        scale: LossScale = LossScale::Dynamic => Any,
    }
    /// f16/bf16 forward and backward, float32 master params and optimizer state.
    MasterWeights = "master_weights" {}
    /// bf16 (or f16) params and state, each update added through a Kahan compensation buffer.
    Kahan = "kahan" {}
    /// bf16 (or f16) params rounded stochastically after a float32 step (seeded).
    StochasticRounding = "stochastic_rounding" {
        /// Seed of the rounding's random bits.
        seed: u64 = 0 => Any,
    }
}

impl TrickKind {
    /// The trick called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// Whether it decides how params are stored in f16/bf16 runs (at most one per chain).
    pub fn is_precision(self) -> bool {
        matches!(
            self,
            TrickKind::MasterWeights | TrickKind::Kahan | TrickKind::StochasticRounding
        )
    }
}

/// Resolves a trick name, with "did you mean" help otherwise (and a word for an optimizer).
fn kind_from_name(name: &str) -> Result<TrickKind, SettingError> {
    if let Some(k) = TrickKind::from_name(name) {
        return Ok(k);
    }
    let names = || TrickKind::ALL.iter().map(|k| k.name());
    let help = if OptimizerKind::from_name(name).is_some() {
        "a chain has one optimizer, written first: e.g. adam(lr=0.01) + agc(clipping=0.05)".into()
    } else {
        crate::diagnostic::did_you_mean(name, names())
            .unwrap_or_else(|| format!("valid tricks: {}", names().collect::<Vec<_>>().join(", ")))
    };
    Err(SettingError {
        message: format!("unknown trick `{name}`"),
        help: Some(help),
    })
}

impl TrickSpec {
    /// Parses `name` or `name(key=value, ...)` over the trick's defaults, each value checked.
    pub fn parse(text: &str) -> Result<Self, SettingError> {
        let (name, args) = split_call(text)?;
        let kind = kind_from_name(name)?;
        let mut trick = TrickSpec::new(kind);
        for argument in arguments(args, TRICK_EXAMPLE) {
            let (key, raw) = argument?;
            trick.set(key, raw)?;
        }
        trick.check_together().map_err(|message| SettingError {
            message,
            help: None,
        })?;
        Ok(trick)
    }

    /// Sets one parameter by name, checked against the registry.
    fn set(&mut self, key: &str, raw: RawValue) -> Result<(), SettingError> {
        let kind = self.kind();
        let Some(param) = kind.parameters().iter().find(|p| p.name == key) else {
            let names = kind.parameters().iter().map(|p| p.name);
            let help = crate::diagnostic::did_you_mean(key, names.clone()).unwrap_or_else(|| {
                match kind.parameters() {
                    [] => format!("`{}` takes no parameters", kind.name()),
                    _ => format!("its parameters: {}", names.collect::<Vec<_>>().join(", ")),
                }
            });
            return Err(SettingError {
                message: format!("unknown parameter `{key}` for trick `{}`", kind.name()),
                help: Some(help),
            });
        };
        if let Some(Err(why)) = self.set_field(key, raw) {
            let message = match raw {
                RawValue::Text(v) if why.contains("number") => format!("`{v}` is not a number"),
                _ => format!("`{key}` {why}"),
            };
            return Err(SettingError {
                message,
                help: None,
            });
        }
        let value = self.get(key).unwrap_or(HyperValue::Bool(false));
        if !param.bound.admits(&value) {
            return Err(SettingError {
                message: format!("`{key}` must be {}, not {value}", param.bound.describe()),
                help: None,
            });
        }
        Ok(())
    }

    /// A parameter's value by name (None: not one of this trick's).
    pub fn get(&self, key: &str) -> Option<HyperValue> {
        self.values()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// Parses a chain's tricks (`agc(clipping=0.05) + ema`; empty text: none), refusing a trick
    /// written twice and two precision tricks together.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, SettingError> {
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let (tricks, errors): (Vec<_>, Vec<_>) = joined(text)?
            .into_iter()
            .map(Self::parse)
            .partition(Result::is_ok);
        // Every bad trick of the list at once, not only the first.
        let mut errors = errors.into_iter().filter_map(Result::err);
        if let Some(first) = errors.next() {
            let rest: Vec<String> = errors.map(|e| e.message).collect();
            return Err(match rest.is_empty() {
                true => first,
                false => SettingError {
                    message: format!("{}; also {}", first.message, rest.join("; ")),
                    help: first.help,
                },
            });
        }
        let tricks: Vec<Self> = tricks.into_iter().filter_map(Result::ok).collect();
        check_list(&tricks)?;
        Ok(tricks)
    }
}

/// Refuses a trick written twice, and more than one of the precision tricks.
pub fn check_list(tricks: &[TrickSpec]) -> Result<(), SettingError> {
    for (i, t) in tricks.iter().enumerate() {
        if tricks[..i].iter().any(|u| u.kind() == t.kind()) {
            return Err(SettingError {
                message: format!("`{}` is written twice", t.kind().name()),
                help: Some("each trick appears at most once in a chain".into()),
            });
        }
    }
    let precision: Vec<&str> = tricks
        .iter()
        .map(TrickSpec::kind)
        .filter(|k| k.is_precision())
        .map(TrickKind::name)
        .collect();
    if precision.len() > 1 {
        return Err(SettingError {
            message: format!("`{}` cannot be combined", precision.join("` and `")),
            help: Some("each decides how f16/bf16 params are stored: pick one".into()),
        });
    }
    Ok(())
}

/// How to write a trick, for the parser's help.
const TRICK_EXAMPLE: &str = "write e.g. agc(clipping=0.05), or a bare name such as centralize";

/// The pieces of a chain, split at each ` + ` outside parentheses and brackets: the `+` of an
/// exponent (`1e+3`) stays in its number. Each piece trimmed.
pub fn split_chain(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut depth = 0i32;
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        match c {
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth -= 1,
            b'+' if depth == 0 && !is_exponent_sign(bytes, i) => {
                pieces.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(text[start..].trim());
    pieces
}

/// [`split_chain`]'s pieces, none of them empty: `adam +` or `ema + + agc` is a typo, not a
/// chain without the trick.
fn joined(text: &str) -> Result<Vec<&str>, SettingError> {
    let pieces = split_chain(text);
    match pieces.iter().any(|p| p.is_empty()) {
        true => Err(SettingError {
            message: format!("`{}` has a `+` with nothing on one side", text.trim()),
            help: Some(TRICK_EXAMPLE.into()),
        }),
        false => Ok(pieces),
    }
}

/// Whether the `+` at `i` is an exponent's sign: right after `e`/`E` that follows a digit or
/// a decimal point (`1e+3`, `2.E+4`).
fn is_exponent_sign(bytes: &[u8], i: usize) -> bool {
    i >= 2
        && matches!(bytes[i - 1], b'e' | b'E')
        && (bytes[i - 2].is_ascii_digit() || bytes[i - 2] == b'.')
}

impl fmt::Display for TrickSpec {
    /// `name(key=value, ...)` with the parameters that differ from the defaults (the bare name
    /// when none does).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let changed: Vec<String> = self
            .values()
            .into_iter()
            .zip(Self::new(self.kind()).values())
            .filter(|((_, v), (_, default))| v != default)
            .map(|((k, v), _)| format!("{k}={v}"))
            .collect();
        match changed.is_empty() {
            true => write!(f, "{}", self.kind().name()),
            false => write!(f, "{}({})", self.kind().name(), changed.join(", ")),
        }
    }
}

impl FromStr for TrickSpec {
    type Err = SettingError;

    /// [`TrickSpec::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// One point of a chain written with value lists: the chain as plain text, and the value each
/// swept key takes there (`lr`, or `trick.key` for a trick's).
#[derive(Debug, Clone, PartialEq)]
pub struct ChainPoint {
    pub text: String,
    /// `text` with each swept number in a few digits (`lr=0.00316`, not every digit of
    /// 10^-2.5), to name the run by.
    pub label: String,
    pub swept: Vec<(String, String)>,
}

/// The plain chains a chain with value lists (`adam(lr=[1e-3, 1e-2], beta1=linspace(0.8,
/// 0.9, 3))`, see [`value_list`]) stands for: the cartesian product of its lists, the first
/// list varying slowest. A chain without lists is its one point, as typed.
pub fn expand_chain(text: &str) -> Result<Vec<ChainPoint>, SettingError> {
    // Every argument of every piece: its key as written, its axis when it is swept, and its
    // values (one for a plain value; a part that is not `key=value` is left for the parser).
    let mut pieces = Vec::new();
    for (p, piece) in split_chain(text).into_iter().enumerate() {
        let (name, args) = split_call(piece)?;
        let mut keyed = Vec::new();
        for part in split_top_level(args).filter(|part| !part.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                keyed.push((part.to_string(), None, vec![None]));
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            if keyed.iter().any(|(k, ..)| k.as_str() == key) {
                return Err(super::spec::twice(key));
            }
            let (axis, values) = match value_list(value)? {
                Some(values) => (
                    Some(match p {
                        0 => key.to_string(),
                        _ => format!("{name}.{key}"),
                    }),
                    values.into_iter().map(Some).collect(),
                ),
                None => (None, vec![Some(value.to_string())]),
            };
            keyed.push((key.to_string(), axis, values));
        }
        pieces.push((name, keyed));
    }
    let sizes: Vec<usize> = pieces
        .iter()
        .flat_map(|(_, args)| args.iter().map(|(_, _, v)| v.len()))
        .collect();
    let total = sizes.iter().try_fold(1usize, |a, &n| a.checked_mul(n));
    let total = match total {
        Some(t) if t <= LIST_MAX => t,
        _ => {
            return Err(SettingError {
                message: format!("`{text}` makes more than {LIST_MAX} runs"),
                help: Some("sweep fewer values at once".into()),
            });
        }
    };
    let mut points = Vec::with_capacity(total);
    for index in 0..total {
        // The index in mixed radix, the last list varying fastest.
        let mut choice = vec![0; sizes.len()];
        let mut rest = index;
        for (c, size) in choice.iter_mut().zip(&sizes).rev() {
            (*c, rest) = (rest % size, rest / size);
        }
        let mut choice = choice.into_iter();
        let mut swept = Vec::new();
        // Each piece as written exactly and as labelled.
        let calls: Vec<(String, String)> = pieces
            .iter()
            .map(|(name, args)| {
                let (exact, short): (Vec<String>, Vec<String>) = args
                    .iter()
                    .map(
                        |(key, axis, values)| match &values[choice.next().unwrap_or(0)] {
                            Some(value) => {
                                let mut shown = value.clone();
                                if let Some(axis) = axis {
                                    swept.push((axis.clone(), value.clone()));
                                    if let Ok(x) = value.parse::<f64>() {
                                        shown = crate::format::fmt_short(x);
                                    }
                                }
                                (format!("{key}={value}"), format!("{key}={shown}"))
                            }
                            None => (key.clone(), key.clone()),
                        },
                    )
                    .unzip();
                let call = |written: Vec<String>| match written.is_empty() {
                    true => name.to_string(),
                    false => format!("{name}({})", written.join(", ")),
                };
                (call(exact), call(short))
            })
            .collect();
        let (exact, short): (Vec<String>, Vec<String>) = calls.into_iter().unzip();
        points.push(ChainPoint {
            text: exact.join(" + "),
            label: short.join(" + "),
            swept,
        });
    }
    Ok(points)
}

/// An optimizer with its tricks: what a run steps with, as the TUI's spec editor reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainSpec {
    pub base: OptimizerSpec,
    pub tricks: Vec<TrickSpec>,
}

impl ChainSpec {
    /// Parses `optimizer(...) + trick(...) + ...` (the optimizer over torch's defaults).
    pub fn parse(text: &str) -> Result<Self, SettingError> {
        let (base, tricks) = split_base(text)?;
        Ok(Self {
            base: OptimizerSpec::parse(base)?,
            tricks: TrickSpec::parse_list(tricks)?,
        })
    }
}

impl From<OptimizerSpec> for ChainSpec {
    /// The optimizer alone.
    fn from(base: OptimizerSpec) -> Self {
        Self {
            base,
            tricks: Vec::new(),
        }
    }
}

impl fmt::Display for ChainSpec {
    /// The optimizer, then ` + ` and each trick.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.base)?;
        for t in &self.tricks {
            write!(f, " + {t}")?;
        }
        Ok(())
    }
}

impl FromStr for ChainSpec {
    type Err = SettingError;

    /// [`ChainSpec::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The optimizer's text and the rest (its tricks, possibly empty).
fn split_base(text: &str) -> Result<(&str, &str), SettingError> {
    let base = joined(text)?[0];
    let start = text.find(base).unwrap_or(0) + base.len();
    let rest = text[start..].trim_start();
    Ok((base, rest.strip_prefix('+').unwrap_or(rest)))
}

/// A chain as typed on the command line (`-o 'adam(lr=0.01) + agc(clipping=0.05)'`): the
/// optimizer's typed keys, and the tricks when any are written.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainOverride {
    pub base: SpecOverride,
    /// None: none written, so the file's tricks stay when its optimizer does.
    pub tricks: Option<Vec<TrickSpec>>,
}

impl ChainOverride {
    /// Parses `name(key=value, ...) + trick(...) + ...`.
    pub fn parse(text: &str) -> Result<Self, SettingError> {
        Self::parse_with(text, &[])
    }

    /// [`ChainOverride::parse`] where `own`, a loss file's own optimizers, may be named too.
    pub fn parse_with(
        text: &str,
        own: &[std::sync::Arc<dyn super::custom::UpdateProgram>],
    ) -> Result<Self, SettingError> {
        let (base, tricks) = split_base(text)?;
        let tricks = TrickSpec::parse_list(tricks)?;
        Ok(Self {
            base: SpecOverride::parse_with(base, own)?,
            tricks: (!tricks.is_empty()).then_some(tricks),
        })
    }

    /// The chain it makes of `base` and its `tricks`: the optimizer as
    /// [`SpecOverride::over`] makes it; the tricks written, else `tricks` when the optimizer is
    /// `base`'s (its hyper-parameters are kept too), else none.
    pub fn over(
        &self,
        base: &OptimizerSpec,
        tricks: &[TrickSpec],
    ) -> Result<ChainSpec, SettingError> {
        let kept = match (&self.tricks, base.name() == self.base.name()) {
            (Some(written), _) => written.clone(),
            (None, true) => tricks.to_vec(),
            (None, false) => Vec::new(),
        };
        Ok(ChainSpec {
            base: self.base.over(base)?,
            tricks: kept,
        })
    }
}

impl fmt::Display for ChainOverride {
    /// The optimizer as typed, then each trick written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.base)?;
        for t in self.tricks.iter().flatten() {
            write!(f, " + {t}")?;
        }
        Ok(())
    }
}

impl FromStr for ChainOverride {
    type Err = SettingError;

    /// [`ChainOverride::parse`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_given_twice_is_an_error_not_the_last_value() {
        for text in [
            "adam(lr=0.1, lr=1)",
            "sgd(lr=0.1) + agc(clipping=0.05, clipping=0.1)",
        ] {
            let e = ChainSpec::parse(text).unwrap_err();
            assert!(e.message.contains("is given twice"), "{text}: {e}");
        }
        let e = expand_chain("adam(lr=[0.1, 1], lr=[1, 2])").unwrap_err();
        assert_eq!(e.message, "`lr` is given twice");
    }

    #[test]
    fn a_chain_with_lists_expands_to_the_cartesian_product() {
        let points =
            expand_chain("sgd(lr=[1e-3, 1e-2], momentum=[0, 0.9]) + agc(clipping=[0.01, 0.1])")
                .unwrap();
        let texts: Vec<&str> = points.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "sgd(lr=1e-3, momentum=0) + agc(clipping=0.01)",
                "sgd(lr=1e-3, momentum=0) + agc(clipping=0.1)",
                "sgd(lr=1e-3, momentum=0.9) + agc(clipping=0.01)",
                "sgd(lr=1e-3, momentum=0.9) + agc(clipping=0.1)",
                "sgd(lr=1e-2, momentum=0) + agc(clipping=0.01)",
                "sgd(lr=1e-2, momentum=0) + agc(clipping=0.1)",
                "sgd(lr=1e-2, momentum=0.9) + agc(clipping=0.01)",
                "sgd(lr=1e-2, momentum=0.9) + agc(clipping=0.1)",
            ]
        );
        let axes: Vec<&str> = points[0].swept.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(axes, ["lr", "momentum", "agc.clipping"]);
        for p in &points {
            assert!(ChainOverride::parse(&p.text).is_ok(), "{}", p.text);
        }
    }

    #[test]
    fn a_plain_chain_is_its_one_point() {
        for text in [
            "adam",
            "adam(lr=0.01, beta1=0.8) + centralize",
            "sgd(lr=1e+3)",
        ] {
            let points = expand_chain(text).unwrap();
            assert_eq!(points.len(), 1);
            assert!(points[0].swept.is_empty());
            assert_eq!(
                ChainOverride::parse(&points[0].text).unwrap(),
                ChainOverride::parse(text).unwrap()
            );
        }
    }

    #[test]
    fn a_malformed_list_in_a_chain_is_an_error() {
        let e = expand_chain("adam(lr=logspace(0, 1, 3))").unwrap_err();
        assert!(e.message.contains("needs lo and hi above 0"), "{e}");
        let e = expand_chain("adam(lr=linspace(1, 2, 5000), beta1=linspace(0, 0.9, 5000))")
            .unwrap_err();
        assert!(e.message.contains("makes more than"), "{e}");
    }

    #[test]
    fn a_chain_splits_at_top_level_plus_only() {
        assert_eq!(
            split_chain("adam(lr=1e+3) + agc(clipping=0.05, eps=2E+1)+centralize"),
            [
                "adam(lr=1e+3)",
                "agc(clipping=0.05, eps=2E+1)",
                "centralize"
            ]
        );
        // A nested spec's own `+` stays inside its parentheses.
        assert_eq!(
            split_chain("muon(fallback=adamw(lr=3e-4) + ema) + ema"),
            ["muon(fallback=adamw(lr=3e-4) + ema)", "ema"]
        );
        assert_eq!(split_chain("sgd"), ["sgd"]);
        assert_eq!(split_chain("1.e+3 + x"), ["1.e+3", "x"]);
    }

    #[test]
    fn chains_parse_and_print_round_trip() {
        let text = "adam(lr=0.02) + centralize + agc(clipping=0.05)";
        let chain = ChainSpec::parse(text).unwrap();
        assert_eq!(chain.base, OptimizerSpec::parse("adam(lr=0.02)").unwrap());
        let kinds: Vec<TrickKind> = chain.tricks.iter().map(TrickSpec::kind).collect();
        assert_eq!(kinds, [TrickKind::Centralize, TrickKind::Agc]);
        assert_eq!(chain.to_string(), text);
        assert_eq!(ChainSpec::parse(&chain.to_string()).unwrap(), chain);
        let TrickSpec::Agc(agc) = &chain.tricks[1] else {
            panic!("{chain:?}")
        };
        assert_eq!((agc.clipping, agc.eps), (0.05, 1e-3));
        let plain = ChainSpec::parse("sgd").unwrap();
        assert!(plain.tricks.is_empty());
    }

    #[test]
    fn trick_parameters_are_typed_and_checked() {
        let t = TrickSpec::parse("loss_scale(scale=1024)").unwrap();
        assert_eq!(
            t,
            TrickSpec::LossScaling(LossScaling {
                scale: LossScale::Fixed(1024.0)
            })
        );
        assert_eq!(
            TrickSpec::parse("loss_scale").unwrap().to_string(),
            "loss_scale"
        );
        // (spec, the start of its error)
        let refused = [
            ("agc(clipping=-1)", "`clipping` must be at least 0"),
            ("ema(decay=1.5)", "`decay` must be in [0, 1]"),
            (
                "lookahead(sync_period=0)",
                "`sync_period` must be at least 1",
            ),
            (
                "lookahead(sync_period=2.5)",
                "`sync_period` must be a whole number",
            ),
            ("skip_spikes(window=0)", "`window` must be at least 1"),
            (
                "loss_scale(scale=1000)",
                "`scale` must be a power of two or dynamic",
            ),
            ("agc(clipping=x)", "`x` is not a number"),
            ("agc(0.05)", "`0.05` is not `key=value`"),
            (
                "agc(clipping=0.05",
                "`agc(clipping=0.05` is missing its closing `)`",
            ),
        ];
        for (spec, start) in refused {
            let e = TrickSpec::parse(spec).unwrap_err();
            assert!(e.message.starts_with(start), "{spec}: {e}");
        }
    }

    #[test]
    fn unknown_names_suggest_the_closest() {
        let e = TrickSpec::parse("agc(cliping=0.1)").unwrap_err();
        assert_eq!(e.message, "unknown parameter `cliping` for trick `agc`");
        assert_eq!(e.help.as_deref(), Some("did you mean `clipping`?"));
        let e = TrickSpec::parse("centralise").unwrap_err();
        assert_eq!(e.message, "unknown trick `centralise`");
        assert_eq!(e.help.as_deref(), Some("did you mean `centralize`?"));
        let e = TrickSpec::parse("centralize(axis=1)").unwrap_err();
        assert_eq!(e.help.as_deref(), Some("`centralize` takes no parameters"));
        let e = ChainSpec::parse("adam + sgd").unwrap_err();
        assert!(e.help.unwrap().starts_with("a chain has one optimizer"));
    }

    #[test]
    fn a_trick_twice_or_two_precision_tricks_are_refused() {
        let e = TrickSpec::parse_list("ema + agc + ema(decay=0.9)").unwrap_err();
        assert_eq!(e.message, "`ema` is written twice");
        let e = TrickSpec::parse_list("master_weights + kahan").unwrap_err();
        assert_eq!(e.message, "`master_weights` and `kahan` cannot be combined");
        assert!(TrickSpec::parse_list("").unwrap().is_empty());
        // A `+` with nothing on one side is a typo, refused rather than read as no trick.
        for text in ["ema +", "+ ema", "ema + + agc"] {
            let e = TrickSpec::parse_list(text).unwrap_err();
            assert!(
                e.message.contains("a `+` with nothing"),
                "{text}: {}",
                e.message
            );
        }
        for text in ["adam +", "adam + + ema"] {
            assert!(ChainOverride::parse(text).is_err(), "{text}");
            assert!(ChainSpec::parse(text).is_err(), "{text}");
        }
        // Every bad trick at once.
        let e = TrickSpec::parse_list("agc(clipping=-1) + emaa + ema(decay=2)").unwrap_err();
        assert_eq!(
            e.message,
            "`clipping` must be at least 0, not -1; also unknown trick `emaa`; `decay` must be in [0, 1], not 2"
        );
    }

    #[test]
    fn an_override_keeps_the_files_tricks_only_with_its_optimizer() {
        let file = OptimizerSpec::parse("adam(lr=0.01)").unwrap();
        let tricks = TrickSpec::parse_list("agc(clipping=0.05) + ema(decay=0.99)").unwrap();
        let same = ChainOverride::parse("adam(beta2=0.99)").unwrap();
        let chain = same.over(&file, &tricks).unwrap();
        assert_eq!(
            chain.to_string(),
            "adam(lr=0.01, beta2=0.99) + agc(clipping=0.05) + ema(decay=0.99)"
        );
        let other = ChainOverride::parse("sgd")
            .unwrap()
            .over(&file, &tricks)
            .unwrap();
        assert!(other.tricks.is_empty());
        let written = ChainOverride::parse("adam + centralize").unwrap();
        assert_eq!(written.to_string(), "adam + centralize");
        let chain = written.over(&file, &tricks).unwrap();
        assert_eq!(chain.to_string(), "adam(lr=0.01) + centralize");
    }

    #[test]
    fn every_trick_has_a_doc_and_documented_parameters() {
        for &k in TrickKind::ALL {
            assert!(!k.doc().is_empty(), "{}", k.name());
            let spec = TrickSpec::new(k);
            let names: Vec<&str> = spec.values().iter().map(|(n, _)| *n).collect();
            let documented: Vec<&str> = k.parameters().iter().map(|p| p.name).collect();
            assert_eq!(names, documented, "{}", k.name());
            assert!(
                k.parameters().iter().all(|p| !p.doc.is_empty()),
                "{}",
                k.name()
            );
            // Every default is accepted by its own parser.
            assert_eq!(TrickSpec::parse(k.name()).unwrap(), spec);
        }
    }
}
