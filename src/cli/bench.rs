//! `gradscope bench`: steps/s and memory of the benchmark workloads, frame times of the TUI, and
//! landscape grid timings.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::compile;
use crate::format::fmt_num;
use crate::load;
use crate::run::summary::drive;
use crate::run::{Run, RunRequest};

/// Every figure `gradscope bench` measures, as `--json` writes them for tracking.
#[derive(Debug, Default, serde::Serialize)]
pub struct BenchReport {
    pub threads: usize,
    pub large: Option<LargeParam>,
    pub workloads: Vec<WorkloadFigure>,
    pub thread_sweep: Option<ThreadSweep>,
    pub batched: Vec<BatchFigure>,
    pub sweeps: Vec<SweepFigure>,
    pub optimizer_lanes: Vec<LaneSteps>,
    pub tui_under_load: Option<crate::tui::bench::UnderLoad>,
}

/// One workload stepped in this process: median steps/s of its first run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadFigure {
    pub workload: String,
    pub steps: u64,
    pub steps_per_s: f64,
    pub final_loss: f64,
    pub peak_rss_mb: f64,
}

/// `gradscope bench`: steps the large-param workload `large` (when the file exists) and every
/// workload in `dir` with its own config and reports steps/s, with the other figures; `json`
/// gets them all as one JSON object.
pub fn bench_command(
    dir: &Path,
    large: &Path,
    repeat: usize,
    json: Option<&Path>,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    if let Some(path) = json {
        super::check_out_folder("--json", path)?;
    }
    let mut report = BenchReport::default();
    let (files, missing) = crate::load::discover(&[dir.to_path_buf()]);
    for d in &missing {
        err_print!("{}", d.render(false));
    }
    if files.is_empty() {
        // Nothing to measure: a failure, not an empty report.
        anyhow::bail!(
            "no workloads to measure in {} (`gradscope bench` takes losses/bench by default)",
            dir.display()
        );
    }
    // Every workload loaded first: the pool is sized for the largest of them.
    let mut loaded = Vec::new();
    for f in files {
        match load::load_compiled(&f) {
            Ok((compiled, _)) => loaded.push((f, compiled)),
            Err(diags) => {
                for d in &diags {
                    err_print!("{}", d.render(false));
                }
            }
        }
    }
    // The large workload counts for the pool's size too, but is let go: it is loaded afresh.
    let large_compiled = match large.exists() {
        true => Some(
            load::load_compiled(large)
                .map_err(|d| anyhow::anyhow!("{}", d[0].headline()))?
                .0,
        ),
        false => None,
    };
    compile::threads::start(
        loaded.iter().map(|(_, c)| c).chain(large_compiled.as_ref()),
        0,
    );
    drop(large_compiled);
    report.threads = compile::threads::count();
    writeln!(out, "threads: {}", report.threads)?;
    // First, while the process holds nothing else of size: its peak is the run's.
    if large.exists() {
        let (figures, text) = large_param(large, repeat)?;
        writeln!(out, "{text}\n")?;
        report.large = Some(figures);
    }
    writeln!(
        out,
        "{:<20} {:>7} {:>12} {:>12} {:>14}",
        "workload", "steps", "steps/s", "final loss", "peak RSS MB"
    )?;
    for (f, compiled) in loaded {
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
        let figure = WorkloadFigure {
            workload: workload_name(&f),
            steps,
            steps_per_s: median(rates),
            final_loss,
            peak_rss_mb: peak_rss_mb(),
        };
        writeln!(
            out,
            "{:<20} {:>7} {:>12.1} {:>12} {:>14.1}",
            figure.workload,
            figure.steps,
            figure.steps_per_s,
            fmt_num(figure.final_loss),
            figure.peak_rss_mb
        )?;
        report.workloads.push(figure);
    }
    let (sweep, lines) = thread_sweep(dir, repeat.max(1))?;
    report.thread_sweep = Some(sweep);
    for line in lines {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "
runs of one file apart and as one batch (8 runs, lrs x1 to x1.7; aggregate steps/s):"
    )?;
    for name in ["rosenbrock", "logreg"] {
        let file = dir.join(format!("{name}.toml"));
        if file.exists() {
            let figure = batch_figure(&file, 8, repeat.max(1))?;
            writeln!(out, "{}", figure.line())?;
            report.batched.push(figure);
        }
    }
    writeln!(
        out,
        "\na 13-point lr sweep and the lr range test (100 steps) against one run (median of {}):",
        repeat.max(1)
    )?;
    for name in ["rosenbrock", "logreg"] {
        let file = dir.join(format!("{name}.toml"));
        if file.exists() {
            let figure = sweep_figure(&file, repeat.max(1))?;
            writeln!(out, "{}", figure.line())?;
            report.sweeps.push(figure);
        }
    }
    use crate::tui::app::Tab;
    writeln!(
        out,
        "\nwhile the TUI draws a 200x60 frame every 33 ms (Loss tab / Landscape tab):"
    )?;
    for f in crate::load::discover(&[dir.to_path_buf()]).0 {
        let name = workload_name(&f);
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
    let library = Path::new(TUI_LIBRARY);
    if library.is_dir() {
        let figure = tui_in_its_own_process()?;
        for line in under_load_lines(&figure, library) {
            writeln!(out, "{line}")?;
        }
        report.tui_under_load = Some(figure);
    }
    writeln!(out, "\nlandscape grid 64x64 (median of {}):", repeat.max(1))?;
    for f in crate::load::discover(&[dir.to_path_buf()]).0 {
        let name = workload_name(&f);
        match grid_timings(&f, 64, repeat.max(1)) {
            Ok(t) => writeln!(out, "{name:<20} {t}")?,
            Err(e) => writeln!(out, "{name:<20} failed: {e}")?,
        }
    }
    if rosen.exists() {
        writeln!(out, "\n{}", headless_memory(rosen, &[100_000, 1_000_000])?)?;
    }
    let (lanes, lines) = lane_steps(repeat.max(1))?;
    report.optimizer_lanes = lanes;
    writeln!(out)?;
    for line in lines {
        writeln!(out, "{line}")?;
    }
    for n_params in [2, 6] {
        writeln!(
            out,
            "history: 1,000,000 steps with {n_params} params hold {:.1} MB",
            history_mb(1_000_000, n_params)
        )?;
    }
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
        writeln!(out, "\nwrote every figure to {}", path.display())?;
    }
    Ok(true)
}

/// The loss files the TUI under load plays, 30 at once for 10 s.
const TUI_LIBRARY: &str = "losses";

/// `bench --tui-only`: the TUI under load alone, as one line of JSON.
pub fn tui_only(out: &mut impl Write) -> anyhow::Result<bool> {
    let u = crate::tui::bench::under_load(Path::new(TUI_LIBRARY), 30, 10.0)?;
    writeln!(out, "{}", serde_json::to_string(&u)?)?;
    Ok(true)
}

/// The TUI under load, measured by `bench --tui-only` in a process of its own, as the TUI runs:
/// measured after the other workloads in this process, a frame could take 12 ms of CPU in a
/// heap they had left behind (a 64 MB param's, freed but kept).
fn tui_in_its_own_process() -> anyhow::Result<crate::tui::bench::UnderLoad> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "--tui-only"])
        .output()?;
    if !output.status.success() {
        anyhow::bail!(
            "the TUI under load failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// What [`crate::tui::bench::under_load`] measured, in words.
fn under_load_lines(u: &crate::tui::bench::UnderLoad, library: &Path) -> Vec<String> {
    vec![
        format!(
            "\nthe TUI with {} files ({} runs) of {} playing, 200x60, {} keys over {:.0} s (its own process):",
            u.files,
            u.runs,
            library.display(),
            u.keys,
            u.seconds
        ),
        format!(
            "  key handled after {:.1} ms median, {:.1} ms max; q to the app gone: {:.1} ms",
            u.key_median_ms, u.key_max_ms, u.quit_ms
        ),
        format!(
            "  frame drawn in {:.2} ms median, {:.2} ms p99, {:.2} ms max ({} frames); {:.0} steps/s received",
            u.frame_median_ms, u.frame_p99_ms, u.frame_max_ms, u.frames, u.steps_per_s
        ),
        format!(
            "  the slowest frame's drawing took {:.2} ms of CPU; {} frames waited over 1 ms for a core",
            u.frame_cpu_max_ms, u.frames_preempted
        ),
    ]
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
        Ok((median(times), mode))
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

/// Aggregate steps/s of `lanes` runs of `file`'s first definition (each with its own lr, the
/// file's times 1, 1.1, 1.2, ...) stepped one after another and as one batch, as `run` steps
/// them (totals only).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchFigure {
    pub workload: String,
    pub runs: usize,
    pub separate_steps_per_s: f64,
    pub batched_steps_per_s: f64,
    /// Whether the runs did step as one batch (false: they cannot, and both figures are apart).
    pub batched: bool,
    /// Interleaved rounds (apart, then batched) the medians are of.
    pub rounds: usize,
}

impl BatchFigure {
    pub fn line(&self) -> String {
        format!(
            "{:<20} {} runs: {:>10.0} steps/s apart, {:>10.0} batched ({:.1}x; {} rounds){}",
            self.workload,
            self.runs,
            self.separate_steps_per_s,
            self.batched_steps_per_s,
            self.batched_steps_per_s / self.separate_steps_per_s,
            self.rounds,
            if self.batched { "" } else { " (did not batch)" }
        )
    }
}

/// A sweep and an lr range test of a file against one run of it, each timed from its runs'
/// making to their last step (the file loaded once, before).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepFigure {
    pub workload: String,
    /// The sweep's `-o`.
    pub sweep: String,
    pub points: usize,
    pub sweep_s: f64,
    pub one_run_s: f64,
    /// `lrfind`'s 100 steps from the first run's start.
    pub lrfind_s: f64,
}

impl SweepFigure {
    fn line(&self) -> String {
        format!(
            "{:<20} {} points: {:.3} s, one run {:.3} s ({:.1}x); lrfind {:.3} s",
            self.workload,
            self.points,
            self.sweep_s,
            self.one_run_s,
            self.sweep_s / self.one_run_s,
            self.lrfind_s
        )
    }
}

/// Measures [`SweepFigure`] on `file`: `adam(lr=logspace(1e-4, 1e-1, 13))` as `gradscope sweep`
/// steps it (batched where the runs share a program), one run of the file's first definition,
/// and `gradscope lrfind`'s default range; medians of `repeat`.
pub fn sweep_figure(file: &Path, repeat: usize) -> anyhow::Result<SweepFigure> {
    use crate::run::lrfind::{LrRange, lr_find};
    use crate::run::sweep::drive_grid;
    let spec = "adam(lr=logspace(1e-4, 1e-1, 13))";
    let (compiled, _) =
        load::load_compiled(file).map_err(|d| anyhow::anyhow!("{}", d[0].headline()))?;
    let cli = <super::Cli as clap::Parser>::try_parse_from([
        "gradscope".as_ref(),
        "sweep".as_ref(),
        file.as_os_str(),
        "-o".as_ref(),
        spec.as_ref(),
    ])?;
    let Some(super::Command::Sweep(args)) = cli.command else {
        anyhow::bail!("`sweep` did not parse as a sweep");
    };
    let one_run = || -> anyhow::Result<Run> {
        let settings = compiled.runs[0].settings.clone();
        let mut request = RunRequest::new(&compiled, 0, "bench".into(), settings);
        request.retention = crate::run::Retention::Totals { best: false };
        Ok(Run::new(&compiled, request)?)
    };
    let (mut sweeps, mut runs, mut finds, mut points) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..repeat {
        let start = Instant::now();
        let grid =
            super::sweep::build_grid(&args, &compiled).map_err(|e| anyhow::anyhow!("{e}"))?;
        points = drive_grid(grid, || ControlFlow::Continue(()))?.len();
        sweeps.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        drive(&mut one_run()?, |_, _| ControlFlow::Continue(()))?;
        runs.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let range = LrRange::new(1e-7, 10.0, 100)?;
        lr_find(&one_run()?, &range, |_, _| ControlFlow::Continue(()))?;
        finds.push(start.elapsed().as_secs_f64());
    }
    Ok(SweepFigure {
        workload: workload_name(file),
        sweep: spec.into(),
        points,
        sweep_s: median(sweeps),
        one_run_s: median(runs),
        lrfind_s: median(finds),
    })
}

/// Measures [`BatchFigure`] on `file`: medians of interleaved rounds, at least `repeat` and
/// more while they have taken less than [`SWEEP_MIN_TIME`] (three rounds of logreg, 0.4 s each,
/// put its ratio anywhere from 2.1x to 2.7x).
pub fn batch_figure(file: &Path, lanes: usize, repeat: usize) -> anyhow::Result<BatchFigure> {
    use crate::run::summary::drive_many;
    let (compiled, _) =
        load::load_compiled(file).map_err(|d| anyhow::anyhow!("{}", d[0].headline()))?;
    let make = || -> anyhow::Result<Vec<Run>> {
        (0..lanes)
            .map(|k| {
                let mut settings = compiled.runs[0].settings.clone();
                let lr = settings.optimizer.lr() * (1.0 + k as f64 / 10.0);
                settings
                    .optimizer
                    .set("lr", crate::optim::spec::RawValue::Number(lr))
                    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
                let mut request = RunRequest::new(&compiled, 0, format!("lr {lr}"), settings);
                request.retention = crate::run::Retention::Totals { best: false };
                Ok(Run::new(&compiled, request)?)
            })
            .collect()
    };
    let (mut apart, mut together) = (Vec::new(), Vec::new());
    let mut batched = false;
    let started = Instant::now();
    let mut rounds = 0;
    while another_round(rounds, repeat.max(1), started) {
        rounds += 1;
        let mut runs = make()?;
        let t = Instant::now();
        for run in &mut runs {
            drive(run, |_, _| ControlFlow::Continue(()))?;
        }
        let steps: u64 = runs.iter().map(Run::step_count).sum();
        apart.push(steps as f64 / t.elapsed().as_secs_f64());
        let mut runs = make()?;
        let refs: Vec<&Run> = runs.iter().collect();
        batched = !crate::run::batch::groups(&compiled, &refs).is_empty();
        let t = Instant::now();
        for s in drive_many(&compiled, &mut runs, |_, _, _| ControlFlow::Continue(())) {
            s.transpose()?;
        }
        let steps: u64 = runs.iter().map(Run::step_count).sum();
        together.push(steps as f64 / t.elapsed().as_secs_f64());
    }
    Ok(BatchFigure {
        workload: workload_name(file),
        runs: lanes,
        separate_steps_per_s: median(apart),
        batched_steps_per_s: median(together),
        batched,
        rounds,
    })
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

/// One optimizer update of runs stepped as lanes of one program against the same runs updated
/// one by one: the optimizer's part of batched runs, without the loss.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LaneSteps {
    /// Whose param shapes: rosenbrock (two scalars), logreg ([64] and a scalar).
    pub workload: &'static str,
    pub lanes: usize,
    /// Microseconds for one update of every run alone (all runs together).
    pub alone_us: f64,
    /// Microseconds for one update of all lanes as one.
    pub lanes_us: f64,
}

/// [`LaneSteps`] for 8 runs of f32 Adam whose lrs differ (the usual comparison), the median of
/// `repeat` rounds timed alone, lanes, alone, lanes...; and its text lines.
pub fn lane_steps(repeat: usize) -> anyhow::Result<(Vec<LaneSteps>, Vec<String>)> {
    use crate::optim::lanes::LaneState;
    use crate::optim::spec::OptimizerSpec;
    use crate::optim::step::{NoOracle, OptimizerState, StepCx, update};
    use candle_core::{DType, Device, Tensor};

    const LANES: usize = 8;
    const UPDATES: usize = 2000;
    let mut figures = Vec::new();
    let mut lines = vec![format!(
        "optimizer update of {LANES} runs (f32 Adam, lrs differing), median of {repeat} x {UPDATES}:"
    )];
    for (workload, shapes) in [
        ("rosenbrock", &[&[][..], &[]][..]),
        ("logreg", &[&[64][..], &[]][..]),
    ] {
        let specs: Vec<OptimizerSpec> = (0..LANES)
            .map(|r| OptimizerSpec::parse(&format!("adam(lr={})", 1e-2 * (1.0 + r as f64 / 8.0))))
            .collect::<Result<_, _>>()?;
        let lrs: Vec<f64> = specs.iter().map(OptimizerSpec::lr).collect();
        let single: Vec<Tensor> = shapes
            .iter()
            .map(|&s| Tensor::ones(s, DType::F32, &Device::Cpu))
            .collect::<candle_core::Result<_>>()?;
        let grads: Vec<Tensor> = single
            .iter()
            .map(|p| p.affine(0.5, 0.1))
            .collect::<candle_core::Result<_>>()?;
        let batched = |ts: &[Tensor]| -> candle_core::Result<Vec<Tensor>> {
            ts.iter().map(|t| Tensor::stack(&[t; LANES], 0)).collect()
        };
        let (lane_params, lane_grads) = (batched(&single)?, batched(&grads)?);
        let mut lanes = LaneState::new(&specs, &lane_params)
            .ok_or_else(|| anyhow::anyhow!("Adam lanes do not batch"))?;
        let mut alone: Vec<OptimizerState> = specs
            .iter()
            .map(|s| OptimizerState::single(s, &single))
            .collect::<candle_core::Result<_>>()?;
        let (mut alone_s, mut lanes_s) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            let start = Instant::now();
            for _ in 0..UPDATES {
                for (state, &lr) in alone.iter_mut().zip(&lrs) {
                    let mut cx = StepCx {
                        params: &single,
                        grads: &grads,
                        loss: 0.0,
                        lr,
                        t: 0,
                        oracle: &mut NoOracle,
                    };
                    update(state, &mut cx)?;
                }
            }
            alone_s.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            for _ in 0..UPDATES {
                lanes.step(&lane_params, &lane_grads, &lrs)?;
            }
            lanes_s.push(start.elapsed().as_secs_f64());
        }
        let median_us = |v: Vec<f64>| median(v) / UPDATES as f64 * 1e6;
        let (alone_us, lanes_us) = (median_us(alone_s), median_us(lanes_s));
        lines.push(format!(
            "{workload:<20} alone {alone_us:>8.1} us, as lanes {lanes_us:>8.1} us ({:.1}x)",
            alone_us / lanes_us
        ));
        figures.push(LaneSteps {
            workload,
            lanes: LANES,
            alone_us,
            lanes_us,
        });
    }
    Ok((figures, lines))
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
        // Loaded afresh and let go once the run is built: the run's own memory. (`gradscope run`
        // keeps the file to batch its runs, and with it the params' f64 initial values.)
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
    let param_mb = param_bytes as f64 / (1 << 20) as f64;
    let figures = LargeParam {
        workload: file.display().to_string(),
        param_values,
        param_mb,
        steps,
        steps_per_s: median(rates),
        peak_rss_mb: peak,
        peak_per_param: peak / param_mb,
    };
    let text = format!(
        "large param ({}, {param_values} values, {param_mb:.0} MB): {:.2} steps/s over {} steps, peak RSS {:.0} MB = {:.1}x the params",
        figures.workload, figures.steps_per_s, steps, peak, figures.peak_per_param
    );
    Ok((figures, text))
}

/// The middle of `v` once sorted (NaN when it is empty): every figure here is a median of
/// repetitions.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A workload's name in the report: its file's stem.
fn workload_name(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
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

/// Steps/s of every workload at 1 and 2 threads, and of the MLP in f16 and bf16: each figure
/// from its own process (`gradscope --threads N run`), since the pool is built once per process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ThreadSweep {
    pub threads: Vec<usize>,
    pub rows: Vec<SweepRow>,
}

/// One workload in one dtype: median steps/s at each of [`ThreadSweep::threads`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepRow {
    pub workload: String,
    pub dtype: String,
    pub steps_per_s: Vec<f64>,
    /// How many runs each median is of.
    pub rounds: usize,
    /// The thread count the workload gets by default (`compile::threads`).
    pub default_threads: usize,
}

/// The thread counts swept and the low-precision dtypes the MLP also runs in (with Adam's eps
/// raised to 1e-4: the file's 1e-8 is 0 in f16, which halts the run at its first step).
const SWEEP_THREADS: [usize; 2] = [1, 2];
const SWEEP_DTYPES: [&str; 2] = ["f16", "bf16"];
/// The interleaved rounds of a workload (the thread sweep's, the batches') go on until they have
/// taken this long together...
const SWEEP_MIN_TIME: Duration = Duration::from_secs(4);
/// ...or this many have run.
const SWEEP_MAX_ROUNDS: usize = 15;

/// Whether a workload that has had `done` interleaved rounds since `started` takes another: at
/// least `repeat`, then more while [`SWEEP_MIN_TIME`] and [`SWEEP_MAX_ROUNDS`] allow.
fn another_round(done: usize, repeat: usize, started: Instant) -> bool {
    done < repeat || (done < SWEEP_MAX_ROUNDS && started.elapsed() < SWEEP_MIN_TIME)
}

/// [`ThreadSweep`] of the workloads in `dir`, medians of at least `repeat` interleaved runs
/// (more for short ones, see [`SWEEP_MIN_TIME`]), and its text lines.
pub fn thread_sweep(dir: &Path, repeat: usize) -> anyhow::Result<(ThreadSweep, Vec<String>)> {
    let exe = std::env::current_exe()?;
    let mut cases: Vec<(String, PathBuf, String, usize)> = Vec::new();
    for f in crate::load::discover(&[dir.to_path_buf()]).0 {
        let Ok((compiled, _)) = load::load_compiled(&f) else {
            continue;
        };
        let name = workload_name(&f);
        let tasks = compiled
            .runs
            .iter()
            .map(|r| compile::threads::plan_tasks(&r.plan))
            .max()
            .unwrap_or(0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default = compile::threads::default_count(tasks, cores);
        let dtypes = match name.as_str() {
            "mlp" => std::iter::once("f32").chain(SWEEP_DTYPES).collect(),
            _ => vec!["f32"],
        };
        for dtype in dtypes {
            cases.push((name.clone(), f.clone(), dtype.to_string(), default));
        }
    }
    let mut rates = vec![vec![Vec::new(); SWEEP_THREADS.len()]; cases.len()];
    for (case, (_, file, dtype, _)) in cases.iter().enumerate() {
        // Rounds of every thread count in turn, at least `repeat`, and more for a workload
        // whose run is short: a 50 ms run here swings 30% with the host's moods, and 3 of them
        // put logreg's 2 threads at 0.71x its 1 once where 10 interleaved pairs gave 1.01x.
        let started = Instant::now();
        let mut round = 0;
        while another_round(round, repeat, started) {
            round += 1;
            for (i, threads) in SWEEP_THREADS.iter().enumerate() {
                let mut cmd = std::process::Command::new(&exe);
                cmd.arg("--threads")
                    .arg(threads.to_string())
                    .arg("run")
                    .arg(file);
                cmd.args(["--format", "jsonl", "--every", "100000000"]);
                if dtype != "f32" {
                    cmd.args(["--dtype", dtype, "-o", "adam(eps=1e-4)"]);
                }
                let output = cmd.output()?;
                let summary = String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .find(|v| v["summary"] == true);
                if let Some(rate) = summary.and_then(|v| v["steps_per_s"].as_f64()) {
                    rates[case][i].push(rate);
                }
            }
        }
    }
    let rows: Vec<SweepRow> = cases
        .into_iter()
        .zip(rates)
        .map(|((workload, _, dtype, default_threads), r)| SweepRow {
            workload,
            dtype,
            rounds: r.iter().map(Vec::len).min().unwrap_or(0),
            steps_per_s: r.into_iter().map(median).collect(),
            default_threads,
        })
        .collect();
    let counts: Vec<String> = SWEEP_THREADS.iter().map(|t| t.to_string()).collect();
    let mut lines = vec![format!(
        "\nthread sweep (each its own process; median of interleaved rounds, {repeat} or more, to \
         {} s a workload): steps/s at {} threads",
        SWEEP_MIN_TIME.as_secs(),
        counts.join(" / ")
    )];
    for r in &rows {
        let rates: Vec<String> = r.steps_per_s.iter().map(|v| format!("{v:>10.1}")).collect();
        let ratio = r.steps_per_s.last().copied().unwrap_or(f64::NAN) / r.steps_per_s[0];
        lines.push(format!(
            "{:<20} {:<5} {}  ({ratio:.2}x; default {} threads; {} rounds)",
            r.workload,
            r.dtype,
            rates.join(" / "),
            r.default_threads,
            r.rounds
        ));
    }
    Ok((
        ThreadSweep {
            threads: SWEEP_THREADS.to_vec(),
            rows,
        },
        lines,
    ))
}
