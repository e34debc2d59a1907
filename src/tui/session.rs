//! One loss file's live state: its runs as the worker reports them (applying each worker
//! event), the warnings log, the landscape view, and the threads that step and draw it.

use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::Instant;

use ratatui::style::Color;

use super::app::Msg;
use super::chart::Stream;
use super::landscape_view::{KeptView, LandscapeView, Shown};
use crate::compile::CompiledFile;
use crate::compile::gradcheck::ParamCheck;
use crate::compile::hessian::Hessian;
use crate::diagnostic::Diagnostic;
use crate::landscape::{Lowest, PlaneKind};
use crate::optim::tricks::ChainSpec;
use crate::run::history::{History, StepRecord, flags};
use crate::run::trajectory::Decimated;
use crate::run::worker::{self, Command, Event, ParamStats, Refusal, RunId, RunInfo, RunPlan};

/// Whether a run view is stepped by its session's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The worker steps it.
    Live,
    /// Carried over an edit of the file, waiting for the new worker to start it.
    Starting,
    /// Its variant is no longer in the file: kept with its curves until removed (`x`).
    Gone,
}

/// A run's curves from a version of the file before an edit, drawn faded under the new ones.
#[derive(Debug, Clone)]
pub struct Before {
    pub history: History,
    pub streams: Vec<Stream>,
    /// What the edit changed, for the legend (`eps 1e-7 → 1e-4`).
    pub change: String,
}

/// Versions before an edit that a run keeps on its charts.
pub const KEEP_VERSIONS: usize = 3;

/// A run as the UI keeps it: what the worker reported.
#[derive(Debug, Clone)]
pub struct RunView {
    pub info: RunInfo,
    pub color: Color,
    pub history: History,
    pub params: Vec<ParamStats>,
    pub halted: Option<(u64, String)>,
    pub lr_scale: f64,
    /// Steps at which the user changed the learning rate.
    pub lr_changes: Vec<u64>,
    /// Each change as `(step, multiplier)`, to set again at the same steps after an edit.
    pub lr_set: Vec<(u64, f64)>,
    /// The last change's step and the multiplier before it: that step's row was recorded
    /// with the old one, and the next update takes the new one.
    pub lr_before: Option<(u64, f64)>,
    pub clipped: u64,
    pub skipped: u64,
    /// Updates that left a param with a gradient where it was.
    pub stalled: u64,
    pub first_nonfinite: Option<u64>,
    /// The last gradient check: the step and each param's result.
    pub gradcheck: Option<(u64, Vec<ParamCheck>)>,
    /// The last curvature estimate and its step.
    pub curvature: Option<(u64, crate::compile::curvature::Curvature)>,
    /// The gradient formula of one of its params (`G`), and the step it was looked at.
    pub formula: Option<(u64, Box<crate::compile::backward::Formula>)>,
    /// The last whole Hessian and its step, or why there is none.
    pub hessian: Option<(u64, Result<Arc<Hessian>, String>)>,
    /// The last lr range test (`F`) and the step it started from, or why it could not run.
    pub lrfind: Option<(u64, Result<Box<crate::run::lrfind::LrFind>, String>)>,
    /// Chart summaries of every metric, kept up to date with `history`.
    pub streams: Vec<super::chart::Stream>,
    /// Its path on the landscape plane: `(step, plane coordinates)`.
    pub path: Decimated<[f64; 2]>,
    /// The lowest point of `path` (see [`RunView::score_path`]).
    pub lowest: Lowest,
    pub link: Link,
    /// Its curves before the last edits of the file, newest first.
    pub before: Vec<Before>,
    /// Its `[metrics]` values at the steps the worker reported them.
    pub metrics: super::metrics::MetricTrack,
}

/// Path points a run view keeps (beyond that, every other one is dropped).
const PATH_POINTS: usize = 16384;

impl RunView {
    /// Forgets its path (a new plane, a rewind, a restart).
    fn clear_path(&mut self) {
        self.path = Decimated::new(PATH_POINTS);
        self.lowest = Lowest::default();
    }

    /// Brings [`RunView::lowest`] up to date with the path points and rows that arrived.
    fn score_path(&mut self) {
        let from = self.lowest.through();
        self.lowest
            .catch_up(self.path.after(from).copied(), &self.history);
    }

    /// Keeps the answers to `g`, `h`, `G` and `F` taken at the steps `kept` accepts and drops
    /// the others: after a rewind or a reset the run no longer has the steps past it, and the
    /// inspector showed their answers as the run's.
    fn keep_answers(&mut self, kept: impl Fn(u64) -> bool) {
        self.gradcheck.take_if(|(k, _)| !kept(*k));
        self.curvature.take_if(|(k, _)| !kept(*k));
        self.formula.take_if(|(k, _)| !kept(*k));
        self.hessian.take_if(|(k, _)| !kept(*k));
        self.lrfind.take_if(|(k, _)| !kept(*k));
    }

    /// The step it is at (updates taken): its history holds rows 0..=steps.
    pub fn steps(&self) -> usize {
        self.history.len().saturating_sub(1)
    }

    /// Whether it has taken all its steps or halted: playing does not move it until it is
    /// played on.
    pub fn done(&self) -> bool {
        self.halted.is_some() || self.steps() as u64 >= self.info.steps
    }

    /// The runs list's word for it: gone, starting, halted@step, finished, running or paused.
    pub fn status(&self, playing: bool) -> String {
        match self.link {
            Link::Gone => return "gone".into(),
            Link::Starting => return "starting".into(),
            Link::Live => {}
        }
        match &self.halted {
            Some((step, _)) => format!("halted@{step}"),
            None if self.done() => "finished".into(),
            None if playing => "running".into(),
            None => "paused".into(),
        }
    }
}

/// The end of the warning of a run's first non-finite step.
const FIRST_NONFINITE: &str = "(first non-finite step)";

/// One entry of the warnings panel.
#[derive(Debug, Clone)]
pub struct Warning {
    pub run: String,
    pub step: u64,
    pub text: String,
    /// The full report (source line, caret, help) of a halt with a provenance.
    pub diagnostic: Option<Box<Diagnostic>>,
}

impl Warning {
    /// Diagnostic `d` of `run` at `step` as a log line, `line:col: message`, which `enter` shows
    /// in full.
    pub fn located(run: &str, step: u64, d: &Diagnostic) -> Self {
        let at = d
            .line_col()
            .map_or(String::new(), |(l, c)| format!("{l}:{c}: "));
        Warning {
            run: run.to_string(),
            step,
            text: format!("{at}{}", d.message),
            diagnostic: Some(Box::new(d.clone())),
        }
    }
}

/// Adds `w` unless the log has it already: a run re-stepped after a rewind or reset halts at
/// the same step for the same reason, and the log says so once.
fn push_new(log: &mut Vec<Warning>, w: Warning) {
    if !log
        .iter()
        .any(|o| (&o.run, o.step, &o.text) == (&w.run, w.step, &w.text))
    {
        log.push(w);
    }
}

/// The runs of one loss file and the worker stepping them.
pub struct Session {
    pub id: u64,
    pub runs: Vec<RunView>,
    pub selected: usize,
    pub playing: bool,
    /// The step the worker's counted steps (`3000N`) are heading for, while it takes them.
    pub stepping: Option<u64>,
    /// What the worker computes while its runs wait (see [`Event::Busy`]).
    pub busy: Option<&'static str>,
    /// Counted steps were asked for and the worker has not said yet that it takes them: `space`
    /// then pauses (it would have played on past them), other keys still queue behind them.
    pub steps_asked: bool,
    pub warnings: Vec<Warning>,
    /// The file's own runs that cannot start (as `check` fails them): asked for again when the
    /// file is edited.
    pub refused: Vec<Refusal>,
    pub failed: Option<String>,
    pub landscape: LandscapeView,
    /// Param values in all (2 means the landscape is over the params' own coordinates).
    pub dims: usize,
    /// The names of the file's `[metrics]`, in file order.
    pub metric_names: Vec<String>,
    /// The EMA weight its runs' curves are summarised with (the app's smoothing).
    smoothing: f64,
    commands: Sender<Command>,
    colors_used: usize,
    rate: RateMeter,
    /// Its sweep (`W`), while the Sweep tab shows it.
    pub sweep: Option<super::sweep::SweepView>,
}

impl Session {
    /// Sends a command to this session's worker.
    pub fn send(&self, c: Command) {
        let _ = self.commands.send(c);
    }

    /// Asks the worker for a new landscape plane of `kind` through `run`.
    pub fn new_plane(&mut self, kind: PlaneKind, run: RunId) {
        let commands = &self.commands;
        self.landscape
            .new_plane(kind, run, &|c| drop(commands.send(c)));
    }

    /// Asks for what the Landscape tab shows with a map of `map` cells (see [`LandscapeView::sync`]).
    pub fn sync_landscape(&mut self, map: (u16, u16)) {
        let commands = &self.commands;
        let shown = Shown {
            runs: &self.runs,
            selected: self.runs.get(self.selected),
            dims: self.dims,
            playing: self.playing,
            map,
        };
        self.landscape.sync(shown, &|c| drop(commands.send(c)));
    }

    /// Summarises its runs' curves smoothed with weight `w` from now on.
    pub fn set_smoothing(&mut self, w: f64) {
        self.smoothing = w;
        for r in &mut self.runs {
            r.streams = super::chart::streams(&r.history, w);
        }
    }

    /// The run selected in the runs list.
    pub fn selected_run(&self) -> Option<&RunView> {
        self.runs.get(self.selected)
    }

    /// Steps a second over all runs, smoothed.
    pub fn steps_per_s(&self) -> f64 {
        self.rate.rate
    }
}

impl Drop for Session {
    /// Tells the worker to stop, without waiting: it may be in a long step or waiting for its
    /// turn, and quitting or editing the file must not wait for that.
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

/// Steps per second from the records arriving, smoothed.
#[derive(Debug, Clone)]
struct RateMeter {
    since: Instant,
    count: u64,
    rate: f64,
}

impl RateMeter {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            count: 0,
            rate: 0.0,
        }
    }

    fn add(&mut self, n: u64) {
        self.count += n;
        let dt = self.since.elapsed().as_secs_f64();
        if dt >= 0.5 {
            self.rate = self.count as f64 / dt;
            self.count = 0;
            self.since = Instant::now();
        }
    }
}

impl Session {
    /// Applies an event from this session's worker.
    pub fn apply(&mut self, e: Event) {
        match e {
            Event::Added(info) => {
                let info = *info;
                if let Some(r) = self
                    .runs
                    .iter_mut()
                    .find(|r| r.link == Link::Starting && r.info.name == info.name)
                {
                    r.info = info;
                    r.link = Link::Live;
                    return;
                }
                let color = crate::draw::PALETTE[self.colors_used % crate::draw::PALETTE.len()];
                self.colors_used += 1;
                self.runs.push(RunView {
                    history: History::new(0),
                    info,
                    color,
                    params: Vec::new(),
                    halted: None,
                    lr_scale: 1.0,
                    lr_changes: Vec::new(),
                    lr_set: Vec::new(),
                    lr_before: None,
                    clipped: 0,
                    skipped: 0,
                    stalled: 0,
                    first_nonfinite: None,
                    gradcheck: None,
                    curvature: None,
                    formula: None,
                    hessian: None,
                    lrfind: None,
                    streams: Vec::new(),
                    path: Decimated::new(PATH_POINTS),
                    lowest: Lowest::default(),
                    link: Link::Live,
                    before: Vec::new(),
                    metrics: Default::default(),
                });
            }
            Event::Refused(refusal) => {
                let w = Warning::located(&refusal.name, 0, &refusal.diagnostic);
                push_new(&mut self.warnings, w);
                // A run kept over an edit that the new version cannot start never will: the
                // refusal stands in its place (and is asked again after the next edit).
                self.runs
                    .retain(|r| r.link != Link::Starting || r.info.name != refusal.name);
                self.selected = self.selected.min(self.runs.len().saturating_sub(1));
                // One the user asked for with other settings is theirs to change (the log
                // says why); the file's own is the file's error, listed once.
                if refusal.plan.overrides == worker::Overrides::default() {
                    self.refused.retain(|r| r.name != refusal.name);
                    self.refused.push(*refusal);
                }
            }
            Event::Removed(rid) => {
                self.landscape.on_worker_gave_up();
                self.drop_run(rid);
            }
            Event::Records(rid, records) => {
                self.rate.add(records.len() as u64);
                if let Some(r) = live(&mut self.runs, rid) {
                    // A row sent before the run stepped from it comes again with its update.
                    if let Some(first) = records.first().map(|f| f.step as usize)
                        && first < r.history.len()
                    {
                        r.history.truncate(first);
                        r.streams = super::chart::streams(&r.history, self.smoothing);
                        r.lowest.again_from(first);
                    }
                    for rec in &records {
                        note_warnings(&mut self.warnings, r, rec);
                        if r.history.is_empty() {
                            r.history = History::new(rec.param_grad_norms.len());
                            r.streams =
                                super::chart::new_streams(rec.param_norms.len(), self.smoothing);
                        }
                        r.history.push(rec);
                        r.streams.iter_mut().for_each(|s| s.push(rec));
                    }
                    r.score_path();
                }
            }
            Event::Truncated(rid, len, scale) => {
                if let Some(r) = live(&mut self.runs, rid) {
                    r.history.truncate(len);
                    r.lowest = Lowest::default();
                    r.score_path();
                    r.metrics.truncate(len as u64);
                    r.streams = super::chart::streams(&r.history, self.smoothing);
                    r.first_nonfinite = r.first_nonfinite.filter(|&k| (k as usize) < len);
                    r.lr_scale = scale;
                    r.lr_before = None;
                    r.halted = None;
                    // The run is at step `len` again: what was computed past it is gone with
                    // those steps.
                    r.keep_answers(|k| k <= len as u64);
                    // A change made at the step rewound to is in that step's snapshot: it stays.
                    // One made later is undone with its steps, and the log says so.
                    let undone: Vec<u64> = r
                        .lr_changes
                        .iter()
                        .copied()
                        .filter(|&k| (k as usize) > len)
                        .collect();
                    r.lr_changes.retain(|&k| (k as usize) <= len);
                    r.lr_set.retain(|&(k, _)| (k as usize) <= len);

                    r.clipped = r.history.count(flags::CLIPPED);
                    r.skipped = r.history.count(flags::SKIPPED);
                    r.stalled = r.history.count(flags::STALLED);
                    // The log forgets the steps rewound over: a reset run starts on a clean one.
                    let name = &r.info.name;
                    self.warnings
                        .retain(|w| &w.run != name || w.step < len as u64);
                    for (count, word) in [
                        (r.clipped, "clipped"),
                        (r.skipped, "skipped"),
                        (r.stalled, "stalled"),
                    ] {
                        set_count(&mut self.warnings, name, word, count, None);
                    }
                    if let Some(first) = undone.first() {
                        self.warnings.push(Warning {
                            run: name.clone(),
                            step: len as u64,
                            text: format!(
                                "rewound past the lr change at step {first}: the lr is ×{} again",
                                crate::format::fmt_short(scale)
                            ),
                            diagnostic: None,
                        });
                    }
                }
            }
            Event::Halted(rid, step, reason, diagnostic) => {
                if let Some(r) = live(&mut self.runs, rid)
                    && r.halted.is_none()
                {
                    push_new(
                        &mut self.warnings,
                        Warning {
                            run: r.info.name.clone(),
                            step,
                            text: format!("halted: {reason}"),
                            diagnostic,
                        },
                    );
                    r.halted = Some((step, reason));
                }
            }
            Event::Report(rid, step, text, diagnostic) => {
                if let Some(r) = live(&mut self.runs, rid) {
                    let name = &r.info.name;
                    // The first non-finite step's line gets the report (`enter` shows it).
                    let first = self.warnings.iter_mut().find(|w| {
                        &w.run == name
                            && w.step == step
                            && w.diagnostic.is_none()
                            && w.text.ends_with(FIRST_NONFINITE)
                    });
                    match first {
                        Some(w) => w.diagnostic = Some(diagnostic),
                        None => push_new(
                            &mut self.warnings,
                            Warning {
                                run: name.clone(),
                                step,
                                text,
                                diagnostic: Some(diagnostic),
                            },
                        ),
                    }
                }
            }
            Event::Params(rid, p) => {
                if let Some(r) = live(&mut self.runs, rid) {
                    r.params = p;
                }
            }
            Event::Metrics(rid, step, values) => {
                if let Some(r) = live(&mut self.runs, rid) {
                    r.metrics.push(step, values);
                }
            }
            Event::Steps(rid, steps) => {
                if let Some(r) = live(&mut self.runs, rid) {
                    r.info.steps = steps;
                }
            }
            Event::LrScale(rid, scale, step) => {
                if let Some(r) = live(&mut self.runs, rid) {
                    if r.lr_before.is_none_or(|(s, _)| s != step) {
                        r.lr_before = Some((step, r.lr_scale));
                    }
                    r.lr_scale = scale;
                    r.lr_changes.push(step);
                    // A change set again after an edit is already in the plan.
                    if !r.lr_set.contains(&(step, scale)) {
                        r.lr_set.push((step, scale));
                    }
                }
            }
            Event::Checked(rid, step, checks) => {
                if let Some(r) = live(&mut self.runs, rid) {
                    for why in checks.iter().filter_map(ParamCheck::why_it_fails) {
                        push_new(
                            &mut self.warnings,
                            Warning {
                                run: r.info.name.clone(),
                                step,
                                text: format!("gradcheck: {why}"),
                                diagnostic: None,
                            },
                        );
                    }
                    r.gradcheck = Some((step, checks));
                }
            }
            Event::Curvature(rid, step, c) => {
                if let Some(r) = live(&mut self.runs, rid) {
                    r.curvature = Some((step, c));
                }
            }
            Event::LrFound(rid, step, found) => {
                if let Some(r) = live(&mut self.runs, rid) {
                    r.lrfind = Some((step, found));
                }
            }
            Event::Formula(rid, step, f) => {
                if let Some(r) = live(&mut self.runs, rid) {
                    r.formula = Some((step, f));
                }
            }
            Event::Hessian(rid, step, h) => {
                if let Some(r) = live(&mut self.runs, rid) {
                    r.hessian = Some((step, h));
                }
            }
            Event::Plane(p, at) => {
                // Paths on the old plane mean nothing on the new one; the worker sends them again.
                for r in &mut self.runs {
                    r.clear_path();
                }
                self.landscape.on_plane(p, at);
            }
            Event::Path {
                run,
                points,
                replace,
            } => {
                if let Some(r) = live(&mut self.runs, run) {
                    if replace {
                        r.clear_path();
                    }
                    for (k, p) in points {
                        r.path.push(k, p);
                    }
                    r.score_path();
                }
            }
            Event::NextUpdate {
                run,
                step,
                loss,
                origin,
                direction,
            } => self
                .landscape
                .on_next_update(run, step, loss, origin, direction),
            Event::Playing(p) => self.playing = p,
            Event::Stepping(t) => (self.stepping, self.steps_asked) = (t, false),
            Event::Busy(what) => self.busy = what,
            Event::Failed(why) => {
                self.landscape.on_worker_gave_up();
                self.failed = Some(why);
            }
            // The app says what came of it, in its status bar.
            Event::Pong(_) | Event::SavedParams { .. } => {}
            // Dropped here: the worker may report again.
            Event::Reported(_) => {}
        }
    }
}

impl Session {
    /// Starts the worker and landscape threads of a session for `compiled` with the runs of
    /// `plan`; their events go to `events`, tagged with `id`.
    pub fn start(
        id: u64,
        name: &str,
        compiled: CompiledFile,
        plan: Vec<RunPlan>,
        events: Sender<Msg>,
    ) -> Self {
        let (tx, rx) = channel();
        let reports = events.clone();
        let landscape = LandscapeView::new(
            name,
            compiled.clone(),
            Box::new(move |r| {
                let _ = reports.send(Msg::Landscape(id, r));
            }),
        );
        let dims = compiled.param_count();
        let metric_names = compiled.metric_names();
        let emit: worker::Emit = Box::new(move |e| {
            let _ = events.send(Msg::Worker(id, e));
        });
        let failed = worker::spawn_with(name, compiled, plan, rx, emit)
            .err()
            .map(|e| format!("cannot start the worker thread: {e}"));
        Session {
            id,
            runs: Vec::new(),
            selected: 0,
            playing: false,
            stepping: None,
            busy: None,
            steps_asked: false,
            warnings: Vec::new(),
            refused: Vec::new(),
            failed,
            landscape,
            dims,
            metric_names,
            smoothing: 0.0,
            commands: tx,
            colors_used: 0,
            rate: RateMeter::new(),
            sweep: None,
        }
    }
}

/// The live run `id` of `runs` (carried and gone runs keep ids of an earlier worker).
fn live(runs: &mut [RunView], id: RunId) -> Option<&mut RunView> {
    runs.iter_mut()
        .find(|r| r.link == Link::Live && r.info.id == id)
}

/// A session's state carried over an edit of its file into the next one.
pub struct Carry {
    runs: Vec<RunView>,
    /// The runs for the new worker to start, in the order of `runs`' starting ones.
    pub plan: Vec<RunPlan>,
    selected: usize,
    playing: bool,
    landscape: KeptView,
}

/// What a reload did to a session's runs, for the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restarted {
    pub runs: usize,
    /// Variants the new version no longer has (their runs stay, dimmed).
    pub gone: usize,
}

impl Session {
    /// Ends this session for a new version of its file, keeping what the user made of it: its
    /// runs (matched to the new version's definitions by name; the others become gone), their
    /// overrides and lr changes, curves as a "before the edit" overlay, the selection, whether
    /// it played, and the landscape view.
    pub fn carry(
        &mut self,
        old: &CompiledFile,
        new: &CompiledFile,
        change: &str,
    ) -> (Carry, Restarted) {
        let mut runs = std::mem::take(&mut self.runs);
        let mut plan = Vec::new();
        let mut gone = Vec::new();
        for r in runs.iter_mut().filter(|r| r.link != Link::Gone) {
            let variant = old.runs.get(r.info.def).map(|d| d.name.as_str());
            let Some(def) = new
                .runs
                .iter()
                .position(|d| Some(d.name.as_str()) == variant)
            else {
                r.link = Link::Gone;
                gone.extend(variant.map(str::to_string));
                continue;
            };
            // An optimizer the file writes itself runs as its new version, if it still has one.
            let optimizer = r.info.overrides.optimizer.as_ref().map(|o| {
                new.rebind(&o.base).map(|base| ChainSpec {
                    base,
                    tricks: o.tricks.clone(),
                })
            });
            if let Some(None) = optimizer {
                r.link = Link::Gone;
                continue;
            }
            r.info.overrides.optimizer = optimizer.flatten();
            plan.push(RunPlan {
                def,
                overrides: r.info.overrides.clone(),
                // All of it, replayed or not: an edit before the run gets back to a change
                // must not lose it.
                lr: r.lr_set.clone(),
            });
            // A run that had not reported a row yet (edited again before it restarted) has no
            // curves to keep.
            if !r.history.is_empty() {
                r.before.insert(
                    0,
                    Before {
                        history: std::mem::replace(&mut r.history, History::new(0)),
                        streams: std::mem::take(&mut r.streams),
                        change: change.to_string(),
                    },
                );
                r.before.truncate(KEEP_VERSIONS);
            }
            r.metrics = Default::default();
            r.info.def = def;
            r.link = Link::Starting;
            r.params.clear();
            r.halted = None;
            r.lr_scale = 1.0;
            r.lr_before = None;
            r.lr_changes.clear();
            r.clipped = 0;
            r.skipped = 0;
            r.stalled = 0;
            r.first_nonfinite = None;
            r.keep_answers(|_| false);
            r.clear_path();
        }
        gone.dedup();
        let restarted = Restarted {
            runs: plan.len(),
            gone: gone.len(),
        };
        // The file's runs that could not start try again in the new version.
        plan.extend(self.refused.drain(..).filter_map(|r| {
            let variant = &old.runs.get(r.plan.def)?.name;
            let def = new.runs.iter().position(|d| &d.name == variant)?;
            Some(RunPlan { def, ..r.plan })
        }));
        // A variant the edit added gets its run, as every variant does when the file starts.
        plan.extend(RunPlan::file(new).into_iter().filter(|p| {
            let name = &new.runs[p.def].name;
            !old.runs.iter().any(|d| &d.name == name)
        }));
        let carry = Carry {
            runs,
            plan,
            selected: self.selected,
            playing: self.playing,
            landscape: self.landscape.kept(),
        };
        (carry, restarted)
    }

    /// Takes over what an earlier session of the same file carried over an edit; a session
    /// that was playing plays on.
    pub fn adopt(&mut self, carry: Carry) {
        self.colors_used = carry.runs.len();
        self.runs = carry.runs;
        self.selected = carry.selected.min(self.runs.len().saturating_sub(1));
        self.landscape.keep_view(carry.landscape);
        if carry.playing {
            self.send(Command::Play);
        }
    }

    /// Drops every run's curves from before the edits of its file.
    pub fn clear_before(&mut self) {
        for r in &mut self.runs {
            r.before.clear();
        }
    }

    /// Drops live run `rid`'s view, keeping the selection in the list.
    pub fn drop_run(&mut self, rid: RunId) {
        self.runs
            .retain(|r| r.link != Link::Live || r.info.id != rid);
        self.selected = self.selected.min(self.runs.len().saturating_sub(1));
    }

    /// Forgets the selected run if it is gone (its variant left the file); true if it was.
    pub fn forget_selected_gone(&mut self) -> bool {
        if self.selected_run().is_none_or(|r| r.link != Link::Gone) {
            return false;
        }
        self.runs.remove(self.selected);
        self.selected = self.selected.min(self.runs.len().saturating_sub(1));
        true
    }
}

/// Adds warning lines for a step: the first non-finite step of a run, and running counts of
/// clipped, skipped and stalled steps (one line each, updated in place, so the log never floods).
fn note_warnings(warnings: &mut Vec<Warning>, r: &mut RunView, rec: &StepRecord) {
    let name = r.info.name.clone();
    let name = &name;
    if rec.has(flags::NONFINITE) && r.first_nonfinite.is_none() {
        r.first_nonfinite = Some(rec.step);
        let what = if rec.has(flags::LOSS_NONFINITE) {
            format!("loss is {}", crate::format::fmt_num(rec.core.loss))
        } else if rec.has(flags::GRAD_NONFINITE) {
            "gradient is non-finite".to_string()
        } else {
            "the update made params non-finite".to_string()
        };
        push_new(
            warnings,
            Warning {
                run: name.clone(),
                step: rec.step,
                text: format!("{what} {FIRST_NONFINITE}"),
                diagnostic: None,
            },
        );
    }
    for (flag, count, word) in [
        (flags::CLIPPED, &mut r.clipped, "clipped"),
        (flags::SKIPPED, &mut r.skipped, "skipped"),
        (flags::STALLED, &mut r.stalled, "stalled"),
    ] {
        if rec.has(flag) {
            *count += 1;
            set_count(warnings, name, word, *count, Some(rec.step));
        }
    }
}

/// Sets run `name`'s "N steps `word`" warning (clipped, skipped) to `count`, adding it at
/// `step` when the run has none yet and `step` is given.
fn set_count(warnings: &mut Vec<Warning>, name: &str, word: &str, count: u64, step: Option<u64>) {
    let text = format!("{count} steps {word}");
    match warnings
        .iter_mut()
        .find(|w| w.run == name && w.text.ends_with(word))
    {
        Some(w) => w.text = text,
        None => {
            if let Some(step) = step {
                warnings.push(Warning {
                    run: name.to_string(),
                    step,
                    text,
                    diagnostic: None,
                });
            }
        }
    }
}
