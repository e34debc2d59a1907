//! `gradscope bench`: steps/s and memory of the benchmark workloads, frame times of the TUI, and
//! landscape grid timings.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use crate::compile;
use crate::format::fmt_num;
use crate::load;
use crate::run::summary::drive;
use crate::run::{Run, RunRequest};

/// `gradscope bench`: steps every workload in `dir` with its own config and reports steps/s.
pub fn bench_command(dir: &Path, repeat: usize, out: &mut impl Write) -> anyhow::Result<bool> {
    let (files, missing) = crate::load::discover(&[dir.to_path_buf()]);
    for d in &missing {
        eprint!("{}", d.render(false));
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "?".into());
    writeln!(out, "threads: {threads}")?;
    writeln!(
        out,
        "{:<20} {:>7} {:>12} {:>12} {:>14}",
        "workload", "steps", "steps/s", "final loss", "peak RSS MB"
    )?;
    for f in files {
        let (compiled, _) = match load::load_compiled(&f) {
            Ok(c) => c,
            Err(diags) => {
                for d in &diags {
                    eprint!("{}", d.render(false));
                }
                continue;
            }
        };
        let mut rates = Vec::new();
        let mut final_loss = f64::NAN;
        let mut steps = 0;
        for _ in 0..repeat.max(1) {
            let config = compiled.runs[0].settings.clone();
            let request = RunRequest::new(&compiled, 0, "bench".into(), config);
            let mut run = Run::new(&compiled, request)?;
            let s = drive(&mut run, |_, _| ControlFlow::Continue(()))?;
            rates.push(s.steps_per_s);
            final_loss = s.final_loss;
            steps = s.steps;
        }
        rates.sort_by(f64::total_cmp);
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        writeln!(
            out,
            "{:<20} {:>7} {:>12.1} {:>12} {:>14.1}",
            name,
            steps,
            rates[rates.len() / 2],
            fmt_num(final_loss),
            peak_rss_mb()
        )?;
    }
    use crate::tui::app::Tab;
    writeln!(
        out,
        "\nwhile the TUI draws a 200x60 frame every 33 ms (Loss tab / Landscape tab):"
    )?;
    for f in crate::load::discover(&[dir.to_path_buf()]).0 {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rates = [Tab::Loss, Tab::Landscape]
            .map(|tab| crate::tui::bench::steps_per_s(&f, tab).map(|r| format!("{r:.1}")));
        match rates {
            [Ok(a), Ok(b)] => writeln!(out, "{name:<20} {a:>12} / {b} steps/s")?,
            [Err(e), _] | [_, Err(e)] => writeln!(out, "{name:<20} failed: {e}")?,
        }
    }
    let rosen = Path::new("losses/rosenbrock.toml");
    if rosen.exists() {
        for points in [100_000, 1_000_000] {
            for tab in [Tab::Loss, Tab::Landscape] {
                let ms = crate::tui::bench::frame_ms(rosen, points, 200, 60, tab)?;
                writeln!(
                    out,
                    "frame 200x60, {} tab, 4 runs x {points} steps: {ms:.2} ms",
                    tab.title()
                )?;
            }
        }
    }
    writeln!(out, "\nlandscape grid 64x64 (median of {}):", repeat.max(1))?;
    for f in crate::load::discover(&[dir.to_path_buf()]).0 {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match grid_timings(&f, 64, repeat.max(1)) {
            Ok(t) => writeln!(out, "{name:<20} {t}")?,
            Err(e) => writeln!(out, "{name:<20} failed: {e}")?,
        }
    }
    if rosen.exists() {
        writeln!(out, "\n{}", headless_memory(rosen, &[100_000, 1_000_000])?)?;
    }
    for n_params in [2, 6] {
        writeln!(
            out,
            "history: 1,000,000 steps with {n_params} params hold {:.1} MB",
            history_mb(1_000_000, n_params)
        )?;
    }
    // Last: its threads wind down after it, and the memory its histories held stays with the
    // process.
    let library = Path::new("losses");
    if library.is_dir() {
        let (_, lines) = tui_under_load(library, 30, 10.0)?;
        for line in lines {
            writeln!(out, "{line}")?;
        }
    }
    Ok(true)
}

/// The TUI's answer to keys and its frame times with `files` files of `library` playing at once
/// for `seconds` (see [`crate::tui::bench::under_load`]), and the lines saying so.
pub fn tui_under_load(
    library: &Path,
    files: usize,
    seconds: f64,
) -> anyhow::Result<(crate::tui::bench::UnderLoad, Vec<String>)> {
    let u = crate::tui::bench::under_load(library, files, seconds)?;
    let lines = vec![
        format!(
            "\nthe TUI with {} files ({} runs) of {} playing, 200x60, {} keys over {seconds} s:",
            u.files,
            u.runs,
            library.display(),
            u.keys
        ),
        format!(
            "  key handled after {:.1} ms median, {:.1} ms max; q to the app gone: {:.1} ms",
            u.key_median_ms, u.key_max_ms, u.quit_ms
        ),
        format!(
            "  frame drawn in {:.2} ms median, {:.2} ms p99, {:.2} ms max ({} frames); {:.0} steps/s received",
            u.frame_median_ms, u.frame_p99_ms, u.frame_max_ms, u.frames, u.steps_per_s
        ),
    ];
    Ok((u, lines))
}

/// How long an `n` x `n` landscape grid of `file`'s first run takes at its initial params: over
/// the params' coordinates (±1 around them) or a random filter-normalized slice (±1), batched
/// when the loss allows it (then also point by point, for comparison).
fn grid_timings(file: &Path, n: usize, repeat: usize) -> anyhow::Result<String> {
    use crate::landscape::surface::{Mode, Surface};
    use crate::landscape::{GridSpec, Plane, PlaneKind, param_shapes};
    let (compiled, _) =
        load::load_compiled(file).map_err(|d| anyhow::anyhow!("{}", d[0].headline()))?;
    let shapes = param_shapes(&compiled);
    let origin: Vec<f64> = compiled
        .params
        .iter()
        .flat_map(|p| compile::values_f64(&p.value).unwrap_or_default())
        .collect();
    let plane =
        Plane::coordinates(&shapes).unwrap_or_else(|| Plane::random(origin.clone(), &shapes, 0));
    let (x, y) = if plane.kind == PlaneKind::Coordinates {
        (
            (origin[0] - 1.0, origin[0] + 1.0),
            (origin[1] - 1.0, origin[1] + 1.0),
        )
    } else {
        ((-1.0, 1.0), (-1.0, 1.0))
    };
    let spec = GridSpec { x, y, nx: n, ny: n };
    let time = |surface: &Surface| -> anyhow::Result<(f64, Mode)> {
        let mut times = Vec::new();
        let mut mode = Mode::Pointwise;
        for _ in 0..repeat {
            let t = Instant::now();
            mode = surface.grid(&plane, spec.clone())?.1;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok((times[times.len() / 2], mode))
    };
    let surface = Surface::new(&compiled, 0)?;
    let (ms, mode) = time(&surface)?;
    let mut out = format!("{ms:>10.2} ms  {}, {}", mode.name(), plane.kind.describe());
    if mode == Mode::Batched {
        let (ms, _) = time(&surface.pointwise())?;
        out.push_str(&format!(" (point by point: {ms:.2} ms)"));
    }
    Ok(out)
}

/// Resident memory of a headless run of `file` (as `gradscope run` steps it: totals only) at
/// each of `checkpoints` steps, and the step records it keeps: flat, however many steps.
fn headless_memory(file: &Path, checkpoints: &[u64]) -> anyhow::Result<String> {
    let (compiled, _) =
        load::load_compiled(file).map_err(|d| anyhow::anyhow!("{}", d[0].headline()))?;
    let mut settings = compiled.runs[0].settings.clone();
    settings.steps = checkpoints.iter().copied().max().unwrap_or(0);
    let mut request = RunRequest::new(&compiled, 0, "bench".into(), settings);
    request.retention = crate::run::Retention::Totals;
    let mut run = Run::new(&compiled, request)?;
    let mut line = format!(
        "headless run ({}, as `gradscope run --steps N`): RSS {:.1} MB at the start",
        file.display(),
        rss_mb()
    );
    for &n in checkpoints {
        while run.step_count() < n && !run.is_done() {
            run.step()?;
        }
        line.push_str(&format!(", {:.1} MB after {n} steps", rss_mb()));
    }
    let h = run.history();
    line.push_str(&format!(
        "; rows kept: {} of {} ({:.1} kB)",
        h.cores().len(),
        h.len(),
        h.bytes() as f64 / 1e3
    ));
    Ok(line)
}

/// Resident memory of this process now, in MB (Linux; NaN elsewhere).
fn rss_mb() -> f64 {
    proc_status_kb("VmRSS:").map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A `/proc/self/status` line's value in kB.
fn proc_status_kb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Memory a run's history holds after `steps` steps of a loss with `n_params` params.
pub fn history_mb(steps: usize, n_params: usize) -> f64 {
    use crate::run::history::{History, StepRecord};
    let mut h = History::new(n_params);
    let record = StepRecord::synthetic(0, 1.0, n_params);
    for _ in 0..steps {
        h.push(&record);
    }
    h.bytes() as f64 / 1e6
}

/// Peak resident memory of this process so far, in MB (Linux; NaN elsewhere).
pub fn peak_rss_mb() -> f64 {
    proc_status_kb("VmHWM:").map_or(f64::NAN, |kb| kb / 1024.0)
}
