//! A run's logged steps and summary as CSV rows and JSON objects, for `gradscope run` and the
//! TUI's `w` alike.

use serde_json::{Value, json};

use super::history::{StepRecord, flags};
use super::summary::{FinalParams, INLINE_PARAMS_MAX, Summary};
use crate::format::{csv_num, json_num};

/// One logged row of run `run` (whose params are `names`) as a JSON object: the state at θ_k,
/// and the update then taken (null on the last row); `eval_loss` is null when the optimizer
/// has no eval params.
pub fn step_json(run: &str, names: &[String], r: &StepRecord) -> Value {
    let per = |v: &[f32]| -> serde_json::Map<String, Value> {
        names
            .iter()
            .cloned()
            .zip(v.iter().map(|&x| json_num(x as f64)))
            .collect()
    };
    let bad: Vec<&String> = r.nonfinite_params().map(|i| &names[i]).collect();
    let update = |v: Value| if r.stepped() { v } else { Value::Null };
    json!({
        "run": run, "step": r.step, "loss": json_num(r.core.loss),
        "eval_loss": r.eval_loss.map_or(Value::Null, json_num), "grad_norm": json_num(r.core.grad_norm as f64),
        "lr": json_num(r.core.lr as f64), "update_norm": update(json_num(r.core.update_norm as f64)),
        "update_ratio": update(json_num(r.core.update_ratio as f64)), "clipped": update(r.has(flags::CLIPPED).into()),
        "skipped": update(r.has(flags::SKIPPED).into()), "stalled": update(r.has(flags::STALLED).into()), "nonfinite_loss": r.has(flags::LOSS_NONFINITE),
        "nonfinite_update": update(r.has(flags::UPDATE_NONFINITE).into()),
        "nonfinite_grads": bad, "grad_norms": per(&r.param_grad_norms), "param_norms": per(&r.param_norms),
        "wall_us": update(r.core.wall_us.into()), "loss_scale": 2f64.powi(i32::from(r.core.loss_scale_log2)),
        "func_evals": update(r.core.func_evals.into()),
    })
}

/// A run's summary as a JSON object. Params of more than [`INLINE_PARAMS_MAX`] values are
/// not written out: `final_params` is null and `final_params_omitted` says how to save them.
pub fn summary_json(s: &Summary) -> Value {
    let (params, omitted) = match &s.final_params {
        FinalParams::Inline(params) => {
            let params: serde_json::Map<String, Value> = params
                .iter()
                .map(|(n, v)| (n.clone(), v.iter().map(|&x| json_num(x)).collect()))
                .collect();
            (Value::Object(params), Value::Null)
        }
        FinalParams::Omitted(count) => (
            Value::Null,
            format!(
                "{count} values, more than the {INLINE_PARAMS_MAX} a summary writes out: save them with --save-params FILE.safetensors (or .npz)"
            )
            .into(),
        ),
    };
    json!({
        "run": s.run, "summary": true, "optimizer": s.optimizer, "dtype": s.dtype,
        "final_loss": json_num(s.final_loss),
        "final_eval_loss": s.final_eval_loss.map_or(Value::Null, json_num), "best_loss": json_num(s.best_loss), "best_step": s.best_step,
        "steps": s.steps, "first_nonfinite_step": s.first_nonfinite_step, "clipped": s.clipped,
        "skipped": s.skipped, "stalled": s.stalled, "first_stalled_step": s.first_stalled_step, "halted": s.halted, "interrupted_at": s.interrupted, "steps_per_s": s.steps_per_s, "final_params": params, "final_params_omitted": omitted,
        "final_metrics": super::metrics::metrics_json(&s.final_metrics),
    })
}

/// The CSV header for a file whose params are `names`.
pub fn csv_header(names: &[String]) -> String {
    let mut cols = vec![
        "run",
        "step",
        "loss",
        "grad_norm",
        "lr",
        "update_norm",
        "update_ratio",
        "clipped",
        "skipped",
        "stalled",
        "nonfinite_loss",
        "nonfinite_update",
        "nonfinite_grads",
        "func_evals",
        "eval_loss",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    cols.extend(names.iter().map(|n| format!("grad_norm_{n}")));
    cols.join(",")
}

/// One logged row as a CSV row matching [`csv_header`]; the update's cells are empty on the
/// last row, the eval loss's when the optimizer has no eval params.
pub fn csv_row(run: &str, names: &[String], r: &StepRecord) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let update = |s: String| if r.stepped() { s } else { String::new() };
    let bad: Vec<&str> = r.nonfinite_params().map(|i| names[i].as_str()).collect();
    let mut cells = vec![
        quote(run),
        r.step.to_string(),
        csv_num(r.core.loss),
        csv_num(r.core.grad_norm),
        csv_num(r.core.lr),
        update(csv_num(r.core.update_norm)),
        update(csv_num(r.core.update_ratio)),
        update(r.has(flags::CLIPPED).to_string()),
        update(r.has(flags::SKIPPED).to_string()),
        update(r.has(flags::STALLED).to_string()),
        r.has(flags::LOSS_NONFINITE).to_string(),
        update(r.has(flags::UPDATE_NONFINITE).to_string()),
        quote(&bad.join(" ")),
        update(r.core.func_evals.to_string()),
        r.eval_loss.map_or(String::new(), csv_num),
    ];
    cells.extend(r.param_grad_norms.iter().map(|&n| csv_num(n)));
    cells.join(",")
}
