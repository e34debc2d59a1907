//! Pictures to share: a run's loss and gradient-norm curves and, for a loss with a landscape,
//! the landscape with every run's path, written as SVG or PNG with plotters. Takes plain data
//! ([`PlotData`]), so the CLI and the TUI draw the same picture.

use std::collections::HashSet;
use std::error::Error;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::{CoordTranslate, Shift};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plotters_color;
use crate::format::{fmt_log_tick, fmt_tick};
use crate::landscape::{
    ColorScale, Grid, GridSpec, NONFINITE_RGB, clip, contours, nice_step, ramp,
};

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
    /// Its path in the landscape's plane coordinates, by step (empty without a landscape).
    pub path: Vec<(u64, [f64; 2])>,
}

/// A landscape to draw under the paths.
#[derive(Debug, Clone)]
pub struct PlotLandscape {
    pub grid: Grid,
    pub scale: ColorScale,
    /// Axis names.
    pub labels: [String; 2],
    /// Where the lowest loss of the map is, refined beyond its samples
    /// ([`crate::landscape::surface::Surface::refine_min`], or [`Grid::refined_min`]).
    pub minimum: Option<[f64; 2]>,
    /// The file's known optimum in plane coordinates (its `optimum` key), marked apart from the
    /// grid's minimum.
    pub optimum: Option<[f64; 2]>,
    /// Whether each cell is its own point (a sweep's): drawn flat in its colour, without
    /// contours, where a landscape's samples of one surface are interpolated.
    pub cells: bool,
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
    write(data, path)
}

/// A picture that draws on any plotters backend at its own size.
pub(super) trait Picture {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// The picture formats, told by a path's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PictureFormat {
    Svg,
    Png,
}

/// The format `path` asks for: a command checks it before the work the picture shows.
pub fn picture_format(path: &Path) -> Result<PictureFormat, PlotError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => Ok(PictureFormat::Svg),
        Some("png") => Ok(PictureFormat::Png),
        _ => Err(PlotError::Format(path.display().to_string())),
    }
}

/// Writes `picture` to `path` on a white ground, as SVG or PNG by its extension.
pub(super) fn write(picture: &impl Picture, path: &Path) -> Result<(), PlotError> {
    let name = path.display().to_string();
    let size = picture.size();
    let drawn = match picture_format(path)? {
        PictureFormat::Svg => {
            register_font().and_then(|()| present(SVGBackend::new(path, size), picture))
        }
        PictureFormat::Png => {
            register_font().and_then(|()| present(BitMapBackend::new(path, size), picture))
        }
    };
    drawn.map_err(|why| PlotError::Draw {
        path: name,
        why: why.to_string(),
    })
}

fn present<DB: DrawingBackend>(backend: DB, picture: &impl Picture) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    picture.draw(&root)?;
    root.present()?;
    Ok(())
}

/// Plotters' errors are generic over the backend; boxed, they reach [`PlotError::Draw`] as text.
pub(super) type DrawResult = Result<(), Box<dyn Error>>;

/// The family every text style names; plotters' ab_glyph text looks fonts up by it.
pub(super) const FONT: &str = "sans-serif";

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

impl Picture for PlotData {
    fn size(&self) -> (u32, u32) {
        if self.landscape.is_some() {
            (1200, 640)
        } else {
            (900, 640)
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let body = root.titled(&self.title, (FONT, 24))?;
        match &self.landscape {
            Some(landscape) => {
                let (left, right) = body.split_horizontally(640);
                let ticks = plane_ticks(&landscape.grid.spec);
                let ticks: [&dyn Fn(&f64) -> String; 2] = [&ticks[0], &ticks[1]];
                draw_landscape(&left, landscape, &self.runs, ticks, "NaN/Inf")?;
                draw_curves(&right, &self.runs)?;
            }
            None => draw_curves(&body, &self.runs)?,
        }
        Ok(())
    }
}

/// Tick labels of a plane's two axes, legible next to 0 ([`fmt_tick`]).
fn plane_ticks(spec: &GridSpec) -> [impl Fn(&f64) -> String; 2] {
    [spec.x.1 - spec.x.0, spec.y.1 - spec.y.0].map(|span| move |v: &f64| fmt_tick(*v, span))
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

/// One metric of every run over steps, with a log y axis when every value is positive and
/// they span a decade or more (within one, plotters' log axis had no tick to label, or one
/// twice), or when none is negative and the positive ones span two decades or more (a loss
/// that reaches exactly 0): then zeros are drawn on the bottom edge and the axis says so. On the loss panel
/// the legend names the runs; either panel's legend lists the non-finite markers.
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
    let finite = || all().map(|p| p.1).filter(|v| v.is_finite());
    let (lo, hi) = finite().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let lowest_positive = finite().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let log = lowest_positive.is_finite()
        && ((lo > 0.0 && hi >= 10.0 * lo) || (lo == 0.0 && hi >= 100.0 * lowest_positive));
    let pad = (hi / lowest_positive).powf(0.05).max(1.2);
    let bottom = lowest_positive / pad;
    let curves: Vec<Thinned> = runs
        .iter()
        .map(|r| {
            let on_axis: Vec<(u64, f64)> = values(r)
                .iter()
                .map(|&(k, v)| (k, if log && v == 0.0 { bottom } else { v }))
                .collect();
            thin(&on_axis, steps)
        })
        .collect();
    let zeros = format!("{metric} (0 on the bottom edge)");
    let panel = Panel {
        metric: if log && lo == 0.0 { &zeros } else { metric },
        steps,
        runs,
        curves: &curves,
        name_runs,
    };
    if log {
        panel.draw(area, (bottom..hi * pad).log_scale(), hi * pad, &|v| {
            fmt_log_tick(*v)
        })
    } else if lo <= hi {
        // At least 5% of the values' size either side, so three significant digits tell the
        // ticks of a nearly flat curve apart.
        let pad = ((hi - lo) * 0.05).max(lo.abs().max(hi.abs()) * 0.05);
        let pad = if pad > 0.0 { pad } else { 1.0 };
        let span = hi - lo + 2.0 * pad;
        panel.draw(area, lo - pad..hi + pad, hi + pad, &|v| fmt_tick(*v, span))
    } else {
        panel.draw(area, 0.0..1.0, 1.0, &|v| fmt_tick(*v, 1.0))
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
    /// `top` is the y value at the panel's top edge, where non-finite markers hang; `label`
    /// writes the y axis' ticks.
    fn draw<DB, Y>(
        &self,
        area: &DrawingArea<DB, Shift>,
        y: Y,
        top: f64,
        label: &dyn Fn(&f64) -> String,
    ) -> DrawResult
    where
        DB: DrawingBackend,
        DB::ErrorType: 'static,
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        // Room on the right for half the last step's label, centred on the edge (`10000` ran
        // past it with the 10 px of the other sides).
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .margin_right(30)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(self.steps.0..self.steps.1, y)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(self.metric)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .y_label_formatter(label)
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
pub(super) type Point = (f64, f64);

/// Width kept right of the landscape for its colour bar and tick labels.
const BAR_AREA: i32 = 100;

/// The landscape shaded smoothly at pixel resolution (the grid interpolated between cells),
/// labelled contour lines, every run's path (told apart by line style and markers as well as
/// colour, named at its end), the refined grid minimum, the file's optimum and a colour bar
/// whose swatch for non-finite cells says `nonfinite`. `ticks` writes the axes' tick labels.
/// Returns where the plane landed, for what a caller marks on it.
pub(super) fn draw_landscape<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    landscape: &PlotLandscape,
    runs: &[PlotRun],
    ticks: [&dyn Fn(&f64) -> String; 2],
    nonfinite: &str,
) -> Result<Placed, Box<dyn Error>>
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
        .x_label_formatter(ticks[0])
        .y_label_formatter(ticks[1])
        .draw()?;
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let size = (
        (xs.end - xs.start).max(1) as u32,
        (ys.end - ys.start).max(1) as u32,
    );
    if let Some(shading) =
        BitMapElement::with_owned_buffer((spec.x.0, spec.y.1), size, shade(landscape, size))
    {
        chart.draw_series(std::iter::once(shading))?;
    }
    let (bx, by) = area.get_base_pixel();
    let coords = chart.as_coord_spec().clone();
    let to_area = |p: &Point| {
        let (x, y) = coords.translate(p);
        (x - bx, y - by)
    };
    if !landscape.cells {
        draw_contours(area, landscape, &to_area)?;
    }
    let inside = |p: &[f64; 2]| {
        (spec.x.0..=spec.x.1).contains(&p[0]) && (spec.y.0..=spec.y.1).contains(&p[1])
    };
    let mut labels = Vec::new();
    for (r, run) in runs.iter().enumerate() {
        let colour = plotters_color(run.rgb);
        let style = colour.stroke_width(2);
        let points: Vec<[f64; 2]> = run.path.iter().map(|(_, p)| *p).collect();
        let pieces = wide_line_pieces(clip_path(&points, spec), |p| chart.backend_coord(p));
        match LINE_DASHES[r % LINE_DASHES.len()] {
            // Solid paths are wider, so one under a dashed or dotted path still shows.
            None => {
                let wide = colour.stroke_width(4);
                chart.draw_series(
                    pieces
                        .into_iter()
                        .map(|piece| PathElement::new(piece, wide)),
                )?;
            }
            Some((dash, gap)) => {
                chart.draw_series(
                    pieces
                        .into_iter()
                        .map(|piece| DashedPathElement::new(piece, dash, gap, style)),
                )?;
            }
        }
        let every = marker_every(&run.path);
        let marked: Vec<Point> = run
            .path
            .iter()
            .filter(|(k, p)| *k > 0 && k % every == 0 && inside(p))
            .map(|(_, p)| (p[0], p[1]))
            .collect();
        markers(&mut chart, r, &marked, 4, colour.filled())?;
        if let Some((_, p)) = run.path.first().filter(|(_, p)| inside(p)) {
            chart.draw_series(std::iter::once(Circle::new((p[0], p[1]), 7, style)))?;
        }
        if let Some((_, p)) = run.path.last().filter(|(_, p)| inside(p)) {
            markers(&mut chart, r, &[(p[0], p[1])], 8, BLACK.filled())?;
            markers(&mut chart, r, &[(p[0], p[1])], 6, colour.filled())?;
            labels.push((to_area(&(p[0], p[1])), run.name.as_str()));
        }
    }
    if let Some([x, y]) = landscape.minimum.filter(|p| inside(p)) {
        // A white cross with a dark outline, visible on any colour.
        let (dark, white) = (BLACK.stroke_width(4), WHITE.stroke_width(2));
        chart.draw_series(std::iter::once(
            EmptyElement::at((x, y))
                + PathElement::new([(-8, 0), (8, 0)], dark)
                + PathElement::new([(0, -8), (0, 8)], dark)
                + PathElement::new([(-7, 0), (7, 0)], white)
                + PathElement::new([(0, -7), (0, 7)], white),
        ))?;
    }
    if let Some([x, y]) = landscape.optimum.filter(|p| inside(p)) {
        chart.draw_series(std::iter::once(
            EmptyElement::at((x, y))
                + Rectangle::new([(-10, -10), (10, 10)], WHITE.stroke_width(2)),
        ))?;
        labels.push((to_area(&(x, y)), "optimum"));
    }
    let plot = (xs.start - bx, xs.end - bx, ys.start - by, ys.end - by);
    name_points(area, &labels, plot)?;
    let any_nonfinite = grid.values.iter().flatten().any(|v| !v.is_finite());
    colour_bar(
        area,
        &landscape.scale,
        (xs.end - bx + 16, ys.start - by, ys.end - by),
        any_nonfinite.then_some(nonfinite),
    )?;
    Ok(Placed {
        coords,
        base: (bx, by),
        plot,
    })
}

/// Where a plane was drawn in its area: its coordinates, the area's origin in the backend's
/// pixels, and the plotting rectangle's (left, right, top, bottom) in the area's pixels.
pub(super) struct Placed {
    coords: Cartesian2d<RangedCoordf64, RangedCoordf64>,
    base: (i32, i32),
    pub plot: (i32, i32, i32, i32),
}

impl Placed {
    /// The area pixel of plane point `p`.
    pub fn to_area(&self, p: &Point) -> (i32, i32) {
        let (x, y) = self.coords.translate(p);
        (x - self.base.0, y - self.base.1)
    }
}

/// Dash and gap lengths (pixels) of the runs' paths in turn: solid, dashed, dotted.
const LINE_DASHES: [Option<(u32, u32)>; 3] = [None, Some((10, 6)), Some((2, 5))];

/// The chart the landscape is drawn on.
type PlaneChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Run `run`'s marker shape (circle, triangle, square, by run index) of half-size `size` at
/// each of `points`.
fn markers<DB: DrawingBackend>(
    chart: &mut PlaneChart<DB>,
    run: usize,
    points: &[Point],
    size: i32,
    style: ShapeStyle,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let at = points.iter().copied();
    match run % 3 {
        0 => chart.draw_series(at.map(|p| Circle::new(p, size, style)))?,
        1 => chart.draw_series(at.map(|p| TriangleMarker::new(p, size + 2, style)))?,
        _ => chart.draw_series(at.map(|p| {
            EmptyElement::at(p) + Rectangle::new([(-size, -size), (size, size)], style)
        }))?,
    };
    Ok(())
}

/// Steps between a path's markers: a round number (1, 2 or 5 times a power of ten) giving
/// about ten markers over the path.
fn marker_every(path: &[(u64, [f64; 2])]) -> u64 {
    let last = path.last().map_or(0, |(k, _)| *k);
    (nice_step(last as f64 / 10.0).max(1.0)) as u64
}

/// Writes each name beside its point (area pixels), on a pale box so it reads on any colour;
/// a name that would cover one already written moves down, and flips to the point's left at the
/// plot's right edge. `plot` is the plotting area's (left, right, top, bottom).
pub(super) fn name_points<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    labels: &[((i32, i32), &str)],
    plot: (i32, i32, i32, i32),
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let style = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Top));
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    for &((x, y), name) in labels {
        let (w, h) = area.estimate_text_size(name, &style)?;
        let (w, h) = (w as i32 + 6, h as i32 + 4);
        let left = if x + 12 + w > plot.1 {
            x - 12 - w
        } else {
            x + 12
        };
        let mut top = (y - h - 6).max(plot.2);
        let overlaps = |top: i32, p: &(i32, i32, i32, i32)| {
            left < p.2 && p.0 < left + w && top < p.3 && p.1 < top + h
        };
        while placed.iter().any(|p| overlaps(top, p)) && top + h < plot.3 {
            top += 4;
        }
        area.draw(&Rectangle::new(
            [(left, top), (left + w, top + h)],
            WHITE.mix(0.8).filled(),
        ))?;
        area.draw(&Text::new(
            name.to_string(),
            (left + 3, top + 2),
            style.clone(),
        ))?;
        placed.push((left, top, left + w, top + h));
    }
    Ok(())
}

/// The landscape at `size` pixels, RGB rows from the top: each pixel's value interpolated
/// from the grid ([`Grid::interpolate`]) on the scale's continuous ramp; white where nothing
/// is computed.
fn shade(landscape: &PlotLandscape, (w, h): (u32, u32)) -> Vec<u8> {
    let spec = &landscape.grid.spec;
    let mut pixels = Vec::with_capacity(w as usize * h as usize * 3);
    for py in 0..h {
        let y = spec.y.1 - (f64::from(py) + 0.5) / f64::from(h) * (spec.y.1 - spec.y.0);
        for px in 0..w {
            let x = spec.x.0 + (f64::from(px) + 0.5) / f64::from(w) * (spec.x.1 - spec.x.0);
            let grid = &landscape.grid;
            let value = match landscape.cells {
                true => grid
                    .spec
                    .cell([x, y])
                    .and_then(|(i, j)| grid.values[j * spec.nx + i]),
                false => grid.interpolate([x, y]),
            };
            let rgb = value.map_or([255; 3], |v| landscape.scale.smooth_rgb(v));
            pixels.extend_from_slice(&rgb);
        }
    }
    pixels
}

/// Contour lines at the scale's levels ([`ColorScale::levels`]), each level's value written on
/// the middle of its longest line, in black or white by the colour under it.
fn draw_contours<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    landscape: &PlotLandscape,
    to_area: &dyn Fn(&Point) -> (i32, i32),
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let scale = &landscape.scale;
    let line_style = BLACK.mix(0.35).stroke_width(1);
    for level in contours(&landscape.grid, &scale.levels()) {
        let pixels: Vec<Vec<(i32, i32)>> = level
            .lines
            .iter()
            .map(|l| l.iter().map(|p| to_area(&(p[0], p[1]))).collect())
            .collect();
        for line in &pixels {
            area.draw(&PathElement::new(line.clone(), line_style))?;
        }
        let longest = pixels.iter().max_by_key(|l| l.len());
        if let Some(at) = longest.and_then(|l| l.get(l.len() / 2)) {
            let [r, g, b] = scale.smooth_rgb(level.level);
            let light = 0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b) > 140.0;
            let colour = if light { BLACK } else { WHITE };
            let style = TextStyle::from((FONT, 11).into_font())
                .color(&colour)
                .pos(Pos::new(HPos::Center, VPos::Center));
            area.draw(&Text::new(fmt_level(level.level, scale), *at, style))?;
        }
    }
    Ok(())
}

/// A level's label: a power of ten as such on a log scale, else a tick label.
fn fmt_level(v: f64, scale: &ColorScale) -> String {
    if scale.log {
        fmt_log_tick(v)
    } else {
        fmt_tick(v, scale.hi - scale.lo)
    }
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

/// The scale's continuous ramp from bottom to top at pixel column `x` between rows `bottom`
/// and `top`, with ticks at the contour levels, "log" above a log scale and a red swatch below
/// labelled `nonfinite` when there is one.
fn colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    scale: &ColorScale,
    (x, top, bottom): (i32, i32, i32),
    nonfinite: Option<&str>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    const WIDTH: i32 = 14;
    let row = |t: f64| bottom - (t * f64::from(bottom - top)).round() as i32;
    const STRIPS: usize = 96;
    for strip in 0..STRIPS {
        let (t0, t1) = (
            strip as f64 / STRIPS as f64,
            (strip + 1) as f64 / STRIPS as f64,
        );
        let colour = ramp((t0 + t1) / 2.0);
        area.draw(&Rectangle::new(
            [(x, row(t1)), (x + WIDTH, row(t0))],
            plotters_color(colour).filled(),
        ))?;
    }
    area.draw(&Rectangle::new([(x, top), (x + WIDTH, bottom)], BLACK))?;
    let label = |anchor| TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, anchor));
    for level in scale.levels() {
        let Some(t) = scale.t(level) else { continue };
        let y = row(t);
        area.draw(&PathElement::new(
            [(x + WIDTH, y), (x + WIDTH + 4, y)],
            BLACK,
        ))?;
        area.draw(&Text::new(
            fmt_level(level, scale),
            (x + WIDTH + 6, y),
            label(VPos::Center),
        ))?;
    }
    if scale.log {
        area.draw(&Text::new("log", (x, top - 6), label(VPos::Bottom)))?;
    }
    if let Some(nonfinite) = nonfinite {
        let y = bottom + 14;
        area.draw(&Rectangle::new(
            [(x, y), (x + WIDTH, y + 10)],
            plotters_color(NONFINITE_RGB).filled(),
        ))?;
        area.draw(&Text::new(
            nonfinite,
            (x + WIDTH + 6, y + 5),
            label(VPos::Center),
        ))?;
    }
    Ok(())
}
