//! The reference data's problems and numbers (tests/data/optim_more.json, tricks.json), shared
//! by the tests that compare trajectories with them.

use std::path::Path;

use gradscope::compile::{CompiledFile, compile};
use gradscope::lang::file::load_bytes;
use serde_json::Value;

/// `{"shape": [...], "values": [...]}` as an expression of the loss language.
fn literal(v: &Value) -> String {
    let shape: Vec<String> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.to_string())
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
        _ => format!("\"reshape([{}], {})\"", values.join(", "), shape.join(", ")),
    }
}

/// The loss file of reference problem `name` in `dtype`, with the exact values the reference
/// used (f16/bf16 reductions and matmuls accumulate in f32, as torch's do).
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
    if matches!(dtype, "f16" | "bf16") {
        text.push_str("[optimizer]\naccumulate = \"f32\"\n");
    }
    let loaded = load_bytes(Path::new("ref.toml"), text.into_bytes());
    let (compiled, diags) = compile(loaded.file.expect("problem file loads"));
    compiled.unwrap_or_else(|| panic!("{name}: {diags:?}"))
}

/// Whether `got` is `want` to `rel` relative, absolute below 1e-3 (the README's floor); NaN
/// matches NaN.
pub fn close(got: f64, want: f64, rel: f64) -> bool {
    (got.is_nan() && want.is_nan()) || (got - want).abs() <= rel * want.abs().max(1e-3)
}

/// JSON numbers, or the strings the reference writes non-finite numbers as.
pub fn number(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "NaN" => f64::NAN,
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        v => v.as_f64().unwrap_or_else(|| panic!("not a number: {v}")),
    }
}
