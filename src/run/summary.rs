//! Driving a run to its end and summarising it: what every headless front end reports.

use std::ops::ControlFlow;
use std::time::Instant;

use super::Run;
use super::history::StepRecord;
use crate::diagnostic::Diagnostic;
use crate::format::fmt_num;

/// The columns of a comparison of runs, as `run` prints it and the TUI shows it.
pub const TABLE_COLUMNS: [&str; 7] = [
    "run",
    "final loss",
    "best loss (step)",
    "first non-finite",
    "clipped",
    "skipped",
    "steps/s",
];

/// The "best loss (step)" cell of a comparison table: `-` when no loss was finite.
pub fn best_cell(loss: f64, step: Option<u64>) -> String {
    step.map_or("-".into(), |k| format!("{} ({k})", fmt_num(loss)))
}

/// A step cell of a comparison table (the first non-finite step): `-` when there is none.
pub fn step_cell(step: Option<u64>) -> String {
    step.map_or("-".into(), |k| k.to_string())
}

/// The most param values a summary writes out; past them it says how to save them instead
/// (a 4000 x 4000 param made a 314 MB line of JSON).
pub const INLINE_PARAMS_MAX: usize = 100_000;

/// A finished run's final params, as its summary carries them.
#[derive(Debug, Clone, PartialEq)]
pub enum FinalParams {
    /// Each param's values, row-major in f64.
    Inline(Vec<(String, Vec<f64>)>),
    /// More values than [`INLINE_PARAMS_MAX`]: how many there are (`--save-params` writes them).
    Omitted(usize),
}

/// A finished run's summary.
#[derive(Debug, Clone)]
pub struct Summary {
    pub run: String,
    pub optimizer: String,
    pub dtype: &'static str,
    pub steps: u64,
    pub final_loss: f64,
    /// The loss at the eval params after the last update (None: the optimizer has none).
    pub final_eval_loss: Option<f64>,
    pub best_loss: f64,
    pub best_step: Option<u64>,
    pub first_nonfinite_step: Option<u64>,
    pub clipped: u64,
    pub skipped: u64,
    pub halted: Option<String>,
    /// The step at which `log` stopped the run before its end (ctrl-c).
    pub interrupted: Option<u64>,
    pub steps_per_s: f64,
    pub final_params: FinalParams,
    /// Each metric's value at the final params, in file order.
    pub final_metrics: Vec<(String, f64)>,
}

/// Steps one run to its end, calling `log` for every row (0..=N: a row once the run has stepped
/// from it, the last one at the end), which may break off early (the summary then says where);
/// returns the summary.
pub fn drive(
    run: &mut Run,
    mut log: impl FnMut(&Run, &StepRecord) -> ControlFlow<()>,
) -> Result<Summary, Diagnostic> {
    let started = Instant::now();
    let mut logged = 0;
    let mut interrupted = None;
    let mut log_until = |run: &Run, end: usize, logged: &mut usize| {
        let mut flow = ControlFlow::Continue(());
        for k in *logged..end {
            if let Some(r) = run.history().get(k) {
                flow = log(run, &r);
            }
        }
        *logged = end.max(*logged);
        flow
    };
    while !run.is_done() {
        run.step()?;
        if log_until(run, run.step_count() as usize, &mut logged).is_break() && !run.is_done() {
            interrupted = Some(run.step_count());
            break;
        }
    }
    let _ = log_until(run, run.history().len(), &mut logged);
    let elapsed = started.elapsed().as_secs_f64();
    // Every finished row is counted as the run steps; the current one (θ_N) here.
    let totals = run.history().with_current(*run.totals());
    Ok(Summary {
        run: run.name.clone(),
        optimizer: run.config.chain().to_string(),
        dtype: run.dtype.name(),
        steps: run.step_count(),
        // The last row's: the loss at the params after the last update.
        final_loss: totals.last_loss.unwrap_or(f64::NAN),
        final_eval_loss: run
            .history()
            .len()
            .checked_sub(1)
            .and_then(|k| run.history().eval_loss(k)),
        best_loss: totals.best.map_or(f64::NAN, |(_, loss)| loss),
        best_step: totals.best.map(|(step, _)| step),
        first_nonfinite_step: totals.first_nonfinite,
        clipped: run.clipped,
        skipped: run.skipped,
        halted: run
            .halted
            .as_ref()
            .map(|h| format!("halted at step {}: {}", h.step, h.reason)),
        interrupted,
        steps_per_s: run.step_count() as f64 / elapsed.max(1e-9),
        final_params: final_params(run),
        final_metrics: run
            .metric_names()
            .iter()
            .cloned()
            .zip(run.metric_values()?)
            .collect(),
    })
}

/// The run's params for its summary: inline up to [`INLINE_PARAMS_MAX`] values.
fn final_params(run: &Run) -> FinalParams {
    let count: usize = run.params().iter().map(|v| v.elem_count()).sum();
    if count > INLINE_PARAMS_MAX {
        return FinalParams::Omitted(count);
    }
    let names = run.param_names().iter().cloned();
    FinalParams::Inline(names.zip(run.param_values()).collect())
}
