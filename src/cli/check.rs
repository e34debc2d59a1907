//! `gradscope list` and `gradscope check`: load every file, compile every run, and (for check)
//! take one forward and backward pass at the initial params. One bad file never stops the others.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};

use crate::compile::{self, CompiledFile, Evaluator, norm};
use crate::diagnostic::Diagnostic;
use crate::format::{columns, describe, fmt_num, json_num, pad};
use crate::load::{self, LoadedFile, discover_with_optimizers};
use crate::run::RunRequest;

/// A run's loss and gradients at the initial params.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub name: String,
    pub dtype: &'static str,
    pub loss: f64,
    pub params: Vec<ParamReport>,
    /// The file's `[metrics]` at the initial params, by name.
    pub metrics: Vec<(String, f64)>,
}

/// One param's gradient at the initial params.
#[derive(Debug, Clone)]
pub struct ParamReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub grad: Vec<f64>,
    pub grad_norm: f64,
}

/// Everything known about one file: as loaded, plus each run's numbers when evaluated.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub file: LoadedFile,
    pub runs: Vec<RunReport>,
}

impl FileReport {
    /// Whether no diagnostic of the file, loading or evaluating it, is an error.
    pub fn ok(&self) -> bool {
        self.file.ok()
    }
}

/// Loads and compiles a file; with `evaluate`, also runs every run once forward and backward.
pub fn check_file(path: &Path, evaluate: bool) -> FileReport {
    let mut report = FileReport {
        file: load::load(path),
        runs: Vec::new(),
    };
    if let (true, Some(compiled)) = (evaluate, &report.file.compiled) {
        for run in 0..compiled.runs.len() {
            match evaluate_run(compiled, run) {
                Ok((r, warnings)) => {
                    report.file.diagnostics.extend(warnings);
                    report.runs.push(r);
                }
                Err(d) => report.file.diagnostics.push(d),
            }
        }
    }
    report
}

fn evaluate_run(
    compiled: &CompiledFile,
    run: usize,
) -> Result<(RunReport, Vec<Diagnostic>), Diagnostic> {
    let def = &compiled.runs[run];
    let source = &compiled.file.source;
    let ev = Evaluator::new(compiled, run).map_err(|e| {
        Diagnostic::error(format!("cannot prepare run `{}`: {e}", def.name)).in_file(&source.path)
    })?;
    let eval = ev.evaluate()?;
    let origin = || ev.trace().ok().flatten();
    if !eval.loss.is_finite() {
        let headline = format!(
            "the loss of run `{}` is {} at the initial params",
            def.name,
            describe(eval.loss)
        );
        return Err(match origin() {
            Some(p) => {
                let mut d = p.diagnostic(source, None);
                d.message = format!("{headline}; {}", d.message);
                d
            }
            None => Diagnostic::error(headline)
                .at(source, ev.loss_span())
                .label("this evaluates to a non-finite value")
                .help(
                    "look for log of 0, division by 0 or overflow; add an eps or use a stable form",
                ),
        });
    }
    let mut warnings = Vec::new();
    let mut params = Vec::new();
    for (p, g) in compiled.params.iter().zip(&eval.grads) {
        let grad = compile::values_f64(g).unwrap_or_default();
        let bad = grad.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            if warnings.is_empty()
                && let Some(p) = origin()
            {
                let mut d = p.diagnostic(source, None);
                d.severity = crate::diagnostic::Severity::Warning;
                d.message = format!("in run `{}`, {}", def.name, d.message);
                warnings.push(d);
            }
            warnings.push(
                Diagnostic::warning(format!(
                    "the gradient of `{}` in run `{}` has {bad} non-finite of {} values at the initial params",
                    p.name,
                    def.name,
                    grad.len()
                ))
                .at(source, p.span.clone())
                .help("a sqrt or log at 0, or an overflow, in the backward pass"),
            );
        }
        params.push(ParamReport {
            name: p.name.clone(),
            shape: p.value.dims().to_vec(),
            grad_norm: norm(g),
            grad,
        });
    }
    // An optimizer that cannot take these params (sm3 on a scalar) refuses at the run's start:
    // that is an error here too, not an ok.
    if let Some(request) = RunRequest::of(compiled, run) {
        request.start(compiled)?;
    }
    let metrics = ev
        .metric_names()
        .iter()
        .cloned()
        .zip(ev.metrics()?)
        .collect();
    let report = RunReport {
        name: def.name.clone(),
        dtype: def.dtype.name(),
        loss: eval.loss,
        params,
        metrics,
    };
    Ok((report, warnings))
}

/// Reports for every file under `paths` (the files of `optimizers/` folders checked as such), in
/// order, plus diagnostics for paths that don't exist.
pub fn check_all(paths: &[PathBuf], evaluate: bool) -> (Vec<FileReport>, Vec<Diagnostic>) {
    let (files, missing) = discover_with_optimizers(paths);
    (
        files.iter().map(|f| check_file(f, evaluate)).collect(),
        missing,
    )
}

/// `gradscope check`: returns whether every file is free of errors.
pub fn check(
    paths: &[PathBuf],
    json: bool,
    color: bool,
    out: &mut impl Write,
) -> std::io::Result<bool> {
    let start = Instant::now();
    let (reports, missing) = check_all(paths, true);
    for d in &missing {
        // A path that is not there is a line of its own in JSON too, never text in the stream.
        match json {
            true => writeln!(
                out,
                "{}",
                json!({
                    "file": d.file().map(|p| p.display().to_string()),
                    "ok": false,
                    "diagnostics": [d.to_json()],
                })
            )?,
            false => write!(out, "{}", d.render(color))?,
        }
    }
    for r in &reports {
        if json {
            writeln!(out, "{}", check_json(r))?;
        } else {
            write_check(r, color, out)?;
        }
    }
    let bad = reports.iter().filter(|r| !r.ok()).count();
    if !json && !reports.is_empty() {
        let not_found = match missing.len() {
            0 => String::new(),
            1 => "; 1 path not found".into(),
            n => format!("; {n} paths not found"),
        };
        writeln!(
            out,
            "{} file{}: {} ok, {bad} with errors{not_found} ({:.2} s)",
            reports.len(),
            if reports.len() == 1 { "" } else { "s" },
            reports.len() - bad,
            start.elapsed().as_secs_f64()
        )?;
    }
    Ok(bad == 0 && missing.is_empty())
}

fn write_check(r: &FileReport, color: bool, out: &mut impl Write) -> std::io::Result<()> {
    let status = if r.ok() { "ok" } else { "error" };
    let name = r.file.name.as_deref().unwrap_or("?");
    writeln!(out, "{status:5} {}  {name}", r.file.path.display())?;
    let width = r
        .runs
        .iter()
        .map(|run| columns(&run.name))
        .max()
        .unwrap_or(0);
    for run in &r.runs {
        let grads: Vec<String> = run
            .params
            .iter()
            .map(|p| format!("|∇{}| {}", p.name, fmt_num(p.grad_norm)))
            .chain(
                run.metrics
                    .iter()
                    .map(|(n, v)| format!("{n} {}", fmt_num(*v))),
            )
            .collect();
        writeln!(
            out,
            "      {} {:<4} loss {:<12} {}",
            pad(&run.name, width),
            run.dtype,
            fmt_num(run.loss),
            grads.join("  ")
        )?;
    }
    for d in &r.file.diagnostics {
        write!(out, "{}", d.render(color))?;
    }
    Ok(())
}

fn run_json(run: &RunReport) -> Value {
    let params: serde_json::Map<String, Value> = run
        .params
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                json!({"shape": p.shape, "grad": p.grad.iter().map(|&g| json_num(g)).collect::<Vec<_>>(), "grad_norm": json_num(p.grad_norm)}),
            )
        })
        .collect();
    json!({
        "name": run.name, "dtype": run.dtype, "loss": json_num(run.loss), "params": params,
        "metrics": crate::run::metrics::metrics_json(&run.metrics),
    })
}

fn check_json(r: &FileReport) -> Value {
    let mut obj = json!({
        "file": r.file.path.display().to_string(),
        "name": r.file.name,
        "ok": r.ok(),
        "diagnostics": r.file.diagnostics.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
    });
    if let Some(base) = r.runs.first() {
        let b = run_json(base);
        obj["loss"] = b["loss"].clone();
        obj["params"] = b["params"].clone();
        obj["metrics"] = b["metrics"].clone();
        obj["variants"] = r.runs[1..].iter().map(run_json).collect();
    }
    obj
}

/// `gradscope list`: returns whether every file is free of errors. Each run is evaluated once,
/// as `check` does, so a file whose loss is NaN at its start is not listed as ok.
pub fn list(
    paths: &[PathBuf],
    json: bool,
    color: bool,
    out: &mut impl Write,
) -> std::io::Result<bool> {
    let (reports, missing) = check_all(paths, true);
    for d in &missing {
        write!(out, "{}", d.render(color))?;
    }
    let rows: Vec<[String; 5]> = reports
        .iter()
        .map(|r| {
            let (params, variants) = match &r.file.compiled {
                Some(c) => (
                    c.params
                        .iter()
                        .map(|p| format!("{}{:?}", p.name, p.value.dims()))
                        .collect::<Vec<_>>()
                        .join(" "),
                    crate::format::cut(
                        &c.runs[1..]
                            .iter()
                            .map(|v| v.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        60,
                    ),
                ),
                None => (String::new(), String::new()),
            };
            let status = match r.file.first_error() {
                None => "ok".to_string(),
                Some(d) => d.headline(),
            };
            [
                r.file.path.display().to_string(),
                r.file.name.clone().unwrap_or_default(),
                params,
                variants,
                status,
            ]
        })
        .collect();
    if json {
        for (r, row) in reports.iter().zip(&rows) {
            let params: serde_json::Map<String, Value> = r
                .file
                .compiled
                .iter()
                .flat_map(|c| &c.params)
                .map(|p| (p.name.clone(), json!({"shape": p.value.dims()})))
                .collect();
            let variants: Vec<&str> = r
                .file
                .compiled
                .iter()
                .flat_map(|c| &c.runs[1..])
                .map(|v| v.name.as_str())
                .collect();
            let obj = json!({
                "file": row[0], "name": r.file.name, "ok": r.ok(), "params": params,
                "variants": variants,
                "diagnostics": r.file.diagnostics.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
            });
            writeln!(out, "{obj}")?;
        }
    } else {
        let header = ["FILE", "NAME", "PARAMS", "VARIANTS", "STATUS"].map(String::from);
        let rows: Vec<Vec<String>> = rows.iter().map(|r| r.to_vec()).collect();
        write!(out, "{}", super::run::aligned(&header, &rows))?;
    }
    Ok(reports.iter().all(FileReport::ok) && missing.is_empty())
}
