//! The `[metrics]` side of the TUI's model: each run's reported values in bounded memory, the
//! tabs a file shows (the Metrics tab only with metrics) and the metric the tab charts.

use super::app::{App, Tab};
use crate::run::trajectory::Decimated;

/// Reports a run view keeps (beyond that, every other one is dropped, the latest always kept).
const METRIC_POINTS: usize = 4096;

/// A run's metric values at the steps the worker reported them (after that many updates).
#[derive(Debug, Clone)]
pub struct MetricTrack {
    points: Decimated<Vec<f64>>,
}

impl Default for MetricTrack {
    fn default() -> Self {
        Self {
            points: Decimated::new(METRIC_POINTS),
        }
    }
}

impl MetricTrack {
    /// Adds the values reported at `step`; a step already held (reported again after a rewind,
    /// the same params) is kept as it was.
    pub fn push(&mut self, step: u64, values: Vec<f64>) {
        if self.points.latest().is_none_or(|(k, _)| *k < step) {
            self.points.push(step, values);
        }
    }

    /// Drops the values after step `len` (the run was rewound to it).
    pub fn truncate(&mut self, len: u64) {
        self.points.truncate(len);
    }

    /// The kept values and their steps, in step order.
    pub fn iter(&self) -> impl Iterator<Item = &(u64, Vec<f64>)> {
        self.points.iter()
    }

    /// The newest values and their step.
    pub fn latest(&self) -> Option<&(u64, Vec<f64>)> {
        self.points.latest()
    }

    /// Metric `i`'s finite values as `(step, value)` chart points, and the steps where it was
    /// NaN or Inf.
    pub fn series(&self, i: usize) -> (Vec<(f64, f64)>, Vec<f64>) {
        let (mut points, mut nonfinite) = (Vec::new(), Vec::new());
        for (k, v) in self.points.iter() {
            match v.get(i) {
                Some(x) if x.is_finite() => points.push((*k as f64, *x)),
                Some(_) => nonfinite.push(*k as f64),
                None => {}
            }
        }
        (points, nonfinite)
    }
}

impl App {
    /// The names of the selected file's metrics (empty without a session or metrics).
    pub fn metric_names(&self) -> &[String] {
        self.session().map_or(&[], |s| s.metric_names.as_slice())
    }

    /// The tabs the selected file shows: Metrics only when it has `[metrics]`, Sweep only while
    /// it has a sweep.
    pub fn tabs(&self) -> Vec<Tab> {
        let metrics = !self.metric_names().is_empty();
        let sweep = self.session().is_some_and(|s| s.sweep.is_some());
        Tab::ALL
            .into_iter()
            .filter(|t| (*t != Tab::Metrics || metrics) && (*t != Tab::Sweep || sweep))
            .collect()
    }

    /// The index of the metric the Metrics tab charts, within the selected file's metrics.
    pub fn shown_metric(&self) -> usize {
        self.metric % self.metric_names().len().max(1)
    }

    /// Moves the Metrics tab to the file's next metric, wrapping around.
    pub fn next_metric(&mut self) {
        self.metric = (self.shown_metric() + 1) % self.metric_names().len().max(1);
    }
}
