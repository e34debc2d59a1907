//! `gradscope landscape` and `gradscope plot`: runs stepped headless, then drawn as a landscape
//! in the terminal or as a picture file.

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;

use super::run::{RunOptions, comparison_table, load_runs};
use crate::compile::CompiledFile;
use crate::diagnostic::Diagnostic;
use crate::draw::plot::{PlotData, PlotLandscape};
use crate::draw::scene::{Glyphs, Scene, ScenePath, ansi};
use crate::draw::{PALETTE, plot_run};
use crate::format::fmt_num;
use crate::landscape::surface::{Mode, Surface};
use crate::landscape::{
    ColorScale, Grid, GridSpec, PICTURE_CELLS, Plane, PlaneKind, follow_limit, followed, lowest,
    optimum_point, param_shapes, view_for,
};
use crate::run::Retention;
use crate::run::Run;
use crate::run::summary::drive;

/// The plane of a slice, for losses with more than two param values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlaneChoice {
    /// Two random filter-normalized directions (Li et al. 2018).
    Random,
    /// The first run's recent update direction and a random orthogonal one.
    Update,
}

/// Everything `gradscope landscape` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LandscapeArgs {
    #[command(flatten)]
    pub run: RunOptions,
    /// Grid cells a side (2 to 1024).
    #[arg(long, default_value_t = 64, value_parser = grid_cells)]
    pub grid: usize,
    /// The plane through the first run's final point, when the loss has more than two params.
    #[arg(long, value_enum, default_value = "random")]
    pub plane: PlaneChoice,
    /// Seed of the random directions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Width of the picture in characters (default: the terminal's, at most 120).
    #[arg(long)]
    pub width: Option<u16>,
    /// Height of the picture in lines (default: fits the terminal, at most 40).
    #[arg(long)]
    pub height: Option<u16>,
}

/// Everything `gradscope plot` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct PlotArgs {
    #[command(flatten)]
    pub run: RunOptions,
    /// The picture to write: NAME.svg or NAME.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Landscape grid cells a side (two-param losses); a loss that evaluates as a batch gets at
    /// least 256, interpolated between cells either way (2 to 1024).
    #[arg(long, default_value_t = 64, value_parser = grid_cells)]
    pub grid: usize,
}

/// A landscape of finished runs: the plane, each run's projected path (`(step, point)`), and
/// the grid.
struct Landscape {
    plane: Plane,
    paths: Vec<Vec<(u64, [f64; 2])>>,
    grid: Grid,
    mode: Mode,
    elapsed: Duration,
    /// Where the loss is lowest around the grid's minimum, refined on the loss itself for a
    /// picture of a batched loss, else within the grid's cell.
    minimum: Option<[f64; 2]>,
}

/// The landscape of `runs`' loss (the first run's definition and dtype) around their paths: over
/// the params' own coordinates for a two-param loss, else over a slice through the first run's
/// final point. `n` cells a side, or for a `picture` at least [`PICTURE_CELLS`] where the loss
/// evaluates as a batch.
fn landscape(
    compiled: &CompiledFile,
    runs: &[Run],
    n: usize,
    (kind, seed): (PlaneKind, u64),
    picture: bool,
) -> Result<Landscape, Diagnostic> {
    let first = runs
        .first()
        .ok_or_else(|| Diagnostic::error("no runs to draw"))?;
    let shapes = param_shapes(compiled);
    let plane = Plane::coordinates(&shapes).unwrap_or_else(|| {
        Plane::slice(
            kind,
            first.flat_params(),
            first.recent_direction(),
            &shapes,
            seed,
        )
    });
    let stepped: Vec<Vec<(u64, [f64; 2])>> = runs
        .iter()
        .map(|r| {
            let path = r.trajectory(None).into_iter();
            path.map(|(k, p)| (k, plane.project(&p))).collect()
        })
        .collect();
    let limit = follow_limit(runs.iter().map(Run::history));
    let points = runs
        .iter()
        .zip(&stepped)
        .flat_map(|(r, path)| followed(path.iter().copied(), r.history(), limit));
    let (x, y) = view_for(&plane, points)
        .ok_or_else(|| Diagnostic::error("the runs' paths are not finite"))?;
    let surface = surface_of(compiled, first)?;
    let n = match surface.mode() {
        Mode::Batched if picture => n.max(PICTURE_CELLS),
        _ => n,
    }
    .clamp(2, MAX_GRID);
    let started = Instant::now();
    let (grid, mode) = surface.grid(&plane, GridSpec { x, y, nx: n, ny: n })?;
    let cell = [(x.1 - x.0) / n as f64, (y.1 - y.0) / n as f64];
    let minimum = match (grid.min(), mode) {
        (Some(start), Mode::Batched) if picture => Some(surface.refine_min(&plane, start, cell)?.1),
        _ => grid.refined_min().map(|(_, p)| p),
    };
    Ok(Landscape {
        minimum,
        plane,
        paths: stepped,
        grid,
        mode,
        elapsed: started.elapsed(),
    })
}

/// The loss `run` steps: its definition in its dtype.
fn surface_of(compiled: &CompiledFile, run: &Run) -> Result<Surface, Diagnostic> {
    let loss = compiled
        .in_dtype(run.def, run.dtype)
        .ok_or_else(|| Diagnostic::error(format!("run `{}` has no definition", run.name)))?;
    Surface::new(&loss, run.def)
}

/// Steps every run to its end, printing the comparison table's summaries to stderr.
fn step_all(options: &RunOptions, color: bool) -> anyhow::Result<Option<(CompiledFile, Vec<Run>)>> {
    let Some((compiled, mut runs)) = load_runs(options, Retention::Everything, color)? else {
        return Ok(None);
    };
    let mut summaries = Vec::new();
    for run in &mut runs {
        summaries.push(
            drive(run, |_, _| ControlFlow::Continue(()))
                .map_err(|d| anyhow::anyhow!(d.render(false)))?,
        );
    }
    err_print!("{}", comparison_table(&summaries));
    Ok(Some((compiled, runs)))
}

/// `gradscope landscape`: the runs, then their landscape drawn in the terminal and where each
/// run's next step would land at other learning rates.
pub fn landscape_command(
    args: &LandscapeArgs,
    color: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let Some((compiled, runs)) = step_all(&args.run, color)? else {
        return Ok(false);
    };
    let dims = compiled.param_count();
    if dims < 2 {
        writeln!(
            out,
            "{}: a single param value, so there is no plane to draw",
            compiled.file.name
        )?;
        for run in &runs {
            writeln!(out, "{}", next_step_line(&compiled, run))?;
        }
        return Ok(runs.iter().all(|r| r.halted.is_none()));
    }
    let kind = match args.plane {
        PlaneChoice::Random => PlaneKind::Random,
        PlaneChoice::Update => PlaneKind::Update,
    };
    let l = match landscape(&compiled, &runs, args.grid, (kind, args.seed), false) {
        Ok(l) => l,
        Err(d) => {
            err_print!("{}", d.render(color));
            return Ok(false);
        }
    };
    let first = &runs[0];
    writeln!(
        out,
        "{}: loss of `{}` ({}) over {}; {}x{} grid {} in {}",
        compiled.file.name,
        first.name,
        first.dtype.name(),
        l.plane.kind.describe(),
        l.grid.spec.nx,
        l.grid.spec.ny,
        l.mode.name(),
        crate::format::fmt_duration(l.elapsed)
    )?;
    // The surface is the first run's loss: a variant with a loss of its own is drawn on it.
    let others: Vec<&str> = runs
        .iter()
        .filter(|r| r.def != first.def && compiled.own_objective(r.def))
        .map(|r| r.name.as_str())
        .collect();
    if !others.is_empty() {
        writeln!(
            out,
            "note: {} minimise{} a loss of {} own (a variant's loss or consts), drawn here on `{}`'s surface",
            others.join(", "),
            if others.len() == 1 { "s" } else { "" },
            if others.len() == 1 { "its" } else { "their" },
            first.name
        )?;
    }
    let (tw, th) = crossterm::terminal::size().unwrap_or((100, 40));
    let terminal = std::io::stdout().is_terminal();
    let width = args
        .width
        .unwrap_or(if terminal { tw.min(120) } else { 100 });
    let height = args.height.unwrap_or(if terminal {
        th.saturating_sub(8).clamp(12, 40)
    } else {
        34
    });
    let area = Rect::new(0, 0, width.max(30), height.max(8));
    let mut buf = Buffer::empty(area);
    let best = runs
        .iter()
        .zip(&l.paths)
        .filter_map(|(r, path)| lowest(path.iter().copied(), r.history()))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let scene = Scene {
        grid: Some(&l.grid),
        view: (l.grid.spec.x, l.grid.spec.y),
        labels: [&l.plane.labels[0], &l.plane.labels[1]],
        log: None,
        paths: runs
            .iter()
            .zip(&l.paths)
            .enumerate()
            .map(|(i, (r, p))| ScenePath {
                name: r.name.clone(),
                color: PALETTE[i % PALETTE.len()],
                points: p.iter().map(|(_, q)| *q).collect(),
            })
            .collect(),
        best,
        status: String::new(),
    };
    let glyphs = if color {
        Glyphs::HalfBlock
    } else {
        Glyphs::Ascii
    };
    scene.render(area, &mut buf, glyphs);
    write!(out, "{}", ansi(&buf, color))?;
    for run in &runs {
        writeln!(out, "{}", next_step_line(&compiled, run))?;
    }
    Ok(runs.iter().all(|r| r.halted.is_none()))
}

/// Where `run`'s next step lands at a few learning-rate multiples, as one line.
fn next_step_line(compiled: &CompiledFile, run: &Run) -> String {
    if let Some(h) = &run.halted {
        return format!(
            "next step of `{}`: none, it halted at step {}",
            run.name, h.step
        );
    }
    let line = run
        .next_update()
        .and_then(|d| surface_of(compiled, run)?.lr_line(&run.flat_params(), &d));
    let line = match line {
        Ok(l) => l,
        Err(d) => return format!("next step of `{}`: {}", run.name, d.headline()),
    };
    let at = |m: f64| line.at(m).map_or("-".to_string(), fmt_num);
    format!(
        "next step of `{}` (loss now {}): lr×¼ → {}, ×½ → {}, ×1 → {}, ×2 → {}, ×4 → {}{}",
        run.name,
        at(0.0),
        at(0.25),
        at(0.5),
        at(1.0),
        at(2.0),
        at(4.0),
        line.best().map_or(String::new(), |(m, l)| format!(
            "; best ×{} → {}",
            crate::format::fmt_short(m),
            fmt_num(l)
        ))
    )
}

/// A landscape grid's cells a side, refused outside 2..=1024 (it was clamped silently).
fn grid_cells(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (2..=MAX_GRID).contains(&n) => Ok(n),
        _ => Err(format!(
            "a grid is 2 to {MAX_GRID} cells a side, not `{text}`"
        )),
    }
}

/// The most cells a side a landscape grid has: a million evaluations.
const MAX_GRID: usize = 1024;

/// `gradscope plot`: the runs, then their curves (and landscape, for two-param losses) written
/// to `--out`.
pub fn plot_command(args: &PlotArgs, color: bool) -> anyhow::Result<bool> {
    // The picture's format is checked before any run steps.
    crate::draw::plot::picture_format(&args.out)?;
    super::check_out_folder("--out", &args.out)?;
    let Some((compiled, runs)) = step_all(&args.run, color)? else {
        return Ok(false);
    };
    let two_params = Plane::coordinates(&param_shapes(&compiled)).is_some();
    let l = if two_params {
        Some(
            landscape(&compiled, &runs, args.grid, (PlaneKind::Random, 0), true)
                .map_err(|d| anyhow::anyhow!(d.render(false)))?,
        )
    } else {
        None
    };
    let data = PlotData {
        title: compiled.file.name.clone(),
        runs: runs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let path = l.as_ref().map(|l| l.paths[i].clone()).unwrap_or_default();
                plot_run(&r.name, PALETTE[i % PALETTE.len()], r.history(), path)
            })
            .collect(),
        landscape: l.and_then(|l| {
            let scale = ColorScale::fit(l.grid.finite(), None)?;
            Some(PlotLandscape {
                scale,
                optimum: optimum_point(&compiled).map(|p| l.plane.project(&p)),
                minimum: l.minimum,
                labels: l.plane.labels.clone(),
                grid: l.grid,
                cells: false,
            })
        }),
    };
    crate::draw::plot::save(&data, &args.out)?;
    err_println!("wrote {}", args.out.display());
    Ok(runs.iter().all(|r| r.halted.is_none()))
}
