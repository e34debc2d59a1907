//! Optimizer trajectories against their references (tests/data/optim_more.json, float64, every
//! step; see tests/data/REFERENCE_README.md): torch.optim, the authors' packages and optax.
//! Every case must match in f64 to 1e-9 relative (absolute below 1e-3), including the eval
//! params of the optimizers that keep them apart and the state the reference records beside
//! the params (`state_after_steps`), and run in f32 without failing.

mod refdata;

use std::collections::BTreeMap;

use candle_core::Tensor;
use gradscope::optim::schedule::{LrSchedule, Schedule};
use gradscope::optim::settings::{NonFinitePolicy, RunSettings};
use gradscope::optim::spec::OptimizerSpec;
use gradscope::optim::step::{NoOracle, OptimizerState, StateValue, StepCx, update};
use gradscope::run::{Run, RunRequest};
use refdata::{close, number, problem_file};
use serde_json::Value;

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
    // ASGD's reference state holds its eval params (`ax`) without the loss there.
    let want_loss = want.get("loss").map_or(loss, number);
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

/// Mismatches of the optimizer's named state `got` against `want` (`{"d": 1e-6, "z": {"x":
/// [...]}}`): a number is one for the whole model, an object holds each param's flat values.
/// Every key the reference records must be shown.
fn compare_state(
    what: &str,
    names: &[String],
    got: &[(&'static str, StateValue)],
    want: &Value,
    rel: f64,
) -> Vec<String> {
    let mut out = Vec::new();
    for (key, want) in want.as_object().expect("state is an object") {
        let Some((_, value)) = got.iter().find(|(k, _)| k == key) else {
            out.push(format!("{what}: the optimizer shows no `{key}`"));
            continue;
        };
        match (value, want) {
            // A scale such as Prodigy's d (1e-6 and up) is compared relative to itself: the
            // absolute floor is for values that cancel towards zero.
            (StateValue::Scalar(g), Value::Number(_) | Value::String(_)) => {
                let w = number(want);
                if !(*g == w || (g - w).abs() <= rel * w.abs()) {
                    out.push(format!("{what}: {key} {g} vs {want}"));
                }
            }
            (StateValue::PerParam(tensors), Value::Object(per_param)) => {
                for (name, t) in names.iter().zip(tensors) {
                    let got = gradscope::compile::values_f64(t).expect("state values");
                    let want = per_param[name].as_array().expect("a list per param");
                    for (i, (g, w)) in got.iter().zip(want).enumerate() {
                        if !close(*g, number(w), rel) {
                            out.push(format!("{what}: {key}.{name}[{i}] {g} vs {w}"));
                        }
                    }
                }
            }
            _ => out.push(format!("{what}: `{key}` is not shaped as the reference's")),
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
            let averaged = case
                .get("state_after_steps")
                .and_then(|s| s[key].get("ax"))
                .map(|ax| serde_json::json!({ "params": ax }));
            let eval = case.get("eval_after_steps").map(|e| e[key].clone());
            if let Some(want) = eval.or(averaged) {
                match (run.eval_param_values(), run.eval_loss()) {
                    (Some(got), Some(Ok(loss))) => {
                        let what = format!("step {k} eval");
                        for m in compare(&what, &names, &got, loss, &want, rel) {
                            fail(m);
                        }
                    }
                    _ => fail(format!("step {k}: no eval params")),
                }
            }
            if let Some(want) = case.get("state_after_steps").map(|s| &s[key]) {
                let what = format!("step {k} state");
                let got = run.state_values();
                for m in compare_state(&what, &names, &got, want, rel) {
                    fail(m);
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

/// torch's LBFGS counts, after every step of each lbfgs case: the cumulative `func_evals` (the
/// sum of the records' per-step counts, and the state's) and inner iterations `n_iter`.
#[test]
fn lbfgs_counts_evaluations_and_iterations_as_torch() {
    use gradscope::optim::spec::RuleState;
    let text = std::fs::read_to_string("tests/data/optim_more.json").expect("reference data");
    let data: Value = serde_json::from_str(&text).expect("valid JSON");
    let cases: Vec<&Value> = data["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| c["optimizer"].as_str().unwrap().starts_with("lbfgs("))
        .collect();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let (prob, spec) = (
            case["problem"].as_str().unwrap(),
            case["optimizer"].as_str().unwrap(),
        );
        let compiled = problem_file(&data["problems"], prob, "f64");
        let config = settings(spec).unwrap();
        let mut run = Run::new(
            &compiled,
            RunRequest::new(&compiled, 0, spec.into(), config),
        )
        .unwrap();
        let counts = case["state_after_steps"].as_object().expect("lbfgs state");
        for k in 1..=counts.len() as u64 {
            run.step().unwrap();
            let want = &counts[&k.to_string()];
            let recorded: u64 = (0..k as usize)
                .map(|s| u64::from(run.history().core(s).func_evals))
                .sum();
            let Some((_, RuleState::Lbfgs(state))) = run.optimizer_state().groups().next() else {
                panic!("{spec}: not lbfgs state");
            };
            let got = (recorded, state.func_evals, state.n_iter);
            let func_evals = want["func_evals"].as_u64().unwrap();
            let n_iter = want["n_iter"].as_u64().unwrap();
            assert_eq!(
                got,
                (func_evals, func_evals, n_iter),
                "{prob} {spec} step {k}"
            );
        }
    }
}
/// One update of `params` from `grads`, with `state` carried over.
fn replay(state: &mut OptimizerState, params: &[Tensor], grads: &[Tensor], lr: f64) -> Vec<f64> {
    let new = update(
        state,
        &mut StepCx {
            params,
            grads,
            loss: 0.0,
            lr,
            t: 0,
            oracle: &mut NoOracle,
        },
    )
    .unwrap();
    new[0].flatten_all().unwrap().to_vec1().unwrap()
}

/// Muon on mlstsq: W (3x4) is Muon's, the vector c goes to the fallback. At every step, from
/// the run's own gradient, c moves exactly as adamw(lr=3e-4) alone moves it and W as Muon alone
/// moves it; under an exponential schedule the fallback's lr follows the schedule's factor.
#[test]
fn muon_leaves_params_that_are_not_matrices_to_its_fallback() {
    let text = std::fs::read_to_string("tests/data/optim_more.json").expect("reference data");
    let data: Value = serde_json::from_str(&text).expect("valid JSON");
    let compiled = problem_file(&data["problems"], "mlstsq", "f64");
    let spec = "muon(lr=0.02, fallback=adamw(lr=3e-4))";
    let mut config = settings(spec).unwrap();
    let gamma = 0.8;
    config.schedule = LrSchedule {
        schedule: Schedule::Exponential { gamma },
        warmup: 0,
    };
    let mut run = Run::new(
        &compiled,
        RunRequest::new(&compiled, 0, spec.into(), config),
    )
    .unwrap();
    let at = |name: &str| run.param_names().iter().position(|n| n == name).unwrap();
    let (w, c) = (at("W"), at("c"));
    let copies = |run: &Run| -> Vec<Tensor> {
        run.params()
            .iter()
            .map(|v| v.as_tensor().copy().unwrap())
            .collect()
    };
    let adamw = OptimizerSpec::parse("adamw(lr=3e-4)").unwrap();
    let muon = OptimizerSpec::parse("muon(lr=0.02)").unwrap();
    let start = copies(&run);
    let mut adamw_state = OptimizerState::single(&adamw, &start[c..=c]).unwrap();
    let mut muon_state = OptimizerState::single(&muon, &start[w..=w]).unwrap();
    let mut c_moved = 0.0f64;
    for t in 0..20u64 {
        let params = copies(&run);
        let grads = run.current().unwrap().grads.clone();
        let lr = 0.02 * gamma.powf(t as f64);
        let want_c = replay(
            &mut adamw_state,
            &params[c..=c],
            &grads[c..=c],
            3e-4 * (lr / 0.02),
        );
        let want_w = replay(&mut muon_state, &params[w..=w], &grads[w..=w], lr);
        run.step().unwrap();
        let got = run.param_values();
        assert_eq!(got[c], want_c, "c after step {}", t + 1);
        assert_eq!(got[w], want_w, "W after step {}", t + 1);
        c_moved = c_moved.max(got[c].iter().map(|x| x.abs()).fold(0.0, f64::max));
    }
    // c starts at 0 and adamw moves each entry by about its lr a step.
    assert!(c_moved > 1e-3, "c moved only {c_moved}");
}

/// LBFGS on a file with one vector param: its flat vector is the param itself, and setting the
/// param from a view of its own storage failed at step 1 ("cannot set a variable to a tensor
/// that is derived from its value"). Losses from torch.optim.LBFGS (defaults, f64) on the same
/// problem: `sum([1, 2, 3] * (w - 1)^2) + 0.1 * sum(w^4)` from w = [0.5, -1, 2].
#[test]
fn lbfgs_steps_a_lone_vector_param_as_torch() {
    init_process();
    let text = "name = \"v\"\ndtype = \"f64\"\nloss = \"sum([1.0, 2.0, 3.0] * (w - 1)^2) + 0.1 * sum(w^4)\"\n[params]\nw = \"[0.5, -1.0, 2.0]\"\n";
    let loaded = gradscope::lang::file::load_bytes(
        std::path::Path::new("lone_vector.toml"),
        text.as_bytes().to_vec(),
    );
    let compiled = gradscope::compile::compile(loaded.file.unwrap()).0.unwrap();
    let config = settings("lbfgs").unwrap();
    let mut run = Run::new(
        &compiled,
        RunRequest::new(&compiled, 0, "lbfgs".into(), config),
    )
    .expect("a run");
    let mut losses = Vec::new();
    for _ in 0..3 {
        losses.push(run.step().expect("LBFGS steps").core.loss);
    }
    losses.push(run.current_loss().unwrap());
    let torch = [
        12.95625,
        0.24744014477803894,
        0.24744014477803894,
        0.24744014477803894,
    ];
    for (k, (got, want)) in losses.iter().zip(torch).enumerate() {
        assert!(
            close(*got, want, 1e-9),
            "step {k}: {got} against torch's {want}"
        );
    }
}

/// torch's LBFGS with a closure that clips what it returns sees every evaluation clipped, the
/// line search's included; clipping in the file (`clip_norm`) or as a trick does the same.
/// Reference (torch 2.15, float64): the lstsq problem, `LBFGS([w, b], lr=0.5, max_iter=3)` with
/// `clip_grad_norm_(params, 0.2)`, and `max_iter=4, line_search_fn="strong_wolfe"` with
/// `clip_grad_value_(params, 0.05)`, in the closure; w then b after each of 3 steps.
#[test]
fn lbfgs_clips_every_evaluation_as_a_closure_that_clips() {
    init_process();
    let file = |optimizer: &str| {
        let text = format!(
            "name = \"c\"\ndtype = \"f64\"\nloss = \"mean((X @ w + b - y)^2)\"\n[data]\nX = \"reshape(linspace(-1, 1, 24), 8, 3)\"\ny = \"sin(arange(8))\"\n[params]\nw = \"[0.1, -0.2, 0.3]\"\nb = 0.0\n[optimizer]\n{optimizer}\n"
        );
        let loaded = gradscope::lang::file::load_bytes(
            std::path::Path::new("lbfgs_clip.toml"),
            text.into_bytes(),
        );
        gradscope::compile::compile(loaded.file.unwrap()).0.unwrap()
    };
    let norm = [
        [
            -7765.188536442889,
            -7587.929995950192,
            -7409.871455457496,
            2041.9232156660064,
        ],
        [
            -3882.5983502471227,
            -3793.383245583892,
            -3703.3681409206624,
            1029.4237036271393,
        ],
        [
            0.03713360449569336,
            0.9064182740485194,
            2.575702943600618,
            13.446773699851178,
        ],
    ];
    let value_wolfe = [
        [
            0.07412857794619808,
            -0.22587142205380192,
            0.27412857794619805,
            0.025871422053801926,
        ],
        [
            -0.09028151397918237,
            -0.39028151397918237,
            0.10971848602081763,
            0.10372365717927524,
        ],
        [
            -0.06008927202612267,
            -0.3729226055869268,
            0.11424406085226897,
            0.05713092800152139,
        ],
    ];
    for (optimizer, want) in [
        (
            "name = \"lbfgs\"\nlr = 0.5\nmax_iter = 3\nclip_norm = 0.2",
            norm,
        ),
        (
            "name = \"lbfgs\"\nlr = 0.5\nmax_iter = 3\ntricks = [\"clip_norm(max_norm=0.2)\"]",
            norm,
        ),
        (
            "name = \"lbfgs\"\nlr = 0.5\nmax_iter = 4\nline_search_fn = \"strong_wolfe\"\nclip_value = 0.05",
            value_wolfe,
        ),
    ] {
        let compiled = file(optimizer);
        let config = compiled.runs[0].settings.clone();
        let mut run =
            Run::new(&compiled, RunRequest::new(&compiled, 0, "c".into(), config)).expect("a run");
        for (k, want) in want.iter().enumerate() {
            run.step().expect("LBFGS steps");
            let got: Vec<f64> = run.param_values().concat();
            for (g, w) in got.iter().zip(want) {
                assert!(
                    close(*g, *w, 1e-9),
                    "{optimizer} step {}: {got:?} vs {want:?}",
                    k + 1
                );
            }
        }
        assert!(run.clipped > 0, "{optimizer}");
    }
}
