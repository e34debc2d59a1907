//! Optimizer trajectories against their references (tests/data/optim_more.json, float64, every
//! step; see tests/data/REFERENCE_README.md): torch.optim, the authors' packages and optax.
//! Every case must match in f64 to 1e-9 relative (absolute below 1e-3), including the eval
//! params of the optimizers that keep them apart, and run in f32 without failing.

use std::collections::BTreeMap;
use std::path::Path;

use gradscope::compile::{CompiledFile, compile};
use gradscope::lang::file::load_bytes;
use gradscope::optim::settings::{NonFinitePolicy, RunSettings};
use gradscope::optim::spec::OptimizerSpec;
use gradscope::run::{Run, RunRequest};
use serde_json::Value;

/// `{"shape": [...], "values": [...]}` as an expression of the loss language.
fn literal(v: &Value) -> String {
    let shape: Vec<u64> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect();
    let values: Vec<String> = v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| format!("{:?}", x.as_f64().unwrap()))
        .collect();
    match shape.len() {
        0 => values[0].clone(),
        1 => format!("\"[{}]\"", values.join(", ")),
        _ => format!(
            "\"reshape([{}], {})\"",
            values.join(", "),
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The loss file of reference problem `name`, with the exact values the reference used.
pub fn problem_file(problems: &Value, name: &str, dtype: &str) -> CompiledFile {
    let p = &problems[name];
    let mut text = format!(
        "name = \"{name}\"\ndtype = \"{dtype}\"\nloss = \"{}\"\n",
        p["loss"].as_str().unwrap()
    );
    for table in ["data", "params"] {
        if let Some(entries) = p[table].as_object().filter(|e| !e.is_empty()) {
            text.push_str(&format!("[{table}]\n"));
            for (k, v) in entries {
                text.push_str(&format!("{k} = {}\n", literal(v)));
            }
        }
    }
    let loaded = load_bytes(Path::new("ref.toml"), text.into_bytes());
    let (compiled, diags) = compile(loaded.file.expect("problem file loads"));
    compiled.unwrap_or_else(|| panic!("{name}: {diags:?}"))
}

fn close(got: f64, want: f64, rel: f64) -> bool {
    (got.is_nan() && want.is_nan()) || (got - want).abs() <= rel * want.abs().max(1e-3)
}

/// JSON numbers, or the strings the reference writes non-finite numbers as.
fn number(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "NaN" => f64::NAN,
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        v => v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")),
    }
}

/// Mismatches of `got` (params by name, loss) against `want` (`{"loss", "params"}`).
fn compare(
    what: &str,
    names: &[String],
    got: &[Vec<f64>],
    loss: f64,
    want: &Value,
    rel: f64,
) -> Vec<String> {
    let mut out = Vec::new();
    let want_loss = number(&want["loss"]);
    if !close(loss, want_loss, rel) {
        out.push(format!("{what}: loss {loss} vs {want_loss}"));
    }
    for (name, got) in names.iter().zip(got) {
        let want: Vec<f64> = want["params"][name]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no params {name}"))
            .iter()
            .map(number)
            .collect();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if !close(*g, *w, rel) {
                out.push(format!("{what}: {name}[{i}] {g} vs {w}"));
            }
        }
    }
    out
}

fn settings(spec: &str) -> Result<RunSettings, String> {
    let mut s = RunSettings::from_table(&[]);
    s.optimizer = OptimizerSpec::parse(spec).map_err(|e| e.to_string())?;
    s.on_nonfinite = NonFinitePolicy::Continue;
    s.steps = 1000;
    Ok(s)
}

/// The binary's process set-up (the curvature thread Sophia's exact Hessian runs on), once:
/// both tests call it before any tensor work, so neither computes while it sets up.
fn init_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| gradscope::init_process(None));
}

/// Runs every case in `dtype`; returns the mismatches (only failures to run when `rel` is None).
fn check(dtype: &str, rel: Option<f64>) -> BTreeMap<String, Vec<String>> {
    init_process();
    let text = std::fs::read_to_string("tests/data/optim_more.json").expect("reference data");
    let data: Value = serde_json::from_str(&text).expect("valid JSON");
    let mut failures: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for case in data["cases"].as_array().expect("cases") {
        let prob = case["problem"].as_str().unwrap();
        let spec = case["optimizer"].as_str().unwrap();
        let label = format!("{prob} {spec} {dtype}");
        let mut fail = |msg: String| failures.entry(label.clone()).or_default().push(msg);
        let compiled = problem_file(&data["problems"], prob, dtype);
        let config = match settings(spec) {
            Ok(c) => c,
            Err(e) => {
                fail(format!("spec refused: {e}"));
                continue;
            }
        };
        let mut run = match Run::new(
            &compiled,
            RunRequest::new(&compiled, 0, spec.into(), config),
        ) {
            Ok(r) => r,
            Err(e) => {
                fail(format!("run refused: {e}"));
                continue;
            }
        };
        let names = run.param_names().to_vec();
        let mut steps: Vec<(u64, &str)> = case["after_steps"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| (k.parse().unwrap(), k.as_str()))
            .collect();
        steps.sort();
        for (k, key) in steps {
            while run.step_count() < k {
                if let Err(e) = run.step() {
                    fail(format!("step {}: {e}", run.step_count() + 1));
                    break;
                }
            }
            if run.step_count() < k {
                break;
            }
            let loss = run.current_loss().unwrap_or(f64::NAN);
            let Some(rel) = rel else {
                if case["finite"].as_bool() == Some(true) && !loss.is_finite() {
                    fail(format!("step {k}: the loss is {loss} in {dtype}"));
                }
                continue;
            };
            let what = format!("step {k}");
            let want = &case["after_steps"][key];
            for m in compare(&what, &names, &run.param_values(), loss, want, rel) {
                fail(m);
            }
            if let Some(want) = case.get("eval_after_steps").map(|e| &e[key]) {
                match (run.eval_param_values(), run.eval_loss()) {
                    (Some(got), Some(Ok(loss))) => {
                        let what = format!("step {k} eval");
                        for m in compare(&what, &names, &got, loss, want, rel) {
                            fail(m);
                        }
                    }
                    _ => fail(format!("step {k}: no eval params")),
                }
            }
        }
    }
    failures
}

fn report(failures: &BTreeMap<String, Vec<String>>) -> String {
    failures
        .iter()
        .map(|(case, f)| format!("{case}: {} mismatches, first: {}", f.len(), f[0]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_case_matches_its_reference_in_f64() {
    let f = check("f64", Some(1e-9));
    assert!(f.is_empty(), "{} cases fail:\n{}", f.len(), report(&f));
}

#[test]
fn every_case_runs_in_f32() {
    let f = check("f32", None);
    assert!(f.is_empty(), "{} cases fail:\n{}", f.len(), report(&f));
}
