//! Rendering: pure functions of the [`App`]. The layout:
//!
//! ```text
//! ┌ Losses ────┐┌ Loss │ Grad norm │ LR, Δ/p │ Param norms │ Landscape ───────┐┌ Inspector ─┐
//! │ group/     ││                                                          ││ run, step  │
//! │  file  ok  ││        chart (all runs overlaid) or the landscape        ││ loss, lr   │
//! ├ Runs ──────┤│                                                          ││ per param  │
//! │ ■ base     ││                                                          ││            │
//! └────────────┘└──────────────────────────────────────────────────────────┘└────────────┘
//! ┌ Warnings ───────────────────────────────────────────────────────────────────────────────┐
//! └─────────────────────────────────────────────────────────────────────────────────────────┘
//!  status bar: step · steps/s · running/paused · keys
//! ```

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Chart, Clear, Dataset, GraphType, List, ListItem, ListState, Paragraph,
    Tabs, Wrap,
};

use super::app::{App, FileEntry, Focus, LAST_N, Popup, RunView, Session, Tab, duplicate_choices};
use super::chart::{self, Metric, Series};
use crate::format::fmt_num;
use crate::optim::spec::OptimizerKind;

/// Smallest terminal gradscope draws its panels in.
pub const MIN_SIZE: (u16, u16) = (40, 12);

/// Where each panel goes for a terminal of size `area`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Areas {
    pub losses: Rect,
    pub runs: Rect,
    pub tabs: Rect,
    pub chart: Rect,
    pub inspector: Option<Rect>,
    pub warnings: Option<Rect>,
    pub status: Rect,
}

/// The layout, shared by drawing and mouse hit-testing.
pub fn layout(area: Rect) -> Areas {
    let warnings_h = if area.height >= 24 { 7 } else { 0 };
    let [main, warnings, status] = Layout::vertical([
        Constraint::Min(6),
        Constraint::Length(warnings_h),
        Constraint::Length(1),
    ])
    .areas(area);
    let left_w = (area.width / 4).clamp(18, 34);
    let right_w = if area.width >= 110 { 34 } else { 0 };
    let [left, centre, right] = Layout::horizontal([
        Constraint::Length(left_w),
        Constraint::Min(20),
        Constraint::Length(right_w),
    ])
    .areas(main);
    let [losses, runs] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(left);
    let [tabs, chart] = Layout::vertical([Constraint::Length(1), Constraint::Min(3)]).areas(centre);
    Areas {
        losses,
        runs,
        tabs,
        chart,
        inspector: (right_w > 0).then_some(right),
        warnings: (warnings_h > 0).then_some(warnings),
        status,
    }
}

/// Draws the whole screen.
pub fn render(f: &mut Frame, app: &App) {
    let area = f.area();
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        let text = format!(
            "terminal too small: {}x{} (gradscope needs {}x{})",
            area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
        );
        f.render_widget(
            Paragraph::new(text)
                .wrap(Wrap { trim: true })
                .alignment(Alignment::Center),
            area,
        );
        return;
    }
    let a = layout(area);
    render_losses(f, app, a.losses);
    render_runs(f, app, a.runs);
    render_tabs(f, app, a.tabs);
    render_centre(f, app, a.chart);
    if let Some(r) = a.inspector {
        render_inspector(f, app, r);
    }
    if let Some(r) = a.warnings {
        render_warnings(f, app, r);
    }
    render_status(f, app, a.status);
    if let Some(p) = &app.popup {
        render_popup(f, app, p, area);
    }
    if app.show_help {
        render_help(f, area);
    }
}

fn panel(title: &str, focused: bool) -> Block<'_> {
    let style = if focused {
        Style::new().fg(Color::Cyan)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    Block::new()
        .borders(Borders::ALL)
        .border_style(style)
        .title(title)
}

/// The files list as rows: group headers, then files. Returns the file index of each row.
fn file_rows(app: &App) -> Vec<(Option<usize>, Line<'_>)> {
    let mut rows = Vec::new();
    for (group, files) in app.groups() {
        if !group.is_empty() {
            rows.push((None, Line::from(format!("{group}/")).bold()));
        }
        for i in files {
            let f = &app.files[i];
            let badge = if f.broken() {
                Span::styled("✗ ", Style::new().fg(Color::Red))
            } else {
                Span::styled("✓ ", Style::new().fg(Color::Green))
            };
            let indent = if group.is_empty() { "" } else { "  " };
            rows.push((
                Some(i),
                Line::from(vec![Span::raw(indent), badge, Span::raw(f.name.clone())]),
            ));
        }
    }
    rows
}

/// First visible row of a list drawn with a fresh `ListState`: ratatui scrolls just far enough
/// to show the selected row at the bottom.
pub fn list_offset(selected: usize, height: usize) -> usize {
    (selected + 1).saturating_sub(height.max(1))
}

/// The file shown on row `row` of the losses panel (0 = first row inside the border).
pub fn file_at_row(app: &App, row: usize, panel_height: u16) -> Option<usize> {
    let rows = file_rows(app);
    let selected = rows
        .iter()
        .position(|(i, _)| *i == Some(app.selected_file))
        .unwrap_or(0);
    let offset = list_offset(selected, panel_height.saturating_sub(2) as usize);
    rows.get(offset + row).and_then(|(i, _)| *i)
}

fn render_losses(f: &mut Frame, app: &App, area: Rect) {
    let rows = file_rows(app);
    let selected = rows.iter().position(|(i, _)| *i == Some(app.selected_file));
    let items: Vec<ListItem> = rows.into_iter().map(|(_, l)| ListItem::new(l)).collect();
    let list = List::new(items)
        .block(panel("Losses", app.focus == Focus::Losses))
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default().with_selected(selected);
    f.render_stateful_widget(list, area, &mut state);
}

fn render_runs(f: &mut Frame, app: &App, area: Rect) {
    let block = panel("Runs", app.focus == Focus::Runs);
    let Some(s) = app.session() else {
        f.render_widget(Paragraph::new("no runs").block(block), area);
        return;
    };
    let items: Vec<ListItem> = s
        .runs
        .iter()
        .map(|r| {
            ListItem::new(Line::from(vec![
                Span::styled("■ ", Style::new().fg(r.color)),
                Span::styled(
                    format!("{:<10} ", r.status(s.playing)),
                    status_style(r, s.playing),
                ),
                Span::raw(r.info.name.clone()),
            ]))
        })
        .collect();
    let list = List::new(items)
        .block(block)
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = ListState::default().with_selected(Some(s.selected));
    f.render_stateful_widget(list, area, &mut state);
}

fn status_style(r: &RunView, playing: bool) -> Style {
    match r.status(playing).as_str() {
        s if s.starts_with("halted") => Style::new().fg(Color::Red),
        "running" => Style::new().fg(Color::Green),
        _ => Style::new().fg(Color::DarkGray),
    }
}

/// Column where each tab title starts, for mouse clicks.
fn tab_spans() -> Vec<(u16, u16)> {
    let mut x = 1;
    Tab::ALL
        .iter()
        .map(|t| {
            let w = t.title().chars().count() as u16;
            let span = (x, x + w);
            x += w + 3;
            span
        })
        .collect()
}

/// The tab under column `x` of the tab bar.
pub fn tab_at_column(x: u16) -> Option<Tab> {
    tab_spans()
        .iter()
        .position(|&(a, b)| (a..b).contains(&x))
        .map(|i| Tab::ALL[i])
}

fn render_tabs(f: &mut Frame, app: &App, area: Rect) {
    let selected = Tab::ALL.iter().position(|t| *t == app.tab);
    let tabs = Tabs::new(Tab::ALL.iter().map(|t| t.title()))
        .select(selected)
        .highlight_style(Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD));
    f.render_widget(tabs, area);
}

fn render_centre(f: &mut Frame, app: &App, area: Rect) {
    let Some(file) = app.file() else {
        f.render_widget(
            Paragraph::new("no loss files here").block(panel("Chart", false)),
            area,
        );
        return;
    };
    if file.broken() {
        let diag_area = if file.session.is_some() {
            let [d, rest] =
                Layout::vertical([Constraint::Percentage(50), Constraint::Min(3)]).areas(area);
            render_tab(f, app, file, rest);
            d
        } else {
            area
        };
        render_diagnostics(f, file, diag_area);
        return;
    }
    render_tab(f, app, file, area);
}

fn render_tab(f: &mut Frame, app: &App, file: &FileEntry, area: Rect) {
    match app.tab {
        Tab::Landscape => render_landscape(f, app, file, area),
        _ => render_chart(f, app, file, area),
    }
}

/// The Landscape tab's inside: the map and, when there is room, the learning-rate slice.
pub fn landscape_layout(chart: Rect) -> (Rect, Option<Rect>) {
    let inner = Block::bordered().inner(chart);
    if inner.height >= 22 {
        let [scene, slice] =
            Layout::vertical([Constraint::Min(10), Constraint::Length(9)]).areas(inner);
        (scene, Some(slice))
    } else {
        (inner, None)
    }
}

fn render_landscape(f: &mut Frame, app: &App, file: &FileEntry, area: Rect) {
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
        (Some(p), Some(r)) => format!(
            "Landscape: {} · loss of {} ({})",
            p.kind.describe(),
            r.info.name,
            r.info.dtype.name()
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
            crate::format::fmt_duration(t)
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
    slice: Option<&super::landscape_view::LrSlice>,
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
    let title = format!(
        "Next step of {} at lr × s: now {}, s=1 → {}{}",
        run.info.name,
        fmt_num(now),
        line.at(1.0).map_or("-".into(), fmt_num),
        line.best().map_or(String::new(), |(m, l)| format!(
            ", best s={} → {}",
            crate::format::fmt_short(m),
            fmt_num(l)
        )),
    );
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
            Axis::default().bounds([y0, y1]).labels(
                [y0, y1]
                    .map(|v| Line::from(crate::format::fmt_short(v)))
                    .to_vec(),
            ),
        );
    f.render_widget(chart, area);
}

fn render_diagnostics(f: &mut Frame, file: &FileEntry, area: Rect) {
    let mut lines = Vec::new();
    for d in &file.diagnostics {
        let color = if d.is_error() {
            Color::Red
        } else {
            Color::Yellow
        };
        for (k, l) in d.render(false).lines().enumerate() {
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

/// The metrics a tab plots for one run, with a label suffix each.
fn metrics(app: &App, run: &RunView) -> Vec<(Metric, String)> {
    let params = if run.history.is_empty() {
        0
    } else {
        run.params.len()
    };
    let names: Vec<String> = run.params.iter().map(|p| p.name.clone()).collect();
    let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| format!("p{i}"));
    match app.tab {
        Tab::Loss | Tab::Landscape => vec![(Metric::Loss, String::new())],
        Tab::GradNorm if app.per_param => (0..params)
            .map(|i| (Metric::ParamGradNorm(i), format!(" ∇{}", name(i))))
            .collect(),
        Tab::GradNorm => vec![(Metric::GradNorm, String::new())],
        Tab::LrRatio => vec![
            (Metric::Lr, " lr".into()),
            (Metric::UpdateRatio, " Δ/p".into()),
        ],
        Tab::Params => (0..params)
            .map(|i| (Metric::ParamNorm(i), format!(" |{}|", name(i))))
            .collect(),
    }
}

fn render_chart(f: &mut Frame, app: &App, file: &FileEntry, area: Rect) {
    let log = app.log_y || app.tab == Tab::LrRatio;
    let title = if log {
        format!("{} (log y)", app.tab.title())
    } else {
        app.tab.title().to_string()
    };
    let block = panel(&title, app.focus == Focus::Charts);
    let Some(s) = file.session.as_ref() else {
        f.render_widget(Paragraph::new("no runs").block(block), area);
        return;
    };
    let longest = s.runs.iter().map(|r| r.history.len()).max().unwrap_or(0);
    let lo = if app.last_n {
        longest.saturating_sub(LAST_N)
    } else {
        0
    };
    let columns = area.width.saturating_sub(12) as usize;
    struct Drawn {
        name: String,
        color: Color,
        /// Whether a non-finite value is a NaN/Inf event (not for the update ratio, which is
        /// undefined while every param is zero).
        events: bool,
        raw: Series,
        smooth: Option<Series>,
    }
    let mut drawn = Vec::new();
    for r in &s.runs {
        let hi = r.history.len();
        let range = lo.min(hi)..hi;
        for (m, suffix) in metrics(app, r) {
            // The whole run of a long history comes from the summaries; short views are scanned.
            let stream = r
                .streams
                .iter()
                .find(|s| s.metric == m)
                .filter(|_| range.start == 0);
            let series = |smooth: bool| {
                stream
                    .and_then(|s| s.series(columns, log, smooth))
                    .unwrap_or_else(|| {
                        chart::series(&r.history, m, range.clone(), columns, log, smooth)
                    })
            };
            let raw = series(false);
            let smooth = app.smoothing.then(|| series(true));
            drawn.push(Drawn {
                name: format!("{}{suffix}", r.info.name),
                color: r.color,
                events: !matches!(m, Metric::UpdateRatio | Metric::Lr),
                raw,
                smooth,
            });
        }
    }
    let ys = drawn.iter().flat_map(|d| {
        d.raw
            .points
            .iter()
            .chain(d.smooth.iter().flat_map(|s| s.points.iter()))
            .map(|p| p.1)
    });
    let [y0, y1] = chart::bounds(ys);
    let x_hi = (longest.max(lo + 1)) as f64;
    let [x0, x1] = [lo as f64, x_hi.max(lo as f64 + 1.0)];
    let nan_points: Vec<(f64, f64)> = drawn
        .iter()
        .filter(|d| d.events)
        .flat_map(|d| d.raw.nonfinite.iter().map(|&x| (x, y1)))
        .collect();
    let lr_marks: Vec<Vec<(f64, f64)>> = s
        .runs
        .iter()
        .flat_map(|r| {
            r.lr_changes
                .iter()
                .map(|&k| vec![(k as f64, y0), (k as f64, y1)])
        })
        .collect();
    let mut datasets = Vec::new();
    for d in &drawn {
        let raw_style = if d.smooth.is_some() {
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new().fg(d.color)
        };
        let mut raw = Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(raw_style)
            .data(&d.raw.points);
        if d.smooth.is_none() {
            raw = raw.name(d.name.clone());
        }
        datasets.push(raw);
        if let Some(sm) = &d.smooth {
            datasets.push(
                Dataset::default()
                    .name(d.name.clone())
                    .marker(Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(Style::new().fg(d.color))
                    .data(&sm.points),
            );
        }
    }
    for m in &lr_marks {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(Color::Yellow))
                .data(m),
        );
    }
    if !nan_points.is_empty() {
        datasets.push(
            Dataset::default()
                .name("NaN/Inf")
                .marker(Marker::Block)
                .graph_type(GraphType::Scatter)
                .style(Style::new().fg(Color::Red))
                .data(&nan_points),
        );
    }
    let ylabel = |v: f64| {
        if log {
            fmt_num(10f64.powf(v))
        } else {
            fmt_num(v)
        }
    };
    let y_labels = vec![ylabel(y0), ylabel((y0 + y1) / 2.0), ylabel(y1)];
    let x_labels = if x1 - x0 >= 4.0 {
        vec![
            format!("{x0:.0}"),
            format!("{:.0}", ((x0 + x1) / 2.0).round()),
            format!("{x1:.0}"),
        ]
    } else {
        vec![format!("{x0:.0}"), format!("{x1:.0}")]
    };
    let chart = Chart::new(datasets)
        .block(block)
        .x_axis(
            Axis::default()
                .title("step")
                .bounds([x0, x1])
                .labels(x_labels)
                .style(Style::new().fg(Color::DarkGray)),
        )
        .y_axis(
            Axis::default()
                .bounds([y0, y1])
                .labels(y_labels)
                .style(Style::new().fg(Color::DarkGray)),
        )
        .hidden_legend_constraints((Constraint::Percentage(60), Constraint::Percentage(60)));
    f.render_widget(chart, area);
}

fn render_inspector(f: &mut Frame, app: &App, area: Rect) {
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
        // 0/0 while every param is zero: undefined, not a NaN event.
        let ratio = if ratio.is_nan() && !c.loss.is_nan() {
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

fn render_warnings(f: &mut Frame, app: &App, area: Rect) {
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

fn steps_of(s: &Session) -> usize {
    s.runs.iter().map(RunView::steps).max().unwrap_or(0)
}

fn render_status(f: &mut Frame, app: &App, area: Rect) {
    let mut spans = Vec::new();
    if let Some(s) = app.session() {
        spans.push(Span::raw(format!(" step {} · ", steps_of(s))));
        if s.playing {
            spans.push(Span::raw(format!("{:.0} steps/s · ", s.steps_per_s())));
            spans.push(Span::styled("running", Style::new().fg(Color::Green)));
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
    match &app.message {
        Some(m) => spans.push(Span::styled(m.clone(), Style::new().fg(Color::Yellow))),
        None => spans.push(Span::styled(
            "space run/pause  n step  N ×100  b back  r reset  t tab  l log  s smooth  o add  ? help  q quit",
            Style::new().fg(Color::DarkGray),
        )),
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// Every key, for the help overlay.
pub const KEYS: &[(&str, &str)] = &[
    ("space", "run / pause all runs of the loss"),
    ("n  →", "one step (a count first: 25n)"),
    ("N", "100 steps"),
    ("b  ←", "rewind one step (B: 100)"),
    ("r", "reset to the initial params"),
    ("+  -", "double / halve the selected run's lr"),
    ("o", "add a run with another optimizer"),
    ("d", "duplicate the run with another variant or dtype"),
    ("x", "remove the selected run"),
    (
        "g",
        "check the selected run's gradients (finite differences)",
    ),
    (
        "h",
        "top Hessian eigenvalue λ and the largest stable lr 2/λ",
    ),
    ("t  T", "next / previous chart tab"),
    ("l", "log y axis"),
    ("s", "EMA smoothing (debiased, as TensorBoard)"),
    ("a", "x range: whole run / last 500 steps"),
    ("v", "per-parameter lines (gradient norm tab)"),
    ("tab  shift-tab", "move focus"),
    ("j k  ↓ ↑", "move in lists"),
    ("e", "edit the loss file in $EDITOR, then reload"),
    ("w", "write all runs to CSV and JSONL"),
    ("p", "save curves (and landscape) as SVG and PNG"),
    ("z  Z", "landscape: zoom in / out"),
    ("H J K L", "landscape: pan left / down / up / right"),
    ("f", "landscape: fit the view to the paths again"),
    ("c  m", "landscape: new random plane / random ⇄ update"),
    ("l", "landscape: log / linear colour scale"),
    ("?", "this help"),
    ("q  ctrl-c", "quit"),
];

fn render_help(f: &mut Frame, area: Rect) {
    let width = KEYS
        .iter()
        .map(|(_, w)| w.chars().count())
        .max()
        .unwrap_or(0)
        + 16
        + 2
        + 2;
    let r = centered(area, width as u16, KEYS.len() as u16 + 2);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:>16}  "), Style::new().fg(Color::Cyan)),
                Span::raw(*what),
            ])
        })
        .collect();
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title("Keys (any key closes)")),
        r,
    );
}

fn render_popup(f: &mut Frame, app: &App, p: &Popup, area: Rect) {
    let (title, lines, selected): (&str, Vec<Line>, Option<usize>) = match p {
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
