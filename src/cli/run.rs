//! `gradscope run`: the headless front end over the run engine.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use crate::compile::CompiledFile;
use crate::format::fmt_num;
use crate::lang::file::DType;
use crate::load;
use crate::optim::settings::{GradSource, NonFinitePolicy};
use crate::optim::spec::OptimizerSpec;
use crate::run::export::{csv_header, csv_row, step_json, summary_json};
use crate::run::metrics::MetricLog;
use crate::run::summary::{Summary, drive};
use crate::run::{Run, RunRequest};

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
    pub optimizers: Vec<OptimizerSpec>,
    /// Variant to run (`base`, a variant's name, or `all`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Number of steps (default: the file's `steps`, else 100).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Run in this dtype instead of the file's.
    #[arg(long, value_enum)]
    pub dtype: Option<DType>,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// What to do when the loss, a gradient or an update is NaN/Inf.
    #[arg(long, value_enum)]
    pub on_nonfinite: Option<NonFinitePolicy>,
    /// Where gradients come from (fd: central finite differences).
    #[arg(long, value_enum)]
    pub grad: Option<GradSource>,
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

/// Why the command line's options start no run.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// `--variant` names none of the file's run definitions.
    #[error("no variant named `{name}`; this file has: {}", .names.join(", "))]
    NoVariant { name: String, names: Vec<String> },
    /// A run could not be prepared (its tensors could not be built).
    #[error(transparent)]
    Start(#[from] candle_core::Error),
}

/// The run definitions `variant` names (`base`, a name, `all`; none: `default_all` decides).
pub(super) fn select(
    compiled: &CompiledFile,
    variant: Option<&str>,
    default_all: bool,
) -> Result<Vec<usize>, RunsError> {
    let all = (0..compiled.runs.len()).collect();
    match variant {
        Some("all") => Ok(all),
        None if default_all => Ok(all),
        None | Some("base") => Ok(vec![0]),
        Some(name) => match compiled.runs.iter().position(|r| r.name == name) {
            Some(i) => Ok(vec![i]),
            None => Err(RunsError::NoVariant {
                name: name.to_string(),
                names: compiled.runs.iter().map(|r| r.name.clone()).collect(),
            }),
        },
    }
}

/// The runs `args` asks for, one per selected definition and optimizer, ready to step.
pub fn build_runs(args: &RunOptions, compiled: &CompiledFile) -> Result<Vec<Run>, RunsError> {
    let selected = select(compiled, args.variant.as_deref(), false)?;
    let specs: Vec<Option<&OptimizerSpec>> = if args.optimizers.is_empty() {
        vec![None]
    } else {
        args.optimizers.iter().map(Some).collect()
    };
    let mut runs = Vec::new();
    for &i in &selected {
        for &spec in &specs {
            let def = &compiled.runs[i];
            let name = match spec {
                Some(s) if selected.len() > 1 => format!("{} · {s}", def.name),
                Some(s) => s.to_string(),
                None => def.name.clone(),
            };
            let mut request = RunRequest::new(compiled, i, name, def.settings.clone());
            let config = &mut request.settings;
            if let Some(s) = spec {
                config.optimizer = s.clone();
            }
            if let Some(n) = args.steps {
                config.steps = n;
            }
            if args.clip_norm.is_some() {
                config.clip_norm = args.clip_norm;
            }
            if let Some(p) = args.on_nonfinite {
                config.on_nonfinite = p;
            }
            if let Some(g) = args.grad {
                config.grad = g;
            }
            if let Some(d) = args.dtype {
                request.dtype = d;
            }
            runs.push(Run::new(compiled, request)?);
        }
    }
    Ok(runs)
}

/// The comparison table printed after the runs.
pub fn comparison_table(summaries: &[Summary]) -> String {
    let mut header = vec![
        "run",
        "final loss",
        "best loss (step)",
        "first non-finite",
        "clipped",
        "skipped",
        "steps/s",
    ];
    // Each metric's final value, one column a metric (every run of a file has the same ones).
    if let Some(s) = summaries.first() {
        header.extend(s.final_metrics.iter().map(|(n, _)| n.as_str()));
    }
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            let mut row = vec![
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
            ];
            row.extend(s.final_metrics.iter().map(|(_, v)| fmt_num(*v)));
            row
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
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
    line(header, &mut out);
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
    let (compiled, warnings) = match load::load_compiled(&options.file) {
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
    let runs = build_runs(options, &compiled)?;
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
    let metric_names = runs
        .first()
        .map(|r| r.metric_names().to_vec())
        .unwrap_or_default();
    match args.format {
        Format::Csv => writeln!(
            out,
            "{}{}",
            csv_header(&names),
            MetricLog::new(&metric_names, every).csv_header()
        )?,
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
        // Each row's metrics are taken before its step, at the params its loss is taken at.
        let mut metrics = MetricLog::new(&metric_names, every);
        let mut metric_error = metrics.prepare(run).err();
        let summary = drive(run, |run, r| {
            if let Some(b) = &bar {
                b.inc(1);
            }
            if let Err(d) = metrics.prepare(run) {
                metric_error.get_or_insert(d);
            }
            let last = run.is_done();
            if !(r.step.is_multiple_of(every) || last) {
                return;
            }
            let res = match args.format {
                Format::Jsonl => {
                    let mut row = step_json(&run.name, run.param_names(), r);
                    metrics.add_json(&mut row, r.step);
                    writeln!(out, "{row}")
                }
                Format::Csv => writeln!(
                    out,
                    "{}{}",
                    csv_row(&run.name, run.param_names(), r),
                    metrics.csv_cells(r.step)
                ),
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
        let summary = match metric_error.map_or(summary, Err) {
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
