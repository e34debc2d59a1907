//! A broken file's diagnostics, where its chart would be.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

use crate::tui::app::FileEntry;

/// Every diagnostic of `file`, loading it and starting its runs, errors in red, warnings in
/// yellow.
pub fn render(f: &mut Frame, file: &FileEntry, area: Rect) {
    let mut lines = Vec::new();
    // Said in the panel, where it wraps: as the title it was cut at the panel's edge. Only a
    // file that no longer loads runs an earlier version.
    if file.session.is_some() && file.diagnostics.iter().any(|d| d.is_error()) {
        lines.push(Line::styled(
            "the last good version keeps running below",
            Style::new().fg(Color::DarkGray),
        ));
    }
    for d in file.diagnostics.iter().chain(file.refused()) {
        let color = if d.is_error() {
            Color::Red
        } else {
            Color::Yellow
        };
        let width = usize::from(area.width.saturating_sub(2));
        for (k, l) in d.render_within(false, width).lines().enumerate() {
            let style = if k == 0 {
                Style::new().fg(color).bold()
            } else {
                Style::new()
            };
            lines.push(Line::styled(l.to_string(), style));
        }
    }
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(Style::new().fg(Color::Red))
        .title("Diagnostics");
    f.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        area,
    );
}
