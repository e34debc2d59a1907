//! Measurements for `gradscope bench`: how long one frame takes to draw with long histories, and
//! how fast a workload steps while the TUI is drawing (against the headless figure).

use std::path::Path;
use std::time::{Duration, Instant};

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
