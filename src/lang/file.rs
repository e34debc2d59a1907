//! The loss-file schema: TOML in, a checked [`LossFile`] out, with every problem reported as a
//! diagnostic pointing into the file. Expressions are parsed here; nothing is evaluated.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::{DeTable, DeValue};

use super::ast::{Expr, ExprKind, Program, Spanned};
use super::lexer::OffsetMap;
use super::parser::{ParseError, parse_expr, parse_program};
use crate::diagnostic::{Diagnostic, SourceFile, Span, did_you_mean};

/// Floating-point precision of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
}

impl DType {
    /// Every dtype a run can use.
    pub const ALL: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

    /// The dtype as loss files and the command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// The dtype spelled `f32`, `f64`, `f16` or `bf16`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }
}

/// A `[data]` entry's value.
#[derive(Debug, Clone)]
pub enum DataValue {
    Expr(Expr),
    Csv {
        path: Spanned<PathBuf>,
        columns: Vec<Spanned<String>>,
    },
}

/// A `[data]` entry: a name and where its values come from.
#[derive(Debug, Clone)]
pub struct DataEntry {
    pub name: Spanned<String>,
    pub value: DataValue,
}

/// A `[consts]` entry: a named number that variants may override.
#[derive(Debug, Clone)]
pub struct ConstEntry {
    pub name: Spanned<String>,
    pub value: f64,
}

/// A `[params]` entry: a name and the expression of its initial value.
#[derive(Debug, Clone)]
pub struct ParamEntry {
    pub name: Spanned<String>,
    pub value: Expr,
}

/// A raw `[optimizer]` setting; the optimizer module gives it meaning.
#[derive(Debug, Clone, PartialEq)]
pub enum SettingValue {
    Number(f64),
    Bool(bool),
    Text(String),
}

impl SettingValue {
    /// The value as the optimizer module reads it.
    pub fn raw(&self) -> crate::optim::spec::RawValue<'_> {
        use crate::optim::spec::RawValue;
        match self {
            SettingValue::Number(n) => RawValue::Number(*n),
            SettingValue::Bool(b) => RawValue::Bool(*b),
            SettingValue::Text(t) => RawValue::Text(t),
        }
    }
}

/// One `key = value` of an `[optimizer]` table, with the spans of both.
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: Spanned<String>,
    pub value: Spanned<SettingValue>,
}

/// A named alternative run: overrides of the loss, consts, dtype or optimizer.
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: Spanned<String>,
    pub about: Option<String>,
    pub loss: Option<Spanned<Program>>,
    pub consts: Vec<ConstEntry>,
    pub dtype: Option<DType>,
    pub optimizer: Vec<Setting>,
}

/// A parsed, schema-checked loss file.
#[derive(Debug, Clone)]
pub struct LossFile {
    pub source: Arc<SourceFile>,
    pub name: String,
    pub about: Option<String>,
    pub seed: u64,
    pub dtype: DType,
    pub loss: Spanned<Program>,
    pub data: Vec<DataEntry>,
    pub consts: Vec<ConstEntry>,
    pub params: Vec<ParamEntry>,
    pub optimizer: Vec<Setting>,
    pub variants: Vec<Variant>,
    pub functions: Vec<FunctionDef>,
}

/// A `[functions.NAME]` entry: a function with its own gradient, for what autodiff cannot or
/// should not differentiate.
#[derive(Debug, Clone)]
pub struct FunctionDef {
    pub name: Spanned<String>,
    pub args: Vec<Spanned<String>>,
    pub value: Expr,
    /// One expression per argument, in terms of the arguments and `g`, the incoming gradient.
    pub grads: Vec<Expr>,
}

impl LossFile {
    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.source.path
    }

    /// Directory that relative paths (CSV sources) are resolved against.
    pub fn dir(&self) -> &Path {
        self.source.path.parent().unwrap_or(Path::new("."))
    }
}

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
];
/// Run settings a variant may also give as its own keys.
const VARIANT_RUN_KEYS: &[&str] = &["grad", "loss_scale", "accumulate"];
const CSV_KEYS: &[&str] = &["csv", "columns"];

/// What a loaded file gives: the file if it could be built, and every diagnostic found.
pub struct Loaded {
    pub file: Option<LossFile>,
    pub diagnostics: Vec<Diagnostic>,
    /// The source, even when the file could not be built (for rendering).
    pub source: Option<Arc<SourceFile>>,
}

/// Reads and checks a loss file. Never panics on any input.
pub fn load(path: &Path) -> Loaded {
    match std::fs::read(path) {
        Ok(bytes) => load_bytes(path, bytes),
        Err(e) => Loaded {
            file: None,
            diagnostics: vec![
                Diagnostic::error(format!("cannot read {}: {e}", path.display())).in_file(path),
            ],
            source: None,
        },
    }
}

/// Checks a loss file's contents as if read from `path`.
pub fn load_bytes(path: &Path, bytes: Vec<u8>) -> Loaded {
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let source = SourceFile::new(path, String::from_utf8_lossy(e.as_bytes()).into_owned());
            let d = Diagnostic::error("the file is not valid UTF-8")
                .at(&source, at..at + 1)
                .label("this byte is not UTF-8")
                .help("save the file as UTF-8");
            return Loaded {
                file: None,
                diagnostics: vec![d],
                source: Some(source),
            };
        }
    };
    let source = SourceFile::new(path, text);
    let mut cx = Checker {
        source: Arc::clone(&source),
        diags: Vec::new(),
    };
    let file = cx.file();
    let file = file.filter(|_| !cx.diags.iter().any(Diagnostic::is_error));
    Loaded {
        file,
        diagnostics: cx.diags,
        source: Some(source),
    }
}

type Value<'a> = toml::Spanned<DeValue<'a>>;

fn spanned<'v, 'a>(v: &'v Value<'a>) -> (&'v DeValue<'a>, Span) {
    (v.get_ref(), v.span())
}

struct Checker {
    source: Arc<SourceFile>,
    diags: Vec<Diagnostic>,
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
        for e in toml_errors {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            self.error(format!("invalid TOML: {msg}"), span).help =
                Some("see https://toml.io for the syntax".into());
        }
        if self.diags.iter().any(Diagnostic::is_error) {
            return None;
        }
        let root = root.into_inner();
        let end = source.text.len();
        let whole = 0..end.min(1);

        self.check_keys(&root, TOP_KEYS, "a loss file");
        self.check_misplaced_top_keys(&root);

        let name = match root.get("name") {
            Some(v) => self.string(v, "`name`").map(|(s, _)| s),
            None => {
                self.error("missing `name`", whole.clone()).help =
                    Some("add `name = \"My loss\"` at the top of the file".into());
                None
            }
        };
        let about = root
            .get("about")
            .and_then(|v| self.string(v, "`about`"))
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
            cx.data_value(v).map(|value| DataEntry { name, value })
        });
        let consts = self.entries(&root, "consts", |cx, name, v| {
            cx.number(v, "a const")
                .map(|value| ConstEntry { name, value })
        });
        let params = self.entries(&root, "params", |cx, name, v| {
            cx.expr_value(v, "a param")
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
        let optimizer = root
            .get("optimizer")
            .map(|v| self.settings(v, "[optimizer]"))
            .unwrap_or_default();
        let variants = self.variants(root.get("variants"), &consts);
        let functions = root
            .get("functions")
            .map(|v| self.functions(v))
            .unwrap_or_default();
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
            variants,
            functions,
        })
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
                _ => {
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
        for table in ["data", "consts", "params", "optimizer"] {
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
        ["data", "consts", "params", "optimizer"].iter().any(|t| {
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
        let (text, span) = self.string(v, "`loss`")?;
        let map = string_offsets(&self.source.text, span.clone(), &text);
        match parse_program(&text, &map) {
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

    fn data_value(&mut self, v: &Value) -> Option<DataValue> {
        let (value, span) = spanned(v);
        let DeValue::Table(t) = value else {
            return self.expr_value(v, "a data entry").map(DataValue::Expr);
        };
        self.check_keys(t, CSV_KEYS, "a CSV source");
        let Some(path) = t.get("csv") else {
            self.error("a table in [data] must name a CSV file", span)
                .help =
                Some("e.g. pts = { csv = \"data/points.csv\", columns = [\"a\", \"b\"] }".into());
            return None;
        };
        let (path_text, path_span) = self.string(path, "`csv`")?;
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
        Some(DataValue::Csv {
            path: Spanned::new(PathBuf::from(path_text), path_span),
            columns,
        })
    }

    fn settings(&mut self, v: &Value, what: &str) -> Vec<Setting> {
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

    fn check_settings(&mut self, settings: &[Setting]) {
        use crate::optim::spec::{check_setting, kind_from_name};
        let mut kind = None;
        if let Some(s) = settings.iter().find(|s| s.key.node == "name") {
            match &s.value.node {
                SettingValue::Text(name) => match kind_from_name(name) {
                    Ok(k) => kind = Some(k),
                    Err(e) => self.error(e.message, s.value.span.clone()).help = e.help,
                },
                _ => {
                    self.error(
                        "the optimizer `name` must be a string",
                        s.value.span.clone(),
                    );
                }
            }
        }
        for s in settings.iter().filter(|s| s.key.node != "name") {
            if let Err(e) = check_setting(kind, &s.key.node, s.value.node.raw()) {
                self.error(e.message, s.key.span.clone()).help = e.help;
            }
        }
    }

    fn variants(&mut self, v: Option<&Value>, consts: &[ConstEntry]) -> Vec<Variant> {
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
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Whether `s` can name a data entry, const, param or function.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Maps each byte of a decoded TOML string to its offset in the file, so errors inside `loss`
/// point at the right line and column even across escapes and CRLF line ends. If the raw text
/// cannot be aligned with the decoded one, every byte maps to the string's start.
pub fn string_offsets(file: &str, span: Span, decoded: &str) -> OffsetMap {
    let raw = file.get(span.clone()).unwrap_or("");
    let (delim, literal) = if raw.starts_with("\"\"\"") {
        (3, false)
    } else if raw.starts_with("'''") {
        (3, true)
    } else if raw.starts_with('"') {
        (1, false)
    } else if raw.starts_with('\'') {
        (1, true)
    } else {
        return OffsetMap::Shift(span.start);
    };
    let mut start = delim;
    if delim == 3 {
        if raw[start..].starts_with("\r\n") {
            start += 2;
        } else if raw[start..].starts_with('\n') {
            start += 1;
        }
    }
    let body = &raw[start..raw.len().saturating_sub(delim).max(start)];
    let base = span.start + start;
    if body == decoded {
        return OffsetMap::Shift(base);
    }
    align(body, decoded, literal)
        .map(|t| OffsetMap::Table(t.into_iter().map(|o| base + o).collect()))
        .unwrap_or(OffsetMap::Shift(span.start))
}

fn align(raw: &str, decoded: &str, literal: bool) -> Option<Vec<usize>> {
    let (rb, db) = (raw.as_bytes(), decoded.as_bytes());
    let mut table = Vec::with_capacity(db.len() + 1);
    let (mut i, mut j) = (0, 0);
    while j < db.len() {
        if !literal && rb.get(i) == Some(&b'\\') {
            let next = *rb.get(i + 1)?;
            let len = match next {
                b'x' => 4,
                b'u' => 6,
                b'U' => 10,
                b' ' | b'\t' | b'\r' | b'\n' => {
                    i += 1;
                    while i < rb.len() && matches!(rb[i], b' ' | b'\t' | b'\r' | b'\n') {
                        i += 1;
                    }
                    continue;
                }
                _ => 2,
            };
            let ch = decoded[j..].chars().next()?;
            table.extend(std::iter::repeat_n(i, ch.len_utf8()));
            i += len;
            j += ch.len_utf8();
        } else if rb[i..].starts_with(b"\r\n") && db[j] == b'\n' {
            table.push(i);
            i += 2;
            j += 1;
        } else {
            let ch = raw.get(i..)?.chars().next()?;
            if !decoded[j..].starts_with(ch) {
                return None;
            }
            for k in 0..ch.len_utf8() {
                table.push(i + k);
            }
            i += ch.len_utf8();
            j += ch.len_utf8();
        }
    }
    table.push(i);
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_through_escapes_and_crlf() {
        let file = "loss = \"a\\tb + c\"";
        let span = 7..file.len();
        let map = string_offsets(file, span, "a\tb + c");
        assert_eq!(&file[map.map(2)..map.map(3)], "b");
        let file = "loss = \"\"\"\r\nx = 1\r\nx\r\n\"\"\"";
        let map = string_offsets(file, 7..file.len(), "x = 1\nx\n");
        assert_eq!(&file[map.map(6)..map.map(7)], "x");
    }
}
