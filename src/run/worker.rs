//! The optimizer worker: a named thread per loss file that owns the file's runs and steps them.
//! It talks to the UI only through messages: commands in, events out.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::Tensor;

use crate::compile::backward::{Formula, formula};
use crate::compile::curvature::Curvature;
use crate::compile::gradcheck::{ParamCheck, gradcheck};
use crate::compile::hessian::{self, Hessian};
use crate::compile::{CompiledFile, Consts, norm};
use crate::diagnostic::{Diagnostic, catch_panic};
use crate::landscape::service::LossKey;
use crate::landscape::{ParamShape, Plane, PlaneKind, param_shapes};
use crate::lang::file::DType;
use crate::optim::tricks::ChainSpec;
use crate::run::batch::{self, Batch};
use crate::run::history::{StepRecord, flags};
use crate::run::lrfind::{LrFind, LrRange, lr_find};
use crate::run::turns::{Turn, Turns};
use crate::run::{Run, RunRequest, save};

/// Identifies a run for the lifetime of a worker (indices shift when runs are removed).
pub type RunId = u64;

/// What the UI asks a worker to do.
#[derive(Debug, Clone)]
pub enum Command {
    Play,
    Pause,
    /// Step every run `n` times (paused or not).
    Step(u64),
    /// Ends the steps of [`Command::Step`] where they are, and drops the commands queued behind
    /// them (as [`Command::Pause`] does): handled as it arrives, not after those steps.
    Interrupt,
    /// Back to the initial params.
    Reset,
    /// Rewind every run by `n` steps.
    Rewind(u64),
    /// Multiply one run's learning rate.
    ScaleLr(RunId, f64),
    /// Add a run of definition `def` with what it changes of it.
    AddRun {
        def: usize,
        overrides: Overrides,
    },
    Remove(RunId),
    /// Check one run's gradients against finite differences at its current step.
    Gradcheck(RunId),
    /// The lr range test on a copy of one run from its current step ([`Event::LrFound`]).
    LrFind(RunId),
    /// The Hessian of one run at its current step: whole up to [`hessian::FULL_LIMIT`] param
    /// values ([`Event::Hessian`]), past that its top eigenvalue ([`Event::Curvature`]).
    Hessian(RunId),
    /// The gradient formula of one run's param (by index), with its first non-finite value at
    /// the run's current step.
    Formula(RunId, usize),
    /// A landscape plane through run `run`'s current params (losses with more than two param
    /// values; two-param losses always use their own coordinates).
    Plane {
        run: RunId,
        kind: PlaneKind,
        seed: u64,
    },
    /// The update run `run`'s next step would make, for the learning-rate slice.
    NextUpdate(RunId),
    /// Save every run's params to `path` (see [`crate::run::save::save_runs`]); `note` comes
    /// back with the answer, for the status it completes.
    SaveParams {
        path: PathBuf,
        note: String,
    },
    /// Asks for a [`Event::Pong`] once every command before it is done (tests wait on it).
    Ping(u64),
    Shutdown,
}

/// Per-param numbers at a run's current step θ_k, for the inspector: its values and the
/// gradient there.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamStats {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: TensorStats,
    /// The gradient at θ_k (None when the run has not evaluated it).
    pub grad: Option<TensorStats>,
}

/// Elements a tensor may have for every value to be sent; larger ones send a summary only.
pub const FULL_VALUES: usize = 64;
/// Bins of a large tensor's histogram.
pub const HISTOGRAM_BINS: usize = 24;

/// One tensor for the inspector: a summary always, every value when it is small, a histogram
/// when it is not (computed on the worker, so the message stays small whatever the size).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorStats {
    pub norm: f64,
    /// Smallest finite element (+inf when none is finite).
    pub min: f64,
    /// Largest finite element (-inf when none is finite).
    pub max: f64,
    /// Mean of the finite elements (NaN when none is finite).
    pub mean: f64,
    pub nonfinite: usize,
    /// Every element, row-major, for tensors of at most [`FULL_VALUES`] elements.
    pub values: Option<Vec<f64>>,
    /// Finite elements counted in [`HISTOGRAM_BINS`] equal bins from `min` to `max` (empty
    /// when `values` holds them all).
    pub histogram: Vec<u32>,
}

impl TensorStats {
    /// The summary of `t`'s elements.
    pub fn of(t: &Tensor) -> Self {
        let v = crate::compile::values_f64(t).unwrap_or_default();
        let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
        let mut histogram = Vec::new();
        if v.len() > FULL_VALUES && !finite.is_empty() {
            histogram = vec![0; HISTOGRAM_BINS];
            let width = (max - min) / HISTOGRAM_BINS as f64;
            for x in &finite {
                let b = if width > 0.0 {
                    ((x - min) / width) as usize
                } else {
                    0
                };
                histogram[b.min(HISTOGRAM_BINS - 1)] += 1;
            }
        }
        Self {
            norm: norm(t),
            min,
            max,
            mean,
            nonfinite: v.len() - finite.len(),
            values: (v.len() <= FULL_VALUES).then_some(v),
            histogram,
        }
    }
}

/// What a run was asked to change of its definition: another optimizer or dtype, or consts
/// of the file set to other values (a point of the TUI's sweep; they may not change the data
/// or params, see [`CompiledFile::with_consts`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub optimizer: Option<ChainSpec>,
    pub dtype: Option<DType>,
    pub consts: Consts,
}

impl Overrides {
    /// Which loss its runs of definition `def` minimise, in `dtype`, for the landscape.
    pub fn loss_key(&self, def: usize, dtype: DType) -> LossKey {
        LossKey {
            def,
            dtype,
            consts: self
                .consts
                .iter()
                .map(|(n, v)| (n.clone(), v.to_bits()))
                .collect(),
        }
    }
}

/// A run for a worker to start: a definition, its overrides, and learning-rate multipliers to
/// set as it reaches each step (`(step, multiplier)`, in step order).
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub def: usize,
    pub overrides: Overrides,
    pub lr: Vec<(u64, f64)>,
}

impl RunPlan {
    /// One run per definition of `compiled`, as the file describes it.
    pub fn file(compiled: &CompiledFile) -> Vec<RunPlan> {
        (0..compiled.runs.len())
            .map(|def| RunPlan {
                def,
                overrides: Overrides::default(),
                lr: Vec::new(),
            })
            .collect()
    }
}

/// A run that cannot start: its name, what it was asked as (to ask again after an edit of the
/// file) and why, located as `check` locates it.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub name: String,
    pub plan: RunPlan,
    pub diagnostic: Diagnostic,
}

/// A run as the UI sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub id: RunId,
    /// Index of the run definition (base or variant) it runs.
    pub def: usize,
    /// What it changes of its definition (to start it again after an edit).
    pub overrides: Overrides,
    pub name: String,
    /// Its optimizer and tricks.
    pub optimizer: ChainSpec,
    pub dtype: DType,
    pub steps: u64,
    /// Where its gradients come from (`autograd` or `fd`).
    pub grad: &'static str,
}

/// What a worker tells the UI.
#[derive(Debug, Clone)]
pub enum Event {
    /// Boxed: a run's info (two optimizer specs) dwarfs every other event.
    Added(Box<RunInfo>),
    /// A run asked for could not start (boxed as `Added` is).
    Refused(Box<Refusal>),
    Removed(RunId),
    /// A run's steps changed: played on past its end, stepped past it, or given back by a reset.
    Steps(RunId, u64),
    /// Rows of one run, in order, replacing any the UI holds from the first one's step on (a
    /// run's current row is sent with an empty update, then again once the run steps from it).
    Records(RunId, Vec<StepRecord>),
    /// The run was rewound or reset to step `len`, with this lr multiplier: the UI keeps rows
    /// 0..len, and row `len` (the current one) comes again in the next records.
    Truncated(RunId, usize, f64),
    /// A run halted at a step: why, and the diagnostic pointing into the source when the
    /// halt has a provenance.
    Halted(RunId, u64, String, Option<Box<Diagnostic>>),
    /// A warning about a run at a step, in short and in full: its params did not move (see
    /// [`super::stall`]), or non-finite values it went on past started somewhere.
    Report(RunId, u64, String, Box<Diagnostic>),
    Params(RunId, Vec<ParamStats>),
    /// A run's metric values at a step (after that many updates), for files with `[metrics]`.
    Metrics(RunId, u64, Vec<f64>),
    /// A run's learning-rate multiplier changed, taking effect at this step.
    LrScale(RunId, f64, u64),
    Playing(bool),
    /// The steps of [`Command::Step`] are heading for this step (the furthest run's), or ended.
    Stepping(Option<u64>),
    Failed(String),
    /// A gradient check of a run at a step.
    Checked(RunId, u64, Vec<ParamCheck>),
    /// The lr range test of a run from a step, or why it could not run.
    LrFound(RunId, u64, Result<Box<LrFind>, String>),
    /// The curvature of a run at a step.
    Curvature(RunId, u64, Curvature),
    /// The worker computes what it names (an inspection of a run), and its runs wait until it
    /// is done; None once it is.
    Busy(Option<&'static str>),
    /// A param's gradient formula in a run, looked at at a step.
    Formula(RunId, u64, Box<Formula>),
    /// The whole Hessian of a run at a step, or why there is none.
    Hessian(RunId, u64, Result<Arc<Hessian>, String>),
    /// The landscape plane every path is now projected onto, and for a slice the run and step
    /// it passes through.
    Plane(Arc<Plane>, Option<(RunId, u64)>),
    /// A run's path on the plane: `(step, plane coordinates)`, replacing the previous path or
    /// continuing it.
    Path {
        run: RunId,
        points: Vec<(u64, [f64; 2])>,
        replace: bool,
    },
    /// Where the next step of a run would go from where it is.
    NextUpdate {
        run: RunId,
        step: u64,
        loss: LossKey,
        origin: Vec<f64>,
        direction: Vec<f64>,
    },
    /// Answer to [`Command::Ping`]: every earlier command has been handled and reported.
    Pong(u64),
    /// The end of a report; dropping it tells the worker the UI has applied the report.
    Reported(Receipt),
    /// What came of [`Command::SaveParams`]: the files written, or why not; with its note.
    SavedParams {
        note: String,
        result: Result<Vec<PathBuf>, String>,
    },
}

/// Rides at the end of a worker's report. Until the UI has applied the report and dropped this,
/// the worker sends no periodic report (its rows wait and go in the next one): a UI that falls
/// behind, busy or suspended for an editor, gets fewer and larger reports, never a growing queue.
#[derive(Debug, Clone)]
pub struct Receipt(#[expect(dead_code, reason = "held for its count, never read")] Arc<()>);

struct Slot {
    id: RunId,
    run: Run,
    /// Rows the UI holds.
    sent: usize,
    /// Whether the last of them was sent before the run stepped from it.
    sent_current: bool,
    /// The run definition it runs.
    def: usize,
    /// Step count that manual stepping is heading for.
    target: Option<u64>,
    /// The last step whose path point was sent.
    path_sent: Option<u64>,
    /// Learning-rate multipliers still to set, at their steps.
    lr_plan: VecDeque<(u64, f64)>,
    /// The loss it minimises, as the UI's landscape names it.
    loss: LossKey,
    /// The steps it was given: a reset gives them back after playing on extended them.
    given: u64,
}

/// A run's name with the consts it sets: `base · eps=1e-06`.
fn consts_name(name: &str, consts: &[(String, f64)]) -> String {
    consts.iter().fold(name.to_string(), |n, (c, v)| {
        format!("{n} · {c}={}", crate::format::fmt_short(*v))
    })
}

/// Where a worker's events go.
pub type Emit = Box<dyn Fn(Event) + Send>;

/// Starts the worker for one compiled file, with one run per definition.
pub fn spawn(
    name: &str,
    compiled: CompiledFile,
    commands: Receiver<Command>,
    emit: Emit,
) -> std::io::Result<JoinHandle<()>> {
    let plan = RunPlan::file(&compiled);
    spawn_with(name, compiled, plan, commands, emit)
}

/// Starts the worker for one compiled file with the runs of `plan`, in its order.
pub fn spawn_with(
    name: &str,
    compiled: CompiledFile,
    plan: Vec<RunPlan>,
    commands: Receiver<Command>,
    emit: Emit,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("runs:{name}"))
        .stack_size(crate::GRAPH_STACK)
        .spawn(move || Worker::new(compiled, emit).serve(plan, commands))
}

struct Worker {
    /// The file, with a definition appended for each (definition, consts) a run overrides.
    compiled: CompiledFile,
    /// Those appended definitions: which one, with which consts, at which index.
    defined: Vec<(usize, Consts, usize)>,
    slots: Vec<Slot>,
    /// Runs stepped as one program (by id); a run is in at most one.
    batches: Vec<Batch>,
    next_id: RunId,
    playing: bool,
    emit: Emit,
    shapes: Vec<ParamShape>,
    plane: Option<Arc<Plane>>,
    /// Shared with the [`Receipt`] of the last report while the UI holds it.
    receipt: Arc<()>,
}

/// How much a worker lowers its thread's priority: the UI thread, at the default, gets a core
/// as soon as a key or a frame is due, however many files play.
pub const NICE: i32 = 10;

/// Rows of a run that a playing worker's report carries at most: a UI catching up on a backlog
/// (after an editor was in front of it) applies it a few milliseconds at a time.
const REPORT_ROWS: usize = 8192;

/// How often a playing worker reports to the UI.
const REPORT_EVERY: Duration = Duration::from_millis(30);

impl Worker {
    fn new(compiled: CompiledFile, emit: Emit) -> Self {
        let shapes = param_shapes(&compiled);
        let plane = Plane::coordinates(&shapes).map(Arc::new);
        if let Some(p) = &plane {
            emit(Event::Plane(Arc::clone(p), None));
        }
        Self {
            compiled,
            defined: Vec::new(),
            slots: Vec::new(),
            batches: Vec::new(),
            next_id: 0,
            playing: false,
            emit,
            shapes,
            plane,
            receipt: Arc::new(()),
        }
    }

    fn send(&self, e: Event) {
        (self.emit)(e);
    }

    /// The index of definition `def` with `consts` set: `def` itself without consts, else a
    /// definition appended on first use (so that runs with the same consts batch together).
    fn definition(&mut self, def: usize, consts: &[(String, f64)]) -> Result<usize, String> {
        if consts.is_empty() {
            return Ok(def);
        }
        if let Some(&(.., at)) = self
            .defined
            .iter()
            .find(|(d, c, _)| *d == def && c.as_slice() == consts)
        {
            return Ok(at);
        }
        let new = self.compiled.with_consts(def, consts)?;
        self.compiled.runs.push(new);
        let at = self.compiled.runs.len() - 1;
        self.defined.push((def, consts.to_vec(), at));
        Ok(at)
    }

    /// Starts a run of definition `def` as the file describes it, with another optimizer,
    /// dtype or consts if given (the run's name says which).
    fn add(&mut self, plan: RunPlan) {
        let RunPlan { def, overrides, lr } = plan;
        let Some(base) = RunRequest::of(&self.compiled, def) else {
            return;
        };
        let at = match self.definition(def, &overrides.consts) {
            Ok(at) => at,
            Err(why) => {
                let name = consts_name(&base.name, &overrides.consts);
                return self.send(Event::Failed(format!("cannot start run `{name}`: {why}")));
            }
        };
        let Some(mut request) = RunRequest::of(&self.compiled, at) else {
            return;
        };
        request.name = consts_name(&base.name, &overrides.consts);
        if let Some(chain) = overrides.optimizer.clone() {
            request.name = format!("{} · {chain}", request.name);
            request.settings.optimizer = chain.base;
            request.settings.tricks = chain.tricks;
        }
        if let Some(dt) = overrides.dtype {
            request.name = format!("{} · {}", request.name, dt.name());
            request.dtype = dt;
        }
        // A second run of the same kind is told apart by a number.
        let taken = |name: &str| self.slots.iter().any(|s| s.run.name == name);
        if taken(&request.name) {
            let first = std::mem::take(&mut request.name);
            request.name = (2..)
                .map(|k| format!("{first} #{k}"))
                .find(|n| !taken(n))
                .unwrap_or(first);
        }
        let name = request.name.clone();
        match request.start(&self.compiled) {
            Ok(run) => {
                let id = self.next_id;
                self.next_id += 1;
                let loss = overrides.loss_key(def, run.dtype);
                self.send(Event::Added(Box::new(RunInfo {
                    id,
                    def,
                    overrides,
                    name: run.name.clone(),
                    optimizer: run.config.chain(),
                    dtype: run.dtype,
                    steps: run.config.steps,
                    grad: run.config.grad.name(),
                })));
                let mut slot = Slot {
                    id,
                    given: run.config.steps,
                    run,
                    sent: 0,
                    sent_current: false,
                    def: at,
                    target: None,
                    path_sent: None,
                    lr_plan: lr.into(),
                    loss,
                };
                self.send(Event::Params(id, stats(&slot.run)));
                self.send_metrics(id, &slot.run);
                self.send_path(&mut slot, true);
                self.slots.push(slot);
                self.follow_lr_plan(self.slots.len() - 1);
            }
            Err(diagnostic) => self.send(Event::Refused(Box::new(Refusal {
                name,
                plan: RunPlan { def, overrides, lr },
                diagnostic,
            }))),
        }
    }

    /// Sends a run's metrics at its current params, when the file has any. One forward pass a
    /// report (at most every [`REPORT_EVERY`] while playing), whatever the step rate.
    fn send_metrics(&self, id: RunId, run: &Run) {
        if run.metric_names().is_empty() {
            return;
        }
        match run.metric_values() {
            Ok(v) => self.send(Event::Metrics(id, run.step_count(), v)),
            Err(d) => self.send(Event::Failed(d.headline())),
        }
    }

    /// Whether it has runs to step or commands to handle.
    fn busy(&self, queue: &VecDeque<Command>) -> bool {
        self.playing || self.stepping() || !queue.is_empty()
    }

    /// Whether manual steps (`n`, `N`) are still to be taken.
    fn stepping(&self) -> bool {
        self.slots.iter().any(|s| {
            s.target
                .is_some_and(|t| s.run.step_count() < t && s.run.halted.is_none())
        })
    }

    /// Starts the runs of `plan`, then serves commands until shutdown. Commands are read between
    /// steps, so a long `1000000N` never blocks pause, an interrupt or quit; others that arrive
    /// during manual stepping wait their turn, so `120n40b` typed ahead means what it says (the
    /// UI interrupts counted steps it knows are under way before sending a key's command). A
    /// panic (a bug) while starting or stepping becomes [`Event::Failed`] with its message, the
    /// runs pause, and the worker serves on: the UI and the other files never go down with it.
    fn serve(mut self, plan: Vec<RunPlan>, commands: Receiver<Command>) {
        crate::lower_thread_priority(NICE);
        let turns = Turns::global();
        let turn = turns.take();
        let started = catch_panic("starting the runs", || {
            for p in plan {
                self.add(p);
            }
            self.form_batches();
        });
        drop(turn);
        if let Err(d) = started {
            self.send(Event::Failed(d.headline()));
        }
        let mut last_report = Instant::now();
        let mut queue: VecDeque<Command> = VecDeque::new();
        let mut turn = None;
        loop {
            let busy = self.busy(&queue);
            if !busy {
                // None held while waiting for commands.
                turn = None;
            }
            let command = if busy {
                commands.try_recv().map_err(|e| match e {
                    std::sync::mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                    std::sync::mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                })
            } else {
                commands.recv_timeout(Duration::from_millis(200))
            };
            match command {
                Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(c @ (Command::Pause | Command::Interrupt)) => {
                    queue.retain(|c| matches!(c, Command::Ping(_) | Command::SaveParams { .. }));
                    self.handle(c);
                }
                Ok(c) => queue.push_back(c),
                Err(RecvTimeoutError::Timeout) => {}
            }
            take_turns(turns, &mut turn, self.busy(&queue));
            let worked = catch_panic("stepping the runs", || {
                self.work(&mut queue, &mut last_report)
            });
            if let Err(d) = worked {
                self.send(Event::Failed(d.headline()));
                queue.retain(|c| matches!(c, Command::Ping(_)));
                self.handle(Command::Pause);
            }
        }
    }

    /// Handles the queued commands, takes one step of every run that should move, and reports.
    fn work(&mut self, queue: &mut VecDeque<Command>, last_report: &mut Instant) {
        while !self.stepping() {
            let Some(c) = queue.pop_front() else { break };
            self.handle(c);
        }
        crate::run::turns::let_the_ui_draw();
        let mut any = self.step_batches();
        for i in 0..self.slots.len() {
            if self.slots[i].moving(self.playing) && !self.batched(self.slots[i].id) {
                crate::run::turns::let_the_ui_draw();
                self.step_slot(i);
                any = true;
            }
        }
        if self.playing && !any {
            self.playing = false;
            self.send(Event::Playing(false));
        }
        if !self.stepping() {
            self.end_stepping();
        }
        let due = last_report.elapsed() >= REPORT_EVERY && self.delivered();
        if any && due {
            self.report_rows(REPORT_ROWS);
            *last_report = Instant::now();
        } else if !any && self.pending_report() {
            self.report();
            *last_report = Instant::now();
        }
    }

    /// Whether the UI has applied the last report (dropped its [`Receipt`]).
    fn delivered(&self) -> bool {
        Arc::strong_count(&self.receipt) == 1
    }

    fn pending_report(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.unsent(self.playing, usize::MAX).is_some())
    }

    fn handle(&mut self, c: Command) {
        // What looks at or changes one run takes it out of its batch first; what touches
        // every run (rewinds, saving) all of them.
        match &c {
            Command::ScaleLr(id, _)
            | Command::Remove(id)
            | Command::Gradcheck(id)
            | Command::LrFind(id)
            | Command::Hessian(id)
            | Command::Formula(id, _)
            | Command::NextUpdate(id)
            | Command::Plane { run: id, .. } => self.unbatch(*id),
            Command::Reset | Command::Rewind(_) | Command::SaveParams { .. } => {
                for id in self.slots.iter().map(|s| s.id).collect::<Vec<_>>() {
                    self.unbatch(id);
                }
            }
            _ => {}
        }
        // The runs wait for an inspection (the top eigenvalue of a large model takes seconds):
        // the UI says so rather than "running".
        let busy = match &c {
            Command::Gradcheck(_) => Some("a gradient check"),
            Command::LrFind(_) => Some("an lr range test"),
            Command::Hessian(_) => Some("the Hessian"),
            Command::Formula(..) => Some("a gradient formula"),
            _ => None,
        };
        if busy.is_some() {
            self.send(Event::Busy(busy));
        }
        self.execute(c);
        if busy.is_some() {
            self.send(Event::Busy(None));
        }
    }

    fn execute(&mut self, c: Command) {
        match c {
            Command::Play => {
                // Once every run is finished (or halted), the finished ones go on for as many
                // steps as they were given; while some are short of their end, those play to
                // it alone (a run added after the others finished must not push them on).
                let open =
                    |s: &Slot| s.run.halted.is_none() && s.run.step_count() < s.run.config.steps;
                let finished: Vec<(RunId, u64)> = match self.slots.iter().any(open) {
                    true => Vec::new(),
                    false => self
                        .slots
                        .iter()
                        .filter(|s| s.run.halted.is_none())
                        .map(|s| (s.id, s.run.config.steps + s.given.max(1)))
                        .collect(),
                };
                for (id, steps) in finished {
                    self.set_steps(id, steps);
                }
                self.playing = true;
                self.send(Event::Playing(true));
            }
            Command::Pause => {
                self.playing = false;
                self.end_stepping();
                self.send(Event::Playing(false));
                self.report();
            }
            Command::Interrupt => {
                self.end_stepping();
                self.report();
            }
            Command::Step(n) => {
                for i in 0..self.slots.len() {
                    let s = &mut self.slots[i];
                    let target = s.target.unwrap_or(s.run.step_count()) + n;
                    s.target = Some(target);
                    if target > s.run.config.steps {
                        let id = s.id;
                        self.set_steps(id, target);
                    }
                }
                let furthest = self.slots.iter().filter_map(|s| s.target).max();
                self.send(Event::Stepping(furthest));
            }
            Command::Reset => {
                for i in 0..self.slots.len() {
                    let (id, given) = (self.slots[i].id, self.slots[i].given);
                    self.set_steps(id, given);
                }
                self.rewind(|_| 0)
            }
            Command::Rewind(n) => {
                // One target for every run, n steps before the furthest: a run behind it (halted
                // earlier, or added later) stays where it is until the target passes it, so
                // the runs end at the same step.
                let furthest = self.slots.iter().map(|s| s.run.step_count()).max();
                let target = furthest.unwrap_or(0).saturating_sub(n);
                self.rewind(|len| len.min(target))
            }
            Command::ScaleLr(id, f) => {
                self.report();
                if let Some(s) = self.slots.iter_mut().find(|s| s.id == id) {
                    let scale = s.run.lr_scale * f;
                    s.run.set_lr_scale(scale);
                    let step = s.run.step_count();
                    self.send(Event::LrScale(id, scale, step));
                }
            }
            Command::AddRun { def, overrides } => self.add(RunPlan {
                def,
                overrides,
                lr: Vec::new(),
            }),
            Command::Remove(id) => {
                self.slots.retain(|s| s.id != id);
                self.send(Event::Removed(id));
            }
            Command::Gradcheck(id) => {
                self.report();
                if let Some(s) = self.slots.iter().find(|s| s.id == id) {
                    let params = s.run.param_values();
                    match gradcheck(&self.compiled, s.def, s.run.dtype, Some(&params), 0) {
                        Ok(checks) => self.send(Event::Checked(id, s.run.step_count(), checks)),
                        Err(d) => self.send(Event::Failed(d.headline())),
                    }
                }
            }
            Command::LrFind(id) => {
                self.report();
                if let Some(s) = self.slots.iter().find(|s| s.id == id) {
                    let range = LrRange::new(1e-7, 10.0, 100).expect("a valid range");
                    let found = lr_find(&s.run, &range, |_, _| ControlFlow::Continue(()));
                    let found = found.map(Box::new).map_err(|d| d.headline());
                    self.send(Event::LrFound(id, s.run.step_count(), found));
                }
            }
            Command::Hessian(id) => {
                self.report();
                if let Some(s) = self.slots.iter().find(|s| s.id == id) {
                    let step = s.run.step_count();
                    if self.compiled.param_count() <= hessian::FULL_LIMIT {
                        let h = s.run.hessian(None, &hessian::Options::default());
                        let h = h.map(Arc::new).map_err(|d| d.headline());
                        self.send(Event::Hessian(id, step, h));
                    } else {
                        match s.run.curvature(50) {
                            Ok(c) => self.send(Event::Curvature(id, step, c)),
                            Err(d) => self.send(Event::Failed(d.headline())),
                        }
                    }
                }
            }
            Command::Formula(id, param) => {
                self.report();
                if let Some(s) = self.slots.iter().find(|s| s.id == id) {
                    let f = formula(&self.compiled, s.def, param, &s.run.param_values());
                    self.send(Event::Formula(id, s.run.step_count(), Box::new(f)));
                }
            }
            Command::Plane { run, kind, seed } => self.new_plane(run, kind, seed),
            Command::NextUpdate(id) => {
                if let Some(s) = self.slots.iter().find(|s| s.id == id) {
                    match s.run.next_update() {
                        Ok(direction) => self.send(Event::NextUpdate {
                            run: id,
                            step: s.run.step_count(),
                            loss: s.loss.clone(),
                            origin: s.run.flat_params(),
                            direction,
                        }),
                        Err(d) => self.send(Event::Failed(d.headline())),
                    }
                }
            }
            Command::SaveParams { path, note } => {
                let runs: Vec<&Run> = self.slots.iter().map(|s| &s.run).collect();
                let result = save::save_runs(&path, &runs).map_err(|e| e.to_string());
                self.send(Event::SavedParams { note, result });
            }
            Command::Ping(n) => {
                self.report();
                self.send(Event::Pong(n));
            }
            Command::Shutdown => {}
        }
    }

    /// Drops the targets of [`Command::Step`], and tells the UI when there were any.
    fn end_stepping(&mut self) {
        let mut ended = false;
        for s in &mut self.slots {
            ended |= s.target.take().is_some();
        }
        if ended {
            self.send(Event::Stepping(None));
        }
    }

    /// Gives run `id` `steps` steps and tells the UI.
    fn set_steps(&mut self, id: RunId, steps: u64) {
        if let Some(s) = self.slots.iter_mut().find(|s| s.id == id) {
            s.run.config.steps = steps;
            self.send(Event::Steps(id, steps));
        }
    }

    fn rewind(&mut self, to: impl Fn(u64) -> u64) {
        // The UI must hold every step before it is told to drop some.
        self.report();
        for i in 0..self.slots.len() {
            let target = to(self.slots[i].run.step_count());
            let id = self.slots[i].id;
            if let Err(d) = self.slots[i].run.rewind_to(target) {
                self.send(Event::Failed(d.headline()));
            }
            // The UI drops the current row too: it had the update taken from there.
            let len = self.slots[i].run.step_count() as usize;
            self.slots[i].sent = len;
            self.slots[i].sent_current = false;
            self.slots[i].target = None;
            self.send(Event::Truncated(id, len, self.slots[i].run.lr_scale));
            self.send(Event::Params(id, stats(&self.slots[i].run)));
            self.send_metrics(id, &self.slots[i].run);
        }
        self.send_paths();
    }

    /// Projects every run's whole path onto the plane again (after a rewind or a new plane).
    fn send_paths(&mut self) {
        let mut slots = std::mem::take(&mut self.slots);
        for s in &mut slots {
            self.send_path(s, true);
        }
        self.slots = slots;
    }

    /// Sends a run's path points on the plane: all of them, or those not sent yet.
    fn send_path(&self, slot: &mut Slot, replace: bool) {
        let Some(plane) = &self.plane else {
            return;
        };
        let after = if replace { None } else { slot.path_sent };
        let points: Vec<(u64, [f64; 2])> = slot
            .run
            .trajectory(after)
            .into_iter()
            .map(|(k, p)| (k, plane.project(&p)))
            .collect();
        if let Some(&(k, _)) = points.last() {
            slot.path_sent = Some(k);
        }
        if replace || !points.is_empty() {
            self.send(Event::Path {
                run: slot.id,
                points,
                replace,
            });
        }
    }

    /// A plane through run `id`'s current point; two-param losses keep their coordinates.
    fn new_plane(&mut self, id: RunId, kind: PlaneKind, seed: u64) {
        if self
            .plane
            .as_ref()
            .is_some_and(|p| p.kind == PlaneKind::Coordinates)
        {
            return;
        }
        let Some(s) = self.slots.iter().find(|s| s.id == id) else {
            return;
        };
        let step = s.run.step_count();
        let plane = Plane::slice(
            kind,
            s.run.flat_params(),
            s.run.recent_direction(),
            &self.shapes,
            seed,
        );
        let plane = Arc::new(plane);
        self.plane = Some(Arc::clone(&plane));
        self.send(Event::Plane(plane, Some((id, step))));
        self.send_paths();
    }

    /// Batches the runs that have not stepped yet and step alike (see [`batch`]).
    fn form_batches(&mut self) {
        let free: Vec<usize> = (0..self.slots.len())
            .filter(|&i| !self.batched(self.slots[i].id))
            .collect();
        let runs: Vec<&Run> = free.iter().map(|&i| &self.slots[i].run).collect();
        for group in batch::groups(&self.compiled, &runs) {
            let lanes: Vec<&Run> = group.iter().map(|&g| runs[g]).collect();
            let ids = group.iter().map(|&g| self.slots[free[g]].id).collect();
            match Batch::new(&self.compiled, &lanes, ids) {
                Ok(Some(b)) => self.batches.push(b),
                Ok(None) => {}
                Err(d) => self.send(Event::Failed(d.headline())),
            }
        }
    }

    fn batched(&self, id: RunId) -> bool {
        self.batches.iter().any(|b| b.ids().contains(&id))
    }

    /// Run `id` leaves its batch (if in one) and steps alone from where it is.
    fn unbatch(&mut self, id: RunId) {
        let Some(b) = self.batches.iter().position(|b| b.ids().contains(&id)) else {
            return;
        };
        let r = self.batches[b].ids().iter().position(|&x| x == id);
        let slot = self.slots.iter_mut().find(|s| s.id == id);
        if let (Some(r), Some(slot)) = (r, slot)
            && let Err(d) = self.batches[b].leave(r, &mut slot.run)
        {
            (self.emit)(Event::Failed(d.headline()));
        }
        self.prune_batches();
    }

    /// A batch left with one lane steps it alone.
    fn prune_batches(&mut self) {
        while let Some(b) = self.batches.iter().position(|b| b.len() == 1) {
            let id = self.batches[b].ids()[0];
            if let Some(slot) = self.slots.iter_mut().find(|s| s.id == id)
                && let Err(d) = self.batches[b].leave(0, &mut slot.run)
            {
                (self.emit)(Event::Failed(d.headline()));
            }
        }
        self.batches.retain(|b| !b.is_empty());
    }

    /// One step of every batch whose runs all move; runs that stop moving leave first.
    /// Returns whether any batch stepped.
    fn step_batches(&mut self) -> bool {
        let playing = self.playing;
        let still: Vec<RunId> = self
            .slots
            .iter()
            .filter(|s| self.batched(s.id) && !s.moving(playing))
            .map(|s| s.id)
            .collect();
        for id in still {
            self.unbatch(id);
        }
        let (mut stepped, mut failed) = (Vec::new(), Vec::new());
        for b in 0..self.batches.len() {
            let ids = self.batches[b].ids().to_vec();
            let mut by_id: Vec<Option<&mut Slot>> = self.slots.iter_mut().map(Some).collect();
            let mut lanes: Vec<&mut Run> = ids
                .iter()
                .filter_map(|id| {
                    by_id
                        .iter_mut()
                        .find(|s| s.as_ref().is_some_and(|s| s.id == *id))?
                        .take()
                        .map(|s| &mut s.run)
                })
                .collect();
            if let Err(d) = self.batches[b].step(&mut lanes) {
                (self.emit)(Event::Failed(d.headline()));
                failed.extend(&ids);
            }
            stepped.extend(ids);
        }
        for id in failed {
            self.unbatch(id);
        }
        self.prune_batches();
        for id in &stepped {
            if let Some(i) = self.slots.iter().position(|s| s.id == *id) {
                self.follow_lr_plan(i);
            }
        }
        !stepped.is_empty()
    }

    /// Gives every batched run its current params and gradients, for reports that read them.
    fn sync_lanes(&mut self) {
        for b in &self.batches {
            for (r, id) in b.ids().iter().enumerate() {
                if let Some(slot) = self.slots.iter_mut().find(|s| s.id == *id)
                    && let Err(d) = b.sync(r, &mut slot.run)
                {
                    (self.emit)(Event::Failed(d.headline()));
                }
            }
        }
    }

    fn step_slot(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if let Err(d) = slot.run.step() {
            slot.run.halted = Some(crate::run::Halt {
                step: slot.run.step_count(),
                reason: d.headline(),
                provenance: None,
                diverged: false,
            });
        }
        self.follow_lr_plan(i);
    }

    /// Sets the learning-rate multipliers a slot's plan has for the step it has reached.
    fn follow_lr_plan(&mut self, i: usize) {
        let step = self.slots[i].run.step_count();
        if self.slots[i]
            .lr_plan
            .front()
            .is_some_and(|(k, _)| *k <= step)
        {
            self.unbatch(self.slots[i].id);
        }
        let slot = &mut self.slots[i];
        while let Some(&(_, scale)) = slot.lr_plan.front().filter(|(k, _)| *k <= step) {
            slot.lr_plan.pop_front();
            slot.run.set_lr_scale(scale);
            (self.emit)(Event::LrScale(slot.id, scale, step));
        }
    }

    /// Sends every row not yet reported, halts, and the inspector's numbers.
    fn report(&mut self) {
        self.report_rows(usize::MAX);
    }

    /// [`Worker::report`] with at most `most` rows of each run (the rest go in the next one),
    /// then a [`Receipt`] for the UI to drop once it has applied them.
    fn report_rows(&mut self, most: usize) {
        self.sync_lanes();
        let mut slots = std::mem::take(&mut self.slots);
        let mut sent = false;
        for s in &mut slots {
            if let Some(rows) = s.unsent(self.playing, most) {
                sent = true;
                let records: Vec<StepRecord> = rows
                    .clone()
                    .filter_map(|k| s.run.history().get(k))
                    .collect();
                // Before the rows, so that its report heads the run's stall count.
                if let Some(stall) = s.run.first_stall.as_ref()
                    && rows.contains(&(stall.step as usize))
                {
                    let file = &self.compiled.file;
                    (self.emit)(Event::Report(
                        s.id,
                        stall.step,
                        stall.short(file),
                        Box::new(stall.diagnostic(file)),
                    ));
                }
                (self.emit)(Event::Records(s.id, records));
                // After the rows: it completes their first non-finite step's warning.
                if let Some((k, d)) = s.run.nonfinite_report()
                    && rows.contains(&(k as usize))
                {
                    let text = format!("went on past non-finite values: {}", d.message);
                    (self.emit)(Event::Report(s.id, k, text, Box::new(d)));
                }
                s.sent = rows.end;
                let h = s.run.history();
                s.sent_current =
                    rows.end == h.len() && h.core(rows.end - 1).flags & flags::STEPPED == 0;
                (self.emit)(Event::Params(s.id, stats(&s.run)));
                self.send_metrics(s.id, &s.run);
                if let Some(h) = &s.run.halted {
                    let reason = match &h.provenance {
                        // A divergence's reason names the overflowing op itself.
                        Some(_) if h.diverged => h.reason.clone(),
                        Some(p) => {
                            format!("starts at {}; {}", p.summary_at(s.run.source()), h.reason)
                        }
                        None => h.reason.clone(),
                    };
                    let diagnostic = h.diagnostic(s.run.source()).map(Box::new);
                    (self.emit)(Event::Halted(s.id, h.step, reason, diagnostic));
                }
                self.send_path(s, false);
            }
        }
        self.slots = slots;
        if sent {
            self.send(Event::Reported(Receipt(Arc::clone(&self.receipt))));
        }
    }
}

/// Holds a turn at the cores while the worker has work (`busy`), handing it to the next in line
/// once it has lasted its time, and none while it waits for commands.
fn take_turns<'a>(turns: &'a Turns, turn: &mut Option<Turn<'a>>, busy: bool) {
    if !busy || turn.as_ref().is_some_and(Turn::over) {
        *turn = None;
    }
    if busy && turn.is_none() {
        *turn = Some(turns.take());
    }
}

impl Slot {
    /// Whether the run takes a step in this turn of the loop.
    fn moving(&self, playing: bool) -> bool {
        match self.target {
            Some(t) => self.run.step_count() < t && self.run.halted.is_none(),
            None => playing && !self.run.is_done(),
        }
    }

    /// The rows to send the UI, if any, at most `most`: those it lacks, from the one it holds
    /// before the run stepped from it. A moving run's current row waits (it would be replaced
    /// at once).
    fn unsent(&self, playing: bool, most: usize) -> Option<std::ops::Range<usize>> {
        let h = self.run.history();
        let len = h.len();
        let current_open = len > 0 && h.core(len - 1).flags & flags::STEPPED == 0;
        let end = if self.moving(playing) && current_open {
            len - 1
        } else {
            len
        };
        let start = self.sent - usize::from(self.sent_current);
        let unchanged = self.sent_current && end == self.sent && current_open;
        (end > start && !unchanged).then_some(start..end.min(start.saturating_add(most)))
    }
}

fn stats(run: &Run) -> Vec<ParamStats> {
    let grads = run
        .current()
        .map(|e| e.grads.as_slice())
        .unwrap_or_default();
    run.param_names()
        .iter()
        .zip(run.params())
        .enumerate()
        .map(|(i, (name, var))| ParamStats {
            name: name.clone(),
            shape: var.as_tensor().dims().to_vec(),
            value: TensorStats::of(var.as_tensor()),
            grad: grads.get(i).map(TensorStats::of),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::mpsc::channel;

    use super::*;

    #[test]
    fn a_playing_report_carries_at_most_its_rows_and_the_next_goes_on_from_there() {
        let text = "name = \"bowl\"\nloss = \"(x - 1)^2\"\n[params]\nx = 0.0\n\
                    [optimizer]\nname = \"sgd\"\nlr = 0.001\nsteps = 20000\n";
        let loaded = crate::lang::file::load_bytes(Path::new("t.toml"), text.as_bytes().into());
        let compiled = crate::compile::compile(loaded.file.expect("loads")).0;
        let compiled = compiled.expect("compiles");
        let (tx, rx) = channel();
        let mut worker = Worker::new(compiled.clone(), Box::new(move |e| drop(tx.send(e))));
        worker.add(RunPlan::file(&compiled).remove(0));
        worker.playing = true;
        let steps = REPORT_ROWS + 100;
        for _ in 0..steps {
            worker.step_slot(0);
        }
        worker.report_rows(REPORT_ROWS);
        worker.report();
        let reports: Vec<Vec<u64>> = rx
            .try_iter()
            .filter_map(|e| match e {
                Event::Records(_, rows) => Some(rows.iter().map(|r| r.step).collect()),
                _ => None,
            })
            .collect();
        // Rows 0..steps (the current one, stepped from next, waits): the first report takes
        // REPORT_ROWS of them, the next the rest.
        let first: Vec<u64> = (0..REPORT_ROWS as u64).collect();
        let rest: Vec<u64> = (REPORT_ROWS as u64..steps as u64).collect();
        assert_eq!(reports, [first, rest]);
    }
}
