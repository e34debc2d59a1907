//! The Sweep tab: over one key, final loss against its values (a log axis where they span
//! decades) above the list of points; over two, a heat map of final losses. The cursor's point
//! is highlighted, the best marked, halted points shown as such (never as a loss).

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Chart, Dataset, GraphType, Paragraph};

use super::panel;
use crate::format::fmt_num;
use crate::run::sweep::Ended;
use crate::tui::app::{App, FileEntry, Focus};
use crate::tui::chart::bounds;
use crate::tui::sweep::SweepView;

pub fn render(f: &mut Frame, app: &App, file: &FileEntry, area: Rect) {
    let Some(view) = file.session.as_ref().and_then(|s| s.sweep.as_ref()) else {
        let block = panel("Sweep", app.focus == Focus::Charts);
        let text = "no sweep: W on a run sweeps its lr (or another key)";
        f.render_widget(Paragraph::new(text).block(block), area);
        return;
    };
    let done = view.ended.iter().filter(|e| e.is_some()).count();
    let keys: Vec<&str> = view.axes.iter().map(|a| a.key.as_str()).collect();
    let state = match (&view.failed, view.running) {
        (Some(why), _) => format!("failed: {why}"),
        (None, true) => format!("{done}/{} · enter adds · esc stops", view.ended.len()),
        (None, false) => format!("{done}/{} · enter adds · esc closes", view.ended.len()),
    };
    let title = format!("{} over {} · {state}", view.of, keys.join(" × "));
    let block = panel(&title, app.focus == Focus::Charts);
    let inner = block.inner(area);
    f.render_widget(block, area);
    match view.axes.len() {
        1 => {
            let rows = (view.ended.len() as u16 + 2).min(inner.height / 2);
            let [chart, list] =
                Layout::vertical([Constraint::Min(4), Constraint::Length(rows)]).areas(inner);
            curve(f, view, chart, app.log_y);
            let lines = point_lines(view, usize::from(list.height));
            f.render_widget(Paragraph::new(lines), list);
        }
        _ => {
            let lines = heat_lines(view, usize::from(inner.width), usize::from(inner.height));
            f.render_widget(Paragraph::new(lines), inner);
        }
    }
}

/// A point's value as the x axis places it.
fn x_of(view: &SweepView, v: f64) -> f64 {
    match view.axes[0].log() {
        true => v.log10(),
        false => v,
    }
}

/// What a point shows instead of a loss, or its loss.
fn outcome(e: Option<Ended>) -> String {
    match e {
        None => "…".into(),
        Some(Ended {
            halted_at: Some(k), ..
        }) => format!("halted at step {k}"),
        Some(e) => fmt_num(e.final_loss),
    }
}

/// Final loss against the swept value: the ended points as a line, the cursor's as a block;
/// on a log axis when `l` asks for one and every loss is positive.
fn curve(f: &mut Frame, view: &SweepView, area: Rect, log_y: bool) {
    let losses = view.ended.iter().enumerate().filter_map(|(i, e)| {
        let e = e.filter(|e| e.halted_at.is_none() && e.final_loss.is_finite())?;
        Some((x_of(view, view.axes[0].values[i]), e.final_loss))
    });
    let log = log_y && losses.clone().all(|(_, l)| l > 0.0);
    let points: Vec<(f64, f64)> = match log {
        true => losses.map(|(x, l)| (x, l.log10())).collect(),
        false => losses.collect(),
    };
    let [y0, y1] = bounds(points.iter().map(|p| p.1));
    let xs: Vec<f64> = view.axes[0].values.iter().map(|&v| x_of(view, v)).collect();
    let [x0, x1] = bounds(xs.iter().copied());
    let cursor: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.0 == xs[view.cursor])
        .collect();
    let datasets = vec![
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Cyan))
            .data(&points),
        Dataset::default()
            .marker(Marker::Block)
            .graph_type(GraphType::Scatter)
            .style(Style::new().fg(Color::Yellow))
            .data(&cursor),
    ];
    // The ticks in the form the list below writes the values in.
    let ticks = [x0, (x0 + x1) / 2.0, x1].map(|x| match view.axes[0].log() {
        true => 10f64.powf(x),
        false => x,
    });
    let ticks = axis_labels(&ticks, 10);
    let key = &view.axes[0].key;
    let chart = Chart::new(datasets)
        .x_axis(
            Axis::default()
                .title(match view.axes[0].log() {
                    true => format!("{key} (log)"),
                    false => key.clone(),
                })
                .bounds([x0, x1])
                .labels(ticks)
                .style(Style::new().fg(Color::DarkGray)),
        )
        .y_axis(
            Axis::default()
                .title(match (log, log_y) {
                    (true, _) => "final loss (log)",
                    (false, true) => "final loss (linear: values ≤ 0)",
                    (false, false) => "final loss",
                })
                .bounds([y0, y1])
                .labels(super::chart::fitted(
                    &[y0, (y0 + y1) / 2.0, y1].map(|y| if log { 10f64.powf(y) } else { y }),
                    usize::from(area.width) / 3,
                ))
                .style(Style::new().fg(Color::DarkGray)),
        );
    f.render_widget(chart, area);
}

/// The first of `room` consecutive items out of `n` to show so that item `at` is among them
/// (in the middle where it can be): lists scroll with the cursor.
fn window(at: usize, n: usize, room: usize) -> usize {
    at.saturating_sub(room / 2).min(n.saturating_sub(room))
}

/// One line a point, as many as `height` holds around the cursor: its value and final loss
/// (or why it has none), the cursor's highlighted, the best starred; the note on objectives
/// last.
fn point_lines(view: &SweepView, height: usize) -> Vec<Line<'static>> {
    let bests = view.bests();
    let key = &view.axes[0].key;
    let note = note(view);
    let values = &view.axes[0].values;
    let room = height.saturating_sub(usize::from(note.is_some())).max(1);
    let first = window(view.cursor, values.len(), room);
    let labels = axis_labels(values, 10);
    let mut lines: Vec<Line<'static>> = values
        .iter()
        .enumerate()
        .skip(first)
        .take(room)
        .map(|(i, _)| {
            let star = if bests.contains(&i) { "★" } else { " " };
            let text = format!("{star} {key} {:<10} {}", labels[i], outcome(view.ended[i]));
            cell_style(view, i, Line::from(text))
        })
        .collect();
    lines.extend(note);
    lines
}

/// The note on objectives, dimmed, when a const is swept.
fn note(view: &SweepView) -> Option<Line<'static>> {
    let text = view.objectives_note()?;
    Some(Line::styled(text, Style::new().fg(Color::DarkGray)))
}

/// The cursor's point reversed.
fn cell_style(view: &SweepView, i: usize, line: Line<'static>) -> Line<'static> {
    match i == view.cursor {
        true => line.style(Style::new().add_modifier(Modifier::REVERSED)),
        false => line,
    }
}

/// Over two keys: a row for each value of the second, a column for each of the first, each
/// cell its final loss coloured from green (lowest) to red (highest); as many rows and columns
/// as `width` x `height` holds around the cursor.
fn heat_lines(view: &SweepView, width: usize, height: usize) -> Vec<Line<'static>> {
    const WIDTH: usize = 11;
    let (a, b) = (&view.axes[0], &view.axes[1]);
    let note = note(view);
    let (nx, ny) = (a.values.len(), b.values.len());
    let (cx, cy) = (view.cursor % nx, view.cursor / nx);
    let columns = (width / (WIDTH + 1)).saturating_sub(1).max(1);
    let x0 = window(cx, nx, columns);
    let xs = x0..nx.min(x0 + columns);
    // Rows run from the largest value down: the window is over that order.
    let rows = height
        .saturating_sub(1 + 2 * usize::from(note.is_some()))
        .max(1);
    let d0 = window(ny - 1 - cy, ny, rows);
    let losses: Vec<f64> = view
        .ended
        .iter()
        .filter_map(|e| e.filter(|e| e.halted_at.is_none()).map(|e| e.final_loss))
        .filter(|l| l.is_finite())
        .collect();
    let [lo, hi] = bounds(losses.iter().copied());
    let bests = view.bests();
    let (a_labels, b_labels) = (axis_labels(&a.values, WIDTH), axis_labels(&b.values, WIDTH));
    let mut lines = vec![Line::from(format!(
        "{:>WIDTH$} {}",
        format!("{} \\ {}", b.key, a.key),
        a_labels[xs.clone()]
            .iter()
            .map(|l| format!("{l:>WIDTH$}"))
            .collect::<Vec<_>>()
            .join(" ")
    ))];
    for (y, _) in b.values.iter().enumerate().rev().skip(d0).take(rows) {
        let mut spans = vec![Span::raw(format!("{:>WIDTH$} ", b_labels[y]))];
        for x in xs.clone() {
            let i = y * a.values.len() + x;
            let e = view.ended[i];
            let text = match bests.contains(&i) {
                true => format!("★{:>w$}", outcome(e), w = WIDTH - 1),
                false => format!("{:>WIDTH$}", outcome(e)),
            };
            let mut style = match e {
                Some(e) if e.halted_at.is_none() && e.final_loss.is_finite() => {
                    let t = if hi > lo {
                        (e.final_loss - lo) / (hi - lo)
                    } else {
                        0.0
                    };
                    let red = (60.0 + 160.0 * t) as u8;
                    let green = (200.0 - 140.0 * t) as u8;
                    Style::new().bg(Color::Rgb(red, green, 60)).fg(Color::Black)
                }
                Some(_) => Style::new().fg(Color::Red),
                None => Style::new().fg(Color::DarkGray),
            };
            if i == view.cursor {
                style = style.add_modifier(Modifier::REVERSED);
            }
            spans.push(Span::styled(text, style));
            spans.push(Span::raw(" "));
        }
        lines.push(Line::from(spans));
    }
    lines.extend(note.map(|n| vec![Line::from(""), n]).unwrap_or_default());
    lines
}

/// A swept value as typed when that fits in `width` (`0.9999`, which three significant digits
/// would show as `1`, the same as its neighbour `1`), else to three significant digits.
/// An axis's values as labels of at most `width` characters, all in one form: as written when
/// every one fits and none needs an exponent, else all in scientific notation to three
/// digits (a logspace read `3.16e-4` beside `0.00316228`, and `0.0000001`).
fn axis_labels(values: &[f64], width: usize) -> Vec<String> {
    let exact: Vec<String> = values.iter().map(f64::to_string).collect();
    let decades = values
        .iter()
        .any(|v| *v != 0.0 && !(1e-3..1e5).contains(&v.abs()));
    if !decades && exact.iter().all(|l| l.chars().count() <= width) {
        return exact;
    }
    values
        .iter()
        .map(|&v| match v {
            0.0 => "0".to_string(),
            v => {
                let s = format!("{v:.2e}");
                let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
                let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
                format!("{mantissa}e{exponent}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swept_values_are_told_apart_in_one_form() {
        assert_eq!(
            axis_labels(&[0.9, 0.99, 0.999, 0.9999], 9),
            ["0.9", "0.99", "0.999", "0.9999"]
        );
        assert_eq!(
            axis_labels(&[0.000316228, 0.00316228, 0.0316228, 1e-7], 9),
            ["3.16e-4", "3.16e-3", "3.16e-2", "1e-7"]
        );
        assert_eq!(axis_labels(&[0.0, 100000.0], 9), ["0", "1e5"]);
    }
}
