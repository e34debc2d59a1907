//! The warnings log of the selected file's runs.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::panel;
use crate::tui::app::App;

/// The latest warnings that fit, and why the worker failed if it did.
pub fn render(f: &mut Frame, app: &App, area: Rect) {
    let block = panel("Warnings", false);
    let Some(s) = app.session() else {
        f.render_widget(Paragraph::new("").block(block), area);
        return;
    };
    let mut lines: Vec<Line> = s
        .warnings
        .iter()
        .map(|w| {
            let color = if w.text.contains("non-finite")
                || w.text.contains("halted")
                || w.text.contains("NaN")
                || w.text.contains("Inf")
            {
                Color::Red
            } else {
                Color::Yellow
            };
            Line::from(vec![
                Span::styled(format!("{} ", w.run), Style::new().bold()),
                Span::styled(
                    format!("step {}: ", w.step),
                    Style::new().fg(Color::DarkGray),
                ),
                Span::styled(w.text.clone(), Style::new().fg(color)),
            ])
        })
        .collect();
    if let Some(why) = &s.failed {
        lines.push(Line::styled(why.clone(), Style::new().fg(Color::Red)));
    }
    let visible = area.height.saturating_sub(2) as usize;
    let skip = lines.len().saturating_sub(visible);
    let lines: Vec<Line> = lines.into_iter().skip(skip).collect();
    f.render_widget(Paragraph::new(lines).block(block), area);
}
