//! The Metrics tab: one line per run of the selected `[metrics]` entry, at the steps the worker
//! reported it; and the metric lines of the inspector.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph};

use super::{nan_markers, panel};
use crate::format::fmt_num;
use crate::tui::app::{App, FileEntry, Focus};
use crate::tui::chart::bounds;
use crate::tui::session::{RunView, Session};

/// A metric's finite `(step, value)` points and its NaN/Inf steps.
type Series = (Vec<(f64, f64)>, Vec<f64>);

/// The Metrics tab of `file`: the chosen metric of every run, `M` for the next one.
pub fn render(f: &mut Frame, app: &App, file: &FileEntry, area: Rect) {
    let names = app.metric_names();
    let i = app.shown_metric();
    let title = match names.len() {
        0 => "Metrics".to_string(),
        1 => format!("Metrics: {}", names[0]),
        n => format!("Metrics: {} ({}/{n}, M next)", names[i], i + 1),
    };
    let block = panel(&title, app.focus == Focus::Charts);
    let Some(s) = file.session.as_ref().filter(|_| !names.is_empty()) else {
        let text = "this file has no [metrics]: add named expressions such as\naccuracy = \"mean(argmax(z, axis=1) == argmax(Y, axis=1))\" (see losses/README.md)";
        f.render_widget(Paragraph::new(text).block(block), area);
        return;
    };
    // Each run with its finite points and its NaN/Inf steps.
    let drawn: Vec<(&RunView, Series)> = s.runs.iter().map(|r| (r, r.metrics.series(i))).collect();
    let [y0, y1] = bounds(drawn.iter().flat_map(|d| d.1.0.iter().map(|p| p.1)));
    let x1 = drawn
        .iter()
        .filter_map(|d| d.0.metrics.latest().map(|(k, _)| *k as f64))
        .fold(1.0, f64::max);
    let nan_points: Vec<(f64, f64)> = drawn
        .iter()
        .flat_map(|d| d.1.1.iter().map(|&x| (x, y1)))
        .collect();
    let y_labels = super::chart::fitted(
        &[y0, (y0 + y1) / 2.0, y1],
        usize::from(area.width.saturating_sub(2)) / 3,
    );
    let room = super::chart::legend_room(area, &y_labels);
    let mut datasets: Vec<Dataset> = drawn
        .iter()
        .map(|(r, (points, _))| {
            Dataset::default()
                .name(crate::format::cut(&r.info.name, room))
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(r.color))
                .data(points)
        })
        .collect();
    if !nan_points.is_empty() {
        datasets.push(nan_markers(&nan_points));
    }
    let chart = Chart::new(datasets)
        .block(block)
        .x_axis(
            Axis::default()
                .title("step")
                .bounds([0.0, x1])
                .labels(vec!["0".to_string(), format!("{x1:.0}")])
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

/// The inspector's lines for run `r`: each metric's latest value and the step it was taken at.
pub fn inspector_lines(s: &Session, r: &RunView) -> Vec<Line<'static>> {
    let Some((step, values)) = r.metrics.latest() else {
        return Vec::new();
    };
    let mut lines = vec![Line::from(format!("metrics @{step}"))];
    lines.extend(
        s.metric_names
            .iter()
            .zip(values)
            .map(|(n, v)| Line::from(format!("  {n:<8} {}", fmt_num(*v)))),
    );
    lines
}
