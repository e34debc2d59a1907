//! The checker: TOML in, a [`LossFile`] out, every problem a diagnostic on its span. Keys,
//! entries, names, numbers, programs and data values here; variants and `[optimizer]` settings in
//! [`settings`]; `[optimizers.NAME]` tables and files of `optimizers/` folders in [`optimizers`].

mod optimizers;
mod settings;

use std::path::PathBuf;
use std::sync::Arc;

use toml::de::{DeTable, DeValue};

pub(super) use optimizers::check_optimizer_file;

use super::{
    ArrayFile, ArrayFormat, ConstEntry, DType, DataEntry, DataValue, FolderOptimizers, FunctionDef,
    LossFile, MetricEntry, OptimizerDef, OptimumEntry, ParamEntry, ParamTable, Setting,
    SettingValue, Variant, is_identifier, string_offsets,
};
use crate::diagnostic::{Diagnostic, SourceFile, Span, did_you_mean, plain};
use crate::lang::ast::{Expr, ExprKind, Program, Spanned};
use crate::lang::lexer::OffsetMap;
use crate::lang::parser::{ParseError, parse_expr, parse_program};
use crate::optim::spec::OptimizerKind;

const TOP_KEYS: &[&str] = &[
    "name",
    "about",
    "seed",
    "dtype",
    "loss",
    "data",
    "consts",
    "params",
    "optimizer",
    "variants",
    "functions",
    "metrics",
    "optimizers",
    "optimum",
];
const SCALAR_TOP_KEYS: &[&str] = &["name", "about", "seed", "dtype", "loss"];
const VARIANT_KEYS: &[&str] = &[
    "name",
    "about",
    "loss",
    "consts",
    "dtype",
    "optimizer",
    "grad",
    "loss_scale",
    "accumulate",
    "tricks",
];
/// Run settings a variant may also give as its own keys.
const VARIANT_RUN_KEYS: &[&str] = &["grad", "loss_scale", "accumulate", "tricks"];
/// The keys of a file source in `[data]` or `[params]`.
const SOURCE_KEYS: &[&str] = &["csv", "columns", "npy", "npz", "safetensors", "key"];
/// The keys that name a source's file, one per format.
const FILE_KEYS: &[&str] = &["csv", "npy", "npz", "safetensors"];

type Value<'a> = toml::Spanned<DeValue<'a>>;

fn spanned<'v, 'a>(v: &'v Value<'a>) -> (&'v DeValue<'a>, Span) {
    (v.get_ref(), v.span())
}

/// What checking a file's text gives: the file when it has no error, its `name` whenever that
/// key is a readable string, and every diagnostic.
pub(super) struct Checked {
    pub file: Option<LossFile>,
    pub name: Option<String>,
    pub diags: Vec<Diagnostic>,
}

/// Checks a loss file's text; `inherited` are the optimizers of the `optimizers/` folders above
/// it, which it may name.
pub(super) fn check(source: &Arc<SourceFile>, inherited: &FolderOptimizers) -> Checked {
    let mut cx = Checker {
        source: Arc::clone(source),
        name: None,
        diags: Vec::new(),
        optimizers: inherited.optimizers.clone(),
        broken_optimizers: Vec::new(),
        broken_elsewhere: inherited.broken.clone(),
    };
    let file = cx.file();
    let file = file.filter(|_| !cx.diags.iter().any(Diagnostic::is_error));
    Checked {
        file,
        name: cx.name,
        diags: cx.diags,
    }
}

struct Checker {
    source: Arc<SourceFile>,
    /// The file's `name`, kept even when the file has errors.
    name: Option<String>,
    diags: Vec<Diagnostic>,
    /// The optimizers written in the loss language that settings may name.
    optimizers: Vec<Arc<OptimizerDef>>,
    /// Those the file writes with an error (reported at the definition): naming one is no
    /// second error.
    broken_optimizers: Vec<String>,
    /// Those an `optimizers/` folder above defines with an error, and the file: naming one
    /// says where its errors are.
    broken_elsewhere: Vec<(String, PathBuf)>,
}

impl Checker {
    fn error(&mut self, message: impl Into<String>, span: Span) -> &mut Diagnostic {
        self.diags
            .push(Diagnostic::error(message).at(&self.source, span));
        self.diags.last_mut().expect("just pushed")
    }

    fn file(&mut self) -> Option<LossFile> {
        let source = Arc::clone(&self.source);
        let (root, toml_errors) = DeTable::parse_recoverable(&source.text);
        self.name = match root.get_ref().get("name").map(|v| v.get_ref()) {
            Some(DeValue::String(s)) => Some(plain(s)),
            _ => None,
        };
        if !self.toml_errors(toml_errors) {
            return None;
        }
        let root = root.into_inner();
        let end = source.text.len();
        let whole = 0..end.min(1);

        self.check_keys(&root, TOP_KEYS, "a loss file");
        self.check_misplaced_top_keys(&root);

        let name = match root.get("name") {
            Some(v) => self.text(v, "`name`").map(|(s, _)| s),
            None => {
                self.error("missing `name`", whole.clone()).help =
                    Some("add `name = \"My loss\"` at the top of the file".into());
                None
            }
        };
        let about = root
            .get("about")
            .and_then(|v| self.text(v, "`about`"))
            .map(|(s, _)| s);
        let seed = root.get("seed").and_then(|v| self.seed(v)).unwrap_or(0);
        let dtype = root
            .get("dtype")
            .and_then(|v| self.dtype(v))
            .unwrap_or(DType::F32);
        let loss = match root.get("loss") {
            Some(v) => self.program(v),
            None => {
                if !self.misplaced_loss(&root) {
                    self.error("missing `loss`", whole.clone()).help = Some(
                        "add the loss program above the first [table]: loss = \"\"\"\n...\n\"\"\""
                            .into(),
                    );
                }
                None
            }
        };
        let data = self.entries(&root, "data", |cx, name, v| {
            cx.data_value(v, "a data entry", "data")
                .map(|value| DataEntry { name, value })
        });
        let consts = self.entries(&root, "consts", |cx, name, v| {
            cx.number(v, "a const")
                .map(|value| ConstEntry { name, value })
        });
        let params = self.entries(&root, "params", |cx, name, v| {
            cx.data_value(v, "a param", "params")
                .map(|value| ParamEntry { name, value })
        });
        match root.get("params") {
            None => {
                self.error("missing [params]: nothing to optimise", whole.clone())
                    .help = Some("add a table like\n[params]\nw = \"zeros(3)\"".into());
            }
            Some(v)
                if params.is_empty()
                    && matches!(v.get_ref(), DeValue::Table(t) if t.is_empty()) =>
            {
                self.error("[params] is empty: nothing to optimise", v.span())
                    .help = Some("add at least one param, e.g. w = \"zeros(3)\"".into());
            }
            _ => {}
        }
        self.check_duplicate_names(&data, &consts, &params);
        if let Some(v) = root.get("optimizers") {
            let own: Vec<Arc<OptimizerDef>> =
                self.optimizers(v).into_iter().map(Arc::new).collect();
            self.optimizers
                .retain(|i| !own.iter().any(|o| o.name.node == i.name.node));
            self.optimizers.splice(0..0, own);
        }
        let (optimizer, param_settings, kind) = root
            .get("optimizer")
            .map(|v| self.optimizer(v, "[optimizer]", &params, Some(OptimizerKind::Adam)))
            .unwrap_or((Vec::new(), Vec::new(), Some(OptimizerKind::Adam)));
        let variants = self.variants(root.get("variants"), &consts, &params, kind);
        let functions = root
            .get("functions")
            .map(|v| self.functions(v))
            .unwrap_or_default();
        let metrics = self.entries(&root, "metrics", |cx, name, v| {
            cx.expr_value(v, "a metric")
                .map(|value| MetricEntry { name, value })
        });
        let optimum = root.get("optimum").and_then(|v| self.optimum(v, &params));
        Some(LossFile {
            source,
            name: name?,
            about,
            seed,
            dtype,
            loss: loss?,
            data,
            consts,
            params,
            optimizer,
            param_settings,
            variants,
            functions,
            metrics,
            optimizers: std::mem::take(&mut self.optimizers),
            optimum,
        })
    }

    /// `optimum = { x = 1.0, y = 1.0 }`: a number for every param and nothing else, in
    /// `[params]` order.
    fn optimum(&mut self, v: &Value, params: &[ParamEntry]) -> Option<Vec<OptimumEntry>> {
        let (value, span) = spanned(v);
        let DeValue::Table(t) = value else {
            self.error(
                format!("`optimum` must be a table, found {}", type_name(value)),
                span,
            )
            .help = Some("e.g. optimum = { x = 1.0, y = 1.0 }".into());
            return None;
        };
        let names = || params.iter().map(|p| p.name.node.as_str());
        let mut given = Vec::new();
        let mut ok = true;
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            if !names().any(|n| n == key) {
                let help = did_you_mean(key, names())
                    .unwrap_or_else(|| format!("the params are {}", quoted(names())));
                self.error(
                    format!("`optimum` names `{key}`, which is not a param"),
                    k.span(),
                )
                .help = Some(help);
                ok = false;
            } else if let Some(n) = self.numbers(v) {
                given.push((Spanned::new(key.to_string(), k.span()), n));
            } else {
                ok = false;
            }
        }
        let missing: Vec<&str> = names()
            .filter(|n| !given.iter().any(|(g, _)| g.node == *n))
            .collect();
        if ok && !missing.is_empty() {
            self.error(
                format!(
                    "`optimum` gives no value for {}",
                    quoted(missing.into_iter())
                ),
                span,
            )
            .help = Some("give every param a value, or leave `optimum` out".into());
            return None;
        }
        ok.then(|| {
            params
                .iter()
                .filter_map(|p| given.iter().find(|(g, _)| g.node == p.name.node))
                .map(|(name, value)| OptimumEntry {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect()
        })
    }

    /// Reports TOML's syntax errors; whether there were none.
    fn toml_errors(&mut self, errors: Vec<toml::de::Error>) -> bool {
        let mut seen = Vec::new();
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            // The parser can give one error twice (inside an inline table): said once.
            if seen.contains(&(span.clone(), msg.clone())) {
                continue;
            }
            // A table header the parser could not read leaves its keys in the table before,
            // where they come out as duplicates: after a first error, that says nothing true.
            if !seen.is_empty() && msg == "duplicate key" {
                continue;
            }
            seen.push((span.clone(), msg.clone()));
            // An unclosed `"""` runs to the end of the file, where the parser says so.
            if msg.contains("multi-line")
                && let Some((at, quotes)) = unclosed_multiline(&self.source.text)
            {
                self.error(
                    format!("invalid TOML: this {quotes} string is never closed"),
                    at..at + 3,
                )
                .help = Some(format!("close it with {quotes} where the string ends"));
                continue;
            }
            self.error(format!("invalid TOML: {msg}"), span).help =
                Some("see https://toml.io for the syntax".into());
        }
        !self.diags.iter().any(Diagnostic::is_error)
    }

    fn functions(&mut self, v: &Value) -> Vec<FunctionDef> {
        let (value, span) = spanned(v);
        let DeValue::Table(t) = value else {
            self.error(
                "`functions` must be a table of [functions.NAME] sections",
                span,
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in t.iter() {
            let name = Spanned::new(k.get_ref().to_string(), k.span());
            let (fv, fspan) = spanned(v);
            let DeValue::Table(f) = fv else {
                self.error(format!("`functions.{}` must be a table", name.node), fspan);
                continue;
            };
            self.check_keys(f, &["args", "value", "grad"], "a function");
            if crate::lang::builtins::Builtin::from_name(&name.node).is_some()
                || !is_identifier(&name.node)
            {
                self.error(
                    format!("`{}` cannot name a function", name.node),
                    name.span.clone(),
                )
                .help = Some("pick a name that is not a built-in function".into());
                continue;
            }
            let args: Vec<Spanned<String>> = match f.get("args").map(spanned) {
                Some((DeValue::Array(items), _)) => items
                    .iter()
                    .filter_map(|i| self.string(i, "an argument name"))
                    .map(|(a, s)| Spanned::new(a, s))
                    .collect(),
                Some((other, span)) => {
                    self.error(
                        format!(
                            "function `{}`'s `args` must be a list of names, found {}",
                            name.node,
                            type_name(other)
                        ),
                        span,
                    )
                    .help = Some("e.g. args = [\"x\"]".into());
                    continue;
                }
                None => {
                    self.error(
                        format!("function `{}` needs `args`, a list of names", name.node),
                        name.span.clone(),
                    )
                    .help = Some("e.g. args = [\"x\"]".into());
                    continue;
                }
            };
            if args.is_empty() || args.len() > 3 {
                self.error(
                    format!("function `{}` must take 1 to 3 arguments", name.node),
                    name.span.clone(),
                );
                continue;
            }
            if let Some((k, again)) = args
                .iter()
                .enumerate()
                .find(|(k, a)| args[..*k].iter().any(|b| b.node == a.node))
            {
                self.error(
                    format!(
                        "function `{}` names argument `{}` twice",
                        name.node, again.node
                    ),
                    again.span.clone(),
                )
                .help = Some(format!("give argument {} a name of its own", k + 1));
                continue;
            }
            // In `grad`, `g` is the incoming gradient: an argument of that name is hidden there.
            if let Some(g) = args.iter().find(|a| a.node == "g") {
                self.error(
                    format!(
                        "function `{}` names an argument `g`, the name its `grad` gives the incoming gradient",
                        name.node
                    ),
                    g.span.clone(),
                )
                .help = Some("rename the argument, e.g. args = [\"x\"]".into());
                continue;
            }
            let value = match f.get("value") {
                Some(v) => self.expr_value(v, "a function's value"),
                None => {
                    self.error(
                        format!("function `{}` needs a `value` expression", name.node),
                        name.span.clone(),
                    );
                    None
                }
            };
            let grads: Vec<Option<Expr>> = match f.get("grad").map(|g| (g, spanned(g))) {
                Some((g, (DeValue::String(_), _))) => vec![self.expr_value(g, "a gradient")],
                Some((_, (DeValue::Array(items), _))) => items
                    .iter()
                    .map(|i| self.expr_value(i, "a gradient"))
                    .collect(),
                _ => {
                    self.error(
                        format!(
                            "function `{}` needs `grad`, one expression per argument",
                            name.node
                        ),
                        name.span.clone(),
                    )
                    .help = Some("e.g. grad = \"g / x\" (g is the incoming gradient)".into());
                    continue;
                }
            };
            if grads.len() != args.len() {
                self.error(
                    format!(
                        "function `{}` has {} arguments but {} gradient expressions",
                        name.node,
                        args.len(),
                        grads.len()
                    ),
                    f.get("grad").map_or(name.span.clone(), |g| g.span()),
                );
                continue;
            }
            if let (Some(value), Some(grads)) =
                (value, grads.into_iter().collect::<Option<Vec<_>>>())
            {
                out.push(FunctionDef {
                    name,
                    args,
                    value,
                    grads,
                });
            }
        }
        out
    }

    fn check_keys(&mut self, table: &DeTable, allowed: &[&str], what: &str) {
        for (k, _) in table.iter() {
            let key = k.get_ref().as_ref();
            if allowed.contains(&key) || (what == "a loss file" && SCALAR_TOP_KEYS.contains(&key)) {
                continue;
            }
            let help = did_you_mean(key, allowed.iter().copied()).unwrap_or_else(|| {
                format!(
                    "{what} takes {}",
                    allowed
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
            self.error(format!("unknown key `{key}` in {what}"), k.span())
                .help = Some(help);
        }
    }

    /// The classic TOML slip: a top-level key written after a `[table]` header lands in the table.
    fn check_misplaced_top_keys(&mut self, root: &DeTable) {
        for table in ["data", "consts", "params", "optimizer", "metrics"] {
            let Some(DeValue::Table(t)) = root.get(table).map(|v| v.get_ref()) else {
                continue;
            };
            for (k, _) in t.iter() {
                let key = k.get_ref().as_ref();
                let allowed_here = table == "optimizer" && key == "name";
                if SCALAR_TOP_KEYS.contains(&key) && !root.contains_key(key) && !allowed_here {
                    self.error(format!("`{key}` is inside the [{table}] table"), k.span())
                        .help = Some(format!(
                        "TOML puts every key after a [table] header into that table: move `{key} = ...` above the first [table]"
                    ));
                }
            }
        }
    }

    fn misplaced_loss(&self, root: &DeTable) -> bool {
        ["data", "consts", "params", "optimizer", "metrics"].iter().any(|t| {
            matches!(root.get(*t).map(|v| v.get_ref()), Some(DeValue::Table(t)) if t.contains_key("loss"))
        })
    }

    fn check_duplicate_names(
        &mut self,
        data: &[DataEntry],
        consts: &[ConstEntry],
        params: &[ParamEntry],
    ) {
        let names = data
            .iter()
            .map(|d| (&d.name, "[data]"))
            .chain(consts.iter().map(|c| (&c.name, "[consts]")))
            .chain(params.iter().map(|p| (&p.name, "[params]")));
        let mut seen: Vec<(&Spanned<String>, &str)> = Vec::new();
        for (name, table) in names {
            if let Some((_, first)) = seen.iter().find(|(n, _)| n.node == name.node) {
                let msg = format!("`{}` is defined in both {first} and {table}", name.node);
                self.error(msg, name.span.clone()).help =
                    Some("each name may be data, a const or a param, not two of them".into());
            } else {
                seen.push((name, table));
            }
        }
    }

    fn entries<T>(
        &mut self,
        root: &DeTable,
        table: &str,
        mut f: impl FnMut(&mut Self, Spanned<String>, &Value) -> Option<T>,
    ) -> Vec<T> {
        let Some(v) = root.get(table) else {
            return Vec::new();
        };
        let DeValue::Table(t) = v.get_ref() else {
            self.error(format!("`{table}` must be a table"), v.span())
                .help = Some(format!("write it as a [{table}] section"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in t.iter() {
            let key = k.get_ref().as_ref();
            if SCALAR_TOP_KEYS.contains(&key) && !root.contains_key(key) && table != "optimizer" {
                continue;
            }
            if !is_identifier(key) {
                self.error(format!("`{key}` is not a valid name"), k.span())
                    .help =
                    Some("names are letters, digits and `_`, not starting with a digit".into());
                continue;
            }
            let name = Spanned::new(key.to_string(), k.span());
            if let Some(item) = f(self, name, v) {
                out.push(item);
            }
        }
        out
    }

    fn string(&mut self, v: &Value, what: &str) -> Option<(String, Span)> {
        let (v, span) = spanned(v);
        match v {
            DeValue::String(s) => Some((s.to_string(), span)),
            other => {
                self.error(
                    format!("{what} must be a string, found {}", type_name(other)),
                    span,
                );
                None
            }
        }
    }

    /// A string shown as text (a name, an about line), its control characters (an escape
    /// sequence would recolour or retitle the terminal it is printed to) replaced by U+FFFD,
    /// with a warning.
    fn text(&mut self, v: &Value, what: &str) -> Option<(String, Span)> {
        let (s, span) = self.string(v, what)?;
        let Some(c) = s.chars().find(|c| c.is_control()) else {
            return Some((s, span));
        };
        let mut d = Diagnostic::warning(format!(
            "{what} holds a control character (U+{:04X}): shown as \u{FFFD}",
            u32::from(c)
        ))
        .at(&self.source, span.clone());
        d.help =
            Some("write it as plain text: a terminal would act on the control characters".into());
        self.diags.push(d);
        Some((plain(&s), span))
    }

    fn number(&mut self, v: &Value, what: &str) -> Option<f64> {
        let (value, span) = spanned(v);
        match number_of(value) {
            Some(n) => Some(n),
            None => {
                self.error(
                    format!("{what} must be a number, found {}", type_name(value)),
                    span,
                )
                .help = Some("write it as a TOML number, e.g. 1e-7".into());
                None
            }
        }
    }

    /// A number, or an array of numbers (a vector param's values), for `optimum`.
    fn numbers(&mut self, v: &Value) -> Option<Vec<f64>> {
        let (value, span) = spanned(v);
        let numbers = match value {
            DeValue::Array(items) => items.iter().map(|i| number_of(i.get_ref())).collect(),
            other => number_of(other).map(|n| vec![n]),
        };
        if numbers.is_none() {
            self.error(
                format!(
                    "an optimum value must be a number or an array of numbers, found {}",
                    type_name(value)
                ),
                span,
            )
            .help = Some("e.g. x = 1.0, or w = [0.0, 0.0] for a vector param".into());
        }
        numbers
    }

    fn seed(&mut self, v: &Value) -> Option<u64> {
        let (value, span) = spanned(v);
        let parsed = match value {
            DeValue::Integer(i) => {
                u64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            _ => None,
        };
        if parsed.is_none() {
            self.error("`seed` must be a non-negative integer", span)
                .help = Some("e.g. seed = 0".into());
        }
        parsed
    }

    fn dtype(&mut self, v: &Value) -> Option<DType> {
        let (s, span) = self.string(v, "`dtype`")?;
        let d = DType::from_name(&s);
        if d.is_none() {
            let help = did_you_mean(&s, DType::ALL.iter().map(|d| d.name()))
                .unwrap_or_else(|| "use one of f32, f64, f16, bf16".into());
            self.error(format!("unknown dtype `{s}`"), span).help = Some(help);
        }
        d
    }

    fn parse_errors(&mut self, errors: Vec<ParseError>) {
        for e in errors {
            let d = Diagnostic::error(e.message)
                .at(&self.source, e.span)
                .help_opt(e.help);
            self.diags.push(d);
        }
    }

    fn program(&mut self, v: &Value) -> Option<Spanned<Program>> {
        self.parsed(v, "`loss`", parse_program)
    }

    /// A program in a string, read by `parse`; `what` names the key for errors.
    fn parsed(
        &mut self,
        v: &Value,
        what: &str,
        parse: fn(&str, &OffsetMap) -> Result<Program, Vec<ParseError>>,
    ) -> Option<Spanned<Program>> {
        let (text, span) = self.string(v, what)?;
        let map = string_offsets(&self.source.text, span.clone(), &text);
        match parse(&text, &map) {
            Ok(p) => Some(Spanned::new(p, span)),
            Err(errors) => {
                self.parse_errors(errors);
                None
            }
        }
    }

    /// A param or data value: an expression in a string, or a bare number.
    fn expr_value(&mut self, v: &Value, what: &str) -> Option<Expr> {
        let (value, span) = spanned(v);
        if let Some(n) = number_of(value) {
            return Some(Expr {
                kind: ExprKind::Number(n),
                span,
            });
        }
        let DeValue::String(text) = value else {
            self.error(
                format!(
                    "{what} must be an expression in a string or a number, found {}",
                    type_name(value)
                ),
                span,
            )
            .help = Some("e.g. w = \"zeros(3)\" or b = 0.5".into());
            return None;
        };
        let map = string_offsets(&self.source.text, span, text);
        match parse_expr(text, &map) {
            Ok(e) => Some(e),
            Err(errors) => {
                self.parse_errors(errors);
                None
            }
        }
    }

    /// A `[data]` or `[params]` value (`what` names it, `table` is its table): an expression, or
    /// a table naming the file it is read from.
    fn data_value(&mut self, v: &Value, what: &str, table: &str) -> Option<DataValue> {
        let (value, span) = spanned(v);
        let DeValue::Table(t) = value else {
            return self.expr_value(v, what).map(DataValue::Expr);
        };
        self.check_keys(t, SOURCE_KEYS, "a file source");
        let files: Vec<(&str, &Value)> = FILE_KEYS
            .iter()
            .filter_map(|&k| t.get(k).map(|v| (k, v)))
            .collect();
        let (kind, path) = match files.as_slice() {
            [one] => *one,
            [] => {
                self.error(
                    format!("a table in [{table}] must name the file it reads"),
                    span,
                )
                .help = Some(
                    "e.g. x = { npy = \"data/x.npy\" }, d = { npz = \"d.npz\", key = \"x\" }, \
                     w = { safetensors = \"m.safetensors\", key = \"fc1.weight\" } or \
                     pts = { csv = \"data/points.csv\", columns = [\"a\", \"b\"] }"
                        .into(),
                );
                return None;
            }
            [(first, _), (second, v2), ..] => {
                self.error(
                    format!("`{first}` and `{second}` both name a file"),
                    v2.span(),
                )
                .help = Some("an entry reads one file: keep one of them".into());
                return None;
            }
        };
        let (path_text, path_span) = self.string(path, &format!("`{kind}`"))?;
        if path_text.trim().is_empty() {
            self.error(format!("`{kind}` is empty"), path_span).help = Some(format!(
                "name the file, relative to the loss file, e.g. {kind} = \"data/x.{kind}\""
            ));
            return None;
        }
        let path = Spanned::new(PathBuf::from(path_text), path_span);
        if kind == "csv" {
            if let Some(k) = t.get("key") {
                self.error(
                    "`key` picks an array of an npz or safetensors file",
                    k.span(),
                )
                .help = Some("a CSV source picks `columns`".into());
                return None;
            }
            return self.csv_source(t, path, span);
        }
        if let Some(c) = t.get("columns") {
            self.error(
                format!("`columns` is for CSV sources, not `{kind}`"),
                c.span(),
            )
            .help = Some(match kind {
                "npy" => "a .npy file holds one array: leave `columns` out".into(),
                _ => "name the array with `key = \"...\"`".into(),
            });
            return None;
        }
        let format = ArrayFormat::ALL
            .into_iter()
            .find(|f| f.name() == kind)
            .expect("FILE_KEYS lists every array format");
        let key = match t.get("key") {
            None => None,
            Some(k) if !format.has_keys() => {
                self.error("a .npy file holds one array: it has no keys", k.span())
                    .help = Some(
                    "leave `key` out, or read a file of several arrays with npz = \"...\"".into(),
                );
                return None;
            }
            Some(k) => {
                let (text, span) = self.string(k, "`key`")?;
                if text.is_empty() {
                    self.error("`key` is empty", span).help =
                        Some("name the array to read, e.g. key = \"x\"".into());
                    return None;
                }
                Some(Spanned::new(text, span))
            }
        };
        Some(DataValue::Array(ArrayFile { format, path, key }))
    }

    fn csv_source(&mut self, t: &DeTable, path: Spanned<PathBuf>, span: Span) -> Option<DataValue> {
        let Some(cols) = t.get("columns") else {
            self.error("a CSV source needs `columns`", span).help =
                Some("list the columns to read, e.g. columns = [\"a\", \"b\"]".into());
            return None;
        };
        let (cols_value, cols_span) = spanned(cols);
        let DeValue::Array(items) = cols_value else {
            self.error("`columns` must be an array of column names", cols_span);
            return None;
        };
        let mut columns = Vec::new();
        for item in items.iter() {
            let (name, span) = self.string(item, "a column name")?;
            columns.push(Spanned::new(name, span));
        }
        if columns.is_empty() {
            self.error("`columns` is empty", cols_span);
            return None;
        }
        Some(DataValue::Csv { path, columns })
    }
}

/// Names as "`a`, `b`" for messages.
fn quoted<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn number_of(v: &DeValue) -> Option<f64> {
    match v {
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .ok()
            .map(|n| n as f64),
        DeValue::Float(f) => f.as_str().replace('_', "").parse().ok(),
        _ => None,
    }
}

fn type_name(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        // TOML's integers are 64-bit: a longer one is no number of the file's.
        DeValue::Integer(_) if number_of(v).is_none() => {
            "an integer beyond TOML's range (-9223372036854775808 to 9223372036854775807)"
        }
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Where the multi-line string (`"""` or `'''`) left open at the end of `text` starts, and its
/// quotes: each opener pairs with the next of the same quotes, as TOML reads them.
fn unclosed_multiline(text: &str) -> Option<(usize, &'static str)> {
    let mut at = 0;
    loop {
        let next = |q: &'static str| text[at..].find(q).map(|i| (at + i, q));
        let (open, quotes) = match (next("\"\"\""), next("'''")) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        match text[open + 3..].find(quotes) {
            // A closer may be followed by one or two more of its quote, which end the string.
            Some(i) => at = open + 3 + i + 3,
            None => return Some((open, quotes)),
        }
    }
}
