//! The Landscape tab: the loss map with the runs' paths, and the next step's learning-rate slice.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Block, Borders, Chart, Dataset, GraphType, Paragraph, Wrap};

use super::panel;
use crate::format::fmt_num;
use crate::tui::app::{App, FileEntry, Focus};
use crate::tui::chart;
use crate::tui::layout::landscape_layout;
use crate::tui::session::RunView;

/// The Landscape tab of `file`.
pub fn render(f: &mut Frame, app: &App, file: &FileEntry, area: Rect) {
    let focused = app.focus == Focus::Charts;
    let Some(s) = file.session.as_ref() else {
        f.render_widget(
            Paragraph::new("no runs").block(panel("Landscape", focused)),
            area,
        );
        return;
    };
    let l = &s.landscape;
    let selected = s.selected_run();
    let title = match (&l.plane, selected) {
        // The run first: a narrow panel cuts the end of its title.
        (Some(p), Some(r)) => format!(
            "Landscape of {} ({}) · {}",
            r.info.name,
            r.info.dtype.name(),
            p.kind.describe()
        ),
        _ => "Landscape".to_string(),
    };
    f.render_widget(panel(&title, focused), area);
    let (scene_area, slice_area) = landscape_layout(area);
    if let (Some(area), Some(r)) = (slice_area, selected) {
        render_slice(
            f,
            l.slice.as_ref().filter(|sl| sl.run == r.info.id),
            r,
            area,
        );
    }
    let Some(plane) = &l.plane else {
        let text = match &l.error {
            Some(e) => e.clone(),
            None if s.dims < 2 => {
                "This loss has a single param value, so there is no plane to draw; the next-step \
                 slice below shows the loss along its update."
                    .into()
            }
            None => "choosing a plane through the selected run…".into(),
        };
        f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), scene_area);
        return;
    };
    let Some(view) = l.view else {
        f.render_widget(Paragraph::new("waiting for the runs' paths…"), scene_area);
        return;
    };
    let status = match (&l.grid, l.mode, l.elapsed) {
        _ if l.error.is_some() => l.error.clone().unwrap_or_default(),
        (Some(g), Some(m), Some(t)) => format!(
            "{}x{} {} in {}",
            g.spec.nx,
            g.spec.ny,
            m.name(),
            // A no-break space: the legend wraps the status at spaces, never inside the time.
            crate::format::fmt_duration(t).replace(' ', "\u{a0}")
        ),
        (Some(g), _, None) => format!("computing {}/{}", g.filled(), g.spec.len()),
        _ => "computing…".into(),
    };
    let scene = crate::draw::scene::Scene {
        grid: l.grid.as_ref(),
        view,
        labels: [&plane.labels[0], &plane.labels[1]],
        log: l.log,
        paths: s
            .runs
            .iter()
            .map(|r| crate::draw::scene::ScenePath {
                name: r.info.name.clone(),
                color: r.color,
                points: r.path.iter().map(|(_, p)| *p).collect(),
            })
            .collect(),
        best: l.best(&s.runs),
        status,
    };
    scene.render(
        scene_area,
        f.buffer_mut(),
        crate::draw::scene::Glyphs::HalfBlock,
    );
}

/// Loss against the learning-rate multiple of the selected run's next step: where a larger or
/// smaller lr would land.
fn render_slice(
    f: &mut Frame,
    slice: Option<&crate::tui::landscape_view::LrSlice>,
    run: &RunView,
    area: Rect,
) {
    let block = Block::new()
        .borders(Borders::TOP)
        .border_style(Style::new().fg(Color::DarkGray));
    let Some(sl) = slice else {
        let text = if run.halted.is_some() {
            "the run halted: no next step"
        } else {
            "evaluating the next step at other learning rates…"
        };
        f.render_widget(Paragraph::new(text).block(block.title("Next step")), area);
        return;
    };
    // s = 0 is the current loss; the rest are lr multiples on a log2 axis.
    let line = &sl.line;
    let now = line.at(0.0).unwrap_or(f64::NAN);
    let points: Vec<(f64, f64)> = line
        .s
        .iter()
        .zip(&line.loss)
        .filter(|(s, l)| **s > 0.0 && l.is_finite())
        .map(|(s, l)| (s.log2(), *l))
        .collect();
    // The numbers matter more than the words around them: a narrow panel drops the run's name,
    // then the numbers' digits, before it cuts the line.
    let numbers = |num: &dyn Fn(f64) -> String| {
        format!(
            "lr × s: now {}, s=1 → {}{}",
            num(now),
            line.at(1.0).map_or("-".into(), num),
            line.best().map_or(String::new(), |(m, l)| format!(
                ", best s={} → {}",
                crate::format::fmt_short(m),
                num(l)
            )),
        )
    };
    let room = usize::from(area.width.saturating_sub(2));
    let title = [
        format!("Next step of {} at {}", run.info.name, numbers(&fmt_num)),
        format!("Next step at {}", numbers(&fmt_num)),
        numbers(&fmt_num),
        numbers(&crate::format::fmt_short),
    ]
    .into_iter()
    .find(|t| t.chars().count() <= room)
    .unwrap_or_else(|| crate::format::cut(&numbers(&crate::format::fmt_short), room));
    // Losses far above the current one (a lr 16x too large) would flatten the rest.
    let [y0, hi] = chart::bounds(points.iter().map(|p| p.1).chain([now]));
    let y1 = if now.is_finite() {
        hi.min(now + 2.0 * (now - y0).max(now.abs() * 0.05 + 1e-12))
    } else {
        hi
    };
    let nonfinite: Vec<(f64, f64)> = line
        .s
        .iter()
        .zip(&line.loss)
        .filter(|(s, l)| **s > 0.0 && !l.is_finite())
        .map(|(s, _)| (s.log2(), y1))
        .collect();
    let now_line = [(-4.0, now), (4.0, now)];
    let unit = [(0.0, y0), (0.0, y1)];
    let datasets = vec![
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::DarkGray))
            .data(&now_line),
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::DarkGray))
            .data(&unit),
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(run.color))
            .data(&points),
        Dataset::default()
            .marker(Marker::Block)
            .graph_type(GraphType::Scatter)
            .style(Style::new().fg(Color::Red))
            .data(&nonfinite),
    ];
    let chart = Chart::new(datasets)
        .block(block.title(title))
        .x_axis(
            Axis::default()
                .bounds([-4.0, 4.0])
                .labels(["1/16", "1/4", "1", "4", "16"].map(Line::from).to_vec()),
        )
        .y_axis(
            Axis::default()
                .bounds([y0, y1])
                .labels(super::chart::fitted(
                    &[y0, y1],
                    usize::from(area.width.saturating_sub(2)) / 3,
                )),
        );
    f.render_widget(chart, area);
}
