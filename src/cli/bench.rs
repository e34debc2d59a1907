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

/// `gradscope bench`: steps the large-param workload `large` (when the file exists) and every
/// workload in `dir` with its own config, and reports steps/s.
pub fn bench_command(
    dir: &Path,
    large: &Path,
    repeat: usize,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "?".into());
    writeln!(out, "threads: {threads}")?;
    // First, while the process holds nothing else: its peak is the run's.
    if large.exists() {
        let (_, text) = large_param(large, repeat)?;
        writeln!(out, "{text}\n")?;
    }
    let (files, missing) = crate::load::discover(&[dir.to_path_buf()]);
    for d in &missing {
        eprint!("{}", d.render(false));
    }
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
    Ok(true)
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
    request.retention = crate::run::Retention::Totals { best: false };
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

/// The large-param workload's figures: median steps/s and the process's peak memory against
/// the params' bytes (the budget is params, gradient, two Adam moments and a temporary).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LargeParam {
    /// The workload's file.
    pub workload: String,
    /// How many values the params hold.
    pub param_values: usize,
    /// The params' size in the run's dtype, in MiB.
    pub param_mb: f64,
    /// Steps of each run.
    pub steps: u64,
    /// The median over the repetitions.
    pub steps_per_s: f64,
    /// The process's peak resident memory, in MiB.
    pub peak_rss_mb: f64,
    /// Peak resident memory over the params' size.
    pub peak_per_param: f64,
}

/// Steps `file` `repeat` times as `gradscope run` does (totals only, no best params kept), and
/// its figures with their text line. Call it before anything else of size has run: the peak is
/// the process's (reset first where Linux allows it); the cached blocks are let go after.
pub fn large_param(file: &Path, repeat: usize) -> anyhow::Result<(LargeParam, String)> {
    // Resets the peak to the current size (Linux 4.0+; elsewhere the peak is the process's).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let mut rates = Vec::new();
    let (mut steps, mut param_bytes, mut param_values) = (0, 0, 0);
    for _ in 0..repeat.max(1) {
        // Loaded afresh and let go once the run is built, as `gradscope run` does.
        let mut run = {
            let (compiled, _) =
                load::load_compiled(file).map_err(|d| anyhow::anyhow!("{}", d[0].headline()))?;
            let settings = compiled.runs[0].settings.clone();
            let mut request = RunRequest::new(&compiled, 0, "bench".into(), settings);
            request.retention = crate::run::Retention::Totals { best: false };
            Run::new(&compiled, request)?
        };
        param_values = run.params().iter().map(|v| v.elem_count()).sum();
        param_bytes = run
            .params()
            .iter()
            .map(|v| v.elem_count() * v.dtype().size_in_bytes())
            .sum::<usize>();
        let s = drive(&mut run, |_, _| ControlFlow::Continue(()))?;
        rates.push(s.steps_per_s);
        steps = s.steps;
    }
    let peak = peak_rss_mb();
    crate::alloc::release_all();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    rates.sort_by(f64::total_cmp);
    let param_mb = param_bytes as f64 / (1 << 20) as f64;
    let figures = LargeParam {
        workload: file.display().to_string(),
        param_values,
        param_mb,
        steps,
        steps_per_s: rates[rates.len() / 2],
        peak_rss_mb: peak,
        peak_per_param: peak / param_mb,
    };
    let text = format!(
        "large param ({}, {param_values} values, {param_mb:.0} MB): {:.2} steps/s over {} steps, peak RSS {:.0} MB = {:.1}x the params",
        figures.workload, figures.steps_per_s, steps, peak, figures.peak_per_param
    );
    Ok((figures, text))
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
