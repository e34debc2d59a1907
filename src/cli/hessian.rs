//! `gradscope hessian`: the whole Hessian of a small loss at a point of a run, its eigenvalues
//! and what they say; the ends of the spectrum by Lanczos for larger ones.

use std::io::Write;

use serde_json::{Value, json};

use super::inspect::{PointArgs, heading, point_step, points, run_lr, stable_lr_line, unloadable};
use crate::compile::hessian::{Condition, Hessian, Method, Options, Ritz};
use crate::diagnostic::{Diagnostic, did_you_mean};
use crate::format::{fmt_num, json_num};
use crate::lang::file::DType;
use crate::run::Run;

/// Everything `gradscope hessian` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct HessianArgs {
    #[command(flatten)]
    pub point: PointArgs,
    /// Only this param's block of the Hessian (∂²loss/∂W², the other params held fixed).
    #[arg(long, value_name = "W")]
    pub param: Option<String>,
    /// `text` for people; `json`: one object per run per line, with the matrix.
    #[arg(long, value_enum, default_value = "text")]
    pub format: HessianFormat,
}

/// Output format of `gradscope hessian`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HessianFormat {
    Text,
    Json,
}

/// The largest matrix the text report prints (wider ones are in the JSON).
const PRINTED: usize = 8;

/// `gradscope hessian`: returns whether every selected run had a Hessian.
pub fn hessian_command(
    args: &HessianArgs,
    color: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let runs = match points(&args.point, false)? {
        Ok((_, runs)) => runs,
        Err(diags) => return unloadable(&diags, color, out),
    };
    let json = args.format == HessianFormat::Json;
    let mut all_ok = true;
    for (_, run) in runs {
        let param = match &args.param {
            None => None,
            Some(name) => match run.param_names().iter().position(|p| p == name) {
                Some(i) => Some(i),
                None => {
                    let names = run.param_names();
                    let d = Diagnostic::error(format!(
                        "no param named `{name}`; this loss has: {}",
                        names.join(", ")
                    ))
                    .in_file(&args.point.file)
                    .help_opt(did_you_mean(name, names.iter().map(String::as_str)));
                    match json {
                        true => writeln!(out, "{}", json!({"error": d.to_json()}))?,
                        false => write!(out, "{}", d.render(color))?,
                    }
                    return Ok(false);
                }
            },
        };
        let result = match undefined(&run) {
            Some(why) => Err(why),
            None => run
                .hessian(param, &Options::default())
                .map_err(|d| d.headline()),
        };
        all_ok &= result.is_ok();
        match json {
            true => writeln!(out, "{}", report_json(args, &run, &result))?,
            false => {
                writeln!(out, "{}", heading(&args.point, &run))?;
                match &result {
                    Ok(h) => report_text(&run, h, out)?,
                    Err(why) => writeln!(out, "  no Hessian here: {why}")?,
                }
            }
        }
    }
    Ok(all_ok)
}

/// Why the Hessian is not defined at the run's point, if it is not.
fn undefined(run: &Run) -> Option<String> {
    match run.current_loss() {
        Ok(l) if !l.is_finite() => Some(format!(
            "the loss is {} at these params, so the Hessian is not defined",
            fmt_num(l)
        )),
        Ok(_) => run
            .halted
            .as_ref()
            .map(|h| format!("{}, so the Hessian is not defined", h.reason)),
        Err(d) => Some(d.headline()),
    }
}

/// The run's lr at its point, which 2/λmax bounds for plain gradient descent.
fn report_text(run: &Run, h: &Hessian, out: &mut impl Write) -> anyhow::Result<()> {
    let of = h.params.join(", ");
    match &h.method {
        Method::Full(f) => {
            writeln!(
                out,
                "  Hessian of {of} ({n} × {n}), exact by double backward",
                n = h.dim
            )?;
            if h.dim <= PRINTED {
                matrix_text(&f.labels, &f.matrix, out)?;
            } else {
                writeln!(out, "  (the matrix is in --format json)")?;
            }
            writeln!(out, "  eigenvalues ({}, ascending):", f.eigenvalues.len())?;
            for row in f.eigenvalues.chunks(6) {
                let cells: Vec<String> =
                    row.iter().map(|v| format!("{:>12}", fmt_num(*v))).collect();
                writeln!(out, "  {}", cells.join(" "))?;
            }
        }
        Method::Lanczos(l) => {
            writeln!(
                out,
                "  Hessian of {of} ({} coordinates): too many to build, so Lanczos on exact Hessian-vector products ({} steps{})",
                h.dim,
                l.steps,
                if l.converged { "" } else { ", not converged" }
            )?;
            let list = |rs: &[Ritz]| {
                rs.iter()
                    .map(|r| format!("{} ± {}", fmt_num(r.value), fmt_num(r.residual)))
                    .collect::<Vec<_>>()
                    .join(",  ")
            };
            writeln!(out, "  top eigenvalues:    {}", list(&l.top))?;
            writeln!(out, "  bottom eigenvalues: {}", list(&l.bottom))?;
            writeln!(
                out,
                "  (± is the residual ||Hy - θy|| of the Ritz vector y: an eigenvalue lies within it)"
            )?;
        }
    }
    writeln!(
        out,
        "  condition number |λ|max/|λ|min = {}",
        h.condition_words()
    )?;
    writeln!(out, "  {}", h.verdict())?;
    stable_lr_line(
        out,
        "λmax",
        h.max_stable_lr(),
        run_lr(run),
        "no direction curves up here",
    )?;
    writeln!(
        out,
        "  gradient norm {}{}",
        fmt_num(h.grad_norm),
        if h.grad_norm == 0.0 {
            " (a stationary point)"
        } else {
            ""
        }
    )?;
    if let Method::Full(f) = &h.method {
        writeln!(
            out,
            "  checks: asymmetry max|H - Hᵀ|/max|H| = {}; against finite differences of gradients, relative error {}",
            fmt_num(f.asymmetry),
            fmt_num(f.fd_rel_err)
        )?;
        if h.fd_agrees() == Some(false) {
            writeln!(out, "  {}", fd_disagreement(run.dtype))?;
        }
    }
    Ok(())
}

/// Why finite differences of gradients can disagree with the exact second derivatives: below
/// f64 they are mostly rounding at their step, else a kink within it.
pub fn fd_disagreement(dtype: DType) -> String {
    let kink = "the gradient jumps within their step (a kink of abs, relu, max or clamp near these params), which has no second derivative, so the exact values hold the smooth pieces' curvature only";
    match dtype {
        DType::F64 => format!("finite differences disagree: {kink}"),
        d => format!(
            "finite differences disagree: in {} they are mostly rounding at their step (`--dtype f64` checks them), or {kink}",
            d.name()
        ),
    }
}

/// The matrix with the coordinates' names on both axes.
fn matrix_text(
    labels: &[String],
    m: &nalgebra::DMatrix<f64>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let cells: Vec<Vec<String>> = (0..m.nrows())
        .map(|r| (0..m.ncols()).map(|c| fmt_num(m[(r, c)])).collect())
        .collect();
    let label_w = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let cell_w = cells
        .iter()
        .flatten()
        .chain(labels)
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0);
    let head: Vec<String> = labels.iter().map(|l| format!("{l:>cell_w$}")).collect();
    writeln!(out, "    {:label_w$}  {}", "", head.join("  "))?;
    for (label, row) in labels.iter().zip(&cells) {
        let row: Vec<String> = row.iter().map(|c| format!("{c:>cell_w$}")).collect();
        writeln!(out, "    {label:<label_w$}  {}", row.join("  "))?;
    }
    Ok(())
}

fn ritz_json(rs: &[Ritz]) -> Value {
    rs.iter()
        .map(|r| json!({"value": json_num(r.value), "residual": json_num(r.residual)}))
        .collect()
}

fn report_json(args: &HessianArgs, run: &Run, result: &Result<Hessian, String>) -> Value {
    let mut obj = json!({
        "file": args.point.file.display().to_string(),
        "run": run.name,
        "dtype": run.dtype.name(),
        "step": point_step(run),
    });
    let h = match result {
        Ok(h) => h,
        Err(why) => {
            obj["error"] = json!(why);
            return obj;
        }
    };
    let inertia = h.inertia();
    obj["params"] = json!(h.params);
    obj["dim"] = json!(h.dim);
    obj["lambda_max"] = json_num(h.lambda_max());
    obj["lambda_min"] = json_num(h.lambda_min());
    obj["condition_number"] = match h.condition() {
        Condition::Number(k) => json_num(k),
        Condition::Singular => json!("singular"),
        Condition::Unknown => Value::Null,
    };
    obj["zero_tol"] = json_num(h.zero_tol());
    obj["negative"] = json!(inertia.negative);
    obj["saddle"] = json!(inertia.negative > 0 && inertia.positive > 0);
    obj["verdict"] = json!(h.verdict());
    obj["max_stable_lr"] = h.max_stable_lr().map_or(Value::Null, json_num);
    obj["lr"] = json_num(run_lr(run));
    obj["grad_norm"] = json_num(h.grad_norm);
    match &h.method {
        Method::Full(f) => {
            obj["method"] = json!("full");
            obj["zero"] = json!(inertia.zero);
            obj["positive"] = json!(inertia.positive);
            obj["labels"] = json!(f.labels);
            obj["eigenvalues"] = f.eigenvalues.iter().map(|&v| json_num(v)).collect();
            obj["hessian"] = f
                .matrix
                .row_iter()
                .map(|r| r.iter().map(|&v| json_num(v)).collect::<Value>())
                .collect();
            obj["asymmetry"] = json_num(f.asymmetry);
            obj["fd_rel_err"] = json_num(f.fd_rel_err);
            obj["fd_agrees"] = json!(h.fd_agrees());
        }
        Method::Lanczos(l) => {
            obj["method"] = json!("lanczos");
            obj["steps"] = json!(l.steps);
            obj["converged"] = json!(l.converged);
            obj["top"] = ritz_json(&l.top);
            obj["bottom"] = ritz_json(&l.bottom);
        }
    }
    obj
}
