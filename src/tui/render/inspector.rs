//! The inspector: the selected run's latest numbers, checks and params.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

use crate::compile::backward::Formula;
use crate::format::{cut, fmt_num, fmt_short};
use crate::run::history::flags;
use crate::run::worker::{ParamStats, TensorStats};
use crate::tui::app::{Answer, App};

/// `lines` (the selected run's inspector lines, or an answer of them) in `block` (its panel, or
/// an overlay's frame), scrolled by [`App::inspector_scroll`].
pub fn render(f: &mut Frame, app: &App, area: Rect, lines: Vec<Line<'static>>, block: Block) {
    let visible = area.height.saturating_sub(2) as usize;
    let scroll = app
        .inspector_scroll
        .min(lines.len().saturating_sub(visible));
    f.render_widget(
        Paragraph::new(lines)
            .block(block)
            .scroll((scroll as u16, 0)),
        area,
    );
}

/// What the inspector answers `key` with (its gradient check, lr range test or formula) for the
/// selected run, under its name and step: the inspector over the panels on a small terminal.
pub fn answer_lines(app: &App, key: Answer) -> Vec<Line<'static>> {
    let Some((s, r)) = app.session().and_then(|s| Some((s, s.selected_run()?))) else {
        return Vec::new();
    };
    let mut lines = vec![
        Line::styled(r.info.name.clone(), Style::new().fg(r.color).bold()),
        Line::from(format!("step {} · {}", r.steps(), r.status(s.playing))),
    ];
    let waiting = |lines: &mut Vec<Line<'static>>| lines.push(Line::from("working…"));
    match key {
        Answer::Gradcheck => match &r.gradcheck {
            Some((step, checks)) => gradcheck_lines(&mut lines, *step, checks),
            None => waiting(&mut lines),
        },
        Answer::LrFind => match &r.lrfind {
            Some((step, found)) => lrfind_lines(&mut lines, *step, found),
            None => waiting(&mut lines),
        },
        Answer::Formula => match &r.formula {
            Some((step, f)) => formula_lines(&mut lines, *step, f),
            None => lines.push(Line::from("no formula (G shows the first param's)")),
        },
    }
    lines
}

/// The selected run's file, optimizer, step, loss, lr, gradcheck, curvature, and its params
/// and gradients at the current step.
pub fn lines(app: &App) -> Vec<Line<'static>> {
    let Some(s) = app.session() else {
        return Vec::new();
    };
    let Some(r) = s.selected_run() else {
        return vec![Line::from("no run selected")];
    };
    // Cut with `…` at the panel's edge, so a long name or chain says there is more.
    let fit = |text: String| cut(&text, usize::from(crate::tui::layout::INSPECTOR_WIDTH - 2));
    let mut lines = vec![
        Line::from(Span::styled(
            fit(r.info.name.clone()),
            Style::new().fg(r.color).bold(),
        )),
        Line::from(Span::styled(
            app.file()
                .map(|f| {
                    let shown = f.path.strip_prefix(&app.base).unwrap_or(&f.path);
                    shown.display().to_string()
                })
                .unwrap_or_default(),
            Style::new().fg(Color::DarkGray),
        )),
        // The chain last: it is what a long line loses to the cut.
        Line::from(fit(format!(
            "{} · {} · {}",
            r.info.dtype.name(),
            r.info.grad,
            r.info.optimizer
        ))),
        Line::from(format!("step {} · {}", r.steps(), r.status(s.playing))),
    ];
    if let Some(last) = r.history.len().checked_sub(1) {
        let c = r.history.core(last);
        lines.push(Line::from(format!("loss      {}", fmt_num(c.loss))));
        lines.push(Line::from(format!(
            "|∇|       {}",
            fmt_num(f64::from(c.grad_norm))
        )));
        // The lr the next update takes: a change at this step came after its row.
        let lr = match r.lr_before {
            Some((step, before)) if step == last as u64 => f64::from(c.lr) / before * r.lr_scale,
            _ => f64::from(c.lr),
        };
        lines.push(Line::from(format!(
            "lr        {}{}",
            fmt_num(lr),
            if r.lr_scale != 1.0 {
                format!(" (×{})", r.lr_scale)
            } else {
                String::new()
            }
        )));
        // The last row holds the current params, not yet stepped from: its Δ/p is the update
        // that led there, the row before's. 0/0 while every param is zero is undefined, not a
        // NaN event.
        let led_here = last
            .checked_sub(1)
            .filter(|&k| k >= r.history.first())
            .map(|k| r.history.core(k))
            .filter(|p| p.flags & flags::STEPPED != 0);
        let ratio = match led_here.map(|p| f64::from(p.update_ratio)) {
            Some(x) if !x.is_nan() || c.loss.is_nan() => fmt_num(x),
            _ => "-".to_string(),
        };
        lines.push(Line::from(format!("Δ/p       {ratio}")));
        if c.loss_scale_log2 != 0 {
            lines.push(Line::from(format!("loss scale 2^{}", c.loss_scale_log2)));
        }
        lines.push(Line::from(format!(
            "clipped {} · skipped {}",
            r.clipped, r.skipped
        )));
        if r.stalled > 0 {
            lines.push(Line::from(format!("stalled {} (see Warnings)", r.stalled)));
        }
    }
    lines.extend(super::metrics::inspector_lines(s, r));
    if let Some((step, checks)) = &r.gradcheck {
        gradcheck_lines(&mut lines, *step, checks);
    }
    if let Some((step, c)) = &r.curvature {
        let lr = c.max_stable_lr().map_or("-".into(), fmt_num);
        lines.push(Line::from(format!(
            "λmax @{step}: {}  2/λ {lr}",
            fmt_num(c.lambda)
        )));
    }
    if let Some((step, Ok(h))) = &r.hessian {
        lines.push(Line::from(format!(
            "Hessian @{step}: λ {} … {}  {} neg",
            fmt_short(h.lambda_min()),
            fmt_short(h.lambda_max()),
            h.inertia().negative
        )));
    }
    if let Some((step, found)) = &r.lrfind {
        lrfind_lines(&mut lines, *step, found);
    }
    if let Some((step, f)) = &r.formula {
        formula_lines(&mut lines, *step, f);
    }
    lines.push(Line::from(""));
    for p in &r.params {
        param_lines(&mut lines, p);
    }
    about_lines(&mut lines, app, r.info.def);
    lines
}

/// What the file's `about` says it shows, and its variant's (definition `def`, 0 the base).
fn about_lines(lines: &mut Vec<Line<'static>>, app: &App, def: usize) {
    let Some(file) = app
        .file()
        .and_then(|f| f.compiled.as_ref())
        .map(|c| &c.file)
    else {
        return;
    };
    let variant = def
        .checked_sub(1)
        .and_then(|v| file.variants.get(v))
        .and_then(|v| v.about.as_deref());
    let style = Style::new().fg(Color::DarkGray);
    for about in file.about.as_deref().into_iter().chain(variant) {
        lines.push(Line::from(""));
        push_wrapped(lines, about, 0, style);
    }
}

/// The last gradient check at a step: ok, a custom gradient's difference, or the params that fail.
fn gradcheck_lines(
    lines: &mut Vec<Line<'static>>,
    step: u64,
    checks: &[crate::compile::gradcheck::ParamCheck],
) {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.verdict == crate::compile::gradcheck::Verdict::Fail)
        .map(|c| c.name.as_str())
        .collect();
    let kinks: usize = checks.iter().map(|c| c.kinks).sum();
    let custom = checks
        .iter()
        .any(|c| c.verdict == crate::compile::gradcheck::Verdict::CustomGradient);
    let (text, color) = if failed.is_empty() && custom {
        (
            format!("gradcheck @{step}: differs (custom gradient)"),
            Color::Yellow,
        )
    } else if failed.is_empty() {
        (
            format!("gradcheck @{step}: ok ({kinks} kinks)"),
            Color::Green,
        )
    } else {
        (
            format!("gradcheck @{step}: FAIL {}", failed.join(", ")),
            Color::Red,
        )
    };
    lines.push(Line::styled(text, Style::new().fg(color)));
}

/// `text` wrapped at word boundaries to the inspector's width, `indent` spaces before its first
/// line and two more before the others: nothing of it is cut off at the panel's edge.
fn push_wrapped(lines: &mut Vec<Line<'static>>, text: &str, indent: usize, style: Style) {
    let inner = usize::from(crate::tui::layout::INSPECTOR_WIDTH - 2);
    let chars: Vec<char> = text.chars().collect();
    for (i, r) in super::warnings::wrap(text, inner - indent - 2)
        .into_iter()
        .enumerate()
    {
        let pad = if i == 0 { indent } else { indent + 2 };
        let part: String = chars[r].iter().collect();
        lines.push(Line::styled(format!("{:pad$}{part}", ""), style));
    }
}

/// The lr range test from a step: its two suggestions, why it stopped, and the smoothed loss
/// against log lr as a sparkline (what `gradscope lrfind` prints, in the panel's width).
fn lrfind_lines(
    lines: &mut Vec<Line<'static>>,
    step: u64,
    found: &Result<Box<crate::run::lrfind::LrFind>, String>,
) {
    lines.push(Line::from(""));
    lines.push(Line::styled(
        format!("lr range test @{step}"),
        Style::new().bold(),
    ));
    let found = match found {
        Ok(f) => f,
        Err(why) => {
            push_wrapped(lines, why, 0, Style::new().fg(Color::Red));
            return;
        }
    };
    let lr = |x: Option<f64>| x.map_or("none".into(), fmt_short);
    lines.push(Line::from(format!(
        "steepest {}  min/10 {}",
        lr(found.curve.steepest()),
        lr(found.curve.min_tenth())
    )));
    let points = &found.curve.points;
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        lines.push(Line::from(format!(
            "{} steps, lr {} → {}",
            points.len(),
            fmt_short(first.lr),
            fmt_short(last.lr)
        )));
    }
    let width = usize::from(crate::tui::layout::INSPECTOR_WIDTH - 2);
    lines.push(Line::styled(
        curve_line(points.iter().map(|p| p.smoothed), width),
        Style::new().fg(Color::Cyan),
    ));
    let stopped = format!("stopped: {}", found.stop);
    let chars: Vec<char> = stopped.chars().collect();
    for range in super::warnings::wrap(&stopped, width) {
        lines.push(Line::styled(
            chars[range].iter().collect::<String>(),
            Style::new().fg(Color::DarkGray),
        ));
    }
}

/// `values` in at most `width` columns of [`BARS`], low to high (each column the mean of its
/// values; non-finite ones left blank), scaled from the lowest finite value to the first.
fn curve_line(values: impl Iterator<Item = f64>, width: usize) -> String {
    let values: Vec<f64> = values.collect();
    let per = values.len().div_ceil(width.max(1)).max(1);
    let columns: Vec<f64> = values
        .chunks(per)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    let finite = columns.iter().copied().filter(|v| v.is_finite());
    let low = finite.clone().fold(f64::INFINITY, f64::min);
    // The top is the start: a divergence past it is drawn full, not squashing the descent.
    let high = columns
        .first()
        .copied()
        .filter(|v| v.is_finite())
        .unwrap_or(low)
        .max(low);
    columns
        .iter()
        .map(|&v| match v.is_finite() {
            false => ' ',
            true if high <= low => BARS[0],
            true => {
                let at = ((v - low) / (high - low) * 7.0).round().clamp(0.0, 7.0);
                BARS[at as usize]
            }
        })
        .collect()
}

/// A param's gradient as the program `gradscope grad` writes, each line wrapped to the panel,
/// and where its first non-finite value is at the step it was looked at.
fn formula_lines(lines: &mut Vec<Line<'static>>, step: u64, f: &Formula) {
    lines.push(Line::from(""));
    lines.push(Line::styled(
        format!("∇{} as a formula @{step}", f.name),
        Style::new().bold(),
    ));
    match &f.lines {
        Ok(program) => {
            for l in program {
                push_wrapped(lines, l, 2, Style::new());
            }
        }
        Err(why) => push_wrapped(lines, why, 2, Style::new().fg(Color::Yellow)),
    }
    if let Some(place) = &f.nonfinite {
        push_wrapped(lines, &place.summary(), 2, Style::new().fg(Color::Red));
    }
}

/// One param at θ_k: its shape, then every value beside its gradient when it is small, or a
/// summary and a histogram of each when it is large.
fn param_lines(lines: &mut Vec<Line<'static>>, p: &ParamStats) {
    let count: usize = p.shape.iter().product();
    let heading = if p.shape.is_empty() {
        format!("{} (scalar)", p.name)
    } else {
        format!("{} {:?}  {count} values", p.name, p.shape)
    };
    lines.push(Line::styled(heading, Style::new().bold()));
    let grad = |t: &TensorStats| t.values.as_ref().and_then(|v| v.first().copied());
    if let (true, Some(v)) = (p.shape.is_empty(), grad(&p.value)) {
        let g = p.grad.as_ref().and_then(grad).map_or("-".into(), fmt_num);
        lines.push(Line::from(format!("  θ {}  ∇ {g}", fmt_num(v))));
        return;
    }
    let grad_norm = p.grad.as_ref().map_or("-".into(), |g| fmt_num(g.norm));
    lines.push(Line::from(format!(
        "  |θ| {}  |∇| {grad_norm}",
        fmt_num(p.value.norm)
    )));
    match &p.value.values {
        Some(values) => {
            let grads = p.grad.as_ref().and_then(|g| g.values.as_ref());
            let index_w = (0..values.len())
                .map(|i| index(i, &p.shape).chars().count())
                .max()
                .unwrap_or(0);
            lines.push(Line::styled(
                format!("  {:index_w$} {:>11} {:>11}", "", "θ", "∇"),
                Style::new().fg(Color::DarkGray),
            ));
            for (i, v) in values.iter().enumerate() {
                let g = grads
                    .and_then(|g| g.get(i))
                    .map_or("-".into(), |g| fmt_num(*g));
                let line = format!(
                    "  {:index_w$} {:>11} {g:>11}",
                    index(i, &p.shape),
                    fmt_num(*v)
                );
                let bad =
                    !v.is_finite() || grads.and_then(|g| g.get(i)).is_some_and(|g| !g.is_finite());
                lines.push(if bad {
                    Line::styled(line, Style::new().fg(Color::Red))
                } else {
                    Line::from(line)
                });
            }
        }
        None => {
            summary_lines(lines, "θ", &p.value);
            if let Some(g) = &p.grad {
                summary_lines(lines, "∇", g);
            }
        }
    }
}

/// A large tensor's summary: mean, range, non-finite count and a histogram of its values.
fn summary_lines(lines: &mut Vec<Line<'static>>, what: &str, t: &TensorStats) {
    lines.push(Line::from(format!(
        "  {what} mean {}  min {}",
        fmt_short(t.mean),
        fmt_short(t.min)
    )));
    lines.push(Line::from(format!("    max {}", fmt_short(t.max))));
    lines.push(Line::styled(
        format!("    {}", sparkline(&t.histogram)),
        Style::new().fg(Color::Cyan),
    ));
    if t.nonfinite > 0 {
        lines.push(Line::styled(
            format!("    {} non-finite", t.nonfinite),
            Style::new().fg(Color::Red),
        ));
    }
}

/// Bars one eighth of a cell high each, up to a full cell.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Counts as [`BARS`], the largest a full cell; empty bins blank.
fn sparkline(counts: &[u32]) -> String {
    let top = counts.iter().copied().max().unwrap_or(0).max(1);
    counts
        .iter()
        .map(|&c| match c {
            0 => ' ',
            c => BARS[((c as usize * 8).div_ceil(top as usize) - 1).min(7)],
        })
        .collect()
}

/// Element `i` of a row-major tensor of `shape` as `[r,c]` (`[i]` for vectors).
fn index(i: usize, shape: &[usize]) -> String {
    let parts: Vec<String> = crate::compile::trace::unravel(i, shape)
        .iter()
        .map(usize::to_string)
        .collect();
    format!("[{}]", parts.join(","))
}
