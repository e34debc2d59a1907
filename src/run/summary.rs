//! Driving a run to its end and summarising it: what every headless front end reports.

use std::ops::ControlFlow;
use std::time::Instant;

use super::Run;
use super::batch::{self, Batch};
use super::history::StepRecord;
use crate::compile::CompiledFile;
use crate::diagnostic::Diagnostic;
use crate::format::fmt_num;

/// The columns of a comparison of runs, as `run` prints it and the TUI shows it.
pub const TABLE_COLUMNS: [&str; 8] = [
    "run",
    "final loss",
    "best loss (step)",
    "first non-finite",
    "clipped",
    "skipped",
    "stalled",
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
    /// Updates that left a param with a gradient in place, and the first one's step.
    pub stalled: u64,
    pub first_stalled_step: Option<u64>,
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
    let driver = Driver::new();
    driver.finish(run, &mut log)
}

/// Steps `runs` to their ends, those that batch (see [`super::batch`]) as one program each, and
/// calls `log(i, run, row)` for every row of run `i` (each run's rows in order; the rows of
/// batched runs interleave). `log` breaking off stops every run. Returns each run's summary
/// (None for a run the stop came before).
pub fn drive_many(
    compiled: &CompiledFile,
    runs: &mut [Run],
    mut log: impl FnMut(usize, &Run, &StepRecord) -> ControlFlow<()>,
) -> Vec<Option<Result<Summary, Diagnostic>>> {
    let mut drivers: Vec<Driver> = runs.iter().map(|_| Driver::new()).collect();
    let mut stopped = false;
    let refs: Vec<&Run> = runs.iter().collect();
    for members in batch::groups(compiled, &refs) {
        if stopped {
            break;
        }
        let ids: Vec<u64> = members.iter().map(|&i| i as u64).collect();
        let lanes: Vec<&Run> = members.iter().map(|&i| &runs[i]).collect();
        let Ok(Some(mut batch)) = Batch::new(compiled, &lanes, ids) else {
            continue;
        };
        for &i in &members {
            drivers[i] = Driver::new();
        }
        while !batch.is_empty() && !stopped {
            // Lanes that are done leave (and are summarised with the rest below).
            let ids = batch.ids().to_vec();
            for (r, &id) in ids.iter().enumerate().rev() {
                if runs[id as usize].is_done() {
                    let _ = batch.leave(r, &mut runs[id as usize]);
                }
            }
            if batch.is_empty() {
                break;
            }
            let ids = batch.ids().to_vec();
            let mut lanes = pick(runs, &ids);
            if let Err(d) = batch.step(&mut lanes) {
                // A failure of the batch is every lane's: each goes on alone from where it is.
                for (r, &id) in ids.iter().enumerate().rev() {
                    let _ = batch.leave(r, &mut runs[id as usize]);
                    drivers[id as usize].failed = Some(d.clone());
                }
                break;
            }
            for id in ids {
                let i = id as usize;
                let flow =
                    drivers[i].log_until(&runs[i], runs[i].step_count() as usize, &mut |r, row| {
                        log(i, r, row)
                    });
                if flow.is_break() && !runs[i].is_done() {
                    drivers[i].interrupted = Some(runs[i].step_count());
                    stopped = true;
                }
            }
        }
        if stopped {
            let ids = batch.ids().to_vec();
            for (r, &id) in ids.iter().enumerate().rev() {
                let _ = batch.leave(r, &mut runs[id as usize]);
            }
        }
    }
    let mut out = Vec::with_capacity(runs.len());
    for (i, (run, mut driver)) in runs.iter_mut().zip(drivers).enumerate() {
        if stopped && run.step_count() == 0 && driver.logged == 0 {
            // Never started: nothing to summarise.
            out.push(None);
            continue;
        }
        if stopped && driver.interrupted.is_none() && !run.is_done() {
            driver.interrupted = Some(run.step_count());
        }
        let summary = driver.finish(run, &mut |r, row| log(i, r, row));
        stopped |= summary.as_ref().is_ok_and(|s| s.interrupted.is_some());
        out.push(Some(summary));
    }
    out
}

/// The runs `ids` of `runs`, in that order, as the lanes of a batch.
fn pick<'a>(runs: &'a mut [Run], ids: &[u64]) -> Vec<&'a mut Run> {
    let mut slots: Vec<Option<&'a mut Run>> = runs.iter_mut().map(Some).collect();
    ids.iter()
        .filter_map(|&id| slots.get_mut(id as usize)?.take())
        .collect()
}

/// One run's progress through [`drive`]: when it started, the rows logged, where it was
/// broken off.
struct Driver {
    started: Instant,
    logged: usize,
    interrupted: Option<u64>,
    /// Why its batch failed, if it did.
    failed: Option<Diagnostic>,
}

impl Driver {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            logged: 0,
            interrupted: None,
            failed: None,
        }
    }

    /// Logs rows from the last logged one up to `end`.
    fn log_until(
        &mut self,
        run: &Run,
        end: usize,
        log: &mut impl FnMut(&Run, &StepRecord) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let mut flow = ControlFlow::Continue(());
        for k in self.logged..end {
            if let Some(r) = run.history().get(k) {
                flow = log(run, &r);
            }
        }
        self.logged = end.max(self.logged);
        flow
    }

    /// Steps the run alone to its end (unless broken off) and summarises it.
    fn finish(
        mut self,
        run: &mut Run,
        log: &mut impl FnMut(&Run, &StepRecord) -> ControlFlow<()>,
    ) -> Result<Summary, Diagnostic> {
        if let Some(d) = self.failed {
            return Err(d);
        }
        while self.interrupted.is_none() && !run.is_done() {
            run.step()?;
            if self
                .log_until(run, run.step_count() as usize, log)
                .is_break()
                && !run.is_done()
            {
                self.interrupted = Some(run.step_count());
            }
        }
        let _ = self.log_until(run, run.history().len(), log);
        summarise(run, self.started, self.interrupted)
    }
}

/// The summary of a run driven since `started`.
fn summarise(run: &Run, started: Instant, interrupted: Option<u64>) -> Result<Summary, Diagnostic> {
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
        stalled: run.stalled,
        first_stalled_step: run.first_stall.as_ref().map(|s| s.step),
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
