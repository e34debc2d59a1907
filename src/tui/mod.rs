//! The terminal UI: `gradscope [PATH]`. The event loop draws about 30 frames a second, feeds
//! keys, mouse, worker events and file changes into [`app::App::handle`] (update, then the I/O
//! it asks for), and restores the terminal on quit, ctrl-c, SIGTERM and panic.

/// The model, its messages and actions, and `update`.
pub mod app;
/// Frame-time and stepping-speed measurements for `gradscope bench`.
pub mod bench;
/// What an edit changed in a loss file.
pub mod changes;
/// Chart metrics and their summaries.
pub mod chart;
/// The comparison table of a file's runs.
pub mod compare;
/// What keys, dialogs and the mouse do to the model.
pub mod input;
/// The one key table.
pub mod keys;
/// The Landscape tab's state.
pub mod landscape_view;
/// Layout and hit-testing.
pub mod layout;
/// The dialogs' one-line text field.
pub mod line_edit;
/// The `[metrics]` a run view keeps, and which tabs and metric are shown.
pub mod metrics;
/// The I/O `update` asks for, and `App::handle`.
pub mod perform;
/// Multi-resolution summaries behind long charts.
pub mod pyramid;
/// Drawing, one module a region.
pub mod render;
/// A loss file's runs, worker and landscape threads.
pub mod session;
/// The Sweep tab: a sweep of the selected run on a thread of its own.
pub mod sweep;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use crossterm::event::{self, DisableMouseCapture, EnableMouseCapture, Event as TermEvent};
use crossterm::execute;
use notify::{RecursiveMode, Watcher};
use ratatui::Terminal;
use ratatui::backend::Backend;

use self::app::{Action, App, Msg};
use crate::diagnostic;

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

/// Frame interval (about 30 frames a second).
const FRAME: Duration = Duration::from_millis(33);

/// Opens the TUI on `path` (a directory of loss files or one file); `w` and `p` write into
/// `out_dir` when given, else next to the loss file.
pub fn run(path: &Path, out_dir: Option<&Path>) -> anyhow::Result<()> {
    if !path.exists() {
        anyhow::bail!(
            "no such file or directory: {} (`gradscope PATH` opens a folder of loss files or one file)",
            path.display()
        );
    }
    if !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        anyhow::bail!(
            "the TUI needs a terminal; in scripts and CI use `gradscope run FILE` or `gradscope check`"
        );
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t);
    }
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            ratatui::restore();
            anyhow::bail!("cannot set up the terminal: {e}");
        }
    };
    // Ours wraps ratatui's hook (which restores the terminal): a panic that a worker's loop
    // catches becomes a message in the UI, so it must neither restore the terminal under the
    // running TUI nor print over it.
    let restore_and_report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if diagnostic::panics_are_caught() {
            return;
        }
        let _ = execute!(std::io::stdout(), DisableMouseCapture);
        restore_and_report(info);
    }));
    let _ = execute!(std::io::stdout(), EnableMouseCapture);
    let result = event_loop(&mut terminal, path, out_dir);
    let _ = execute!(std::io::stdout(), DisableMouseCapture);
    ratatui::restore();
    result
}

fn watch(path: &Path, tx: Sender<Msg>) -> Option<notify::RecommendedWatcher> {
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only changes: reading a file (as a reload does) raises access events too.
        if let Ok(e) = res
            && (e.kind.is_modify() || e.kind.is_create() || e.kind.is_remove())
        {
            for p in e.paths {
                let _ = tx.send(Msg::FileChanged(p));
            }
        }
    })
    .ok()?;
    w.watch(path, RecursiveMode::Recursive).ok()?;
    Some(w)
}

/// The folder to watch for `path` and the folder as the user typed it: the path itself, or a
/// single file's folder (editors save by replacing the file, which a watch on the file itself
/// loses after the first save; its folder also holds the CSVs it reads).
fn watched(path: &Path) -> (PathBuf, PathBuf) {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new(""))
    };
    let here = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let canonical = here.canonicalize().unwrap_or_else(|_| here.to_path_buf());
    (canonical, dir.to_path_buf())
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    path: &Path,
    out_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let (tx, rx) = channel();
    let (root, typed) = watched(path);
    let mut watcher = watch(&root, tx.clone());
    let mut folders = vec![(root.clone(), typed.clone())];
    // The `optimizers/` folders above the watched one serve its loss files too.
    for dir in crate::load::optimizer_dirs(&typed) {
        let Ok(canonical) = dir.canonicalize() else {
            continue;
        };
        if let Some(w) = watcher.as_mut().filter(|_| !canonical.starts_with(&root))
            && w.watch(&dir, RecursiveMode::NonRecursive).is_ok()
        {
            folders.push((canonical, dir));
        }
    }
    // Loading compiles every file and computes its data (seconds for a large data matrix):
    // a blank terminal meanwhile looked like a hang.
    terminal.draw(|f| {
        let note = format!(" gradscope: loading {}…", path.display());
        f.render_widget(ratatui::widgets::Paragraph::new(note), f.area());
    })?;
    let mut app = App::open(path, tx);
    app.out_dir = out_dir.map(Path::to_path_buf);
    let size = terminal.size()?;
    app.handle(Msg::Resize(size.width, size.height));
    let mut events = EventLoop::new(rx, folders);
    loop {
        match events.frame(&mut app, terminal, &mut TerminalInput)?.action {
            Some(Action::Quit) => break,
            Some(Action::Edit(file)) => {
                let edited = edit(terminal, &file)?;
                app.handle(edited);
            }
            Some(Action::Io(_)) | None => {}
        }
        if TERMINATE.load(Ordering::SeqCst) {
            break;
        }
    }
    let_go(app, events);
    Ok(())
}

/// Drops the app on a thread of its own, so the terminal is given back at once: freeing the
/// histories of a hundred runs took 180 ms after `q` (the process may end before it is done).
fn let_go(app: App, events: EventLoop) {
    let parting = std::thread::Builder::new()
        .name("let-go".into())
        .spawn(move || drop((app, events)));
    // Without a thread to spare, `drop` runs here, where it would have anyway.
    drop(parting);
}

/// Where the event loop reads keys, the mouse and resizes from: the terminal, or a benchmark's
/// scripted keys.
pub trait Input {
    /// The next input that comes within `timeout`, if any.
    fn next(&mut self, timeout: Duration) -> std::io::Result<Option<Msg>>;
}

/// The terminal's input, through crossterm.
struct TerminalInput;

impl Input for TerminalInput {
    fn next(&mut self, timeout: Duration) -> std::io::Result<Option<Msg>> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !event::poll(left)? {
                break;
            }
            match event::read()? {
                TermEvent::Key(k) => return Ok(Some(Msg::Key(k))),
                TermEvent::Mouse(m) => return Ok(Some(Msg::Mouse(m))),
                TermEvent::Resize(w, h) => return Ok(Some(Msg::Resize(w, h))),
                _ => {}
            }
        }
        Ok(None)
    }
}

/// The event loop's state besides the app: where the sessions' events arrive, and file changes
/// waiting to settle.
pub struct EventLoop {
    rx: Receiver<Msg>,
    changed: Vec<(PathBuf, Instant)>,
    /// The watched folders, canonical and as typed.
    folders: Vec<(PathBuf, PathBuf)>,
}

/// What one frame of the event loop did.
pub struct Turn {
    /// What only the caller can do (quit, edit), asked for by an input; the frame ends there.
    pub action: Option<Action>,
    /// How long drawing took.
    pub draw: Duration,
    /// The CPU time drawing took (None where the OS does not say): less than `draw` by the
    /// time the thread waited for a core.
    pub draw_cpu: Option<Duration>,
    /// When each input of the frame had been handled, in order.
    pub handled: Vec<Instant>,
}

impl EventLoop {
    /// The loop over `rx` (where the app's sessions send their events); `folders` are the
    /// watched folders, canonical and as typed.
    pub fn new(rx: Receiver<Msg>, folders: Vec<(PathBuf, PathBuf)>) -> Self {
        Self {
            rx,
            changed: Vec::new(),
            folders,
        }
    }

    /// One frame: draws, feeds the sessions' events and settled file changes in and ticks, then
    /// handles input until the next frame is due. The drawing comes first, straight after the
    /// wait: fed events in first, the UI thread had used its scheduler slice up by the time it
    /// drew, and a worker preempted it mid-frame for a few milliseconds (with 30 files playing,
    /// 8-16 frames in 8 s waited over 1 ms for a core; 1-4 since).
    pub fn frame<B: Backend>(
        &mut self,
        app: &mut App,
        terminal: &mut Terminal<B>,
        input: &mut impl Input,
    ) -> anyhow::Result<Turn>
    where
        B::Error: Send + Sync + 'static,
    {
        let (started, cpu) = (Instant::now(), crate::thread_cpu_time());
        // The workers hold off until the frame is rendered and written out: woken while it is
        // written, they took the UI's core from it.
        let drawing = crate::run::turns::drawing();
        terminal.draw(|f| render::render(f, app))?;
        drop(drawing);
        let mut turn = Turn {
            action: None,
            draw: started.elapsed(),
            draw_cpu: cpu.zip(crate::thread_cpu_time()).map(|(a, b)| b - a),
            handled: Vec::new(),
        };
        let deadline = Instant::now() + FRAME;
        self.drain(app);
        app.handle(Msg::Tick);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(msg) = input.next(left)? else {
                break;
            };
            let action = app.handle(msg);
            turn.handled.push(Instant::now());
            if let Some(a @ (Action::Quit | Action::Edit(_))) = action {
                turn.action = Some(a);
                return Ok(turn);
            }
        }
        Ok(turn)
    }

    /// Feeds worker events in, and file changes once they have been quiet for 150 ms (editors
    /// write a file in several steps).
    fn drain(&mut self, app: &mut App) {
        let started = Instant::now();
        while let Ok(m) = self.rx.try_recv() {
            match m {
                Msg::FileChanged(p) => {
                    let p = as_typed(&p, &self.folders);
                    self.changed.retain(|(q, _)| q != &p);
                    self.changed.push((p, Instant::now()));
                }
                m => {
                    app.handle(m);
                }
            }
            if started.elapsed() > FRAME / 2 {
                break;
            }
        }
        let quiet = Duration::from_millis(150);
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .changed
            .drain(..)
            .partition(|(_, t)| t.elapsed() >= quiet);
        self.changed = waiting;
        for (p, _) in ready {
            app.handle(Msg::FileChanged(p));
        }
    }
}

/// Watcher paths are absolute; the app's are as the user typed them (`watched` holds each
/// watched folder as the watcher names it, canonical, and as typed).
fn as_typed(p: &Path, watched: &[(PathBuf, PathBuf)]) -> PathBuf {
    watched
        .iter()
        .find_map(|(canonical, dir)| Some(dir.join(p.strip_prefix(canonical).ok()?)))
        .unwrap_or_else(|| p.to_path_buf())
}

/// Suspends the TUI, runs `$EDITOR` on `file`, and resumes; what came of it is a message for the
/// app: an editor that cannot be started is news for the status line, not the end of the session.
fn edit(terminal: &mut ratatui::DefaultTerminal, file: &Path) -> anyhow::Result<Msg> {
    let _ = execute!(std::io::stdout(), DisableMouseCapture);
    ratatui::restore();
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let mut parts = editor.split_whitespace();
    let program = parts.next().unwrap_or("vi");
    let status = std::process::Command::new(program)
        .args(parts)
        .arg(file)
        .status();
    *terminal = ratatui::init();
    let _ = execute!(std::io::stdout(), EnableMouseCapture);
    terminal.clear()?;
    Ok(match status {
        Ok(_) => Msg::Edited(file.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Msg::Status(format!(
            "could not start `{editor}`: not found (set $VISUAL or $EDITOR)"
        )),
        Err(e) => Msg::Status(format!("could not start `{editor}`: {e}")),
    })
}
