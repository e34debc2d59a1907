//! Pictures to share: a run's loss and gradient-norm curves and, for a loss with a landscape,
//! the landscape with every run's path, written as SVG or PNG with plotters. Takes plain data
//! ([`PlotData`]), so the CLI and the TUI draw the same picture.

use std::collections::HashSet;
use std::error::Error;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plotters_color;
use crate::format::fmt_short;
use crate::landscape::{BANDS, ColorScale, Grid, GridSpec, NONFINITE_RGB, clip};

/// Everything one picture shows.
#[derive(Debug, Clone)]
pub struct PlotData {
    /// The loss's name (the picture's title).
    pub title: String,
    pub runs: Vec<PlotRun>,
    pub landscape: Option<PlotLandscape>,
}

/// One run's curves and path.
#[derive(Debug, Clone)]
pub struct PlotRun {
    pub name: String,
    /// Colour of its lines.
    pub rgb: [u8; 3],
    /// `(step, loss)`; non-finite losses are drawn as markers.
    pub loss: Vec<(u64, f64)>,
    /// `(step, global gradient norm)`; non-finite norms are drawn as markers.
    pub grad_norm: Vec<(u64, f64)>,
    /// Its path in the landscape's plane coordinates (empty without a landscape).
    pub path: Vec<[f64; 2]>,
}

/// A landscape to draw under the paths.
#[derive(Debug, Clone)]
pub struct PlotLandscape {
    pub grid: Grid,
    pub scale: ColorScale,
    /// Axis names.
    pub labels: [String; 2],
    /// The file's known optimum in plane coordinates (its `optimum` key), marked apart from the
    /// grid's minimum.
    pub optimum: Option<[f64; 2]>,
}

/// Why a picture could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("`{0}`: the picture's name must end in .svg or .png")]
    Format(String),
    #[error("cannot draw `{path}`: {why}")]
    Draw { path: String, why: String },
}

/// Writes `data` to `path`, as SVG or PNG by its extension.
pub fn save(data: &PlotData, path: &Path) -> Result<(), PlotError> {
    let name = path.display().to_string();
    let size = if data.landscape.is_some() {
        (1200, 640)
    } else {
        (900, 640)
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let drawn = match ext.as_deref() {
        Some("svg") => register_font().and_then(|()| draw(SVGBackend::new(path, size), data)),
        Some("png") => register_font().and_then(|()| draw(BitMapBackend::new(path, size), data)),
        _ => return Err(PlotError::Format(name)),
    };
    drawn.map_err(|why| PlotError::Draw {
        path: name,
        why: why.to_string(),
    })
}

/// Plotters' errors are generic over the backend; boxed, they reach [`PlotError::Draw`] as text.
type DrawResult = Result<(), Box<dyn Error>>;

/// The family every text style names; plotters' ab_glyph text looks fonts up by it.
const FONT: &str = "sans-serif";

/// Most points drawn per curve are twice this (a low and a high per bucket of steps).
const BUCKETS: u64 = 750;

/// Makes the bundled font the "sans-serif" family, once: with `ab_glyph` plotters reads no system
/// fonts, so text cannot be laid out (not even in SVG, which measures it) before this.
fn register_font() -> DrawResult {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf"),
        )
        .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err("the bundled font cannot be read".into())
    }
}

fn draw<DB: DrawingBackend>(backend: DB, data: &PlotData) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let body = root.titled(&data.title, (FONT, 24))?;
    match &data.landscape {
        Some(landscape) => {
            let (left, right) = body.split_horizontally(640);
            draw_landscape(&left, landscape, &data.runs)?;
            draw_curves(&right, &data.runs)?;
        }
        None => draw_curves(&body, &data.runs)?,
    }
    root.present()?;
    Ok(())
}

/// The loss panel above the gradient-norm panel.
fn draw_curves<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[PlotRun]) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let (top, bottom) = area.split_vertically(area.dim_in_pixel().1 / 2);
    curve_panel(&top, runs, "loss", |r| &r.loss, true)?;
    curve_panel(&bottom, runs, "gradient norm", |r| &r.grad_norm, false)
}

/// A curve ready to draw: its finite stretches, thinned, and the steps where it is not finite.
struct Thinned {
    lines: Vec<Vec<(u64, f64)>>,
    nonfinite: Vec<u64>,
}

/// Keeps the lowest and highest point (in step order) of each of [`BUCKETS`] equal step ranges of
/// `steps`, so a curve of any length draws as a few thousand points with its spikes intact; a
/// non-finite value breaks the line, and is kept as one marker step per bucket.
fn thin(points: &[(u64, f64)], steps: (u64, u64)) -> Thinned {
    let span = u128::from(steps.1 - steps.0) + 1;
    let bucket = |s: u64| u128::from(s.saturating_sub(steps.0)) * u128::from(BUCKETS) / span;
    let mut thinned = Thinned {
        lines: Vec::new(),
        nonfinite: Vec::new(),
    };
    let mut line = Vec::new();
    let chunks =
        points.chunk_by(|a, b| bucket(a.0) == bucket(b.0) && a.1.is_finite() == b.1.is_finite());
    for chunk in chunks {
        if chunk[0].1.is_finite() {
            let by_value = |a: &&(u64, f64), b: &&(u64, f64)| a.1.total_cmp(&b.1);
            let lo = chunk.iter().min_by(by_value).expect("chunks are not empty");
            let hi = chunk.iter().max_by(by_value).expect("chunks are not empty");
            let (first, second) = if lo.0 <= hi.0 { (lo, hi) } else { (hi, lo) };
            line.push(*first);
            if second.0 != first.0 {
                line.push(*second);
            }
        } else {
            let step = chunk[0].0;
            if thinned.nonfinite.last().map(|&s| bucket(s)) != Some(bucket(step)) {
                thinned.nonfinite.push(step);
            }
            if !line.is_empty() {
                thinned.lines.push(std::mem::take(&mut line));
            }
        }
    }
    if !line.is_empty() {
        thinned.lines.push(line);
    }
    thinned
}

/// One metric of every run over steps, with a log y axis when every value is positive. On the
/// loss panel the legend names the runs; either panel's legend lists the non-finite markers.
fn curve_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[PlotRun],
    metric: &str,
    values: impl Fn(&PlotRun) -> &[(u64, f64)],
    name_runs: bool,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let all = || runs.iter().flat_map(|r| values(r).iter());
    let first = all().map(|p| p.0).min().unwrap_or(0);
    let last = all().map(|p| p.0).max().unwrap_or(0);
    let steps = (first, last.max(first.saturating_add(1)));
    let curves: Vec<Thinned> = runs.iter().map(|r| thin(values(r), steps)).collect();
    let finite = || all().map(|p| p.1).filter(|v| v.is_finite());
    let (lo, hi) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let panel = Panel {
        metric,
        steps,
        runs,
        curves: &curves,
        name_runs,
    };
    if lo > 0.0 && lo.is_finite() {
        let pad = (hi / lo).powf(0.05).max(1.2);
        panel.draw(area, (lo / pad..hi * pad).log_scale(), hi * pad)
    } else if lo <= hi {
        // At least 5% of the values' size either side, so three significant digits tell the
        // ticks of a nearly flat curve apart.
        let pad = ((hi - lo) * 0.05).max(lo.abs().max(hi.abs()) * 0.05);
        let pad = if pad > 0.0 { pad } else { 1.0 };
        panel.draw(area, lo - pad..hi + pad, hi + pad)
    } else {
        panel.draw(area, 0.0..1.0, 1.0)
    }
}

/// A curve panel's content, drawn over whichever y axis suits its values.
struct Panel<'a> {
    metric: &'a str,
    steps: (u64, u64),
    runs: &'a [PlotRun],
    curves: &'a [Thinned],
    name_runs: bool,
}

impl Panel<'_> {
    /// `top` is the y value at the panel's top edge, where non-finite markers hang.
    fn draw<DB, Y>(&self, area: &DrawingArea<DB, Shift>, y: Y, top: f64) -> DrawResult
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(self.steps.0..self.steps.1, y)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(self.metric)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .y_label_formatter(&|v| fmt_short(*v))
            .light_line_style(WHITE)
            .draw()?;
        // Curves are 1 px: wider lines are filled polygons in the bitmap backend, which spike
        // where a dense curve reverses from one point to the next.
        for (run, curve) in self.runs.iter().zip(self.curves) {
            let colour = plotters_color(run.rgb);
            let lines = chart.draw_series(
                curve
                    .lines
                    .iter()
                    .map(|line| PathElement::new(line.clone(), colour)),
            )?;
            if self.name_runs {
                lines.label(run.name.as_str()).legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            }
        }
        let marker = plotters_color(NONFINITE_RGB).filled();
        let nonfinite: Vec<u64> = self
            .curves
            .iter()
            .flat_map(|c| c.nonfinite.iter().copied())
            .collect();
        let has_nonfinite = !nonfinite.is_empty();
        if has_nonfinite {
            chart
                .draw_series(nonfinite.into_iter().map(|step| {
                    EmptyElement::at((step, top)) + TriangleMarker::new((0, 7), 5, marker)
                }))?
                .label("NaN/Inf")
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 5, marker));
        }
        if (self.name_runs && !self.runs.is_empty()) || has_nonfinite {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .draw()?;
        }
        Ok(())
    }
}

/// A point of the landscape's plane, as plotters takes it.
type Point = (f64, f64);

/// Width kept right of the landscape for its colour bar and tick labels.
const BAR_AREA: i32 = 100;

/// The landscape's cells, every run's path on them, the grid minimum and a colour bar.
fn draw_landscape<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    landscape: &PlotLandscape,
    runs: &[PlotRun],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let grid = &landscape.grid;
    let spec = &grid.spec;
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .margin_right(BAR_AREA)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(spec.x.0..spec.x.1, spec.y.0..spec.y.1)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(landscape.labels[0].as_str())
        .y_desc(landscape.labels[1].as_str())
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .x_label_formatter(&|v| fmt_short(*v))
        .y_label_formatter(&|v| fmt_short(*v))
        .draw()?;
    chart.draw_series(cell_rows(landscape))?;
    let inside = |p: &[f64; 2]| {
        (spec.x.0..=spec.x.1).contains(&p[0]) && (spec.y.0..=spec.y.1).contains(&p[1])
    };
    for run in runs {
        let style = plotters_color(run.rgb).stroke_width(2);
        let pieces = wide_line_pieces(clip_path(&run.path, spec), |p| chart.backend_coord(p));
        chart.draw_series(
            pieces
                .into_iter()
                .map(|piece| PathElement::new(piece, style)),
        )?;
        let ends = [(run.path.first(), style), (run.path.last(), style.filled())];
        chart.draw_series(
            ends.into_iter()
                .filter_map(|(p, style)| p.filter(|p| inside(p)).map(|p| (p, style)))
                .map(|(p, style)| Circle::new((p[0], p[1]), 5, style)),
        )?;
    }
    if let Some((_, [x, y])) = grid.min() {
        let white = WHITE.stroke_width(2);
        chart.draw_series(std::iter::once(
            EmptyElement::at((x, y))
                + PathElement::new([(-7, 0), (7, 0)], white)
                + PathElement::new([(0, -7), (0, 7)], white),
        ))?;
    }
    if let Some([x, y]) = landscape.optimum.filter(|p| inside(p)) {
        chart.draw_series(std::iter::once(
            EmptyElement::at((x, y))
                + Rectangle::new([(-6, -6), (6, 6)], WHITE.stroke_width(2))
                + Text::new("optimum", (9, -16), (FONT, 13).into_font().color(&WHITE)),
        ))?;
    }
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let (bx, by) = area.get_base_pixel();
    let nonfinite = grid.values.iter().flatten().any(|v| !v.is_finite());
    colour_bar(
        area,
        &landscape.scale,
        (xs.end - bx + 16, ys.start - by, ys.end - by),
        nonfinite,
    )
}

/// The filled cells as rectangles, each run of equal colour within a row merged into one: the
/// scale's bands make long runs, which keeps SVGs small.
fn cell_rows(landscape: &PlotLandscape) -> Vec<Rectangle<Point>> {
    let spec = &landscape.grid.spec;
    let x = |i: usize| spec.x.0 + i as f64 / spec.nx as f64 * (spec.x.1 - spec.x.0);
    let y = |j: usize| spec.y.0 + j as f64 / spec.ny as f64 * (spec.y.1 - spec.y.0);
    let mut rects = Vec::new();
    // An empty grid (nx = 0) has no values, hence no rows.
    for (j, row) in landscape.grid.values.chunks(spec.nx.max(1)).enumerate() {
        let colours: Vec<Option<[u8; 3]>> = row
            .iter()
            .map(|v| v.map(|v| landscape.scale.rgb(v)))
            .collect();
        let mut i = 0;
        for same in colours.chunk_by(|a, b| a == b) {
            if let Some(colour) = same[0] {
                rects.push(Rectangle::new(
                    [(x(i), y(j)), (x(i + same.len()), y(j + 1))],
                    plotters_color(colour).filled(),
                ));
            }
            i += same.len();
        }
    }
    rects
}

/// The parts of `path` inside the grid's rectangle, as polylines: plotters does not clip to the
/// plotting area, so a run that leaves the view would otherwise draw across the picture.
fn clip_path(path: &[[f64; 2]], spec: &GridSpec) -> Vec<Vec<Point>> {
    let mut lines: Vec<Vec<Point>> = Vec::new();
    let mut open = false;
    for pair in path.windows(2) {
        let (p, q) = (pair[0], pair[1]);
        match clip(p, q, [spec.x.0, spec.y.0], [spec.x.1, spec.y.1]) {
            Some((t0, t1)) => {
                let at = |t: f64| (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]));
                let (a, b, whole) = (at(t0), at(t1), t1 == 1.0);
                match lines.last_mut() {
                    Some(line) if open => line.push(b),
                    _ => lines.push(vec![a, b]),
                }
                open = whole;
            }
            None => open = false,
        }
    }
    lines
}

/// `lines` in pieces that plotters draws well 2 px wide, at the pixels `pixel` maps points to.
/// The bitmap backend fills a wide line as one polygon whose corners spike at sharp turns, so a
/// piece ends at any turn sharper than 120°. Segments already drawn (at pixel resolution) are
/// left out, so a run cycling between a few points or creeping in place stays small in SVG.
fn wide_line_pieces(
    lines: Vec<Vec<Point>>,
    pixel: impl Fn(&Point) -> (i32, i32),
) -> Vec<Vec<Point>> {
    let mut drawn = HashSet::new();
    let mut pieces = Vec::new();
    let mut finish = |piece: &mut Vec<Point>| {
        if piece.len() >= 2 {
            pieces.push(std::mem::take(piece));
        }
        piece.clear();
    };
    for line in lines {
        let mut piece = Vec::new();
        let mut heading: Option<(f64, f64)> = None;
        let mut from: Option<(Point, (i32, i32))> = None;
        for p in line {
            let at = pixel(&p);
            let Some((start, start_at)) = from else {
                from = Some((p, at));
                continue;
            };
            if at == start_at {
                continue;
            }
            from = Some((p, at));
            let dir = (f64::from(at.0 - start_at.0), f64::from(at.1 - start_at.1));
            let sharp = heading.is_some_and(|h| {
                h.0 * dir.0 + h.1 * dir.1 < -0.5 * h.0.hypot(h.1) * dir.0.hypot(dir.1)
            });
            let new = drawn.insert((start_at.min(at), start_at.max(at)));
            if sharp || !new {
                finish(&mut piece);
                heading = None;
            }
            if new {
                if piece.is_empty() {
                    piece.push(start);
                }
                piece.push(p);
                heading = Some(dir);
            }
        }
        finish(&mut piece);
    }
    pieces
}

/// The scale's bands from bottom to top at pixel column `x` between rows `bottom` and `top`,
/// with value ticks, "log" above a log scale and a red "NaN/Inf" swatch below when `nonfinite`.
fn colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    scale: &ColorScale,
    (x, top, bottom): (i32, i32, i32),
    nonfinite: bool,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    const WIDTH: i32 = 14;
    let row = |t: f64| bottom - (t * f64::from(bottom - top)).round() as i32;
    for band in 0..BANDS {
        let (t0, t1) = (band as f64 / BANDS as f64, (band + 1) as f64 / BANDS as f64);
        let colour = scale.rgb(scale.value_at((t0 + t1) / 2.0));
        area.draw(&Rectangle::new(
            [(x, row(t1)), (x + WIDTH, row(t0))],
            plotters_color(colour).filled(),
        ))?;
    }
    area.draw(&Rectangle::new([(x, top), (x + WIDTH, bottom)], BLACK))?;
    let label = |anchor| TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, anchor));
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = row(t);
        area.draw(&PathElement::new(
            [(x + WIDTH, y), (x + WIDTH + 4, y)],
            BLACK,
        ))?;
        area.draw(&Text::new(
            fmt_short(scale.value_at(t)),
            (x + WIDTH + 6, y),
            label(VPos::Center),
        ))?;
    }
    if scale.log {
        area.draw(&Text::new("log", (x, top - 6), label(VPos::Bottom)))?;
    }
    if nonfinite {
        let y = bottom + 14;
        area.draw(&Rectangle::new(
            [(x, y), (x + WIDTH, y + 10)],
            plotters_color(NONFINITE_RGB).filled(),
        ))?;
        area.draw(&Text::new(
            "NaN/Inf",
            (x + WIDTH + 6, y + 5),
            label(VPos::Center),
        ))?;
    }
    Ok(())
}
