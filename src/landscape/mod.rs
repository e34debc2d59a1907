//! Loss landscapes: the loss over a plane in param space, and the optimizer paths projected onto
//! it. A two-param loss is drawn over its own coordinates; a larger one over a 2-D slice through
//! a run's current point, along two random filter-normalized directions (Li et al., "Visualizing
//! the Loss Landscape of Neural Nets", 2018) or along the run's recent update and a random
//! direction orthogonal to it. Knows nothing of any front end; [`surface`] evaluates grids.

pub mod service;
pub mod surface;

use rand::SeedableRng;

use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// How a plane was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaneKind {
    /// The two params themselves (two scalars, or one 2-vector).
    Coordinates,
    /// Two random filter-normalized directions through a point.
    Random,
    /// A run's recent update direction and a random direction orthogonal to it.
    Update,
}

impl PlaneKind {
    /// The plane in words, for titles and reports.
    pub fn describe(self) -> &'static str {
        match self {
            PlaneKind::Coordinates => "param coordinates",
            PlaneKind::Random => "random filter-normalized directions",
            PlaneKind::Update => "recent update direction × random orthogonal",
        }
    }
}

/// The points `origin + a d1 + b d2` of flat param space (all params, each row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    pub kind: PlaneKind,
    pub origin: Vec<f64>,
    pub d1: Vec<f64>,
    pub d2: Vec<f64>,
    /// Axis names.
    pub labels: [String; 2],
    /// Inverse Gram matrix of (d1, d2), for projecting (least squares when they are not
    /// orthogonal).
    inverse_gram: [[f64; 2]; 2],
}

/// A param's name and shape, to split flat vectors into params.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamShape {
    pub name: String,
    pub dims: Vec<usize>,
}

impl ParamShape {
    /// Values the param holds.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Whether it holds no value at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The params of a compiled file, in order.
pub fn param_shapes(compiled: &crate::compile::CompiledFile) -> Vec<ParamShape> {
    compiled
        .params
        .iter()
        .map(|p| ParamShape {
            name: p.name.clone(),
            dims: p.value.dims().to_vec(),
        })
        .collect()
}

/// The file's known optimum (its `optimum` key) as a flat param vector; None when the file
/// gives none or its values do not fit the compiled params' sizes or are not finite (`check`
/// warns of both).
pub fn optimum_point(compiled: &crate::compile::CompiledFile) -> Option<Vec<f64>> {
    let optimum = compiled.file.optimum.as_ref()?;
    let mut flat = Vec::new();
    for shape in param_shapes(compiled) {
        let entry = optimum.iter().find(|o| o.name.node == shape.name)?;
        if !entry.fits(shape.len()) {
            return None;
        }
        flat.extend_from_slice(&entry.value);
    }
    Some(flat)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn gaussian(n: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

impl Plane {
    fn new(
        kind: PlaneKind,
        origin: Vec<f64>,
        d1: Vec<f64>,
        d2: Vec<f64>,
        labels: [String; 2],
    ) -> Self {
        let (g11, g12, g22) = (dot(&d1, &d1), dot(&d1, &d2), dot(&d2, &d2));
        let det = g11 * g22 - g12 * g12;
        let inverse_gram = if det.abs() > f64::MIN_POSITIVE {
            [[g22 / det, -g12 / det], [-g12 / det, g11 / det]]
        } else {
            [[0.0; 2]; 2]
        };
        Self {
            kind,
            origin,
            d1,
            d2,
            labels,
            inverse_gram,
        }
    }

    /// The plane of a loss with exactly two param values, over their own coordinates; None for
    /// any other number.
    pub fn coordinates(params: &[ParamShape]) -> Option<Self> {
        let labels: Vec<String> = params
            .iter()
            .flat_map(|p| {
                let n = p.len();
                (0..n).map(move |k| {
                    if p.dims.is_empty() {
                        p.name.clone()
                    } else {
                        format!("{}[{k}]", p.name)
                    }
                })
            })
            .collect();
        let [x, y]: [String; 2] = labels.try_into().ok()?;
        Some(Self::new(
            PlaneKind::Coordinates,
            vec![0.0, 0.0],
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            [x, y],
        ))
    }

    /// Two random filter-normalized directions through `origin` (see [`filter_normalized`]).
    /// Where every weight is zero (a zero-initialised model), normalizing would leave no
    /// direction at all: the raw Gaussian directions are used instead.
    pub fn random(origin: Vec<f64>, params: &[ParamShape], seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut direction = || {
            let raw = gaussian(origin.len(), &mut rng);
            let d = filter_normalized(&raw, &origin, params);
            if d.iter().all(|&x| x == 0.0) { raw } else { d }
        };
        let (d1, d2) = (direction(), direction());
        Self::new(PlaneKind::Random, origin, d1, d2, ["δ".into(), "η".into()])
    }

    /// `direction` (a recent update) and a random direction orthogonal to it of the same norm,
    /// through `origin`. None when the direction is zero or not finite.
    pub fn update(origin: Vec<f64>, direction: Vec<f64>, seed: u64) -> Option<Self> {
        let n1 = dot(&direction, &direction).sqrt();
        if !(n1.is_finite() && n1 > 0.0) {
            return None;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut d2 = gaussian(origin.len(), &mut rng);
        let along = dot(&d2, &direction) / (n1 * n1);
        d2.iter_mut()
            .zip(&direction)
            .for_each(|(x, d)| *x -= along * d);
        let n2 = dot(&d2, &d2).sqrt();
        if n2 == 0.0 {
            return None;
        }
        d2.iter_mut().for_each(|x| *x *= n1 / n2);
        Some(Self::new(
            PlaneKind::Update,
            origin,
            direction,
            d2,
            ["update".into(), "orthogonal".into()],
        ))
    }

    /// A slice through `origin` of `kind`: along `recent` (the run's recent update direction) and
    /// an orthogonal one for [`PlaneKind::Update`], when there is such a direction; two random
    /// filter-normalized directions otherwise.
    pub fn slice(
        kind: PlaneKind,
        origin: Vec<f64>,
        recent: Option<Vec<f64>>,
        params: &[ParamShape],
        seed: u64,
    ) -> Self {
        let update = match (kind, recent) {
            (PlaneKind::Update, Some(d)) => Self::update(origin.clone(), d, seed),
            _ => None,
        };
        update.unwrap_or_else(|| Self::random(origin, params, seed))
    }

    /// The flat param point at plane coordinates `(a, b)`.
    pub fn point(&self, a: f64, b: f64) -> Vec<f64> {
        self.origin
            .iter()
            .zip(self.d1.iter().zip(&self.d2))
            .map(|(o, (x, y))| o + a * x + b * y)
            .collect()
    }

    /// The plane coordinates of the point of the plane nearest to `p` (orthogonal projection).
    pub fn project(&self, p: &[f64]) -> [f64; 2] {
        let (mut r1, mut r2) = (0.0, 0.0);
        for ((x, o), (u, w)) in p.iter().zip(&self.origin).zip(self.d1.iter().zip(&self.d2)) {
            r1 += (x - o) * u;
            r2 += (x - o) * w;
        }
        let g = self.inverse_gram;
        [g[0][0] * r1 + g[0][1] * r2, g[1][0] * r1 + g[1][1] * r2]
    }

    /// How far `p` lies from the plane, relative to the length of d1 (0 for points on it).
    pub fn distance(&self, p: &[f64]) -> f64 {
        let [a, b] = self.project(p);
        let q = self.point(a, b);
        let off: f64 = p.iter().zip(&q).map(|(x, y)| (x - y).powi(2)).sum();
        off.sqrt() / dot(&self.d1, &self.d1).sqrt().max(f64::MIN_POSITIVE)
    }
}

/// Li et al.'s filter normalization: `direction` is split into filters the way `weights` is, and
/// each filter rescaled to the norm of the matching filter of the weights, so a step of 1 along
/// it moves every filter by as much as its own size and scale-invariant networks compare fairly.
/// A filter of a param with two or more axes is a slice along the last axis (the weights that
/// feed one output unit of `x @ W`); a scalar or vector param is one filter. A filter of zero
/// weights (zero-initialised biases) gets a zero direction, as the rule implies.
pub fn filter_normalized(direction: &[f64], weights: &[f64], params: &[ParamShape]) -> Vec<f64> {
    let mut out = direction.to_vec();
    let mut at = 0;
    for p in params {
        let n = p.len();
        let filters = if p.dims.len() >= 2 {
            *p.dims.last().expect("rank >= 2")
        } else {
            1
        };
        for f in 0..filters {
            let members = (at + f..at + n).step_by(filters);
            let (mut wn, mut dn) = (0.0, 0.0);
            for k in members.clone() {
                wn += weights[k] * weights[k];
                dn += direction[k] * direction[k];
            }
            let scale = if dn > 0.0 { (wn / dn).sqrt() } else { 0.0 };
            for k in members {
                out[k] = direction[k] * scale;
            }
        }
        at += n;
    }
    out
}

/// A regular grid over a rectangle of plane coordinates; values sit at cell centres, row 0 at
/// the bottom (`y.0`).
#[derive(Debug, Clone, PartialEq)]
pub struct GridSpec {
    pub x: (f64, f64),
    pub y: (f64, f64),
    pub nx: usize,
    pub ny: usize,
}

impl GridSpec {
    /// Plane coordinates of cell `(i, j)`'s centre.
    pub fn coord(&self, i: usize, j: usize) -> [f64; 2] {
        [
            self.x.0 + (i as f64 + 0.5) / self.nx as f64 * (self.x.1 - self.x.0),
            self.y.0 + (j as f64 + 0.5) / self.ny as f64 * (self.y.1 - self.y.0),
        ]
    }

    /// The cell holding plane coordinates `p`, if inside.
    pub fn cell(&self, p: [f64; 2]) -> Option<(usize, usize)> {
        let fx = (p[0] - self.x.0) / (self.x.1 - self.x.0);
        let fy = (p[1] - self.y.0) / (self.y.1 - self.y.0);
        if !(0.0..1.0).contains(&fx) || !(0.0..1.0).contains(&fy) {
            return None;
        }
        Some((
            (fx * self.nx as f64) as usize,
            (fy * self.ny as f64) as usize,
        ))
    }

    /// Cells in the grid.
    pub fn len(&self) -> usize {
        self.nx * self.ny
    }

    /// Whether it holds no value at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cell indices (row-major) in coarse-to-fine order: every 8th cell of every 8th row first,
    /// then every 4th, 2nd and the rest, so a grid filled point by point shows the whole picture
    /// early and sharpens.
    pub fn progressive_order(&self) -> Vec<usize> {
        let mut seen = vec![false; self.len()];
        let mut order = Vec::with_capacity(self.len());
        for s in [8, 4, 2, 1] {
            for j in (0..self.ny).step_by(s) {
                for i in (0..self.nx).step_by(s) {
                    let k = j * self.nx + i;
                    if !std::mem::replace(&mut seen[k], true) {
                        order.push(k);
                    }
                }
            }
        }
        order
    }
}

/// Loss values over a grid, filled in as they are computed.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub spec: GridSpec,
    /// Row-major from the bottom row; None until computed.
    pub values: Vec<Option<f64>>,
}

impl Grid {
    /// A grid with no cell computed yet.
    pub fn new(spec: GridSpec) -> Self {
        let values = vec![None; spec.len()];
        Self { spec, values }
    }

    /// Cells computed so far.
    pub fn filled(&self) -> usize {
        self.values.iter().filter(|v| v.is_some()).count()
    }

    /// Whether every cell is computed.
    pub fn is_complete(&self) -> bool {
        self.values.iter().all(Option::is_some)
    }

    /// Cell `(i, j)`, or while it is not computed yet the coarser cell that stands in for it
    /// (the progressive order computes those first).
    pub fn display(&self, i: usize, j: usize) -> Option<f64> {
        [1, 2, 4, 8].into_iter().find_map(|s| {
            let (ci, cj) = (i - i % s, j - j % s);
            self.values[cj * self.spec.nx + ci]
        })
    }

    /// Finite values computed so far.
    pub fn finite(&self) -> impl Iterator<Item = f64> + '_ {
        self.values
            .iter()
            .flatten()
            .copied()
            .filter(|v| v.is_finite())
    }

    /// The value at plane point `p`, interpolated bilinearly between the four nearest cell
    /// centres (clamped at the edges); the nearest cell's value where any of the four is not
    /// computed or not finite, so a NaN region keeps its sharp edge. None outside the grid.
    pub fn interpolate(&self, p: [f64; 2]) -> Option<f64> {
        let (i, j) = self.spec.cell(p)?;
        let nearest = self.values[j * self.spec.nx + i];
        let at = |v: f64, lo: f64, hi: f64, n: usize| {
            let f = ((v - lo) / (hi - lo) * n as f64 - 0.5).clamp(0.0, (n - 1) as f64);
            let k = (f.floor() as usize).min(n.saturating_sub(2));
            (k, f - k as f64)
        };
        if self.spec.nx < 2 || self.spec.ny < 2 {
            return nearest;
        }
        let (i0, fx) = at(p[0], self.spec.x.0, self.spec.x.1, self.spec.nx);
        let (j0, fy) = at(p[1], self.spec.y.0, self.spec.y.1, self.spec.ny);
        let v = |i: usize, j: usize| self.values[j * self.spec.nx + i].filter(|v| v.is_finite());
        match (v(i0, j0), v(i0 + 1, j0), v(i0, j0 + 1), v(i0 + 1, j0 + 1)) {
            (Some(a), Some(b), Some(c), Some(d)) => {
                let bottom = a + fx * (b - a);
                let top = c + fx * (d - c);
                Some(bottom + fy * (top - bottom))
            }
            _ => nearest,
        }
    }

    /// The lowest computed value and where it is, refined within its cell: a parabola through
    /// the minimum and its two neighbours along each axis puts the point between cell centres
    /// (at most half a cell from the lowest one), where the evaluated surface says it is.
    pub fn refined_min(&self) -> Option<(f64, [f64; 2])> {
        let (v, [x, y]) = self.min()?;
        let (i, j) = self.spec.cell([x, y])?;
        let value =
            |i: usize, j: usize| self.values[j * self.spec.nx + i].filter(|v| v.is_finite());
        let shift = |lo: Option<f64>, hi: Option<f64>| match (lo, hi) {
            (Some(lo), Some(hi)) => {
                let curvature = lo - 2.0 * v + hi;
                if curvature > 0.0 {
                    (0.5 * (lo - hi) / curvature).clamp(-0.5, 0.5)
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        let dx = shift(
            i.checked_sub(1).and_then(|i| value(i, j)),
            (i + 1 < self.spec.nx).then(|| value(i + 1, j)).flatten(),
        );
        let dy = shift(
            j.checked_sub(1).and_then(|j| value(i, j)),
            (j + 1 < self.spec.ny).then(|| value(i, j + 1)).flatten(),
        );
        let cell_w = (self.spec.x.1 - self.spec.x.0) / self.spec.nx as f64;
        let cell_h = (self.spec.y.1 - self.spec.y.0) / self.spec.ny as f64;
        Some((v, [x + dx * cell_w, y + dy * cell_h]))
    }

    /// The lowest computed value and its cell centre.
    pub fn min(&self) -> Option<(f64, [f64; 2])> {
        self.values
            .iter()
            .enumerate()
            .filter_map(|(k, v)| v.filter(|v| v.is_finite()).map(|v| (k, v)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(k, v)| (v, self.spec.coord(k % self.spec.nx, k / self.spec.nx)))
    }
}

/// The view of a plane that holds `paths`: for a slice, also its origin and at least ±1 (the
/// range Li et al. plot); for coordinates at least ±0.5 around the paths.
pub fn view_for(
    plane: &Plane,
    paths: impl Iterator<Item = [f64; 2]>,
) -> Option<((f64, f64), (f64, f64))> {
    let origin = (plane.kind != PlaneKind::Coordinates).then_some([0.0, 0.0]);
    let min_half = if origin.is_some() { 1.0 } else { 0.5 };
    fit_bounds(paths.chain(origin), min_half)
}

/// A run's loss at each step it took, as the view rules below read it: landscapes know paths,
/// not runs (a run's history implements this).
pub trait StepLosses {
    /// The loss at the params after `step` updates, if that step was taken.
    fn loss_at(&self, step: usize) -> Option<f64>;
    /// The loss of the last step taken.
    fn last_loss(&self) -> Option<f64>;
    /// Rows recorded, kept or not: a step below it without a loss will not get one.
    fn recorded(&self) -> usize;
}

impl StepLosses for [f64] {
    fn loss_at(&self, step: usize) -> Option<f64> {
        self.get(step).copied()
    }

    fn last_loss(&self) -> Option<f64> {
        self.last().copied()
    }

    fn recorded(&self) -> usize {
        self.len()
    }
}

/// The largest loss a path point may have for views to follow it: the largest initial loss plus
/// 100 times its size, so a run that diverges does not shrink everything else to a dot (losses
/// below the start, negative ones included, are always followed).
pub fn follow_limit<'a, L: StepLosses + ?Sized + 'a>(runs: impl Iterator<Item = &'a L>) -> f64 {
    let start = runs
        .filter_map(|h| h.loss_at(0))
        .filter(|l| l.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if start.is_finite() {
        start + 100.0 * start.abs().max(1e-12)
    } else {
        f64::INFINITY
    }
}

/// The points of one run's path (`(step, point)`) that views follow: those whose loss is within
/// `limit`; a current point, which has no loss yet, counts when the run's last loss does.
pub fn followed<'a, L: StepLosses + ?Sized>(
    path: impl Iterator<Item = (u64, [f64; 2])> + 'a,
    losses: &'a L,
    limit: f64,
) -> impl Iterator<Item = [f64; 2]> + 'a {
    path.filter_map(move |(k, p)| {
        let loss = losses.loss_at(k as usize).or_else(|| losses.last_loss());
        loss.is_none_or(|l| l <= limit).then_some(p)
    })
}

/// The point of one run's path (`(step, point)`, in step order) with the lowest finite loss,
/// and that loss: [`Lowest`] over the whole path at once.
pub fn lowest<L: StepLosses + ?Sized>(
    path: impl Iterator<Item = (u64, [f64; 2])>,
    losses: &L,
) -> Option<([f64; 2], f64)> {
    let mut found = Lowest::default();
    found.catch_up(path, losses);
    found.get()
}

/// The lowest finite loss at a point of a path that grows (the first of equal ones, -0 below
/// +0), kept up to date as its points and their losses arrive:
/// looked up afresh, the 16k points of a long run's path in its history cost the Landscape tab
/// up to 0.7 ms a frame. A point thinned out of the path after it was looked at still counts:
/// the run passed through it (so the mark can lie off the drawn path, and after a rewind or a
/// new plane, which look at the path kept, it can move to a point that is not as low).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lowest {
    /// The lowest point's step, the point and its loss.
    best: Option<(u64, [f64; 2], f64)>,
    /// The last path step looked at.
    through: Option<u64>,
}

impl Lowest {
    /// The lowest point and its loss.
    pub fn get(&self) -> Option<([f64; 2], f64)> {
        self.best.map(|(_, p, loss)| (p, loss))
    }

    /// The last path step looked at: [`Lowest::catch_up`] takes the points after it.
    pub fn through(&self) -> Option<u64> {
        self.through
    }

    /// Looks at `points` (the path's after [`Lowest::through`], in step order) up to the first
    /// whose row has not arrived.
    pub fn catch_up<L: StepLosses + ?Sized>(
        &mut self,
        points: impl Iterator<Item = (u64, [f64; 2])>,
        losses: &L,
    ) {
        for (k, p) in points {
            match losses.loss_at(k as usize) {
                Some(loss)
                    if loss.is_finite()
                        && self.best.is_none_or(|(_, _, b)| loss.total_cmp(&b).is_lt()) =>
                {
                    self.best = Some((k, p, loss));
                }
                None if k as usize >= losses.recorded() => break,
                _ => {}
            }
            self.through = Some(k);
        }
    }

    /// Rows from `len` on come again, and their losses may differ (a run leaving a batch takes
    /// its current row again alone, rounded its own way): their points are looked at again when
    /// they arrive, and the whole path if the lowest was one of them.
    pub fn again_from(&mut self, len: usize) {
        if len == 0 || self.best.is_some_and(|(k, _, _)| k >= len as u64) {
            *self = Self::default();
        } else {
            self.through = self.through.map(|k| k.min(len as u64 - 1));
        }
    }
}

/// Plane bounds that hold `points` with a margin, at least `min_half` either side of their
/// centre (so a single point still gets a view).
pub fn fit_bounds(
    points: impl Iterator<Item = [f64; 2]>,
    min_half: f64,
) -> Option<((f64, f64), (f64, f64))> {
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for p in points.filter(|p| p[0].is_finite() && p[1].is_finite()) {
        for d in 0..2 {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
    }
    if lo[0] > hi[0] {
        return None;
    }
    let axis = |d: usize| {
        let c = (lo[d] + hi[d]) / 2.0;
        let half = ((hi[d] - lo[d]) / 2.0 * 1.2)
            .max(min_half)
            .max(c.abs() * 1e-6);
        (c - half, c + half)
    };
    Some((axis(0), axis(1)))
}

/// The part of the segment `p`-`q` inside the rectangle `lo`-`hi` (Liang-Barsky), as the
/// segment's parameters `(t0, t1)` in `[0, 1]`; None when it misses the rectangle or is not
/// finite. Drawing clips paths with it, so far-away points cost nothing and overflow nothing.
pub fn clip(p: [f64; 2], q: [f64; 2], lo: [f64; 2], hi: [f64; 2]) -> Option<(f64, f64)> {
    if !p.iter().chain(&q).all(|v| v.is_finite()) {
        return None;
    }
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for k in 0..2 {
        let d = q[k] - p[k];
        for (towards, room) in [(-d, p[k] - lo[k]), (d, hi[k] - p[k])] {
            if towards == 0.0 {
                if room < 0.0 {
                    return None;
                }
            } else if towards < 0.0 {
                t0 = t0.max(room / towards);
            } else {
                t1 = t1.min(room / towards);
            }
        }
    }
    (t0 <= t1).then_some((t0, t1))
}

/// Cells a side of a landscape drawn as a picture, where the loss evaluates as a batch (a few
/// milliseconds for a test function): fine enough to shade smoothly and find the minimum.
pub const PICTURE_CELLS: usize = 256;

/// One contour level's lines, in plane coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct ContourLevel {
    pub level: f64,
    pub lines: Vec<Vec<[f64; 2]>>,
}

/// The contour lines of `grid` at `levels` (marching squares, by the `contour` crate), each
/// line through interpolated points between cell centres. Lines stop at the grid's edge instead
/// of running along it; cells not computed or not finite count as above every level.
pub fn contours(grid: &Grid, levels: &[f64]) -> Vec<ContourLevel> {
    let spec = &grid.spec;
    if spec.nx < 2 || spec.ny < 2 {
        return Vec::new();
    }
    let values: Vec<f64> = grid
        .values
        .iter()
        .map(|v| v.filter(|v| v.is_finite()).unwrap_or(f64::MAX))
        .collect();
    let builder = contour::ContourBuilder::new(spec.nx, spec.ny, true);
    let Ok(lines) = builder.lines(&values, levels) else {
        return Vec::new();
    };
    let (nx, ny) = (spec.nx as f64, spec.ny as f64);
    let to_plane = |c: &contour::Pt| -> Option<[f64; 2]> {
        let inside = c.x > 0.0 && c.x < nx && c.y > 0.0 && c.y < ny;
        inside.then(|| {
            [
                spec.x.0 + c.x / nx * (spec.x.1 - spec.x.0),
                spec.y.0 + c.y / ny * (spec.y.1 - spec.y.0),
            ]
        })
    };
    lines
        .into_iter()
        .map(|line| {
            let level = line.threshold();
            let mut pieces = Vec::new();
            for ring in line.geometry().0.iter() {
                let mut piece: Vec<[f64; 2]> = Vec::new();
                for c in ring.0.iter() {
                    match to_plane(c) {
                        Some(p) => piece.push(p),
                        None if piece.len() >= 2 => pieces.push(std::mem::take(&mut piece)),
                        None => piece.clear(),
                    }
                }
                if piece.len() >= 2 {
                    pieces.push(piece);
                }
            }
            ContourLevel {
                level,
                lines: pieces,
            }
        })
        .collect()
}

/// Colour of non-finite cells, apart from the ramp so an overflow never reads as "high".
pub const NONFINITE_RGB: [u8; 3] = [230, 40, 40];

/// Bands of the colour scale: contour lines appear at their edges.
pub const BANDS: usize = 14;

/// Maps loss values to `[0, 1]`, linearly or by log10 (for losses spanning decades).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorScale {
    pub lo: f64,
    pub hi: f64,
    pub log: bool,
    /// Values below this are drawn as this (log scale only: at most six decades are shown).
    floor: f64,
}

impl ColorScale {
    /// The scale for `values` (finite ones only). `log: None` picks log when the values are
    /// non-negative and span two decades or more.
    pub fn fit(values: impl Iterator<Item = f64>, log: Option<bool>) -> Option<Self> {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            return None;
        }
        let can_log = lo >= 0.0 && hi > 0.0;
        let log = can_log && log.unwrap_or(hi >= 100.0 * lo);
        Some(Self {
            lo,
            hi,
            log,
            floor: lo.max(hi * 1e-6),
        })
    }

    fn f(&self, v: f64) -> f64 {
        if self.log {
            v.max(self.floor).log10()
        } else {
            v
        }
    }

    /// Position of `v` on the scale, None for a non-finite value.
    pub fn t(&self, v: f64) -> Option<f64> {
        if !v.is_finite() {
            return None;
        }
        let (a, b) = (self.f(self.lo), self.f(self.hi));
        Some(if b > a {
            ((self.f(v) - a) / (b - a)).clamp(0.0, 1.0)
        } else {
            0.0
        })
    }

    /// The value at position `t` (for legends).
    pub fn value_at(&self, t: f64) -> f64 {
        let lo = if self.log { self.floor } else { self.lo };
        let (a, b) = (self.f(lo), self.f(self.hi));
        let x = a + t * (b - a);
        if self.log { 10f64.powf(x) } else { x }
    }

    /// The colour of `v` on the continuous ramp (pictures shade smoothly).
    pub fn smooth_rgb(&self, v: f64) -> [u8; 3] {
        self.t(v).map_or(NONFINITE_RGB, ramp)
    }

    /// Values for contour lines: every power of ten in range on a log scale (with 2x and 5x
    /// between when it spans fewer than three decades), else 6 to 12 round values (1, 2 or 5
    /// times a power of ten apart).
    pub fn levels(&self) -> Vec<f64> {
        let lo = if self.log { self.floor } else { self.lo };
        if self.hi <= lo || !self.hi.is_finite() {
            return Vec::new();
        }
        let within = |v: &f64| *v > lo && *v < self.hi;
        if self.log {
            let (a, b) = (lo.log10().floor() as i32, self.hi.log10().ceil() as i32);
            let steps: &[f64] = if b - a < 3 { &[1.0, 2.0, 5.0] } else { &[1.0] };
            (a..=b)
                .flat_map(|k| steps.iter().map(move |m| m * 10f64.powi(k)))
                .filter(within)
                .collect()
        } else {
            let step = nice_step((self.hi - lo) / 8.0);
            let first = (lo / step).ceil() as i64;
            let last = (self.hi / step).floor() as i64;
            (first..=last)
                .map(|k| k as f64 * step)
                .filter(within)
                .collect()
        }
    }

    /// The banded colour of `v`.
    pub fn rgb(&self, v: f64) -> [u8; 3] {
        match self.t(v) {
            Some(t) => {
                ramp(((t * BANDS as f64).floor().min(BANDS as f64 - 1.0) + 0.5) / BANDS as f64)
            }
            None => NONFINITE_RGB,
        }
    }
}

/// The round step (1, 2 or 5 times a power of ten) nearest above `raw`.
pub fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * p)
}

/// A perceptually ordered dark-blue → green → yellow ramp (viridis' anchor colours), `t` in
/// `[0, 1]`.
pub fn ramp(t: f64) -> [u8; 3] {
    const ANCHORS: [[f64; 3]; 6] = [
        [68.0, 1.0, 84.0],
        [65.0, 68.0, 135.0],
        [42.0, 120.0, 142.0],
        [34.0, 168.0, 132.0],
        [122.0, 209.0, 81.0],
        [253.0, 231.0, 37.0],
    ];
    let x = t.clamp(0.0, 1.0) * (ANCHORS.len() - 1) as f64;
    let k = (x.floor() as usize).min(ANCHORS.len() - 2);
    let f = x - k as f64;
    let c = |d: usize| (ANCHORS[k][d] + f * (ANCHORS[k + 1][d] - ANCHORS[k][d])).round() as u8;
    [c(0), c(1), c(2)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(dims: &[&[usize]]) -> Vec<ParamShape> {
        dims.iter()
            .enumerate()
            .map(|(i, d)| ParamShape {
                name: format!("p{i}"),
                dims: d.to_vec(),
            })
            .collect()
    }

    #[test]
    fn filter_normalized_filters_have_the_weights_norms() {
        let params = shapes(&[&[3, 2], &[2], &[]]);
        let weights = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0, -7.0];
        let direction = [0.5, -1.0, 2.0, 0.25, -3.0, 1.5, 9.0, 9.0, 0.1];
        let d = filter_normalized(&direction, &weights, &params);
        // W is 3x2: its filters are the two columns (elements 0,2,4 and 1,3,5).
        let col = |v: &[f64], c: usize| (0..3).map(|r| v[r * 2 + c].powi(2)).sum::<f64>().sqrt();
        assert!((col(&d, 0) - col(&weights, 0)).abs() < 1e-12);
        assert!((col(&d, 1) - col(&weights, 1)).abs() < 1e-12);
        // Directions within a filter keep their proportions.
        assert!((d[0] / d[2] - direction[0] / direction[2]).abs() < 1e-12);
        // The zero bias gets no direction; the scalar keeps its size 7.
        assert_eq!(&d[6..8], &[0.0, 0.0]);
        assert!((d[8].abs() - 7.0).abs() < 1e-12);
    }

    #[test]
    fn projection_recovers_plane_coordinates() {
        let origin = vec![1.0, -2.0, 0.5];
        let plane = Plane::new(
            PlaneKind::Random,
            origin,
            vec![1.0, 1.0, 0.0],
            vec![0.0, 1.0, 2.0],
            ["a".into(), "b".into()],
        );
        let p = plane.point(0.75, -1.5);
        let [a, b] = plane.project(&p);
        assert!((a - 0.75).abs() < 1e-12 && (b + 1.5).abs() < 1e-12);
        assert!(plane.distance(&p) < 1e-12);
    }

    #[test]
    fn update_plane_is_orthogonal_and_equal_norm() {
        let plane = Plane::update(vec![0.0; 4], vec![3.0, 0.0, 4.0, 0.0], 7).unwrap();
        assert!(dot(&plane.d1, &plane.d2).abs() < 1e-12);
        assert!((dot(&plane.d2, &plane.d2).sqrt() - 5.0).abs() < 1e-12);
        assert!(Plane::update(vec![0.0; 2], vec![0.0, 0.0], 7).is_none());
    }

    #[test]
    fn progressive_order_covers_every_cell_once_coarse_first() {
        let spec = GridSpec {
            x: (0.0, 1.0),
            y: (0.0, 1.0),
            nx: 19,
            ny: 13,
        };
        let order = spec.progressive_order();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..19 * 13).collect::<Vec<_>>());
        // The first cells are the stride-8 lattice: 3 columns x 2 rows.
        assert_eq!(&order[..6], &[0, 8, 16, 8 * 19, 8 * 19 + 8, 8 * 19 + 16]);
    }

    /// Rows `first..len` of a run whose history dropped the ones before `first`.
    struct Window {
        first: usize,
        losses: Vec<f64>,
    }

    impl StepLosses for Window {
        fn loss_at(&self, step: usize) -> Option<f64> {
            step.checked_sub(self.first)
                .and_then(|i| self.losses.get(i).copied())
        }
        fn last_loss(&self) -> Option<f64> {
            self.losses.last().copied()
        }
        fn recorded(&self) -> usize {
            self.first + self.losses.len()
        }
    }

    #[test]
    fn the_lowest_point_kept_up_as_points_and_rows_arrive_is_the_one_found_afresh() {
        // Losses with a NaN, a tie for the lowest (the earlier point counts) and a lower one late.
        let mut losses: Vec<f64> = (0..60).map(|k| 2.0 + (k as f64 * 0.7).sin()).collect();
        losses[5] = f64::NAN;
        losses[20] = 0.5;
        losses[30] = 0.5;
        losses[55] = 0.25;
        let path: Vec<(u64, [f64; 2])> = (0..60).map(|k| (k, [k as f64, -(k as f64)])).collect();
        let mut kept = Lowest::default();
        let look = |kept: &mut Lowest, points: &[(u64, [f64; 2])], rows: &Window| {
            let through = kept.through();
            let new = points
                .iter()
                .copied()
                .filter(|(k, _)| through.is_none_or(|t| *k > t));
            kept.catch_up(new, rows);
        };
        // Points arrive ahead of their rows, then rows ahead of their points.
        for n in 0..=60 {
            let rows = Window {
                first: 0,
                losses: losses[..n].to_vec(),
            };
            let points = &path[..(n + 3).min(60)];
            look(&mut kept, points, &rows);
            assert_eq!(
                kept.get(),
                lowest(points.iter().copied(), &losses[..n]),
                "{n}"
            );
            if n == 40 {
                // Rows from 38 on come again: the lowest, at 20, stands.
                kept.again_from(38);
                assert_eq!(kept.through(), Some(37));
                assert_eq!(kept.get(), Some(([20.0, -20.0], 0.5)));
            }
            if n == 57 {
                // Rows from 55 on come again, the lowest's among them: the path is looked at
                // afresh.
                kept.again_from(55);
                assert_eq!((kept.get(), kept.through()), (None, None));
            }
        }
        assert_eq!(kept.get(), Some(([55.0, -55.0], 0.25)));
        // Points whose rows were dropped get no loss and do not hold up the ones after them.
        let rows = Window {
            first: 10,
            losses: losses[10..25].to_vec(),
        };
        let mut late = Lowest::default();
        look(&mut late, &path[..30], &rows);
        assert_eq!(late.get(), Some(([20.0, -20.0], 0.5)));
        assert_eq!(late.through(), Some(24));
        // -0 is below +0, as `lowest` orders them.
        let zeros = [1.0, 1.0, 0.0, 1.0, -0.0];
        let mut signed = Lowest::default();
        signed.catch_up(path[..5].iter().copied(), &zeros[..]);
        assert_eq!(signed.get(), lowest(path[..5].iter().copied(), &zeros[..]));
        assert_eq!(signed.get().map(|(p, _)| p), Some([4.0, -4.0]));
    }

    #[test]
    fn views_follow_losses_below_a_divergence_limit() {
        let history = |losses: &[f64]| losses.to_vec();
        // Starting at 0 and going negative: every point is followed.
        let down = history(&[0.0, -1.0, -5.0]);
        let limit = follow_limit(std::iter::once(&down[..]));
        let path = [
            (0, [0.0, 0.0]),
            (1, [0.5, 1.0]),
            (2, [1.0, 2.0]),
            (3, [1.1, 2.1]),
        ];
        assert_eq!(followed(path.into_iter(), &down[..], limit).count(), 4);
        // Diverging from 2: losses above 2 + 100 * 2 are dropped, and so is the current point
        // after them; NaN is never followed.
        let up = history(&[2.0, 150.0, 1e6, f64::NAN]);
        let limit = follow_limit(std::iter::once(&up[..]));
        assert_eq!(limit, 202.0);
        let path = [
            (0, [0.0; 2]),
            (1, [1.0; 2]),
            (2, [9.0; 2]),
            (3, [99.0; 2]),
            (4, [1e9; 2]),
        ];
        let kept: Vec<[f64; 2]> = followed(path.into_iter(), &up[..], limit).collect();
        assert_eq!(kept, vec![[0.0; 2], [1.0; 2]]);
        assert_eq!(lowest(path.into_iter(), &up[..]), Some(([0.0; 2], 2.0)));
    }

    #[test]
    fn log_scale_for_losses_spanning_decades() {
        let s = ColorScale::fit([0.01, 1.0, 2500.0].into_iter(), None).unwrap();
        assert!(s.log);
        assert!((s.t(1.0).unwrap() - (2.0 / 5.39794)).abs() < 1e-4);
        assert_eq!(s.t(f64::NAN), None);
        assert_eq!(s.rgb(f64::INFINITY), NONFINITE_RGB);
        let lin = ColorScale::fit([-1.0, 3.0].into_iter(), None).unwrap();
        assert!(!lin.log);
        assert_eq!(lin.t(1.0), Some(0.5));
        assert!((lin.value_at(0.25) - 0.0).abs() < 1e-12);
    }
}
