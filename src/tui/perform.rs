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
use crate::run::metrics;
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
            let files: Vec<_> = paths.iter().map(|p| load::load(p)).collect();
            crate::compile::threads::start(
                files.iter().filter_map(|f| f.compiled.as_ref()),
                crate::run::worker::NICE,
            );
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

/// The status message of an export of `file`'s session into the app's output folder.
fn with_session(
    app: &App,
    file: &Path,
    export: fn(&FileEntry, &Session, Option<&Path>) -> String,
) -> Option<Msg> {
    let f = app.files.iter().find(|f| f.path == file)?;
    let session = f.session.as_ref()?;
    // `--out-dir` may name a folder still to be made, as `run --out` makes none.
    if let Some(dir) = &app.out_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return Some(Msg::Status(format!(
            "could not make {}: {e}",
            dir.display()
        )));
    }
    Some(Msg::Status(export(f, session, app.out_dir.as_deref())))
}

/// Where an export of `f` with extension `ext` goes: `gradscope-STEM.ext` in `out_dir`, or
/// next to the loss file.
fn export_path(f: &FileEntry, out_dir: Option<&Path>, ext: &str) -> PathBuf {
    let dir = out_dir.or(f.path.parent()).unwrap_or(Path::new(""));
    dir.join(format!("gradscope-{}.{ext}", f.stem()))
}

/// Every run of `f` to gradscope-STEM.csv and .jsonl (see [`export_path`]), with the `[metrics]`
/// values the runs reported, and asks the worker to save their params beside them as
/// gradscope-STEM.safetensors; says what it did (the worker's answer completes it).
fn write_runs(f: &FileEntry, s: &Session, out_dir: Option<&Path>) -> String {
    let names: Vec<String> = f
        .compiled
        .as_ref()
        .map(|c| c.params.iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default();
    let csv_path = export_path(f, out_dir, "csv");
    let jsonl_path = export_path(f, out_dir, "jsonl");
    let mut csv = csv_header(&names) + &metrics::csv_header(&s.metric_names) + "\n";
    let mut jsonl = String::new();
    for r in &s.runs {
        let mut reported = r.metrics.iter().peekable();
        for rec in (0..r.history.len()).filter_map(|k| r.history.get(k)) {
            while reported.next_if(|(k, _)| *k < rec.step).is_some() {}
            let values = reported
                .peek()
                .filter(|(k, _)| *k == rec.step)
                .map(|(_, v)| v.as_slice());
            csv.push_str(&csv_row(&r.info.name, &names, &rec));
            csv.push_str(&metrics::csv_cells(s.metric_names.len(), values));
            csv.push('\n');
            let mut row = step_json(&r.info.name, &names, &rec);
            metrics::add_json(&mut row, &s.metric_names, values);
            jsonl.push_str(&row.to_string());
            jsonl.push('\n');
        }
    }
    let written = std::fs::write(&csv_path, csv)
        .map_err(|e| (&csv_path, e))
        .and_then(|()| std::fs::write(&jsonl_path, jsonl).map_err(|e| (&jsonl_path, e)));
    match written {
        Ok(()) => {
            let note = format!("wrote {}, {}", csv_path.display(), jsonl_path.display());
            s.send(Command::SaveParams {
                path: export_path(f, out_dir, "safetensors"),
                note: note.clone(),
            });
            format!("{note}; saving the params…")
        }
        Err((path, e)) => format!("could not write {}: {e}", path.display()),
    }
}

/// The curves of `f`, and its landscape once one is complete, to gradscope-STEM.svg and .png
/// (see [`export_path`]); says what it did.
fn save_pictures(f: &FileEntry, s: &Session, out_dir: Option<&Path>) -> String {
    let l = &s.landscape;
    let landscape = l
        .grid
        .as_ref()
        .filter(|g| g.is_complete())
        .zip(l.plane.as_ref())
        .and_then(|(grid, plane)| {
            Some(PlotLandscape {
                scale: ColorScale::fit(grid.finite(), l.log)?,
                optimum: l.optimum.as_ref().map(|p| plane.project(p)),
                minimum: grid.refined_min().map(|(_, p)| p),
                labels: plane.labels.clone(),
                grid: grid.clone(),
                cells: false,
            })
        });
    let data = PlotData {
        title: f.name.clone(),
        runs: s
            .runs
            .iter()
            .map(|r| {
                let path = if landscape.is_some() {
                    r.path.iter().copied().collect()
                } else {
                    Vec::new()
                };
                crate::draw::plot_run(&r.info.name, r.color, &r.history, path)
            })
            .collect(),
        landscape,
    };
    let written: Result<Vec<String>, String> = ["svg", "png"]
        .iter()
        .map(|ext| {
            let path = export_path(f, out_dir, ext);
            plot::save(&data, &path)
                .map(|()| path.display().to_string())
                .map_err(|e| e.to_string())
        })
        .collect();
    // The sweep's picture beside them, as `gradscope sweep --out` draws it.
    let sweep: Result<Vec<String>, String> = s
        .sweep
        .iter()
        .flat_map(|sweep| {
            let title = format!("{}: final loss after {} steps", f.name, sweep.steps);
            let picture = sweep.picture(&title);
            ["svg", "png"].map(|ext| {
                let path = export_path(f, out_dir, ext)
                    .with_file_name(format!("gradscope-{}-sweep.{ext}", f.stem()));
                crate::draw::sweep::save_sweep(&picture, &path)
                    .map(|()| path.display().to_string())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let written = written.and_then(|mut paths| {
        paths.extend(sweep?);
        Ok(paths)
    });
    match written {
        Ok(paths) => format!("wrote {}", paths.join(" and ")),
        Err(e) => format!("could not write the pictures: {e}"),
    }
}
