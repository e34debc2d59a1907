//! The inspector: the selected run's latest numbers, checks and params.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::panel;
use crate::format::fmt_num;
use crate::run::history::flags;
use crate::tui::app::App;

/// The selected run's file, optimizer, step, loss, lr, gradcheck, curvature and per-param norms.
pub fn render(f: &mut Frame, app: &App, area: Rect) {
    let block = panel("Inspector", false);
    let Some(s) = app.session() else {
        f.render_widget(Paragraph::new("").block(block), area);
        return;
    };
    let Some(r) = s.selected_run() else {
        f.render_widget(Paragraph::new("no run selected").block(block), area);
        return;
    };
    let mut lines = vec![
        Line::from(Span::styled(
            r.info.name.clone(),
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
        Line::from(format!(
            "{} · {} · {}",
            r.info.optimizer,
            r.info.dtype.name(),
            r.info.grad
        )),
        Line::from(format!("step {} · {}", r.steps(), r.status(s.playing))),
    ];
    if let Some(last) = r.history.len().checked_sub(1) {
        let c = r.history.core(last);
        lines.push(Line::from(format!("loss      {}", fmt_num(c.loss))));
        lines.push(Line::from(format!(
            "|∇|       {}",
            fmt_num(f64::from(c.grad_norm))
        )));
        lines.push(Line::from(format!(
            "lr        {}{}",
            fmt_num(f64::from(c.lr)),
            if r.lr_scale != 1.0 {
                format!(" (×{})", r.lr_scale)
            } else {
                String::new()
            }
        )));
        let ratio = f64::from(c.update_ratio);
        // 0/0 while every param is zero: undefined, not a NaN event; no update yet from here.
        let ratio = if ratio.is_nan() && !c.loss.is_nan() || c.flags & flags::STEPPED == 0 {
            "-".to_string()
        } else {
            fmt_num(ratio)
        };
        lines.push(Line::from(format!("Δ/p       {ratio}")));
        if c.loss_scale_log2 != 0 {
            lines.push(Line::from(format!("loss scale 2^{}", c.loss_scale_log2)));
        }
        lines.push(Line::from(format!(
            "clipped {} · skipped {}",
            r.clipped, r.skipped
        )));
    }
    lines.extend(super::metrics::inspector_lines(s, r));
    if let Some((step, checks)) = &r.gradcheck {
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
    if let Some((step, c)) = &r.curvature {
        let lr = c.max_stable_lr().map_or("-".into(), fmt_num);
        lines.push(Line::from(format!(
            "λmax @{step}: {}  2/λ {lr}",
            fmt_num(c.lambda)
        )));
    }
    lines.push(Line::from(""));
    for (i, p) in r.params.iter().enumerate() {
        let g = r
            .history
            .len()
            .checked_sub(1)
            .map(|k| r.history.param_grad_norm(k, i));
        lines.push(Line::from(Span::styled(
            if p.shape.is_empty() {
                format!("{} (scalar)", p.name)
            } else {
                format!("{} {:?}", p.name, p.shape)
            },
            Style::new().bold(),
        )));
        lines.push(Line::from(format!(
            "  |p| {}  |∇| {}",
            fmt_num(p.norm),
            g.map_or("-".into(), |g| fmt_num(f64::from(g)))
        )));
        lines.push(Line::from(format!(
            "  min {}  max {}",
            fmt_num(p.min),
            fmt_num(p.max)
        )));
        if p.nonfinite > 0 {
            lines.push(Line::styled(
                format!("  {} non-finite values", p.nonfinite),
                Style::new().fg(Color::Red),
            ));
        }
    }
    f.render_widget(Paragraph::new(lines).block(block), area);
}
