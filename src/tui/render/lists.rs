//! The losses list, the runs list and the tab bar.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph, Tabs};

use super::panel;
use crate::tui::app::{App, Focus};
use crate::tui::layout::{FileRow, file_rows};
use crate::tui::session::{Link, RunView};

/// The loss files, grouped by sub-folder, with a ✓/✗ badge each.
pub fn losses(f: &mut Frame, app: &App, area: Rect) {
    let rows = file_rows(app);
    let selected = rows
        .iter()
        .position(|r| r.file() == Some(app.selected_file));
    let items: Vec<ListItem> = rows
        .into_iter()
        .map(|r| ListItem::new(row(app, r)))
        .collect();
    let list = List::new(items)
        .block(panel("Losses", app.focus == Focus::Losses))
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default().with_selected(selected);
    f.render_stateful_widget(list, area, &mut state);
}

/// A losses list row: a bold `group/` header, or a file's badge and name.
fn row<'a>(app: &'a App, row: FileRow<'a>) -> Line<'a> {
    match row {
        FileRow::Group(group) => Line::from(format!("{group}/")).bold(),
        FileRow::File { index, indented } => {
            let f = &app.files[index];
            let badge = if f.broken() {
                Span::styled("✗ ", Style::new().fg(Color::Red))
            } else {
                Span::styled("✓ ", Style::new().fg(Color::Green))
            };
            let indent = if indented { "  " } else { "" };
            Line::from(vec![
                Span::raw(indent),
                badge,
                Span::raw(app.file_label(index)),
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
    let items: Vec<ListItem> = s
        .runs
        .iter()
        .map(|r| {
            ListItem::new(Line::from(vec![
                Span::styled("■ ", Style::new().fg(r.color)),
                Span::styled(
                    format!("{:<10} ", r.status(s.playing)),
                    status_style(r, s.playing),
                ),
                Span::styled(
                    r.info.name.clone(),
                    match r.link {
                        Link::Gone => Style::new().fg(Color::DarkGray),
                        Link::Live | Link::Starting => Style::new(),
                    },
                ),
            ]))
        })
        .collect();
    let list = List::new(items)
        .block(block)
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default().with_selected(Some(s.selected));
    f.render_stateful_widget(list, area, &mut state);
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
    let selected = shown.iter().position(|t| *t == app.tab);
    let tabs = Tabs::new(shown.iter().map(|t| t.title()))
        .select(selected)
        .highlight_style(Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD));
    f.render_widget(tabs, area);
}
