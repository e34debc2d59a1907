//! One loss file's live state: its runs as the worker reports them (applying each worker
//! event), the warnings log, the landscape view, and the threads that step and draw it.

use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::Instant;

use ratatui::style::Color;

use super::app::Msg;
use super::landscape_view::{LandscapeView, Shown};
use crate::compile::CompiledFile;
use crate::compile::gradcheck::{ParamCheck, Verdict};
use crate::landscape::PlaneKind;
use crate::run::history::{History, StepRecord, flags};
use crate::run::trajectory::Decimated;
use crate::run::worker::{self, Command, Event, ParamStats, RunId, RunInfo};

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
    pub clipped: u64,
    pub skipped: u64,
    pub first_nonfinite: Option<u64>,
    /// The last gradient check: the step and each param's result.
    pub gradcheck: Option<(u64, Vec<ParamCheck>)>,
    /// The last curvature estimate and its step.
    pub curvature: Option<(u64, crate::compile::curvature::Curvature)>,
    /// Chart summaries of every metric, kept up to date with `history`.
    pub streams: Vec<super::chart::Stream>,
    /// Its path on the landscape plane: `(step, plane coordinates)`.
    pub path: Decimated<[f64; 2]>,
    /// Its `[metrics]` values at the steps the worker reported them.
    pub metrics: super::metrics::MetricTrack,
}

/// Path points a run view keeps (beyond that, every other one is dropped).
const PATH_POINTS: usize = 16384;

impl RunView {
    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.history.len()
    }

    /// The runs list's word for it: halted@step, finished, running or paused.
    pub fn status(&self, playing: bool) -> String {
        match &self.halted {
            Some((step, _)) => format!("halted@{step}"),
            None if self.steps() as u64 >= self.info.steps => "finished".into(),
            None if playing => "running".into(),
            None => "paused".into(),
        }
    }
}

/// One line of the warnings panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub run: String,
    pub step: u64,
    pub text: String,
}

/// The runs of one loss file and the worker stepping them.
pub struct Session {
    pub id: u64,
    pub runs: Vec<RunView>,
    pub selected: usize,
    pub playing: bool,
    pub warnings: Vec<Warning>,
    pub failed: Option<String>,
    pub landscape: LandscapeView,
    /// Param values in all (2 means the landscape is over the params' own coordinates).
    pub dims: usize,
    /// The names of the file's `[metrics]`, in file order.
    pub metric_names: Vec<String>,
    commands: Sender<Command>,
    handle: Option<JoinHandle<()>>,
    colors_used: usize,
    rate: RateMeter,
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
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
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
                    clipped: 0,
                    skipped: 0,
                    first_nonfinite: None,
                    gradcheck: None,
                    curvature: None,
                    streams: Vec::new(),
                    path: Decimated::new(PATH_POINTS),
                    metrics: Default::default(),
                });
            }
            Event::Removed(rid) => {
                self.landscape.on_worker_gave_up();
                self.runs.retain(|r| r.info.id != rid);
                self.selected = self.selected.min(self.runs.len().saturating_sub(1));
            }
            Event::Records(rid, records) => {
                self.rate.add(records.len() as u64);
                if let Some(r) = self.runs.iter_mut().find(|r| r.info.id == rid) {
                    for rec in &records {
                        note_warnings(&mut self.warnings, r, rec);
                        if r.history.is_empty() {
                            r.history = History::new(rec.param_grad_norms.len());
                            r.streams = super::chart::Metric::all(rec.param_norms.len())
                                .into_iter()
                                .map(super::chart::Stream::new)
                                .collect();
                        }
                        r.history.push(rec);
                        r.streams.iter_mut().for_each(|s| s.push(rec));
                    }
                }
            }
            Event::Truncated(rid, len, scale) => {
                if let Some(r) = self.runs.iter_mut().find(|r| r.info.id == rid) {
                    r.history.truncate(len);
                    r.metrics.truncate(len as u64);
                    r.streams = super::chart::streams(&r.history);
                    r.first_nonfinite = r.first_nonfinite.filter(|&k| (k as usize) < len);
                    r.lr_scale = scale;
                    r.halted = None;
                    r.lr_changes.retain(|&k| (k as usize) < len);
                    r.clipped = r.history.count(flags::CLIPPED);
                    r.skipped = r.history.count(flags::SKIPPED);
                }
            }
            Event::Halted(rid, step, reason) => {
                if let Some(r) = self.runs.iter_mut().find(|r| r.info.id == rid)
                    && r.halted.is_none()
                {
                    self.warnings.push(Warning {
                        run: r.info.name.clone(),
                        step,
                        text: format!("halted: {reason}"),
                    });
                    r.halted = Some((step, reason));
                }
            }
            Event::Params(rid, p) => {
                if let Some(r) = self.runs.iter_mut().find(|r| r.info.id == rid) {
                    r.params = p;
                }
            }
            Event::Metrics(rid, step, values) => {
                if let Some(r) = self.runs.iter_mut().find(|r| r.info.id == rid) {
                    r.metrics.push(step, values);
                }
            }
            Event::LrScale(rid, scale, step) => {
                if let Some(r) = self.runs.iter_mut().find(|r| r.info.id == rid) {
                    r.lr_scale = scale;
                    r.lr_changes.push(step);
                }
            }
            Event::Checked(rid, step, checks) => {
                if let Some(r) = self.runs.iter_mut().find(|r| r.info.id == rid) {
                    for c in checks.iter().filter(|c| c.verdict == Verdict::Fail) {
                        self.warnings.push(Warning {
                            run: r.info.name.clone(),
                            step,
                            text: format!(
                                "gradcheck: `{}` disagrees with finite differences (max rel err {}, worst at {:?})",
                                c.name,
                                crate::format::fmt_num(c.max_rel),
                                c.worst
                            ),
                        });
                    }
                    r.gradcheck = Some((step, checks));
                }
            }
            Event::Curvature(rid, step, c) => {
                if let Some(r) = self.runs.iter_mut().find(|r| r.info.id == rid) {
                    r.curvature = Some((step, c));
                }
            }
            Event::Plane(p, at) => {
                // Paths on the old plane mean nothing on the new one; the worker sends them again.
                for r in &mut self.runs {
                    r.path = Decimated::new(PATH_POINTS);
                }
                self.landscape.on_plane(p, at);
            }
            Event::Path {
                run,
                points,
                replace,
            } => {
                if let Some(r) = self.runs.iter_mut().find(|r| r.info.id == run) {
                    if replace {
                        r.path = Decimated::new(PATH_POINTS);
                    }
                    for (k, p) in points {
                        r.path.push(k, p);
                    }
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
            Event::Failed(why) => {
                self.landscape.on_worker_gave_up();
                self.failed = Some(why);
            }
            Event::Pong(_) => {}
        }
    }
}

impl Session {
    /// Starts the worker and landscape threads of a session for `compiled`; their events go to
    /// `events`, tagged with `id`.
    pub fn start(id: u64, name: &str, compiled: CompiledFile, events: Sender<Msg>) -> Self {
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
        let (handle, failed) = match worker::spawn(name, compiled, rx, emit) {
            Ok(h) => (Some(h), None),
            Err(e) => (None, Some(format!("cannot start the worker thread: {e}"))),
        };
        Session {
            id,
            runs: Vec::new(),
            selected: 0,
            playing: false,
            warnings: Vec::new(),
            failed,
            landscape,
            dims,
            metric_names,
            commands: tx,
            handle,
            colors_used: 0,
            rate: RateMeter::new(),
        }
    }
}

/// Adds warning lines for a step: the first non-finite step of a run, and running counts of
/// clipped and skipped steps (one line each, updated in place, so the log never floods).
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
        warnings.push(Warning {
            run: name.clone(),
            step: rec.step,
            text: format!("{what} (first non-finite step)"),
        });
    }
    for (flag, count, word) in [
        (flags::CLIPPED, &mut r.clipped, "clipped"),
        (flags::SKIPPED, &mut r.skipped, "skipped"),
    ] {
        if rec.has(flag) {
            *count += 1;
            let text = format!("{count} steps {word}");
            match warnings
                .iter_mut()
                .find(|w| &w.run == name && w.text.ends_with(word))
            {
                Some(w) => w.text = text,
                None => warnings.push(Warning {
                    run: name.clone(),
                    step: rec.step,
                    text,
                }),
            }
        }
    }
}
