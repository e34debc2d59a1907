//! Variants and `[optimizer]` settings, checked against the optimizer registry.

use toml::de::{DeTable, DeValue};

use super::*;

impl Checker {
    /// An `[optimizer]` table's settings, each checked against the registry.
    pub(super) fn settings(&mut self, v: &Value, what: &str) -> Vec<Setting> {
        let (value, span) = spanned(v);
        let DeValue::Table(t) = value else {
            self.error(format!("{what} must be a table"), span);
            return Vec::new();
        };
        let out = self.settings_from(t, |_| true, what);
        self.check_settings(&out);
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
                DeValue::String(s) => SettingValue::Text(s.to_string()),
                DeValue::Boolean(b) => SettingValue::Bool(*b),
                other => match number_of(other) {
                    Some(n) => SettingValue::Number(n),
                    None => {
                        self.error(
                            format!(
                                "`{}` in {what} must be a number, a boolean or a string, found {}",
                                k.get_ref(),
                                type_name(other)
                            ),
                            vspan,
                        );
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

    /// Checks the optimizer's `name` against the registry and the optimizers this file may name,
    /// and every other key against the optimizer named (any optimizer's keys without a name).
    fn check_settings(&mut self, settings: &[Setting]) {
        use crate::optim::spec::unknown_optimizer;
        use crate::optim::spec::{OptimizerKind, check_own_setting, check_setting};
        let mut kind = None;
        let mut own = None;
        if let Some(s) = settings.iter().find(|s| s.key.node == "name") {
            match &s.value.node {
                SettingValue::Text(name) => {
                    let def = self.optimizers.iter().find(|d| d.name.node == *name);
                    match (def, OptimizerKind::from_name(name)) {
                        (Some(def), _) => own = Some(def.signature()),
                        (None, Some(k)) => kind = Some(k),
                        (None, None) => {
                            let names = self.optimizers.iter().map(|d| d.name.node.as_str());
                            let e = unknown_optimizer(name, names);
                            self.error(e.message, s.value.span.clone()).help = e.help;
                        }
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
        let signatures: Vec<_> = self.optimizers.iter().map(|d| d.signature()).collect();
        for s in settings.iter().filter(|s| s.key.node != "name") {
            let (key, value) = (s.key.node.as_str(), s.value.node.raw());
            let checked = match &own {
                Some(sig) => check_own_setting(sig, key, value),
                // A registry optimizer's keys; without a name, those of any it could name.
                None => check_setting(kind, key, value).or_else(|e| {
                    let owner = signatures
                        .iter()
                        .filter(|_| kind.is_none())
                        .find(|sig| sig.hyper.iter().any(|(n, _)| n == key));
                    owner.map_or(Err(e), |sig| check_own_setting(sig, key, value))
                }),
            };
            if let Err(e) = checked {
                self.error(e.message, s.key.span.clone()).help = e.help;
            }
        }
    }

    /// The `[[variants]]`, each checked: name, consts it overrides, dtype, loss, run settings.
    pub(super) fn variants(&mut self, v: Option<&Value>, consts: &[ConstEntry]) -> Vec<Variant> {
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
                Some(n) => self.string(n, "a variant's `name`"),
                None => {
                    self.error("a variant needs a `name`", span.start..span.start + 1)
                        .help = Some("add name = \"...\" under [[variants]]".into());
                    None
                }
            };
            let about = t
                .get("about")
                .and_then(|v| self.string(v, "`about`"))
                .map(|(s, _)| s);
            let loss = t.get("loss").and_then(|v| self.program(v));
            let dtype = t.get("dtype").and_then(|v| self.dtype(v));
            let mut optimizer = t
                .get("optimizer")
                .map(|v| self.settings(v, "a variant's optimizer"))
                .unwrap_or_default();
            // `grad`, `loss_scale` and `accumulate` on a variant are run settings like those in
            // its optimizer table.
            let own = self.settings_from(t, |k| VARIANT_RUN_KEYS.contains(&k), "a variant");
            self.check_settings(&own);
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
                                format!(
                                    "a variant may only override consts declared in [consts]: {}",
                                    known.join(", ")
                                )
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
            if name == "base" || out.iter().any(|v| v.name.node == name) {
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
            });
        }
        out
    }
}
