//! The Hessian overlay (`h`): what the spectrum says, the eigenvalues as a strip plot and, for
//! at most [`HEAT_MAP_LIMIT`] params, the matrix as a heat map with the coordinates' names on
//! both axes. Past the whole Hessian's limit it shows the top eigenvalue (the curvature view).
//!
//! ```text
//! ┌ Hessian · run `base` @ step 0 ──────────────────────┐
//! │ w (10 × 10), exact: λmax 1000, λmin 1, κ 1000       │
//! │ no negative eigenvalue: positive definite, …        │
//! │ Spectrum (10 eigenvalues, symlog scale)             │
//! │ ┃    ┃    ┃    ┃    ┃    ┃    ┃    ┃    ┃    ┃     │
//! │ ├───────────────────────────────────────────────┤   │
//! │ 1                                            1000   │
//! │ Heat map …                                          │
//! │          w w                                        │
//! │          [ [                                        │
//! │    w[0]  █ ░                                        │
//! └─────────────────────────────────────────────────────┘
//! ```

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use crate::compile::hessian::{FULL_LIMIT, Hessian, Method};
use crate::format::{fmt_num, fmt_short};
use crate::run::worker::RunId;
use crate::tui::app::App;
use crate::tui::layout::centered;
use crate::tui::session::RunView;

/// The most params drawn as a heat map.
pub const HEAT_MAP_LIMIT: usize = 64;

/// The strip plot's width in cells.
const STRIP_WIDTH: usize = 60;

/// Longest axis label of the heat map; longer names are cut.
const LABEL_WIDTH: usize = 10;

/// Draws the overlay for run `run`, scrolled down by `scroll` lines (clamped to its end).
pub fn render(f: &mut Frame, app: &App, run: RunId, scroll: u16, area: Rect) {
    let found = app
        .session()
        .and_then(|s| s.runs.iter().find(|r| r.info.id == run));
    let Some(r) = found else {
        let lines = vec![Line::from("the run is gone (any key closes)")];
        return draw(f, area, "Hessian".into(), lines, 0);
    };
    let params = app
        .file()
        .and_then(|f| f.compiled.as_ref())
        .map_or(0, |c| c.param_count());
    let width = area.width.saturating_sub(4).max(1) as usize;
    let (step, lines) = if params > FULL_LIMIT {
        curvature_lines(r, params)
    } else {
        match &r.hessian {
            None => (
                None,
                vec![Line::from(format!(
                    "computing the Hessian of {params} param values…"
                ))],
            ),
            Some((step, Err(why))) => (
                Some(*step),
                vec![Line::styled(
                    format!("no Hessian: {why}"),
                    Style::new().fg(Color::Red),
                )],
            ),
            Some((step, Ok(h))) => (Some(*step), hessian_lines(h, width.saturating_sub(2))),
        }
    };
    let at = step.map_or(String::new(), |s| format!(" @ step {s}"));
    let title = format!(
        "Hessian · run `{}`{at} (j/k scroll, other keys close)",
        r.info.name
    );
    draw(f, area, title, lines, scroll);
}

/// The bordered box, as wide and tall as its lines need (at most the screen), scrolled down
/// by `scroll` lines, no further than its end.
fn draw(f: &mut Frame, area: Rect, title: String, lines: Vec<Line<'static>>, scroll: u16) {
    let needed = lines.iter().map(Line::width).max().unwrap_or(0) + 2;
    let rect = centered(
        area,
        (needed.max(50) as u16).min(area.width),
        (lines.len() as u16 + 2).min(area.height),
    );
    let visible = rect.height.saturating_sub(2) as usize;
    let scroll = (scroll as usize).min(lines.len().saturating_sub(visible)) as u16;
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines).scroll((scroll, 0)).block(
            Block::bordered()
                .title(title)
                .border_style(Style::new().fg(Color::Cyan)),
        ),
        rect,
    );
}

/// The fallback for models too large for the whole Hessian: the top eigenvalue.
fn curvature_lines(r: &RunView, params: usize) -> (Option<u64>, Vec<Line<'static>>) {
    let why = format!(
        "{params} param values: more than the {FULL_LIMIT} the whole Hessian takes, so its top eigenvalue"
    );
    let Some((step, c)) = &r.curvature else {
        return (None, vec![Line::from(why), Line::from("computing…")]);
    };
    let lr = c.max_stable_lr().map_or("none: λ ≤ 0".into(), fmt_num);
    let converged = if c.converged { "" } else { ", not converged" };
    (
        Some(*step),
        vec![
            Line::from(why),
            Line::from(format!(
                "λmax {}  ({} power iterations{converged})",
                fmt_num(c.lambda),
                c.iterations
            )),
            Line::from(format!("largest stable lr of gradient descent 2/λ: {lr}")),
            Line::from(format!(
                "against finite differences of gradients: relative error {}",
                fmt_num(c.fd_rel_err)
            )),
        ],
    )
}

fn dim(text: impl Into<String>) -> Line<'static> {
    Line::styled(text.into(), Style::new().fg(Color::DarkGray))
}

/// The summary, the strip plot and (when small enough) the heat map, `width` columns wide.
fn hessian_lines(h: &Hessian, width: usize) -> Vec<Line<'static>> {
    let Method::Full(full) = &h.method else {
        return vec![Line::from(h.verdict())];
    };
    let lr = h.max_stable_lr().map_or("none (λmax ≤ 0)".into(), fmt_num);
    let mut lines = vec![
        Line::from(format!(
            "{} ({n} × {n}), exact: λmax {}  λmin {}  |λ|max/|λ|min {}",
            h.params.join(", "),
            fmt_num(h.lambda_max()),
            fmt_num(h.lambda_min()),
            h.condition_words(),
            n = h.dim
        )),
        Line::from(h.verdict()),
        Line::from(format!(
            "largest stable lr of plain gradient descent 2/λmax: {lr}"
        )),
    ];
    if h.fd_agrees() == Some(false) {
        lines.push(Line::styled(
            format!(
                "finite differences of gradients disagree (relative error {}): a kink near these params",
                fmt_num(full.fd_rel_err)
            ),
            Style::new().fg(Color::Yellow),
        ));
    }
    lines.push(Line::from(""));
    lines.extend(strip(
        &full.eigenvalues,
        h.zero_tol(),
        width.min(STRIP_WIDTH),
    ));
    lines.push(Line::from(""));
    if h.dim <= HEAT_MAP_LIMIT {
        lines.extend(heat_map(&full.labels, &full.matrix, h.zero_tol(), width));
    } else {
        lines.push(dim(format!(
            "(the heat map is drawn for at most {HEAT_MAP_LIMIT} params; this block has {})",
            h.dim
        )));
    }
    lines
}

/// The colour of a value's sign, as the heat map draws it: red +, blue −, dark grey 0.
fn sign_color(v: f64, zero: f64) -> Color {
    if v > zero {
        Color::Red
    } else if v < -zero {
        Color::Blue
    } else {
        Color::DarkGray
    }
}

/// The eigenvalues on one axis, one mark a cell (heavier where several fall), linear when they
/// span less than two decades and symmetric-log past that (so 1 … 1000 spreads out).
fn strip(values: &[f64], zero: f64, width: usize) -> Vec<Line<'static>> {
    let width = width.max(8);
    let nonzero = values
        .iter()
        .map(|v| v.abs())
        .filter(|a| *a > zero)
        .fold(f64::INFINITY, f64::min);
    let largest = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let log = nonzero.is_finite() && largest / nonzero > 100.0;
    let map = |v: f64| {
        if log {
            v.signum() * (1.0 + v.abs() / nonzero).log10()
        } else {
            v
        }
    };
    let (lo, hi) = (map(values[0]), map(values[values.len() - 1]));
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let cell = |v: f64| (((map(v) - lo) / span) * (width - 1) as f64).round() as usize;
    let mut counts = vec![(0usize, Color::Reset); width];
    for &v in values {
        let c = &mut counts[cell(v).min(width - 1)];
        c.0 += 1;
        c.1 = sign_color(v, zero);
    }
    let marks: Vec<Span> = counts
        .iter()
        .map(|&(n, color)| match n {
            0 => Span::raw(" "),
            1 => Span::styled("│", Style::new().fg(color)),
            2..=4 => Span::styled("┃", Style::new().fg(color)),
            _ => Span::styled("█", Style::new().fg(color)),
        })
        .collect();
    let mut axis: Vec<char> = vec!['─'; width];
    axis[0] = '├';
    axis[width - 1] = '┤';
    let zero_at = (lo < 0.0 && hi > 0.0).then(|| cell(0.0));
    if let Some(z) = zero_at {
        axis[z] = '┼';
    }
    let (left, right) = (fmt_short(values[0]), fmt_short(values[values.len() - 1]));
    let mut labels = format!("{left:<width$}");
    labels.replace_range(
        width - right.len().min(width)..,
        &right[..right.len().min(width)],
    );
    if let Some(z) = zero_at.filter(|&z| z > left.len() + 1 && z + 2 < width - right.len()) {
        labels.replace_range(z..z + 1, "0");
    }
    let scale = if log { "symlog" } else { "linear" };
    vec![
        dim(format!(
            "Spectrum: {} eigenvalues, {scale} scale (red +, blue −, grey 0; ┃ 2-4, █ 5+ in a cell)",
            values.len()
        )),
        Line::from(marks),
        Line::from(axis.into_iter().collect::<String>()),
        Line::from(labels),
    ]
}

/// The matrix as coloured shades: red positive, blue negative, the shade by |H| as a share of
/// the largest entry (finer near the top, where a dense Hessian's entries sit); the coordinates' names down the side and, read downwards, along the top.
fn heat_map(
    labels: &[String],
    m: &nalgebra::DMatrix<f64>,
    zero: f64,
    width: usize,
) -> Vec<Line<'static>> {
    let labels: Vec<String> = labels
        .iter()
        .map(|l| l.chars().take(LABEL_WIDTH).collect())
        .collect();
    let label_w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let n = labels.len();
    let cell_w = if label_w + 2 + 2 * n <= width { 2 } else { 1 };
    let largest = m.camax();
    let mut lines = vec![dim(
        "Heat map: red +, blue −; of the largest |entry| █ ≥ 30%, ▓ ≥ 10%, ▒ ≥ 1%, ░ less, · zero",
    )];
    for k in 0..label_w {
        let mut row = " ".repeat(label_w + 2);
        for l in &labels {
            let c = l.chars().nth(k).unwrap_or(' ');
            row.push(c);
            row.push_str(&" ".repeat(cell_w - 1));
        }
        lines.push(Line::from(row.trim_end().to_string()));
    }
    for (r, label) in labels.iter().enumerate() {
        let mut spans = vec![Span::raw(format!("{label:>label_w$}  "))];
        for c in 0..n {
            let v = m[(r, c)];
            let ratio = v.abs() / largest.max(f64::MIN_POSITIVE);
            let glyph = match ratio {
                _ if v.abs() <= zero => "·",
                x if x >= 0.3 => "█",
                x if x >= 0.1 => "▓",
                x if x >= 0.01 => "▒",
                _ => "░",
            };
            let color = sign_color(v, zero);
            let text = if cell_w == 2 && glyph != "·" {
                glyph.repeat(2)
            } else {
                format!("{glyph:<cell_w$}")
            };
            spans.push(Span::styled(text, Style::new().fg(color)));
        }
        lines.push(Line::from(spans));
    }
    lines
}
