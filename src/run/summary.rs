//! Driving a run to its end and summarising it: what every headless front end reports.

use std::ops::ControlFlow;
use std::time::Instant;

use super::Run;
use super::history::StepRecord;
use crate::diagnostic::Diagnostic;

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
    /// The step at which `log` stopped the run before its end (ctrl-c).
    pub interrupted: Option<u64>,
    pub steps_per_s: f64,
    pub final_params: Vec<(String, Vec<f64>)>,
}

/// Steps one run to its end, calling `log` for every step, which may break off early (the
/// summary then says where); returns the summary.
pub fn drive(
    run: &mut Run,
    mut log: impl FnMut(&Run, &StepRecord) -> ControlFlow<()>,
) -> Result<Summary, Diagnostic> {
    let started = Instant::now();
    let mut interrupted = None;
    while !run.is_done() {
        let record = run.step()?;
        if log(run, &record).is_break() && !run.is_done() {
            interrupted = Some(run.step_count());
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let totals = *run.totals();
    let final_loss = if run.halted.is_some() {
        totals.last_loss.unwrap_or(f64::NAN)
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
        best_loss: totals
            .best
            .map_or(f64::NAN, |(_, loss)| loss)
            .min(if final_loss.is_finite() {
                final_loss
            } else {
                f64::INFINITY
            }),
        best_step: match totals.best {
            Some((_, loss)) if final_loss < loss => Some(run.step_count()),
            other => other.map(|(step, _)| step),
        },
        first_nonfinite_step: totals.first_nonfinite,
        clipped: run.clipped,
        skipped: run.skipped,
        halted: run
            .halted
            .as_ref()
            .map(|h| format!("halted at step {}: {}", h.step, h.reason)),
        interrupted,
        steps_per_s: run.step_count() as f64 / elapsed.max(1e-9),
        final_params: run
            .param_names()
            .iter()
            .cloned()
            .zip(run.param_values())
            .collect(),
    })
}
