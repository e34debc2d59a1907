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
    /// Each metric's value at the final params, in file order.
    pub final_metrics: Vec<(String, f64)>,
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
        final_metrics: run
            .metric_names()
            .iter()
            .cloned()
            .zip(run.metric_values()?)
            .collect(),
    })
}
