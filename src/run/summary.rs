//! Driving a run to its end and summarising it: what every headless front end reports.

use std::time::Instant;

use super::Run;
use super::history::{StepRecord, flags};
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
    pub steps_per_s: f64,
    pub final_params: Vec<(String, Vec<f64>)>,
}

/// Steps one run to its end, calling `log` for every row (0..=N: a row once the run has stepped
/// from it, the last one at the end); returns the summary.
pub fn drive(run: &mut Run, mut log: impl FnMut(&Run, &StepRecord)) -> Result<Summary, Diagnostic> {
    let started = Instant::now();
    let mut logged = 0;
    let mut log_until = |run: &Run, end: usize, logged: &mut usize| {
        for k in *logged..end {
            if let Some(r) = run.history().get(k) {
                log(run, &r);
            }
        }
        *logged = end.max(*logged);
    };
    while !run.is_done() {
        run.step()?;
        log_until(run, run.step_count() as usize, &mut logged);
    }
    log_until(run, run.history().len(), &mut logged);
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
    Ok(Summary {
        run: run.name.clone(),
        optimizer: run.config.optimizer.to_string(),
        dtype: run.dtype.name(),
        steps: run.step_count(),
        // The last row's: the loss at the params after the last update.
        final_loss: cores.last().map_or(f64::NAN, |c| c.loss),
        best_loss: best.map_or(f64::NAN, |(_, c)| c.loss),
        best_step: best.map(|(s, _)| s as u64),
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
