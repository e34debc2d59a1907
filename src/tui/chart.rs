//! Turning a run's history into chart points: metric selection, x range, EMA smoothing with
//! TensorBoard's debiasing, log transform, and decimation per terminal column (min and max of each
//! bucket, so spikes survive). Cost grows with the visible steps and the width, and the points
//! drawn with the width alone.

use super::pyramid::{Ema, Pyramid};
use crate::run::history::{History, StepRecord};

/// What a series plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Loss,
    /// The loss at the optimizer's eval params (NaN where it has none).
    EvalLoss,
    GradNorm,
    ParamGradNorm(usize),
    Lr,
    UpdateRatio,
    ParamNorm(usize),
}

/// The smoothing weights `s` cycles through (0: off), as TensorBoard's slider would set them.
pub const SMOOTHING: [f64; 4] = [0.0, 0.6, 0.9, 0.99];

/// The weight after `w` in [`SMOOTHING`]'s cycle (a weight set with `S` goes to the next
/// larger one, or off).
pub fn next_smoothing(w: f64) -> f64 {
    SMOOTHING.iter().copied().find(|&s| s > w).unwrap_or(0.0)
}

impl Metric {
    /// Every metric a run with `n_params` params has.
    pub fn all(n_params: usize) -> Vec<Metric> {
        let mut m = vec![
            Metric::Loss,
            Metric::EvalLoss,
            Metric::GradNorm,
            Metric::Lr,
            Metric::UpdateRatio,
        ];
        m.extend((0..n_params).map(Metric::ParamGradNorm));
        m.extend((0..n_params).map(Metric::ParamNorm));
        m
    }

    /// The metric's value in one step record.
    pub fn of(self, r: &StepRecord) -> f64 {
        let c = &r.core;
        match self {
            Metric::Loss => c.loss,
            Metric::EvalLoss => r.eval_loss.unwrap_or(f64::NAN),
            Metric::GradNorm => f64::from(c.grad_norm),
            Metric::Lr => f64::from(c.lr),
            Metric::UpdateRatio => f64::from(c.update_ratio),
            Metric::ParamGradNorm(i) => f64::from(r.param_grad_norms[i]),
            Metric::ParamNorm(i) => f64::from(r.param_norms[i]),
        }
    }

    /// The metric at step `k` of a history.
    pub fn value(self, h: &History, k: usize) -> f64 {
        let c = h.core(k);
        match self {
            Metric::Loss => c.loss,
            Metric::EvalLoss => h.eval_loss(k).unwrap_or(f64::NAN),
            Metric::GradNorm => f64::from(c.grad_norm),
            Metric::Lr => f64::from(c.lr),
            Metric::UpdateRatio => f64::from(c.update_ratio),
            Metric::ParamGradNorm(i) => f64::from(h.param_grad_norm(k, i)),
            Metric::ParamNorm(i) => f64::from(h.param_norm(k, i)),
        }
    }
}

/// Points ready for a chart, in transformed (possibly log10) units.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    pub points: Vec<(f64, f64)>,
    /// Steps whose value was NaN or Inf (one per column at most).
    pub nonfinite: Vec<f64>,
}

/// EMA with debiasing, as TensorBoard draws it; non-finite values pass through unsmoothed.
pub fn ema(values: &[f64], weight: f64) -> Vec<f64> {
    let mut e = Ema::default();
    values.iter().map(|&v| e.next(v, weight)).collect()
}

/// One metric of one run, summarised as it grows (raw and smoothed), so long histories draw in
/// time proportional to the width.
#[derive(Debug, Clone)]
pub struct Stream {
    pub metric: Metric,
    raw: Pyramid,
    smooth: Pyramid,
    ema: Ema,
    /// The EMA weight of `smooth`.
    weight: f64,
}

impl Stream {
    /// An empty summary of one metric, smoothed with weight `weight`.
    pub fn new(metric: Metric, weight: f64) -> Self {
        Self {
            metric,
            raw: Pyramid::default(),
            smooth: Pyramid::default(),
            ema: Ema::default(),
            weight,
        }
    }

    /// The smallest finite value of the whole series (+inf for none).
    pub fn min(&self) -> f64 {
        self.raw.min()
    }

    /// Adds one step's value (raw and smoothed).
    pub fn push(&mut self, r: &StepRecord) {
        let v = self.metric.of(r);
        self.raw.push(v);
        self.smooth.push(self.ema.next(v, self.weight));
    }

    /// The whole series from its summaries, smoothed with weight `smooth` if given, or None
    /// when it is short enough to scan (or was smoothed with another weight).
    pub fn series(&self, columns: usize, log: bool, smooth: Option<f64>) -> Option<Series> {
        let p = match smooth {
            Some(w) if w != self.weight => return None,
            Some(_) => &self.smooth,
            None => &self.raw,
        };
        let (size, blocks) = p.blocks(columns)?;
        let mut out = Series::default();
        for (b, block) in blocks.iter().enumerate() {
            let x = (b * size) as f64;
            if block.nonfinite > 0 {
                out.nonfinite.push(x);
            }
            let (lo, hi) = if log {
                (
                    block.min_pos.log10(),
                    if block.max > 0.0 {
                        block.max.log10()
                    } else {
                        f64::NAN
                    },
                )
            } else {
                (block.min, block.max)
            };
            if lo.is_finite() && hi.is_finite() {
                out.points.push((x, lo));
                out.points.push((x + (size / 2) as f64, hi));
            }
        }
        Some(out)
    }
}

/// Empty streams for every metric of a run with `n_params` params, smoothed with `weight`.
pub fn new_streams(n_params: usize, weight: f64) -> Vec<Stream> {
    Metric::all(n_params)
        .into_iter()
        .map(|m| Stream::new(m, weight))
        .collect()
}

/// Streams for every metric of a history, smoothed with `weight`, rebuilt from scratch (after
/// a rewind, or a new smoothing weight).
pub fn streams(h: &History, weight: f64) -> Vec<Stream> {
    let Some(first) = h.get(0) else {
        return Vec::new();
    };
    let mut out = new_streams(first.param_norms.len(), weight);
    for k in 0..h.len() {
        if let Some(r) = h.get(k) {
            out.iter_mut().for_each(|s| s.push(&r));
        }
    }
    out
}

/// The series of `metric` over steps `range`, smoothed with weight `smooth` if given,
/// decimated to `columns` buckets.
pub fn series(
    h: &History,
    metric: Metric,
    range: std::ops::Range<usize>,
    columns: usize,
    log: bool,
    smooth: Option<f64>,
) -> Series {
    let raw: Vec<f64> = range.clone().map(|k| metric.value(h, k)).collect();
    let smoothed = smooth.map(|w| ema(&raw, w));
    let values = smoothed.as_deref().unwrap_or(&raw);
    decimate(values, &raw, range.start, columns.max(1), log)
}

/// Buckets `values` (for steps `first..`) into at most `columns` columns: each contributes its
/// min and max. `raw` decides which steps are non-finite.
pub fn decimate(values: &[f64], raw: &[f64], first: usize, columns: usize, log: bool) -> Series {
    let n = values.len();
    let mut out = Series::default();
    if n == 0 {
        return out;
    }
    let bucket = n.div_ceil(columns).max(1);
    // log10 is increasing: a bucket's extremes are those of its positive values, and only
    // they are transformed (a log10 of every value was a seventh of drawing a chart).
    let drawn = |v: f64| v.is_finite() && (!log || v > 0.0);
    let transform = |v: f64| if log { v.log10() } else { v };
    for (b, chunk) in values.chunks(bucket).enumerate() {
        let start = b * bucket;
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        let (mut lo_k, mut hi_k) = (0, 0);
        for (i, &v) in chunk.iter().enumerate() {
            if drawn(v) {
                if v < lo {
                    lo = v;
                    lo_k = i;
                }
                if v > hi {
                    hi = v;
                    hi_k = i;
                }
            }
        }
        let (lo, hi) = (transform(lo), transform(hi));
        if raw[start..start + chunk.len()]
            .iter()
            .any(|v| !v.is_finite())
        {
            out.nonfinite.push((first + start) as f64);
        }
        if lo.is_finite() {
            // In step order, so the line goes through the extremes as the data did.
            let (a, b) = if lo_k <= hi_k {
                ((lo_k, lo), (hi_k, hi))
            } else {
                ((hi_k, hi), (lo_k, lo))
            };
            out.points.push(((first + start + a.0) as f64, a.1));
            if b.0 != a.0 {
                out.points.push(((first + start + b.0) as f64, b.1));
            }
        }
    }
    out
}

/// Axis bounds that are finite and not degenerate (ratatui draws nothing for NaN bounds).
pub fn bounds(values: impl Iterator<Item = f64>) -> [f64; 2] {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return [0.0, 1.0];
    }
    if hi - lo < 1e-12 * lo.abs().max(1.0) {
        let pad = (lo.abs() * 0.1).max(1e-9);
        return [lo - pad, hi + pad];
    }
    [lo, hi]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimation_keeps_spikes_and_bounds_the_point_count() {
        let mut v: Vec<f64> = (0..10_000).map(|k| k as f64 * 1e-4).collect();
        v[5_000] = 1e6;
        let s = decimate(&v, &v, 0, 100, false);
        assert!(s.points.len() <= 200);
        assert!(s.points.iter().any(|&(x, y)| x == 5_000.0 && y == 1e6));
    }

    #[test]
    fn log_decimation_draws_the_log_of_each_buckets_positive_extremes() {
        let v = [1.0, 10.0, 0.0, -5.0, 100.0, 1e-3, 0.0, -1.0];
        let s = decimate(&v, &v, 0, 3, true);
        // Buckets of 3: {1, 10, 0}, {-5, 100, 1e-3} (the extremes in step order) and {0, -1},
        // which has nothing to draw on a log axis.
        assert_eq!(
            s.points,
            vec![(0.0, 0.0), (1.0, 1.0), (4.0, 2.0), (5.0, -3.0)]
        );
        assert!(s.nonfinite.is_empty());
    }

    #[test]
    fn nonfinite_steps_become_markers_not_gaps() {
        let v = [1.0, f64::NAN, 2.0, f64::INFINITY];
        let s = decimate(&v, &v, 10, 10, false);
        assert_eq!(s.nonfinite, vec![11.0, 13.0]);
        assert_eq!(s.points, vec![(10.0, 1.0), (12.0, 2.0)]);
    }

    #[test]
    fn ema_is_debiased_like_tensorboard() {
        // First value is returned unchanged; then (0.8*0.2*1 + 0.2*3) / (1 - 0.64).
        let s = ema(&[1.0, 3.0], 0.8);
        assert_eq!(s[0], 1.0);
        assert!((s[1] - (0.8 * 0.2 + 0.2 * 3.0) / (1.0 - 0.64)).abs() < 1e-12);
    }

    #[test]
    fn log_drops_non_positive_values() {
        let v = [100.0, 0.0, 0.001];
        let s = decimate(&v, &v, 0, 10, true);
        assert_eq!(s.points, vec![(0.0, 2.0), (2.0, -3.0)]);
    }

    #[test]
    fn bounds_are_never_nan_or_empty() {
        assert_eq!(bounds([f64::NAN].into_iter()), [0.0, 1.0]);
        let b = bounds([5.0, 5.0].into_iter());
        assert!(b[0] < 5.0 && b[1] > 5.0);
    }
}
