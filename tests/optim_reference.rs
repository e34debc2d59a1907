//! Optimizer trajectories against torch.optim (tests/data/optim_torch.json, float64): every case
//! must match in f64 to 1e-9 relative and in f32 to 1e-4 relative, after 1, 10 and 100 steps.

use std::path::Path;

use gradscope::compile::compile;
use gradscope::lang::file::load_bytes;
use gradscope::optim::schedule::LrSchedule;
use gradscope::optim::settings::{GradSource, LossScale, NonFinitePolicy, RunSettings};
use gradscope::optim::spec::OptimizerSpec;
use gradscope::run::{Run, RunRequest};
use serde_json::Value;

fn problem(name: &str, dtype: &str) -> String {
    match name {
        "rosenbrock" => format!(
            "name = \"rosenbrock\"\ndtype = \"{dtype}\"\nloss = \"(1 - x)^2 + 100 * (y - x^2)^2\"\n[params]\nx = -1.5\ny = 2.0\n"
        ),
        "lstsq" => format!(
            "name = \"lstsq\"\ndtype = \"{dtype}\"\nloss = \"mean((X @ w + b - y)^2)\"\n[data]\nX = \"reshape(linspace(-1, 1, 24), 8, 3)\"\ny = \"sin(arange(8))\"\n[params]\nw = \"[0.1, -0.2, 0.3]\"\nb = 0.0\n"
        ),
        other => panic!("unknown problem {other}"),
    }
}

fn close(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs().max(1e-3)
}

fn check_dtype(dtype: &str, rel: f64) -> Vec<String> {
    let text = std::fs::read_to_string("tests/data/optim_torch.json").expect("reference data");
    let data: Value = serde_json::from_str(&text).expect("valid JSON");
    let mut failures = Vec::new();
    for case in data["cases"].as_array().expect("cases") {
        let prob = case["problem"].as_str().unwrap();
        let spec_text = case["optimizer"].as_str().unwrap();
        let loaded = load_bytes(Path::new("ref.toml"), problem(prob, dtype).into_bytes());
        let (compiled, diags) = compile(loaded.file.expect("problem file loads"));
        let compiled = compiled.unwrap_or_else(|| panic!("{diags:?}"));
        let config = RunSettings {
            optimizer: OptimizerSpec::parse(spec_text).expect("spec parses"),
            steps: 100,
            clip_norm: None,
            clip_value: None,
            schedule: LrSchedule::constant(),
            on_nonfinite: NonFinitePolicy::Continue,
            grad: GradSource::Autograd,
            loss_scale: LossScale::Off,
            tricks: Vec::new(),
        };
        let mut run = Run::new(
            &compiled,
            RunRequest::new(&compiled, 0, spec_text.into(), config),
        )
        .expect("run");
        for (k, want) in case["after_steps"].as_object().unwrap() {
            let k: u64 = k.parse().unwrap();
            while run.step_count() < k {
                run.step().expect("step");
            }
            let loss = run.current_loss().expect("loss");
            let want_loss = want["loss"].as_f64().unwrap();
            if !close(loss, want_loss, rel) {
                failures.push(format!(
                    "{prob} {spec_text} {dtype} step {k}: loss {loss} vs {want_loss}"
                ));
            }
            let values = run.param_values();
            for (name, got) in run.param_names().iter().zip(&values) {
                let want: Vec<f64> = want["params"][name]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    if !close(*g, *w, rel) {
                        failures.push(format!(
                            "{prob} {spec_text} {dtype} step {k}: {name}[{i}] {g} vs {w}"
                        ));
                    }
                }
            }
        }
    }
    failures
}

#[test]
fn trajectories_match_torch_in_f64() {
    let f = check_dtype("f64", 1e-9);
    assert!(f.is_empty(), "{} mismatches:\n{}", f.len(), f.join("\n"));
}

#[test]
fn trajectories_match_torch_in_f32() {
    let f = check_dtype("f32", 1e-4);
    assert!(f.is_empty(), "{} mismatches:\n{}", f.len(), f.join("\n"));
}

/// `1e155 * x` from x = 1 in f64: a finite gradient whose square overflows. Its norm is 1e155
/// (it is no non-finite gradient, and the run does not halt), and each optimizer forms
/// `(1 - β) g²` in torch's order, `((1 - β) g) g`, which stays finite where `g²` does not, and
/// is 0 at β = 1 where `0 * inf` would be NaN. x after 1 and 2 steps from torch 2.9
/// (`torch.set_default_dtype(torch.float64)`, the optimizer's defaults but those named).
#[test]
fn a_finite_gradient_whose_square_overflows_steps_as_torch_steps() {
    let text = "name = \"huge\"\ndtype = \"f64\"\nloss = \"1e155 * x\"\n[params]\nx = 1.0\n";
    let loaded = load_bytes(Path::new("huge.toml"), text.as_bytes().to_vec());
    let compiled = compile(loaded.file.expect("loads")).0.expect("compiles");
    let torch: [(&str, [f64; 2]); 6] = [
        ("adam(lr=0.01)", [0.99, 0.980_000_000_000_000_1]),
        (
            "adam(lr=0.01, amsgrad=true)",
            [0.99, 0.980_000_000_000_000_1],
        ),
        ("adamw(lr=0.01)", [0.9899, 0.979_801_010_000_000_1]),
        // The second step's square_avg overflows in torch as well: g / inf moves nothing.
        ("rmsprop(lr=0.01)", [0.9, 0.9]),
        ("adadelta(lr=1.0, rho=1.0)", [-1e155, -2e155]),
        ("nadam(lr=0.01)", [1.0, 1.0]),
    ];
    for (spec, want) in torch {
        let mut settings = compiled.runs[0].settings.clone();
        settings.optimizer = OptimizerSpec::parse(spec).expect("spec parses");
        // Adadelta's second step is at x = -1e155, where the loss overflows.
        settings.on_nonfinite = NonFinitePolicy::Continue;
        let request = RunRequest::new(&compiled, 0, spec.into(), settings);
        let mut run = Run::new(&compiled, request).expect("starts");
        let first = run.history().get(0).unwrap();
        // A finite norm past f32's range is kept as f32::MAX; NaN would mean a non-finite one.
        assert_eq!(first.param_grad_norms, [f32::MAX], "{spec}");
        assert_eq!(first.nonfinite_params().count(), 0, "{spec}");
        for want in want {
            run.step().expect("steps");
            let x = run.param_values()[0][0];
            assert!(close(x, want, 1e-15), "{spec}: {x} vs torch's {want}");
        }
    }
}
