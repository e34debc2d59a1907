//! `gradscope grad`: each run's gradient as a program in the loss-file language, and with
//! `--check` that program's numbers against autograd's.

use std::io::Write;
use std::path::PathBuf;

use super::inspect::{PointArgs, point_step, points, short_of, unloadable};
use crate::compile::backward::check::{TOLERANCE, check, locate_nonfinite};
use crate::compile::backward::{Backward, backward};
use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::format::fmt_num;

/// What `gradscope grad` prints and checks.
#[derive(Debug, Clone, clap::Args)]
pub struct GradArgs {
    /// The loss file.
    pub file: PathBuf,
    /// Variant to write (`base`, a variant's name, or `all`, the default).
    #[arg(long)]
    pub variant: Option<String>,
    /// Only the lines this param's gradient needs.
    #[arg(long)]
    pub param: Option<String>,
    /// Evaluate the program and compare it with autograd in f64.
    #[arg(long)]
    pub check: bool,
    /// With --check: step the run this many times with its optimizer first.
    #[arg(long, default_value_t = 0, requires = "check")]
    pub at_step: u64,
}

/// `gradscope grad`: returns whether every program could be written and, with `--check`,
/// agrees with autograd.
pub fn grad_command(args: &GradArgs, color: bool, out: &mut impl Write) -> anyhow::Result<bool> {
    let point = PointArgs {
        file: args.file.clone(),
        variant: args.variant.clone(),
        at_step: args.at_step,
        dtype: None,
    };
    let (compiled, runs) = match points(&point, true)? {
        Ok(p) => p,
        Err(diags) => return unloadable(&diags, color, out),
    };
    // A param the file lacks is said before any program's heading.
    if let Some(p) = &args.param
        && !compiled.params.iter().any(|q| &q.name == p)
    {
        let names = compiled.params.iter().map(|q| q.name.as_str());
        let d = Diagnostic::error(format!("the file has no param `{p}`"))
            .help_opt(did_you_mean(p, names));
        write!(out, "{}", d.render(color))?;
        return Ok(false);
    }
    let mut ok = true;
    for (i, (def, run)) in runs.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "# {}  run `{}`", args.file.display(), run.name)?;
        let program = match backward(&compiled, *def) {
            Ok(b) => b,
            Err(diags) => {
                for d in diags {
                    write!(out, "{}", d.render(color))?;
                }
                ok = false;
                continue;
            }
        };
        // The param was checked above.
        let program = match &args.param {
            Some(p) => program.for_param(p).unwrap_or(program),
            None => program,
        };
        write!(out, "{}", program.text())?;
        if args.check {
            ok &= report_check(&compiled, *def, run, args.at_step, &program, color, out)?;
        }
    }
    Ok(ok)
}

/// The `--check` lines, as comments so the output stays a program.
fn report_check(
    compiled: &crate::compile::CompiledFile,
    def: usize,
    run: &crate::run::Run,
    at_step: u64,
    program: &Backward,
    color: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let step = point_step(run);
    if let Some(short) = short_of(run, at_step) {
        writeln!(out, "# {short}")?;
    }
    let agreements = match check(compiled, def, program, Some(&run.param_values())) {
        Ok(a) => a,
        Err(diags) => {
            for d in diags {
                write!(out, "{}", d.render(color))?;
            }
            return Ok(false);
        }
    };
    writeln!(
        out,
        "# check at step {step} against autograd in f64 (normwise, tolerance {TOLERANCE:e}):"
    )?;
    let width = agreements.iter().map(|a| a.line.len()).max().unwrap_or(0);
    let mut ok = true;
    for a in &agreements {
        let nonfinite = match a.nonfinite {
            0 => String::new(),
            n => format!(", {n} non-finite in the same places"),
        };
        match &a.mismatch {
            None => writeln!(
                out,
                "#   {:width$}  agrees (relative error {}{nonfinite})",
                a.line,
                fmt_num(a.rel_err)
            )?,
            Some(why) => {
                ok = false;
                writeln!(out, "#   {:width$}  DIFFERS: {why}", a.line)?;
            }
        }
    }
    if agreements.iter().any(|a| a.nonfinite > 0) {
        let at = run.param_values();
        match locate_nonfinite(compiled, def, program, Some(&at)) {
            Ok(Some(place)) => writeln!(out, "#   {}", place.summary())?,
            Ok(None) => {}
            Err(diags) => {
                for d in diags {
                    write!(out, "{}", d.render(color))?;
                }
                ok = false;
            }
        }
    }
    Ok(ok)
}
