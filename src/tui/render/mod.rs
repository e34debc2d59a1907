//! Rendering: pure functions of the [`App`], one module a region. The layout:
//!
//! ```text
//! ┌ Losses ────┐┌ Loss │ Grad norm │ LR, Δ/p │ Param norms │ Landscape │ Metrics ┐┌ Inspector ─┐
//! │ group/     ││                                                          ││ run, step  │
//! │  file  ok  ││        chart (all runs overlaid) or the landscape        ││ loss, lr   │
//! ├ Runs ──────┤│                                                          ││ per param  │
//! │ ■ base     ││                                                          ││            │
//! └────────────┘└──────────────────────────────────────────────────────────┘└────────────┘
//! ┌ Warnings ───────────────────────────────────────────────────────────────────────────────┐
//! └─────────────────────────────────────────────────────────────────────────────────────────┘
//!  status bar: step · steps/s · running/paused · keys
//! ```

mod chart;
mod diagnostics;
mod hessian;
mod inspector;
mod landscape;
mod lists;
mod metrics;
mod overlays;
mod status;
mod sweep;
mod warnings;

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

use super::app::{App, FileEntry, Tab};
use super::layout::{MIN_SIZE, layout};

/// Draws the whole screen.
pub fn render(f: &mut Frame, app: &App) {
    let area = f.area();
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        let text = format!(
            "terminal too small: {}x{} (gradscope needs {}x{})",
            area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
        );
        f.render_widget(
            Paragraph::new(text)
                .wrap(Wrap { trim: true })
                .alignment(Alignment::Center),
            area,
        );
        return;
    }
    let a = layout(app, area);
    lists::losses(f, app, a.losses);
    lists::runs(f, app, a.runs);
    lists::tabs(f, app, a.tabs);
    centre(f, app, a.chart);
    if let Some(r) = a.inspector {
        let block = panel("Inspector", app.focus == super::app::Focus::Inspector);
        inspector::render(f, app, r, inspector::lines(app), block);
    }
    if let Some(r) = a.warnings {
        warnings::render(f, app, r);
    }
    status::render(f, app, a.status);
    if let Some(p) = &app.popup {
        overlays::popup(f, app, p, area);
    }
    if app.show_help {
        overlays::help(f, help_area(app, area), app.help_scroll);
    }
}

/// The help's scroll after `j` (`down`) or `k`: no further than its last line in view.
pub fn help_scrolled(app: &App, down: bool) -> usize {
    overlays::help_scrolled(help_area(app, app.screen()), app.help_scroll, down)
}

/// Where the help is drawn on a screen of `area`: above the status bar, which stays readable.
fn help_area(app: &App, area: Rect) -> Rect {
    Rect {
        height: layout(app, area).status.y.saturating_sub(area.y),
        ..area
    }
}

/// Lines the inspector has for the selected run (all, or its answer to a key), to scroll it no
/// further than its end.
pub fn inspector_len(app: &App, answer: Option<super::app::Answer>) -> usize {
    match answer {
        Some(key) => inspector::answer_lines(app, key).len(),
        None => inspector::lines(app).len(),
    }
}

/// A bordered panel, cyan when it has the focus.
fn panel(title: &str, focused: bool) -> Block<'_> {
    let style = if focused {
        Style::new().fg(Color::Cyan)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    Block::new()
        .borders(Borders::ALL)
        .border_style(style)
        .title(title)
}

/// The red blocks that mark NaN/Inf steps on a chart's bottom row.
fn nan_markers(points: &[(f64, f64)]) -> ratatui::widgets::Dataset<'_> {
    ratatui::widgets::Dataset::default()
        .name("NaN/Inf")
        .marker(ratatui::symbols::Marker::Block)
        .graph_type(ratatui::widgets::GraphType::Scatter)
        .style(Style::new().fg(Color::Red))
        .data(points)
}

/// Blanks the plot's dots showing through a chart's legend box in `area` (a chart panel): ratatui
/// draws the box and the names over the curves without clearing the cells between them.
fn clear_legend(buf: &mut ratatui::buffer::Buffer, area: Rect) {
    let inner = area.inner(ratatui::layout::Margin::new(1, 1));
    let at = |buf: &ratatui::buffer::Buffer, x: u16, y: u16| buf[(x, y)].symbol().to_string();
    for y in inner.top()..inner.bottom() {
        // The box's top edge: the only `┌ … ┐` inside the panel.
        let Some(left) = (inner.left()..inner.right()).find(|&x| at(buf, x, y) == "┌") else {
            continue;
        };
        let Some(right) = (left + 1..inner.right()).find(|&x| at(buf, x, y) == "┐") else {
            continue;
        };
        for row in y + 1..inner.bottom() {
            if at(buf, left, row) == "└" {
                return;
            }
            for x in left + 1..right {
                let dot = at(buf, x, row)
                    .chars()
                    .next()
                    .is_some_and(|c| matches!(c, '\u{2800}'..='\u{28FF}' | '█'));
                if dot {
                    buf[(x, row)].set_symbol(" ");
                }
            }
        }
        return;
    }
}

/// The chart region: the selected tab, under the diagnostics when the file is broken.
fn centre(f: &mut Frame, app: &App, area: Rect) {
    let Some(file) = app.file() else {
        f.render_widget(
            Paragraph::new("no loss files here").block(panel("Chart", false)),
            area,
        );
        return;
    };
    if file.broken() {
        let diag_area = if file.session.is_some() {
            let [d, rest] =
                Layout::vertical([Constraint::Percentage(50), Constraint::Min(3)]).areas(area);
            tab(f, app, file, rest);
            d
        } else {
            area
        };
        diagnostics::render(f, file, diag_area);
        return;
    }
    tab(f, app, file, area);
}

fn tab(f: &mut Frame, app: &App, file: &FileEntry, area: Rect) {
    match app.tab {
        Tab::Landscape => landscape::render(f, app, file, area),
        Tab::Metrics => metrics::render(f, app, file, area),
        Tab::Sweep => sweep::render(f, app, file, area),
        _ => chart::render(f, app, file, area),
    }
}

#[cfg(test)]
mod tests {
    use ratatui::buffer::Buffer;
    use ratatui::layout::Rect;

    /// Dots inside the legend box go, the names, the box and the dots outside it stay.
    #[test]
    fn a_legend_box_hides_the_curves_behind_it() {
        let lines = [
            "┌Loss──────────────────┐",
            "│⠒⠒⠒⠒⠒⠒⠒┌───────────┐⠒⠒│",
            "│       │base ∇w⠒⠒⠤⠤│  │",
            "│       │NaN/Inf⡀ █ │⠤⠤│",
            "│⠤⠤⠤    └───────────┘  │",
            "└──────────────────────┘",
        ];
        let mut buf = Buffer::with_lines(lines);
        super::clear_legend(&mut buf, Rect::new(0, 0, 24, 6));
        let want = Buffer::with_lines([
            "┌Loss──────────────────┐",
            "│⠒⠒⠒⠒⠒⠒⠒┌───────────┐⠒⠒│",
            "│       │base ∇w    │  │",
            "│       │NaN/Inf    │⠤⠤│",
            "│⠤⠤⠤    └───────────┘  │",
            "└──────────────────────┘",
        ]);
        assert_eq!(buf, want);
    }
}
