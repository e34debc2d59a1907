//! `gradscope run`: the headless front end over the run engine.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context;

use crate::compile::CompiledFile;
use crate::diagnostic::Diagnostic;
use crate::format::{columns, fmt_num, pad};
use crate::lang::file::DType;
use crate::load;
use crate::optim::groups::{GroupError, param_groups};
use crate::optim::settings::{GradSource, NonFinitePolicy};
use crate::optim::spec::SettingError;
use crate::optim::tricks::ChainOverride;
use crate::run::export::{csv_header, csv_row, step_json, summary_json};
use crate::run::metrics::MetricLog;
use crate::run::summary::{Summary, best_cell, drive_many, step_cell};
use crate::run::{Retention, Run, RunRequest, save};

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
    /// Optimizer spec, e.g. `adam` or `sgd(lr=0.01, momentum=0.9)`, then any tricks
    /// (`adam(lr=0.01) + agc(clipping=0.05)`); repeat for several runs. The file's own optimizer
    /// keeps its hyper-parameters except those typed, and its tricks unless others are written;
    /// another starts from its defaults with only the tricks written. The optimizers the file
    /// writes itself may be named too. `gradscope optimizers` lists every optimizer and trick
    /// with its parameters and defaults.
    #[arg(short = 'o', long = "optimizer")]
    pub optimizers: Vec<String>,
    /// Variant to run (`base`, a variant's name, or `all`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Number of steps (default: the file's `steps`, else 100).
    #[arg(long, allow_negative_numbers = true, value_parser = positive_steps)]
    pub steps: Option<u64>,
    /// Run in this dtype instead of the file's.
    #[arg(long, value_enum)]
    pub dtype: Option<DType>,
    /// Clip the global gradient norm to this value.
    #[arg(long, allow_negative_numbers = true, value_parser = clip_norm)]
    pub clip_norm: Option<f64>,
    /// What to do when the loss, a gradient or an update is NaN/Inf.
    #[arg(long, value_enum)]
    pub on_nonfinite: Option<NonFinitePolicy>,
    /// Where gradients come from (fd: central finite differences).
    #[arg(long, value_enum)]
    pub grad: Option<GradSource>,
    /// A const of the loss file and its value (`eps=1e-4`), over every variant's own; repeat
    /// for several. `[data]` and `[params]` are computed again with it, as each point of
    /// `sweep --const` is.
    #[arg(long = "const", value_name = "K=V")]
    pub consts: Vec<String>,
}

/// `--steps`: a whole number of at least 1.
pub(super) fn positive_steps(text: &str) -> Result<u64, String> {
    positive("steps", text)
}

/// `--clip-norm`: what a file's `clip_norm` takes (a negative one made every step ascend).
fn clip_norm(text: &str) -> Result<f64, String> {
    let n: f64 = text
        .parse()
        .map_err(|_| format!("clip-norm must be a number, not `{text}`"))?;
    match crate::optim::settings::check_run_setting(
        "clip_norm",
        crate::optim::spec::RawValue::Number(n),
    ) {
        Some(Err(e)) => Err(e.message),
        _ => Ok(n),
    }
}

/// A count of `what` of 1 or more, said so when it is not.
pub(super) fn positive(what: &str, text: &str) -> Result<u64, String> {
    match text.parse::<i128>() {
        Ok(n) if n >= 1 => {
            u64::try_from(n).map_err(|_| format!("{what} must be at most {}", u64::MAX))
        }
        Ok(_) => Err(format!("{what} must be positive (1 or more)")),
        Err(_) => Err(format!(
            "{what} must be a positive whole number, not `{text}`"
        )),
    }
}

/// Everything `gradscope run` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub run: RunOptions,
    /// Log every K-th step (default: every step for csv/jsonl, a tenth of the run for table).
    #[arg(long, value_parser = |t: &str| positive("every", t))]
    pub every: Option<u64>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write the log to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Save the final params to this .safetensors or .npz file (keys `<param>` for one run,
    /// `<run>.<param>` for several, plus `.best` and `.eval`), or to a directory ending in `/`
    /// (one .safetensors file per run).
    #[arg(long, value_name = "FILE|DIR/")]
    pub save_params: Option<PathBuf>,
}

/// Why the command line's options start no run.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// `--variant` names none of the file's run definitions.
    #[error("no variant named `{name}`; this file has: {}", .names.join(", "))]
    NoVariant { name: String, names: Vec<String> },
    /// An `-o` spec makes a combination torch refuses with the file's hyper-parameters.
    #[error("-o {spec}: {error}")]
    Spec { spec: String, error: SettingError },
    /// An `-o` spec refuses the file's per-param settings (or makes a combination torch refuses
    /// with them).
    #[error("-o {spec}: {error}")]
    Groups { spec: String, error: GroupError },
    /// A run could not be prepared (its tensors could not be built, or its optimizer refuses
    /// the params).
    #[error("{file}: run `{run}` cannot start: {error}")]
    Start {
        file: String,
        run: String,
        error: Box<candle_core::Error>,
    },
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

/// The runs `args` asks for, one per selected definition and optimizer, ready to step, each
/// keeping `retention` of its past.
pub fn build_runs(
    args: &RunOptions,
    compiled: &CompiledFile,
    retention: Retention,
) -> Result<Vec<Run>, RunsError> {
    let selected = select(compiled, args.variant.as_deref(), false)?;
    let specs: Vec<Option<ChainOverride>> = if args.optimizers.is_empty() {
        vec![None]
    } else {
        let parse = |text: &String| {
            compiled.spec(text).map_err(|error| RunsError::Spec {
                spec: text.clone(),
                error,
            })
        };
        args.optimizers
            .iter()
            .map(|t| parse(t).map(Some))
            .collect::<Result<_, _>>()?
    };
    let mut runs = Vec::new();
    for &i in &selected {
        for spec in &specs {
            let def = &compiled.runs[i];
            let mut settings = def.settings.clone();
            let name = match spec {
                Some(over) => {
                    let chain =
                        over.over(&settings.optimizer, &settings.tricks)
                            .map_err(|error| RunsError::Spec {
                                spec: over.to_string(),
                                error,
                            })?;
                    let names: Vec<String> =
                        compiled.params.iter().map(|p| p.name.clone()).collect();
                    param_groups(&chain.base, &def.param_settings, &names).map_err(|error| {
                        RunsError::Groups {
                            spec: over.to_string(),
                            error,
                        }
                    })?;
                    let name = match selected.len() {
                        1 => chain.to_string(),
                        _ => format!("{} · {chain}", def.name),
                    };
                    (settings.optimizer, settings.tricks) = (chain.base, chain.tricks);
                    name
                }
                None => def.name.clone(),
            };
            let mut request = RunRequest::new(compiled, i, name, settings);
            request.retention = retention;
            let config = &mut request.settings;
            if let Some(n) = args.steps {
                config.set_steps(n);
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
            let run = request.name.clone();
            runs.push(
                Run::new(compiled, request).map_err(|error| RunsError::Start {
                    file: compiled.file.source.path.display().to_string(),
                    run,
                    error: Box::new(error),
                })?,
            );
        }
    }
    Ok(runs)
}

/// The comparison table printed after the runs.
pub fn comparison_table(summaries: &[Summary]) -> String {
    let mut header = crate::run::summary::TABLE_COLUMNS.to_vec();
    // The loss at the eval params, when some run's optimizer has them (schedule-free, ASGD).
    let eval = summaries.iter().any(|s| s.final_eval_loss.is_some());
    if eval {
        header.insert(2, "final eval loss");
    }
    // Each metric's final value, one column a metric (every run of a file has the same ones).
    if let Some(s) = summaries.first() {
        header.extend(s.final_metrics.iter().map(|(n, _)| n.as_str()));
    }
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            let mut row = vec![
                match s.interrupted {
                    Some(k) => format!("{} (interrupted at step {k})", s.run),
                    None => s.run.clone(),
                },
                fmt_num(s.final_loss),
                best_cell(s.best_loss, s.best_step),
                step_cell(s.first_nonfinite_step),
                s.clipped.to_string(),
                s.skipped.to_string(),
                s.stalled.to_string(),
                format!("{:.0}", s.steps_per_s),
            ];
            if eval {
                row.insert(2, s.final_eval_loss.map_or("-".into(), fmt_num));
            }
            row.extend(s.final_metrics.iter().map(|(_, v)| fmt_num(*v)));
            row
        })
        .collect();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    aligned(&header, &rows)
}

/// `header` and `rows` as text columns, each as wide as its widest cell, two spaces apart.
pub(super) fn aligned(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| columns(h)).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(columns(c));
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let parts: Vec<String> = row.iter().zip(&widths).map(|(c, w)| pad(c, *w)).collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The runs `options` asks for (keeping `retention` of their past), with the file's warnings
/// printed to stderr; None (after printing them) when the file has errors.
pub fn load_runs(
    options: &RunOptions,
    retention: Retention,
    color: bool,
) -> anyhow::Result<Option<(CompiledFile, Vec<Run>)>> {
    let (compiled, warnings) = match load::load_compiled(&options.file) {
        Ok(c) => c,
        Err(diags) => {
            for d in &diags {
                err_print!("{}", d.render(color));
            }
            return Ok(None);
        }
    };
    for d in &warnings {
        err_print!("{}", d.render(color));
    }
    let compiled = match with_consts(&compiled, &options.consts)? {
        Ok(c) => c,
        Err(diags) => {
            for d in &diags {
                err_print!("{}", d.render(color));
            }
            return Ok(None);
        }
    };
    crate::compile::threads::start([&compiled], 0);
    let runs = build_runs(options, &compiled, retention)?;
    Ok(Some((compiled, runs)))
}

/// `compiled` made again with `--const`'s values (each one number, each const once).
fn with_consts(
    compiled: &CompiledFile,
    consts: &[String],
) -> anyhow::Result<Result<CompiledFile, Vec<crate::diagnostic::Diagnostic>>> {
    let mut values: Vec<(String, f64)> = Vec::with_capacity(consts.len());
    for ((name, numbers), text) in super::sweep::parse_consts(consts)?.into_iter().zip(consts) {
        let [value] = numbers[..] else {
            anyhow::bail!(
                "--const {text}: `run` takes one value per const (`gradscope sweep --const` takes lists)"
            );
        };
        values.push((name, value));
    }
    Ok(compiled.recompiled(compiled.file.seed, &values))
}

/// The signal that asked `gradscope run` (or `lrfind`, `sweep`) to stop (0: none yet).
pub(super) static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// From here on, ctrl-c (SIGINT) and SIGTERM end the runs at the current step instead of the
/// process, so the summary so far is still printed.
pub(super) fn catch_stop_signals() {
    stop_signals_to(on_stop_signal as *const () as libc::sighandler_t);
}

/// From here on, ctrl-c and SIGTERM end the process again, as they did before
/// [`catch_stop_signals`]: for work after the stepping that has no step to stop at.
pub(super) fn release_stop_signals() {
    stop_signals_to(libc::SIG_DFL);
}

/// A bar of `len` steps drawn as `template` on stderr, when it is a terminal.
pub(super) fn steps_bar(len: u64, template: &str) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(len);
        b.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    })
}

fn stop_signals_to(handler: libc::sighandler_t) {
    // SAFETY: the handler is the default action or one that only stores to an atomic, which
    // is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether to step on: not once ctrl-c or SIGTERM has come.
pub(super) fn until_stopped() -> ControlFlow<()> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => ControlFlow::Continue(()),
        _ => ControlFlow::Break(()),
    }
}

/// How `gradscope run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every run took its steps.
    Finished,
    /// A file error or a halted run (exit 1).
    Failed,
    /// Stopped by this signal (exit 128 + signal: 130 for ctrl-c, 143 for SIGTERM).
    Interrupted(i32),
}

impl RunOutcome {
    /// Finished, or interrupted by the stop signal that came.
    pub(super) fn finished_unless_stopped() -> Self {
        match STOP_SIGNAL.load(Ordering::SeqCst) {
            0 => RunOutcome::Finished,
            signal => RunOutcome::Interrupted(signal),
        }
    }
}

impl RunOutcome {
    /// The process exit code, as shells report a command a signal ended.
    pub fn exit_code(self) -> ExitCode {
        match self {
            RunOutcome::Finished => ExitCode::SUCCESS,
            RunOutcome::Failed => ExitCode::FAILURE,
            RunOutcome::Interrupted(signal) => ExitCode::from((128 + signal).clamp(0, 255) as u8),
        }
    }
}

/// `gradscope run`: steps the runs keeping only their totals (memory stays flat however many
/// steps), streams the logged steps, and prints the comparison table, also after ctrl-c.
pub fn run_command(args: &RunArgs, color: bool) -> anyhow::Result<RunOutcome> {
    if let Some(target) = &args.save_params {
        save::check_target(target)?;
        if !save::is_directory(target) {
            super::check_out_folder("--save-params", target)?;
        }
    }
    if let Some(out) = &args.out {
        super::check_out_folder("--out", out)?;
    }
    // The params at the best loss are kept only to be saved.
    let retention = Retention::Totals {
        best: args.save_params.is_some(),
    };
    let Some((compiled, mut runs)) = load_runs(&args.run, retention, color)? else {
        return Ok(RunOutcome::Failed);
    };
    catch_stop_signals();
    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("--out {}", p.display()))?,
        )),
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
    let width = runs
        .iter()
        .map(|r| columns(&r.name))
        .max()
        .unwrap_or(0)
        .max("run".len());
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
            "{:<width$} {:>8} {:>14} {:>12} {:>10}",
            "run", "step", "loss", "grad norm", "lr"
        )?,
        Format::Jsonl => {}
    }
    let progress = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::new();
    let bars: Vec<Option<indicatif::ProgressBar>> = runs
        .iter()
        .map(|run| {
            progress.then(|| {
                let b = bars.add(indicatif::ProgressBar::new(run.config.steps));
                b.set_message(run.name.clone());
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg:30} {bar:30} {pos}/{len} {per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            })
        })
        .collect();
    let mut io_error = None;
    // Each row's metrics are taken at the params its loss was taken at: θ_0 here, θ_k+1
    // when row k is logged (after the step from θ_k).
    let mut metrics: Vec<MetricLog> = runs
        .iter()
        .map(|_| MetricLog::new(&metric_names, every))
        .collect();
    let mut metric_error: Vec<Option<Diagnostic>> = runs
        .iter()
        .zip(&mut metrics)
        .map(|(run, m)| m.prepare(run, false).err())
        .collect();
    let mut ordered = Ordered::new(runs.len());
    let results = drive_many(&compiled, &mut runs, |i, run, r| {
        if let Some(b) = &bars[i] {
            b.set_position(r.step);
        }
        // Metrics at the params the run is at now: those of the next row.
        if let Err(d) = metrics[i].prepare(run, r.step == run.step_count()) {
            metric_error[i].get_or_insert(d);
        }
        let last = r.step == run.step_count();
        if r.step.is_multiple_of(every) || last {
            let line = match args.format {
                Format::Jsonl => {
                    let mut row = step_json(&run.name, run.param_names(), r);
                    metrics[i].add_json(&mut row, r.step);
                    row.to_string()
                }
                Format::Csv => format!(
                    "{}{}",
                    csv_row(&run.name, run.param_names(), r),
                    metrics[i].csv_cells(r.step)
                ),
                Format::Table => format!(
                    "{} {:>8} {:>14} {:>12} {:>10}",
                    pad(&run.name, width),
                    r.step,
                    fmt_num(r.core.loss),
                    fmt_num(r.core.grad_norm as f64),
                    fmt_num(r.core.lr as f64)
                ),
            };
            if let Err(e) = ordered.line(&mut out, i, line) {
                io_error.get_or_insert(e);
            }
        }
        match io_error {
            None => until_stopped(),
            Some(_) => ControlFlow::Break(()),
        }
    });
    for b in bars.iter().flatten() {
        b.finish_and_clear();
    }
    if let Some(e) = io_error {
        return Err(e.into());
    }
    let mut summaries = Vec::new();
    let mut any_halted = false;
    for (i, (run, result)) in runs.iter().zip(results).enumerate() {
        let Some(summary) = result else { break };
        let summary = match metric_error[i].take().map_or(summary, Err) {
            Ok(s) => s,
            Err(d) => {
                err_print!("{}", d.render(color));
                return Ok(RunOutcome::Failed);
            }
        };
        if let Some(h) = &summary.halted {
            err_println!("run `{}` {h}", summary.run);
            if let Some(d) = run.halted.as_ref().and_then(|h| h.diagnostic(run.source())) {
                err_print!("{}", d.render(color));
            }
            any_halted = true;
        }
        if let Some((k, d)) = run.nonfinite_report() {
            err_println!(
                "run `{}` went on past non-finite values from step {k} (--on-nonfinite {})",
                summary.run,
                run.config.on_nonfinite.name()
            );
            err_print!("{}", d.render(color));
        }
        if let Some(stall) = &run.first_stall {
            err_println!(
                "run `{}`: {} of {} updates left a param with a gradient where it was",
                summary.run,
                summary.stalled,
                summary.steps
            );
            err_print!("{}", stall.diagnostic(&compiled.file).render(color));
        }
        if let Some(k) = summary.interrupted {
            err_println!("run `{}` interrupted at step {k}", summary.run);
        }
        if args.format == Format::Jsonl {
            writeln!(out, "{}", summary_json(&summary))?;
        }
        ordered.finish(&mut out, i)?;
        summaries.push(summary);
    }
    let table = comparison_table(&summaries);
    if args.format == Format::Table {
        writeln!(out, "\n{table}")?;
    } else {
        err_print!("{table}");
    }
    out.flush()?;
    let mut save_failed = false;
    if let Some(target) = &args.save_params {
        let stepped: Vec<&Run> = runs.iter().take(summaries.len()).collect();
        match save::save_runs(target, &stepped) {
            Ok(files) => {
                let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                err_println!("saved the params to {}", files.join(", "));
            }
            Err(e) => {
                err_println!("error: {e}");
                save_failed = true;
            }
        }
    }
    Ok(match RunOutcome::finished_unless_stopped() {
        RunOutcome::Finished if any_halted || save_failed => RunOutcome::Failed,
        outcome => outcome,
    })
}

/// Output lines of several runs in run order: run i's lines are written as they come while
/// every run before it is finished, and held until then otherwise (batched runs step together).
struct Ordered {
    /// The first run not finished yet.
    next: usize,
    held: Vec<Vec<String>>,
    finished: Vec<bool>,
}

impl Ordered {
    fn new(runs: usize) -> Self {
        Self {
            next: 0,
            held: vec![Vec::new(); runs],
            finished: vec![false; runs],
        }
    }

    fn line(&mut self, out: &mut impl Write, run: usize, line: String) -> std::io::Result<()> {
        if run == self.next {
            writeln!(out, "{line}")
        } else {
            self.held[run].push(line);
            Ok(())
        }
    }

    /// Run `run` has written its last line (its summary follows at once): the held lines of
    /// the runs after it up to the next unfinished one go out.
    fn finish(&mut self, out: &mut impl Write, run: usize) -> std::io::Result<()> {
        self.finished[run] = true;
        while self.next < self.finished.len() && self.finished[self.next] {
            self.next += 1;
            if let Some(lines) = self.held.get_mut(self.next) {
                for line in std::mem::take(lines) {
                    writeln!(out, "{line}")?;
                }
            }
        }
        Ok(())
    }
}
