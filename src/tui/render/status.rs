//! The status bar.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::tui::app::App;
use crate::tui::keys;
use crate::tui::session::{Link, RunView, Session};

/// The furthest step of the session's runs, of those still stepped (a gone run keeps the step
/// it had when its variant went).
fn steps_of(s: &Session) -> usize {
    s.runs
        .iter()
        .filter(|r| r.link != Link::Gone)
        .map(RunView::steps)
        .max()
        .unwrap_or(0)
}

/// Step, speed and play state, the pending count, then the last message or a key hint.
pub fn render(f: &mut Frame, app: &App, area: Rect) {
    let mut spans = Vec::new();
    if let Some(s) = app.session() {
        spans.push(Span::raw(format!(" step {} · ", steps_of(s))));
        if s.playing {
            // The rate is all the runs' steps together: the count says so.
            let over = match s.runs.len() {
                0 | 1 => String::new(),
                n => format!(" over {n} runs"),
            };
            spans.push(Span::raw(format!(
                "{:.0} steps/s{over} · ",
                s.steps_per_s()
            )));
            match s.busy {
                Some(what) => spans.push(Span::styled(
                    format!("waiting for {what}…"),
                    Style::new().fg(Color::Yellow),
                )),
                None => spans.push(Span::styled("running", Style::new().fg(Color::Green))),
            }
        } else if let Some(target) = s.stepping {
            spans.push(Span::styled(
                format!("stepping to {target}… (space stops)"),
                Style::new().fg(Color::Green),
            ));
        } else if !s.runs.is_empty() && s.runs.iter().all(|r| r.halted.is_some()) {
            // Playing on would not move them: say where to look instead.
            let look = match app.shows_warnings() {
                true => "see Warnings",
                false => "enter: why",
            };
            spans.push(Span::styled(
                format!("all runs halted ({look}; b/r rewind)"),
                Style::new().fg(Color::Red),
            ));
        } else if s.runs.iter().any(|r| r.link == Link::Live)
            && s.runs.iter().all(|r| r.link != Link::Live || r.done())
        {
            // Runs gone from the file do not step: the live ones decide.
            spans.push(Span::raw("finished (space plays on)"));
        } else {
            spans.push(Span::raw("paused"));
        }
        spans.push(Span::raw(" · "));
    }
    if let Some(c) = app.count {
        spans.push(Span::styled(
            format!("{c}… "),
            Style::new().fg(Color::Yellow),
        ));
    }
    let used: usize = spans.iter().map(Span::width).sum();
    let room = usize::from(area.width).saturating_sub(used);
    match &app.message {
        // Cut with `…`, so a message longer than the line says there is more.
        Some(m) => spans.push(Span::styled(
            crate::format::cut(m, room),
            Style::new().fg(Color::Yellow),
        )),
        None => spans.push(Span::styled(
            keys::hints(room),
            Style::new().fg(Color::DarkGray),
        )),
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}
