//! Evaluating a loss over a grid of a plane, or along a line: in batches of up to 4,096 points
//! per tensor evaluation where the loss allows it, otherwise point by point, handing results out
//! in chunks so a caller can show progress and cancel.

use std::time::{Duration, Instant};

use super::{Grid, GridSpec, Plane};
use crate::compile::{CompiledFile, Evaluator};
use crate::diagnostic::Diagnostic;

/// How a grid was evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Many points per tensor evaluation.
    Batched,
    /// One forward pass per point.
    Pointwise,
}

impl Mode {
    /// How reports and the bench name the mode.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Batched => "batched",
            Mode::Pointwise => "point by point",
        }
    }
}

/// Receives evaluated `(index, loss)` pairs a chunk at a time; returning false stops.
pub type Sink<'a> = dyn FnMut(&[(usize, f64)]) -> bool + 'a;

/// Points per batched evaluation.
const BATCH: usize = 4096;
/// How often point-by-point evaluation hands results out.
const CHUNK_EVERY: Duration = Duration::from_millis(30);

/// One run definition's loss, with params of its own (so evaluating never disturbs a run).
pub struct Surface {
    evaluator: Evaluator,
    /// Decided once: whether the loss batches (checking builds a batched plan).
    mode: Mode,
}

impl Surface {
    /// The loss of `compiled`'s run definition `run`, in that definition's dtype.
    pub fn new(compiled: &CompiledFile, run: usize) -> Result<Self, Diagnostic> {
        let evaluator = Evaluator::new(compiled, run)
            .map_err(|e| Diagnostic::error(format!("cannot prepare the landscape: {e}")))?;
        let mode = match evaluator.batched(1) {
            Some(_) => Mode::Batched,
            None => Mode::Pointwise,
        };
        Ok(Self { evaluator, mode })
    }

    /// The same loss, always evaluated point by point (to measure what batching saves).
    pub fn pointwise(self) -> Self {
        Self {
            mode: Mode::Pointwise,
            ..self
        }
    }

    /// Whether many points at a time evaluate in one pass.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The loss at `n` flat param points, `point(k)` making the k-th only when it is evaluated
    /// (a grid of a large model would not fit in memory as vectors), handed to `sink` in chunks
    /// of `(k, loss)`. Stops early, returning Ok, when `sink` returns false.
    pub fn eval_points(
        &self,
        n: usize,
        point: &dyn Fn(usize) -> Vec<f64>,
        sink: &mut Sink,
    ) -> Result<Mode, Diagnostic> {
        if self.mode == Mode::Batched {
            for start in (0..n).step_by(BATCH) {
                let chunk: Vec<Vec<f64>> = (start..n.min(start + BATCH)).map(point).collect();
                let batch = self
                    .evaluator
                    .batched(chunk.len())
                    .expect("batches for one point, so for any number");
                let out: Vec<(usize, f64)> = batch
                    .losses(&chunk)?
                    .into_iter()
                    .enumerate()
                    .map(|(k, v)| (start + k, v))
                    .collect();
                if !sink(&out) {
                    break;
                }
            }
            return Ok(Mode::Batched);
        }
        let mut out = Vec::new();
        let mut since = Instant::now();
        for k in 0..n {
            self.evaluator.set_flat(&point(k))?;
            out.push((k, self.evaluator.loss()?));
            if since.elapsed() >= CHUNK_EVERY {
                if !sink(&out) {
                    return Ok(Mode::Pointwise);
                }
                out.clear();
                since = Instant::now();
            }
        }
        if !out.is_empty() {
            sink(&out);
        }
        Ok(Mode::Pointwise)
    }

    /// Fills `grid` over `plane` in coarse-to-fine order, handing each chunk of `(cell, loss)`
    /// to `progress`; stops early when it returns false.
    pub fn fill(
        &self,
        plane: &Plane,
        grid: &mut Grid,
        progress: &mut Sink,
    ) -> Result<Mode, Diagnostic> {
        let order = grid.spec.progressive_order();
        let spec = grid.spec.clone();
        let point = |k: usize| {
            let cell = order[k];
            let [a, b] = spec.coord(cell % spec.nx, cell / spec.nx);
            plane.point(a, b)
        };
        self.eval_points(order.len(), &point, &mut |chunk| {
            let cells: Vec<(usize, f64)> = chunk.iter().map(|&(i, v)| (order[i], v)).collect();
            for &(k, v) in &cells {
                grid.values[k] = Some(v);
            }
            progress(&cells)
        })
    }

    /// The whole grid at once.
    pub fn grid(&self, plane: &Plane, spec: GridSpec) -> Result<(Grid, Mode), Diagnostic> {
        let mut grid = Grid::new(spec);
        let mode = self.fill(plane, &mut grid, &mut |_| true)?;
        Ok((grid, mode))
    }

    /// The minimum near `start` on the loss itself, not on a grid's samples: a patch of
    /// 17 x 17 points `cell` wide a side around the best point so far moves to its lowest point,
    /// and halves when that is its centre, until it is 1/256 of `cell` wide. A grid's minimum
    /// in a narrow curved valley (Rosenbrock's) sits where a sample happens to fall near the
    /// valley floor, cells away from the minimum; this follows the floor to it. Meant for a
    /// loss that evaluates as a batch (a few thousand points per patch, 60 patches at most).
    pub fn refine_min(
        &self,
        plane: &Plane,
        start: (f64, [f64; 2]),
        cell: [f64; 2],
    ) -> Result<(f64, [f64; 2]), Diagnostic> {
        const SIDE: usize = 17;
        let (mut best, mut at) = start;
        let mut width = [cell[0] * 2.0, cell[1] * 2.0];
        for _ in 0..60 {
            if width[0] < cell[0] / 256.0 {
                break;
            }
            let spec = GridSpec {
                x: (at[0] - width[0] / 2.0, at[0] + width[0] / 2.0),
                y: (at[1] - width[1] / 2.0, at[1] + width[1] / 2.0),
                nx: SIDE,
                ny: SIDE,
            };
            let (patch, _) = self.grid(plane, spec)?;
            match patch.min() {
                Some((v, p)) if v < best => (best, at) = (v, p),
                _ => width = [width[0] / 2.0, width[1] / 2.0],
            }
        }
        Ok((best, at))
    }

    /// The loss along `direction` (a run's next update) at each of [`lr_multiples`].
    pub fn lr_line(&self, origin: &[f64], direction: &[f64]) -> Result<LrLine, Diagnostic> {
        let s = lr_multiples();
        let loss = self.line(origin, direction, &s)?;
        Ok(LrLine { s, loss })
    }

    /// The loss at `origin + s * direction` for each `s`.
    pub fn line(
        &self,
        origin: &[f64],
        direction: &[f64],
        s: &[f64],
    ) -> Result<Vec<f64>, Diagnostic> {
        // s = 0 is the origin itself, even where the direction is not finite (0 * Inf is NaN).
        let point = |k: usize| match s[k] {
            0.0 => origin.to_vec(),
            m => origin
                .iter()
                .zip(direction)
                .map(|(o, d)| o + m * d)
                .collect(),
        };
        let mut out = vec![f64::NAN; s.len()];
        self.eval_points(s.len(), &point, &mut |chunk| {
            for &(k, v) in chunk {
                out[k] = v;
            }
            true
        })?;
        Ok(out)
    }
}

/// The loss along a run's next update, at learning-rate multiples `s` ([`lr_multiples`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LrLine {
    pub s: Vec<f64>,
    pub loss: Vec<f64>,
}

impl LrLine {
    /// The loss at multiple `m` (0 is where the run is now), if it was evaluated there.
    pub fn at(&self, m: f64) -> Option<f64> {
        self.s.iter().position(|&x| x == m).map(|k| self.loss[k])
    }

    /// The multiple above 0 with the lowest finite loss, and that loss.
    pub fn best(&self) -> Option<(f64, f64)> {
        self.s
            .iter()
            .zip(&self.loss)
            .filter(|(m, l)| **m > 0.0 && l.is_finite())
            .map(|(m, l)| (*m, *l))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Learning-rate multiples a 1-D slice along the next update is evaluated at: 0 (staying put),
/// then 1/16 to 16 in eighth-octave steps.
pub fn lr_multiples() -> Vec<f64> {
    std::iter::once(0.0)
        .chain((-32..=32).map(|k| 2f64.powf(f64::from(k) / 8.0)))
        .collect()
}
