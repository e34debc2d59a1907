//! What draws over the panels: the help and the dialogs.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, List, ListItem, ListState, Paragraph, Wrap};

use crate::optim::spec::OptimizerKind;
use crate::tui::app::{App, Popup, duplicate_choices};
use crate::tui::keys::BINDINGS;
use crate::tui::layout::centered;

/// Every key and what it does (any key closes it).
pub fn help(f: &mut Frame, area: Rect) {
    let width = BINDINGS
        .iter()
        .map(|b| b.help.chars().count())
        .max()
        .unwrap_or(0)
        + 16
        + 2
        + 2;
    let r = centered(area, width as u16, BINDINGS.len() as u16 + 2);
    let lines: Vec<Line> = BINDINGS
        .iter()
        .map(|b| {
            Line::from(vec![
                Span::styled(format!("{:>16}  ", b.label()), Style::new().fg(Color::Cyan)),
                Span::raw(b.help),
            ])
        })
        .collect();
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title("Keys (any key closes)")),
        r,
    );
}

/// A warning in full: the diagnostic of a halt exactly as the CLI renders it (source line,
/// caret, help), or the warning's text (any key closes it).
fn warning(f: &mut Frame, app: &App, n: usize, area: Rect) {
    let Some(w) = app.session().and_then(|s| s.warnings.get(n)) else {
        return;
    };
    let text = match &w.diagnostic {
        Some(d) => d.render(false),
        None => format!("{} step {}: {}", w.run, w.step, w.text),
    };
    let lines: Vec<Line> = text.lines().map(|l| Line::from(l.to_string())).collect();
    let longest = lines.iter().map(Line::width).max().unwrap_or(0);
    let width = (longest as u16 + 2).clamp(40, area.width.saturating_sub(4).max(1));
    let inner = width.saturating_sub(2) as usize;
    let rows: usize = lines
        .iter()
        .map(|l| l.width().div_ceil(inner.max(1)).max(1))
        .sum();
    let r = centered(area, width, rows as u16 + 2);
    f.render_widget(Clear, r);
    let title = format!("{} · step {} (any key closes)", w.run, w.step);
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::bordered()
                .title(title)
                .border_style(Style::new().fg(Color::Cyan)),
        ),
        r,
    );
}

/// The open dialog.
pub fn popup(f: &mut Frame, app: &App, p: &Popup, area: Rect) {
    let (title, lines, selected): (&str, Vec<Line>, Option<usize>) = match p {
        Popup::Warning(n) => return warning(f, app, *n, area),
        Popup::PickOptimizer { selected } => (
            "Add a run: optimizer",
            OptimizerKind::ALL
                .iter()
                .map(|k| Line::from(k.name()))
                .collect(),
            Some(*selected),
        ),
        Popup::EditSpec { text, error } => {
            let mut l = vec![Line::from(format!("{text}▏")), Line::from("")];
            if let Some(e) = error {
                l.push(Line::styled(e.clone(), Style::new().fg(Color::Red)));
            }
            l.push(Line::styled(
                "enter adds the run · esc cancels",
                Style::new().fg(Color::DarkGray),
            ));
            ("Add a run: edit the spec", l, None)
        }
        Popup::Duplicate { selected } => (
            "Duplicate the run with",
            app.file()
                .and_then(|f| f.compiled.as_ref())
                .map(duplicate_choices)
                .unwrap_or_default()
                .into_iter()
                .map(|(label, _, _)| Line::from(label))
                .collect(),
            Some(*selected),
        ),
    };
    let r = centered(area, 60, lines.len() as u16 + 2);
    f.render_widget(Clear, r);
    let block = Block::bordered()
        .title(title)
        .border_style(Style::new().fg(Color::Cyan));
    match selected {
        Some(sel) => {
            let list = List::new(lines.into_iter().map(ListItem::new))
                .block(block)
                .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
            let mut state = ListState::default().with_selected(Some(sel));
            f.render_stateful_widget(list, r, &mut state);
        }
        None => f.render_widget(Paragraph::new(lines).block(block), r),
    }
}
