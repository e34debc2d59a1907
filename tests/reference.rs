//! Loss values and gradients against an independent JAX reference.
//!
//! `tests/data/reference/` holds loss files and `jax_reference.json`, written by
//! `make_reference.py` (JAX, float64 and float32). Every case is evaluated here in f64 (as the
//! file says) and again with its dtype forced to f32, and the loss and every gradient element
//! are compared with JAX. All mismatches are collected and reported together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use gradscope::compile::{Evaluator, compile};
use gradscope::lang::file::load_bytes;
use serde_json::Value;

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/reference")
}

/// One dtype's expected values: the loss and, per param, shape and row-major values.
struct Expected {
    loss: f64,
    grads: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
}

fn parse_expected(case: &str, dtype: &str, v: &Value) -> Expected {
    let obj = v
        .get(dtype)
        .unwrap_or_else(|| panic!("jax_reference.json: case `{case}` has no `{dtype}` entry"));
    let loss = obj["loss"]
        .as_f64()
        .unwrap_or_else(|| panic!("jax_reference.json: `{case}`.{dtype}.loss is not a number"));
    let grads = obj["grads"]
        .as_object()
        .unwrap_or_else(|| panic!("jax_reference.json: `{case}`.{dtype}.grads is not an object"))
        .iter()
        .map(|(name, g)| {
            let shape = g["shape"]
                .as_array()
                .expect("shape is an array")
                .iter()
                .map(|d| d.as_u64().expect("shape entries are integers") as usize)
                .collect();
            let values = g["values"]
                .as_array()
                .expect("values is an array")
                .iter()
                .map(|x| x.as_f64().expect("values are numbers"))
                .collect();
            (name.clone(), (shape, values))
        })
        .collect();
    Expected { loss, grads }
}

/// Tolerances for one dtype: an element passes when
/// `|got - want| <= rtol * |want| + atol * max(1, max |want| over the tensor)`.
#[derive(Clone, Copy)]
struct Tol {
    rtol: f64,
    atol: f64,
}

const F64_TOL: Tol = Tol {
    rtol: 1e-9,
    atol: 1e-12,
};
const F32_TOL: Tol = Tol {
    rtol: 1e-4,
    atol: 1e-5,
};

fn close(got: f64, want: f64, scale: f64, tol: Tol) -> bool {
    if !got.is_finite() || !want.is_finite() {
        return got == want || (got.is_nan() && want.is_nan());
    }
    (got - want).abs() <= tol.rtol * want.abs() + tol.atol * scale.max(1.0)
}

/// Evaluates `text` (run 0) and compares it with `expected`; mismatches go to `failures`.
fn check_case(
    case: &str,
    path: &Path,
    text: String,
    want_dtype: DType,
    expected: &Expected,
    failures: &mut Vec<String>,
) {
    let (label, tol) = match want_dtype {
        DType::F64 => ("f64", F64_TOL),
        _ => ("f32", F32_TOL),
    };
    let mut fail = |msg: String| failures.push(format!("[{case} {label}] {msg}"));
    let loaded = load_bytes(path, text.into_bytes());
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.render(false))
        .collect();
    let Some(file) = loaded.file.filter(|_| errors.is_empty()) else {
        fail(format!("does not load:\n{}", errors.join("\n")));
        return;
    };
    let (compiled, diags) = compile(file);
    let Some(compiled) = compiled else {
        let msgs: Vec<String> = diags.iter().map(|d| d.render(false)).collect();
        fail(format!("does not compile:\n{}", msgs.join("\n")));
        return;
    };
    let ev = match Evaluator::new(&compiled, 0) {
        Ok(ev) => ev,
        Err(e) => {
            fail(format!("Evaluator::new failed: {e}"));
            return;
        }
    };
    if ev.dtype() != want_dtype {
        fail(format!(
            "evaluator dtype is {:?}, expected {want_dtype:?}",
            ev.dtype()
        ));
        return;
    }
    let eval = match ev.evaluate() {
        Ok(e) => e,
        Err(d) => {
            fail(format!("evaluation failed:\n{}", d.render(false)));
            return;
        }
    };

    if !close(eval.loss, expected.loss, expected.loss.abs(), tol) {
        fail(format!(
            "loss: got {:.17e}, JAX {:.17e} (diff {:.3e}, rel {:.3e})",
            eval.loss,
            expected.loss,
            eval.loss - expected.loss,
            (eval.loss - expected.loss).abs() / expected.loss.abs().max(1e-300)
        ));
    }

    let names: Vec<&str> = compiled.params.iter().map(|p| p.name.as_str()).collect();
    for name in expected.grads.keys() {
        if !names.contains(&name.as_str()) {
            fail(format!(
                "JAX has a gradient for `{name}`, but the file has no such param"
            ));
        }
    }
    for (i, name) in names.iter().enumerate() {
        let Some((shape, want)) = expected.grads.get(*name) else {
            fail(format!("param `{name}` has no JAX reference gradient"));
            continue;
        };
        let g: &Tensor = &eval.grads[i];
        if g.dims() != shape.as_slice() {
            fail(format!(
                "grad of `{name}`: shape {:?}, JAX {:?}",
                g.dims(),
                shape
            ));
            continue;
        }
        let got: Vec<f64> = g
            .to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("gradient converts to f64");
        if got.len() != want.len() {
            fail(format!(
                "grad of `{name}`: {} values, JAX {}",
                got.len(),
                want.len()
            ));
            continue;
        }
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let mut bad = 0;
        for (k, (&a, &b)) in got.iter().zip(want).enumerate() {
            if !close(a, b, scale, tol) {
                bad += 1;
                if bad <= 5 {
                    fail(format!(
                        "grad of `{name}` {shape:?}, flat index {k} ({:?}): got {a:.17e}, JAX {b:.17e} (diff {:.3e}; allowed {:.3e})",
                        unravel(k, shape),
                        a - b,
                        tol.rtol * b.abs() + tol.atol * scale.max(1.0)
                    ));
                }
            }
        }
        if bad > 5 {
            fail(format!(
                "grad of `{name}`: {bad} of {} elements differ (first 5 shown)",
                got.len()
            ));
        }
    }
}

fn unravel(mut k: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (d, &n) in shape.iter().enumerate().rev() {
        idx[d] = k % n.max(1);
        k /= n.max(1);
    }
    idx
}

#[test]
fn matches_jax_reference() {
    let dir = reference_dir();
    let json = std::fs::read_to_string(dir.join("jax_reference.json"))
        .expect("tests/data/reference/jax_reference.json is readable");
    let reference: Value = serde_json::from_str(&json).expect("jax_reference.json is valid JSON");
    let cases = reference["cases"]
        .as_object()
        .expect("jax_reference.json has a `cases` object");
    assert!(!cases.is_empty(), "jax_reference.json has no cases");

    // Every loss file in the directory must have a reference, and vice versa.
    let mut tomls: Vec<String> = std::fs::read_dir(&dir)
        .expect("reference dir is readable")
        .filter_map(|e| {
            let p = e.ok()?.path();
            if p.extension()? != "toml" {
                return None;
            }
            p.file_stem()?.to_str().map(String::from)
        })
        .collect();
    tomls.sort();
    let mut failures = Vec::new();
    for t in &tomls {
        if !cases.contains_key(t) {
            failures.push(format!("[{t}] {t}.toml has no entry in jax_reference.json"));
        }
    }

    for (case, v) in cases {
        let path = dir.join(format!("{case}.toml"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("[{case}] cannot read {}: {e}", path.display()));
                continue;
            }
        };
        if !text.contains("dtype = \"f64\"") {
            failures.push(format!(
                "[{case}] the file must say dtype = \"f64\" so both precisions can be tested"
            ));
            continue;
        }
        let f64_expected = parse_expected(case, "f64", v);
        check_case(
            case,
            &path,
            text.clone(),
            DType::F64,
            &f64_expected,
            &mut failures,
        );
        let f32_expected = parse_expected(case, "f32", v);
        let f32_text = text.replacen("dtype = \"f64\"", "dtype = \"f32\"", 1);
        check_case(
            case,
            &path,
            f32_text,
            DType::F32,
            &f32_expected,
            &mut failures,
        );
    }

    assert!(
        failures.is_empty(),
        "{} mismatch(es) against JAX ({}):\n{}",
        failures.len(),
        reference["source"].as_str().unwrap_or("unknown source"),
        failures.join("\n")
    );
}
