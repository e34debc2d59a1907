//! A named thread per loss file that evaluates landscape grids and update-direction lines, so
//! the UI never waits for them. Jobs in, reports out; a newer grid job replaces one in progress
//! (the view moved on), and line jobs are answered between grid chunks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::surface::{LrLine, Mode, Surface};
use super::{Grid, GridSpec, Plane};
use crate::compile::CompiledFile;
use crate::diagnostic::{Diagnostic, catch_panic};
use crate::lang::file::DType;

/// Which loss a job evaluates: a run definition of the file, in a dtype, with consts set over
/// their values (by name, as bits: the consts a run of the TUI's sweep sets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LossKey {
    pub def: usize,
    pub dtype: DType,
    pub consts: Vec<(String, u64)>,
}

/// What the UI asks a landscape thread to compute.
#[derive(Debug, Clone)]
pub enum Job {
    /// The loss over `spec` of `plane`. Point-by-point losses get at most `max_pointwise` cells a
    /// side (a 64x64 grid of a large model already takes tens of seconds).
    Grid {
        generation: u64,
        loss: LossKey,
        plane: Arc<Plane>,
        spec: GridSpec,
        max_pointwise: usize,
    },
    /// The loss at `origin + s * direction` for each of [`super::surface::lr_multiples`]'s `s`.
    Line {
        tag: u64,
        loss: LossKey,
        origin: Vec<f64>,
        direction: Vec<f64>,
    },
    Shutdown,
}

impl Job {
    /// The id its reports carry (None for `Shutdown`).
    fn id(&self) -> Option<JobId> {
        match self {
            Job::Grid { generation, .. } => Some(JobId::Grid(*generation)),
            Job::Line { tag, .. } => Some(JobId::Line(*tag)),
            Job::Shutdown => None,
        }
    }

    /// The loss it evaluates (None for `Shutdown`).
    fn loss(&self) -> Option<&LossKey> {
        match self {
            Job::Grid { loss, .. } | Job::Line { loss, .. } => Some(loss),
            Job::Shutdown => None,
        }
    }
}

/// What a landscape thread tells the UI, chunk by chunk.
#[derive(Debug, Clone)]
pub enum Report {
    /// A grid job started with this (possibly coarsened) spec.
    GridStarted {
        generation: u64,
        spec: GridSpec,
        mode: Mode,
    },
    /// Cells `(row-major index, loss)` of a running grid job.
    GridCells {
        generation: u64,
        cells: Vec<(usize, f64)>,
    },
    GridDone {
        generation: u64,
        elapsed: Duration,
    },
    /// The losses of a line job.
    Line {
        tag: u64,
        line: LrLine,
    },
    /// A job could not be done.
    Failed {
        job: JobId,
        why: String,
    },
}

/// Which job a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobId {
    Grid(u64),
    Line(u64),
}

/// Where a landscape thread's reports go.
pub type Emit = Box<dyn Fn(Report) + Send>;

/// Starts the service for one compiled file.
pub fn spawn(
    name: &str,
    compiled: CompiledFile,
    jobs: Receiver<Job>,
    emit: Emit,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("landscape:{name}"))
        .stack_size(crate::GRAPH_STACK)
        .spawn(move || {
            // Its tensor work stays on it too: the pool's threads run at the runs' priority.
            crate::compile::threads::serial_here();
            crate::lower_thread_priority(NICE);
            Service {
                compiled,
                surfaces: HashMap::new(),
                emit,
            }
            .serve(jobs)
        })
}

/// How much a landscape thread lowers its priority: it yields the CPU to the runs' workers
/// (themselves below the UI) as they would to the UI. A landscape is a view of the runs, and on
/// a machine with few cores a grid of a large model would otherwise halve their steps/s.
const NICE: i32 = 15;

struct Service {
    compiled: CompiledFile,
    surfaces: HashMap<LossKey, Surface>,
    emit: Emit,
}

impl Service {
    fn serve(mut self, jobs: Receiver<Job>) {
        let mut next: Option<Job> = None;
        loop {
            let job = match next.take() {
                Some(j) => j,
                None => match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            match job {
                Job::Shutdown => return,
                Job::Line { .. } => self.line_caught(job),
                Job::Grid { .. } => {
                    // Only the newest grid matters.
                    let mut job = job;
                    loop {
                        match jobs.try_recv() {
                            Ok(Job::Shutdown) | Err(TryRecvError::Disconnected) => return,
                            Ok(j @ Job::Grid { .. }) => job = j,
                            Ok(line) => self.line_caught(line),
                            Err(TryRecvError::Empty) => break,
                        }
                    }
                    let id = job.id();
                    match catch_panic("computing a landscape grid", || self.grid(job, &jobs)) {
                        Ok(Ok(n)) => next = n,
                        Ok(Err(())) => return,
                        Err(d) => self.failed_after_panic(id, d),
                    }
                }
            }
        }
    }

    /// The surface of `key`, prepared on first use.
    fn surface(&mut self, key: &LossKey) -> Result<&Surface, Diagnostic> {
        if !self.surfaces.contains_key(key) {
            let mut compiled = self
                .compiled
                .in_dtype(key.def, key.dtype)
                .ok_or_else(|| Diagnostic::error(format!("no run definition {}", key.def)))?;
            if !key.consts.is_empty() {
                let consts: Vec<(String, f64)> = key
                    .consts
                    .iter()
                    .map(|(n, v)| (n.clone(), f64::from_bits(*v)))
                    .collect();
                let mut def = compiled
                    .with_consts(key.def, &consts)
                    .map_err(Diagnostic::error)?;
                def.dtype = key.dtype;
                compiled.runs[key.def] = def;
            }
            let surface = Surface::new(&compiled, key.def)?;
            self.surfaces.insert(key.clone(), surface);
        }
        Ok(&self.surfaces[key])
    }

    /// A line job; a panic in it fails that job only.
    fn line_caught(&mut self, job: Job) {
        let id = job.id();
        if let Err(d) = catch_panic("computing a learning-rate slice", || self.line(job)) {
            self.failed_after_panic(id, d);
        }
    }

    /// Reports a job that panicked, and drops the cached surfaces it may have left half-built.
    fn failed_after_panic(&mut self, job: Option<JobId>, d: Diagnostic) {
        self.surfaces.clear();
        if let Some(job) = job {
            (self.emit)(Report::Failed {
                job,
                why: d.headline(),
            });
        }
    }

    fn line(&mut self, job: Job) {
        let Job::Line { loss, tag, .. } = &job else {
            return;
        };
        let (loss, tag) = (loss.clone(), *tag);
        match self.surface(&loss) {
            Ok(_) => answer_line(&self.surfaces[&loss], job, &self.emit),
            Err(d) => (self.emit)(Report::Failed {
                job: JobId::Line(tag),
                why: d.headline(),
            }),
        }
    }

    /// Runs a grid job; returns a job that arrived meanwhile and replaces it, or Err when told to
    /// shut down.
    fn grid(&mut self, job: Job, jobs: &Receiver<Job>) -> Result<Option<Job>, ()> {
        let Job::Grid {
            generation,
            loss,
            plane,
            mut spec,
            max_pointwise,
        } = job
        else {
            return Ok(None);
        };
        let mode = match self.surface(&loss) {
            Ok(surface) => surface.mode(),
            Err(d) => {
                (self.emit)(Report::Failed {
                    job: JobId::Grid(generation),
                    why: d.headline(),
                });
                return Ok(None);
            }
        };
        if mode == Mode::Pointwise {
            spec.nx = spec.nx.min(max_pointwise);
            spec.ny = spec.ny.min(max_pointwise);
        }
        (self.emit)(Report::GridStarted {
            generation,
            spec: spec.clone(),
            mode,
        });
        let started = Instant::now();
        let mut grid = Grid::new(spec);
        let mut replaced: Result<Option<Job>, ()> = Ok(None);
        let mut lines = Vec::new();
        let surfaces = &self.surfaces;
        let surface = surfaces.get(&loss).expect("made above");
        let emit = &self.emit;
        let result = surface.fill(&plane, &mut grid, &mut |cells| {
            emit(Report::GridCells {
                generation,
                cells: cells.to_vec(),
            });
            loop {
                match jobs.try_recv() {
                    Ok(Job::Shutdown) | Err(TryRecvError::Disconnected) => {
                        replaced = Err(());
                        return false;
                    }
                    Ok(j @ Job::Grid { .. }) => {
                        replaced = Ok(Some(j));
                        return false;
                    }
                    // A line of a loss already prepared is answered now, others after the grid.
                    Ok(line @ Job::Line { .. }) => {
                        match line.loss().and_then(|l| surfaces.get(l)) {
                            Some(s) => answer_line(s, line, emit),
                            None => lines.push(line),
                        }
                    }
                    Err(TryRecvError::Empty) => return true,
                }
            }
        });
        let finished = matches!(replaced, Ok(None));
        for line in lines {
            self.line(line);
        }
        match result {
            Ok(_) if finished => (self.emit)(Report::GridDone {
                generation,
                elapsed: started.elapsed(),
            }),
            Ok(_) => {}
            Err(d) => (self.emit)(Report::Failed {
                job: JobId::Grid(generation),
                why: d.headline(),
            }),
        }
        replaced
    }
}

fn answer_line(surface: &Surface, job: Job, emit: &Emit) {
    let Job::Line {
        tag,
        origin,
        direction,
        ..
    } = job
    else {
        return;
    };
    emit(match surface.lr_line(&origin, &direction) {
        Ok(line) => Report::Line { tag, line },
        Err(d) => Report::Failed {
            job: JobId::Line(tag),
            why: d.headline(),
        },
    });
}
