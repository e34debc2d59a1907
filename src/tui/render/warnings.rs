//! The warnings log of the selected file's runs: wrapped at word boundaries, the latest shown
//! until the panel has the focus, then scrolled to keep the selected warning in view.

use std::ops::Range;

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::panel;
use crate::tui::app::{App, Focus};
use crate::tui::session::Warning;

/// The warnings that fit, and why the worker failed if it did.
pub fn render(f: &mut Frame, app: &App, area: Rect) {
    let focused = app.focus == Focus::Warnings;
    let Some(s) = app.session() else {
        f.render_widget(Paragraph::new("").block(panel("Warnings", focused)), area);
        return;
    };
    let width = area.width.saturating_sub(2) as usize;
    let chosen = app.warning.min(s.warnings.len().saturating_sub(1));
    let mut lines: Vec<Line> = Vec::new();
    let mut selected = 0..0;
    for (i, w) in s.warnings.iter().enumerate() {
        let start = lines.len();
        lines.extend(warning_lines(w, width, focused && i == chosen));
        if i == chosen {
            selected = start..lines.len();
        }
    }
    if let Some(why) = &s.failed {
        let red = Style::new().fg(Color::Red);
        lines.extend(wrap(why, width).into_iter().map(|r| {
            let text: String = why.chars().skip(r.start).take(r.len()).collect();
            Line::styled(text, red)
        }));
    }
    let visible = area.height.saturating_sub(2) as usize;
    let top = if focused {
        selected.end.saturating_sub(visible).min(selected.start)
    } else {
        lines.len().saturating_sub(visible)
    };
    let title = if focused && !s.warnings.is_empty() {
        format!(
            "Warnings {}/{} · enter shows it in full",
            chosen + 1,
            s.warnings.len()
        )
    } else {
        "Warnings".to_string()
    };
    let lines: Vec<Line> = lines.into_iter().skip(top).collect();
    f.render_widget(Paragraph::new(lines).block(panel(&title, focused)), area);
}

/// A warning as `run step k: text`, wrapped to `width`: the run bold, the step grey, the text
/// red for NaN/Inf events and halts, yellow otherwise; reversed when selected.
fn warning_lines(w: &Warning, width: usize, selected: bool) -> Vec<Line<'static>> {
    let color = if ["non-finite", "halted", "NaN", "Inf", "cannot start"]
        .iter()
        .any(|k| w.text.contains(k))
    {
        Color::Red
    } else {
        Color::Yellow
    };
    let head = format!("{} ", w.run);
    let step = format!("step {}: ", w.step);
    let text: Vec<char> = format!("{head}{step}{}", w.text).chars().collect();
    let (a, b) = (
        head.chars().count(),
        head.chars().count() + step.chars().count(),
    );
    let parts = [
        (0..a, Style::new().bold()),
        (a..b, Style::new().fg(Color::DarkGray)),
        (b..text.len(), Style::new().fg(color)),
    ];
    let mark = if selected {
        Modifier::REVERSED
    } else {
        Modifier::empty()
    };
    let full: String = text.iter().collect();
    wrap(&full, width)
        .into_iter()
        .map(|line| {
            let spans: Vec<Span> = parts
                .iter()
                .filter_map(|(part, style)| {
                    let r = line.start.max(part.start)..line.end.min(part.end);
                    (!r.is_empty()).then(|| {
                        Span::styled(text[r].iter().collect::<String>(), style.add_modifier(mark))
                    })
                })
                .collect();
            Line::from(spans)
        })
        .collect()
}

/// `text` cut into lines of at most `width` characters at spaces (only a word longer than a
/// line is cut inside): each line as a range of `text`'s characters.
pub fn wrap(text: &str, width: usize) -> Vec<Range<usize>> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    while width > 0 && start < chars.len() {
        if chars.len() - start <= width {
            out.push(start..chars.len());
            break;
        }
        let end = start + width;
        match (start + 1..=end).rev().find(|&i| chars[i] == ' ') {
            Some(space) => {
                out.push(start..space);
                start = space + 1;
            }
            None => {
                out.push(start..end);
                start = end;
            }
        }
    }
    out
}
