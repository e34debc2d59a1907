//! `gradscope sweep`: a grid of ordinary runs (value lists in `-o` and `--const`, variants,
//! dtypes, seeds), stepped like `run` steps them, ranked, with each swept axis's window.

use std::io::Write;
use std::path::PathBuf;

use super::run::{
    Format, RunOptions, RunOutcome, RunsError, aligned, build_runs, catch_stop_signals,
    positive_steps, select, steps_bar, until_stopped,
};
use crate::compile::CompiledFile;
use crate::diagnostic::Diagnostic;
use crate::draw::plot::{PlotError, picture_format};
use crate::draw::sweep::{SweepChart, SweepLine, SweepOutcome, SweepPicture, save_sweep};
use crate::format::fmt_num;
use crate::lang::file::DType;
use crate::load;
use crate::optim::spec::{LIST_MAX, SettingError, value_list};
use crate::optim::tricks::expand_chain;
use crate::run::Retention;
use crate::run::summary::{best_cell, step_cell};
use crate::run::sweep::{
    Grid, Inside, NoMetric, Point, RankBy, Row, Status, drive_grid, rows, windows,
};

/// Everything `gradscope sweep` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// The loss file.
    pub file: PathBuf,
    /// Optimizer spec as for `run`, where any value may be a list: `[a, b, ...]`,
    /// `logspace(lo, hi, n)` or `linspace(lo, hi, n)` (lo and hi are the values themselves).
    /// Each `-o` sweeps the cartesian product of its lists; repeat for several optimizers.
    #[arg(short = 'o', long = "optimizer")]
    pub optimizers: Vec<String>,
    /// A const of the loss file and its values (`eps=logspace(1e-8, 1e-2, 7)`, `k=[1, 2]` or
    /// one number), over every variant's own value; repeat for several.
    #[arg(long = "const", value_name = "K=VALUES")]
    pub consts: Vec<String>,
    /// Variant to run (`base`, a variant's name, or `all`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Dtypes to run in, comma-separated (default: each definition's own).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub dtype: Vec<DType>,
    /// Number of steps (default: the file's `steps`, else 100).
    #[arg(long, allow_negative_numbers = true, value_parser = positive_steps)]
    pub steps: Option<u64>,
    /// Runs a grid point with the file's seed, seed+1, ... (its random data and initial params
    /// drawn again) and reports the median and range over them.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = |t: &str| super::run::positive("seeds", t))]
    pub seeds: u64,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Rank by this `[metrics]` value instead of the final loss: lower is better, or higher
    /// with `max:METRIC` (`--rank-by max:accuracy`).
    #[arg(long, value_name = "[max:]METRIC")]
    pub rank_by: Option<String>,
    /// Also draw the sweep (SVG or PNG by the extension): final loss against one swept value,
    /// a line per optimizer or variant, or a heat map over two swept values.
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    pub out: Option<PathBuf>,
}

/// Why a sweep's grid cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// An `-o` spec's value list is malformed.
    #[error("-o {spec}: {error}")]
    Spec { spec: String, error: SettingError },
    /// A `--const` is malformed.
    #[error("--const {text}: {error}")]
    Const { text: String, error: SettingError },
    /// A `--const` names no const, or the file does not compile with a const's value. Its
    /// rendering starts with `error: `, which the front end's `gradscope: ` prefix already says.
    #[error("{}", .0.iter().map(|d| d.render(false)).collect::<String>().trim_start_matches("error: "))]
    File(Vec<Diagnostic>),
    /// A grid point starts no run.
    #[error(transparent)]
    Runs(Box<RunsError>),
    /// `--out` names no picture format.
    #[error("--out {0}")]
    Out(#[from] PlotError),
    /// The sweep has no shape a picture draws.
    #[error("--out draws final loss against one or two swept numbers: {0}")]
    Picture(String),
    /// The sweep would make more runs than a value list may (seeds, consts, variants and
    /// dtypes multiply its `-o` points).
    #[error(
        "this sweep makes {0} runs, more than {LIST_MAX}: sweep fewer values, seeds or variants at once"
    )]
    TooMany(String),
}

impl From<RunsError> for SweepError {
    fn from(e: RunsError) -> Self {
        SweepError::Runs(Box::new(e))
    }
}

/// Every `--const K=VALUES`, each const named once.
pub fn parse_consts(texts: &[String]) -> Result<Vec<(String, Vec<f64>)>, SweepError> {
    let mut consts: Vec<(String, Vec<f64>)> = Vec::with_capacity(texts.len());
    for text in texts {
        let (name, values) = parse_const(text)?;
        if consts.iter().any(|(n, _)| *n == name) {
            return Err(SweepError::Const {
                text: text.clone(),
                error: crate::optim::spec::twice(&name),
            });
        }
        consts.push((name, values));
    }
    Ok(consts)
}

/// `K=VALUES` of `--const`.
fn parse_const(text: &str) -> Result<(String, Vec<f64>), SweepError> {
    let error = |message: String| SweepError::Const {
        text: text.to_string(),
        error: SettingError {
            message,
            help: Some("write K=VALUES, e.g. --const eps=logspace(1e-8, 1e-2, 7)".into()),
        },
    };
    let Some((key, value)) = text.split_once('=') else {
        return Err(error(format!("`{text}` is not `K=VALUES`")));
    };
    let value = value.trim();
    let values = value_list(value)
        .map_err(|e| SweepError::Const {
            text: text.to_string(),
            error: e,
        })?
        .unwrap_or_else(|| vec![value.to_string()]);
    let numbers = values
        .iter()
        .map(|v| match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(error(format!("`{v}` is not a finite number"))),
        })
        .collect::<Result<_, _>>()?;
    Ok((key.trim().to_string(), numbers))
}

/// Every combination of `lists`' values, the first varying slowest.
fn product<T: Clone>(lists: &[Vec<T>]) -> Vec<Vec<T>> {
    lists.iter().fold(vec![Vec::new()], |acc, list| {
        acc.iter()
            .flat_map(|head| {
                list.iter().map(move |v| {
                    let mut c = head.clone();
                    c.push(v.clone());
                    c
                })
            })
            .collect()
    })
}

/// The grid `args` asks for over `compiled`: per `-o`, its points times the variants, dtypes
/// and consts; each point a run per seed, made exactly as `gradscope run` makes it.
pub fn build_grid(args: &SweepArgs, compiled: &CompiledFile) -> Result<Grid, SweepError> {
    let texts: Vec<Option<&str>> = match args.optimizers.is_empty() {
        true => vec![None],
        false => args.optimizers.iter().map(|t| Some(t.as_str())).collect(),
    };
    let mut chains = Vec::new();
    for text in &texts {
        chains.push(match text {
            Some(t) => expand_chain(t).map_err(|error| SweepError::Spec {
                spec: t.to_string(),
                error,
            })?,
            None => vec![crate::optim::tricks::ChainPoint {
                text: String::new(),
                label: String::new(),
                swept: Vec::new(),
            }],
        });
    }
    let consts = parse_consts(&args.consts)?;
    let defs = select(compiled, args.variant.as_deref(), false)?;
    let dtypes: Vec<Option<DType>> = match args.dtype.is_empty() {
        true => vec![None],
        false => args.dtype.iter().copied().map(Some).collect(),
    };
    // Counted before anything is made: a typo in one list must not fill the memory.
    let runs = [
        chains.iter().map(Vec::len).sum::<usize>(),
        defs.len(),
        dtypes.len(),
        usize::try_from(args.seeds).unwrap_or(usize::MAX),
    ]
    .into_iter()
    .chain(consts.iter().map(|(_, v)| v.len()))
    .try_fold(1usize, usize::checked_mul);
    match runs {
        Some(n) if n <= LIST_MAX => {}
        n => {
            let n = n.map_or_else(|| "over 10^19".to_string(), |n| n.to_string());
            return Err(SweepError::TooMany(n));
        }
    }
    let named = |combo: &[f64]| -> Vec<(String, f64)> {
        consts
            .iter()
            .zip(combo)
            .map(|((name, _), v)| (name.clone(), *v))
            .collect()
    };
    // A const the file does not have is the command's error, as the file says it.
    if let Some((name, values)) = consts
        .iter()
        .find(|(name, _)| !compiled.file.consts.iter().any(|c| c.name.node == *name))
    {
        let value = values.first().copied().unwrap_or_default();
        if let Err(diags) = compiled.recompiled(compiled.file.seed, &[(name.clone(), value)]) {
            return Err(SweepError::File(diags));
        }
    }
    // A combination of consts the file does not compile with (a shape that stops matching) is
    // left out and said why; the others run. None compiling is the command's error.
    let mut left_out = Vec::new();
    let mut first_seed = Vec::new();
    for combo in product(&consts.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()) {
        match compiled.recompiled(compiled.file.seed, &named(&combo)) {
            Ok(file) => first_seed.push((combo, file)),
            Err(diags) => left_out.push((combo_label(&named(&combo)), diags)),
        }
    }
    if first_seed.is_empty() && !left_out.is_empty() {
        let (combo, mut diags) = left_out.swap_remove(0);
        if let Some(d) = diags.iter_mut().find(|d| d.is_error()) {
            d.message = format!("with {combo}: {}", d.message);
        }
        return Err(SweepError::File(diags));
    }
    let combos: Vec<Vec<f64>> = first_seed.iter().map(|(c, _)| c.clone()).collect();
    let mut first_seed: Vec<Option<CompiledFile>> =
        first_seed.into_iter().map(|(_, f)| Some(f)).collect();
    let own_variants = defs.len() > 1 && defs.iter().any(|&d| compiled.own_objective(d));
    let mixed_objectives = combos.len() > 1 || own_variants;
    let mut objectives: Vec<String> = consts.iter().map(|(name, _)| name.clone()).collect();
    if own_variants {
        objectives.push("variant".into());
    }
    // The points, in table order: per -o, chain point, variant, dtype, consts.
    let mut points = Vec::new();
    let mut specs = Vec::new();
    for (group, chain_points) in chains.iter().enumerate() {
        for chain in chain_points {
            for &def in &defs {
                for &dtype in &dtypes {
                    for (c, combo) in combos.iter().enumerate() {
                        let mut axes = Vec::new();
                        if defs.len() > 1 {
                            axes.push(("variant".into(), compiled.runs[def].name.clone()));
                        }
                        if let (Some(d), true) = (dtype, dtypes.len() > 1) {
                            axes.push(("dtype".into(), d.name().to_string()));
                        }
                        for ((name, values), v) in consts.iter().zip(combo) {
                            if values.len() > 1 {
                                axes.push((name.clone(), v.to_string()));
                            }
                        }
                        axes.extend(chain.swept.iter().cloned());
                        points.push(Point {
                            group,
                            name: String::new(),
                            spec: chain.text.clone(),
                            axes,
                            outcomes: Vec::new(),
                        });
                        specs.push((chain.clone(), def, dtype, c));
                    }
                }
            }
        }
    }
    let mut files = Vec::new();
    for seed in 0..args.seeds {
        for (c, combo) in combos.iter().enumerate() {
            let file = match first_seed[c].take() {
                Some(file) => file,
                None => compiled
                    .recompiled(compiled.file.seed.wrapping_add(seed), &named(combo))
                    .map_err(SweepError::File)?,
            };
            let mut runs = Vec::new();
            for (i, (chain, def, dtype, _)) in specs.iter().enumerate().filter(|(_, s)| s.3 == c) {
                let options = RunOptions {
                    file: args.file.clone(),
                    optimizers: match chain.text.is_empty() {
                        true => Vec::new(),
                        false => vec![chain.text.clone()],
                    },
                    variant: Some(file.runs[*def].name.clone()),
                    steps: args.steps,
                    dtype: *dtype,
                    clip_norm: None,
                    on_nonfinite: None,
                    grad: None,
                    consts: Vec::new(),
                };
                let mut built = build_runs(&options, &file, Retention::Outcome)?;
                let run = built.remove(0);
                if points[i].name.is_empty() {
                    points[i].name = run.name.replace(&chain.text, &chain.label);
                }
                runs.push((i, run));
            }
            files.push((file, runs));
        }
    }
    let groups = texts
        .iter()
        .map(|t| {
            t.map_or_else(
                || compiled.runs[0].settings.chain().to_string(),
                str::to_string,
            )
        })
        .collect();
    Ok(Grid {
        points,
        files,
        groups,
        mixed_objectives,
        consts: consts.into_iter().map(|(name, _)| name).collect(),
        objectives,
        left_out,
    })
}

/// `n = 1, k = 0.5`: a combination of consts as a sweep's note names it.
fn combo_label(values: &[(String, f64)]) -> String {
    values
        .iter()
        .map(|(name, v)| format!("{name} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `gradscope sweep`: builds the grid, steps it (a progress bar on a terminal), and prints the
/// ranked table, the best point per optimizer and each axis's window, also after ctrl-c.
pub fn sweep_command(args: &SweepArgs, color: bool) -> anyhow::Result<RunOutcome> {
    let (compiled, warnings) = match load::load_compiled(&args.file) {
        Ok(c) => c,
        Err(diags) => {
            for d in &diags {
                err_print!("{}", d.render(color));
            }
            return Ok(RunOutcome::Failed);
        }
    };
    for d in &warnings {
        err_print!("{}", d.render(color));
    }
    crate::compile::threads::start([&compiled], 0);
    // A malformed list or const is a command-line error, as a malformed -o is for `run`.
    let grid = build_grid(args, &compiled)?;
    for (combo, diags) in &grid.left_out {
        err_println!("note: {combo} is left out of the sweep: the file does not compile with it");
        for d in diags {
            err_print!("{}", d.render(color));
        }
    }
    if let Some(out) = &args.out {
        picture_format(out)?;
        sweep_chart(&grid.points, &[], &grid.groups, &grid.consts)?;
        super::check_out_folder("--out", out)?;
    }
    let rank_by = args.rank_by.as_deref().map_or(RankBy::Loss, RankBy::parse);
    if let RankBy::Metric { name, .. } = &rank_by {
        let names: Vec<String> = compiled
            .file
            .metrics
            .iter()
            .map(|m| m.name.node.clone())
            .collect();
        if !names.contains(name) {
            return Err(NoMetric {
                name: name.clone(),
                names,
            }
            .into());
        }
    }
    let (groups, consts) = (grid.groups.clone(), grid.consts.clone());
    let objectives = grid.objectives.clone();
    let mixed = grid.mixed_objectives;
    let total: u64 = grid
        .files
        .iter()
        .flat_map(|(_, runs)| runs.iter().map(|(_, r)| r.config.steps + 1))
        .sum();
    // Files are made seed by seed, each with every combination of consts.
    let per_seed = grid.files.len() / usize::try_from(args.seeds).unwrap_or(1).max(1);
    if let (Some((first, _)), Some((second, _))) = (grid.files.first(), grid.files.get(per_seed))
        && args.seeds > 1
        && first.same_values(second)
    {
        err_println!(
            "note: {} draws nothing at random: every seed runs the same numbers",
            args.file.display()
        );
    }
    catch_stop_signals();
    let runs: usize = grid.files.iter().map(|(_, r)| r.len()).sum();
    use crate::format::counted;
    err_println!(
        "sweeping {} x {}: {} (ctrl-c stops and prints the table so far)",
        counted(grid.points.len(), "point"),
        counted(args.seeds as usize, "seed"),
        counted(runs, "run"),
    );
    let bar = steps_bar(total, "sweep {bar:40} {pos}/{len} steps {eta}");
    let points = drive_grid(grid, || {
        if let Some(b) = &bar {
            b.inc(1);
        }
        until_stopped()
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let points = match points {
        Ok(p) => p,
        Err(d) => {
            err_print!("{}", d.render(color));
            return Ok(RunOutcome::Failed);
        }
    };
    let rows = rows(&points, &rank_by)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut report = String::new();
    if rank_by == RankBy::Loss && mixed {
        report.push_str(
            "note: these runs minimise different objectives (their consts or losses differ), \
             so their losses are not comparable; --rank-by METRIC ranks them by a [metrics] value\n",
        );
    }
    if let Some(name) = ranked_metric(&rank_by)
        && rows
            .iter()
            .filter(|r| r.status == Status::Finished)
            .all(|r| !r.metric.is_some_and(f64::is_finite))
    {
        report.push_str(&format!(
            "note: `{name}` is not finite at any point that finished, so it ranks nothing: the order below is the grid's\n"
        ));
    }
    report.push_str(&best_and_windows(
        &points,
        &rows,
        &groups,
        (&objectives, ranked_metric(&rank_by)),
    ));
    match args.format {
        Format::Table => {
            write!(out, "{}", table(&points, &rows, args.seeds > 1, &rank_by))?;
            write!(out, "\n{report}")?;
        }
        Format::Csv => {
            write!(out, "{}", csv(&points, &rows, &rank_by))?;
            err_print!("{report}");
        }
        Format::Jsonl => {
            for (k, r) in rows.iter().enumerate() {
                writeln!(out, "{}", row_json(&points[r.point], r, k + 1, &rank_by))?;
            }
            err_print!("{report}");
        }
    }
    out.flush()?;
    if let Some(path) = &args.out {
        let seeds = match args.seeds {
            1 => String::new(),
            n => format!(" (median and range over {n} seeds)"),
        };
        let steps = args
            .steps
            .map_or(String::new(), |n| format!(" after {n} steps"));
        let picture = SweepPicture {
            title: format!("{}: final loss{steps}{seeds}", compiled.file.name),
            chart: sweep_chart(&points, &rows, &groups, &consts)?,
        };
        save_sweep(&picture, path)?;
        err_println!("wrote {}", path.display());
    }
    // A sweep of which no point finished found nothing: it fails as a halted `run` does.
    Ok(match RunOutcome::finished_unless_stopped() {
        RunOutcome::Finished if !rows.iter().any(|r| r.status == Status::Finished) => {
            RunOutcome::Failed
        }
        outcome => outcome,
    })
}

/// Every axis any point sweeps, in the order they first appear.
fn axis_names(points: &[Point]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for p in points {
        for (a, _) in &p.axes {
            if !names.contains(a) {
                names.push(a.clone());
            }
        }
    }
    names
}

/// What `--out` draws of `points` and their `rows` (points without a row, not run or
/// interrupted, are left out): a line per `-o` and non-numeric axis value (variant, dtype)
/// against the one numeric axis, or a heat map over two numeric axes of one such line. With no
/// rows it checks that the sweep has such a shape.
pub fn sweep_chart(
    points: &[Point],
    rows: &[Row],
    groups: &[String],
    consts: &[String],
) -> Result<SweepChart, SweepError> {
    let value = |p: &Point, axis: &str| -> Option<f64> {
        let (_, v) = p.axes.iter().find(|(a, _)| a == axis)?;
        v.parse().ok()
    };
    let (numeric, other): (Vec<String>, Vec<String>) =
        axis_names(points).into_iter().partition(|a| {
            points.iter().all(|p| {
                p.axes
                    .iter()
                    .all(|(n, v)| n != a || v.parse::<f64>().is_ok())
            })
        });
    let heads: Vec<&str> = groups
        .iter()
        .map(|g| g.split('(').next().unwrap_or(g).trim())
        .collect();
    let group_name = |g: usize| match heads.iter().filter(|h| **h == heads[g]).count() {
        1 => heads[g].to_string(),
        _ => groups[g].clone(),
    };
    let line_name = |p: &Point| {
        let mut parts: Vec<String> = other
            .iter()
            .filter_map(|a| p.axes.iter().find(|(n, _)| n == a).map(|(_, v)| v.clone()))
            .collect();
        if groups.len() > 1 || parts.is_empty() {
            parts.insert(0, group_name(p.group));
        }
        parts.join(" ")
    };
    let outcome = |i: usize| {
        let row = rows.iter().find(|r| r.point == i)?;
        match row.status {
            Status::Finished => Some(SweepOutcome::Loss(row.final_loss)),
            Status::Diverged { .. } => Some(SweepOutcome::Diverged),
            Status::Halted(_) => Some(SweepOutcome::Halted),
            Status::Interrupted(_) => None,
        }
    };
    let mut lines: Vec<SweepLine> = Vec::new();
    for p in points {
        let name = line_name(p);
        if !lines.iter().any(|l| l.name == name) {
            lines.push(SweepLine {
                name,
                points: Vec::new(),
            });
        }
    }
    match numeric.as_slice() {
        [axis] => {
            for (i, p) in points.iter().enumerate() {
                if let (Some(v), Some(o)) = (value(p, axis), outcome(i)) {
                    let name = line_name(p);
                    if let Some(line) = lines.iter_mut().find(|l| l.name == name) {
                        line.points.push((v, o));
                    }
                }
            }
            // An -o that does not sweep the axis has no line.
            lines.retain(|l| !l.points.is_empty());
            Ok(SweepChart::Lines {
                axis: axis.clone(),
                lines,
            })
        }
        [x, y] if lines.len() == 1 => {
            let sorted = |axis: &str| {
                let mut v: Vec<f64> = points.iter().filter_map(|p| value(p, axis)).collect();
                v.sort_by(f64::total_cmp);
                v.dedup();
                v
            };
            let values = [sorted(x), sorted(y)];
            let index = |k: usize, v: f64| values[k].iter().position(|w| *w == v);
            let cells = points
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let cell = (index(0, value(p, x)?)?, index(1, value(p, y)?)?);
                    Some((cell, outcome(i)?))
                })
                .collect();
            Ok(SweepChart::Heat {
                consts: [x, y].map(|a| consts.contains(a)),
                axes: [x.clone(), y.clone()],
                values,
                cells,
            })
        }
        [_, _] => Err(SweepError::Picture(format!(
            "a heat map shows one optimizer and variant, and this sweep has {} ({})",
            lines.len(),
            lines
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        [] => Err(SweepError::Picture(
            "this sweep varies no number (give -o or --const a list of values)".into(),
        )),
        more => Err(SweepError::Picture(format!(
            "this sweep varies {} numbers ({}); sweep one or two",
            more.len(),
            more.join(", ")
        ))),
    }
}

/// A point's value of `axis` as shown (`-` when it does not sweep it).
fn axis_cell(point: &Point, axis: &str) -> String {
    match point.axes.iter().find(|(a, _)| a == axis) {
        Some((_, v)) => v.parse().map_or_else(|_| v.clone(), fmt_num),
        None => "-".into(),
    }
}

/// The final-loss cell: the median, or how the point failed (never a loss then).
fn final_cell(row: &Row) -> String {
    match &row.status {
        Status::Finished => fmt_num(row.final_loss.median),
        Status::Interrupted(k) => format!("interrupted at step {k}"),
        Status::Diverged { seeds: 1 } => "diverged".into(),
        Status::Diverged { seeds } => format!("diverged ({seeds} seeds)"),
        // "halted at step k", without the reason, which `run` prints in full.
        Status::Halted(why) => why.split(": ").next().unwrap_or(why).to_string(),
    }
}

/// The ranked table: one row a point.
fn table(points: &[Point], rows: &[Row], seeds: bool, rank_by: &RankBy) -> String {
    let axes = axis_names(points);
    let mut header: Vec<String> = vec!["#".into(), "run".into()];
    header.extend(axes.iter().cloned());
    let metric = rows.iter().any(|r| r.metric.is_some());
    if let (true, RankBy::Metric { name, .. }) = (metric, rank_by) {
        header.push(name.clone());
    }
    header.push("final loss".into());
    if seeds {
        header.push("range over seeds".into());
    }
    header.extend(
        ["best loss (step)", "first non-finite", "steps/s"]
            .iter()
            .map(|s| s.to_string()),
    );
    let cells: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let p = &points[r.point];
            let mut row = vec![(k + 1).to_string(), p.name.clone()];
            row.extend(axes.iter().map(|a| axis_cell(p, a)));
            if metric {
                row.push(match (&r.status, r.metric) {
                    (Status::Finished, Some(v)) => fmt_num(v),
                    _ => "-".into(),
                });
            }
            row.push(final_cell(r));
            if seeds {
                row.push(match r.status {
                    Status::Finished => {
                        format!(
                            "{}..{}",
                            fmt_num(r.final_loss.min),
                            fmt_num(r.final_loss.max)
                        )
                    }
                    _ => "-".into(),
                });
            }
            let best = match r.status {
                Status::Finished | Status::Interrupted(_) => {
                    best_cell(r.best_loss.median, r.best_step)
                }
                _ => "-".into(),
            };
            row.push(best);
            row.push(step_cell(r.first_nonfinite));
            row.push(format!("{:.0}", r.steps_per_s));
            row
        })
        .collect();
    aligned(&header, &cells)
}

/// The best point of each `-o`, and each of its swept axes' window.
fn best_and_windows(
    points: &[Point],
    rows: &[Row],
    groups: &[String],
    (objectives, metric): (&[String], Option<&str>),
) -> String {
    let mut out = String::new();
    for (g, text) in groups.iter().enumerate() {
        let best = rows
            .iter()
            .find(|r| points[r.point].group == g && r.status == Status::Finished);
        match best {
            // Ranked by loss, the first finished point did best; if even it ended above where it
            // started, no point is worth calling best.
            Some(r) if r.metric.is_none() && r.improvement <= 0.0 => out.push_str(&format!(
                "best of {text}: none, no point improved on the initial loss (the least bad: {}, final loss {})\n",
                points[r.point].name,
                fmt_num(r.final_loss.median)
            )),
            Some(r) => out.push_str(&format!(
                "best of {text}: {} ({}final loss {})\n",
                points[r.point].name,
                match (metric, r.metric) {
                    (Some(name), Some(v)) => format!("{name} {}, ", fmt_num(v)),
                    _ => String::new(),
                },
                fmt_num(r.final_loss.median)
            )),
            None => out.push_str(&format!("best of {text}: no point finished\n")),
        }
        let measure = match (metric, best.and_then(|r| r.metric)) {
            (Some(name), Some(_)) => format!("{name} within 10% of the best point's"),
            _ => "improvement within 10% of the best".to_string(),
        };
        for w in windows(points, rows, g, objectives) {
            let show = |v: &String| v.parse().map_or_else(|_| v.clone(), fmt_num);
            let numeric = w.values.iter().all(|v| v.parse::<f64>().is_ok());
            let line = match &w.inside {
                Inside::Values(inside) => format!(
                    "window ({measure}): {} ({} of {} values)",
                    match (numeric, inside.first(), inside.last()) {
                        (true, Some(first), Some(last)) => {
                            format!("{} .. {}", show(first), show(last))
                        }
                        _ => inside.join(", "),
                    },
                    inside.len(),
                    w.values.len()
                ),
                Inside::NoneImproved => {
                    "window: none (no value improved on the initial loss)".into()
                }
                Inside::NoneFinished => "window: none (no point finished)".into(),
                Inside::MetricNotFinite => {
                    "window: none (the metric is not finite at the best point)".into()
                }
                Inside::OwnObjectives => {
                    "window: none (each value is an objective of its own; the others are weighed at the best point's)".into()
                }
            };
            out.push_str(&format!("  {} {line}\n", w.axis));
        }
    }
    out
}

/// The table as CSV: the same columns, the failure in `status` instead of the loss.
fn csv(points: &[Point], rows: &[Row], rank_by: &RankBy) -> String {
    let axes = axis_names(points);
    // The metric the rows are ranked by, as a column of its own (`metric_<name>`, as `run`'s).
    let metric = ranked_metric(rank_by);
    let mut out = format!(
        "rank,run,{}{}final_loss,final_loss_min,final_loss_max,best_loss,best_step,first_nonfinite_step,status,steps_per_s\n",
        axes.iter().map(|a| format!("{a},")).collect::<String>(),
        metric.map_or(String::new(), |m| format!("metric_{m},"))
    );
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for (k, r) in rows.iter().enumerate() {
        let p = &points[r.point];
        let finished = r.status == Status::Finished;
        let num = |v: f64| match finished {
            true => crate::format::csv_num(v),
            false => String::new(),
        };
        let opt = |v: Option<u64>| v.map_or(String::new(), |k| k.to_string());
        let metric = match (metric, r.metric) {
            (None, _) => String::new(),
            (Some(_), Some(v)) => format!("{},", num(v)),
            (Some(_), None) => ",".into(),
        };
        out.push_str(&format!(
            "{},{},{}{metric}{},{},{},{},{},{},{},{:.1}\n",
            k + 1,
            quote(&p.name),
            axes.iter()
                .map(|a| match p.axes.iter().find(|(n, _)| n == a) {
                    Some((_, v)) => format!("{},", quote(v)),
                    None => ",".into(),
                })
                .collect::<String>(),
            num(r.final_loss.median),
            num(r.final_loss.min),
            num(r.final_loss.max),
            num(r.best_loss.median),
            opt(r.best_step),
            opt(r.first_nonfinite),
            quote(&status_word(&r.status)),
            r.steps_per_s
        ));
    }
    out
}

/// The metric the rows are ranked by, if any.
fn ranked_metric(rank_by: &RankBy) -> Option<&str> {
    match rank_by {
        RankBy::Metric { name, .. } => Some(name),
        RankBy::Loss => None,
    }
}

/// How a point ended, in a word for CSV and JSON.
fn status_word(status: &Status) -> String {
    match status {
        Status::Finished => "finished".into(),
        Status::Interrupted(k) => format!("interrupted at step {k}"),
        Status::Diverged { .. } => "diverged".into(),
        Status::Halted(why) => why.clone(),
    }
}

/// One row as a JSON object (losses null unless it finished).
fn row_json(point: &Point, row: &Row, rank: usize, rank_by: &RankBy) -> serde_json::Value {
    let finished = row.status == Status::Finished;
    let loss = |v: f64| match finished && v.is_finite() {
        true => serde_json::json!(v),
        false => serde_json::Value::Null,
    };
    let axes: serde_json::Map<String, serde_json::Value> = point
        .axes
        .iter()
        .map(|(a, v)| {
            let value = v
                .parse::<f64>()
                .map_or_else(|_| serde_json::json!(v), |x| serde_json::json!(x));
            (a.clone(), value)
        })
        .collect();
    let metrics: serde_json::Map<String, serde_json::Value> = ranked_metric(rank_by)
        .map(|m| {
            (
                m.to_string(),
                row.metric.map_or(serde_json::Value::Null, loss),
            )
        })
        .into_iter()
        .collect();
    serde_json::json!({
        "rank": rank,
        "run": point.name,
        "axes": axes,
        "metrics": metrics,
        "seeds": point.outcomes.len(),
        "final_loss": loss(row.final_loss.median),
        "final_loss_min": loss(row.final_loss.min),
        "final_loss_max": loss(row.final_loss.max),
        "best_loss": loss(row.best_loss.median),
        "best_step": row.best_step,
        "first_nonfinite_step": row.first_nonfinite,
        "status": status_word(&row.status),
        "steps_per_s": row.steps_per_s,
    })
}
