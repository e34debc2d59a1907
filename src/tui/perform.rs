//! The performer: does the I/O that [`App::update`] asks for (loading files, starting sessions'
//! threads, writing exports and pictures) and feeds what came of it back in as a [`Msg`]. The
//! event loop, the tests and the benchmarks all drive the app through [`App::handle`].

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use super::app::{Action, App, FileEntry, Io, Msg};
use super::session::Session;
use crate::draw::plot::{self, PlotData, PlotLandscape};
use crate::landscape::ColorScale;
use crate::load;
use crate::run::export::{csv_header, csv_row, step_json};
use crate::run::worker::{Command, Event, RunPlan};

impl App {
    /// The app for `root` with its files loaded and the first one's session started.
    pub fn open(root: &Path, events: Sender<Msg>) -> Self {
        let (mut app, first) = App::new(root, events);
        app.follow(Some(first));
        app
    }

    /// An app without a terminal (tests, benchmarks): worker events go to the returned receiver.
    pub fn detached(root: &Path) -> (Self, Receiver<Msg>) {
        let (tx, rx) = channel();
        (Self::open(root, tx), rx)
    }

    /// Updates the app with `msg` and performs the I/O that asks for, feeding each result back
    /// in; returns what only the event loop can do (quit, edit).
    pub fn handle(&mut self, msg: Msg) -> Option<Action> {
        let action = self.update(msg);
        self.follow(action)
    }

    fn follow(&mut self, mut action: Option<Action>) -> Option<Action> {
        while let Some(a) = action {
            match a {
                Action::Io(io) => action = perform(self, io).and_then(|m| self.update(m)),
                terminal => return Some(terminal),
            }
        }
        None
    }

    /// Waits until the selected file's worker has handled every command sent so far, feeding
    /// its events into [`App::handle`] (for tests and for the end-to-end benchmark).
    pub fn settle(&mut self, rx: &Receiver<Msg>) {
        let Some(id) = self.session().map(|s| s.id) else {
            return;
        };
        self.command(Command::Ping(id));
        while let Ok(m) = rx.recv_timeout(Duration::from_secs(60)) {
            let done = matches!(&m, Msg::Worker(s, Event::Pong(p)) if *s == id && *p == id);
            self.handle(m);
            if done {
                return;
            }
        }
    }
}

/// Does `io`, reading the app but never changing it; what came of it is the returned message.
pub fn perform(app: &App, io: Io) -> Option<Msg> {
    match io {
        Io::Discover => {
            let (paths, _) = load::discover(std::slice::from_ref(&app.root));
            let base = if app.root.is_dir() {
                app.root.clone()
            } else {
                app.root.parent().map(Path::to_path_buf).unwrap_or_default()
            };
            let files = paths.iter().map(|p| load::load(p)).collect();
            Some(Msg::Discovered { base, files })
        }
        Io::Load(paths) => Some(Msg::Loaded(
            paths
                .into_iter()
                .filter_map(|path| {
                    if !path.exists() {
                        return Some((path, None));
                    }
                    let bytes = std::fs::read(&path).ok()?;
                    let report = load::load_bytes(&path, bytes);
                    Some((path, Some(Box::new(report))))
                })
                .collect(),
        )),
        Io::Start { file, id } => {
            let f = app.files.iter().find(|f| f.path == file)?;
            let compiled = f.compiled.clone()?;
            let plan = match &f.carry {
                Some(c) => c.plan.clone(),
                None => RunPlan::file(&compiled),
            };
            let session = Session::start(id, &f.name, compiled, plan, app.events.clone());
            Some(Msg::Started(file, Box::new(session)))
        }
        Io::WriteRuns(file) => with_session(app, &file, write_runs),
        Io::SavePictures(file) => with_session(app, &file, save_pictures),
    }
}

/// The status message of an export of `file`'s session.
fn with_session(app: &App, file: &Path, export: fn(&FileEntry, &Session) -> String) -> Option<Msg> {
    let f = app.files.iter().find(|f| f.path == file)?;
    Some(Msg::Status(export(f, f.session.as_ref()?)))
}

/// Every run of `f` to gradscope-STEM.csv and .jsonl in the working directory; says what it did.
fn write_runs(f: &FileEntry, s: &Session) -> String {
    let names: Vec<String> = f
        .compiled
        .as_ref()
        .map(|c| c.params.iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default();
    let stem = f.stem();
    let csv_path = PathBuf::from(format!("gradscope-{stem}.csv"));
    let jsonl_path = PathBuf::from(format!("gradscope-{stem}.jsonl"));
    let mut csv = csv_header(&names) + "\n";
    let mut jsonl = String::new();
    for r in &s.runs {
        for rec in (0..r.history.len()).filter_map(|k| r.history.get(k)) {
            csv.push_str(&csv_row(&r.info.name, &names, &rec));
            csv.push('\n');
            jsonl.push_str(&step_json(&r.info.name, &names, &rec).to_string());
            jsonl.push('\n');
        }
    }
    match std::fs::write(&csv_path, csv).and_then(|()| std::fs::write(&jsonl_path, jsonl)) {
        Ok(()) => format!("wrote {} and {}", csv_path.display(), jsonl_path.display()),
        Err(e) => format!("could not write runs: {e}"),
    }
}

/// The curves of `f`, and its landscape once one is complete, to gradscope-STEM.svg and .png in
/// the working directory; says what it did.
fn save_pictures(f: &FileEntry, s: &Session) -> String {
    let l = &s.landscape;
    let landscape = l
        .grid
        .as_ref()
        .filter(|g| g.is_complete())
        .zip(l.plane.as_ref())
        .and_then(|(grid, plane)| {
            Some(PlotLandscape {
                scale: ColorScale::fit(grid.finite(), l.log)?,
                labels: plane.labels.clone(),
                grid: grid.clone(),
            })
        });
    let data = PlotData {
        title: f.name.clone(),
        runs: s
            .runs
            .iter()
            .map(|r| {
                let path = if landscape.is_some() {
                    r.path.iter().map(|(_, p)| *p).collect()
                } else {
                    Vec::new()
                };
                crate::draw::plot_run(&r.info.name, r.color, &r.history, path)
            })
            .collect(),
        landscape,
    };
    let stem = f.stem();
    let written: Result<Vec<String>, String> = ["svg", "png"]
        .iter()
        .map(|ext| {
            let path = PathBuf::from(format!("gradscope-{stem}.{ext}"));
            plot::save(&data, &path)
                .map(|()| path.display().to_string())
                .map_err(|e| e.to_string())
        })
        .collect();
    match written {
        Ok(paths) => format!("wrote {}", paths.join(" and ")),
        Err(e) => format!("could not write the pictures: {e}"),
    }
}
