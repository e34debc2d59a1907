//! `gradscope gradcheck`, `curvature` and `precision`: a point of a run, examined.

use std::io::Write;
use std::path::PathBuf;

use super::run::{catch_stop_signals, release_stop_signals, select, steps_bar, until_stopped};
use crate::compile::CompiledFile;
use crate::diagnostic::Diagnostic;
use crate::format::fmt_num;
use crate::lang::file::DType;
use crate::load;
use crate::run::summary::drive;
use crate::run::{Run, RunRequest};

/// A point of a run to examine: the file, which variant, after how many steps, in which dtype.
#[derive(Debug, Clone, clap::Args)]
pub struct PointArgs {
    /// The loss file.
    pub file: PathBuf,
    /// Variant to examine (`base`, a variant's name, or `all`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Step the run this many times with its optimizer first.
    #[arg(long, default_value_t = 0)]
    pub at_step: u64,
    /// Evaluate in this dtype instead of the run's.
    #[arg(long, value_enum)]
    pub dtype: Option<DType>,
}

/// The compiled file and the selected runs, each with its definition's index.
type Points = (CompiledFile, Vec<(usize, Run)>);

/// The compiled file and, for each selected run definition, its index and the run stepped to
/// `at_step` (`default_all`: every variant when none is named). Err holds the file's diagnostics.
pub(super) fn points(
    args: &PointArgs,
    default_all: bool,
) -> anyhow::Result<Result<Points, Vec<Diagnostic>>> {
    let (compiled, _) = match load::load_compiled(&args.file) {
        Ok(c) => c,
        Err(diags) => return Ok(Err(diags)),
    };
    crate::compile::threads::start([&compiled], 0);
    let selected = select(&compiled, args.variant.as_deref(), default_all)?;
    // Stepping to a far step can take long: a bar on a terminal, and ctrl-c stops the stepping
    // (the report is then at the step reached, and says so). What follows has no step to stop
    // at, so ctrl-c ends the process there, as before.
    let stepping = args.at_step > 0;
    if stepping {
        catch_stop_signals();
    }
    let bar = stepping
        .then(|| {
            steps_bar(
                args.at_step,
                "stepping to the point {bar:40} {pos}/{len} steps {eta}",
            )
        })
        .flatten();
    let mut runs = Vec::new();
    for mut request in selected
        .into_iter()
        .filter_map(|def| RunRequest::of(&compiled, def))
    {
        request.settings.steps = args.at_step;
        if let Some(d) = args.dtype {
            request.dtype = d;
        }
        let def = request.def;
        let mut r = match request.start(&compiled) {
            Ok(r) => r,
            Err(d) => return Ok(Err(vec![d])),
        };
        if let Some(b) = &bar {
            b.reset();
        }
        drive(&mut r, |_, _| {
            if let Some(b) = &bar {
                b.inc(1);
            }
            until_stopped()
        })?;
        runs.push((def, r));
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if stepping {
        release_stop_signals();
    }
    Ok(Ok((compiled, runs)))
}

/// Renders a file's diagnostics when it could not be loaded.
pub(super) fn unloadable(
    diags: &[Diagnostic],
    color: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    for d in diags {
        write!(out, "{}", d.render(color))?;
    }
    Ok(false)
}

/// The step a run's point is at: the halted step's params when it halted (that step made no
/// update), else the steps taken.
pub(super) fn point_step(run: &Run) -> u64 {
    run.halted.as_ref().map_or(run.step_count(), |h| h.step)
}

/// `FILE  run `name` in DTYPE at step K`: the first line of every report on a point, after a
/// line saying so when the run halted before the step asked for.
pub(super) fn heading(args: &PointArgs, run: &Run) -> String {
    let halted = short_of(run, args.at_step).map_or(String::new(), |s| format!("{s}\n"));
    format!(
        "{halted}{}  run `{}` in {} at step {}",
        args.file.display(),
        run.name,
        run.dtype.name(),
        point_step(run)
    )
}

/// Why `run` is not at `at_step`, the step asked for, if it is not: it halted before it, or
/// ctrl-c stopped its stepping.
pub(super) fn short_of(run: &Run, at_step: u64) -> Option<String> {
    let step = point_step(run);
    match &run.halted {
        Some(h) if at_step > h.step => Some(format!(
            "run `{}` halted at step {step} ({}); checking at step {step}, not {at_step}",
            run.name, h.reason
        )),
        None if step < at_step => Some(format!(
            "run `{}` was stopped at step {step}; checking at step {step}, not {at_step}",
            run.name
        )),
        _ => None,
    }
}

/// `gradscope gradcheck`: returns whether every checked param passed.
pub fn gradcheck_command(
    args: &PointArgs,
    color: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    use crate::compile::gradcheck::{SAMPLE, Verdict, gradcheck, tolerance};
    let (compiled, runs) = match points(args, true)? {
        Ok(p) => p,
        Err(diags) => return unloadable(&diags, color, out),
    };
    let mut all_pass = true;
    for (def, run) in runs {
        let (atol, rtol) = tolerance(run.dtype);
        writeln!(
            out,
            "{} (atol {atol:e}, rtol {rtol:e}: an element passes at err / tol = |Δ| / (atol + rtol |fd|) <= 1; at most {SAMPLE} elements a param)",
            heading(args, &run)
        )?;
        match gradcheck(&compiled, def, run.dtype, Some(&run.param_values()), 0) {
            Ok(checks) => {
                writeln!(
                    out,
                    "  {:<10} {:>14} {:>12} {:>12} {:>12} {:>6}  result",
                    "param", "checked", "max abs err", "err / tol", "worst at", "kinks"
                )?;
                for c in checks {
                    let result = match c.verdict {
                        Verdict::Pass => "ok",
                        Verdict::Fail => {
                            all_pass = false;
                            "FAIL"
                        }
                        Verdict::CustomGradient => {
                            "differs: custom gradient (fine for a straight-through estimator)"
                        }
                    };
                    let checked = if c.checked < c.total {
                        format!("{} of {} (sampled)", c.checked, c.total)
                    } else {
                        format!("{} of {}", c.checked, c.total)
                    };
                    writeln!(
                        out,
                        "  {:<10} {:>14} {:>12} {:>12} {:>12} {:>6}  {result}",
                        c.name,
                        checked,
                        fmt_num(c.max_abs),
                        fmt_num(c.max_tol_ratio),
                        format!("{:?}", c.worst),
                        c.kinks
                    )?;
                    if let Some(why) = c.why_it_fails() {
                        writeln!(out, "    {why}")?;
                    }
                }
            }
            Err(d) => {
                write!(out, "{}", d.render(color))?;
                all_pass = false;
            }
        }
    }
    Ok(all_pass)
}

/// `gradscope curvature`: the top Hessian eigenvalue and what it means for the learning rate.
pub fn curvature_command(
    args: &PointArgs,
    color: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let runs = match points(args, false)? {
        Ok((_, runs)) => runs,
        Err(diags) => return unloadable(&diags, color, out),
    };
    let mut all_finite = true;
    for (_, run) in runs {
        writeln!(out, "{}", heading(args, &run))?;
        let loss = run.current_loss()?;
        if !loss.is_finite() {
            writeln!(
                out,
                "  no curvature here: the loss is {} at these params, so the Hessian is not defined",
                fmt_num(loss)
            )?;
            all_finite = false;
            continue;
        }
        if let Some(h) = &run.halted {
            writeln!(
                out,
                "  no curvature here: {}, so the Hessian is not defined",
                h.reason
            )?;
            all_finite = false;
            continue;
        }
        let c = run.curvature(50)?;
        writeln!(
            out,
            "  top Hessian eigenvalue λ = {}  ({} power iterations{})",
            fmt_num(c.lambda),
            c.iterations,
            if c.converged { "" } else { ", not converged" }
        )?;
        writeln!(
            out,
            "  check against finite differences of gradients: relative error {}",
            fmt_num(c.fd_rel_err)
        )?;
        if c.fd_rel_err > crate::compile::hessian::fd_tolerance(run.dtype == DType::F64) {
            writeln!(out, "  {}", super::hessian::fd_disagreement(run.dtype))?;
        }
        stable_lr_line(
            out,
            "λ",
            c.max_stable_lr(),
            run_lr(&run),
            "the loss is not convex along the top eigenvector here",
        )?;
    }
    Ok(all_finite)
}

/// The run's learning rate at its point (the schedule's, at the step it is at).
pub(super) fn run_lr(run: &Run) -> f64 {
    run.config
        .schedule
        .lr(run.config.optimizer.lr(), point_step(run))
}

/// The run's lr against the largest stable lr of plain gradient descent, 2/`lambda` (`max`;
/// None when the eigenvalue is at most 0, which `no_bound` explains).
pub(super) fn stable_lr_line(
    out: &mut impl Write,
    lambda: &str,
    max: Option<f64>,
    lr: f64,
    no_bound: &str,
) -> std::io::Result<()> {
    match max {
        Some(max) => {
            let verdict = if lr < max {
                "below it: plain gradient descent is stable here"
            } else {
                "above it: plain gradient descent diverges along the top eigenvector"
            };
            writeln!(
                out,
                "  largest stable lr for gradient descent 2/{lambda} = {}; the run's lr {} is {verdict}",
                fmt_num(max),
                fmt_num(lr)
            )
        }
        None => writeln!(
            out,
            "  {lambda} ≤ 0: {no_bound}, so 2/{lambda} gives no bound"
        ),
    }
}

/// `gradscope precision`: what low precision does to each op's output.
pub fn precision_command(
    args: &PointArgs,
    color: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let runs = match points(args, false)? {
        Ok((_, runs)) => runs,
        Err(diags) => return unloadable(&diags, color, out),
    };
    for (_, run) in runs {
        let stats = run.precision()?;
        writeln!(out, "{} (against f64)", heading(args, &run))?;
        let nonfinite = run.current().map(|e| e.loss).filter(|l| !l.is_finite());
        match (stats.is_empty(), nonfinite) {
            (true, Some(loss)) => {
                // Non-finite in f64 as well: the op that makes it is `run`'s report to find.
                let at = run
                    .halted
                    .as_ref()
                    .and_then(|h| h.provenance.as_ref())
                    .map(|p| format!("; it starts at {}", p.summary_at(run.source())))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "  no op overflowed, flushed to zero or went subnormal against f64: the loss \
                     is {} in f64 too, so this is no precision problem{at}",
                    fmt_num(loss)
                )?;
            }
            (true, None) => {
                writeln!(out, "  no op overflowed, flushed to zero or went subnormal")?;
            }
            (false, _) => {}
        }
        for s in stats {
            let (line, col) = run.source().line_col(s.span.start);
            writeln!(
                out,
                "  {line}:{col} `{}`\n      of {}: {} overflowed to Inf, {} flushed to 0, {} subnormal",
                s.op, s.total, s.overflowed, s.flushed, s.subnormal
            )?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run short of the step asked for says why: halted (and where), or stopped by ctrl-c.
    #[test]
    fn a_point_short_of_its_step_says_why() {
        let loaded = crate::lang::file::load_bytes(
            std::path::Path::new("t.toml"),
            b"name = \"t\"\nloss = \"sum(w^2) / (1 - s)\"\n[data]\ns = 1.0\n[params]\nw = \"ones(2)\"\n\
              [[variants]]\nname = \"finite\"\nloss = \"sum(w^2)\"\n"
                .to_vec(),
        );
        let compiled = crate::compile::compile(loaded.file.expect("loads"))
            .0
            .expect("compiles");
        let run = |def: usize, steps: u64| {
            let mut r = Run::new(&compiled, RunRequest::of(&compiled, def).unwrap()).unwrap();
            while r.step_count() < steps && r.halted.is_none() {
                r.step().unwrap();
            }
            r
        };
        // The base run's loss is w²/0: it halts at step 0.
        let halted = short_of(&run(0, 5), 5).unwrap();
        assert!(
            halted.starts_with("run `base` halted at step 0 ("),
            "{halted}"
        );
        assert!(halted.ends_with("checking at step 0, not 5"), "{halted}");
        assert_eq!(
            short_of(&run(1, 3), 5).as_deref(),
            Some("run `finite` was stopped at step 3; checking at step 3, not 5")
        );
        assert_eq!(short_of(&run(1, 5), 5), None);
    }
}
