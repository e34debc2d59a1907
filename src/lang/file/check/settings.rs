//! Variants and `[optimizer]` settings, checked against the optimizer registry.

use toml::de::{DeTable, DeValue};

use super::*;
use crate::optim::spec::OptimizerKind;

impl Checker {
    /// An `[optimizer]` table's settings and its `[optimizer.params.NAME]` tables, each checked
    /// against the registry; the optimizer is the table's `name`, else `fallback` (a variant's
    /// file's; adam, the default, for the file's own table), else any.
    pub(super) fn optimizer(
        &mut self,
        v: &Value,
        what: &str,
        params: &[ParamEntry],
        fallback: Option<OptimizerKind>,
    ) -> (Vec<Setting>, Vec<ParamTable>, Option<OptimizerKind>) {
        let (value, span) = spanned(v);
        let DeValue::Table(t) = value else {
            self.error(format!("{what} must be a table"), span);
            return (Vec::new(), Vec::new(), fallback);
        };
        let out = self.settings_from(t, |k| k != "params", what);
        let kind = self.check_settings(&out, fallback);
        let tables = t
            .get("params")
            .map(|p| self.param_tables(p, kind, params))
            .unwrap_or_default();
        (out, tables, kind)
    }

    /// The `[optimizer.params.NAME]` tables: each names a param, each key is checked as a
    /// per-param setting of `kind`.
    fn param_tables(
        &mut self,
        v: &Value,
        kind: Option<OptimizerKind>,
        params: &[ParamEntry],
    ) -> Vec<ParamTable> {
        use crate::optim::groups::{check_param_setting, unknown_param};
        let (value, span) = spanned(v);
        let DeValue::Table(t) = value else {
            self.error(
                "`params` in [optimizer] must be a table of param tables",
                span,
            )
            .help = Some("e.g. [optimizer.params.b] with weight_decay = 0 under it".into());
            return Vec::new();
        };
        let names = params.iter().map(|p| p.name.node.as_str());
        let mut out = Vec::new();
        for (k, v) in t.iter() {
            let param = k.get_ref().to_string();
            if !names.clone().any(|n| n == param) {
                let e = unknown_param(&param, names.clone());
                self.error(e.message, k.span()).help = e.help;
                continue;
            }
            let (pv, pspan) = spanned(v);
            let DeValue::Table(pt) = pv else {
                self.error(
                    format!("`params.{param}` must be a table of settings"),
                    pspan,
                )
                .help = Some(format!("e.g. params.{param} = {{ weight_decay = 0 }}"));
                continue;
            };
            let settings = self.settings_from(pt, |_| true, &format!("[optimizer.params.{param}]"));
            for s in &settings {
                if let Err(e) = check_param_setting(kind, &s.key.node, s.value.node.raw()) {
                    self.error(e.message, s.key.span.clone()).help = e.help;
                }
            }
            out.push(ParamTable {
                param: Spanned::new(param, k.span()),
                settings,
            });
        }
        out
    }

    /// The entries of `t` whose key passes `keep`, as settings.
    fn settings_from(
        &mut self,
        t: &DeTable,
        keep: impl Fn(&str) -> bool,
        what: &str,
    ) -> Vec<Setting> {
        let mut out = Vec::new();
        for (k, v) in t.iter().filter(|(k, _)| keep(k.get_ref().as_ref())) {
            let (value, vspan) = spanned(v);
            let setting = match value {
                DeValue::Array(items) if k.get_ref() == "tricks" => {
                    match self.tricks(items, vspan.clone()) {
                        Some(chain) => SettingValue::Text(chain),
                        None => continue,
                    }
                }
                DeValue::String(s) => SettingValue::Text(s.to_string()),
                DeValue::Boolean(b) => SettingValue::Bool(*b),
                other => match number_of(other) {
                    Some(n) => SettingValue::Number(n),
                    None => {
                        let key = k.get_ref().as_ref();
                        self.error(
                            format!(
                                "`{key}` in {what} must be a number, a boolean or a string, found {}",
                                type_name(other)
                            ),
                            vspan,
                        )
                        .help = match other {
                            DeValue::Array(items) => Some(array_help(key, items)),
                            _ => None,
                        };
                        continue;
                    }
                },
            };
            out.push(Setting {
                key: Spanned::new(k.get_ref().to_string(), k.span()),
                value: Spanned::new(setting, vspan),
            });
        }
        out
    }

    /// A `tricks = ["agc(clipping=0.05)", "ema"]` list, each trick checked at its own span, as
    /// one chain (`agc(clipping=0.05) + ema`); None after reporting what is wrong.
    fn tricks(&mut self, items: &[Value], span: Span) -> Option<String> {
        use crate::optim::tricks::{TrickSpec, check_list};
        let mut tricks = Vec::new();
        for item in items {
            let (text, item_span) = self.string(item, "a trick")?;
            match TrickSpec::parse(&text) {
                Ok(t) => tricks.push(t),
                Err(e) => {
                    self.error(e.message, item_span).help = e.help;
                    return None;
                }
            }
        }
        if let Err(e) = check_list(&tricks) {
            self.error(e.message, span).help = e.help;
            return None;
        }
        let written: Vec<String> = tricks.iter().map(ToString::to_string).collect();
        Some(written.join(" + "))
    }

    /// Checks the optimizer's `name` against the registry and the optimizers this file may name,
    /// and every other key against the optimizer named, else against `fallback` (the one a
    /// table without a name runs: a nameless `lr = -0.1` is refused for adam, not for sgd, and
    /// a nameless `momentum` is no setting of adam's), else any optimizer's keys; returns the
    /// registry optimizer the table runs: the one named (None for one the file writes itself or
    /// an unknown name), else `fallback`.
    fn check_settings(
        &mut self,
        settings: &[Setting],
        fallback: Option<OptimizerKind>,
    ) -> Option<OptimizerKind> {
        use crate::optim::spec::{check_own_setting, check_setting, unknown_optimizer};
        let named = settings.iter().find(|s| s.key.node == "name");
        let mut kind = None;
        let mut own = None;
        if let Some(s) = named {
            match &s.value.node {
                SettingValue::Text(name) => {
                    let def = self.optimizers.iter().find(|d| d.name.node == *name);
                    match (def, OptimizerKind::from_name(name)) {
                        (Some(def), _) => own = Some(def.signature()),
                        (None, Some(k)) => kind = Some(k),
                        // Its own errors say what is wrong with it.
                        (None, None) if self.broken_optimizers.contains(name) => {}
                        (None, None) => match self
                            .broken_elsewhere
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, path)| path.display().to_string())
                        {
                            Some(path) => {
                                self.error(
                                    format!("optimizer `{name}` has errors in {path}"),
                                    s.value.span.clone(),
                                )
                                .help = Some(format!(
                                    "fix them there (`gradscope check {path}` lists them)"
                                ));
                            }
                            None => {
                                let names = self.optimizers.iter().map(|d| d.name.node.as_str());
                                let e = unknown_optimizer(name, names);
                                self.error(e.message, s.value.span.clone()).help = e.help;
                            }
                        },
                    }
                }
                _ => {
                    self.error(
                        "the optimizer `name` must be a string",
                        s.value.span.clone(),
                    );
                }
            }
        }
        let kind = if named.is_some() { kind } else { fallback };
        let signatures: Vec<_> = self.optimizers.iter().map(|d| d.signature()).collect();
        for s in settings.iter().filter(|s| s.key.node != "name") {
            let (key, value) = (s.key.node.as_str(), s.value.node.raw());
            let checked = match &own {
                Some(sig) => check_own_setting(sig, key, value),
                // A registry optimizer's keys; without one known, those of any it could name.
                None => check_setting(kind, key, value).or_else(|e| {
                    let owner = signatures
                        .iter()
                        .filter(|_| kind.is_none())
                        .find(|sig| sig.hyper.iter().any(|(n, _)| n == key));
                    owner.map_or(Err(e), |sig| check_own_setting(sig, key, value))
                }),
            };
            if let Err(mut e) = checked {
                // Without a name the table is the fallback's (adam's): say so where the key is
                // another optimizer's.
                let owners: Vec<&str> = OptimizerKind::ALL
                    .iter()
                    .filter(|k| k.hyper_parameters().iter().any(|h| h.name == key))
                    .map(|k| k.name())
                    .take(4)
                    .collect();
                if let (None, Some(f), Some(first)) = (named, fallback, owners.first())
                    && check_setting(None, key, value).is_ok()
                {
                    e.help = Some(format!(
                        "this table names no optimizer, so it runs `{}`; `{key}` is a setting of \
                         {}: name one, e.g. `name = \"{first}\"`",
                        f.name(),
                        owners.join(", "),
                    ));
                }
                self.error(e.message, s.key.span.clone()).help = e.help;
            }
        }
        kind
    }

    /// The `[[variants]]`, each checked: name, consts it overrides, dtype, loss, run settings.
    /// `kind`: the file's optimizer, what a variant's per-param settings are checked against
    /// when it names none.
    pub(super) fn variants(
        &mut self,
        v: Option<&Value>,
        consts: &[ConstEntry],
        params: &[ParamEntry],
        kind: Option<OptimizerKind>,
    ) -> Vec<Variant> {
        let Some(v) = v else {
            return Vec::new();
        };
        let (value, span) = spanned(v);
        let DeValue::Array(items) = value else {
            self.error("`variants` must be an array of tables", span)
                .help = Some("write each variant as a [[variants]] section".into());
            return Vec::new();
        };
        let mut out: Vec<Variant> = Vec::new();
        for item in items.iter() {
            let (value, span) = spanned(item);
            let DeValue::Table(t) = value else {
                self.error("each variant must be a table", span);
                continue;
            };
            self.check_keys(t, VARIANT_KEYS, "a variant");
            let name = match t.get("name") {
                Some(n) => self.text(n, "a variant's `name`"),
                None => {
                    self.error("a variant needs a `name`", span.start..span.start + 1)
                        .help = Some("add name = \"...\" under [[variants]]".into());
                    None
                }
            };
            let about = t
                .get("about")
                .and_then(|v| self.text(v, "`about`"))
                .map(|(s, _)| s);
            let loss = t.get("loss").and_then(|v| self.program(v));
            let dtype = t.get("dtype").and_then(|v| self.dtype(v));
            let (mut optimizer, param_settings, _) = t
                .get("optimizer")
                .map(|v| self.optimizer(v, "a variant's optimizer", params, kind))
                .unwrap_or_default();
            // `grad`, `loss_scale` and `accumulate` on a variant are run settings like those in
            // its optimizer table.
            let own = self.settings_from(t, |k| VARIANT_RUN_KEYS.contains(&k), "a variant");
            self.check_settings(&own, kind);
            optimizer.extend(own);
            let mut overrides = Vec::new();
            if let Some(c) = t.get("consts") {
                let (cv, cspan) = spanned(c);
                if let DeValue::Table(ct) = cv {
                    for (k, v) in ct.iter() {
                        let key = k.get_ref().to_string();
                        if !consts.iter().any(|c| c.name.node == key) {
                            let help = did_you_mean(
                                &key,
                                consts.iter().map(|c| c.name.node.as_str()),
                            )
                            .unwrap_or_else(|| {
                                let known: Vec<&str> =
                                    consts.iter().map(|c| c.name.node.as_str()).collect();
                                match known.is_empty() {
                                    true => format!(
                                        "a variant may only override consts declared in [consts], \
                                         and this file declares none: add `{key} = ...` to a \
                                         [consts] table"
                                    ),
                                    false => format!(
                                        "a variant may only override consts declared in [consts]: {}",
                                        known.join(", ")
                                    ),
                                }
                            });
                            self.error(format!("unknown const `{key}` in a variant"), k.span())
                                .help = Some(help);
                            continue;
                        }
                        if let Some(value) = self.number(v, "a const") {
                            overrides.push(ConstEntry {
                                name: Spanned::new(key, k.span()),
                                value,
                            });
                        }
                    }
                } else {
                    self.error("a variant's `consts` must be a table", cspan)
                        .help = Some("e.g. consts = { eps = 0.0 }".into());
                }
            }
            let Some((name, name_span)) = name else {
                continue;
            };
            if name.trim().is_empty() || name == "all" {
                // `--variant all` means every run, and a blank name leaves a blank row and key.
                self.error(
                    format!("a variant cannot be named `{name}`"),
                    name_span.clone(),
                )
                .help = Some(
                    "`all` stands for every run on the command line, and a name cannot be blank"
                        .into(),
                );
            } else if name == "base" || out.iter().any(|v| v.name.node == name) {
                self.error(
                    format!("a variant named `{name}` already exists"),
                    name_span.clone(),
                )
                .help =
                    Some("variant names must be unique and not `base` (the file's own run)".into());
            }
            out.push(Variant {
                name: Spanned::new(name, name_span),
                about,
                loss,
                consts: overrides,
                dtype,
                optimizer,
                param_settings,
            });
        }
        out
    }
}

/// torch's tuple hyper-parameters, and the settings their values are here.
const TORCH_TUPLES: [(&str, [&str; 2]); 3] = [
    ("betas", ["beta1", "beta2"]),
    ("etas", ["etaminus", "etaplus"]),
    ("step_sizes", ["step_size_min", "step_size_max"]),
];

/// Help for a list given to a setting: torch's tuples (`betas = [0.9, 0.99]`) split into the
/// settings they are here, any other list pointed at variants and sweeps.
fn array_help(key: &str, items: &[Value]) -> String {
    let Some((_, names)) = TORCH_TUPLES.iter().find(|(k, _)| *k == key) else {
        // `sweep -o` sweeps an optimizer's hyper-parameters, not the run's settings.
        return match crate::optim::settings::is_run_setting(key) {
            true => "a setting takes one value; to compare several, give each a [[variants]] entry"
                .to_string(),
            false => format!(
                "a setting takes one value; to compare several, give each a [[variants]] entry, \
                 or sweep them: gradscope sweep FILE -o 'NAME({key}=[a, b])'"
            ),
        };
    };
    let numbers: Vec<f64> = items
        .iter()
        .filter_map(|v| number_of(v.get_ref()))
        .collect();
    let split: Vec<String> = match numbers.len() == names.len() && items.len() == names.len() {
        true => names
            .iter()
            .zip(&numbers)
            .map(|(k, v)| format!("{k} = {v}"))
            .collect(),
        false => names.iter().map(|k| k.to_string()).collect(),
    };
    format!(
        "torch's `{key}` tuple is two settings here: {}",
        split.join(", ")
    )
}
