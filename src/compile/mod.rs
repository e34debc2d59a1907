//! The compiler: a checked loss file becomes float64 data, initial params and one plan per run,
//! and an [`Evaluator`] runs a plan with candle's autograd. Knows nothing of any front end.

pub mod arrays;
pub mod backward;
pub mod batch;
pub mod curvature;
pub mod data;
pub mod dense;
pub mod function;
pub mod fused;
pub mod gradcheck;
pub mod hessian;
pub mod lane_kernel;
pub mod lane_tail;
pub mod lanes;
pub mod lower;
pub mod matvec;
pub mod metrics;
pub mod ops;
pub mod optimizer;
pub mod plan;
pub mod region;
pub mod shape;
pub mod squares;
pub mod threads;
pub mod trace;

use std::collections::HashSet;
use std::sync::Arc;

use candle_core::{DType as CDType, Device, Tensor, Var};

use self::data::Named;
use self::lower::{Kind, Lowerer, VariantLoss};
use self::plan::{Executable, Op, Plan};
use self::shape::Shape;
use crate::diagnostic::{Diagnostic, SourceFile, Span};
use crate::lang::file::{ConstEntry, DType, LossFile, ParamTable, Setting, SettingValue};
use crate::optim::custom::UpdateProgram;
use crate::optim::groups::{ParamSettings, param_groups};
use crate::optim::settings::{GradSource, RunSettings, is_run_setting};
use crate::optim::spec::{OptimizerKind, OptimizerSpec, RawValue, SettingError};
use crate::optim::tricks::ChainOverride;

/// candle's dtype for ours.
pub fn candle_dtype(d: DType) -> CDType {
    match d {
        DType::F32 => CDType::F32,
        DType::F64 => CDType::F64,
        DType::F16 => CDType::F16,
        DType::BF16 => CDType::BF16,
    }
}

/// Consts set by name over the values a file gives them (a sweep point's).
pub type Consts = Vec<(String, f64)>;

/// One run a file defines: the base definition or a variant.
#[derive(Debug, Clone)]
pub struct RunDef {
    pub name: String,
    pub dtype: DType,
    pub plan: Plan,
    /// The file's `[optimizer]` with the variant's settings laid over it.
    pub optimizer: Vec<Setting>,
    /// The same settings, typed.
    pub settings: RunSettings,
    /// Per-param settings (the file's with the variant's laid over them), which every run of
    /// this definition steps its param groups with, whatever its optimizer.
    pub param_settings: Vec<ParamSettings>,
    /// The file's `[metrics]` over this run's program, stacked (None when it has none).
    pub metrics: Option<Plan>,
}

impl RunDef {
    /// The dtype its reductions and matmuls accumulate in (`accumulate = "f32"`), if it names one.
    pub fn accumulate(&self) -> Option<CDType> {
        self.optimizer
            .iter()
            .find(|s| s.key.node == "accumulate")
            .and_then(|s| match &s.value.node {
                SettingValue::Text(t) => DType::from_name(t).map(candle_dtype),
                _ => None,
            })
    }
}

/// A loss file ready to run.
#[derive(Debug, Clone)]
pub struct CompiledFile {
    pub file: Arc<LossFile>,
    pub data: Vec<Named>,
    pub params: Vec<Named>,
    pub runs: Vec<RunDef>,
    /// The optimizers written in the loss language that it may name, compiled for its params.
    pub optimizers: Vec<Arc<dyn UpdateProgram>>,
    /// Those of the `optimizers/` folders above it that do not compile for its params.
    pub unusable: Vec<Unusable>,
}

/// An optimizer of the loss language that does not compile for a file's params.
#[derive(Debug, Clone)]
pub struct Unusable {
    pub name: String,
    /// Its first error.
    pub why: Diagnostic,
}

impl CompiledFile {
    /// Whether run definition `def` minimises a loss of its own: a variant with its own loss
    /// program or consts (its values are not comparable with the base's).
    pub fn own_objective(&self, def: usize) -> bool {
        def > 0
            && self
                .file
                .variants
                .get(def - 1)
                .is_some_and(|v| v.loss.is_some() || !v.consts.is_empty())
    }

    /// A copy whose run definition `def` runs in `dtype`, as a run of it may (None when there is
    /// no such definition).
    pub fn in_dtype(&self, def: usize, dtype: DType) -> Option<CompiledFile> {
        let mut c = self.clone();
        c.runs.get_mut(def)?.dtype = dtype;
        Some(c)
    }

    /// The file compiled again with its random data and params drawn from `seed`, and each of
    /// `consts` set in every definition over its own value: one point of a sweep (this file
    /// itself when that changes nothing). An unknown const is an error, with the closest name as
    /// help.
    pub fn recompiled(
        &self,
        seed: u64,
        consts: &[(String, f64)],
    ) -> Result<CompiledFile, Vec<Diagnostic>> {
        if seed == self.file.seed && consts.is_empty() {
            return Ok(self.clone());
        }
        let mut file = (*self.file).clone();
        file.seed = seed;
        for (name, value) in consts {
            let entries = file
                .consts
                .iter_mut()
                .chain(file.variants.iter_mut().flat_map(|v| v.consts.iter_mut()))
                .filter(|c| c.name.node == *name);
            let mut found = false;
            for entry in entries {
                entry.value = *value;
                found = true;
            }
            if !found {
                let names = self.const_names();
                let help = crate::diagnostic::did_you_mean(name, names.iter().map(String::as_str))
                    .unwrap_or_else(|| match names.is_empty() {
                        true => "this file has no [consts]".into(),
                        false => format!("this file's consts: {}", names.join(", ")),
                    });
                return Err(vec![
                    Diagnostic::error(format!("no const named `{name}`")).help(help),
                ]);
            }
        }
        match compile(file) {
            (Some(compiled), _) => Ok(compiled),
            (None, diags) => Err(diags),
        }
    }

    /// Definition `def` with each of `consts` set over its value, for a run of this file that
    /// changes only consts (the TUI's sweep points): its data and initial params must stay as
    /// they are, since the run's other views (landscape, path, batch) share them with the file's
    /// runs. Errors name the const, or say that it changes the data or params.
    pub fn with_consts(&self, def: usize, consts: &[(String, f64)]) -> Result<RunDef, String> {
        let new = self
            .recompiled(self.file.seed, consts)
            .map_err(|d| d.first().map_or_else(String::new, Diagnostic::headline))?;
        if !self.same_values(&new) {
            let names: Vec<&str> = consts.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "{} changes the file's data or initial params: such a point runs in \
                 `gradscope sweep --const`, not as a run beside the file's",
                names.join(", ")
            ));
        }
        new.runs
            .get(def)
            .cloned()
            .ok_or_else(|| format!("no run definition {def}"))
    }

    /// Whether `other` (this file compiled again) has the same data and initial params, value
    /// for value: another seed of a file that draws nothing at random does.
    pub fn same_values(&self, other: &CompiledFile) -> bool {
        let same = |a: &[Named], b: &[Named]| {
            let values = |n: &Named| values_f64(&n.value).ok();
            a.len() == b.len()
                && a.iter().zip(b).all(|(a, b)| {
                    a.value.dims() == b.value.dims()
                        && values(a).is_some_and(|v| Some(v) == values(b))
                })
        };
        same(&self.data, &other.data) && same(&self.params, &other.params)
    }

    /// The names of its consts (the file's, then those only its variants set), for help texts.
    pub fn const_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let all = self.file.consts.iter();
        for c in all.chain(self.file.variants.iter().flat_map(|v| v.consts.iter())) {
            if !names.contains(&c.name.node) {
                names.push(c.name.node.clone());
            }
        }
        names
    }

    /// How many values the params hold in all (the dimension of param space).
    pub fn param_count(&self) -> usize {
        self.params.iter().map(|p| p.value.elem_count()).sum()
    }

    /// `spec` for this version of the file: one of its own optimizers becomes its current
    /// definition with the values of the hyper-parameters it still has (None when it is gone);
    /// any other stays as it is.
    pub fn rebind(&self, spec: &OptimizerSpec) -> Option<OptimizerSpec> {
        let OptimizerSpec::Custom(old) = spec else {
            return Some(spec.clone());
        };
        let mut new = OptimizerSpec::named(old.name(), &self.optimizers).ok()?;
        for (key, _) in &old.program().signature().hyper {
            if let (Some(v), Some(_)) = (old.get(key), new.get(key)) {
                new.set(key, RawValue::Number(v)).ok()?;
            }
        }
        Some(new)
    }

    /// Parses a spec typed for this file (`-o`, the TUI's editor): its own optimizers may be
    /// named too.
    pub fn spec(&self, text: &str) -> Result<ChainOverride, SettingError> {
        ChainOverride::parse_with(text, &self.optimizers).map_err(|e| {
            let name = text.split(['(', '+']).next().unwrap_or_default().trim();
            match self.unusable.iter().find(|u| u.name == name) {
                Some(u) => SettingError {
                    message: format!("optimizer `{name}` does not compile for this file's params"),
                    help: Some(u.why.headline()),
                },
                None => e,
            }
        })
    }
}

/// A warning at each const, data or initial param whose value the file gives or computes
/// non-finite (`c = inf`, `x = nan`, `log` of a negative in a data expression): a run reading it
/// starts from it, and the trace at run time can only say that the value came in that way.
fn nonfinite_values(file: &LossFile, data: &[Named], params: &[Named]) -> Vec<Diagnostic> {
    let consts = file
        .consts
        .iter()
        .chain(file.variants.iter().flat_map(|v| &v.consts));
    let mut out: Vec<Diagnostic> = consts
        .filter(|c| !c.value.is_finite())
        .map(|c| {
            Diagnostic::warning(format!("const `{}` is {}", c.name.node, c.value))
                .at(&file.source, c.name.span.clone())
                .label("every op that reads it gets this value")
                .help("a bound that is meant to be infinite is fine; otherwise give a finite value")
        })
        .collect();
    let named = data
        .iter()
        .map(|n| ("data", n))
        .chain(params.iter().map(|n| ("param", n)));
    for (what, n) in named {
        let Ok((bad, total)) = trace::nonfinite(&n.value) else {
            continue;
        };
        let Some(&first) = bad.first() else {
            continue;
        };
        let value = n
            .value
            .flatten_all()
            .and_then(|t| t.get(first)?.to_scalar::<f64>());
        let at = match n.value.rank() {
            0 => String::new(),
            _ => format!(", the first at flat index {first}"),
        };
        let whence = n
            .origin
            .as_deref()
            .map_or_else(String::new, |o| format!(" ({o})"));
        out.push(
            Diagnostic::warning(format!(
                "{what} `{}` has {} non-finite value{} of {}{at}: {}",
                n.name,
                bad.len(),
                if bad.len() == 1 { "" } else { "s" },
                total,
                value.unwrap_or(f64::NAN)
            ))
            .at(&file.source, n.span.clone())
            .label(format!("as the file gives or computes it{whence}"))
            .help(match what {
                "param" => "an initial value must be finite: every step starts from it",
                _ => "missing cells, or log/sqrt/division of values out of their domain: a run reading it starts from NaN or inf",
            }),
        );
    }
    out
}

/// A variant's consts that no loss, metric or function reads: only `[data]` and `[params]`
/// read them, computed once with the file's values, so the variant ran as the base did.
fn consts_read_only_once(file: &LossFile) -> Vec<Diagnostic> {
    let programs = std::iter::once(&file.loss).chain(file.variants.iter().flat_map(|v| &v.loss));
    let exprs = programs
        .flat_map(|p| {
            p.node
                .stmts
                .iter()
                .map(|s| &s.value)
                .chain([&p.node.result])
        })
        .chain(file.metrics.iter().map(|m| &m.value))
        .chain(
            file.functions
                .iter()
                .flat_map(|f| std::iter::once(&f.value).chain(&f.grads)),
        );
    let read: HashSet<String> = exprs.flat_map(data::free_names).collect();
    file.variants
        .iter()
        .flat_map(|v| v.consts.iter().map(move |c| (v, c)))
        .filter(|(_, c)| !read.contains(&c.name.node))
        .map(|(v, c)| {
            Diagnostic::warning(format!(
                "variant `{}` sets `{}`, which no loss, metric or function reads: [data] and [params] are computed once, with the file's value, so this run is the base's",
                v.name.node, c.name.node
            ))
            .at(&file.source, c.name.span.clone())
            .help(format!(
                "read `{}` in the loss, or give it with `gradscope run --const {}=...` or `sweep --const`, which compute the data again",
                c.name.node, c.name.node
            ))
        })
        .collect()
}

/// The `optimum` entries that do not fit their param (a value per element, all finite), as
/// warnings: the landscape and the pictures leave such an optimum out, and did so silently.
fn optimum_misfits(file: &LossFile, params: &[Named]) -> Vec<Diagnostic> {
    let entries = file.optimum.iter().flatten();
    entries
        .filter_map(|o| {
            let p = params.iter().find(|p| p.name == o.name.node)?;
            let want = p.value.elem_count();
            if o.fits(want) {
                return None;
            }
            let shape = Shape(p.value.dims().to_vec());
            let (message, help) = if o.value.len() != want {
                (
                    format!(
                        "`optimum` gives `{}` {} value{}; the param has {want} ({shape})",
                        o.name.node,
                        o.value.len(),
                        if o.value.len() == 1 { "" } else { "s" }
                    ),
                    "give one number per element, as the param's own value is written",
                )
            } else {
                (
                    format!("`optimum` gives `{}` a non-finite value", o.name.node),
                    "an optimum is a point the landscape marks: every value must be finite",
                )
            };
            Some(
                Diagnostic::warning(message)
                    .at(&file.source, o.name.span.clone())
                    .label("the landscape and the pictures leave the optimum out")
                    .help(help),
            )
        })
        .collect()
}

/// Compiles every run of a file. Returns the compiled file when there is no error, and all
/// diagnostics (warnings included) either way.
pub fn compile(file: LossFile) -> (Option<CompiledFile>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let values = data::evaluate(&file, &mut diags);
    let (Some(data), Some(params)) = (
        values.data.into_iter().collect::<Option<Vec<_>>>(),
        values.params.into_iter().collect::<Option<Vec<_>>>(),
    ) else {
        return (None, dedup(diags));
    };
    diags.extend(nonfinite_values(&file, &data, &params));
    diags.extend(optimum_misfits(&file, &params));
    diags.extend(consts_read_only_once(&file));
    let mut runs = Vec::new();
    let (optimizers, unusable) = optimizers(&file, &params, &mut diags);
    let functions = Arc::new(file.functions.clone());
    let mut base = RunSpec {
        name: "base".to_string(),
        loss: &file.loss,
        consts: file.consts.clone(),
        dtype: file.dtype,
        optimizer: file.optimizer.clone(),
        param_settings: file.param_settings.clone(),
        own_loss: false,
    };
    let variants: Vec<RunSpec> = file
        .variants
        .iter()
        .map(|v| RunSpec {
            name: v.name.node.clone(),
            loss: v.loss.as_ref().unwrap_or(&file.loss),
            consts: overlay(&file.consts, &v.consts, |c| &c.name.node),
            dtype: v.dtype.unwrap_or(file.dtype),
            optimizer: variant_optimizer(&file.optimizer, &v.optimizer),
            param_settings: overlay_tables(&file.param_settings, &v.param_settings),
            own_loss: v.loss.is_some(),
        })
        .collect();
    base.optimizer = file.optimizer.clone();
    for spec in std::iter::once(&base).chain(&variants) {
        let (plan, metrics, d) = lower_run(&file, &functions, spec, &data, &params);
        diags.extend(d);
        let settings = run_settings(&spec.optimizer, &optimizers);
        // Each value was checked on its own; torch also refuses some combinations.
        if let Err(c) = settings.optimizer.check_together() {
            let at = spec.optimizer.iter().find(|s| s.key.node == c.key);
            let span = at.map_or(0..0, |s| s.key.span.clone());
            diags.push(
                Diagnostic::error(c.error.message)
                    .at(&file.source, span)
                    .help_opt(c.error.help),
            );
        }
        diags.extend(finite_differences_too_many(
            &file.source,
            spec,
            &settings,
            &params,
        ));
        let param_settings = per_param(&spec.param_settings);
        diags.extend(check_groups(
            &file.source,
            spec,
            &settings,
            &param_settings,
            &params,
        ));
        if let Some(plan) = plan {
            runs.push(RunDef {
                name: spec.name.clone(),
                dtype: spec.dtype,
                plan,
                optimizer: spec.optimizer.clone(),
                settings,
                param_settings,
                metrics,
            });
        }
    }
    diags.extend(
        file.functions
            .iter()
            .filter_map(|f| function::verify(f, &file.source)),
    );
    let diags = dedup(diags);
    if diags.iter().any(Diagnostic::is_error) {
        return (None, diags);
    }
    let compiled = CompiledFile {
        file: Arc::new(file),
        data,
        params,
        runs,
        optimizers,
        unusable,
    };
    (Some(compiled), diags)
}

/// Most param values a run takes its gradient of by finite differences (`grad = "fd"`).
pub const FD_MAX_VALUES: usize = 10_000;

/// Why finite differences over `n` param values are refused, if they are: they take two
/// evaluations of the loss a value, each setting every value again, so a step grows with the
/// square of the params (a 1000x1000 param took about an hour a step; 100x100, 0.5 s).
pub fn finite_differences_refused(n: usize) -> Option<String> {
    (n > FD_MAX_VALUES).then(|| {
        format!(
            "finite differences over {n} param values need {} evaluations of the loss a step \
             (they are taken over at most {FD_MAX_VALUES} values)",
            2 * n
        )
    })
}

/// What to do instead of finite differences over too many values.
pub const FD_HELP: &str =
    "take gradients by autograd (drop `grad = \"fd\"` or `--grad fd`), or shrink the params";

/// [`finite_differences_refused`] for a run of the file, at its `grad` setting.
fn finite_differences_too_many(
    source: &Arc<SourceFile>,
    spec: &RunSpec,
    settings: &RunSettings,
    params: &[Named],
) -> Option<Diagnostic> {
    if settings.grad != GradSource::FiniteDifference {
        return None;
    }
    let why = finite_differences_refused(params.iter().map(|p| p.value.elem_count()).sum())?;
    let at = spec.optimizer.iter().find(|s| s.key.node == "grad");
    Some(
        Diagnostic::error(format!("run `{}`: {why}", spec.name))
            .at(source, at.map_or(0..0, |s| s.value.span.clone()))
            .label("finite differences")
            .help(FD_HELP),
    )
}

/// `[optimizer]` settings, typed; `own` are the optimizers of the loss language it may name.
fn run_settings(settings: &[Setting], own: &[Arc<dyn UpdateProgram>]) -> RunSettings {
    let table: Vec<_> = settings
        .iter()
        .map(|s| (s.key.node.as_str(), s.value.node.raw()))
        .collect();
    RunSettings::from_table_with(&table, own)
}

/// The optimizers of the loss language `file` may name, compiled for the shapes of `params`,
/// and the first error of each that does not compile for them. The errors of the file's own
/// tables are the file's; those of an inherited one only where the file names it.
fn optimizers(
    file: &LossFile,
    params: &[Named],
    diags: &mut Vec<Diagnostic>,
) -> (Vec<Arc<dyn UpdateProgram>>, Vec<Unusable>) {
    // Each shape once, with the params of it named (`b`, shape []).
    let mut shapes: Vec<(Vec<usize>, Vec<&str>)> = Vec::new();
    for p in params {
        match shapes.iter_mut().find(|(s, _)| s == p.value.dims()) {
            Some((_, names)) => names.push(&p.name),
            None => shapes.push((p.value.dims().to_vec(), vec![&p.name])),
        }
    }
    let shapes: Vec<(Vec<usize>, String)> = shapes
        .into_iter()
        .map(|(dims, names)| {
            let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            let label = format!("{} (shape {dims:?})", names.join(", "));
            (dims, label)
        })
        .collect();
    let settings: Vec<&Setting> = file
        .optimizer
        .iter()
        .chain(file.variants.iter().flat_map(|v| &v.optimizer))
        .collect();
    let mut compiled: Vec<Arc<dyn UpdateProgram>> = Vec::new();
    let mut unusable = Vec::new();
    for def in &file.optimizers {
        let (built, d) = optimizer::build(def, &shapes);
        let name = &def.name.node;
        let uses: Vec<&Setting> = settings
            .iter()
            .copied()
            .filter(|s| s.key.node == "name" && s.value.node == SettingValue::Text(name.clone()))
            .collect();
        let first_error = d.iter().find(|d| d.is_error()).cloned();
        if Arc::ptr_eq(&def.source, &file.source) {
            diags.extend(d);
        } else if !uses.is_empty() {
            diags.extend(d.into_iter().filter(Diagnostic::is_error));
            if built.is_none() {
                for u in &uses {
                    diags.push(
                        Diagnostic::error(format!(
                            "optimizer `{name}` does not compile for this file's params"
                        ))
                        .at(&file.source, u.value.span.clone())
                        .help(format!("its errors are in {}", def.source.path.display())),
                    );
                }
            }
        }
        match built {
            Some(b) => compiled.push(b),
            None => unusable.extend(first_error.map(|why| Unusable {
                name: name.clone(),
                why,
            })),
        }
    }
    (compiled, unusable)
}

struct RunSpec<'a> {
    name: String,
    loss: &'a crate::lang::ast::Spanned<crate::lang::ast::Program>,
    consts: Vec<ConstEntry>,
    dtype: DType,
    optimizer: Vec<Setting>,
    param_settings: Vec<ParamTable>,
    /// Whether the loss is a variant's own program rather than the file's.
    own_loss: bool,
}

/// `base` with entries of `over` replacing those of the same key.
fn overlay<T: Clone>(base: &[T], over: &[T], key: impl Fn(&T) -> &String) -> Vec<T> {
    let mut out: Vec<T> = base
        .iter()
        .filter(|b| !over.iter().any(|o| key(o) == key(b)))
        .cloned()
        .collect();
    out.extend(over.iter().cloned());
    out
}

/// A variant's `[optimizer]`: its keys laid over the file's, except that a variant naming
/// another optimizer keeps only the file's run settings (`steps`, the schedule, clipping, ...):
/// its optimizer starts from its own defaults, not from the other one's numbers (adam's
/// `eps = 0.5` is no rmsprop eps anyone asked for).
fn variant_optimizer(file: &[Setting], over: &[Setting]) -> Vec<Setting> {
    let name = |t: &[Setting]| {
        t.iter()
            .find(|s| s.key.node == "name")
            .map(|s| s.value.node.clone())
    };
    let default = || SettingValue::Text(OptimizerKind::Adam.name().to_string());
    let switched = name(over).is_some_and(|n| n != name(file).unwrap_or_else(default));
    if !switched {
        return overlay(file, over, |s| &s.key.node);
    }
    let kept: Vec<Setting> = file
        .iter()
        .filter(|s| is_run_setting(&s.key.node))
        .cloned()
        .collect();
    overlay(&kept, over, |s| &s.key.node)
}

/// The file's per-param tables with a variant's laid over them, param by param and key by key.
fn overlay_tables(base: &[ParamTable], over: &[ParamTable]) -> Vec<ParamTable> {
    let mut out: Vec<ParamTable> = base.to_vec();
    for t in over {
        match out.iter_mut().find(|b| b.param.node == t.param.node) {
            Some(b) => {
                b.settings = overlay(&b.settings, &t.settings, |s| &s.key.node);
                b.param = t.param.clone();
            }
            None => out.push(t.clone()),
        }
    }
    out
}

/// Per-param tables, typed.
fn per_param(tables: &[ParamTable]) -> Vec<ParamSettings> {
    tables
        .iter()
        .map(|t| {
            let table: Vec<_> = t
                .settings
                .iter()
                .map(|s| (s.key.node.as_str(), s.value.node.raw()))
                .collect();
            ParamSettings::from_table(&t.param.node, &table)
        })
        .collect()
}

/// What the run's optimizer refuses of its per-param settings (each key was checked on its own
/// against the file's optimizer; a variant may name another, and torch refuses combinations).
fn check_groups(
    source: &Arc<SourceFile>,
    spec: &RunSpec,
    settings: &RunSettings,
    per_param: &[ParamSettings],
    params: &[Named],
) -> Option<Diagnostic> {
    let names: Vec<String> = params.iter().map(|p| p.name.clone()).collect();
    let e = param_groups(&settings.optimizer, per_param, &names).err()?;
    let table = spec
        .param_settings
        .iter()
        .find(|t| t.param.node == e.param)?;
    // A conflict with a key of the run's (nesterov) lies in the param's own keys.
    let at = e.key.as_ref().and_then(|k| {
        let own = table.settings.iter().find(|s| s.key.node == *k);
        own.or(table.settings.first())
    });
    let span = at.map_or(table.param.span.clone(), |s| s.key.span.clone());
    let message = match spec.name.as_str() {
        "base" => e.error.message,
        variant => format!("{} (variant `{variant}`)", e.error.message),
    };
    Some(
        Diagnostic::error(message)
            .at(source, span)
            .help_opt(e.error.help),
    )
}

/// A run's loss plan and metrics plan.
fn lower_run(
    file: &LossFile,
    functions: &Arc<Vec<crate::lang::file::FunctionDef>>,
    spec: &RunSpec,
    data: &[Named],
    params: &[Named],
) -> (Option<Plan>, Option<Plan>, Vec<Diagnostic>) {
    let source = &file.source;
    let mut lw = Lowerer::new(source, file.seed, "loss").with_functions(Arc::clone(functions));
    for c in &spec.consts {
        if let Ok(t) = Tensor::new(c.value, &Device::Cpu) {
            lw.bind_known(&c.name.node, t, Kind::Const);
        }
    }
    for (i, d) in data.iter().enumerate() {
        lw.bind_data(&d.name, i, &d.value, d.span.clone());
    }
    for (j, p) in params.iter().enumerate() {
        let shape = Shape(p.value.dims().to_vec());
        lw.bind_input(&p.name, data.len() + j, Kind::Param, shape, p.span.clone());
    }
    for (i, n) in data.iter().chain(params).enumerate() {
        if let Some(origin) = &n.origin {
            lw.note_origin(i, &n.name, origin);
        }
    }
    let base_lines: HashSet<String> = file
        .loss
        .node
        .stmts
        .iter()
        .map(|s| s.name.node.clone())
        .collect();
    let variant = spec.own_loss.then(|| VariantLoss {
        name: &spec.name,
        base_lines: &base_lines,
    });
    let (plan, metrics, mut diags) = lw.program_with_metrics(spec.loss, &file.metrics, variant);
    if let Some(plan) = &plan {
        diags.extend(step_memory(plan, spec, data.len(), source));
        let reached = params_reaching_loss(plan, data.len());
        for (j, p) in params.iter().enumerate() {
            if !reached.contains(&j) {
                diags.push(
                    Diagnostic::warning(format!(
                        "param `{}` does not affect the loss of run `{}`; its gradient is always zero",
                        p.name, spec.name
                    ))
                    .at(source, p.span.clone())
                    .help("use it in the loss, or remove it"),
                );
            }
        }
    }
    (plan, metrics, diags)
}

/// An error when one step of run `spec` would need more memory than is free (an allocation
/// past it aborts the process, and every other file of a folder with it): each op's value, the
/// data once more in the run's dtype, each param with two optimizer moments, and twice the
/// gradient of every op that carries one (candle starts each from zeros and adds to it). The
/// caret is on the op that needs the most.
fn step_memory(
    plan: &Plan,
    spec: &RunSpec,
    n_data: usize,
    source: &Arc<SourceFile>,
) -> Option<Diagnostic> {
    let size = candle_dtype(spec.dtype).size_in_bytes() as u64;
    let one = |instr: &plan::Instr| {
        (instr.shape.elements().map_or(u64::MAX, |n| n as u64)).saturating_mul(size)
    };
    // Its value, a param's two moments besides.
    let bytes = |instr: &plan::Instr| match instr.op {
        Op::Input(i) if i >= n_data => one(instr).saturating_mul(3),
        _ => one(instr),
    };
    // Each op's value, and twice the gradient of those a param reaches through differentiable
    // ops.
    let carries = plan.carrying(|i| i >= n_data);
    let mut total = 0u64;
    for (k, instr) in plan.instrs.iter().enumerate() {
        let grads = if carries[k] { 2 } else { 0 };
        total = total
            .saturating_add(bytes(instr))
            .saturating_add(one(instr).saturating_mul(grads));
    }
    if total < crate::alloc::LARGE as u64 {
        return None;
    }
    let free = crate::alloc::free_memory()?;
    if total <= free {
        return None;
    }
    let largest = plan.instrs.iter().max_by_key(|i| bytes(i))?;
    Some(
        Diagnostic::error(format!(
            "a step of run `{}` would need about {} ({} values and gradients), more than the {} of memory free",
            spec.name,
            crate::format::gib(total),
            spec.dtype.name(),
            crate::format::gib(free)
        ))
        .at(source, largest.span.clone())
        .label(format!("the largest: {} ({})", largest.shape, crate::format::gib(bytes(largest))))
        .help("use smaller shapes, or a smaller dtype"),
    )
}

/// Params whose value flows into the output through differentiable ops.
fn params_reaching_loss(plan: &Plan, n_data: usize) -> HashSet<usize> {
    let mut seen = vec![false; plan.instrs.len()];
    let mut stack = vec![plan.output];
    let mut out = HashSet::new();
    while let Some(k) = stack.pop() {
        if std::mem::replace(&mut seen[k], true) {
            continue;
        }
        let instr = &plan.instrs[k];
        match instr.op {
            Op::Input(i) if i >= n_data => {
                out.insert(i - n_data);
            }
            ref op if op.passes_gradient() => stack.extend(&instr.args),
            _ => {}
        }
    }
    out
}

fn dedup(diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut seen = HashSet::new();
    diags
        .into_iter()
        .filter(|d| {
            seen.insert((
                d.message.clone(),
                d.span.clone(),
                d.file().map(|p| p.to_path_buf()),
            ))
        })
        .collect()
}

/// Evaluates one run's loss and gradients at the current param values. A clone shares the params.
#[derive(Clone)]
pub struct Evaluator {
    exec: Executable,
    data: Vec<Tensor>,
    params: Vec<Var>,
    source: Arc<SourceFile>,
    loss_span: Span,
    dtype: CDType,
    /// The file's metrics, stacked (see [`metrics`]), and their names.
    metrics: Option<Executable>,
    metric_names: Vec<String>,
}

/// Loss and gradients at one point, gradients detached from the graph and in the run's dtype.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub loss: f64,
    pub grads: Vec<Tensor>,
}

/// A tensor's elements in f64, flattened row-major.
pub fn values_f64(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(CDType::F64)?.flatten_all()?.to_vec1()
}

/// Each param's gradient in `store`, detached and passed through `each`; zeros for a param the
/// loss does not depend on (candle stores no gradient for it).
pub(crate) fn param_grads(
    store: &candle_core::backprop::GradStore,
    params: &[Var],
    each: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Vec<Tensor>> {
    params
        .iter()
        .map(|v| match store.get(v.as_tensor()) {
            Some(g) => each(&g.detach()),
            None => v.as_tensor().zeros_like(),
        })
        .collect()
}

/// L2 norm of a tensor, accumulated in f64 (see [`crate::optim::kernels::norm`]).
pub fn norm(t: &Tensor) -> f64 {
    crate::optim::kernels::norm(t, None).unwrap_or(f64::NAN)
}

/// L2 norm of `a - b` (the difference taken in their dtype), accumulated as [`norm`] does.
pub fn distance(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    crate::optim::kernels::norm(a, Some(b))
}

impl Evaluator {
    /// Prepares run `run` of `compiled` in its definition's dtype, with params at their initial
    /// values.
    pub fn new(compiled: &CompiledFile, run: usize) -> candle_core::Result<Self> {
        Self::with_dtype(compiled, run, compiled.runs[run].dtype)
    }

    /// [`Evaluator::new`] in `dtype`: a run's own, which need not be its definition's.
    pub fn with_dtype(
        compiled: &CompiledFile,
        run: usize,
        dtype: DType,
    ) -> candle_core::Result<Self> {
        let def = &compiled.runs[run];
        let dtype = candle_dtype(dtype);
        let accumulate = def.accumulate();
        let n_data = compiled.data.len();
        let exec = Executable::new(def.plan.clone(), dtype, accumulate)?.with_regions(n_data);
        let metrics = def
            .metrics
            .clone()
            .map(|p| Executable::new(p, dtype, accumulate).map(|e| e.with_regions(n_data)))
            .transpose()?;
        let data = compiled
            .data
            .iter()
            .map(|d| d.value.to_dtype(dtype))
            .collect::<candle_core::Result<_>>()?;
        let params = compiled
            .params
            .iter()
            .map(|p| Var::from_tensor(&p.value.to_dtype(dtype)?))
            .collect::<candle_core::Result<_>>()?;
        let out = &def.plan.instrs[def.plan.output];
        Ok(Self {
            exec,
            data,
            params,
            source: Arc::clone(&compiled.file.source),
            loss_span: out.span.clone(),
            dtype,
            metrics,
            metric_names: compiled.metric_names(),
        })
    }

    /// A copy with params of its own at the same values (a clone shares them): stepping it
    /// leaves this one where it is.
    pub fn detached(&self) -> candle_core::Result<Self> {
        let params = self
            .params
            .iter()
            .map(|v| Var::from_tensor(&v.as_tensor().copy()?))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            params,
            ..self.clone()
        })
    }

    /// The params it differentiates with respect to.
    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// Whether its loss takes a large sum of squares as one op, which batched lanes do not.
    pub fn fuses_squares(&self) -> bool {
        self.exec.fuses_squares()
    }

    /// The dtype it evaluates in.
    pub fn dtype(&self) -> CDType {
        self.dtype
    }

    /// The loss tensor at the current params, with its graph.
    pub(crate) fn forward(&self) -> Result<Tensor, Diagnostic> {
        let mut inputs: Vec<&Tensor> = self.data.iter().collect();
        inputs.extend(self.params.iter().map(|v| v.as_tensor()));
        self.exec.run(&inputs).map_err(|e| {
            Diagnostic::error(format!("evaluation failed: {}", e.error))
                .at(&self.source, e.span)
                .help("this is a gradscope bug: the shapes were checked, so please report it")
        })
    }

    /// The loss alone, without building gradients.
    pub fn loss(&self) -> Result<f64, Diagnostic> {
        let out = self.forward()?;
        scalar(&out).map_err(|e| self.internal(e))
    }

    /// Loss and every param's gradient (zeros for params the loss does not depend on).
    pub fn evaluate(&self) -> Result<Evaluation, Diagnostic> {
        let out = self.forward()?;
        let loss = scalar(&out).map_err(|e| self.internal(e))?;
        let store = out.backward().map_err(|e| self.internal(e))?;
        let grads =
            param_grads(&store, &self.params, |g| Ok(g.clone())).map_err(|e| self.internal(e))?;
        Ok(Evaluation { loss, grads })
    }

    /// Loss and gradients with the loss multiplied by `scale` before the backward pass (so small
    /// gradients do not flush to zero in f16), the gradients divided by it again in f32.
    pub fn evaluate_scaled(&self, scale: f64) -> Result<Evaluation, Diagnostic> {
        let internal = |e| self.internal(e);
        let out = self.forward()?;
        let loss = scalar(&out).map_err(internal)?;
        let store = out
            .affine(scale, 0.0)
            .and_then(|s| s.backward())
            .map_err(internal)?;
        // f16/bf16 gradients unscale in f32 (they may be past their range before it), the
        // others in their own dtype, where a power-of-two scale is exact.
        let grads = param_grads(&store, &self.params, |g| match self.dtype {
            CDType::F16 | CDType::BF16 => g
                .to_dtype(CDType::F32)?
                .affine(1.0 / scale, 0.0)?
                .to_dtype(self.dtype),
            _ => g.affine(1.0 / scale, 0.0),
        })
        .map_err(internal)?;
        Ok(Evaluation { loss, grads })
    }

    /// Loss and gradients by central finite differences in the run's dtype, two forward passes
    /// per param element, with the step `eps^(1/3) max(1, |x|)` for the dtype's machine epsilon
    /// (the usual balance of truncation against rounding error).
    pub fn evaluate_fd(&self) -> Result<Evaluation, Diagnostic> {
        let internal = |e| self.internal(e);
        let loss = self.loss()?;
        let eps: f64 = match self.dtype {
            CDType::F64 => f64::EPSILON,
            CDType::F16 => 9.77e-4,
            CDType::BF16 => 7.81e-3,
            _ => f64::from(f32::EPSILON),
        };
        let mut grads = Vec::with_capacity(self.params.len());
        for var in &self.params {
            let t = var.as_tensor();
            let dims = t.dims().to_vec();
            let x = values_f64(t).map_err(internal)?;
            let set = |v: &[f64]| -> Result<(), Diagnostic> {
                let t = Tensor::from_vec(v.to_vec(), dims.clone(), &Device::Cpu)
                    .and_then(|t| t.to_dtype(self.dtype))
                    .map_err(internal)?;
                var.set(&t).map_err(internal)
            };
            let mut g = Vec::with_capacity(x.len());
            let mut probe = x.clone();
            for k in 0..x.len() {
                let h = eps.cbrt() * x[k].abs().max(1.0);
                probe[k] = x[k] + h;
                set(&probe)?;
                let up = self.loss()?;
                probe[k] = x[k] - h;
                set(&probe)?;
                let down = self.loss()?;
                probe[k] = x[k];
                g.push((up - down) / (2.0 * h));
            }
            set(&x)?;
            grads.push(
                Tensor::from_vec(g, dims, &Device::Cpu)
                    .and_then(|t| t.to_dtype(self.dtype))
                    .map_err(internal)?,
            );
        }
        Ok(Evaluation { loss, grads })
    }

    /// Sets every param from one flat vector (params in order, each row-major), as landscapes
    /// and line searches address points in param space.
    pub fn set_flat(&self, flat: &[f64]) -> Result<(), Diagnostic> {
        let mut at = 0;
        for var in &self.params {
            let dims = var.as_tensor().dims().to_vec();
            let n = var.as_tensor().elem_count();
            let values = flat.get(at..at + n).ok_or_else(|| {
                Diagnostic::error(format!("a point of {} values for more params", flat.len()))
            })?;
            at += n;
            Tensor::from_slice(values, dims, &Device::Cpu)
                .and_then(|t| t.to_dtype(self.dtype))
                .and_then(|t| var.set(&t))
                .map_err(|e| self.internal(e))?;
        }
        Ok(())
    }

    /// The loss at `points` points in one pass, when the loss batches (see [`batch`]).
    pub fn batched(&self, points: usize) -> Option<BatchEvaluator> {
        let n_data = self.data.len();
        let plan = batch::batch_plan(self.exec.plan(), n_data, points)?;
        Some(BatchEvaluator {
            exec: self.exec.with_shapes(plan),
            data: self.data.clone(),
            dims: self.params.iter().map(|v| v.dims().to_vec()).collect(),
            points,
            dtype: self.dtype,
            source: Arc::clone(&self.source),
            loss_span: self.loss_span.clone(),
        })
    }

    fn internal(&self, e: candle_core::Error) -> Diagnostic {
        Diagnostic::error(format!("evaluation failed: {e}"))
            .at(&self.source, self.loss_span.clone())
    }

    /// Where the current params' first non-finite value comes from (forward or backward), or
    /// None when every value and gradient is finite.
    pub fn trace(&self) -> Result<Option<trace::Provenance>, Diagnostic> {
        let mut inputs: Vec<&Tensor> = self.data.iter().collect();
        inputs.extend(self.params.iter().map(|v| v.as_tensor()));
        trace::trace(&self.exec, &self.source, &inputs).map_err(|e| self.internal(e))
    }

    /// Ops whose outputs overflowed, flushed to zero or went subnormal in this run's dtype.
    pub fn precision(&self) -> Result<Vec<trace::PrecisionStats>, Diagnostic> {
        let mut inputs: Vec<&Tensor> = self.data.iter().collect();
        inputs.extend(self.params.iter().map(|v| v.as_tensor()));
        trace::precision(&self.exec, &self.source, &inputs).map_err(|e| self.internal(e))
    }

    /// The loss file's source, for locating reports.
    pub fn source(&self) -> &Arc<SourceFile> {
        &self.source
    }

    /// The span of the loss expression, for reports about the loss value.
    pub fn loss_span(&self) -> Span {
        self.loss_span.clone()
    }
}

/// A loss evaluated at a fixed number of points at once.
pub struct BatchEvaluator {
    exec: Executable,
    data: Vec<Tensor>,
    dims: Vec<Vec<usize>>,
    points: usize,
    dtype: CDType,
    source: Arc<SourceFile>,
    loss_span: Span,
}

impl BatchEvaluator {
    /// The loss at each of `points` (each a flat param vector); exactly as many as it was built
    /// for.
    pub fn losses(&self, points: &[Vec<f64>]) -> Result<Vec<f64>, Diagnostic> {
        let internal = |e: candle_core::Error| {
            Diagnostic::error(format!("batched evaluation failed: {e}"))
                .at(&self.source, self.loss_span.clone())
        };
        if points.len() != self.points {
            return Err(Diagnostic::error(format!(
                "{} points for a batch of {}",
                points.len(),
                self.points
            )));
        }
        let mut inputs: Vec<Tensor> = self.data.clone();
        let mut at = 0;
        for dims in &self.dims {
            let n: usize = dims.iter().product();
            // Row r holds element r of this param at every point: `[n, G]`, or `[G]` for a scalar.
            let mut values = Vec::with_capacity(n * self.points);
            for r in 0..n {
                values.extend(
                    points
                        .iter()
                        .map(|p| p.get(at + r).copied().unwrap_or(f64::NAN)),
                );
            }
            at += n;
            let shape = if dims.is_empty() {
                vec![self.points]
            } else {
                vec![n, self.points]
            };
            inputs.push(
                Tensor::from_vec(values, shape, &Device::Cpu)
                    .and_then(|t| t.to_dtype(self.dtype))
                    .map_err(internal)?,
            );
        }
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let out = self.exec.run(&refs).map_err(|e| internal(e.error))?;
        values_f64(&out).map_err(internal)
    }
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(CDType::F64)?.to_scalar::<f64>()
}
