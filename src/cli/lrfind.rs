//! `gradscope lrfind`: the learning-rate range test headless, its curve as a table, CSV or JSON
//! lines, and (as a table) a text plot of the smoothed loss against log10 lr.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use serde_json::json;

use super::run::{Format, RunOptions, RunOutcome, catch_stop_signals, load_runs, until_stopped};
use crate::format::{fmt_num, fmt_short, json_num};
use crate::lang::file::DType;
use crate::run::Retention;
use crate::run::lrfind::{Curve, LrFind, LrRange, Stop, lr_find};

/// Everything `gradscope lrfind` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LrFindArgs {
    /// The loss file.
    pub file: PathBuf,
    /// Optimizer spec, e.g. `adam` or `sgd(momentum=0.9)` (default: the file's); its lr is
    /// what the test replaces, step by step.
    #[arg(short = 'o', long = "optimizer")]
    pub optimizer: Option<String>,
    /// Variant to test (`base` or a variant's name).
    #[arg(long)]
    pub variant: Option<String>,
    /// Run in this dtype instead of the file's.
    #[arg(long, value_enum)]
    pub dtype: Option<DType>,
    /// The lr of the first step.
    #[arg(long, default_value_t = 1e-7, allow_negative_numbers = true)]
    pub from: f64,
    /// The lr of the last step.
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    pub to: f64,
    /// Steps over which the lr grows exponentially from --from to --to.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// `gradscope lrfind`: runs the test on the run `args` describes and prints its curve, why it
/// stopped and the suggested lrs (to stderr for csv and jsonl, whose stdout stays data).
pub fn lrfind_command(args: &LrFindArgs, color: bool) -> anyhow::Result<RunOutcome> {
    let range = LrRange::new(args.from, args.to, args.steps)?;
    if args.variant.as_deref() == Some("all") {
        anyhow::bail!("lrfind tests one run: name one variant (or `base`), not `all`");
    }
    let options = RunOptions {
        file: args.file.clone(),
        optimizers: args.optimizer.iter().cloned().collect(),
        variant: args.variant.clone(),
        steps: None,
        dtype: args.dtype,
        clip_norm: None,
        on_nonfinite: None,
        grad: None,
        consts: Vec::new(),
    };
    let Some((_, runs)) = load_runs(&options, Retention::Totals { best: false }, color)? else {
        return Ok(RunOutcome::Failed);
    };
    let Some(run) = runs.first() else {
        return Ok(RunOutcome::Failed);
    };
    catch_stop_signals();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(range.steps as u64);
        b.set_message(format!("lrfind {}", run.name));
        b
    });
    let result = lr_find(run, &range, |i, _| {
        if let Some(b) = &bar {
            b.set_position(i as u64 + 1);
        }
        until_stopped()
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let found = match result {
        Ok(found) => found,
        Err(d) => {
            err_print!("{}", d.render(color));
            return Ok(RunOutcome::Failed);
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let report = report(&found);
    match args.format {
        Format::Table => {
            writeln!(
                out,
                "lr range test of {} ({})\n",
                run.name,
                args.file.display()
            )?;
            write!(out, "{}", table(&found.curve))?;
            writeln!(out, "\n{report}\n")?;
            write!(out, "{}", plot(&found.curve, PLOT_WIDTH, PLOT_HEIGHT))?;
        }
        Format::Csv => {
            writeln!(out, "step,lr,loss,smoothed")?;
            for (i, p) in found.curve.points.iter().enumerate() {
                let num = crate::format::csv_num::<f64>;
                writeln!(out, "{i},{},{},{}", num(p.lr), num(p.loss), num(p.smoothed))?;
            }
            err_println!("{report}");
        }
        Format::Jsonl => {
            for (i, p) in found.curve.points.iter().enumerate() {
                let row = json!({
                    "step": i, "lr": json_num(p.lr), "loss": json_num(p.loss),
                    "smoothed": json_num(p.smoothed),
                });
                writeln!(out, "{row}")?;
            }
            let summary = json!({
                "run": run.name, "stop": stop_word(&found.stop), "why": found.stop.to_string(),
                "steepest_lr": found.curve.steepest().map_or(serde_json::Value::Null, json_num),
                "min_lr_tenth": found.curve.min_tenth().map_or(serde_json::Value::Null, json_num),
            });
            writeln!(out, "{summary}")?;
            err_println!("{report}");
        }
    }
    out.flush()?;
    Ok(RunOutcome::finished_unless_stopped())
}

/// One word for how the test ended, for JSON.
fn stop_word(stop: &Stop) -> &'static str {
    match stop {
        Stop::Finished => "finished",
        Stop::Diverged => "diverged",
        Stop::NoDescent => "no_descent",
        Stop::NonFinite => "nonfinite",
        Stop::Halted(_) => "halted",
        Stop::Interrupted => "interrupted",
    }
}

/// Why the test stopped and the two suggestions, each with what it is.
fn report(found: &LrFind) -> String {
    let points = &found.curve.points;
    let mut out = match (&found.stop, points.last()) {
        (Stop::Finished, _) | (_, None) => format!("stopped: {}", found.stop),
        (stop, Some(p)) => format!(
            "stopped at step {} (lr {}): {stop}",
            points.len() - 1,
            fmt_short(p.lr)
        ),
    };
    let line = |lr: Option<f64>, what: &str| match lr {
        Some(lr) => format!("\n  {:<10} {what}", fmt_short(lr)),
        None => format!(
            "\n  {:<10} {what}: none (the smoothed loss never fell)",
            "-"
        ),
    };
    out.push_str("\nsuggested lr:");
    out.push_str(&line(
        found.curve.steepest(),
        "steepest descent of the smoothed loss against log lr",
    ));
    out.push_str(&line(
        found.curve.min_tenth(),
        "the lr of the lowest smoothed loss, divided by 10",
    ));
    out
}

/// The curve's points as aligned columns.
fn table(curve: &Curve) -> String {
    let mut out = format!(
        "{:>5} {:>12} {:>14} {:>14}\n",
        "step", "lr", "loss", "smoothed"
    );
    for (i, p) in curve.points.iter().enumerate() {
        out.push_str(&format!(
            "{i:>5} {:>12} {:>14} {:>14}\n",
            fmt_short(p.lr),
            fmt_num(p.loss),
            fmt_num(p.smoothed)
        ));
    }
    out
}

/// Columns and rows of the text plot's area.
const PLOT_WIDTH: usize = 60;
const PLOT_HEIGHT: usize = 12;

/// The smoothed loss against log10 lr as text: one `•` a column (the column's last point), the
/// suggestions marked `s` (steepest) and `m` (minimum / 10) under the axis. The top is cut at 4x
/// the drop from the start to the minimum above the minimum (where the test stops), so the
/// divergence does not flatten the rest.
fn plot(curve: &Curve, width: usize, height: usize) -> String {
    let finite: Vec<_> = curve
        .points
        .iter()
        .filter(|p| p.smoothed.is_finite())
        .collect();
    let (Some(first), Some(last)) = (finite.first(), finite.last()) else {
        return String::new();
    };
    let (x0, x1) = (first.lr.log10(), last.lr.log10());
    let low = finite
        .iter()
        .map(|p| p.smoothed)
        .fold(f64::INFINITY, f64::min);
    let cap = match first.smoothed > low {
        true => low + 4.0 * (first.smoothed - low),
        false => f64::INFINITY,
    };
    let high = finite
        .iter()
        .map(|p| p.smoothed)
        .fold(f64::NEG_INFINITY, f64::max)
        .min(cap);
    let column = |lr: f64| match x1 > x0 {
        true => (((lr.log10() - x0) / (x1 - x0)) * (width - 1) as f64).round() as usize,
        false => 0,
    };
    let mut grid = vec![vec![' '; width]; height];
    for p in &finite {
        let y = match high > low {
            true => ((p.smoothed.min(high) - low) / (high - low) * (height - 1) as f64).round(),
            false => 0.0,
        } as usize;
        let c = column(p.lr).min(width - 1);
        for row in grid.iter_mut() {
            if row[c] == '•' {
                row[c] = ' ';
            }
        }
        grid[height - 1 - y][c] = '•';
    }
    let labels = [fmt_short(high), fmt_short(low)];
    let pad = labels.iter().map(|l| l.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (r, row) in grid.iter().enumerate() {
        let label = match r {
            0 => &labels[0],
            r if r == height - 1 => &labels[1],
            _ => "",
        };
        let line: String = row.iter().collect();
        out.push_str(&format!("{label:>pad$} │{}\n", line.trim_end()));
    }
    out.push_str(&format!("{:>pad$} └{}\n", "", "─".repeat(width)));
    let mut marks = vec![' '; width];
    for (lr, mark) in [(curve.min_tenth(), 'm'), (curve.steepest(), 's')] {
        if let Some(lr) = lr.filter(|&lr| lr >= first.lr && lr <= last.lr) {
            marks[column(lr).min(width - 1)] = mark;
        }
    }
    let marks: String = marks.iter().collect();
    out.push_str(&format!("{:>pad$}  {}\n", "", marks.trim_end()));
    let (left, right) = (fmt_short(first.lr), fmt_short(last.lr));
    out.push_str(&format!(
        "{:>pad$}  {left}{}{right}  (lr, log scale; s: steepest, m: minimum / 10)\n",
        "",
        " ".repeat(width.saturating_sub(left.len() + right.len()))
    ));
    out
}
