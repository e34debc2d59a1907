//! The sweep picture: final loss against one swept value (a line per optimizer or variant,
//! spread bands over seeds, failed points marked at the top, never as a loss), or over two
//! swept values as a heat map, written as SVG or PNG like [`super::plot`]'s pictures.

use std::path::Path;

use plotters::coord::Shift;
use plotters::element::ComposedElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plot::{
    DrawResult, FONT, Picture, PlotError, PlotLandscape, draw_landscape, name_points, write,
};
use super::{PALETTE, palette_rgb, plotters_color};
use crate::format::{fmt_log_tick, fmt_tick};
use crate::landscape::{ColorScale, Grid, GridSpec, NONFINITE_RGB};
use crate::run::sweep::Spread;

/// A sweep's picture: its title (the loss's name) and what it shows.
#[derive(Debug, Clone)]
pub struct SweepPicture {
    pub title: String,
    pub chart: SweepChart,
}

/// One swept value (lines) or two (a heat map).
#[derive(Debug, Clone)]
pub enum SweepChart {
    /// The swept key and a line per optimizer or variant.
    Lines { axis: String, lines: Vec<SweepLine> },
    /// The swept keys (x, y), their values in order, each cell's `(x index, y index)` and
    /// outcome, and which keys are consts of the loss: each of their values is an objective of
    /// its own, so the best is marked per value of a const (and not at all over two).
    Heat {
        axes: [String; 2],
        values: [Vec<f64>; 2],
        cells: Vec<((usize, usize), SweepOutcome)>,
        consts: [bool; 2],
    },
}

/// One optimizer's or variant's points: `(swept value, outcome)`.
#[derive(Debug, Clone)]
pub struct SweepLine {
    pub name: String,
    pub points: Vec<(f64, SweepOutcome)>,
}

/// How a point ended: its final loss over seeds, or the failure that stands for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SweepOutcome {
    Loss(Spread),
    Diverged,
    Halted,
}

/// Writes `picture` to `path`, as SVG or PNG by its extension.
pub fn save_sweep(picture: &SweepPicture, path: &Path) -> Result<(), PlotError> {
    write(picture, path)
}

impl Picture for SweepPicture {
    fn size(&self) -> (u32, u32) {
        match self.chart {
            SweepChart::Lines { .. } => (1000 + LEGEND_AREA as u32, 600),
            SweepChart::Heat { .. } => (820, 640),
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let body = root.titled(&self.title, (FONT, 24))?;
        match &self.chart {
            SweepChart::Lines { axis, lines } => draw_lines(&body, axis, lines),
            SweepChart::Heat {
                axes,
                values,
                cells,
                consts,
            } => draw_heat(&body, axes, values, cells, *consts),
        }
    }
}

/// An axis drawn linearly or in log10 of its values (plotters' coordinates are then the
/// exponents, so every chart has one coordinate type).
#[derive(Debug, Clone, Copy)]
struct Axis {
    log: bool,
    /// The range in coordinates.
    lo: f64,
    hi: f64,
}

impl Axis {
    /// An axis over `values`: log10 when they are positive and `hi / lo` exceeds `ratio`.
    fn fit(values: impl Iterator<Item = f64>, ratio: f64) -> Self {
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let log = lo > 0.0 && hi > ratio * lo;
        let (lo, hi) = match (lo <= hi, log) {
            (false, _) => (0.0, 1.0),
            (true, true) => (lo.log10(), hi.log10()),
            (true, false) => (lo, hi),
        };
        Axis { log, lo, hi }
    }

    fn to(&self, v: f64) -> f64 {
        if self.log { v.log10() } else { v }
    }

    /// The range with `share` of its span (or of its size, when flat) added either side.
    fn padded(&self, share: f64) -> std::ops::Range<f64> {
        let pad = ((self.hi - self.lo) * share).max(self.lo.abs().max(self.hi.abs()) * share);
        let pad = if pad > 0.0 { pad } else { 1.0 };
        self.lo - pad..self.hi + pad
    }

    /// A tick label at coordinate `c`: powers of ten on a log axis (other values only when
    /// it spans under two decades, so it keeps some labels), else [`fmt_tick`].
    fn label(&self, c: f64) -> String {
        let span = self.hi - self.lo;
        let whole = (c - c.round()).abs() < 1e-9;
        if !self.log {
            fmt_tick(c, span)
        } else if whole {
            fmt_log_tick(10f64.powi(c.round() as i32))
        } else if span < 2.0 {
            fmt_log_tick(10f64.powf(c))
        } else {
            String::new()
        }
    }

    /// The axis' name, saying when it is logarithmic.
    fn desc(&self, name: &str) -> String {
        if self.log {
            format!("{name} (log)")
        } else {
            name.to_string()
        }
    }
}

/// Width kept right of the line chart for its legend.
const LEGEND_AREA: i32 = 200;

/// Line colours: the run palette without white, which would not show on the white ground.
fn line_rgb(k: usize) -> [u8; 3] {
    let colours: Vec<[u8; 3]> = PALETTE
        .iter()
        .filter(|c| **c != ratatui::style::Color::White)
        .map(|c| palette_rgb(*c))
        .collect();
    colours[k % colours.len()]
}

/// Final loss against the swept value: each line's finished points joined (a failure between
/// breaks the line), the range over seeds as a band, failures as markers on the top edge,
/// and the best point ringed.
fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    axis: &str,
    lines: &[SweepLine],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let losses = || {
        all().filter_map(|(_, o)| match o {
            SweepOutcome::Loss(s) => Some([s.min, s.median, s.max]),
            _ => None,
        })
    };
    let x = Axis::fit(all().map(|(v, _)| *v), 10.0);
    let y = Axis::fit(losses().flatten().filter(|v| v.is_finite()), 100.0);
    let (xr, yr) = (x.padded(0.04), y.padded(0.06));
    let top = yr.end;
    let mut chart = ChartBuilder::on(area)
        .margin(14)
        .margin_right(LEGEND_AREA)
        .x_label_area_size(40)
        .y_label_area_size(72)
        .build_cartesian_2d(xr, yr)?;
    chart
        .configure_mesh()
        .x_desc(x.desc(axis))
        .y_desc(y.desc("final loss"))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .x_label_formatter(&|c| x.label(*c))
        .y_label_formatter(&|c| y.label(*c))
        .light_line_style(WHITE)
        .draw()?;
    let at = |v: f64, loss: f64| (x.to(v), y.to(loss));
    let mut legend: Vec<(&str, Swatch)> = Vec::new();
    let mut failures = [false; 2];
    for (k, line) in lines.iter().enumerate() {
        let colour = plotters_color(line_rgb(k));
        let mut points: Vec<(f64, SweepOutcome)> = line.points.clone();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let stretches = points.chunk_by(|a, b| {
            matches!(a.1, SweepOutcome::Loss(_)) && matches!(b.1, SweepOutcome::Loss(_))
        });
        let spreads: Vec<Vec<(f64, Spread)>> = stretches
            .filter_map(|s| {
                s.iter()
                    .map(|(v, o)| match o {
                        SweepOutcome::Loss(spread) => Some((*v, *spread)),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        for stretch in spreads
            .iter()
            .filter(|s| s.iter().any(|(_, s)| s.max > s.min))
        {
            let band: Vec<(f64, f64)> = stretch
                .iter()
                .map(|(v, s)| at(*v, s.max))
                .chain(stretch.iter().rev().map(|(v, s)| at(*v, s.min)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(band, colour.mix(0.18))))?;
        }
        let style = colour.stroke_width(2);
        chart.draw_series(spreads.iter().map(|stretch| {
            PathElement::new(
                stretch
                    .iter()
                    .map(|(v, s)| at(*v, s.median))
                    .collect::<Vec<_>>(),
                style,
            )
        }))?;
        legend.push((line.name.as_str(), Swatch::Line(style)));
        chart.draw_series(
            spreads
                .iter()
                .flatten()
                .map(|(v, s)| Circle::new(at(*v, s.median), 3, colour.filled())),
        )?;
        for (v, o) in &points {
            let kind = match o {
                SweepOutcome::Loss(_) => continue,
                SweepOutcome::Diverged => 0,
                SweepOutcome::Halted => 1,
            };
            failures[kind] = true;
            chart.draw_series(std::iter::once(failure_marker(
                (x.to(*v), top),
                kind,
                9,
                colour.stroke_width(2),
            )))?;
        }
    }
    for (kind, name) in ["diverged", "halted"].into_iter().enumerate() {
        if failures[kind] {
            legend.push((name, Swatch::Failure(kind)));
        }
    }
    let best = lines
        .iter()
        .flat_map(|l| l.points.iter())
        .filter_map(|(v, o)| match o {
            SweepOutcome::Loss(s) if s.median.is_finite() => Some((*v, s.median)),
            _ => None,
        })
        .min_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((v, loss)) = best {
        let ring = BLACK.stroke_width(2);
        chart.draw_series(std::iter::once(Circle::new(at(v, loss), 8, ring)))?;
        legend.push(("best", Swatch::Best));
    }
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let (bx, by) = area.get_base_pixel();
    draw_legend(area, &legend, (xs.end - bx + 16, ys.start - by))
}

/// What a legend entry shows beside its name.
#[derive(Debug, Clone, Copy)]
enum Swatch {
    Line(ShapeStyle),
    Failure(usize),
    Best,
}

/// The legend right of the plot from area pixel `(x, y)` down, where it covers neither the
/// lines nor the markers on the top edge.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(&str, Swatch)],
    (x, y): (i32, i32),
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let text = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (k, (name, swatch)) in entries.iter().enumerate() {
        let row = y + 8 + 20 * k as i32;
        let mid = (x + 10, row);
        match *swatch {
            Swatch::Line(style) => {
                area.draw(&PathElement::new([(x, row), (x + 20, row)], style))?
            }
            Swatch::Failure(kind) => area.draw(&failure_marker(
                mid,
                kind,
                0,
                plotters_color(NONFINITE_RGB).stroke_width(2),
            ))?,
            Swatch::Best => area.draw(&Circle::new(mid, 6, BLACK.stroke_width(2)))?,
        }
        area.draw(&Text::new(name.to_string(), (x + 28, row), text.clone()))?;
    }
    Ok(())
}

/// Two strokes in pixels about a point.
type Marker<C, DB> = ComposedElement<C, DB, PathElement<(i32, i32)>, PathElement<(i32, i32)>>;

/// A failed point's marker centred `drop` pixels below `at`: an x for diverged (`kind` 0),
/// a square for halted.
fn failure_marker<C, DB: DrawingBackend>(
    at: C,
    kind: usize,
    drop: i32,
    style: ShapeStyle,
) -> Marker<C, DB> {
    let (r, y) = (5, drop);
    let (first, second) = match kind {
        0 => (vec![(-r, y - r), (r, y + r)], vec![(-r, y + r), (r, y - r)]),
        _ => (
            vec![
                (-r, y - r),
                (r, y - r),
                (r, y + r),
                (-r, y + r),
                (-r, y - r),
            ],
            Vec::new(),
        ),
    };
    EmptyElement::at(at) + PathElement::new(first, style) + PathElement::new(second, style)
}

/// A heat map's axis: a cell per value, at the values' coordinates when they are evenly
/// spaced there (logspace, linspace: a true linear or log axis), else in order, each cell
/// labelled with its value, so uneven lists are not drawn at false places.
struct CellAxis<'a> {
    axis: Axis,
    values: &'a [f64],
    even: bool,
}

impl<'a> CellAxis<'a> {
    fn new(values: &'a [f64]) -> Self {
        let axis = Axis::fit(values.iter().copied(), 10.0);
        let tolerance = 1e-6 * (axis.hi - axis.lo).abs();
        // Two values are cells in order: half a cell beyond them could be a negative lr.
        let even = values.len() > 2
            && values.windows(3).all(|w| {
                let [a, b, c] = [w[0], w[1], w[2]].map(|v| axis.to(v));
                ((c - b) - (b - a)).abs() <= tolerance
            });
        CellAxis { axis, values, even }
    }

    /// The outer edges of the cells in coordinates, half a cell beyond the first and last
    /// value.
    fn range(&self) -> (f64, f64) {
        let n = self.values.len();
        match (self.even, n) {
            (true, 2..) => {
                let half = (self.axis.hi - self.axis.lo) / (n - 1) as f64 / 2.0;
                (self.axis.lo - half, self.axis.hi + half)
            }
            (true, _) => (self.axis.lo - 0.5, self.axis.hi + 0.5),
            (false, _) => (-0.5, n as f64 - 0.5),
        }
    }

    fn label(&self, c: f64) -> String {
        if self.even {
            return self.axis.label(c);
        }
        let k = c.round();
        match self.values.get(k as usize) {
            Some(v) if (c - k).abs() < 1e-9 && k >= 0.0 => match self.axis.log {
                true => fmt_log_tick(*v),
                false => fmt_tick(*v, self.axis.hi - self.axis.lo),
            },
            _ => String::new(),
        }
    }

    fn desc(&self, name: &str) -> String {
        if self.even {
            self.axis.desc(name)
        } else {
            name.to_string()
        }
    }
}

/// Final loss over two swept values: each cell flat in its colour (on a log colour scale when
/// every loss is positive), failed cells in the non-finite colour and crossed, the best cell
/// marked and named (per value of a const axis).
fn draw_heat<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    axes: &[String; 2],
    values: &[Vec<f64>; 2],
    cells: &[((usize, usize), SweepOutcome)],
    consts: [bool; 2],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let [x, y] = [0, 1].map(|k| CellAxis::new(&values[k]));
    let (nx, ny) = (values[0].len().max(1), values[1].len().max(1));
    let spec = GridSpec {
        x: x.range(),
        y: y.range(),
        nx,
        ny,
    };
    let mut grid = Grid::new(spec.clone());
    let mut failed = [false; 2];
    for &((i, j), outcome) in cells {
        grid.values[j * nx + i] = Some(match outcome {
            SweepOutcome::Loss(s) => s.median,
            SweepOutcome::Diverged => {
                failed[0] = true;
                f64::NAN
            }
            SweepOutcome::Halted => {
                failed[1] = true;
                f64::NAN
            }
        });
    }
    let positive = grid.finite().all(|v| v > 0.0);
    let Some(scale) = ColorScale::fit(grid.finite(), Some(positive)) else {
        return Err("no point of the sweep finished".into());
    };
    let bests: Vec<[f64; 2]> = best_cells(cells, consts)
        .into_iter()
        .map(|(i, j)| spec.coord(i, j))
        .collect();
    let landscape = PlotLandscape {
        grid,
        scale,
        labels: [x.desc(&axes[0]), y.desc(&axes[1])],
        minimum: None,
        optimum: None,
        cells: true,
    };
    let nonfinite = match failed {
        [true, true] => "diverged/halted",
        [false, true] => "halted",
        _ => "diverged",
    };
    let x_tick = |c: &f64| x.label(*c);
    let y_tick = |c: &f64| y.label(*c);
    let placed = draw_landscape(area, &landscape, &[], [&x_tick, &y_tick], nonfinite)?;
    let cross = BLACK.stroke_width(2);
    for &((i, j), outcome) in cells {
        if !matches!(outcome, SweepOutcome::Loss(_)) {
            let [cx, cy] = spec.coord(i, j);
            let (px, py) = placed.to_area(&(cx, cy));
            area.draw(&PathElement::new(
                [(px - 6, py - 6), (px + 6, py + 6)],
                cross,
            ))?;
            area.draw(&PathElement::new(
                [(px - 6, py + 6), (px + 6, py - 6)],
                cross,
            ))?;
        }
    }
    let named: Vec<_> = bests
        .iter()
        .map(|&[bx, by]| (placed.to_area(&(bx, by)), "best"))
        .collect();
    for &((px, py), _) in &named {
        let ring = WHITE.stroke_width(3);
        area.draw(&Circle::new((px, py), 7, ring))?;
        area.draw(&Circle::new((px, py), 7, BLACK.stroke_width(1)))?;
    }
    name_points(area, &named, placed.plot)?;
    Ok(())
}

/// The cells marked best: the lowest final loss, over all cells or, with a const axis, for
/// each value of it; none when both axes are consts (no two cells share an objective).
pub fn best_cells(
    cells: &[((usize, usize), SweepOutcome)],
    consts: [bool; 2],
) -> Vec<(usize, usize)> {
    if consts == [true, true] {
        return Vec::new();
    }
    let objective = |(i, j): (usize, usize)| (consts[0].then_some(i), consts[1].then_some(j));
    let mut bests: Vec<((usize, usize), f64)> = Vec::new();
    for &(cell, outcome) in cells {
        let SweepOutcome::Loss(s) = outcome else {
            continue;
        };
        match bests
            .iter_mut()
            .find(|(c, _)| objective(*c) == objective(cell))
        {
            Some(b) if s.median < b.1 => *b = (cell, s.median),
            Some(_) => {}
            None => bests.push((cell, s.median)),
        }
    }
    bests.into_iter().map(|(c, _)| c).collect()
}
