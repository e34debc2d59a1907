//! A run's `[metrics]` on the way to a log: taken at the params a row's loss is taken at, before
//! the step that row describes, and written as CSV columns and a JSON object.

use serde_json::{Map, Value};

use super::Run;
use crate::diagnostic::Diagnostic;
use crate::format::json_num;

impl Run {
    /// The names of the file's metrics, in file order.
    pub fn metric_names(&self) -> &[String] {
        self.evaluator.metric_names()
    }

    /// Every metric's value at the current params (empty when the file has none).
    pub fn metric_values(&self) -> Result<Vec<f64>, Diagnostic> {
        self.evaluator.metrics()
    }
}

/// Metric values for the rows of a log that shows every `every`-th step and the last: call
/// [`MetricLog::prepare`] before each step (and after the last), then read the row's values.
#[derive(Debug, Clone)]
pub struct MetricLog {
    names: Vec<String>,
    every: u64,
    /// The values taken before the step about to be taken, with that step.
    pending: Option<(u64, Vec<f64>)>,
    /// The values taken before the step just taken (the row being logged now), with that step.
    previous: Option<(u64, Vec<f64>)>,
}

impl MetricLog {
    /// A log of `names` at every `every`-th step.
    pub fn new(names: &[String], every: u64) -> Self {
        Self {
            names: names.to_vec(),
            every: every.max(1),
            pending: None,
            previous: None,
        }
    }

    /// Takes the metrics at the run's current params θ_k (k = `step_count`) when row k will be
    /// logged: a multiple of `every`, the last row, or (`last`) the row the caller is about to
    /// write last (an interrupted run's). The values of the previous row taken stay readable
    /// until the next call.
    pub fn prepare(&mut self, run: &Run, last: bool) -> Result<(), Diagnostic> {
        let k = run.step_count();
        let logged = last || k.is_multiple_of(self.every) || k >= run.config.steps || run.is_done();
        self.previous = self.pending.take();
        if !self.names.is_empty() && logged {
            self.pending = Some((k, run.metric_values()?));
        }
        Ok(())
    }

    /// The values taken for the row of `step` (None when they were not taken there).
    pub fn at(&self, step: u64) -> Option<&[f64]> {
        [&self.pending, &self.previous]
            .into_iter()
            .flatten()
            .find(|(k, _)| *k == step)
            .map(|(_, v)| v.as_slice())
    }

    /// The CSV columns after the standard ones: `,metric_<name>` for each metric.
    pub fn csv_header(&self) -> String {
        csv_header(&self.names)
    }

    /// The row of `step`'s metric cells, matching [`MetricLog::csv_header`] (empty cells when
    /// the values were not taken at that step).
    pub fn csv_cells(&self, step: u64) -> String {
        csv_cells(self.names.len(), self.at(step))
    }

    /// Adds `"metrics": {name: value, ...}` for the row of `step` to a JSON object (nothing
    /// when the file has no metrics; null values when they were not taken at that step).
    pub fn add_json(&self, row: &mut Value, step: u64) {
        add_json(row, &self.names, self.at(step));
    }
}

/// The CSV columns after a log's standard ones: `,metric_<name>` for each of `names`.
pub fn csv_header(names: &[String]) -> String {
    names.iter().map(|n| format!(",metric_{n}")).collect()
}

/// A row's cells for `count` metrics, matching [`csv_header`]: the `values`, or empty cells
/// where the row has none.
pub fn csv_cells(count: usize, values: Option<&[f64]>) -> String {
    match values {
        Some(v) => v
            .iter()
            .map(|&x| format!(",{}", crate::format::csv_num(x)))
            .collect(),
        None => ",".repeat(count),
    }
}

/// Adds `"metrics": {name: value, ...}` to a row's JSON object (nothing when `names` is empty;
/// null values where the row has none).
pub fn add_json(row: &mut Value, names: &[String], values: Option<&[f64]>) {
    if names.is_empty() {
        return;
    }
    let object: Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), values.map_or(Value::Null, |v| json_num(v[i]))))
        .collect();
    if let Value::Object(o) = row {
        o.insert("metrics".into(), Value::Object(object));
    }
}

/// Final metric values as a JSON object, for a summary.
pub fn metrics_json(metrics: &[(String, f64)]) -> Value {
    Value::Object(
        metrics
            .iter()
            .map(|(n, v)| (n.clone(), json_num(*v)))
            .collect(),
    )
}
