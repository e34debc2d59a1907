//! What draws over the panels: the help and the dialogs.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, List, ListItem, ListState, Paragraph, Wrap};

use crate::format::cut;
use crate::optim::catalogue::{Item, by_section};
use crate::tui::app::{App, Popup, duplicate_choices};
use crate::tui::compare;
use crate::tui::keys::BINDINGS;
use crate::tui::layout::centered;
use crate::tui::line_edit::LineEdit;
use crate::tui::render::warnings::wrap;

/// What the screen shows that no key names, after the keys in the help: a new user met Δ/p,
/// "(eval)" and the red blocks with nothing to say what they are.
const GLOSSARY: &[(&str, &str)] = &[
    (
        "Δ/p",
        "update norm / param norm: the step against the params (~1e-3)",
    ),
    (
        "(eval)",
        "loss at the eval params (schedule-free's x, ASGD's average)",
    ),
    (
        "red █",
        "a NaN/Inf loss, gradient or update (Warnings says where)",
    ),
    (
        "faded",
        "curves from before the file's last edits (C clears them)",
    ),
    (
        "✓ ✗",
        "the file loads / has errors (shown in place of its chart)",
    ),
    ("!", "every run of the file halted (Warnings says where)"),
    ("stalled", "an update left a param with a gradient in place"),
    (
        "▶ ‖ ✓",
        "a narrow runs list's running / paused / finished (! halted)",
    ),
];

/// The help's rows: each key binding's keys and line, then the glossary.
fn help_rows() -> Vec<(String, &'static str)> {
    BINDINGS
        .iter()
        .map(|b| (b.label(), b.help))
        .chain(
            GLOSSARY
                .iter()
                .map(|&(label, text)| (label.to_string(), text)),
        )
        .collect()
}

/// How the help lays out in `area`: its columns shown, each as its lines (a key's label, or
/// none under it where its text wraps, and the text) and its text's width; their rows, the
/// labels' width, the last first row scrolling can reach (0: it all fits, in as many columns
/// as it needs), and the box's width.
struct HelpLayout {
    columns: Vec<(Vec<(String, String)>, usize)>,
    rows: usize,
    label_w: usize,
    last_first: usize,
    width: usize,
}

fn help_layout(area: Rect, scroll: usize) -> HelpLayout {
    let all = help_rows();
    let label_w = all.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let rows = (area.height.saturating_sub(2) as usize).clamp(1, all.len().max(1));
    let help_w = |c: &[(String, &str)]| c.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let width_of = |text_ws: &[usize]| -> usize {
        text_ws.iter().map(|w| label_w + 2 + w + 2).sum::<usize>() + 2
    };
    let chunks: Vec<_> = all.chunks(rows).collect();
    let text_ws: Vec<usize> = chunks.iter().map(|c| help_w(c)).collect();
    let width = width_of(&text_ws);
    if width <= usize::from(area.width) {
        let lines =
            |c: &[(String, &str)]| c.iter().map(|(l, t)| (l.clone(), t.to_string())).collect();
        return HelpLayout {
            columns: chunks.iter().map(|c| lines(c)).zip(text_ws).collect(),
            rows,
            label_w,
            last_first: 0,
            width,
        };
    }
    // One column that scrolls, its texts wrapped at the screen's edge under their own column
    // (cut, they lost their ends), as wide wherever it is scrolled to.
    let text_w = help_w(&all).min(usize::from(area.width).saturating_sub(width_of(&[0])));
    let wrapped = |(label, text): &(String, &str)| -> Vec<(String, String)> {
        let chars: Vec<char> = text.chars().collect();
        let mut lines: Vec<(String, String)> = wrap(text, text_w.max(1))
            .into_iter()
            .map(|r| (String::new(), chars[r].iter().collect()))
            .collect();
        if let Some(first) = lines.first_mut() {
            first.0 = label.clone();
        }
        lines
    };
    // The furthest first entry whose lines, and those of the entries after it, fill the box.
    let mut below = 0;
    let last_first = (0..all.len())
        .rev()
        .find(|&i| {
            below += wrapped(&all[i]).len();
            below >= rows
        })
        .unwrap_or(0);
    let first = scroll.min(last_first);
    let lines = all[first..].iter().flat_map(wrapped).take(rows).collect();
    HelpLayout {
        columns: vec![(lines, text_w)],
        width: width_of(&[text_w]),
        rows,
        label_w,
        last_first,
    }
}

/// Where `j` (`down`) or `k` leaves the help's scroll from `scroll`: no further than its last
/// line in view (it went on counting past the end, and `k` then seemed to do nothing).
pub fn help_scrolled(area: Rect, scroll: usize, down: bool) -> usize {
    let last = help_layout(area, scroll).last_first;
    match down {
        true => (scroll + 1).min(last),
        false => scroll.min(last).saturating_sub(1),
    }
}

/// Every key and what it does, then what the screen's marks mean (j/k scroll, any other key
/// closes it), in as many columns as the height needs; where those do not fit the width, one
/// column that scrolls from `scroll`. Keys are aligned on the first, each text wraps under
/// its own column.
pub fn help(f: &mut Frame, area: Rect, scroll: usize) {
    let HelpLayout {
        columns,
        rows,
        label_w,
        width,
        ..
    } = help_layout(area, scroll);
    let lines: Vec<Line> = (0..rows)
        .map(|i| {
            let mut spans = Vec::new();
            for (column, w) in &columns {
                let Some((label, text)) = column.get(i) else {
                    continue;
                };
                spans.push(Span::styled(
                    format!("{label:<label_w$}  "),
                    Style::new().fg(Color::Cyan),
                ));
                spans.push(Span::raw(format!("{text:<w$}  ")));
            }
            Line::from(spans)
        })
        .collect();
    let r = centered(area, width as u16, rows as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title("Keys (j/k scroll, any other key closes)")),
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
        Some(d) => d.render_within(false, usize::from(area.width.saturating_sub(6))),
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

/// The comparison table of the selected file's runs, the sort column marked ▲ or ▼.
fn compare(f: &mut Frame, app: &App, column: usize, descending: bool, area: Rect) {
    let Some(s) = app.session() else {
        return;
    };
    let compiled = app.file().and_then(|f| f.compiled.as_ref());
    let rows = compare::rows(s, compiled, column, descending);
    let mark = if descending { "▼" } else { "▲" };
    let header: Vec<String> = compare::COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i == column {
                format!("{c} {mark}")
            } else {
                c.to_string()
            }
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(&r.cells) {
            *w = (*w).max(c.chars().count());
        }
    }
    // Too wide for the screen: `vs base` narrows (its text wraps under it), then the names (cut
    // with `…`), then `vs base` goes; number columns that still do not fit are left out, those
    // right of the sort column first, so the sort column (which tab moves) is always in view.
    let room = usize::from(area.width).saturating_sub(2);
    let last = widths.len() - 1;
    // Two columns between cells, none after the last.
    let total = |widths: &[usize]| -> usize {
        let shown = widths.iter().filter(|&&w| w > 0);
        shown.map(|w| w + 2).sum::<usize>().saturating_sub(2)
    };
    for (i, least) in [(last, 12), (0, 12)] {
        let over = total(&widths).saturating_sub(room);
        widths[i] -= over.min(widths[i].saturating_sub(least));
    }
    if total(&widths) > room {
        widths[last] = 0;
    }
    let sorted = column.clamp(1, last - 1);
    for i in (sorted + 1..last).rev().chain(1..sorted) {
        if total(&widths) <= room {
            break;
        }
        widths[i] = 0;
    }
    let cell = |i: usize, text: &str| match widths[i] {
        0 => String::new(),
        w => format!("{:<w$}  ", cut(text, w)),
    };
    let mut lines = vec![Line::from(
        header
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let style = Style::new().add_modifier(Modifier::BOLD);
                let style = if i == column {
                    style.fg(Color::Cyan)
                } else {
                    style
                };
                Span::styled(cell(i, h), style)
            })
            .collect::<Vec<_>>(),
    )];
    // Each row's `vs base` takes as many lines as the screen's height leaves a row.
    let per_row = (usize::from(area.height).saturating_sub(6) / rows.len().max(1)).max(1);
    for r in &rows {
        let diff = wrapped_cut(&r.cells[last], widths[last], per_row);
        for (k, piece) in diff.iter().enumerate() {
            let text = |i: usize| if k == 0 { r.cells[i].as_str() } else { "" };
            let mut spans = vec![Span::styled(cell(0, text(0)), Style::new().fg(r.color))];
            spans.extend((1..last).map(|i| Span::raw(cell(i, text(i)))));
            spans.push(Span::raw(cell(last, piece)));
            lines.push(Line::from(spans));
        }
    }
    if widths[1..last].contains(&0) {
        lines.push(Line::styled(
            "more columns than the screen is wide: tab brings each into view",
            Style::new().fg(Color::DarkGray),
        ));
    }
    lines.push(Line::styled(
        "tab/shift-tab sort by the next/previous column · r reverses · esc closes",
        Style::new().fg(Color::DarkGray),
    ));
    let r = centered(area, total(&widths) as u16 + 2, lines.len() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title("Compare the runs")
                .border_style(Style::new().fg(Color::Cyan)),
        ),
        r,
    );
}

/// `text` wrapped at spaces into lines of `width` columns, at most `most` of them, the last
/// ending in `…` where the text goes on; one empty line for an empty text.
fn wrapped_cut(text: &str, width: usize, most: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let ranges = wrap(text, width);
    let line = |from: usize, to: usize| chars[from..to].iter().collect::<String>();
    let mut lines: Vec<String> = ranges
        .iter()
        .take(most)
        .map(|r| line(r.start, r.end))
        .collect();
    if let (Some(end), Some(r)) = (lines.last_mut(), ranges.get(most.saturating_sub(1)))
        && ranges.len() > most
    {
        *end = cut(&line(r.start, chars.len()), width);
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    lines
}

/// The widest the optimizer list grows, to show more of each optimizer's defaults.
const LIST_WIDTH: u16 = 100;

/// The fewest columns worth showing a doc in, beside the defaults.
const DOC_MIN: usize = 20;

/// The widest of `texts`, in characters.
fn widest(texts: impl Iterator<Item = String>) -> usize {
    texts.map(|t| t.chars().count()).max().unwrap_or(0)
}

/// Every optimizer and trick under its section's heading, each with its defaults (and its doc
/// where they leave room), scrolled to keep the selected one (`selected`, in list order) in
/// view; below, its doc and the keys.
///
/// ```text
/// ┌Add a run: an optimizer, or a trick after the run's spe┐
/// │torch.optim                                            │
/// │  sgd      lr=0.001, momentum=0, dampening=0, …        │
/// │  adam     lr=0.001, beta1=0.9, beta2=0.999, …         │  ← selected, reversed
/// │modern                                                 │
/// │  …                                                    │
/// │tricks                                                 │
/// │  agc      clipping=0.01, eps=0.001  Adaptive gradient…│
/// │───────────────────────────────────────────────────────│
/// │Adam: bias-corrected first and second moment …         │
/// │↑↓ pgup pgdn home end move · enter edits the spec · esc│
/// └───────────────────────────────────────────────────────┘
/// ```
fn optimizers(f: &mut Frame, app: &App, selected: usize, area: Rect) {
    let entries = app.catalogue();
    let width = LIST_WIDTH
        .min(area.width.saturating_sub(4))
        .max(DIALOG_WIDTH.min(area.width));
    let inner = width.saturating_sub(2) as usize;
    let name_w = entries.iter().map(|e| e.name().len()).max().unwrap_or(0);
    let mut items = Vec::new();
    let mut list_index = None;
    let mut n = 0;
    for (section, members) in by_section(&entries) {
        items.push(ListItem::new(Line::styled(
            section.title(),
            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
        )));
        let defaults_w = widest(members.iter().map(|e| e.defaults()));
        // A column of docs where the section's defaults leave room for one (the tricks').
        let doc_at = name_w + defaults_w + 6;
        let docs = inner >= doc_at + DOC_MIN;
        for e in members {
            if n == selected {
                list_index = Some(items.len());
            }
            n += 1;
            let line = match docs {
                true => Line::from(vec![
                    Span::raw(format!(
                        "  {:<name_w$}  {:<defaults_w$}  ",
                        e.name(),
                        e.defaults()
                    )),
                    Span::styled(
                        cut(&e.doc, inner - doc_at),
                        Style::new().fg(Color::DarkGray),
                    ),
                ]),
                false => {
                    let line = format!("  {:<name_w$}  {}", e.name(), e.defaults());
                    Line::from(cut(line.trim_end(), inner))
                }
            };
            items.push(ListItem::new(line));
        }
    }
    let chosen = entries.get(selected);
    let doc = chosen.map_or("", |e| e.doc.as_str());
    let keys = match chosen.map(|e| &e.item) {
        Some(Item::Trick(_)) => {
            "↑↓ pgup pgdn home end move · enter adds it to the run's spec · esc cancels"
        }
        _ => "↑↓ pgup pgdn home end move · enter edits the spec · esc cancels",
    };
    let footer = vec![
        Line::styled("─".repeat(inner), Style::new().fg(Color::DarkGray)),
        Line::from(cut(doc, inner)),
        Line::styled(cut(keys, inner), Style::new().fg(Color::DarkGray)),
    ];
    let height = (items.len() + footer.len() + 2) as u16;
    let r = centered(
        area,
        width,
        height.min(area.height.saturating_sub(2).max(3)),
    );
    f.render_widget(Clear, r);
    let block = Block::bordered()
        .title("Add a run: an optimizer, or a trick after the run's spec")
        .border_style(Style::new().fg(Color::Cyan));
    let body = block.inner(r);
    f.render_widget(block, r);
    let [list_area, footer_area] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(footer.len() as u16)]).areas(body);
    let list = List::new(items).highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default().with_selected(list_index);
    f.render_stateful_widget(list, list_area, &mut state);
    f.render_widget(Paragraph::new(footer), footer_area);
}

/// The width of the dialogs (less on a narrow terminal).
const DIALOG_WIDTH: u16 = 60;

/// A dialog's text field, its error if any (whole, wrapped at spaces to `width` columns), and
/// what its keys do.
fn field(text: &LineEdit, error: Option<&str>, keys: &str, width: usize) -> Vec<Line<'static>> {
    let wrapped = |t: &str, color| {
        let chars: Vec<char> = t.chars().collect();
        wrap(t, width)
            .into_iter()
            .map(move |r| Line::styled(chars[r].iter().collect::<String>(), Style::new().fg(color)))
    };
    let mut l = vec![Line::from(text.window(width)), Line::from("")];
    if let Some(e) = error {
        l.extend(wrapped(e, Color::Red));
    }
    l.extend(wrapped(keys, Color::DarkGray));
    l
}

/// The sweep form's examples: a hyper-parameter, and the file's consts when it has any.
fn sweep_hint(app: &App) -> String {
    let consts = app
        .file()
        .and_then(|f| f.compiled.as_ref())
        .map(|c| c.const_names())
        .unwrap_or_default();
    let consts = match consts.first() {
        None => "beta1=[0.8, 0.9]".to_string(),
        Some(c) => format!(
            "const.{c}=[a, b] (the file's consts: {})",
            consts.join(", ")
        ),
    };
    format!("lr=logspace(lo, hi, n) · {consts} · enter starts · esc cancels")
}

/// The open dialog.
pub fn popup(f: &mut Frame, app: &App, p: &Popup, area: Rect) {
    let inner = DIALOG_WIDTH.min(area.width).saturating_sub(2) as usize;
    let (title, lines, selected): (&str, Vec<Line>, Option<usize>) = match p {
        Popup::Warning(n) => return warning(f, app, *n, area),
        Popup::Inspector(key) => {
            let lines = super::inspector::answer_lines(app, *key);
            let height = (lines.len() as u16 + 2).min(area.height.saturating_sub(2));
            let r = centered(area, crate::tui::layout::INSPECTOR_WIDTH, height);
            f.render_widget(Clear, r);
            let block = Block::bordered()
                .title("Inspector (j/k; any key closes)")
                .border_style(Style::new().fg(Color::Cyan));
            return super::inspector::render(f, app, r, lines, block);
        }
        Popup::Hessian { run, scroll } => {
            return super::hessian::render(f, app, *run, *scroll, area);
        }
        Popup::Compare { column, descending } => {
            return compare(f, app, *column, *descending, area);
        }
        Popup::PickOptimizer { selected } => return optimizers(f, app, *selected, area),
        Popup::EditSpec { text, error } => (
            "Add a run: edit the spec",
            field(
                text,
                error.as_deref(),
                "enter adds the run · esc cancels",
                inner,
            ),
            None,
        ),
        Popup::Sweep { text, error } => (
            "Sweep the selected run: key=values (one or two)",
            field(text, error.as_deref(), &sweep_hint(app), inner),
            None,
        ),
        Popup::Smoothing { text, error } => (
            "Smoothing weight (0 off, below 1, e.g. 0.9)",
            field(
                text,
                error.as_deref(),
                &format!(
                    "now {} · enter sets it · esc cancels",
                    crate::format::fmt_short(app.smoothing)
                ),
                inner,
            ),
            None,
        ),
        Popup::Duplicate { selected } => (
            "Duplicate the run with (j/k, enter adds, esc)",
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
    let r = centered(area, DIALOG_WIDTH, lines.len() as u16 + 2);
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
