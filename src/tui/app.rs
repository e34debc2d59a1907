//! The TUI's model and its one `update` function (The Elm Architecture): every input, worker
//! event and file change is a [`Msg`]; only `update` mutates the [`App`]; rendering reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use crossterm::event::{KeyEvent, KeyEventKind, MouseEvent};
use ratatui::layout::Rect;

use super::line_edit::LineEdit;
use super::session::{Carry, Link, Session, Warning};
use crate::compile::CompiledFile;
use crate::diagnostic::Diagnostic;
use crate::landscape::service::Report;
use crate::lang::file::DType;
use crate::load::{self, LoadedFile};
use crate::optim::catalogue::{self, Entry};
use crate::optim::spec::{OptimizerKind, OptimizerSpec, SettingError};
use crate::optim::tricks::ChainSpec;
use crate::run::worker::{Command, Event, RunId};

/// Everything that can happen to the app, results of the I/O it asked for included.
pub enum Msg {
    Key(KeyEvent),
    Mouse(MouseEvent),
    /// An event from the worker of session `u64`.
    Worker(u64, Event),
    /// A report from the landscape service of session `u64`.
    Landscape(u64, Report),
    /// What sweep `.1` of session `.0` found.
    Swept(u64, u64, super::sweep::SweepMsg),
    /// Once a frame: time for requests that depend on what is on screen.
    Tick,
    /// A file under the watched directory changed, appeared or disappeared.
    FileChanged(PathBuf),
    /// The editor `e` started on this file has exited: it loads again.
    Edited(PathBuf),
    Resize(u16, u16),
    /// The loss files found under the root, each read and compiled, and the folder they
    /// are grouped relative to.
    Discovered {
        base: PathBuf,
        files: Vec<LoadedFile>,
    },
    /// Changed files read and compiled again, each None when it is gone.
    Loaded(Vec<(PathBuf, Option<Box<LoadedFile>>)>),
    /// The session started for the file at this path.
    Started(PathBuf, Box<Session>),
    /// What came of an export, for the status bar.
    Status(String),
}

/// What `update` asks of the world around it: the event loop does what needs the terminal,
/// [`Io`] is done by [`super::perform`], whose result comes back as a [`Msg`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Quit,
    /// Suspend the TUI to edit this file, then reload it.
    Edit(PathBuf),
    Io(Io),
}

/// The I/O `update` asks for; it never does any itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    /// Find and load every loss file under the root.
    Discover,
    /// Read and compile files that changed, appeared or disappeared.
    Load(Vec<PathBuf>),
    /// Start the worker and landscape threads of session `id` for this file.
    Start { file: PathBuf, id: u64 },
    /// Write this file's runs to CSV and JSONL.
    WriteRuns(PathBuf),
    /// Save this file's curves (and landscape) as SVG and PNG.
    SavePictures(PathBuf),
}

/// The panel that `j`/`k`, the arrows and the mouse wheel move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Losses,
    Runs,
    Charts,
    /// `j`/`k` scroll the inspector.
    Inspector,
    /// `j`/`k` select a warning, `enter` opens its diagnostic.
    Warnings,
}

/// Chart tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Loss,
    GradNorm,
    LrRatio,
    Params,
    Landscape,
    /// The file's `[metrics]`, shown only for files that have them.
    Metrics,
    /// The selected file's sweep (`W`), shown only while it has one.
    Sweep,
}

impl Tab {
    /// Every tab, in the tab bar's order.
    pub const ALL: [Tab; 7] = [
        Tab::Loss,
        Tab::GradNorm,
        Tab::LrRatio,
        Tab::Params,
        Tab::Landscape,
        Tab::Metrics,
        Tab::Sweep,
    ];

    /// The tab `k` places after this one among `tabs` (those shown), wrapping around.
    pub fn next(self, k: usize, tabs: &[Tab]) -> Tab {
        let i = tabs.iter().position(|t| *t == self).unwrap_or(0);
        tabs[(i + k) % tabs.len()]
    }

    /// The tab bar's title.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Loss => "Loss",
            Tab::GradNorm => "Grad norm",
            Tab::LrRatio => "LR, Δ/p",
            Tab::Params => "Param norms",
            Tab::Landscape => "Landscape",
            Tab::Metrics => "Metrics",
            Tab::Sweep => "Sweep",
        }
    }
}

/// Steps shown when the x range is limited.
pub const LAST_N: usize = 500;

/// One loss file in the list.
pub struct FileEntry {
    pub path: PathBuf,
    /// Sub-folder relative to the root ("" for the root itself).
    pub group: String,
    pub name: String,
    pub diagnostics: Vec<Diagnostic>,
    /// The text last loaded, so a change event that changed nothing restarts nothing.
    pub text: Option<String>,
    /// The last version that compiled (kept running when a reload is broken).
    pub compiled: Option<CompiledFile>,
    /// The other files it reads (`[data]` CSVs, the optimizer files above it): a change to one
    /// reloads it.
    pub reads: Vec<PathBuf>,
    pub session: Option<Session>,
    /// What its last session kept over an edit, for the next one to take over.
    pub carry: Option<Carry>,
}

impl FileEntry {
    /// Whether the file has an error: from loading it (its last good version, if any, keeps
    /// running), or in a run of its own that cannot start (`check` fails it too).
    pub fn broken(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error) || self.refused().next().is_some()
    }

    /// Why its own runs that cannot start cannot, as `check` says it.
    pub fn refused(&self) -> impl Iterator<Item = &Diagnostic> {
        self.session
            .iter()
            .flat_map(|s| &s.refused)
            .map(|r| &r.diagnostic)
    }

    /// The file name without `.toml`, for the names of files written from it.
    pub fn stem(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "runs".into())
    }
}

/// Whether two paths name the same file, `./` or not.
fn same_path(a: &Path, b: &Path) -> bool {
    parts(a).eq(parts(b))
}

/// Whether `path` is in folder `dir` or below it, `./` or not.
fn under(path: &Path, dir: &Path) -> bool {
    let mut inside = parts(path);
    parts(dir).all(|d| inside.next() == Some(d))
}

/// The components of `p` but `.`.
fn parts(p: &Path) -> impl Iterator<Item = std::path::Component<'_>> {
    p.components()
        .filter(|c| *c != std::path::Component::CurDir)
}

/// A modal dialog.
#[derive(Debug, Clone, PartialEq)]
pub enum Popup {
    /// Pick an optimizer for a new run, or a trick to add to the selected run's chain
    /// (`selected`: an index into [`App::catalogue`]).
    PickOptimizer { selected: usize },
    /// Edit the spec of a new run.
    EditSpec {
        text: LineEdit,
        error: Option<String>,
    },
    /// The sweep form: which of the selected run's hyper-parameters, over which values.
    Sweep {
        text: LineEdit,
        error: Option<String>,
    },
    /// Type a smoothing weight in [0, 1).
    Smoothing {
        text: LineEdit,
        error: Option<String>,
    },
    /// Pick a variant or dtype for a copy of the selected run.
    Duplicate { selected: usize },
    /// The comparison table of the selected file's runs, sorted by `column`.
    Compare { column: usize, descending: bool },
    /// Warning `n` of the selected file in full: its diagnostic as the CLI prints it.
    Warning(usize),
    /// The Hessian of run `run` (its spectrum and heat map, or its top eigenvalue for a large
    /// model), scrolled down by `scroll` lines.
    Hessian { run: RunId, scroll: u16 },
    /// What the inspector answers a key with, over the panels where the terminal has no room
    /// for its panel (scrolled by [`App::inspector_scroll`]).
    Inspector(Answer),
}

/// The keys whose answer the inspector shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `g`
    Gradcheck,
    /// `F`
    LrFind,
    /// `G`
    Formula,
}

/// Options of the duplicate dialog for a file: each variant, then each dtype.
pub fn duplicate_choices(compiled: &CompiledFile) -> Vec<(String, Option<usize>, Option<DType>)> {
    let mut out: Vec<_> = compiled
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("variant: {}", r.name), Some(i), None))
        .collect();
    out.extend(
        DType::ALL
            .iter()
            .map(|d| (format!("dtype: {}", d.name()), None, Some(*d))),
    );
    out
}

/// The whole TUI state.
pub struct App {
    pub root: PathBuf,
    /// The folder the files' groups are relative to (the root, or the one file's folder).
    pub base: PathBuf,
    pub files: Vec<FileEntry>,
    pub selected_file: usize,
    pub focus: Focus,
    pub tab: Tab,
    pub log_y: bool,
    /// The chart's EMA weight (0: no smoothing).
    pub smoothing: f64,
    pub last_n: bool,
    pub per_param: bool,
    /// The metric the Metrics tab charts (an index into the file's `[metrics]`).
    pub metric: usize,
    pub show_help: bool,
    /// The first key the help shows where it is one scrolled column (a small terminal).
    pub help_scroll: usize,
    pub popup: Option<Popup>,
    /// Lines the inspector is scrolled down by (clamped to its length when drawn).
    pub inspector_scroll: usize,
    /// The warning selected in the warnings panel.
    pub warning: usize,
    pub count: Option<u64>,
    pub message: Option<String>,
    pub size: (u16, u16),
    /// Where `w` and `p` write (None: next to the loss file).
    pub out_dir: Option<PathBuf>,
    next_session: u64,
    /// Where the threads of the sessions this app starts send their events.
    pub(super) events: Sender<Msg>,
}

impl App {
    /// An app for `root` (a directory or one file) with no files yet, and its first action:
    /// discovering them. Sessions' threads will send their events to `events`.
    pub fn new(root: &Path, events: Sender<Msg>) -> (Self, Action) {
        let app = Self {
            root: root.to_path_buf(),
            base: PathBuf::new(),
            files: Vec::new(),
            selected_file: 0,
            focus: Focus::Losses,
            tab: Tab::Loss,
            log_y: false,
            smoothing: 0.0,
            last_n: false,
            per_param: false,
            metric: 0,
            show_help: false,
            help_scroll: 0,
            popup: None,
            inspector_scroll: 0,
            warning: 0,
            count: None,
            message: None,
            size: (120, 40),
            out_dir: None,
            next_session: 0,
            events,
        };
        (app, Action::Io(Io::Discover))
    }

    fn entry(&self, report: LoadedFile) -> FileEntry {
        let path = &report.path;
        let group = path
            .parent()
            .and_then(|p| p.strip_prefix(&self.base).ok())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let name = report.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        FileEntry {
            path: path.clone(),
            group,
            name,
            text: report.source.as_ref().map(|s| s.text.clone()),
            diagnostics: report.diagnostics,
            compiled: report.compiled,
            reads: report.reads,
            session: None,
            carry: None,
        }
    }

    fn sort_files(&mut self) {
        let selected = self.files.get(self.selected_file).map(|f| f.path.clone());
        self.files
            .sort_by(|a, b| (a.group.as_str(), &a.path).cmp(&(b.group.as_str(), &b.path)));
        if let Some(p) = selected {
            self.selected_file = self.files.iter().position(|f| f.path == p).unwrap_or(0);
        }
        self.selected_file = self.selected_file.min(self.files.len().saturating_sub(1));
    }

    /// File `index`'s name as the losses list shows it: two files of one name are told apart by
    /// their file stems.
    pub fn file_label(&self, index: usize) -> String {
        let f = &self.files[index];
        if self.files.iter().filter(|g| g.name == f.name).count() > 1 {
            // The stem first: a long name is cut at the panel's edge, and the stem is what
            // tells the two apart.
            format!("{}: {}", f.stem(), f.name)
        } else {
            f.name.clone()
        }
    }

    /// Files grouped by sub-folder, in display order.
    pub fn groups(&self) -> BTreeMap<&str, Vec<usize>> {
        let mut g: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, f) in self.files.iter().enumerate() {
            g.entry(f.group.as_str()).or_default().push(i);
        }
        g
    }

    /// A spec typed in the add-run dialog; the selected file's own optimizers may be named.
    pub fn parse_spec(&self, text: &str) -> Result<ChainSpec, SettingError> {
        match self.file().and_then(|f| f.compiled.as_ref()) {
            Some(c) => c
                .spec(text)?
                .over(&OptimizerSpec::new(OptimizerKind::Adam), &[]),
            None => ChainSpec::parse(text),
        }
    }

    /// The selected file.
    pub fn file(&self) -> Option<&FileEntry> {
        self.files.get(self.selected_file)
    }

    /// Everything the `o` list offers, in list order: it is drawn and chosen from this one list,
    /// so a section added here is both.
    pub fn catalogue(&self) -> Vec<Entry> {
        match self.file().and_then(|f| f.compiled.as_ref()) {
            Some(c) => catalogue::with_own(&c.optimizers),
            None => catalogue::registry(),
        }
    }

    /// The chain a new run starts from: the selected run's optimizer and tricks; with no run, the
    /// file's own (its base definition's); adam with its defaults before the file compiles.
    pub fn current_chain(&self) -> ChainSpec {
        if let Some(r) = self.session().and_then(|s| s.selected_run()) {
            return r.info.optimizer.clone();
        }
        let base = self.file().and_then(|f| f.compiled.as_ref()?.runs.first());
        base.map_or_else(
            || OptimizerSpec::new(OptimizerKind::Adam).into(),
            |d| d.settings.chain(),
        )
    }

    /// The selected file's session, once started.
    pub fn session(&self) -> Option<&Session> {
        self.file()?.session.as_ref()
    }

    /// The selected file's session, to change.
    pub(super) fn session_mut(&mut self) -> Option<&mut Session> {
        self.files.get_mut(self.selected_file)?.session.as_mut()
    }

    /// Asks for the selected file's session to be started if it has none yet.
    fn ensure_session(&mut self) -> Option<Action> {
        let f = self.files.get(self.selected_file)?;
        if f.session.is_some() || f.compiled.is_none() {
            return None;
        }
        let id = self.next_session;
        self.next_session += 1;
        Some(Action::Io(Io::Start {
            file: f.path.clone(),
            id,
        }))
    }

    /// Smooths every file's curves with EMA weight `w` (0: off).
    pub(super) fn set_smoothing(&mut self, w: f64) {
        self.smoothing = w;
        for s in self.files.iter_mut().filter_map(|f| f.session.as_mut()) {
            s.set_smoothing(w);
        }
    }

    /// Sends a command to the selected file's worker. While it takes counted steps (the rest of
    /// a `3000N`), the command ends them first: it acts now, not once they are done; a ping
    /// (waiting for the worker) leaves them be.
    pub fn command(&mut self, c: Command) {
        match self.session_mut() {
            Some(s) => {
                if !matches!(c, Command::Ping(_)) && s.stepping.take().is_some() {
                    s.send(Command::Interrupt);
                }
                s.steps_asked |= matches!(c, Command::Step(_));
                s.send(c)
            }
            None => self.say_why_no_runs(),
        }
    }

    /// Says why a key about runs did nothing: the selected file has none (it does not compile).
    /// The file's name rather than its path keeps it within 120 columns.
    pub(super) fn say_why_no_runs(&mut self) {
        if let Some(f) = self.file().filter(|f| f.compiled.is_none()) {
            let name = f.path.file_name().unwrap_or(f.path.as_os_str());
            self.message = Some(format!(
                "{} does not compile, so it has no runs: the Diagnostics panel says why; it \
                 reloads when saved",
                name.to_string_lossy()
            ));
        } else if self.session().is_some_and(|s| s.runs.is_empty()) {
            self.message = Some(
                "no runs: d adds one of the file's own back, o one with another optimizer".into(),
            );
        }
    }

    /// The one place state changes.
    pub fn update(&mut self, msg: Msg) -> Option<Action> {
        match msg {
            Msg::Key(k) if k.kind == KeyEventKind::Press => self.key(k),
            Msg::Key(_) => None,
            Msg::Mouse(m) => self.mouse(m),
            Msg::Worker(_, Event::SavedParams { note, result }) => {
                self.message = Some(match result {
                    Ok(files) => {
                        let files: Vec<String> =
                            files.iter().map(|p| p.display().to_string()).collect();
                        format!("{note} and {}", files.join(", "))
                    }
                    Err(e) => format!("{note}; could not save the params: {e}"),
                });
                None
            }
            Msg::Worker(id, e) => {
                // The lr range test's answer in the status line too: the inspector that shows
                // it in full is hidden on a small terminal.
                if let Event::LrFound(_, step, found) = &e {
                    self.message = Some(match found {
                        Ok(f) => format!(
                            "lr range test from step {step}: steepest {}, min/10 {} (the inspector has the curve)",
                            f.curve
                                .steepest()
                                .map_or("-".into(), crate::format::fmt_num),
                            f.curve
                                .min_tenth()
                                .map_or("-".into(), crate::format::fmt_num),
                        ),
                        Err(why) => format!("lr range test from step {step}: {why}"),
                    });
                }
                // The log has it in full, but a run the user just asked for must not vanish
                // without a word where they look.
                if let Event::Refused(r) = &e {
                    self.message = Some(r.diagnostic.message.clone());
                }
                // An answer to `g`, `h` or `G` is at the inspector's top: scrolled down,
                // the inspector showed nothing new and the key looked ignored.
                if matches!(
                    e,
                    Event::Checked(..)
                        | Event::Curvature(..)
                        | Event::Hessian(..)
                        | Event::Formula(..)
                ) {
                    self.inspector_scroll = 0;
                }
                if let Some(s) = self.session_by_id(id) {
                    s.apply(e);
                }
                None
            }
            Msg::Landscape(id, r) => {
                if let Some(s) = self.session_by_id(id) {
                    s.landscape.on_report(r);
                }
                None
            }
            Msg::Swept(id, sweep, m) => {
                let view = self.session_by_id(id).and_then(|s| s.sweep.as_mut());
                if let Some(v) = view.filter(|v| v.id == sweep) {
                    v.apply(m);
                }
                None
            }
            Msg::Tick => {
                self.sync_landscape();
                None
            }
            Msg::FileChanged(p) => self.changed(&p),
            Msg::Edited(p) => {
                // Any change the reload finds says so in its place; an unchanged file says
                // nothing there, and `e` must not look ignored.
                self.message = Some(format!("{} is unchanged: nothing restarted", p.display()));
                self.changed(&p)
            }
            Msg::Resize(w, h) => {
                self.size = (w, h);
                None
            }
            Msg::Discovered {
                base,
                files: reports,
            } => {
                self.base = base;
                for report in reports {
                    let entry = self.entry(report);
                    self.files.push(entry);
                }
                self.sort_files();
                self.ensure_session()
            }
            Msg::Loaded(loaded) => {
                for (path, report) in loaded {
                    match report {
                        Some(report) => self.reload(*report),
                        None => self.remove(&path),
                    }
                }
                self.ensure_session()
            }
            Msg::Started(path, mut session) => {
                if let Some(f) = self.files.iter_mut().find(|f| f.path == path)
                    && f.session.is_none()
                {
                    if let Some(carry) = f.carry.take() {
                        session.adopt(carry);
                    }
                    session.set_smoothing(self.smoothing);
                    // The file's own warnings (from loading it) head the log, `enter` showing
                    // each in full: shown nowhere else, `check` said more than the TUI.
                    let file = f.path.file_name().unwrap_or_default().to_string_lossy();
                    for d in f.diagnostics.iter().filter(|d| !d.is_error()) {
                        session.warnings.push(Warning::located(&file, 0, d));
                    }
                    f.session = Some(*session);
                }
                None
            }
            Msg::Status(text) => {
                self.message = Some(text);
                None
            }
        }
    }

    /// The session `id` (a worker's or landscape thread's), whichever file it belongs to.
    fn session_by_id(&mut self, id: u64) -> Option<&mut Session> {
        self.files
            .iter_mut()
            .filter_map(|f| f.session.as_mut())
            .find(|s| s.id == id)
    }

    /// What a changed path asks for: loss files under the root load again, and so do the loss
    /// files that read it (a CSV) or may name its optimizers (an optimizer file), even when
    /// their own text did not change.
    fn changed(&mut self, p: &Path) -> Option<Action> {
        let serves = load::is_optimizer_file(p)
            .then(|| load::served_by(p))
            .flatten();
        let loss = p.extension().is_some_and(|e| e == "toml")
            && serves.is_none()
            && (self.root.is_dir() || same_path(p, &self.root));
        if loss {
            let known = self.files.iter().find(|f| same_path(&f.path, p));
            let path = known.map_or_else(|| p.to_path_buf(), |f| f.path.clone());
            return Some(Action::Io(Io::Load(vec![path])));
        }
        let readers: Vec<PathBuf> = self
            .files
            .iter_mut()
            .filter(|f| {
                f.reads.iter().any(|r| same_path(r, p))
                    || serves.is_some_and(|dir| under(&f.path, dir))
            })
            .map(|f| {
                f.text = None;
                f.path.clone()
            })
            .collect();
        (!readers.is_empty()).then_some(Action::Io(Io::Load(readers)))
    }

    /// A file that is gone leaves the list; the selection stays on the same file if it can.
    fn remove(&mut self, path: &Path) {
        let Some(i) = self.files.iter().position(|f| f.path == path) else {
            return;
        };
        let selected = self.file().map(|f| f.path.clone());
        self.message = Some(format!("{} was deleted: its runs are gone", path.display()));
        self.files.remove(i);
        self.selected_file = selected
            .and_then(|p| self.files.iter().position(|f| f.path == p))
            .unwrap_or(i.min(self.files.len().saturating_sub(1)));
    }

    /// A file read again: new diagnostics, and when it compiled, its runs start again from the
    /// new version, keeping the session (a broken version keeps the last good one running).
    /// A text that did not change, or went back to the one the runs are running, restarts
    /// nothing.
    fn reload(&mut self, report: LoadedFile) {
        let text = report.source.as_ref().map(|s| s.text.clone());
        let Some(i) = self.files.iter().position(|f| f.path == report.path) else {
            self.message = Some(format!("new file {}", report.path.display()));
            let entry = self.entry(report);
            self.files.push(entry);
            self.sort_files();
            return;
        };
        let f = &mut self.files[i];
        if f.text.is_some() && f.text == text {
            return;
        }
        // A file read again for a changed CSV has no text to compare: its data changed.
        let data_changed = f.text.is_none();
        f.text = text;
        f.diagnostics = report.diagnostics;
        f.reads = report.reads;
        if let Some(name) = report.name {
            f.name = name;
        }
        let Some(new) = report.compiled else {
            // The runs go on with the last version that compiled; the status says so rather
            // than keep an earlier reload's news.
            let errors = f.diagnostics.iter().filter(|d| d.is_error()).count();
            self.message = Some(format!(
                "{} no longer compiles ({errors} error{}): the runs keep the last version that did",
                f.path.display(),
                if errors == 1 { "" } else { "s" }
            ));
            return;
        };
        // Back to the text the runs are running (a broken edit undone): nothing restarts.
        let running = f.compiled.as_ref().map(|c| c.file.source.text.as_str());
        if !data_changed && running == f.text.as_deref() {
            self.message = Some(format!(
                "reloaded {}: the text the runs are running, nothing restarted",
                f.path.display()
            ));
            return;
        }
        // A data file back to the values the runs were started on (a broken CSV undone): as
        // for the text, nothing restarts.
        if data_changed
            && f.session.is_some()
            && f.compiled
                .as_ref()
                .is_some_and(|old| super::changes::same(old, &new))
        {
            self.message = Some(format!(
                "reloaded {}: the data the runs are running, nothing restarted",
                f.path.display()
            ));
            return;
        }
        if let (Some(mut session), Some(old)) = (f.session.take(), f.compiled.as_ref()) {
            let change = super::changes::describe(old, &new);
            // A sweep is of the old version: it ends with it, and the status says so.
            let swept = match session.sweep.is_some() {
                true => "; its sweep ended with the old version (W sweeps the new one)",
                false => "",
            };
            if !swept.is_empty() && self.tab == Tab::Sweep {
                self.tab = Tab::Loss;
            }
            let (carry, restarted) = session.carry(old, &new, &change);
            f.carry = Some(carry);
            let gone = match restarted.gone {
                0 => String::new(),
                1 => ", 1 variant gone".into(),
                n => format!(", {n} variants gone"),
            };
            self.message = Some(format!(
                "reloaded {}: {} run{} restarted{gone} ({change}){swept}",
                f.path.display(),
                restarted.runs,
                if restarted.runs == 1 { "" } else { "s" }
            ));
        } else {
            self.message = Some(format!("reloaded {}", f.path.display()));
        }
        f.compiled = Some(new);
    }

    /// Selects file `i`, starting its session if it has none yet.
    pub(super) fn select_file(&mut self, i: usize) -> Option<Action> {
        if i >= self.files.len() {
            return None;
        }
        self.selected_file = i;
        let action = self.ensure_session();
        // Another file may have no Metrics or Sweep tab.
        if !self.tabs().contains(&self.tab) {
            self.tab = Tab::Loss;
        }
        action
    }

    /// Moves the selection of the focused list by `delta` rows.
    pub(super) fn move_selection(&mut self, delta: i64) -> Option<Action> {
        match self.focus {
            Focus::Losses | Focus::Charts => {
                let n = self.files.len() as i64;
                let i = (self.selected_file as i64 + delta).clamp(0, (n - 1).max(0));
                self.select_file(i as usize)
            }
            Focus::Runs => {
                if let Some(s) = self.session_mut() {
                    let n = s.runs.len() as i64;
                    if n > 0 {
                        s.selected = (s.selected as i64 + delta).clamp(0, n - 1) as usize;
                    }
                }
                None
            }
            Focus::Inspector => {
                let areas = super::layout::layout(self, self.screen());
                let visible = areas.inspector.map_or(0, |r| r.height.saturating_sub(2));
                let len = super::render::inspector_len(self, None);
                let most = len.saturating_sub(visible as usize) as i64;
                self.inspector_scroll = (self.inspector_scroll.min(most as usize) as i64 + delta)
                    .clamp(0, most) as usize;
                None
            }
            Focus::Warnings => {
                let n = self.session().map_or(0, |s| s.warnings.len()) as i64;
                self.warning = (self.warning as i64 + delta).clamp(0, (n - 1).max(0)) as usize;
                None
            }
        }
    }

    /// The terminal's area, as the last resize told it.
    pub(super) fn screen(&self) -> Rect {
        Rect::new(0, 0, self.size.0, self.size.1)
    }

    /// Whether the terminal is large enough for the warnings panel (else `enter` shows the
    /// newest warning wherever the focus is).
    pub(super) fn shows_warnings(&self) -> bool {
        super::layout::layout(self, self.screen())
            .warnings
            .is_some()
    }

    /// The panels `tab` cycles through: the lists and the chart, and the inspector and the
    /// warnings when the terminal is large enough to show them.
    pub(super) fn focusable(&self) -> Vec<Focus> {
        let areas = super::layout::layout(self, self.screen());
        let mut out = vec![Focus::Losses, Focus::Runs, Focus::Charts];
        if areas.inspector.is_some() {
            out.push(Focus::Inspector);
        }
        if areas.warnings.is_some() {
            out.push(Focus::Warnings);
        }
        out
    }

    /// The id of the selected run of the selected file, while its worker steps it.
    pub(super) fn selected_run_id(&self) -> Option<RunId> {
        self.session()?
            .selected_run()
            .filter(|r| r.link == Link::Live)
            .map(|r| r.info.id)
    }

    /// Asks the selected file's landscape for what the Landscape tab shows, when it is shown.
    fn sync_landscape(&mut self) {
        if self.tab != Tab::Landscape {
            return;
        }
        let areas = super::layout::layout(self, self.screen());
        let (scene, _) = super::layout::landscape_layout(areas.chart);
        let map = crate::draw::scene::map_rect(scene).map_or((64, 32), |r| (r.width, r.height));
        if let Some(s) = self.session_mut() {
            s.sync_landscape(map);
        }
    }
}
