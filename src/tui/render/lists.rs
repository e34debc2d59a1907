//! The losses list, the runs list and the tab bar.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph, Tabs};

use super::panel;
use crate::format::cut;
use crate::tui::app::{App, Focus};
use crate::tui::layout::{FileRow, file_rows};
use crate::tui::session::{Link, RunView};

/// The loss files, grouped by sub-folder, with a ✓/✗ badge each.
pub fn losses(f: &mut Frame, app: &App, area: Rect) {
    let rows = file_rows(app);
    let selected = rows
        .iter()
        .position(|r| r.file() == Some(app.selected_file));
    // Inside the borders.
    let width = usize::from(area.width.saturating_sub(2));
    let items: Vec<ListItem> = rows
        .into_iter()
        .map(|r| ListItem::new(row(app, r, width)))
        .collect();
    let list = List::new(items)
        .block(panel("Losses", app.focus == Focus::Losses))
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default().with_selected(selected);
    f.render_stateful_widget(list, area, &mut state);
}

/// A losses list row in `width` columns: a bold `group/` header, or a file's badge and name
/// (cut with `…` where it is longer).
fn row<'a>(app: &'a App, row: FileRow<'a>, width: usize) -> Line<'a> {
    match row {
        FileRow::Group(group) => Line::from(format!("{group}/")).bold(),
        FileRow::File { index, indented } => {
            let f = &app.files[index];
            // A file that compiles but whose runs all halted (NaN at its initial params, say)
            // is no ✓: `check` fails it.
            let halted = f
                .session
                .as_ref()
                .is_some_and(|s| !s.runs.is_empty() && s.runs.iter().all(|r| r.halted.is_some()));
            let badge = if f.broken() {
                Span::styled("✗ ", Style::new().fg(Color::Red))
            } else if halted {
                Span::styled("! ", Style::new().fg(Color::Yellow))
            } else {
                Span::styled("✓ ", Style::new().fg(Color::Green))
            };
            let indent = if indented { "  " } else { "" };
            let room = width.saturating_sub(indent.len() + 2);
            Line::from(vec![
                Span::raw(indent),
                badge,
                Span::raw(cut(&app.file_label(index), room)),
            ])
        }
    }
}

/// The selected file's runs: colour, status and name.
pub fn runs(f: &mut Frame, app: &App, area: Rect) {
    let block = panel("Runs", app.focus == Focus::Runs);
    let Some(s) = app.session() else {
        f.render_widget(Paragraph::new("no runs").block(block), area);
        return;
    };
    // Inside the borders, after the colour: the status in a column of 11, or where that would
    // leave the name fewer than 12 columns (a narrow terminal), as one symbol.
    let inner = usize::from(area.width.saturating_sub(2 + 2));
    let compact = inner < 11 + 12;
    let mut items: Vec<ListItem> = s
        .runs
        .iter()
        .map(|r| {
            let status = r.status(s.playing);
            let status = match compact {
                false => format!("{status:<10} "),
                true => format!("{} ", status_symbol(&status)),
            };
            let room = inner.saturating_sub(status.chars().count());
            ListItem::new(Line::from(vec![
                Span::styled("■ ", Style::new().fg(r.color)),
                Span::styled(status, status_style(r, s.playing)),
                Span::styled(
                    cut(&r.info.name, room),
                    match r.link {
                        Link::Gone => Style::new().fg(Color::DarkGray),
                        Link::Live | Link::Starting => Style::new(),
                    },
                ),
            ]))
        })
        .collect();
    // Below them, not selectable: the file's runs that cannot start (the chart's panel says why).
    let red = Style::new().fg(Color::Red);
    items.extend(s.refused.iter().map(|r| {
        let status = match compact {
            false => format!("{:<10} ", "error"),
            true => "✗ ".to_string(),
        };
        let room = inner.saturating_sub(status.chars().count());
        ListItem::new(Line::from(vec![
            Span::styled("■ ", red),
            Span::styled(status, red),
            Span::raw(cut(&r.name, room)),
        ]))
    }));
    let list = List::new(items)
        .block(block)
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    // The refused runs listed after the runs are not selectable: with no run, nothing is.
    let mut state = ListState::default().with_selected((!s.runs.is_empty()).then_some(s.selected));
    f.render_stateful_widget(list, area, &mut state);
}

/// A run's status word as one symbol, for a narrow runs list.
fn status_symbol(status: &str) -> &'static str {
    match status {
        "running" => "▶",
        "paused" => "‖",
        "finished" => "✓",
        "starting" => "…",
        "gone" => "×",
        _ => "!",
    }
}

fn status_style(r: &RunView, playing: bool) -> Style {
    match r.status(playing).as_str() {
        s if s.starts_with("halted") => Style::new().fg(Color::Red),
        "running" => Style::new().fg(Color::Green),
        _ => Style::new().fg(Color::DarkGray),
    }
}

/// The chart tabs, the shown one highlighted.
pub fn tabs(f: &mut Frame, app: &App, area: Rect) {
    let shown = app.tabs();
    let titles: Vec<&str> = shown.iter().map(|t| t.title()).collect();
    let selected = shown.iter().position(|t| *t == app.tab).unwrap_or(0);
    let (window, at) = tab_window(&titles, selected, usize::from(area.width));
    let tabs = Tabs::new(window)
        .select(at)
        .highlight_style(Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD));
    f.render_widget(tabs, area);
}

/// The titles that fit in `width` columns around the selected one, with `…` for those left
/// out on either side, and where the selected one is among them: cut at the right edge, the
/// Metrics and Sweep tabs (and the one selected) could not be seen on a narrow terminal.
fn tab_window<'a>(titles: &[&'a str], selected: usize, width: usize) -> (Vec<&'a str>, usize) {
    // Each title is padded by a space on both sides, and a divider stands between two.
    let cost = |t: &str| t.chars().count() + 3;
    let fits = |lo: usize, hi: usize| {
        let more = usize::from(lo > 0) + usize::from(hi < titles.len());
        titles[lo..hi].iter().map(|t| cost(t)).sum::<usize>() + 4 * more <= width + 1
    };
    let selected = selected.min(titles.len().saturating_sub(1));
    let (mut lo, mut hi) = (selected, (selected + 1).min(titles.len()));
    // Widen to the right first, then to the left, while it fits.
    while hi < titles.len() && fits(lo, hi + 1) {
        hi += 1;
    }
    while lo > 0 && fits(lo - 1, hi) {
        lo -= 1;
    }
    if !fits(lo, hi) {
        // Not even the selected one with its marks: that one alone.
        return (vec![titles[selected]], 0);
    }
    let mut window = Vec::with_capacity(hi - lo + 2);
    if lo > 0 {
        window.push("…");
    }
    window.extend_from_slice(&titles[lo..hi]);
    if hi < titles.len() {
        window.push("…");
    }
    (window, selected - lo + usize::from(lo > 0))
}

#[cfg(test)]
mod tests {
    use super::tab_window;

    const TITLES: [&str; 7] = [
        "Loss",
        "Grad norm",
        "LR, Δ/p",
        "Param norms",
        "Landscape",
        "Metrics",
        "Sweep",
    ];

    /// The width ratatui's tab bar takes for `titles`: each padded by a space on both sides, a
    /// divider between two.
    fn drawn(titles: &[&str]) -> usize {
        titles.iter().map(|t| t.chars().count() + 2).sum::<usize>() + titles.len() - 1
    }

    #[test]
    fn the_tab_bar_keeps_the_selected_tab_in_view_and_marks_what_it_leaves_out() {
        // Wide enough: all of them, as they are.
        let (all, at) = tab_window(&TITLES, 6, 200);
        assert_eq!((all, at), (TITLES.to_vec(), 6));
        for width in 5..drawn(&TITLES) {
            for (selected, &title) in TITLES.iter().enumerate() {
                let (window, at) = tab_window(&TITLES, selected, width);
                assert_eq!(window[at], title, "width {width}");
                assert!(
                    drawn(&window) <= width || window == [title],
                    "width {width}: {window:?}"
                );
                if window.len() == 1 {
                    // Too narrow for the marks: the selected one alone.
                    continue;
                }
                // What is shown is a run of the titles, with `…` standing for the rest.
                let inner: Vec<&str> = window.iter().copied().filter(|t| *t != "…").collect();
                let first = TITLES.iter().position(|t| *t == inner[0]).unwrap();
                assert_eq!(inner, TITLES[first..first + inner.len()]);
                assert_eq!(window[0] == "…", first > 0);
                assert_eq!(
                    window[window.len() - 1] == "…",
                    first + inner.len() < TITLES.len()
                );
            }
        }
    }
}
