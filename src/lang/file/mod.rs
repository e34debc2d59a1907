//! The loss-file schema: TOML in, a checked [`LossFile`] out, with every problem reported as a
//! diagnostic pointing into the file. Expressions are parsed here; nothing is evaluated.

mod check;
mod offsets;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use offsets::string_offsets;

use super::ast::{Expr, Program, Spanned};
use crate::diagnostic::{Diagnostic, SourceFile};

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

/// A `[data]` or `[params]` entry's value: an expression, or values read from a file.
#[derive(Debug, Clone)]
pub enum DataValue {
    Expr(Expr),
    Csv {
        path: Spanned<PathBuf>,
        columns: Vec<Spanned<String>>,
    },
    /// One array of a NumPy or safetensors file.
    Array(ArrayFile),
}

impl DataValue {
    /// The file it reads, as written (relative to the loss file); None for an expression.
    pub fn path(&self) -> Option<&Spanned<PathBuf>> {
        match self {
            DataValue::Expr(_) => None,
            DataValue::Csv { path, .. } | DataValue::Array(ArrayFile { path, .. }) => Some(path),
        }
    }
}

/// The file formats an array can be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayFormat {
    /// `.npy`: one array.
    Npy,
    /// `.npz`: named `.npy` arrays in a zip (as `np.savez` writes them, compressed or not).
    Npz,
    /// `.safetensors`: named tensors.
    Safetensors,
}

impl ArrayFormat {
    /// Every format, in the order the docs list them.
    pub const ALL: [ArrayFormat; 3] =
        [ArrayFormat::Npy, ArrayFormat::Npz, ArrayFormat::Safetensors];

    /// The key that names it in a loss file (also its usual extension).
    pub fn name(self) -> &'static str {
        match self {
            ArrayFormat::Npy => "npy",
            ArrayFormat::Npz => "npz",
            ArrayFormat::Safetensors => "safetensors",
        }
    }

    /// Whether a file of this format holds several named arrays, so a `key` picks one.
    pub fn has_keys(self) -> bool {
        self != ArrayFormat::Npy
    }
}

/// `{ npy = "x.npy" }`, `{ npz = "d.npz", key = "x" }`, `{ safetensors = "m.safetensors", key =
/// "fc1.weight" }`: where one array is read from. The key may be left out when the file holds a
/// single array.
#[derive(Debug, Clone)]
pub struct ArrayFile {
    pub format: ArrayFormat,
    pub path: Spanned<PathBuf>,
    pub key: Option<Spanned<String>>,
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

/// A `[params]` entry: a name and its initial value (an expression, or read from a file).
#[derive(Debug, Clone)]
pub struct ParamEntry {
    pub name: Spanned<String>,
    pub value: DataValue,
}

/// A `[metrics]` entry: a named scalar expression evaluated beside the loss, without gradients.
#[derive(Debug, Clone)]
pub struct MetricEntry {
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

/// An `[optimizer.params.NAME]` table: one param's own hyper-parameters and `lr_scale`.
#[derive(Debug, Clone)]
pub struct ParamTable {
    /// The param it is for.
    pub param: Spanned<String>,
    pub settings: Vec<Setting>,
}

/// An `optimum = { x = 1.0, y = 1.0 }` entry: where a test function's minimum is known to be,
/// so pictures can mark it beside the one the grid finds.
#[derive(Debug, Clone)]
pub struct OptimumEntry {
    /// The param it places.
    pub name: Spanned<String>,
    /// Its values, flattened (one for a scalar param).
    pub value: Vec<f64>,
}

impl OptimumEntry {
    /// Whether it places a param of `len` elements: one finite value each.
    pub fn fits(&self, len: usize) -> bool {
        self.value.len() == len && self.value.iter().all(|v| v.is_finite())
    }
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
    /// Its `[variants.optimizer.params.NAME]` tables, laid over the file's key by key.
    pub param_settings: Vec<ParamTable>,
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
    /// The `[optimizer.params.NAME]` tables, in file order.
    pub param_settings: Vec<ParamTable>,
    pub variants: Vec<Variant>,
    pub functions: Vec<FunctionDef>,
    /// Named expressions every run evaluates beside its loss, in file order.
    pub metrics: Vec<MetricEntry>,
    /// The known minimiser, one value per param, in `[params]` order; None when not given.
    pub optimum: Option<Vec<OptimumEntry>>,
    /// Every optimizer written in the loss language that it may name: its own
    /// `[optimizers.NAME]` tables, then those of the `optimizers/` folders above it that it
    /// does not shadow, nearest first.
    pub optimizers: Vec<Arc<OptimizerDef>>,
}

/// The names an update is given besides its hyper-parameters and state, with what each is.
pub const UPDATE_INPUTS: &[(&str, &str)] = &[
    ("p", "the param"),
    ("g", "the param's gradient"),
    ("lr", "the learning rate after the schedule"),
    ("t", "the 1-based update count"),
    ("gnorm", "the global gradient norm"),
    ("step_loss", "the loss at this step"),
];

/// An `[optimizers.NAME]` table: an optimizer written in the loss language.
#[derive(Debug, Clone)]
pub struct OptimizerDef {
    /// The file it is written in: a loss file, or a file of an `optimizers/` folder.
    pub source: Arc<SourceFile>,
    pub name: Spanned<String>,
    pub about: Option<String>,
    /// Hyper-parameters with their defaults, in the order written; `lr` is one of them.
    pub hyper: Vec<HyperDef>,
    /// What it keeps per param between updates, with each one's initial value.
    pub state: Vec<StateDef>,
    /// Lines that update the state or name locals; the last is the param's new value.
    pub update: Spanned<Program>,
}

/// A hyper-parameter of an [`OptimizerDef`] and its default.
#[derive(Debug, Clone)]
pub struct HyperDef {
    pub name: Spanned<String>,
    pub value: f64,
}

/// A state of an [`OptimizerDef`]: its name and initial value, an expression in `p` and the
/// hyper-parameters.
#[derive(Debug, Clone)]
pub struct StateDef {
    pub name: Spanned<String>,
    pub init: Expr,
}

impl OptimizerDef {
    /// What specs and settings see of it.
    pub fn signature(&self) -> crate::optim::custom::Signature {
        crate::optim::custom::Signature {
            name: self.name.node.clone(),
            about: self.about.clone().unwrap_or_default(),
            hyper: self
                .hyper
                .iter()
                .map(|h| (h.name.node.clone(), h.value))
                .collect(),
        }
    }
}

/// A file of an `optimizers/` folder, read and checked: only `[optimizers.NAME]` tables.
pub struct OptimizerFile {
    /// The optimizers that checked without error.
    pub optimizers: Vec<Arc<OptimizerDef>>,
    /// The names of those defined with an error.
    pub broken: Vec<String>,
    pub diagnostics: Vec<Diagnostic>,
    /// The text as read, when it could be.
    pub source: Option<Arc<SourceFile>>,
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

    /// Directory that relative paths (CSV, NumPy and safetensors sources) are resolved against.
    pub fn dir(&self) -> &Path {
        self.source.path.parent().unwrap_or(Path::new("."))
    }

    /// The other files it reads (`[data]` and `[params]` sources), resolved against
    /// [`LossFile::dir`].
    pub fn reads(&self) -> Vec<PathBuf> {
        let values = self.data.iter().map(|d| &d.value);
        let mut out: Vec<PathBuf> = values
            .chain(self.params.iter().map(|p| &p.value))
            .filter_map(DataValue::path)
            .map(|p| self.dir().join(&p.node))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// What a loaded file gives: the file if it could be built, and every diagnostic found.
pub struct Loaded {
    pub file: Option<LossFile>,
    /// The file's `name` key when it is a readable string, even when the file has errors.
    pub name: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
    /// The source, even when the file could not be built (for rendering).
    pub source: Option<Arc<SourceFile>>,
}

/// What a loss file may name from the `optimizers/` folders above it.
#[derive(Debug, Clone, Default)]
pub struct FolderOptimizers {
    /// Those that checked without error; a nearer folder's shadow a farther one's.
    pub optimizers: Vec<Arc<OptimizerDef>>,
    /// Those defined with an error, and the file each is in: naming one says where, not that
    /// there is no such optimizer.
    pub broken: Vec<(String, PathBuf)>,
}

/// Reads and checks a loss file. Never panics on any input.
pub fn load(path: &Path) -> Loaded {
    load_with(path, &FolderOptimizers::default())
}

/// [`load`], with `inherited` (the optimizers of the `optimizers/` folders above it) nameable.
pub fn load_with(path: &Path, inherited: &FolderOptimizers) -> Loaded {
    match read(path) {
        Ok(bytes) => load_bytes_with(path, bytes, inherited),
        Err(d) => Loaded {
            file: None,
            name: None,
            diagnostics: vec![d],
            source: None,
        },
    }
}

/// Checks a loss file's contents as if read from `path`.
pub fn load_bytes(path: &Path, bytes: Vec<u8>) -> Loaded {
    load_bytes_with(path, bytes, &FolderOptimizers::default())
}

/// [`load_bytes`], with `inherited` (the optimizers of the `optimizers/` folders above it)
/// nameable.
pub fn load_bytes_with(path: &Path, bytes: Vec<u8>, inherited: &FolderOptimizers) -> Loaded {
    let (source, not_utf8) = decode(path, bytes);
    if let Some(d) = not_utf8 {
        return Loaded {
            file: None,
            name: None,
            diagnostics: vec![d],
            source: Some(source),
        };
    }
    let checked = check::check(&source, inherited);
    Loaded {
        file: checked.file,
        name: checked.name,
        diagnostics: checked.diags,
        source: Some(source),
    }
}

/// Reads and checks a file of an `optimizers/` folder: `[optimizers.NAME]` tables only.
pub fn load_optimizers(path: &Path) -> OptimizerFile {
    let (source, not_utf8) = match read(path) {
        Ok(bytes) => decode(path, bytes),
        Err(d) => {
            return OptimizerFile {
                optimizers: Vec::new(),
                broken: Vec::new(),
                diagnostics: vec![d],
                source: None,
            };
        }
    };
    if let Some(d) = not_utf8 {
        return OptimizerFile {
            optimizers: Vec::new(),
            broken: Vec::new(),
            diagnostics: vec![d],
            source: Some(source),
        };
    }
    let (optimizers, broken, diagnostics) = check::check_optimizer_file(&source);
    OptimizerFile {
        optimizers: optimizers.into_iter().map(Arc::new).collect(),
        broken,
        diagnostics,
        source: Some(source),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Diagnostic> {
    std::fs::read(path).map_err(|e| {
        Diagnostic::error(format!("cannot read {}: {e}", path.display())).in_file(path)
    })
}

/// The text of `bytes` (as far as it can be read), and why it is not UTF-8 when it is not.
fn decode(path: &Path, bytes: Vec<u8>) -> (Arc<SourceFile>, Option<Diagnostic>) {
    match String::from_utf8(bytes) {
        Ok(text) => (SourceFile::new(path, text), None),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let source = SourceFile::new(path, String::from_utf8_lossy(e.as_bytes()).into_owned());
            let d = Diagnostic::error("the file is not valid UTF-8")
                .at(&source, at..at + 1)
                .label("this byte is not UTF-8")
                .help("save the file as UTF-8");
            (source, Some(d))
        }
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
