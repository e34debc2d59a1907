//! The chart tabs: every run's metric overlaid, with lr-change marks and NaN/Inf markers.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph};

use super::{nan_markers, panel};
use crate::format::{cut, fmt_digits, fmt_num, fmt_short};
use crate::run::history::History;
use crate::tui::app::{App, FileEntry, Focus, LAST_N, Tab};
use crate::tui::chart::{self, Metric, Series, Stream};
use crate::tui::session::RunView;

/// The metrics a tab plots for one run, with a label suffix each: the loss tabs add the loss
/// at the eval params of an optimizer that has them.
fn metrics(app: &App, run: &RunView) -> Vec<(Metric, String)> {
    let params = if run.history.is_empty() {
        0
    } else {
        run.params.len()
    };
    let names: Vec<String> = run.params.iter().map(|p| p.name.clone()).collect();
    let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| format!("p{i}"));
    match app.tab {
        Tab::Loss | Tab::Landscape | Tab::Metrics | Tab::Sweep => {
            let mut m = vec![(Metric::Loss, String::new())];
            if run.history.has_eval_loss() {
                m.push((Metric::EvalLoss, " (eval)".into()));
            }
            m
        }
        Tab::GradNorm if app.per_param => (0..params)
            .map(|i| (Metric::ParamGradNorm(i), format!(" ∇{}", name(i))))
            .collect(),
        Tab::GradNorm => vec![(Metric::GradNorm, String::new())],
        Tab::LrRatio => vec![
            (Metric::Lr, " lr".into()),
            (Metric::UpdateRatio, " Δ/p".into()),
        ],
        Tab::Params => (0..params)
            .map(|i| (Metric::ParamNorm(i), format!(" |{}|", name(i))))
            .collect(),
    }
}

/// One metric of a history, with the summaries kept beside it.
struct Curve<'a> {
    history: &'a History,
    streams: &'a [Stream],
    metric: Metric,
}

impl Curve<'_> {
    /// Its points from step `lo` on, `columns` wide: the whole run of a long history comes from
    /// the summaries; shorter views are scanned.
    fn series(&self, lo: usize, columns: usize, log: bool, smooth: Option<f64>) -> Series {
        let hi = self.history.len();
        let range = lo.min(hi)..hi;
        self.streams
            .iter()
            .find(|s| s.metric == self.metric)
            .filter(|_| range.start == 0)
            .and_then(|s| s.series(columns, log, smooth))
            .unwrap_or_else(|| {
                chart::series(self.history, self.metric, range, columns, log, smooth)
            })
    }
}

/// Whether a curve the tab draws for `s`'s runs has a value below 0 over its whole run (each
/// metric's summary keeps its smallest value).
fn negative_values(app: &App, s: &crate::tui::session::Session) -> bool {
    s.runs.iter().any(|r| {
        metrics(app, r).into_iter().any(|(metric, _)| {
            r.streams
                .iter()
                .any(|st| st.metric == metric && st.min() < 0.0)
        })
    })
}

/// The longest legend name a chart in `area` with these y labels shows. ratatui hides a legend
/// wider than 60% of the plot (the panel less its frame, the y labels and the axis), its own
/// frame 2 more: a long "before the edit" line hid the run names with it, so names are cut to
/// this instead.
pub(super) fn legend_room(area: Rect, y_labels: &[String]) -> usize {
    (plot_width(area, y_labels).saturating_sub(1) * 6 / 10).saturating_sub(2)
}

/// The plot's width in a chart panel `area`: less its frame, the y labels and the axis.
fn plot_width(area: Rect, y_labels: &[String]) -> usize {
    let label_w = y_labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    usize::from(area.width).saturating_sub(2 + label_w + 1)
}

/// Tick labels of `values`, each at most `room` characters: in full, else to five, four or
/// three significant digits (the most that still tells different values apart, where one
/// does), else none. ratatui cuts a longer label to another number (3.5527e-15 read 3.5527).
pub(super) fn fitted(values: &[f64], room: usize) -> Vec<String> {
    let forms: [&dyn Fn(f64) -> String; 4] = [
        &fmt_num,
        &|v| fmt_digits(v, 5),
        &|v| fmt_digits(v, 4),
        &fmt_short,
    ];
    let fitting: Vec<Vec<String>> = forms
        .iter()
        .map(|form| values.iter().map(|&v| form(v)).collect::<Vec<_>>())
        .filter(|labels| labels.iter().all(|l| l.chars().count() <= room))
        .collect();
    let apart = |labels: &Vec<String>| {
        labels
            .iter()
            .zip(values)
            .all(|(l, v)| labels.iter().zip(values).all(|(m, w)| v == w || l != m))
    };
    let chosen = fitting.iter().find(|l| apart(l)).or(fitting.first());
    chosen
        .cloned()
        .unwrap_or_else(|| vec![String::new(); values.len()])
}

/// The step labels of a chart in `area` over steps `x0..=x1`: first, middle and last, or the
/// two ends where three would run into each other (ratatui gives each a share of the plot's
/// width), or none.
fn x_labels(x0: f64, x1: f64, area: Rect, y_labels: &[String]) -> Vec<String> {
    let plot_w = plot_width(area, y_labels);
    let mid = ((x0 + x1) / 2.0).round();
    let candidates = match x1 - x0 >= 4.0 {
        true => vec![vec![x0, mid, x1], vec![x0, x1]],
        false => vec![vec![x0, x1]],
    };
    candidates
        .into_iter()
        .map(|xs| xs.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>())
        .find(|labels| {
            let room = (plot_w / labels.len()).saturating_sub(1);
            labels.iter().all(|l| l.len() <= room)
        })
        .unwrap_or_default()
}

/// `run` and what of it a curve plots, at most `max` characters: the run's name is cut, the
/// suffix kept (two params' curves of a long-named run read the same cut as a whole).
fn legend_name(run: &str, suffix: &str, max: usize) -> String {
    match max.checked_sub(suffix.chars().count()) {
        Some(room) if room > 1 => format!("{}{suffix}", cut(run, room)),
        _ => cut(&format!("{run}{suffix}"), max),
    }
}

/// The shown chart tab of `file`.
pub fn render(f: &mut Frame, app: &App, file: &FileEntry, area: Rect) {
    let mut log = app.log_y || app.tab == Tab::LrRatio;
    let mut title = app.tab.title().to_string();
    let title_of = |title: &str| {
        let mut title = title.to_string();
        if app.last_n {
            title.push_str(&format!(" · last {LAST_N} steps"));
        }
        if app.smoothing > 0.0 {
            title.push_str(&format!(
                " · smoothed {}",
                crate::format::fmt_short(app.smoothing)
            ));
        }
        title
    };
    let Some(s) = file.session.as_ref() else {
        let full = title_of(&title);
        let block = panel(&full, app.focus == Focus::Charts);
        f.render_widget(Paragraph::new("no runs").block(block), area);
        return;
    };
    let columns = area.width.saturating_sub(12) as usize;
    // A log axis cannot show a negative value (a loss can be one): the chart stays linear and
    // says why, as the pictures do.
    if log && negative_values(app, s) {
        log = false;
        title.push_str(" (linear: values < 0)");
    } else if log {
        title.push_str(" (log y)");
    }
    let full = title_of(&title);
    let block = panel(&full, app.focus == Focus::Charts);
    let longest = s
        .runs
        .iter()
        .flat_map(|r| {
            std::iter::once(r.history.len()).chain(r.before.iter().map(|b| b.history.len()))
        })
        .max()
        .unwrap_or(0);
    let lo = if app.last_n {
        longest.saturating_sub(LAST_N)
    } else {
        0
    };
    struct Drawn {
        run: String,
        /// What of the run it plots (` |x|`, ` (eval)`), kept whole when the name is cut.
        suffix: String,
        color: Color,
        /// Whether a non-finite value is a NaN/Inf event (not for the update ratio, which is
        /// undefined while every param is zero, nor the eval loss, whose run's loss marks it).
        events: bool,
        /// Drawn dimmer: the loss at the eval params, beside its run's loss.
        dim: bool,
        raw: Series,
        smooth: Option<Series>,
    }
    // The curves from before the edits, faded, under the current ones; the first curve of each
    // version names what its edit changed.
    let mut faded: Vec<(Option<String>, Series)> = Vec::new();
    let mut named = Vec::new();
    for r in &s.runs {
        for (v, b) in r.before.iter().enumerate() {
            for (m, _) in metrics(app, r) {
                let series = Curve {
                    history: &b.history,
                    streams: &b.streams,
                    metric: m,
                }
                .series(lo, columns, log, None);
                let name = (!named.contains(&v)).then(|| {
                    named.push(v);
                    match v {
                        0 => format!("before the edit: {}", b.change),
                        _ => format!("{} edits back: {}", v + 1, b.change),
                    }
                });
                faded.push((name, series));
            }
        }
    }
    let mut drawn = Vec::new();
    for r in &s.runs {
        for (m, suffix) in metrics(app, r) {
            let curve = Curve {
                history: &r.history,
                streams: &r.streams,
                metric: m,
            };
            let raw = curve.series(lo, columns, log, None);
            let smooth =
                (app.smoothing > 0.0).then(|| curve.series(lo, columns, log, Some(app.smoothing)));
            drawn.push(Drawn {
                run: r.info.name.clone(),
                suffix,
                color: r.color,
                events: !matches!(m, Metric::UpdateRatio | Metric::Lr | Metric::EvalLoss),
                dim: m == Metric::EvalLoss,
                raw,
                smooth,
            });
        }
    }
    let raw = drawn
        .iter()
        .flat_map(|d| d.raw.points.iter())
        .chain(faded.iter().flat_map(|(_, f)| f.points.iter()))
        .map(|p| p.1);
    // On a log axis the raw values set the lower bound: an EMA decaying towards a loss of
    // exactly 0 (which the log axis leaves out) passes through 1e-323 and flattened every curve.
    let floor = match log {
        true => raw
            .clone()
            .filter(|y| y.is_finite())
            .fold(f64::INFINITY, f64::min),
        false => f64::NEG_INFINITY,
    };
    let smoothed = drawn
        .iter()
        .flat_map(|d| d.smooth.iter().flat_map(|s| s.points.iter()))
        .map(|p| p.1)
        .filter(|&y| y >= floor);
    let [y0, y1] = chart::bounds(raw.chain(smoothed));
    // Rows 0..=N: the axis ends at step N.
    let x_hi = (longest.saturating_sub(1).max(lo + 1)) as f64;
    let [x0, x1] = [lo as f64, x_hi.max(lo as f64 + 1.0)];
    // On the bottom row: a run halts at its first NaN, the right edge, where the legend's box
    // covers the top row.
    let nan_points: Vec<(f64, f64)> = drawn
        .iter()
        .filter(|d| d.events)
        .flat_map(|d| d.raw.nonfinite.iter().map(|&x| (x, y0)))
        .collect();
    let lr_marks: Vec<Vec<(f64, f64)>> = s
        .runs
        .iter()
        .flat_map(|r| {
            r.lr_changes
                .iter()
                .map(|&k| vec![(k as f64, y0), (k as f64, y1)])
        })
        .collect();
    let y_values = [y0, (y0 + y1) / 2.0, y1].map(|v| if log { 10f64.powf(v) } else { v });
    // ratatui gives the y labels a third of the plot's width.
    let y_labels = fitted(&y_values, usize::from(area.width.saturating_sub(2)) / 3);
    let legend_max = legend_room(area, &y_labels);
    let mut datasets = Vec::new();
    for (name, series) in &faded {
        let mut d = Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::DarkGray).add_modifier(Modifier::DIM))
            .data(&series.points);
        if let Some(n) = name {
            d = d.name(cut(n, legend_max));
        }
        datasets.push(d);
    }
    for d in &drawn {
        let color = match d.dim {
            true => Style::new().fg(d.color).add_modifier(Modifier::DIM),
            false => Style::new().fg(d.color),
        };
        let raw_style = if d.smooth.is_some() {
            Style::new().fg(Color::DarkGray)
        } else {
            color
        };
        let mut raw = Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(raw_style)
            .data(&d.raw.points);
        if d.smooth.is_none() {
            raw = raw.name(legend_name(&d.run, &d.suffix, legend_max));
        }
        datasets.push(raw);
        if let Some(sm) = &d.smooth {
            datasets.push(
                Dataset::default()
                    .name(legend_name(&d.run, &d.suffix, legend_max))
                    .marker(Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(color)
                    .data(&sm.points),
            );
        }
    }
    for m in &lr_marks {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(Color::Yellow))
                .data(m),
        );
    }
    if !nan_points.is_empty() {
        datasets.push(nan_markers(&nan_points));
    }
    let x_labels = x_labels(x0, x1, area, &y_labels);
    let chart = Chart::new(datasets)
        .block(block)
        .x_axis(
            Axis::default()
                .title("step")
                .bounds([x0, x1])
                .labels(x_labels)
                .style(Style::new().fg(Color::DarkGray)),
        )
        .y_axis(
            Axis::default()
                .bounds([y0, y1])
                .labels(y_labels)
                .style(Style::new().fg(Color::DarkGray)),
        )
        .hidden_legend_constraints((Constraint::Percentage(60), Constraint::Percentage(60)));
    f.render_widget(chart, area);
    super::clear_legend(f.buffer_mut(), area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_shorten_or_go_rather_than_be_cut_into_other_numbers() {
        let values = [3.5527e-15, 2.1073e-7, 12.5];
        assert_eq!(
            fitted(&values, 10),
            ["3.5527e-15", "2.1073e-7", "12.500000"]
        );
        assert_eq!(fitted(&values, 8), ["3.55e-15", "2.11e-7", "12.5"]);
        assert_eq!(fitted(&values, 5), ["", "", ""]);
        // Values apart only past the third digit keep the digits that tell them apart.
        assert_eq!(
            fitted(&[1.3201, 1.3225, 1.3249], 6),
            ["1.3201", "1.3225", "1.3249"]
        );
        assert_eq!(
            fitted(&[1.3201, 1.3225, 1.3249], 4),
            ["1.32", "1.32", "1.32"]
        );
        let area = Rect::new(0, 0, 40, 12);
        assert_eq!(x_labels(0.0, 10000.0, area, &[]), ["0", "5000", "10000"]);
        let narrow = Rect::new(0, 0, 16, 12);
        assert_eq!(x_labels(0.0, 10000.0, narrow, &[]), ["0", "10000"]);
        assert!(x_labels(0.0, 10000.0, Rect::new(0, 0, 9, 12), &[]).is_empty());
    }

    #[test]
    fn a_cut_legend_name_keeps_what_of_the_run_it_plots() {
        let run = "rmsprop, lr 1e-2, momentum 0.9";
        assert_eq!(legend_name(run, " |x|", 16), "rmsprop, lr… |x|");
        assert_eq!(legend_name(run, " |y|", 16), "rmsprop, lr… |y|");
        assert_eq!(legend_name("base", " |x|", 16), "base |x|");
    }
}
