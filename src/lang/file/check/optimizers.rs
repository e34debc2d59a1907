//! `[optimizers.NAME]` tables (optimizers written in the loss language), in a loss file or in a
//! file of an `optimizers/` folder, which holds nothing else.

use toml::de::{DeTable, DeValue};

use super::*;
use crate::lang::file::{HyperDef, StateDef, UPDATE_INPUTS};
use crate::lang::parser::parse_update;
use crate::optim::settings::is_run_setting;
use crate::optim::spec::OptimizerKind;

const OPTIMIZER_KEYS: &[&str] = &["about", "hyper", "state", "update"];

/// Checks the text of a file of an `optimizers/` folder: the optimizers that checked without
/// error, the names of those with one, and every diagnostic.
pub(in crate::lang::file) fn check_optimizer_file(
    source: &Arc<SourceFile>,
) -> (Vec<OptimizerDef>, Vec<String>, Vec<Diagnostic>) {
    let mut cx = Checker {
        source: Arc::clone(source),
        name: None,
        diags: Vec::new(),
        optimizers: Vec::new(),
        broken_optimizers: Vec::new(),
        broken_elsewhere: Vec::new(),
    };
    let (root, toml_errors) = DeTable::parse_recoverable(&source.text);
    if !cx.toml_errors(toml_errors) {
        return (Vec::new(), Vec::new(), cx.diags);
    }
    let root = root.into_inner();
    for (k, _) in root.iter().filter(|(k, _)| k.get_ref() != "optimizers") {
        cx.error(
            format!("`{}` in an optimizer file", k.get_ref()),
            k.span(),
        )
        .help = Some(
            "a file in an `optimizers/` folder holds only [optimizers.NAME] tables; loss files go outside it"
                .into(),
        );
    }
    let optimizers = match root.get("optimizers") {
        Some(v) => cx.optimizers(v),
        None => {
            let end = source.text.len().min(1);
            cx.error("an optimizer file without optimizers", 0..end).help =
                Some("add one, e.g.\n[optimizers.my_sgd]\nhyper = { lr = 0.01 }\nupdate = \"p - lr * g\"".into());
            Vec::new()
        }
    };
    (optimizers, cx.broken_optimizers, cx.diags)
}

impl Checker {
    /// The `[optimizers.NAME]` tables of `v` that check without error.
    pub(super) fn optimizers(&mut self, v: &Value) -> Vec<OptimizerDef> {
        let (value, span) = spanned(v);
        let DeValue::Table(t) = value else {
            self.error(
                "`optimizers` must be a table of [optimizers.NAME] sections",
                span,
            );
            return Vec::new();
        };
        t.iter()
            .filter_map(|(k, v)| {
                let name = Spanned::new(k.get_ref().to_string(), k.span());
                let errors = self.diags.iter().filter(|d| d.is_error()).count();
                let def = self.optimizer_def(name, v);
                // A definition with an error is left out: nothing may run it.
                let clean = self.diags.iter().filter(|d| d.is_error()).count() == errors;
                if !clean {
                    self.broken_optimizers.push(k.get_ref().to_string());
                }
                def.filter(|_| clean)
            })
            .collect()
    }

    fn optimizer_def(&mut self, name: Spanned<String>, v: &Value) -> Option<OptimizerDef> {
        let (value, span) = spanned(v);
        let DeValue::Table(t) = value else {
            self.error(format!("`optimizers.{}` must be a table", name.node), span)
                .help = Some(format!("write it as an [optimizers.{}] section", name.node));
            return None;
        };
        self.check_keys(t, OPTIMIZER_KEYS, "an optimizer");
        if !is_identifier(&name.node) {
            self.error(
                format!("`{}` cannot name an optimizer", name.node),
                name.span.clone(),
            )
            .help = Some("names are letters, digits and `_`, not starting with a digit".into());
        } else if OptimizerKind::from_name(&name.node).is_some() {
            self.error(
                format!("`{}` is a built-in optimizer", name.node),
                name.span.clone(),
            )
            .help = Some(format!(
                "an optimizer of the file's own needs a name of its own, e.g. `my_{}`",
                name.node
            ));
        }
        let about = t
            .get("about")
            .and_then(|v| self.string(v, "`about`"))
            .map(|(s, _)| s);
        let hyper = match t.get("hyper") {
            Some(v) => self.hyper(v),
            None => {
                self.error(
                    format!(
                        "optimizer `{}` needs `hyper`, with at least `lr`",
                        name.node
                    ),
                    name.span.clone(),
                )
                .help = Some("e.g. hyper = { lr = 1e-3 }".into());
                None
            }
        };
        let state = match t.get("state") {
            Some(v) => self.state(v, hyper.as_deref().unwrap_or_default()),
            None => Vec::new(),
        };
        let update = match t.get("update") {
            Some(v) => self.parsed(v, "`update`", parse_update),
            None => {
                self.error(
                    format!("optimizer `{}` needs an `update`", name.node),
                    name.span.clone(),
                )
                .help = Some(
                    "e.g. update = \"p - lr * g\": the last line is the param's new value".into(),
                );
                None
            }
        };
        Some(OptimizerDef {
            source: Arc::clone(&self.source),
            name,
            about,
            hyper: hyper?,
            state,
            update: update?,
        })
    }

    /// `hyper = { lr = ..., ... }`: numbers under names an update is not given otherwise.
    fn hyper(&mut self, v: &Value) -> Option<Vec<HyperDef>> {
        let (value, span) = spanned(v);
        let DeValue::Table(t) = value else {
            self.error("`hyper` must be a table of numbers", span).help =
                Some("e.g. hyper = { lr = 1e-3, beta = 0.9 }".into());
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in t.iter() {
            let name = Spanned::new(k.get_ref().to_string(), k.span());
            if !self.new_name(&name, "a hyper-parameter", "lr") {
                continue;
            }
            let Some(value) = self.number(v, "a hyper-parameter") else {
                continue;
            };
            if !value.is_finite() {
                self.error("a hyper-parameter must be finite", v.span());
                continue;
            }
            if name.node == "lr" && value < 0.0 {
                self.error(format!("`lr` must be at least 0, not {value}"), v.span());
                continue;
            }
            out.push(HyperDef { name, value });
        }
        if !t.contains_key("lr") {
            self.error(
                "`hyper` needs `lr`, the learning rate the schedule starts from",
                span,
            )
            .help = Some(
                "e.g. hyper = { lr = 1e-3 }; in `update`, `lr` is it after the schedule".into(),
            );
        }
        Some(out)
    }

    /// `state = { m = "zeros_like(p)", ... }`: initial values in `p` and the hyper-parameters.
    fn state(&mut self, v: &Value, hyper: &[HyperDef]) -> Vec<StateDef> {
        let (value, span) = spanned(v);
        let DeValue::Table(t) = value else {
            self.error("`state` must be a table of initial values", span)
                .help = Some("e.g. state = { m = \"zeros_like(p)\" }".into());
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in t.iter() {
            let name = Spanned::new(k.get_ref().to_string(), k.span());
            if !self.new_name(&name, "a state", "") {
                continue;
            }
            if hyper.iter().any(|h| h.name.node == name.node) {
                self.error(
                    format!("`{}` is already a hyper-parameter", name.node),
                    name.span.clone(),
                )
                .help = Some("a state needs a name of its own".into());
                continue;
            }
            if let Some(init) = self.expr_value(v, "a state's initial value") {
                out.push(StateDef { name, init });
            }
        }
        out
    }

    /// Whether `name` may name `what`: an identifier that is none of the names an update is
    /// given (but `allowed`) and no run setting.
    fn new_name(&mut self, name: &Spanned<String>, what: &str, allowed: &str) -> bool {
        let n = name.node.as_str();
        let (message, help) = if !is_identifier(n) {
            (
                format!("`{n}` is not a valid name"),
                "names are letters, digits and `_`, not starting with a digit".to_string(),
            )
        } else if let Some((_, is)) = UPDATE_INPUTS.iter().find(|(i, _)| *i == n && *i != allowed) {
            (
                format!("`{n}` is {is}, which every update is given"),
                format!("{what} needs another name"),
            )
        } else if is_run_setting(n) {
            (
                format!("`{n}` is a run setting"),
                format!("{what} needs another name: `{n}` in [optimizer] or a spec sets the run"),
            )
        } else {
            return true;
        };
        self.error(message, name.span.clone()).help = Some(help);
        false
    }
}
