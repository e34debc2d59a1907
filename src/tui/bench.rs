//! Measurements for `gradscope bench`: how long one frame takes to draw with long histories, and
//! how fast a workload steps while the TUI is drawing (against the headless figure).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::app::{App, Msg, Tab};
use crate::run::history::StepRecord;
use crate::run::worker::{Command, Event};

/// Median time in ms to draw a `w` x `h` frame of `file`'s `tab` with `points` steps in every
/// run (and as many path points, for the Landscape tab, once its grid is complete).
pub fn frame_ms(file: &Path, points: usize, w: u16, h: u16, tab: Tab) -> anyhow::Result<f64> {
    let (mut app, rx) = App::detached(file);
    app.settle(&rx);
    let session = app
        .session()
        .ok_or_else(|| anyhow::anyhow!("{} has no runs", file.display()))?;
    let (id, runs) = (
        session.id,
        session
            .runs
            .iter()
            .map(|r| (r.info.id, r.params.len()))
            .collect::<Vec<_>>(),
    );
    for (rid, n) in runs {
        let records: Vec<StepRecord> = (0..points)
            .map(|k| {
                let loss = 1.0 / (1.0 + k as f64) + 0.1 * ((k as f64) * 0.01).sin().abs();
                StepRecord::synthetic(k as u64, loss, n)
            })
            .collect();
        app.handle(Msg::Worker(id, Event::Records(rid, records)));
        // A spiral into the start point: long paths that cross many cells.
        let path = (0..points)
            .map(|k| {
                let r = 1.0 / (1.0 + k as f64 * 1e-3);
                let a = k as f64 * 1e-2;
                (k as u64, [-1.5 + r * a.cos(), 2.0 + r * a.sin()])
            })
            .collect();
        app.handle(Msg::Worker(
            id,
            Event::Path {
                run: rid,
                points: path,
                replace: true,
            },
        ));
    }
    app.handle(Msg::Resize(w, h));
    app.tab = tab;
    if tab == Tab::Landscape {
        app.handle(Msg::Tick);
        let done = |m: &Msg| {
            matches!(
                m,
                Msg::Landscape(_, crate::landscape::service::Report::GridDone { .. })
            )
        };
        while let Ok(m) = rx.recv_timeout(Duration::from_secs(60)) {
            let last = done(&m);
            app.handle(m);
            if last {
                break;
            }
        }
    }
    let mut terminal = Terminal::new(TestBackend::new(w, h))?;
    let mut times = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        terminal.draw(|f| super::render::render(f, &app))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Steps per second of the first run of `file` played to its configured end while a 200x60
/// frame of `tab` is drawn every 33 ms, as the TUI does (the Landscape tab also keeps its grid
/// and learning-rate slice up to date).
pub fn steps_per_s(file: &Path, tab: Tab) -> anyhow::Result<f64> {
    let (mut app, rx) = App::detached(file);
    app.settle(&rx);
    let id = app
        .session()
        .map(|s| s.id)
        .ok_or_else(|| anyhow::anyhow!("{} has no runs", file.display()))?;
    app.handle(Msg::Resize(200, 60));
    app.tab = tab;
    let mut terminal = Terminal::new(TestBackend::new(200, 60))?;
    app.command(Command::Play);
    let started = Instant::now();
    let mut next_frame = Instant::now();
    let mut seen_playing = false;
    loop {
        if let Ok(m) = rx.recv_timeout(Duration::from_millis(5)) {
            if let Msg::Worker(s, Event::Playing(p)) = &m
                && *s == id
            {
                seen_playing |= *p;
                if !*p && seen_playing {
                    app.handle(m);
                    break;
                }
            }
            app.handle(m);
        }
        if Instant::now() >= next_frame {
            terminal.draw(|f| super::render::render(f, &app))?;
            app.handle(Msg::Tick);
            next_frame += Duration::from_millis(33);
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("{} did not finish in 10 minutes", file.display());
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    app.settle(&rx);
    let steps = app
        .session()
        .and_then(|s| s.runs.first())
        .map_or(0, |r| r.history.len());
    Ok(steps as f64 / elapsed)
}

/// How the TUI answers while many files play: from a key reaching the app to its being handled,
/// and how long frames take to draw, driven by the TUI's own event loop on a test backend.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UnderLoad {
    /// Loss files playing at once.
    pub files: usize,
    /// How long they played while keys came.
    pub seconds: f64,
    /// Their runs, all playing.
    pub runs: usize,
    /// Keys pressed while they played (the quit key not counted).
    pub keys: usize,
    pub key_median_ms: f64,
    pub key_max_ms: f64,
    /// From the quit key reaching the app to the app let go (its sessions told to stop, the
    /// terminal free to be given back).
    pub quit_ms: f64,
    /// Frames drawn while they played.
    pub frames: usize,
    pub frame_median_ms: f64,
    pub frame_p99_ms: f64,
    pub frame_max_ms: f64,
    /// The most CPU time a frame's drawing took (NaN where the OS does not say): what the
    /// app's own work costs, without the time its thread waited for a core.
    pub frame_cpu_max_ms: f64,
    /// Frames whose drawing waited more than 1 ms for a core (wall time past CPU time): the
    /// frames that other threads, ours or other processes', preempted.
    pub frames_preempted: usize,
    /// Steps a second over all runs, as the app received them.
    pub steps_per_s: f64,
}

/// Keys that reach the app at set times, as typed into a terminal: each is given out once due,
/// and queues behind the others when the loop is late.
struct Scripted {
    keys: VecDeque<(Instant, KeyEvent)>,
    /// When each key given out had arrived, in order.
    arrived: Vec<Instant>,
}

impl Scripted {
    /// `keys`, one every `gap` from `start` on.
    fn new(keys: impl Iterator<Item = char>, start: Instant, gap: Duration) -> Self {
        Self {
            keys: (1..)
                .zip(keys)
                .map(|(i, c)| (start + gap * i, KeyEvent::from(KeyCode::Char(c))))
                .collect(),
            arrived: Vec::new(),
        }
    }
}

impl super::Input for Scripted {
    fn next(&mut self, timeout: Duration) -> std::io::Result<Option<Msg>> {
        let until = Instant::now() + timeout;
        let Some(&(at, key)) = self.keys.front().filter(|(at, _)| *at <= until) else {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            return Ok(None);
        };
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        self.keys.pop_front();
        self.arrived.push(at);
        Ok(Some(Msg::Key(key)))
    }
}

/// The keys pressed while the files play, in a cycle that ends where it started: the file
/// selection, the help, every chart tab (the Landscape tab's grids included) and back.
const KEYS: &str = "jk??ttttTTTT";

/// [`UnderLoad`] with `files` loss files playing at once (the files of `dir`, repeated as
/// needed) for `seconds`, a key arriving every 97 ms, then `q`; the frame is 200x60.
pub fn under_load(dir: &Path, files: usize, seconds: f64) -> anyhow::Result<UnderLoad> {
    let (mut app, rx) = playing(dir, files)?;
    let mut events = super::EventLoop::new(rx, Vec::new());
    let mut terminal = Terminal::new(TestBackend::new(200, 60))?;
    // A second for every session to start and play before anything is measured.
    let warm = Instant::now() + Duration::from_secs(1);
    let mut idle = Scripted::new(std::iter::empty(), warm, Duration::ZERO);
    while Instant::now() < warm {
        events.frame(&mut app, &mut terminal, &mut idle)?;
    }
    let start = Instant::now();
    let steps_before = steps(&app);
    let n = ((seconds * 1e3 / 97.0) as usize).max(1);
    let keys = KEYS.chars().cycle().take(n).chain(['q']);
    let mut input = Scripted::new(keys, start, Duration::from_millis(97));
    let (mut draws, mut cpu) = (Vec::new(), Vec::new());
    let mut handled = Vec::new();
    loop {
        let turn = events.frame(&mut app, &mut terminal, &mut input)?;
        draws.push(turn.draw.as_secs_f64() * 1e3);
        cpu.push(turn.draw_cpu.map_or(f64::NAN, |c| c.as_secs_f64() * 1e3));
        handled.extend(turn.handled);
        if turn.action == Some(super::app::Action::Quit) {
            break;
        }
    }
    let quit = *handled.last().unwrap_or(&start);
    let steps_per_s = (steps(&app) - steps_before) as f64 / (quit - start).as_secs_f64();
    let runs = sessions(&app).map(|s| s.runs.len()).sum();
    super::let_go(app, events);
    let gone = Instant::now();
    let mut keys: Vec<f64> = input
        .arrived
        .iter()
        .zip(&handled)
        .map(|(a, h)| (*h - *a).as_secs_f64() * 1e3)
        .collect();
    // The last is the quit key.
    keys.pop();
    let quit_arrived = *input.arrived.last().unwrap_or(&start);
    let frames_preempted = draws
        .iter()
        .zip(&cpu)
        .filter(|(w, c)| *w - *c > 1.0)
        .count();
    keys.sort_by(f64::total_cmp);
    draws.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    Ok(UnderLoad {
        files,
        seconds,
        runs,
        keys: keys.len(),
        key_median_ms: quantile(&keys, 0.5),
        key_max_ms: quantile(&keys, 1.0),
        quit_ms: (gone - quit_arrived).as_secs_f64() * 1e3,
        frames: draws.len(),
        frame_median_ms: quantile(&draws, 0.5),
        frame_p99_ms: quantile(&draws, 0.99),
        frame_max_ms: quantile(&draws, 1.0),
        frame_cpu_max_ms: quantile(&cpu, 1.0),
        frames_preempted,
        steps_per_s,
    })
}

/// An app with `files` loss files (those of `dir`, repeated as needed, told apart by path as
/// copies would be) all playing, each run given a billion steps so that none finishes; started
/// and played with the keys a user would press (space, `j`, ...).
fn playing(dir: &Path, files: usize) -> anyhow::Result<(App, Receiver<Msg>)> {
    let (paths, _) = crate::load::discover(&[dir.to_path_buf()]);
    let loaded: Vec<_> = paths
        .iter()
        .map(|p| crate::load::load(p))
        .filter(|f| f.compiled.is_some())
        .collect();
    if loaded.is_empty() {
        anyhow::bail!("no loss file in {} compiles", dir.display());
    }
    // As the TUI does once it has found its files (a no-op where a pool was built before).
    crate::compile::threads::start(
        loaded.iter().filter_map(|f| f.compiled.as_ref()),
        crate::run::worker::NICE,
    );
    let copies = (0..files).map(|i| {
        let mut f = loaded[i % loaded.len()].clone();
        let name = f.path.file_name().unwrap_or_default().to_string_lossy();
        f.path = dir.join(format!("copy-{i:02}-{name}"));
        for r in f.compiled.iter_mut().flat_map(|c| c.runs.iter_mut()) {
            r.settings.steps = 1_000_000_000;
        }
        f
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let (mut app, _) = App::new(dir, tx);
    app.handle(Msg::Discovered {
        base: dir.to_path_buf(),
        files: copies.collect(),
    });
    app.handle(Msg::Resize(200, 60));
    for _ in 0..files {
        for c in [' ', 'j'] {
            app.handle(Msg::Key(KeyEvent::from(KeyCode::Char(c))));
        }
    }
    Ok((app, rx))
}

/// The sessions of `app`'s files.
fn sessions(app: &App) -> impl Iterator<Item = &super::session::Session> {
    app.files.iter().filter_map(|f| f.session.as_ref())
}

/// Steps taken over all runs of `app`, as it holds them.
fn steps(app: &App) -> usize {
    sessions(app).flat_map(|s| &s.runs).map(|r| r.steps()).sum()
}

/// The `q` quantile of `sorted` (NaN when it is empty).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let last = sorted.len().saturating_sub(1) as f64;
    sorted
        .get((last * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}
