//! The learning-rate range test (Smith 2017, as fastai's `lr_find` runs it): step a copy of a
//! run with an lr growing exponentially, smooth the loss, stop once it clearly diverges, and
//! suggest an lr from the curve. The run it starts from is not touched.

use std::ops::ControlFlow;

use super::{Retention, Run};
use crate::diagnostic::Diagnostic;
use crate::optim::schedule::LrSchedule;

/// Weight of the past in the smoothed loss, as fastai's.
pub const BETA: f64 = 0.98;
/// The smoothed loss may rise above its minimum by this many times the drop from the start to
/// that minimum before the test stops (fastai stops at 4x the minimum, which fails for losses at
/// or below 0; for a loss falling to 0 from L the two agree up to the lag: a rise of 3L).
pub const RISE: f64 = 3.0;

/// The part of its size by which the smoothed loss must fall for the test to count a descent.
const NOISE: f64 = 1e-6;

/// The lrs of the test: `steps` of them from `from` to `to`, evenly spaced in log lr.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrRange {
    pub from: f64,
    pub to: f64,
    pub steps: usize,
}

/// Why an [`LrRange`] is not one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RangeError {
    #[error("--from and --to must be positive and finite (got {from} and {to})")]
    NotPositive { from: f64, to: f64 },
    #[error("--from ({from}) must be below --to ({to})")]
    NotIncreasing { from: f64, to: f64 },
    #[error("the test needs at least 2 steps (got {0})")]
    TooFewSteps(usize),
}

impl LrRange {
    /// The range, checked: 0 < from < to, both finite, and at least two steps.
    pub fn new(from: f64, to: f64, steps: usize) -> Result<Self, RangeError> {
        if !(from > 0.0 && to > 0.0 && from.is_finite() && to.is_finite()) {
            return Err(RangeError::NotPositive { from, to });
        }
        if from >= to {
            return Err(RangeError::NotIncreasing { from, to });
        }
        if steps < 2 {
            return Err(RangeError::TooFewSteps(steps));
        }
        Ok(Self { from, to, steps })
    }

    /// The lr of step `i`: `from * (to/from)^(i/(steps-1))`, so step 0 is `from` and the last
    /// is `to`.
    pub fn lr(&self, i: usize) -> f64 {
        self.from * (self.to / self.from).powf(i as f64 / (self.steps - 1) as f64)
    }
}

/// The debiased exponential moving average of the losses: the average of a constant is that
/// constant from the first step on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Smoother {
    avg: f64,
    /// BETA^(losses seen).
    decay: f64,
}

impl Smoother {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self {
            avg: 0.0,
            decay: 1.0,
        }
    }

    /// Takes the next loss and returns the smoothed value: avg = β avg + (1-β) loss, divided by
    /// 1 - β^(i+1) for the i-th loss (0-based).
    pub fn push(&mut self, loss: f64) -> f64 {
        self.avg = BETA * self.avg + (1.0 - BETA) * loss;
        self.decay *= BETA;
        self.avg / (1.0 - self.decay)
    }
}

impl Default for Smoother {
    fn default() -> Self {
        Self::new()
    }
}

/// One step of the test: its lr, the loss after the update at that lr, and the smoothed loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub lr: f64,
    pub loss: f64,
    pub smoothed: f64,
}

/// Why the test ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// Every step of the range was taken.
    Finished,
    /// The smoothed loss rose more than [`RISE`] times the drop from the start to its minimum
    /// above that minimum (at the last point).
    Diverged,
    /// The smoothed loss rose above its start without ever falling below it: no lr of the
    /// range descends from here (a minimum already, or a maximum of the lr's direction).
    NoDescent,
    /// The loss after the last point's step is NaN or infinite.
    NonFinite,
    /// The run halted (its non-finite policy), with its reason.
    Halted(String),
    /// The caller asked it to stop (ctrl-c).
    Interrupted,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Finished => write!(f, "it took every step of the range"),
            Stop::Diverged => write!(
                f,
                "the smoothed loss rose above its minimum by more than {RISE}x the drop from \
                 the start to that minimum"
            ),
            Stop::NoDescent => write!(
                f,
                "no descent from here: the smoothed loss only rose from its start (at a minimum \
                 already?)"
            ),
            Stop::NonFinite => write!(f, "the loss turned non-finite"),
            Stop::Halted(why) => write!(f, "the run halted: {why}"),
            Stop::Interrupted => write!(f, "interrupted"),
        }
    }
}

/// The curve of a test as it is recorded, which knows when to stop.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Curve {
    pub points: Vec<Point>,
    smoother: Smoother,
}

impl Curve {
    /// No points yet.
    pub fn new() -> Self {
        Self {
            points: Vec::new(),
            smoother: Smoother::new(),
        }
    }

    /// Records the loss after the step at `lr`; `Some` when the test should stop there.
    pub fn push(&mut self, lr: f64, loss: f64) -> Option<Stop> {
        if !loss.is_finite() {
            self.points.push(Point {
                lr,
                loss,
                smoothed: f64::NAN,
            });
            return Some(Stop::NonFinite);
        }
        let smoothed = self.smoother.push(loss);
        self.points.push(Point { lr, loss, smoothed });
        let start = self.points[0].smoothed;
        let min = self.min()?.smoothed;
        (smoothed - min > RISE * (start - min)).then_some(match self.descends() {
            true => Stop::Diverged,
            false => Stop::NoDescent,
        })
    }

    /// Whether the smoothed loss fell below its start by more than rounding (a part in 10^6:
    /// at a minimum it wobbles by a few ulps, which is no descent to suggest an lr from).
    fn descends(&self) -> bool {
        let (Some(first), Some(min)) = (self.finite().next(), self.min()) else {
            return false;
        };
        let (start, min) = (first.smoothed, min.smoothed);
        start - min > NOISE * start.abs().max(min.abs())
    }

    /// The point of the lowest smoothed loss (the first of equal ones).
    fn min(&self) -> Option<&Point> {
        self.finite()
            .min_by(|a, b| a.smoothed.total_cmp(&b.smoothed))
    }

    fn finite(&self) -> impl Iterator<Item = &Point> {
        self.points.iter().filter(|p| p.smoothed.is_finite())
    }

    /// The lr at the steepest descent of the smoothed loss against log lr: the left end of the
    /// most negative forward difference (s[i+1] - s[i]) / (ln lr[i+1] - ln lr[i]), as fastai's
    /// `steep`. None without a descent.
    pub fn steepest(&self) -> Option<f64> {
        if !self.descends() {
            return None;
        }
        let finite: Vec<&Point> = self.finite().collect();
        finite
            .windows(2)
            .map(|w| {
                (
                    w[0].lr,
                    (w[1].smoothed - w[0].smoothed) / (w[1].lr / w[0].lr).ln(),
                )
            })
            .filter(|(_, slope)| *slope < 0.0)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(lr, _)| lr)
    }

    /// The lr of the lowest smoothed loss, divided by 10 (fastai's `minimum`); None without a
    /// descent (at the start, a tenth of it would be an lr the test never tried).
    pub fn min_tenth(&self) -> Option<f64> {
        match self.descends() {
            true => self.min().map(|p| p.lr / 10.0),
            false => None,
        }
    }
}

/// What a test found.
#[derive(Debug, Clone, PartialEq)]
pub struct LrFind {
    pub curve: Curve,
    pub stop: Stop,
}

/// Runs the test on a copy of `start` (its params, optimizer state and settings; the copy's
/// schedule is constant and its lr multiplier is set each step so step i uses `range.lr(i)`):
/// `start` is not touched. `each` sees every point as it comes and may stop the test.
pub fn lr_find(
    start: &Run,
    range: &LrRange,
    mut each: impl FnMut(usize, &Point) -> ControlFlow<()>,
) -> Result<LrFind, Diagnostic> {
    let base = start.config.optimizer.lr();
    if !(base > 0.0 && base.is_finite()) {
        return Err(Diagnostic::error(format!(
            "the lr range test scales the optimizer's lr, and `{}` has lr = {base}",
            start.config.optimizer.name()
        ))
        .help("give it a positive lr, e.g. -o 'sgd(lr=1)'"));
    }
    if let Some(h) = &start.halted {
        return Err(Diagnostic::error(format!(
            "the run halted at step {}: {}",
            h.step, h.reason
        )));
    }
    let mut run = start.fork(Retention::Totals { best: false })?;
    run.config.schedule = LrSchedule::constant();
    let mut curve = Curve::new();
    let mut stop = Stop::Finished;
    for i in 0..range.steps {
        let lr = range.lr(i);
        run.lr_scale = lr / base;
        run.step()?;
        if let Some(h) = &run.halted
            && run.current().is_none_or(|e| e.loss.is_finite())
        {
            stop = Stop::Halted(h.reason.clone());
            break;
        }
        let loss = run.current().map_or(f64::NAN, |e| e.loss);
        let ended = curve.push(lr, loss);
        let asked = each(i, &curve.points[i]).is_break();
        if let Some(s) = ended {
            stop = s;
            break;
        }
        if asked {
            stop = Stop::Interrupted;
            break;
        }
    }
    Ok(LrFind { curve, stop })
}
