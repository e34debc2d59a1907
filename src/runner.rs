//! `gradscope run` and `gradscope bench`: the headless front end over the run engine.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};

use crate::check::{fmt_num, json_num};
use crate::compile::{self, CompiledFile};
use crate::diagnostic::Diagnostic;
use crate::lang::file::{self, DType};
use crate::optim::spec::OptimizerSpec;
use crate::run::history::{StepRecord, flags};
use crate::run::{NonFinitePolicy, Run, RunConfig};

/// Output format of `gradscope run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Jsonl,
}

/// Which runs to step and how: shared by `run`, `landscape` and `plot`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOptions {
    /// The loss file.
    pub file: PathBuf,
    /// Optimizer spec, e.g. `adam` or `sgd(lr=0.01, momentum=0.9)`; repeat for several runs.
    #[arg(short = 'o', long = "optimizer")]
    pub optimizers: Vec<String>,
    /// Variant to run (`base`, a variant's name, or `all`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Number of steps (default: the file's `steps`, else 100).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Run in this dtype instead of the file's (f32, f64, f16, bf16).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// What to do when the loss, a gradient or an update is NaN/Inf: stop, skip or continue.
    #[arg(long)]
    pub on_nonfinite: Option<String>,
    /// Where gradients come from: autograd, or fd (central finite differences).
    #[arg(long)]
    pub grad: Option<String>,
}

/// Everything `gradscope run` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub run: RunOptions,
    /// Log every K-th step (default: every step for csv/jsonl, a tenth of the run for table).
    #[arg(long)]
    pub every: Option<u64>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write the log to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A finished run's summary.
#[derive(Debug, Clone)]
pub struct Summary {
    pub run: String,
    pub optimizer: String,
    pub dtype: &'static str,
    pub steps: u64,
    pub final_loss: f64,
    pub best_loss: f64,
    pub best_step: Option<u64>,
    pub first_nonfinite_step: Option<u64>,
    pub clipped: u64,
    pub skipped: u64,
    pub halted: Option<String>,
    pub steps_per_s: f64,
    pub final_params: Vec<(String, Vec<f64>)>,
}

/// Loads and compiles a file, or returns its diagnostics.
pub fn load_compiled(path: &Path) -> Result<(CompiledFile, Vec<Diagnostic>), Vec<Diagnostic>> {
    let loaded = file::load(path);
    let mut diags = loaded.diagnostics;
    let Some(f) = loaded.file else {
        return Err(diags);
    };
    let (compiled, d) = compile::compile(f);
    diags.extend(d);
    match compiled {
        Some(c) => Ok((c, diags)),
        None => Err(diags),
    }
}

/// The run definitions `variant` names (`base`, a name, `all`; none: `default_all` decides),
/// after setting every run's dtype to `dtype` if given.
fn select(
    compiled: &mut CompiledFile,
    variant: Option<&str>,
    dtype: Option<&str>,
    default_all: bool,
) -> Result<Vec<usize>, String> {
    if let Some(d) = dtype {
        let dt = DType::from_name(d)
            .ok_or_else(|| format!("unknown dtype `{d}`: use f32, f64, f16 or bf16"))?;
        compiled.runs.iter_mut().for_each(|r| r.dtype = dt);
    }
    let all = (0..compiled.runs.len()).collect();
    match variant {
        Some("all") => Ok(all),
        None if default_all => Ok(all),
        None | Some("base") => Ok(vec![0]),
        Some(name) => match compiled.runs.iter().position(|r| r.name == name) {
            Some(i) => Ok(vec![i]),
            None => {
                let names: Vec<&str> = compiled.runs.iter().map(|r| r.name.as_str()).collect();
                Err(format!(
                    "no variant named `{name}`; this file has: {}",
                    names.join(", ")
                ))
            }
        },
    }
}

/// The runs `args` asks for, each with its config, ready to step.
pub fn build_runs(args: &RunOptions, compiled: &mut CompiledFile) -> Result<Vec<Run>, String> {
    let selected = select(
        compiled,
        args.variant.as_deref(),
        args.dtype.as_deref(),
        false,
    )?;
    let specs: Vec<Option<OptimizerSpec>> = if args.optimizers.is_empty() {
        vec![None]
    } else {
        args.optimizers
            .iter()
            .map(|s| {
                OptimizerSpec::parse(s).map(Some).map_err(|e| match e.help {
                    Some(h) => format!("{} ({h})", e.message),
                    None => e.message,
                })
            })
            .collect::<Result<_, _>>()?
    };
    let policy = match args.on_nonfinite.as_deref() {
        None => None,
        Some(p) => Some(
            NonFinitePolicy::parse(p)
                .ok_or_else(|| format!("unknown policy `{p}`: use stop, skip or continue"))?,
        ),
    };
    let mut runs = Vec::new();
    for &i in &selected {
        for spec in &specs {
            let def = &compiled.runs[i];
            let mut config = RunConfig::from_settings(&def.optimizer);
            if let Some(s) = spec {
                config.optimizer = s.clone();
            }
            if let Some(n) = args.steps {
                config.steps = n;
            }
            if args.clip_norm.is_some() {
                config.clip_norm = args.clip_norm;
            }
            if let Some(p) = policy {
                config.on_nonfinite = p;
            }
            match args.grad.as_deref() {
                None => {}
                Some("autograd") => config.grad = crate::run::GradSource::Autograd,
                Some("fd") => config.grad = crate::run::GradSource::FiniteDifference,
                Some(g) => {
                    return Err(format!("unknown gradient source `{g}`: use autograd or fd"));
                }
            }
            let name = match spec {
                Some(s) if selected.len() > 1 => format!("{} · {s}", def.name),
                Some(s) => s.to_string(),
                None => def.name.clone(),
            };
            let run = Run::new(compiled, i, name, config).map_err(|e| e.to_string())?;
            runs.push(run);
        }
    }
    Ok(runs)
}

/// Steps one run to its end, calling `log` for every step; returns the summary.
pub fn drive(run: &mut Run, mut log: impl FnMut(&Run, &StepRecord)) -> Result<Summary, Diagnostic> {
    let started = Instant::now();
    while !run.is_done() {
        let record = run.step()?;
        log(run, &record);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cores = run.history().cores();
    let best = cores
        .iter()
        .enumerate()
        .filter(|(_, c)| c.loss.is_finite())
        .min_by(|a, b| a.1.loss.total_cmp(&b.1.loss));
    let first_nonfinite = cores
        .iter()
        .position(|c| c.flags & flags::NONFINITE != 0)
        .map(|s| s as u64);
    let final_loss = if run.halted.is_some() {
        cores.last().map_or(f64::NAN, |c| c.loss)
    } else {
        run.current_loss()?
    };
    Ok(Summary {
        run: run.name.clone(),
        optimizer: run.config.optimizer.to_string(),
        dtype: run.dtype.name(),
        steps: run.step_count(),
        final_loss,
        // The params after the last step count too: their loss is the final one.
        best_loss: best
            .map_or(f64::NAN, |(_, c)| c.loss)
            .min(if final_loss.is_finite() {
                final_loss
            } else {
                f64::INFINITY
            }),
        best_step: match best {
            Some((_, c)) if final_loss < c.loss => Some(run.step_count()),
            other => other.map(|(s, _)| s as u64),
        },
        first_nonfinite_step: first_nonfinite,
        clipped: run.clipped,
        skipped: run.skipped,
        halted: run
            .halted
            .as_ref()
            .map(|h| format!("halted at step {}: {}", h.step, h.reason)),
        steps_per_s: run.step_count() as f64 / elapsed.max(1e-9),
        final_params: run
            .param_names()
            .iter()
            .cloned()
            .zip(run.param_values())
            .collect(),
    })
}

/// One logged step of run `run` (whose params are `names`) as a JSON object.
pub fn step_json(run: &str, names: &[String], r: &StepRecord) -> Value {
    let per = |v: &[f32]| -> serde_json::Map<String, Value> {
        names
            .iter()
            .cloned()
            .zip(v.iter().map(|&x| json_num(x as f64)))
            .collect()
    };
    let bad: Vec<&String> = r.nonfinite_params().map(|i| &names[i]).collect();
    json!({
        "run": run, "step": r.step, "loss": json_num(r.core.loss), "grad_norm": json_num(r.core.grad_norm as f64),
        "lr": json_num(r.core.lr as f64), "update_norm": json_num(r.core.update_norm as f64),
        "update_ratio": json_num(r.core.update_ratio as f64), "clipped": r.has(flags::CLIPPED),
        "skipped": r.has(flags::SKIPPED), "nonfinite_loss": r.has(flags::LOSS_NONFINITE),
        "nonfinite_update": r.has(flags::UPDATE_NONFINITE),
        "nonfinite_grads": bad, "grad_norms": per(&r.param_grad_norms), "param_norms": per(&r.param_norms),
        "wall_us": r.core.wall_us, "loss_scale": 2f64.powi(i32::from(r.core.loss_scale_log2)),
    })
}

/// A run's summary as a JSON object.
pub fn summary_json(s: &Summary) -> Value {
    let params: serde_json::Map<String, Value> = s
        .final_params
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Value::Array(v.iter().map(|&x| json_num(x)).collect()),
            )
        })
        .collect();
    json!({
        "run": s.run, "summary": true, "optimizer": s.optimizer, "dtype": s.dtype,
        "final_loss": json_num(s.final_loss), "best_loss": json_num(s.best_loss), "best_step": s.best_step,
        "steps": s.steps, "first_nonfinite_step": s.first_nonfinite_step, "clipped": s.clipped,
        "skipped": s.skipped, "halted": s.halted, "steps_per_s": s.steps_per_s, "final_params": params,
    })
}

/// The CSV header for a file whose params are `names`.
pub fn csv_header(names: &[String]) -> String {
    let mut cols = vec![
        "run",
        "step",
        "loss",
        "grad_norm",
        "lr",
        "update_norm",
        "update_ratio",
        "clipped",
        "skipped",
        "nonfinite_loss",
        "nonfinite_update",
        "nonfinite_grads",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    cols.extend(names.iter().map(|n| format!("grad_norm_{n}")));
    cols.join(",")
}

/// One logged step as a CSV row matching [`csv_header`].
pub fn csv_row(run: &str, names: &[String], r: &StepRecord) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let bad: Vec<&str> = r.nonfinite_params().map(|i| names[i].as_str()).collect();
    let mut cells = vec![
        quote(run),
        r.step.to_string(),
        r.core.loss.to_string(),
        r.core.grad_norm.to_string(),
        r.core.lr.to_string(),
        r.core.update_norm.to_string(),
        r.core.update_ratio.to_string(),
        r.has(flags::CLIPPED).to_string(),
        r.has(flags::SKIPPED).to_string(),
        r.has(flags::LOSS_NONFINITE).to_string(),
        r.has(flags::UPDATE_NONFINITE).to_string(),
        quote(&bad.join(" ")),
    ];
    cells.extend(r.param_grad_norms.iter().map(|n| n.to_string()));
    cells.join(",")
}

/// The comparison table printed after the runs.
pub fn comparison_table(summaries: &[Summary]) -> String {
    let header = [
        "run",
        "final loss",
        "best loss (step)",
        "first non-finite",
        "clipped",
        "skipped",
        "steps/s",
    ];
    let rows: Vec<[String; 7]> = summaries
        .iter()
        .map(|s| {
            [
                s.run.clone(),
                fmt_num(s.final_loss),
                match s.best_step {
                    Some(k) => format!("{} ({k})", fmt_num(s.best_loss)),
                    None => "-".into(),
                },
                s.first_nonfinite_step.map_or("-".into(), |k| k.to_string()),
                s.clipped.to_string(),
                s.skipped.to_string(),
                format!("{:.0}", s.steps_per_s),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// The runs `options` asks for, with the file's warnings printed to stderr; None (after printing
/// them) when the file has errors.
pub fn load_runs(
    options: &RunOptions,
    color: bool,
) -> anyhow::Result<Option<(CompiledFile, Vec<Run>)>> {
    let (mut compiled, warnings) = match load_compiled(&options.file) {
        Ok(c) => c,
        Err(diags) => {
            for d in &diags {
                eprint!("{}", d.render(color));
            }
            return Ok(None);
        }
    };
    for d in &warnings {
        eprint!("{}", d.render(color));
    }
    let runs = build_runs(options, &mut compiled).map_err(anyhow::Error::msg)?;
    Ok(Some((compiled, runs)))
}

/// `gradscope run`: returns false when a file error or a halted run should fail the command.
pub fn run_command(args: &RunArgs, color: bool) -> anyhow::Result<bool> {
    let Some((_, mut runs)) = load_runs(&args.run, color)? else {
        return Ok(false);
    };
    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let every = args.every.unwrap_or(match args.format {
        Format::Table => runs.first().map_or(1, |r| (r.config.steps / 10).max(1)),
        _ => 1,
    });
    let names = runs
        .first()
        .map(|r| r.param_names().to_vec())
        .unwrap_or_default();
    match args.format {
        Format::Csv => writeln!(out, "{}", csv_header(&names))?,
        Format::Table => writeln!(
            out,
            "{:<28} {:>8} {:>14} {:>12} {:>10}",
            "run", "step", "loss", "grad norm", "lr"
        )?,
        Format::Jsonl => {}
    }
    let progress = std::io::stderr().is_terminal();
    let mut summaries = Vec::new();
    let mut any_halted = false;
    for run in &mut runs {
        let bar = progress.then(|| {
            let b = indicatif::ProgressBar::new(run.config.steps);
            b.set_message(run.name.clone());
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg:30} {bar:30} {pos}/{len} {per_sec}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        let mut io_error = None;
        let summary = drive(run, |run, r| {
            if let Some(b) = &bar {
                b.inc(1);
            }
            let last = run.is_done();
            if !(r.step.is_multiple_of(every) || last) {
                return;
            }
            let res = match args.format {
                Format::Jsonl => writeln!(out, "{}", step_json(&run.name, run.param_names(), r)),
                Format::Csv => writeln!(out, "{}", csv_row(&run.name, run.param_names(), r)),
                Format::Table => writeln!(
                    out,
                    "{:<28} {:>8} {:>14} {:>12} {:>10}",
                    run.name,
                    r.step,
                    fmt_num(r.core.loss),
                    fmt_num(r.core.grad_norm as f64),
                    fmt_num(r.core.lr as f64)
                ),
            };
            if let Err(e) = res {
                io_error.get_or_insert(e);
            }
        });
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if let Some(e) = io_error {
            return Err(e.into());
        }
        let summary = match summary {
            Ok(s) => s,
            Err(d) => {
                eprint!("{}", d.render(color));
                return Ok(false);
            }
        };
        if let Some(h) = &summary.halted {
            eprintln!("run `{}` {h}", summary.run);
            if let Some(p) = run.halted.as_ref().and_then(|h| h.provenance.as_ref()) {
                eprint!(
                    "{}",
                    p.diagnostic(run.source(), run.halted.as_ref().map(|h| h.step))
                        .render(color)
                );
            }
            any_halted = true;
        }
        if args.format == Format::Jsonl {
            writeln!(out, "{}", summary_json(&summary))?;
        }
        summaries.push(summary);
    }
    let table = comparison_table(&summaries);
    if args.format == Format::Table {
        writeln!(out, "\n{table}")?;
    } else {
        eprint!("{table}");
    }
    out.flush()?;
    Ok(!any_halted)
}

/// A point of a run to examine: the file, which variant, after how many steps, in which dtype.
#[derive(Debug, Clone, clap::Args)]
pub struct PointArgs {
    /// The loss file.
    pub file: PathBuf,
    /// Variant to examine (`base`, a variant's name, or `all`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Step the run this many times with its optimizer first.
    #[arg(long, default_value_t = 0)]
    pub at_step: u64,
    /// Evaluate in this dtype instead of the run's (f32, f64, f16, bf16).
    #[arg(long)]
    pub dtype: Option<String>,
}

/// The compiled file and the selected runs, each with its definition's index.
type Points = (CompiledFile, Vec<(usize, Run)>);

/// The compiled file and, for each selected run definition, its index and the run stepped to
/// `at_step` (`default_all`: every variant when none is named). Err holds the file's diagnostics.
fn points(args: &PointArgs, default_all: bool) -> anyhow::Result<Result<Points, Vec<Diagnostic>>> {
    let (mut compiled, _) = match load_compiled(&args.file) {
        Ok(c) => c,
        Err(diags) => return Ok(Err(diags)),
    };
    let selected = select(
        &mut compiled,
        args.variant.as_deref(),
        args.dtype.as_deref(),
        default_all,
    )
    .map_err(anyhow::Error::msg)?;
    let mut runs = Vec::new();
    for def in selected {
        let mut config = RunConfig::from_settings(&compiled.runs[def].optimizer);
        config.steps = args.at_step;
        let mut r = Run::new(&compiled, def, compiled.runs[def].name.clone(), config)?;
        drive(&mut r, |_, _| {}).map_err(|d| anyhow::anyhow!(d.headline()))?;
        runs.push((def, r));
    }
    Ok(Ok((compiled, runs)))
}

/// Renders a file's diagnostics when it could not be loaded.
fn unloadable(diags: &[Diagnostic], color: bool, out: &mut impl Write) -> anyhow::Result<bool> {
    for d in diags {
        write!(out, "{}", d.render(color))?;
    }
    Ok(false)
}

/// `gradscope gradcheck`: returns whether every checked param passed.
pub fn gradcheck_command(
    args: &PointArgs,
    color: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    use crate::compile::gradcheck::{SAMPLE, Verdict, gradcheck, tolerance};
    let (compiled, runs) = match points(args, true)? {
        Ok(p) => p,
        Err(diags) => return unloadable(&diags, color, out),
    };
    let mut all_pass = true;
    for (def, run) in runs {
        let (atol, rtol) = tolerance(run.dtype);
        writeln!(
            out,
            "{}  run `{}` in {} at step {} (atol {atol:e}, rtol {rtol:e}; at most {SAMPLE} elements a param)",
            args.file.display(),
            run.name,
            run.dtype.name(),
            run.step_count()
        )?;
        match gradcheck(&compiled, def, Some(&run.param_values()), 0) {
            Ok(checks) => {
                writeln!(
                    out,
                    "  {:<10} {:>14} {:>12} {:>12} {:>12} {:>6}  result",
                    "param", "checked", "max abs err", "max rel err", "worst at", "kinks"
                )?;
                for c in checks {
                    let result = match c.verdict {
                        Verdict::Pass => "ok",
                        Verdict::Fail => {
                            all_pass = false;
                            "FAIL"
                        }
                        Verdict::CustomGradient => {
                            "differs: custom gradient (fine for a straight-through estimator)"
                        }
                    };
                    let checked = if c.checked < c.total {
                        format!("{} of {} (sampled)", c.checked, c.total)
                    } else {
                        format!("{} of {}", c.checked, c.total)
                    };
                    writeln!(
                        out,
                        "  {:<10} {:>14} {:>12} {:>12} {:>12} {:>6}  {result}",
                        c.name,
                        checked,
                        fmt_num(c.max_abs),
                        fmt_num(c.max_rel),
                        format!("{:?}", c.worst),
                        c.kinks
                    )?;
                }
            }
            Err(d) => {
                write!(out, "{}", d.render(color))?;
                all_pass = false;
            }
        }
    }
    Ok(all_pass)
}

/// `gradscope curvature`: the top Hessian eigenvalue and what it means for the learning rate.
pub fn curvature_command(
    args: &PointArgs,
    color: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let runs = match points(args, false)? {
        Ok((_, runs)) => runs,
        Err(diags) => return unloadable(&diags, color, out),
    };
    for (_, run) in runs {
        let c = run
            .curvature(50)
            .map_err(|d| anyhow::anyhow!(d.headline()))?;
        writeln!(
            out,
            "{}  run `{}` in {} at step {}",
            args.file.display(),
            run.name,
            run.dtype.name(),
            run.step_count()
        )?;
        writeln!(
            out,
            "  top Hessian eigenvalue λ = {}  ({} power iterations{})",
            fmt_num(c.lambda),
            c.iterations,
            if c.converged { "" } else { ", not converged" }
        )?;
        writeln!(
            out,
            "  check against finite differences of gradients: relative error {}",
            fmt_num(c.fd_rel_err)
        )?;
        let lr = run
            .config
            .schedule
            .lr(run.config.optimizer.lr(), run.step_count());
        match c.max_stable_lr() {
            Some(max) => {
                let verdict = if lr < max {
                    "below it: plain gradient descent is stable here"
                } else {
                    "above it: plain gradient descent diverges along the top eigenvector"
                };
                writeln!(
                    out,
                    "  largest stable lr for gradient descent 2/λ = {}; the run's lr {} is {verdict}",
                    fmt_num(max),
                    fmt_num(lr)
                )?;
            }
            None => writeln!(
                out,
                "  λ ≤ 0: the loss is not convex along the top eigenvector here, so 2/λ gives no bound"
            )?,
        }
    }
    Ok(true)
}

/// `gradscope precision`: what low precision does to each op's output.
pub fn precision_command(
    args: &PointArgs,
    color: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let runs = match points(args, false)? {
        Ok((_, runs)) => runs,
        Err(diags) => return unloadable(&diags, color, out),
    };
    for (_, run) in runs {
        let stats = run.precision().map_err(|d| anyhow::anyhow!(d.headline()))?;
        writeln!(
            out,
            "{}  run `{}` in {} at step {} (against f64)",
            args.file.display(),
            run.name,
            run.dtype.name(),
            run.step_count()
        )?;
        if stats.is_empty() {
            writeln!(out, "  no op overflowed, flushed to zero or went subnormal")?;
        }
        for s in stats {
            let (line, col) = run.source().line_col(s.span.start);
            let text = run
                .source()
                .text
                .get(s.span.clone())
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("");
            writeln!(
                out,
                "  {line}:{col} `{}` {text}\n      of {}: {} overflowed to Inf, {} flushed to 0, {} subnormal",
                s.op, s.total, s.overflowed, s.flushed, s.subnormal
            )?;
        }
    }
    Ok(true)
}

/// `gradscope bench`: steps every workload in `dir` with its own config and reports steps/s.
pub fn bench_command(dir: &Path, repeat: usize, out: &mut impl Write) -> anyhow::Result<bool> {
    let (files, missing) = crate::check::discover(&[dir.to_path_buf()]);
    for d in &missing {
        eprint!("{}", d.render(false));
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "?".into());
    writeln!(out, "threads: {threads}")?;
    writeln!(
        out,
        "{:<20} {:>7} {:>12} {:>12} {:>14}",
        "workload", "steps", "steps/s", "final loss", "peak RSS MB"
    )?;
    for f in files {
        let (compiled, _) = match load_compiled(&f) {
            Ok(c) => c,
            Err(diags) => {
                for d in &diags {
                    eprint!("{}", d.render(false));
                }
                continue;
            }
        };
        let mut rates = Vec::new();
        let mut final_loss = f64::NAN;
        let mut steps = 0;
        for _ in 0..repeat.max(1) {
            let config = RunConfig::from_settings(&compiled.runs[0].optimizer);
            let mut run = Run::new(&compiled, 0, "bench".into(), config)?;
            let s = drive(&mut run, |_, _| {}).map_err(|d| anyhow::anyhow!(d.headline()))?;
            rates.push(s.steps_per_s);
            final_loss = s.final_loss;
            steps = s.steps;
        }
        rates.sort_by(f64::total_cmp);
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        writeln!(
            out,
            "{:<20} {:>7} {:>12.1} {:>12} {:>14.1}",
            name,
            steps,
            rates[rates.len() / 2],
            fmt_num(final_loss),
            peak_rss_mb()
        )?;
    }
    use crate::tui::app::Tab;
    writeln!(
        out,
        "\nwhile the TUI draws a 200x60 frame every 33 ms (Loss tab / Landscape tab):"
    )?;
    for f in crate::check::discover(&[dir.to_path_buf()]).0 {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rates = [Tab::Loss, Tab::Landscape]
            .map(|tab| crate::tui::bench::steps_per_s(&f, tab).map(|r| format!("{r:.1}")));
        match rates {
            [Ok(a), Ok(b)] => writeln!(out, "{name:<20} {a:>12} / {b} steps/s")?,
            [Err(e), _] | [_, Err(e)] => writeln!(out, "{name:<20} failed: {e}")?,
        }
    }
    let rosen = Path::new("losses/rosenbrock.toml");
    if rosen.exists() {
        for points in [100_000, 1_000_000] {
            for tab in [Tab::Loss, Tab::Landscape] {
                let ms = crate::tui::bench::frame_ms(rosen, points, 200, 60, tab)?;
                writeln!(
                    out,
                    "frame 200x60, {} tab, 4 runs x {points} steps: {ms:.2} ms",
                    tab.title()
                )?;
            }
        }
    }
    writeln!(out, "\nlandscape grid 64x64 (median of {}):", repeat.max(1))?;
    for f in crate::check::discover(&[dir.to_path_buf()]).0 {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match grid_timings(&f, 64, repeat.max(1)) {
            Ok(t) => writeln!(out, "{name:<20} {t}")?,
            Err(e) => writeln!(out, "{name:<20} failed: {e}")?,
        }
    }
    for n_params in [2, 6] {
        writeln!(
            out,
            "history: 1,000,000 steps with {n_params} params hold {:.1} MB",
            history_mb(1_000_000, n_params)
        )?;
    }
    Ok(true)
}

/// How long an `n` x `n` landscape grid of `file`'s first run takes at its initial params: over
/// the params' coordinates (±1 around them) or a random filter-normalized slice (±1), batched
/// when the loss allows it (then also point by point, for comparison).
fn grid_timings(file: &Path, n: usize, repeat: usize) -> anyhow::Result<String> {
    use crate::landscape::surface::{Mode, Surface};
    use crate::landscape::{GridSpec, Plane, PlaneKind, param_shapes};
    let (compiled, _) = load_compiled(file).map_err(|d| anyhow::anyhow!("{}", d[0].headline()))?;
    let shapes = param_shapes(&compiled);
    let origin: Vec<f64> = compiled
        .params
        .iter()
        .flat_map(|p| compile::values_f64(&p.value).unwrap_or_default())
        .collect();
    let plane =
        Plane::coordinates(&shapes).unwrap_or_else(|| Plane::random(origin.clone(), &shapes, 0));
    let (x, y) = if plane.kind == PlaneKind::Coordinates {
        (
            (origin[0] - 1.0, origin[0] + 1.0),
            (origin[1] - 1.0, origin[1] + 1.0),
        )
    } else {
        ((-1.0, 1.0), (-1.0, 1.0))
    };
    let spec = GridSpec { x, y, nx: n, ny: n };
    let time = |surface: &Surface| -> anyhow::Result<(f64, Mode)> {
        let mut times = Vec::new();
        let mut mode = Mode::Pointwise;
        for _ in 0..repeat {
            let t = Instant::now();
            mode = surface
                .grid(&plane, spec.clone())
                .map_err(|d| anyhow::anyhow!(d.headline()))?
                .1;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok((times[times.len() / 2], mode))
    };
    let surface = Surface::new(&compiled, 0).map_err(|d| anyhow::anyhow!(d.headline()))?;
    let (ms, mode) = time(&surface)?;
    let mut out = format!("{ms:>10.2} ms  {}, {}", mode.name(), plane.kind.describe());
    if mode == Mode::Batched {
        let (ms, _) = time(&surface.pointwise())?;
        out.push_str(&format!(" (point by point: {ms:.2} ms)"));
    }
    Ok(out)
}

/// Memory a run's history holds after `steps` steps of a loss with `n_params` params.
pub fn history_mb(steps: usize, n_params: usize) -> f64 {
    use crate::run::history::{History, StepRecord};
    let mut h = History::new(n_params);
    let record = StepRecord::synthetic(0, 1.0, n_params);
    for _ in 0..steps {
        h.push(&record);
    }
    h.bytes() as f64 / 1e6
}

/// Peak resident memory of this process so far, in MB (Linux; NaN elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
