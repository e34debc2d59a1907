//! The Landscape tab's state for one loss file: the plane from the worker, the view bounds
//! (following the paths until the user zooms or pans), the grid being filled by the landscape
//! service, and the learning-rate slice of the selected run. Part of the model: only
//! `App::update` calls its mutating methods.

use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use super::session::RunView;
use crate::compile::CompiledFile;
use crate::landscape::service::{self, Job, JobId, LossKey, Report};
use crate::landscape::surface::{LrLine, Mode};
use crate::landscape::{Grid, GridSpec, Plane, PlaneKind, follow_limit, followed, view_for};
use crate::run::worker::{Command, RunId};

/// View bounds in plane coordinates: `((x0, x1), (y0, y1))`.
pub type Bounds = ((f64, f64), (f64, f64));

/// The loss along the next update of a run, at learning-rate multiples `s`.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSlice {
    pub run: RunId,
    pub step: u64,
    /// The run's lr multiplier when the slice was taken (`+`/`-` make it stale).
    pub lr_scale: f64,
    pub line: LrLine,
}

/// Cells a side of a grid evaluated point by point (a 64x64 grid of the MLP benchmark takes
/// about 40 s; batched losses get one cell per half-block).
pub const MAX_POINTWISE: usize = 64;
/// Least time between two learning-rate slices of a running run: each costs the worker one
/// gradient evaluation and the landscape thread a line of forward passes, CPU the runs want
/// (longer for slow models, see `sync_slice`).
const SLICE_EVERY: Duration = Duration::from_millis(250);
/// Cells a side of a batched grid.
const MAX_BATCHED: usize = 256;

/// What the tab shows of a session, for [`LandscapeView::sync`].
pub struct Shown<'a> {
    pub runs: &'a [RunView],
    pub selected: Option<&'a RunView>,
    /// Param values in all.
    pub dims: usize,
    pub playing: bool,
    /// The size in cells of the map.
    pub map: (u16, u16),
}

/// What the user made of the view, kept over an edit of the file: the colour scale, the kind
/// of plane, and the zoomed or panned bounds (meaningful again only on the params' own
/// coordinates).
#[derive(Debug, Clone, PartialEq)]
pub struct KeptView {
    log: Option<bool>,
    kind: PlaneKind,
    view: Option<Bounds>,
}

/// What a grid was requested for; a different key means a new grid.
#[derive(Debug, Clone, PartialEq)]
struct GridKey {
    loss: LossKey,
    plane: u64,
    view: Bounds,
    nx: usize,
    ny: usize,
}

/// The Landscape tab's state for one loss file (see the module doc).
pub struct LandscapeView {
    pub plane: Option<Arc<Plane>>,
    /// The run and step a slice passes through.
    plane_at: Option<(RunId, u64)>,
    plane_generation: u64,
    /// The kind of plane to ask for (losses with more than two param values).
    pub kind: PlaneKind,
    seed: u64,
    plane_requested: bool,
    pub view: Option<Bounds>,
    /// Whether the view grows to hold the paths (until the user zooms or pans).
    pub follow: bool,
    /// The grid shown: the latest one with any cells, filled in place as cells arrive.
    pub grid: Option<Grid>,
    /// The loss `grid` is of: the run definition and dtype whose objective is drawn.
    drawn: Option<LossKey>,
    /// Each run definition's objective, as the first definition with the same one.
    objectives: Vec<usize>,
    /// The generation being filled, its spec (until its first cells replace `grid`: the previous
    /// grid stays on screen until then) and the loss it is of.
    filling: Option<(u64, Option<GridSpec>, Option<LossKey>)>,
    pub mode: Option<Mode>,
    /// How long the shown grid took, once complete.
    pub elapsed: Option<Duration>,
    generation: u64,
    requested: Option<GridKey>,
    pub slice: Option<LrSlice>,
    /// The slice asked for: its tag (0 until the worker answers), run, step and lr multiplier.
    slice_wanted: Option<(u64, RunId, u64, f64)>,
    slice_tag: u64,
    slice_asked: Option<Instant>,
    /// Log colour scale: None decides from the values.
    pub log: Option<bool>,
    /// Bounds zoomed or panned to before an edit, for the first plane of the params' own
    /// coordinates.
    kept: Option<Bounds>,
    pub error: Option<String>,
    /// The file's known optimum as flat params (pictures mark it).
    pub optimum: Option<Vec<f64>>,
    jobs: Sender<Job>,
}

impl LandscapeView {
    /// Starts the landscape service for a file; its reports go to `emit`.
    pub fn new(name: &str, compiled: CompiledFile, emit: service::Emit) -> Self {
        let (jobs, rx) = channel();
        let objectives = objectives(&compiled);
        let optimum = crate::landscape::optimum_point(&compiled);
        let error = service::spawn(name, compiled, rx, emit)
            .err()
            .map(|e| format!("cannot start the landscape thread: {e}"));
        Self {
            plane: None,
            plane_at: None,
            plane_generation: 0,
            kind: PlaneKind::Random,
            seed: 0,
            plane_requested: false,
            view: None,
            follow: true,
            grid: None,
            filling: None,
            mode: None,
            elapsed: None,
            generation: 0,
            requested: None,
            drawn: None,
            objectives,
            slice: None,
            slice_wanted: None,
            slice_tag: 0,
            slice_asked: None,
            log: None,
            kept: None,
            error,
            optimum,
            jobs,
        }
    }

    /// A new plane from the worker: the grid and slice start again on it.
    pub fn on_plane(&mut self, plane: Arc<Plane>, at: Option<(RunId, u64)>) {
        let kept = self
            .kept
            .take()
            .filter(|_| plane.kind == PlaneKind::Coordinates);
        self.plane = Some(plane);
        self.plane_at = at;
        self.elapsed = None;
        self.plane_generation += 1;
        self.plane_requested = false;
        self.follow = kept.is_none();
        self.view = kept;
        self.grid = None;
        self.drawn = None;
        self.filling = None;
    }

    /// What of this view to keep over an edit of the file.
    pub fn kept(&self) -> KeptView {
        KeptView {
            log: self.log,
            kind: self.kind,
            view: self.view.filter(|_| !self.follow),
        }
    }

    /// Takes over the view an earlier session of the file kept.
    pub fn keep_view(&mut self, k: KeptView) {
        self.log = k.log;
        self.kind = k.kind;
        self.kept = k.view;
    }

    /// A report from the landscape thread: grid cells, a finished grid or a slice.
    pub fn on_report(&mut self, report: Report) {
        match report {
            Report::GridStarted {
                generation,
                spec,
                mode,
            } if generation == self.generation => {
                let loss = self.requested.as_ref().map(|k| k.loss.clone());
                self.filling = Some((generation, Some(spec), loss));
                self.mode = Some(mode);
                self.elapsed = None;
                self.error = None;
            }
            Report::GridCells { generation, cells } => {
                if let Some((g, spec, loss)) = &mut self.filling
                    && *g == generation
                {
                    if let Some(spec) = spec.take() {
                        self.grid = Some(Grid::new(spec));
                        self.drawn = loss.clone();
                    }
                    if let Some(grid) = &mut self.grid {
                        for (k, v) in cells {
                            grid.values[k] = Some(v);
                        }
                    }
                }
            }
            Report::GridDone {
                generation,
                elapsed,
            } => {
                if self
                    .filling
                    .as_ref()
                    .is_some_and(|(g, ..)| *g == generation)
                {
                    self.filling = None;
                    self.elapsed = Some(elapsed);
                }
            }
            Report::Line { tag, line } => {
                if let Some((t, run, step, lr_scale)) = self.slice_wanted
                    && t == tag
                {
                    self.slice = Some(LrSlice {
                        run,
                        step,
                        lr_scale,
                        line,
                    });
                    self.slice_wanted = None;
                }
            }
            Report::Failed { job, why } => {
                // Only the failed job stops waiting; the next frame may ask again.
                match job {
                    JobId::Grid(g) if self.filling.as_ref().is_some_and(|(f, ..)| *f == g) => {
                        self.filling = None;
                    }
                    JobId::Line(t) if self.slice_wanted.is_some_and(|w| w.0 == t) => {
                        self.slice_wanted = None;
                    }
                    _ => {}
                }
                self.error = Some(why);
            }
            Report::GridStarted { .. } => {}
        }
    }

    /// The worker's answer to [`Command::NextUpdate`]: evaluate the line on the service.
    pub fn on_next_update(
        &mut self,
        run: RunId,
        step: u64,
        loss: LossKey,
        origin: Vec<f64>,
        direction: Vec<f64>,
    ) {
        self.slice_tag += 1;
        let lr_scale = self.slice_wanted.map_or(1.0, |w| w.3);
        self.slice_wanted = Some((self.slice_tag, run, step, lr_scale));
        let _ = self.jobs.send(Job::Line {
            tag: self.slice_tag,
            loss,
            origin,
            direction,
        });
    }

    /// Asks for whatever the tab needs and does not have: a plane, a grid for the current view
    /// and size, and the selected run's learning-rate slice. Called once a frame while the tab
    /// is shown.
    pub fn sync(&mut self, session: Shown, send: &dyn Fn(Command)) {
        let Shown {
            runs,
            selected,
            dims,
            playing,
            map,
        } = session;
        if let Some(r) = selected {
            self.sync_slice(r, playing, send);
        }
        // A slice goes through the selected run's current point: a new one once the last grid is
        // complete and the run has moved on (unless the user zoomed or panned). While the runs
        // play, only grids that take under a second are redone: a slow one would take CPU from
        // them for good.
        let moved = selected.is_some_and(|r| self.plane_at != Some((r.info.id, r.steps() as u64)));
        let settled = self
            .elapsed
            .is_some_and(|t| !playing || t < Duration::from_secs(1))
            && self.follow;
        let wanted = match &self.plane {
            None => dims > 2,
            Some(p) => p.kind != PlaneKind::Coordinates && moved && settled,
        };
        if wanted
            && !self.plane_requested
            && let Some(r) = selected
        {
            self.plane_requested = true;
            send(Command::Plane {
                run: r.info.id,
                kind: self.kind,
                seed: self.seed,
            });
        }
        let Some(plane) = self.plane.clone() else {
            return;
        };
        if self.follow {
            let outside = |v: &Bounds| {
                framed(runs)
                    .any(|p| !(v.0.0..=v.0.1).contains(&p[0]) || !(v.1.0..=v.1.1).contains(&p[1]))
            };
            if self.view.as_ref().is_none_or(outside) {
                self.fit(runs, &plane);
            }
        }
        let (Some(view), Some(r)) = (self.view, selected) else {
            return;
        };
        let key = GridKey {
            loss: r.info.overrides.loss_key(r.info.def, r.info.dtype),
            plane: self.plane_generation,
            view,
            nx: usize::from(map.0).clamp(2, MAX_BATCHED),
            ny: (2 * usize::from(map.1)).clamp(2, MAX_BATCHED),
        };
        if self.requested.as_ref() != Some(&key) {
            self.generation += 1;
            let _ = self.jobs.send(Job::Grid {
                generation: self.generation,
                loss: key.loss.clone(),
                plane,
                spec: GridSpec {
                    x: view.0,
                    y: view.1,
                    nx: key.nx,
                    ny: key.ny,
                },
                max_pointwise: MAX_POINTWISE,
            });
            self.requested = Some(key);
        }
    }

    /// Asks for the selected run's learning-rate slice when its step has moved on (at most every
    /// [`SLICE_EVERY`], one request in flight).
    fn sync_slice(&mut self, r: &RunView, playing: bool, send: &dyn Fn(Command)) {
        let step = r.steps() as u64;
        let fresh = self
            .slice
            .as_ref()
            .is_some_and(|s| s.run == r.info.id && s.step == step && s.lr_scale == r.lr_scale);
        // A slice costs the worker a gradient: while a slow model plays, at most one per 20 of
        // its steps.
        let step_time = r
            .history
            .cores()
            .last()
            .filter(|_| playing)
            .map_or(Duration::ZERO, |c| {
                Duration::from_secs_f32(c.wall_us.max(0.0) * 1e-6)
            });
        let every = SLICE_EVERY.max(step_time * 20);
        let due = self.slice_asked.is_none_or(|t| t.elapsed() >= every);
        if !fresh && due && self.slice_wanted.is_none() && r.halted.is_none() {
            // Marks the request as in flight until the worker answers.
            self.slice_wanted = Some((0, r.info.id, step, r.lr_scale));
            self.slice_asked = Some(Instant::now());
            send(Command::NextUpdate(r.info.id));
        }
    }

    /// The worker could not answer (a failed evaluation, or the run is gone): nothing asked of it
    /// is in flight any more.
    pub fn on_worker_gave_up(&mut self) {
        self.slice_wanted = None;
        self.plane_requested = false;
    }

    /// Bounds that hold every path (and the plane's origin for slices), following them again.
    pub fn fit(&mut self, runs: &[RunView], plane: &Plane) {
        if let Some(v) = view_for(plane, framed(runs)) {
            self.view = Some(v);
        }
        self.follow = true;
    }

    /// Flips the colour scale between log and linear, from what is shown now.
    pub fn toggle_log(&mut self) {
        let shown = self
            .grid
            .as_ref()
            .and_then(|g| crate::landscape::ColorScale::fit(g.finite(), self.log))
            .is_some_and(|c| c.log);
        self.log = Some(!shown);
    }

    /// Zooms by `factor` (below 1: in) around the view's centre.
    pub fn zoom(&mut self, factor: f64) {
        if let Some(((x0, x1), (y0, y1))) = self.view {
            let scale = |a: f64, b: f64| {
                let (c, h) = ((a + b) / 2.0, (b - a) / 2.0 * factor);
                (c - h, c + h)
            };
            self.view = Some((scale(x0, x1), scale(y0, y1)));
            self.follow = false;
        }
    }

    /// Moves the view by fractions of its width and height.
    pub fn pan(&mut self, fx: f64, fy: f64) {
        if let Some(((x0, x1), (y0, y1))) = self.view {
            let (dx, dy) = ((x1 - x0) * fx, (y1 - y0) * fy);
            self.view = Some(((x0 + dx, x1 + dx), (y0 + dy, y1 + dy)));
            self.follow = false;
        }
    }

    /// A new plane of `kind` through the selected run (a new random direction each time); the
    /// worker keeps a two-param loss on its coordinates.
    pub fn new_plane(&mut self, kind: PlaneKind, run: RunId, send: &dyn Fn(Command)) {
        self.kind = kind;
        self.seed += 1;
        self.plane_requested = true;
        send(Command::Plane {
            run,
            kind,
            seed: self.seed,
        });
    }

    /// The lowest loss on a path point of the runs whose objective the map draws (the same loss
    /// and consts, in the same dtype: a variant of another optimizer counts), and where; None
    /// until a map is drawn.
    pub fn best(&self, runs: &[RunView]) -> Option<([f64; 2], f64)> {
        let drawn = self.drawn.as_ref()?;
        let objective = |def: usize| self.objectives.get(def).copied().unwrap_or(def);
        runs.iter()
            .filter(|r| {
                let key = r.info.overrides.loss_key(r.info.def, r.info.dtype);
                objective(key.def) == objective(drawn.def)
                    && key.dtype == drawn.dtype
                    && key.consts == drawn.consts
            })
            .filter_map(|r| r.lowest.get())
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Each run definition's objective (its loss as written and its consts), named by the first
/// definition that has the same one.
fn objectives(compiled: &CompiledFile) -> Vec<usize> {
    let file = &compiled.file;
    let text = |span: &std::ops::Range<usize>| file.source.text.get(span.clone()).unwrap_or("");
    let mut consts: Vec<(&str, u64)> = file
        .consts
        .iter()
        .map(|c| (c.name.node.as_str(), c.value.to_bits()))
        .collect();
    consts.sort_unstable();
    let base = (text(&file.loss.span), consts);
    let defs: Vec<_> = std::iter::once(base.clone())
        .chain(file.variants.iter().map(|v| {
            let mut consts = base.1.clone();
            for c in &v.consts {
                let name = c.name.node.as_str();
                match consts.iter_mut().find(|(n, _)| *n == name) {
                    Some(slot) => slot.1 = c.value.to_bits(),
                    None => consts.push((name, c.value.to_bits())),
                }
            }
            consts.sort_unstable();
            let loss = v.loss.as_ref().map_or(base.0, |l| text(&l.span));
            (loss, consts)
        }))
        .collect();
    defs.iter()
        .map(|d| defs.iter().position(|e| e == d).unwrap_or(0))
        .collect()
}

/// Every run's path points that the view follows (see [`followed`]).
fn framed(runs: &[RunView]) -> impl Iterator<Item = [f64; 2]> + '_ {
    let limit = follow_limit(runs.iter().map(|r| &r.history));
    runs.iter()
        .flat_map(move |r| followed(r.path.iter().copied(), &r.history, limit))
}

impl Drop for LandscapeView {
    /// Tells the service to stop, without waiting for the grid chunk it is computing (at a low
    /// priority, under load that can take seconds).
    fn drop(&mut self) {
        let _ = self.jobs.send(Job::Shutdown);
    }
}
