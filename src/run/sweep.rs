//! A sweep: a grid of ordinary runs (made as `gradscope run` makes them, see `gradscope
//! sweep`) stepped together, each grid point's runs over seeds summarised as a median and a
//! spread, ranked, and per swept axis the window of values that do nearly as well as the best.

use std::ops::ControlFlow;

use super::Run;
use super::summary::{Summary, drive_many};
use crate::compile::CompiledFile;
use crate::diagnostic::Diagnostic;

/// One run of a grid point (one seed): its summary and the loss it started from.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub initial_loss: f64,
    pub summary: Summary,
}

impl Outcome {
    /// Initial minus final loss: how far the run got down, whatever the sign of the loss.
    pub fn improvement(&self) -> f64 {
        self.initial_loss - self.summary.final_loss
    }

    /// Whether the run ended diverged: on a non-finite loss, or on one that grew above its best
    /// by more than [`super::DIVERGENCE_GROWTH`] times the size of its initial or best loss
    /// (6 -> 1.6e40 without a NaN on the way; noise at a minimum stays far below). With both
    /// exactly 0 there is no size to judge a finite loss by: not diverged.
    fn diverged(&self) -> bool {
        let s = &self.summary;
        let scale = self.initial_loss.abs().max(s.best_loss.abs());
        !s.final_loss.is_finite()
            || (scale > 0.0 && s.final_loss - s.best_loss > super::DIVERGENCE_GROWTH * scale)
    }
}

/// One grid point: which `-o` it comes from, its name (numbers in a few digits), the optimizer
/// spec it runs exactly (empty: the file's own), the value of each swept axis (as written), and
/// its runs, one a seed.
#[derive(Debug, Clone)]
pub struct Point {
    pub group: usize,
    pub name: String,
    pub spec: String,
    pub axes: Vec<(String, String)>,
    pub outcomes: Vec<Outcome>,
}

/// A sweep ready to step: its points (no outcomes yet), and per compiled file (one a seed and
/// combination of consts) the runs of it with the point each belongs to.
pub struct Grid {
    pub points: Vec<Point>,
    pub files: Vec<(CompiledFile, Vec<(usize, Run)>)>,
    /// The `-o` texts (or the file's optimizer), one a group of points.
    pub groups: Vec<String>,
    /// Whether points minimise different objectives (consts or variants with their own loss
    /// or consts), so that ranking them by loss compares unlike numbers.
    pub mixed_objectives: bool,
    /// The consts it sweeps.
    pub consts: Vec<String>,
    /// The axes whose values are objectives of their own: the swept consts, and `variant` when
    /// a variant has its own loss or consts.
    pub objectives: Vec<String>,
    /// The combinations of consts left out, named, and why: the file does not compile with them.
    pub left_out: Vec<(String, Vec<Diagnostic>)>,
}

/// Steps every run of `grid`, each compiled file's runs together (those sharing a program as
/// one batch), calling `on_row` after every row; `on_row` breaking off stops the sweep.
/// Returns the points with the outcome of every run that started.
pub fn drive_grid(
    grid: Grid,
    mut on_row: impl FnMut() -> ControlFlow<()>,
) -> Result<Vec<Point>, Diagnostic> {
    let Grid {
        mut points, files, ..
    } = grid;
    for (file, runs) in files {
        let (ids, mut runs): (Vec<usize>, Vec<Run>) = runs.into_iter().unzip();
        let mut initial = vec![f64::NAN; runs.len()];
        let results = drive_many(&file, &mut runs, |i, _, row| {
            if row.step == 0 {
                initial[i] = row.core.loss;
            }
            on_row()
        });
        let mut stopped = false;
        for ((result, id), initial_loss) in results.into_iter().zip(ids).zip(initial) {
            let Some(summary) = result else {
                stopped = true;
                continue;
            };
            let summary = summary?;
            stopped |= summary.interrupted.is_some();
            points[id].outcomes.push(Outcome {
                initial_loss,
                summary,
            });
        }
        if stopped {
            break;
        }
    }
    Ok(points)
}

/// How one point of a live sweep (the TUI's) ended: its last loss, and the step it halted at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ended {
    pub final_loss: f64,
    pub halted_at: Option<u64>,
}

/// Steps `runs` (one a point) to their ends, those that share a program as one batch, and
/// calls `ended(i, ..)` once for each as its run ends, in the order they end; `stop` set stops
/// them all (the points not ended are not reported).
pub fn step_points(
    compiled: &CompiledFile,
    mut runs: Vec<Run>,
    stop: &std::sync::atomic::AtomicBool,
    mut ended: impl FnMut(usize, Ended),
) {
    use std::sync::atomic::Ordering;
    let mut told = vec![false; runs.len()];
    let mut tell = |i: usize, run: &Run, loss: f64| {
        if !told[i] {
            told[i] = true;
            let halted_at = run.halted.as_ref().map(|h| h.step);
            ended(
                i,
                Ended {
                    final_loss: loss,
                    halted_at,
                },
            );
        }
    };
    drive_many(compiled, &mut runs, |i, run, row| {
        if run.is_done() {
            // The loss at the last params (the row passed is the last step's, from before it).
            tell(i, run, run.current().map_or(row.core.loss, |e| e.loss));
        }
        match stop.load(Ordering::Relaxed) {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        }
    });
    if stop.load(Ordering::Relaxed) {
        return;
    }
    // A run that ended without a row after it (halted as it was evaluated) ends here.
    for (i, run) in runs.iter().enumerate() {
        let loss = run.current().map_or(f64::NAN, |e| e.loss);
        tell(i, run, loss);
    }
}

/// A value over seeds: the median and the range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The median (the mean of the middle two for an even count) and range of `values` (NaN
    /// for none).
    pub fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// How a grid point ended, the worst over its seeds: a point that failed on one seed is not
/// reported as a loss.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Finished,
    /// ctrl-c stopped it at this step (on some seed).
    Interrupted(u64),
    /// Its runs ended diverged (see [`Outcome`]'s test) on `seeds` of its seeds.
    Diverged {
        seeds: usize,
    },
    /// A run stopped on a non-finite value (`on_nonfinite = "stop"`), and why.
    Halted(String),
}

/// What a sweep ranks by: the final loss (lower is better), or a `[metrics]` value.
#[derive(Debug, Clone, PartialEq)]
pub enum RankBy {
    Loss,
    /// A metric by name; `max`: higher is better (an accuracy), else lower.
    Metric {
        name: String,
        max: bool,
    },
}

impl RankBy {
    /// `METRIC` (lower is better) or `max:METRIC` (higher is better), as `--rank-by` takes it.
    pub fn parse(text: &str) -> Self {
        match text.strip_prefix("max:") {
            Some(name) => RankBy::Metric {
                name: name.to_string(),
                max: true,
            },
            None => RankBy::Metric {
                name: text.strip_prefix("min:").unwrap_or(text).to_string(),
                max: false,
            },
        }
    }
}

/// One row of a sweep's table: a grid point over its seeds.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its index in the sweep's points.
    pub point: usize,
    pub status: Status,
    pub final_loss: Spread,
    pub best_loss: Spread,
    /// The median step of the best loss.
    pub best_step: Option<u64>,
    /// The earliest first non-finite step over the seeds.
    pub first_nonfinite: Option<u64>,
    /// The median improvement (initial - final loss); -inf when it did not finish.
    pub improvement: f64,
    /// The median of the metric it is ranked by, if it is ranked by one.
    pub metric: Option<f64>,
    /// Its place in the order: the median loss or metric, negated when higher is better
    /// (+inf when it did not finish).
    pub rank: f64,
    pub steps_per_s: f64,
}

/// Why a sweep cannot be ranked as asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no metric named `{name}`; {}", match .names.is_empty() {
    true => "this file has no [metrics]".to_string(),
    false => format!("this file's metrics: {}", .names.join(", ")),
})]
pub struct NoMetric {
    pub name: String,
    pub names: Vec<String>,
}

/// The rows of `points` (those with any outcome), best first: finished points by `rank_by`,
/// then interrupted ones, then diverged and halted ones.
pub fn rows(points: &[Point], rank_by: &RankBy) -> Result<Vec<Row>, NoMetric> {
    let mut rows = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let Some(first) = p.outcomes.first() else {
            continue;
        };
        let summaries: Vec<&Summary> = p.outcomes.iter().map(|o| &o.summary).collect();
        let status = status(&p.outcomes);
        let of =
            |f: &dyn Fn(&Outcome) -> f64| Spread::of(&p.outcomes.iter().map(f).collect::<Vec<_>>());
        let metric = match rank_by {
            RankBy::Loss => None,
            RankBy::Metric { name, max } => {
                match first
                    .summary
                    .final_metrics
                    .iter()
                    .position(|(n, _)| n == name)
                {
                    Some(k) => Some((k, *max)),
                    None => {
                        return Err(NoMetric {
                            name: name.clone(),
                            names: first
                                .summary
                                .final_metrics
                                .iter()
                                .map(|(n, _)| n.clone())
                                .collect(),
                        });
                    }
                }
            }
        };
        let finished = status == Status::Finished;
        let value = metric.map(|(k, _)| of(&|o| o.summary.final_metrics[k].1).median);
        let rank = match (metric, value) {
            (Some((_, true)), Some(v)) => -v,
            (_, Some(v)) => v,
            (_, None) => of(&|o| o.summary.final_loss).median,
        };
        let steps: Vec<f64> = summaries
            .iter()
            .filter_map(|s| s.best_step)
            .map(|k| k as f64)
            .collect();
        rows.push(Row {
            point: i,
            final_loss: of(&|o| o.summary.final_loss),
            best_loss: of(&|o| o.summary.best_loss),
            best_step: (!steps.is_empty()).then(|| Spread::of(&steps).median.round() as u64),
            first_nonfinite: summaries
                .iter()
                .filter_map(|s| s.first_nonfinite_step)
                .min(),
            improvement: match finished {
                true => of(&Outcome::improvement).median,
                false => f64::NEG_INFINITY,
            },
            rank: match finished && !rank.is_nan() {
                true => rank,
                false => f64::INFINITY,
            },
            steps_per_s: of(&|o| o.summary.steps_per_s).median,
            metric: value,
            status,
        });
    }
    let class = |s: &Status| match s {
        Status::Finished => 0,
        Status::Interrupted(_) => 1,
        Status::Diverged { .. } | Status::Halted(_) => 2,
    };
    rows.sort_by(|a, b| {
        class(&a.status)
            .cmp(&class(&b.status))
            .then(a.rank.total_cmp(&b.rank))
    });
    Ok(rows)
}

/// The worst way any of a point's runs ended.
fn status(outcomes: &[Outcome]) -> Status {
    let summaries = || outcomes.iter().map(|o| &o.summary);
    if let Some(h) = summaries().find_map(|s| s.halted.clone()) {
        return Status::Halted(h);
    }
    let diverged = outcomes.iter().filter(|o| o.diverged()).count();
    if let Some(k) = summaries().find_map(|s| s.interrupted) {
        return Status::Interrupted(k);
    }
    match diverged {
        0 => Status::Finished,
        seeds => Status::Diverged { seeds },
    }
}

/// The share of the best improvement a value must reach to be in the window.
pub const WINDOW_SHARE: f64 = 0.9;

/// A swept axis's window: the values (in the axis's order) that do within 10% as well as the
/// best point, at the best of the other axes, by what the sweep ranks by.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub axis: String,
    /// Every value of the axis, in order (numerically when all are numbers).
    pub values: Vec<String>,
    /// Those in the window, or why there is none.
    pub inside: Inside,
}

/// Which values of an axis are in its window.
#[derive(Debug, Clone, PartialEq)]
pub enum Inside {
    /// The values in it, in the axis's order.
    Values(Vec<String>),
    /// Ranked by loss, no value improved on the initial loss.
    NoneImproved,
    /// No point finished.
    NoneFinished,
    /// Ranked by a metric that is not finite at the best point: there is no 10% of it.
    MetricNotFinite,
    /// Each value is an objective of its own (a const, a variant with its own loss or consts):
    /// their losses are not comparable.
    OwnObjectives,
}

/// The window of each axis `group`'s points sweep (an axis with one value is not swept), in
/// the order the points name them. Only the points of the best point's objective are weighed:
/// the same values of `objectives` (the axes whose values are objectives of their own), which
/// get [`Inside::OwnObjectives`]. Ranked by loss, a value is in when its improvement (initial
/// minus final loss) is within 10% of the best improvement; ranked by a metric, when the
/// metric is within 10% of the best point's (its size), on the side the ranking prefers. The
/// best point's values are always in.
pub fn windows(points: &[Point], rows: &[Row], group: usize, objectives: &[String]) -> Vec<Window> {
    let in_group: Vec<&Row> = rows
        .iter()
        .filter(|r| points[r.point].group == group)
        .collect();
    let value_of = |r: &Row, axis: &str| {
        points[r.point]
            .axes
            .iter()
            .find(|(a, _)| a == axis)
            .map(|(_, v)| v.clone())
    };
    let best = in_group
        .iter()
        .find(|r| r.status == Status::Finished)
        .copied();
    let same_objective =
        |r: &Row| best.is_none_or(|b| objectives.iter().all(|a| value_of(r, a) == value_of(b, a)));
    let members: Vec<&Row> = in_group
        .iter()
        .copied()
        .filter(|r| same_objective(r))
        .collect();
    // How good a point is, higher better: its improvement, or its metric (negated when lower
    // is better: the rank is the metric, or minus it when higher is).
    let goodness = |r: &Row| match r.metric {
        Some(_) => -r.rank,
        None => r.improvement,
    };
    let mut axes: Vec<&str> = Vec::new();
    for r in &in_group {
        for (a, _) in &points[r.point].axes {
            if !axes.contains(&a.as_str()) {
                axes.push(a);
            }
        }
    }
    let mut out = Vec::new();
    for axis in axes {
        let mut values: Vec<String> = Vec::new();
        for v in in_group.iter().filter_map(|r| value_of(r, axis)) {
            if !values.contains(&v) {
                values.push(v);
            }
        }
        if values.len() < 2 {
            continue;
        }
        let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse().ok()).collect();
        if let Some(n) = numbers {
            let mut order: Vec<usize> = (0..values.len()).collect();
            order.sort_by(|&a, &b| n[a].total_cmp(&n[b]));
            values = order.into_iter().map(|i| values[i].clone()).collect();
        }
        if objectives.iter().any(|a| a == axis) {
            out.push(Window {
                axis: axis.to_string(),
                values,
                inside: Inside::OwnObjectives,
            });
            continue;
        }
        // Each value's goodness at the best of the other axes.
        let best_of = |v: &String| {
            members
                .iter()
                .filter(|r| value_of(r, axis).as_ref() == Some(v))
                .map(|r| goodness(r))
                .fold(f64::NEG_INFINITY, f64::max)
        };
        let scores: Vec<f64> = values.iter().map(best_of).collect();
        let top = best.map_or(f64::NEG_INFINITY, goodness);
        let bar = match best.and_then(|b| b.metric) {
            Some(_) => top - (1.0 - WINDOW_SHARE) * top.abs(),
            None => WINDOW_SHARE * top,
        };
        let inside = match best {
            None => Inside::NoneFinished,
            Some(b) if b.metric.is_none() && !(top > 0.0 && top.is_finite()) => {
                Inside::NoneImproved
            }
            Some(_) if !top.is_finite() => Inside::MetricNotFinite,
            Some(_) => Inside::Values(
                values
                    .iter()
                    .zip(&scores)
                    .filter(|(_, s)| **s >= bar)
                    .map(|(v, _)| v.clone())
                    .collect(),
            ),
        };
        out.push(Window {
            axis: axis.to_string(),
            values,
            inside,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::summary::FinalParams;

    /// A point of group 0 sweeping `lr` whose one run went from `initial` to `last`.
    fn point(lr: &str, initial: f64, last: f64) -> Point {
        Point {
            group: 0,
            name: format!("sgd(lr={lr})"),
            spec: format!("sgd(lr={lr})"),
            axes: vec![("lr".into(), lr.into())],
            outcomes: vec![Outcome {
                initial_loss: initial,
                summary: Summary {
                    run: lr.into(),
                    optimizer: "sgd".into(),
                    dtype: "f64",
                    steps: 10,
                    final_loss: last,
                    final_eval_loss: None,
                    best_loss: last,
                    best_step: Some(10),
                    first_nonfinite_step: (!last.is_finite()).then_some(3),
                    clipped: 0,
                    skipped: 0,
                    stalled: 0,
                    first_stalled_step: None,
                    halted: None,
                    interrupted: None,
                    steps_per_s: 1.0,
                    final_params: FinalParams::Inline(Vec::new()),
                    final_metrics: vec![("m".into(), -last)],
                },
            }],
        }
    }

    fn window(points: &[Point]) -> Option<Vec<String>> {
        let rows = rows(points, &RankBy::Loss).unwrap();
        let w = windows(points, &rows, 0, &[]);
        assert_eq!(w.len(), 1);
        match &w[0].inside {
            Inside::Values(v) => Some(v.clone()),
            Inside::NoneImproved | Inside::NoneFinished | Inside::MetricNotFinite => None,
            Inside::OwnObjectives => panic!("lr is no objective"),
        }
    }

    #[test]
    fn the_window_holds_the_values_within_ten_percent_of_the_best_improvement() {
        // Improvements 2, 8, 10, 9.5, 7.2 (and a divergence): 0.9 * 10 = 9, so 1e-2 and 3e-2.
        let points = [
            point("1e-3", 10.0, 8.0),
            point("3e-3", 10.0, 2.0),
            point("1e-2", 10.0, 0.0),
            point("3e-2", 10.0, 0.5),
            point("1e-1", 10.0, 2.8),
            point("3e-1", 10.0, f64::NAN),
        ];
        assert_eq!(window(&points), Some(vec!["1e-2".into(), "3e-2".into()]));
    }

    #[test]
    fn the_window_is_right_for_a_loss_that_goes_negative() {
        // From -1 to -6, -5.6, -4: improvements 5, 4.6, 3; 0.9 * 5 = 4.5. A ratio of final
        // losses would pick the wrong side of 0.
        let points = [
            point("0.3", -1.0, -4.0),
            point("0.1", -1.0, -6.0),
            point("0.2", -1.0, -5.6),
        ];
        assert_eq!(window(&points), Some(vec!["0.1".into(), "0.2".into()]));
    }

    #[test]
    fn there_is_no_window_when_nothing_improved() {
        let points = [point("1", 1.0, 1.5), point("2", 1.0, f64::INFINITY)];
        assert_eq!(window(&points), None);
    }

    /// Ranked by a metric, the window is the values whose metric is within 10% of the best
    /// point's, which the best point's value is always among, whatever the losses did.
    #[test]
    fn ranked_by_a_metric_the_window_weighs_the_metric() {
        // The helper's metric m is minus the final loss; lower m (higher loss) ranks first.
        let points = [
            point("1e-3", 10.0, 9.6),
            point("1e-2", 10.0, 1.0),
            point("1e-1", 10.0, 9.0),
        ];
        let rows = rows(
            &points,
            &RankBy::Metric {
                name: "m".into(),
                max: false,
            },
        )
        .unwrap();
        assert_eq!(points[rows[0].point].name, "sgd(lr=1e-3)");
        let w = windows(&points, &rows, 0, &[]);
        // m: -9.6 best; within 0.96 above it: -9.0 is in, -1.0 is not.
        assert_eq!(
            w[0].inside,
            Inside::Values(vec!["1e-3".into(), "1e-1".into()])
        );
    }

    /// Ranked by a metric that is NaN at every point, no value is "within 10%" of it.
    #[test]
    fn a_metric_that_is_not_finite_gives_no_window() {
        let mut points = [point("1e-2", 10.0, 1.0), point("1e-1", 10.0, 2.0)];
        for p in &mut points {
            p.outcomes[0].summary.final_metrics = vec![("m".into(), f64::NAN)];
        }
        let rank_by = RankBy::Metric {
            name: "m".into(),
            max: true,
        };
        let rows = rows(&points, &rank_by).unwrap();
        let w = windows(&points, &rows, 0, &[]);
        assert_eq!(w[0].inside, Inside::MetricNotFinite);
    }

    /// An axis whose values are objectives of their own (a const) has no window, and the
    /// other axes are weighed among the best point's objective only: a const value whose loss
    /// is 1,000 times larger improves more, and must not set the lr window.
    #[test]
    fn the_window_weighs_only_the_best_points_objective() {
        let with_k = |lr: &str, k: &str, initial: f64, last: f64| {
            let mut p = point(lr, initial, last);
            p.axes.push(("k".into(), k.into()));
            p
        };
        let points = [
            with_k("1e-2", "1", 10.0, 1.0),
            with_k("1e-1", "1", 10.0, 5.0),
            with_k("1e-2", "1000", 1e4, 9e3),
            with_k("1e-1", "1000", 1e4, 1e3),
        ];
        let rows = rows(&points, &RankBy::Loss).unwrap();
        let w = windows(&points, &rows, 0, &["k".into()]);
        let inside = |axis: &str| w.iter().find(|w| w.axis == axis).unwrap().inside.clone();
        assert_eq!(inside("lr"), Inside::Values(vec!["1e-2".into()]));
        assert_eq!(inside("k"), Inside::OwnObjectives);
    }

    #[test]
    fn a_loss_that_blew_up_without_a_nan_diverged_and_noise_at_a_minimum_did_not() {
        let with_best = |name: &str, initial: f64, best: f64, last: f64| {
            let mut p = point(name, initial, last);
            p.outcomes[0].summary.best_loss = best;
            p
        };
        let points = [
            with_best("0.6", 6.0, -0.048, 1.6e40),
            with_best("0.1", 10.0, 1e-12, 1e-8),
            // Up from its best by more than 1000 times the larger of |initial| and |best| (3):
            // still finite, diverged; just under it, not.
            with_best("0.5", -2.0, -3.0, 2998.0),
            with_best("0.4", -2.0, -3.0, 2996.0),
        ];
        let rows = rows(&points, &RankBy::Loss).unwrap();
        let status = |point: usize| &rows.iter().find(|r| r.point == point).unwrap().status;
        assert_eq!(status(0), &Status::Diverged { seeds: 1 });
        assert_eq!(status(1), &Status::Finished);
        assert_eq!(status(2), &Status::Diverged { seeds: 1 });
        assert_eq!(status(3), &Status::Finished);
    }

    #[test]
    fn rows_rank_finished_points_first_and_never_a_divergent_one_by_loss() {
        let points = [
            point("1", 5.0, f64::NAN),
            point("2", 5.0, 3.0),
            point("3", 5.0, 1.0),
        ];
        let rows = rows(&points, &RankBy::Loss).unwrap();
        let order: Vec<usize> = rows.iter().map(|r| r.point).collect();
        assert_eq!(order, [2, 1, 0]);
        assert_eq!(rows[2].status, Status::Diverged { seeds: 1 });
        // Ranked by the metric (-loss here), lower first the order turns round; higher first
        // it is the loss's.
        let order = |rank_by: &str| -> Vec<usize> {
            let rows = super::rows(&points, &RankBy::parse(rank_by)).unwrap();
            rows.iter().map(|r| r.point).collect()
        };
        assert_eq!(order("m"), [1, 2, 0]);
        assert_eq!(order("max:m"), [2, 1, 0]);
        assert!(super::rows(&points, &RankBy::parse("acc")).is_err());
    }

    #[test]
    fn spreads_are_the_median_and_range() {
        assert_eq!(
            Spread::of(&[3.0, 1.0, 2.0]),
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}
