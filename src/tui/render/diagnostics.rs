//! A broken file's diagnostics, where its chart would be.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

use crate::tui::app::FileEntry;

/// Every diagnostic of `file`, errors in red, warnings in yellow.
pub fn render(f: &mut Frame, file: &FileEntry, area: Rect) {
    let mut lines = Vec::new();
    for d in &file.diagnostics {
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
    let title = if file.session.is_some() {
        "Diagnostics (the last good version keeps running below)"
    } else {
        "Diagnostics"
    };
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(Style::new().fg(Color::Red))
        .title(title);
    f.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        area,
    );
}
