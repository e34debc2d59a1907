//! Stabilization tricks against their references (tests/data/tricks.json; the definitions and
//! tolerances are tests/data/REFERENCE_README.md's): every float64 case at every step to 1e-9
//! relative (eval params, lookahead's slow params and skip_nonfinite's counters too), the
//! low-precision cases replayed op by op at 0 ulps and run in full at the README's tolerances,
//! stochastic rounding statistically, skip_spikes in closed form, and the grammar.

mod refdata;

use std::path::Path;

use candle_core::{DType as CDType, Device, Tensor};
use gradscope::compile::{CompiledFile, Evaluator, compile};
use gradscope::lang::file::load_bytes;
use gradscope::optim::chain::{self, TrickState, Verdict};
use gradscope::optim::classic::AdamState;
use gradscope::optim::groups::ParamGroup;
use gradscope::optim::settings::{NonFinitePolicy, RunSettings};
use gradscope::optim::spec::RuleState;
use gradscope::optim::step::{NoOracle, OptimizerState, StepCx};
use gradscope::optim::tricks::{ChainSpec, TrickKind};
use gradscope::run::history::flags;
use gradscope::run::{Run, RunRequest};
use refdata::{close, number, problem_file};
use serde_json::Value;

fn reference() -> Value {
    let text = std::fs::read_to_string("tests/data/tricks.json").expect("reference data");
    serde_json::from_str(&text).expect("valid JSON")
}

/// gradscope's name for a reference dtype.
fn dtype_name(reference: &str) -> &'static str {
    match reference {
        "float64" => "f64",
        "float32" => "f32",
        "bfloat16" => "bf16",
        "float16" => "f16",
        other => panic!("unknown dtype {other}"),
    }
}

fn compiled(text: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new("t.toml"), text.as_bytes().to_vec());
    let (compiled, diags) = compile(loaded.file.expect("the file loads"));
    compiled.unwrap_or_else(|| panic!("{diags:?}"))
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(number)
        .collect()
}

/// Mismatches of `got` (each param's values, in `names`' order) against `want` (by name),
/// where `ok(got, want)` says whether two values agree.
fn compare(
    what: &str,
    names: &[String],
    got: &[Vec<f64>],
    want: &Value,
    ok: impl Fn(f64, f64) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, got) in names.iter().zip(got) {
        let want = numbers(&want[name]);
        assert_eq!(got.len(), want.len(), "{what}: {name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if !ok(*g, *w) {
                out.push(format!("{what}: {name}[{i}] {g} vs {w}"));
            }
        }
    }
    out
}

fn settings(chain: &str) -> RunSettings {
    let chain = ChainSpec::parse(chain).unwrap_or_else(|e| panic!("{chain}: {e}"));
    let mut s = RunSettings::from_table(&[]);
    s.optimizer = chain.base;
    s.tricks = chain.tricks;
    s.on_nonfinite = NonFinitePolicy::Continue;
    s.steps = 1000;
    s
}

fn start(compiled: &CompiledFile, chain: &str) -> Run {
    Run::new(
        compiled,
        RunRequest::new(compiled, 0, chain.into(), settings(chain)),
    )
    .unwrap_or_else(|e| panic!("{chain}: {e}"))
}

fn step_to(run: &mut Run, k: u64) {
    while run.step_count() < k {
        run.step()
            .unwrap_or_else(|e| panic!("step {}: {e:?}", run.step_count() + 1));
    }
}

/// The cases' after_steps keys in step order.
fn steps(case: &Value) -> Vec<(u64, String)> {
    let mut steps: Vec<(u64, String)> = case["after_steps"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (k.parse().unwrap(), k.clone()))
        .collect();
    steps.sort();
    steps
}

fn cases_in(data: &Value, low: bool) -> impl Iterator<Item = &Value> {
    data["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(move |c| (c["dtype"] != "float64") == low)
}

#[test]
fn every_float64_case_matches_its_reference_at_every_step() {
    let data = reference();
    let rel = 1e-9;
    let ok = |g: f64, w: f64| close(g, w, rel);
    let mut failures = Vec::new();
    let mut cases = 0;
    for case in cases_in(&data, false) {
        cases += 1;
        let spec = case["optimizer"].as_str().unwrap();
        let label = format!("{} {spec}", case["problem"].as_str().unwrap());
        let compiled = problem_file(&data["problems"], case["problem"].as_str().unwrap(), "f64");
        let mut run = start(&compiled, spec);
        let names = run.param_names().to_vec();
        for (k, key) in steps(case) {
            step_to(&mut run, k);
            let what = format!("{label} step {k}");
            let want = &case["after_steps"][&key];
            let loss = run.current_loss().unwrap();
            if !ok(loss, number(&want["loss"])) {
                failures.push(format!("{what}: loss {loss} vs {}", want["loss"]));
            }
            failures.extend(compare(
                &what,
                &names,
                &run.param_values(),
                &want["params"],
                ok,
            ));
            // lookahead's slow params and ema's average are the run's eval params.
            let eval = ["slow_after_steps", "eval_after_steps"]
                .iter()
                .find_map(|f| case.get(*f).map(|e| &e[&key]));
            if let Some(want) = eval {
                let what = format!("{what} eval");
                let got = run.eval_param_values().expect("eval params");
                let loss = run.eval_loss().expect("eval loss").unwrap();
                if !ok(loss, number(&want["loss"])) {
                    failures.push(format!("{what}: loss {loss} vs {}", want["loss"]));
                }
                failures.extend(compare(&what, &names, &got, &want["params"], ok));
            }
            if let Some(want) = case.get("state_after_steps").map(|s| &s[&key]) {
                let Some(TrickState::SkipNonfinite {
                    notfinite_count,
                    total_notfinite,
                }) = run.optimizer_state().trick(TrickKind::SkipNonfinite)
                else {
                    panic!("{what}: no skip_nonfinite state");
                };
                let skipped = run.history().core(k as usize - 1).flags & flags::SKIPPED != 0;
                let got = (skipped, *notfinite_count, *total_notfinite);
                let expected = (
                    want["skipped"].as_bool().unwrap(),
                    want["notfinite_count"].as_u64().unwrap(),
                    want["total_notfinite"].as_u64().unwrap(),
                );
                if got != expected {
                    failures.push(format!(
                        "{what}: (skipped, count, total) {got:?} vs {expected:?}"
                    ));
                }
            }
        }
    }
    assert_eq!(cases, 17);
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures[..failures.len().min(40)].join("\n")
    );
}

fn tensor(values: Vec<f64>, dims: &[usize], dtype: CDType) -> Tensor {
    Tensor::from_vec(values, dims, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    gradscope::compile::values_f64(t).unwrap()
}

/// Adam's state of each param (in the file's order) as torch names it.
fn adam_states(state: &OptimizerState) -> &[AdamState] {
    match state.groups().next().map(|(_, rule)| rule) {
        Some(RuleState::Adam(s) | RuleState::AdamW(s)) => s,
        other => panic!("not adam's state: {other:?}"),
    }
}

#[test]
fn low_precision_cases_replay_torchs_adam_op_by_op() {
    let data = reference();
    let mut failures = Vec::new();
    let mut cases = 0;
    for case in cases_in(&data, true) {
        cases += 1;
        let spec = case["optimizer"].as_str().unwrap();
        let reference_dtype = case["dtype"].as_str().unwrap();
        let label = format!(
            "{} {spec} {reference_dtype}",
            case["problem"].as_str().unwrap()
        );
        let dtype = gradscope::compile::candle_dtype(
            gradscope::lang::file::DType::from_name(dtype_name(reference_dtype)).unwrap(),
        );
        let chain = ChainSpec::parse(spec).unwrap();
        let master = chain
            .tricks
            .iter()
            .any(|t| t.kind() == TrickKind::MasterWeights);
        // 0 ulps in the dtype; f32 master weights to a few f32 ulps (sqrt may differ by one).
        let ok = |g: f64, w: f64| match master {
            true => close(g, w, 1e-6),
            // serde_json may read a decimal one f64 ulp off: the nearest f32 is exact.
            false => (g as f32).to_bits() == (w as f32).to_bits() || (g.is_nan() && w.is_nan()),
        };
        let compiled = problem_file(&data["problems"], case["problem"].as_str().unwrap(), "f64");
        let names: Vec<String> = compiled.params.iter().map(|p| p.name.clone()).collect();
        let dims: Vec<Vec<usize>> = compiled
            .params
            .iter()
            .map(|p| p.value.dims().to_vec())
            .collect();
        let initial: Vec<Tensor> = names
            .iter()
            .zip(&dims)
            .map(|(n, d)| tensor(numbers(&case["initial"]["params"][n]), d, CDType::F64))
            .collect();
        let mut params: Vec<Tensor> = initial.iter().map(|t| t.to_dtype(dtype).unwrap()).collect();
        let mut state = OptimizerState::with_tricks(
            vec![ParamGroup::all(&chain.base, params.len())],
            &chain.tricks,
            &params,
            &initial,
        )
        .unwrap();
        for (k, key) in steps(case) {
            let what = format!("{label} step {k}");
            let want = &case["after_steps"][&key];
            let grads: Vec<Tensor> = names
                .iter()
                .zip(&dims)
                .map(|(n, d)| tensor(numbers(&want["grad"][n]), d, dtype))
                .collect();
            params = chain::step(
                &mut state,
                &mut StepCx {
                    params: &params,
                    grads: &grads,
                    loss: f64::NAN,
                    lr: chain.base.lr(),
                    t: 0,
                    oracle: &mut NoOracle,
                },
            )
            .unwrap()
            .params;
            let got: Vec<Vec<f64>> = match state.master_params() {
                Some(m) => m.iter().map(flat).collect(),
                None => params.iter().map(flat).collect(),
            };
            failures.extend(compare(&what, &names, &got, &want["params"], ok));
            let want_state = &case["state_after_steps"][&key];
            let adam = adam_states(&state);
            for (field, got) in [
                (
                    "exp_avg",
                    adam.iter()
                        .map(|s| flat(s.exp_avg.as_ref().unwrap()))
                        .collect::<Vec<_>>(),
                ),
                (
                    "exp_avg_sq",
                    adam.iter()
                        .map(|s| flat(s.exp_avg_sq.as_ref().unwrap()))
                        .collect(),
                ),
            ] {
                failures.extend(compare(
                    &format!("{what} {field}"),
                    &names,
                    &got,
                    &want_state[field],
                    ok,
                ));
            }
            if let Some(want) = want_state.get("kahan_comp") {
                let Some(TrickState::Kahan { comp }) = state.trick(TrickKind::Kahan) else {
                    panic!("{what}: no compensation");
                };
                let got: Vec<Vec<f64>> = comp.iter().map(flat).collect();
                failures.extend(compare(
                    &format!("{what} kahan_comp"),
                    &names,
                    &got,
                    want,
                    ok,
                ));
            }
        }
    }
    assert_eq!(cases, 10);
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures[..failures.len().min(40)].join("\n")
    );
}

/// The float64 loss at `params` (by param, in the file's order) with float64 data.
fn loss_f64(f64_problem: &CompiledFile, params: &[Vec<f64>]) -> f64 {
    let evaluator = Evaluator::new(f64_problem, 0).unwrap();
    evaluator.set_flat(&params.concat()).unwrap();
    evaluator.loss().unwrap()
}

#[test]
fn low_precision_cases_run_in_full_within_the_readmes_tolerances() {
    let data = reference();
    let mut failures = Vec::new();
    for case in cases_in(&data, true) {
        let spec = case["optimizer"].as_str().unwrap();
        let problem = case["problem"].as_str().unwrap();
        let dtype = dtype_name(case["dtype"].as_str().unwrap());
        let label = format!("{problem} {spec} {dtype}");
        let master = spec.contains("master_weights");
        // (loss_f64 relative, params absolute): bf16 pure and kahan, f16 pure, master weights.
        let (loss_rel, param_abs) = match (master, dtype) {
            (true, _) => (1e-4, 1e-3),
            (false, "bf16") => (1e-2, 1e-2),
            (false, _) => (1e-4, 1e-4),
        };
        let exact = problem_file(&data["problems"], problem, "f64");
        let compiled = problem_file(&data["problems"], problem, dtype);
        let mut run = start(&compiled, spec);
        let names = run.param_names().to_vec();
        for (k, key) in steps(case) {
            step_to(&mut run, k);
            let what = format!("{label} step {k}");
            let want = &case["after_steps"][&key];
            let got = run
                .master_param_values()
                .unwrap_or_else(|| run.param_values());
            let loss = loss_f64(&exact, &got);
            if !close(loss, number(&want["loss_f64"]), loss_rel) {
                failures.push(format!("{what}: loss_f64 {loss} vs {}", want["loss_f64"]));
            }
            let ok = |g: f64, w: f64| (g - w).abs() <= param_abs;
            failures.extend(compare(&what, &names, &got, &want["params"], ok));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures[..failures.len().min(40)].join("\n")
    );
}

/// `sgd(lr=1e-4)` on the loss `x` from x = 1 in bf16 (dL/dx = 1): each step asks for
/// x - 1e-4, below half a bf16 ulp at 1 (2^-8), so rounding to nearest never moves x.
const DOWNHILL: &str = "name = \"downhill\"\ndtype = \"bf16\"\nloss = \"x\"\n[params]\nx = 1.0\n";

#[test]
fn stochastic_rounding_is_unbiased_in_training() {
    let c = compiled(DOWNHILL);
    let mut plain = start(&c, "sgd(lr=1e-4)");
    step_to(&mut plain, 1000);
    assert_eq!(plain.param_values(), [vec![1.0]]);
    // With stochastic rounding x follows 1 - 1e-4 t on average: 0.9 after 1,000 steps.
    let ends: Vec<f64> = (0..100)
        .map(|seed| {
            let mut run = start(
                &c,
                &format!("sgd(lr=1e-4) + stochastic_rounding(seed={seed})"),
            );
            step_to(&mut run, 1000);
            run.param_values()[0][0]
        })
        .collect();
    let mean = ends.iter().sum::<f64>() / 100.0;
    let sd = (ends.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 99.0).sqrt();
    let se = sd / 10.0;
    assert!(
        (mean - 0.9).abs() <= 3.0 * se,
        "mean {mean}, standard error {se}"
    );
    assert!(se > 0.0 && se < 0.005, "standard error {se}");
}

/// Steps `chain` on one scalar param from 0 with the gradients `grads` given in turn, through
/// the chain's admission as a run does; returns the param, the state and each verdict.
fn feed(chain: &str, grads: &[f64]) -> (f64, OptimizerState, Vec<Verdict>) {
    let chain = ChainSpec::parse(chain).unwrap();
    let mut p = vec![tensor(vec![0.0], &[], CDType::F64)];
    let mut state = OptimizerState::with_tricks(
        vec![ParamGroup::all(&chain.base, p.len())],
        &chain.tricks,
        &p,
        &p,
    )
    .unwrap();
    let mut verdicts = Vec::new();
    for &g in grads {
        let g = [tensor(vec![g], &[], CDType::F64)];
        let verdict = chain::admit(&mut state, &g).unwrap();
        if verdict == Verdict::Step {
            let mut cx = StepCx {
                params: &p,
                grads: &g,
                loss: 0.0,
                lr: chain.base.lr(),
                t: 0,
                oracle: &mut NoOracle,
            };
            p = chain::step(&mut state, &mut cx).unwrap().params;
        }
        verdicts.push(verdict);
    }
    (flat(&p[0])[0], state, verdicts)
}

#[test]
fn skip_spikes_skips_norms_above_factor_times_the_window_mean() {
    // factor 3, window 2 (the norms of the last two steps, skipped or not): |g| = 1, 2 fill
    // it; 100 > 3 * mean(1, 2) = 4.5 is skipped; 4 < 3 * mean(2, 100) passes; 3 < 3 * mean(100,
    // 4) passes; 20 > 3 * mean(4, 3) = 10.5 is skipped; |-9| < 3 * mean(3, 20) passes.
    // sgd(lr=1) from 0: x = -(1 + 2 + 4 + 3 - 9).
    let (x, state, verdicts) = feed(
        "sgd(lr=1) + skip_spikes(factor=3, window=2)",
        &[1.0, 2.0, 100.0, 4.0, 3.0, 20.0, -9.0],
    );
    let skip = Verdict::Skip(TrickKind::SkipSpikes);
    let step = Verdict::Step;
    assert_eq!(verdicts, [step, step, skip, step, step, skip, step]);
    assert_eq!(x, -1.0);
    let Some(TrickState::SkipSpikes { recent, skipped }) = state.trick(TrickKind::SkipSpikes)
    else {
        panic!("no skip_spikes state")
    };
    let recent: Vec<f64> = recent.iter().copied().collect();
    assert_eq!((recent, *skipped), (vec![20.0, 9.0], 2));
    assert_eq!(state.updates, 5);
}

#[test]
fn a_spike_that_persists_passes_once_it_fills_the_window_mean() {
    // A full-batch spike comes back at the same params: 50 > 3 * mean(1, 1) is skipped, then
    // 50 < 3 * mean(1, 50) = 76.5 passes.
    let (x, _, verdicts) = feed(
        "sgd(lr=1) + skip_spikes(factor=3, window=2)",
        &[1.0, 1.0, 50.0, 50.0],
    );
    let step = Verdict::Step;
    assert_eq!(
        verdicts,
        [step, step, Verdict::Skip(TrickKind::SkipSpikes), step]
    );
    assert_eq!(x, -52.0);
}

#[test]
fn skip_spikes_waits_for_a_full_window_and_leaves_non_finite_gradients_alone() {
    // Nothing is judged before `window` norms are in: the 50 at step 2 passes.
    let (_, _, verdicts) = feed(
        "sgd + skip_spikes(factor=2, window=3)",
        &[1.0, 50.0, 1.0, 1.0],
    );
    assert!(verdicts.iter().all(|v| *v == Verdict::Step), "{verdicts:?}");
    // A NaN norm is no spike: it is skip_nonfinite's (or the run's policy's) to handle, and
    // stays out of the window.
    let (x, state, verdicts) = feed("sgd(lr=1) + skip_spikes(window=1)", &[1.0, f64::NAN]);
    assert_eq!(verdicts, [Verdict::Step, Verdict::Step]);
    assert!(x.is_nan());
    let Some(TrickState::SkipSpikes { recent, .. }) = state.trick(TrickKind::SkipSpikes) else {
        panic!("no skip_spikes state")
    };
    assert_eq!(recent.iter().copied().collect::<Vec<_>>(), [1.0]);
}

#[test]
fn a_skipped_step_leaves_the_params_and_the_base_state_as_they_were() {
    // adam(lr=0.1) with g = 1, NaN, 1: the NaN step is skipped and t stays 1, so the next is
    // Adam's second step with two equal gradients, m̂ = v̂ = 1, and both move x by -lr (had the
    // skip counted as step 2, the third would move it by 0.086, and x end near -0.186).
    let (x, state, verdicts) = feed(
        "adam(lr=0.1) + skip_nonfinite(max_consecutive=1)",
        &[1.0, f64::NAN, 1.0],
    );
    assert_eq!(verdicts[1], Verdict::Skip(TrickKind::SkipNonfinite));
    assert_eq!(state.updates, 2);
    assert!((x + 0.2).abs() < 1e-7, "{x}");
    let Some(TrickState::SkipNonfinite {
        notfinite_count,
        total_notfinite,
    }) = state.trick(TrickKind::SkipNonfinite)
    else {
        panic!("no skip_nonfinite state")
    };
    assert_eq!((*notfinite_count, *total_notfinite), (0, 1));
}

/// A quadratic whose file lists tricks, with variants that keep, replace or drop them.
const WITH_TRICKS: &str = r#"name = "with tricks"
about = "tricks in [optimizer] and variants"
loss = "sum(w^2)"
[params]
w = "[1.0, -2.0]"
[optimizer]
name = "adam"
lr = 0.01
clip_norm = 1.0
tricks = ["agc(clipping=0.05)", "ema(decay=0.99)"]
[[variants]]
name = "centralized"
optimizer = { tricks = ["centralize"] }
[[variants]]
name = "sgd"
optimizer = { name = "sgd" }
[[variants]]
name = "none"
tricks = []
"#;

#[test]
fn a_variants_tricks_replace_the_files_list() {
    let c = compiled(WITH_TRICKS);
    let chains: Vec<String> = c
        .runs
        .iter()
        .map(|r| r.settings.chain().to_string())
        .collect();
    assert_eq!(
        chains,
        [
            "adam(lr=0.01) + agc(clipping=0.05) + ema(decay=0.99)",
            "adam(lr=0.01) + centralize",
            // Another optimizer starts from its own defaults; tricks and clipping stay.
            "sgd(lr=0.001) + agc(clipping=0.05) + ema(decay=0.99)",
            "adam(lr=0.01)",
        ]
    );
    // The old key still clips, first.
    assert!(c.runs.iter().all(|r| r.settings.clip_norm == Some(1.0)));
}

/// The diagnostics of a loss file's text.
fn diagnostics(text: &str) -> Vec<gradscope::diagnostic::Diagnostic> {
    let loaded = load_bytes(Path::new("t.toml"), text.as_bytes().to_vec());
    let mut diags = loaded.diagnostics;
    if let Some(file) = loaded.file {
        diags.extend(compile(file).1);
    }
    diags
}

#[test]
fn a_wrong_trick_is_reported_at_its_own_entry() {
    // (the list as written, the entry the error points at, message, help)
    let cases = [
        (
            r#"["ema", "agc(cliping=0.1)"]"#,
            r#""agc(cliping=0.1)""#,
            "unknown parameter `cliping` for trick `agc`",
            Some("did you mean `clipping`?"),
        ),
        (
            r#"["lookahed"]"#,
            r#""lookahed""#,
            "unknown trick `lookahed`",
            Some("did you mean `lookahead`?"),
        ),
        (
            r#"["ema(decay=2)"]"#,
            r#""ema(decay=2)""#,
            "`decay` must be in [0, 1], not 2",
            None,
        ),
        (
            r#"["kahan", "master_weights"]"#,
            r#"["kahan", "master_weights"]"#,
            "`kahan` and `master_weights` cannot be combined",
            Some("each decides how f16/bf16 params are stored: pick one"),
        ),
        (
            r#"[1.0]"#,
            r#"1.0"#,
            "a trick must be a string, found a float",
            None,
        ),
    ];
    for (list, at, message, help) in cases {
        let text = format!(
            "name = \"q\"\nloss = \"sum(w^2)\"\n[params]\nw = \"[1.0]\"\n[optimizer]\ntricks = {list}\n"
        );
        let diags = diagnostics(&text);
        assert_eq!(diags.len(), 1, "{list}: {diags:?}");
        let d = &diags[0];
        assert_eq!(d.message, message, "{list}");
        assert_eq!(d.help.as_deref(), help, "{list}");
        let start = text.rfind(at).unwrap();
        assert_eq!(d.span, Some(start..start + at.len()), "{list}");
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The optimizer of each run in `gradscope run --format jsonl`'s summaries, for `file` with
/// the `-o` specs `specs`.
fn summary_chains(file: &Path, specs: &[&str]) -> Vec<String> {
    let mut args = vec![
        "run",
        file.to_str().unwrap(),
        "--steps",
        "2",
        "--format",
        "jsonl",
    ];
    for s in specs {
        args.extend(["-o", s]);
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["summary"] == true)
        .map(|v| v["optimizer"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn o_writes_tricks_after_the_optimizer_and_keeps_the_files_with_its_optimizer() {
    let path = std::env::temp_dir().join(format!("gradscope-tricks-{}.toml", std::process::id()));
    std::fs::write(&path, WITH_TRICKS).unwrap();
    let chains = summary_chains(
        &path,
        &[
            "adam",
            "adam(lr=0.1) + lookahead(sync_period=2)",
            "sgd(lr=1e+3)",
            "rmsprop + skip_spikes(factor=4) + clip_value(clip_value=0.5)",
        ],
    );
    assert_eq!(
        chains,
        [
            "adam(lr=0.01) + agc(clipping=0.05) + ema(decay=0.99)",
            "adam(lr=0.1) + lookahead(sync_period=2)",
            "sgd(lr=1000)",
            "rmsprop(lr=0.01) + skip_spikes(factor=4) + clip_value(clip_value=0.5)",
        ]
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args([
            "run",
            path.to_str().unwrap(),
            "-o",
            "adam + emma(decay=0.9)",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown trick `emma` (did you mean `ema`?)"),
        "{err}"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn once_skip_nonfinite_gives_up_the_runs_own_policy_decides() {
    // adam(lr=0.02) on sqrt_barrier: s crosses 0 at step 24, from where d/ds is NaN. The trick
    // skips steps 25, 26, 27 and gives up on the next; under `stop` the run halts there, at
    // row 27, without taking the update (under `continue` it takes it: the reference case).
    let data = reference();
    let c = problem_file(&data["problems"], "sqrt_barrier", "f64");
    let chain = "adam(lr=0.02) + skip_nonfinite(max_consecutive=3)";
    let mut config = settings(chain);
    config.on_nonfinite = NonFinitePolicy::Stop;
    let mut run = Run::new(&c, RunRequest::new(&c, 0, chain.into(), config)).unwrap();
    while !run.is_done() {
        run.step().unwrap();
    }
    let halt = run.halted.as_ref().expect("halted");
    assert_eq!(halt.step, 27);
    assert!(
        halt.reason.contains("the gradient of `s`"),
        "{}",
        halt.reason
    );
    assert_eq!(run.skipped, 3);
    let at = run.param_names().iter().position(|n| n == "s").unwrap();
    let s = run.param_values()[at][0];
    assert!((s + 0.00495098540451502).abs() < 1e-12, "{s}");
}

#[test]
fn rewinding_re_steps_the_tricks_to_the_same_numbers() {
    // Every stateful kind of trick at once, in bf16 so stochastic rounding draws bits.
    let text = "name = \"q\"\ndtype = \"bf16\"\nloss = \"sum((w - 3)^2)\"\n[params]\nw = \"[1.0, -2.0, 0.5]\"\n";
    let c = compiled(text);
    let chain = "adam(lr=0.003) + skip_spikes(factor=5, window=4) + skip_nonfinite(max_consecutive=2) \
                 + lookahead(sync_period=3) + ema(decay=0.9) + stochastic_rounding(seed=4)";
    let mut run = start(&c, chain);
    step_to(&mut run, 250);
    let (params, eval) = (run.param_values(), run.eval_param_values());
    run.rewind_to(130).unwrap();
    assert_eq!(run.step_count(), 130);
    step_to(&mut run, 250);
    assert_eq!(run.param_values(), params);
    assert_eq!(run.eval_param_values(), eval);
    // And it moved: with rounding to nearest, w[0] = 1 would never (0.003 is below half a bf16
    // ulp at 1).
    assert!(params[0][0] > 1.25, "{params:?}");
}

/// Each run of bundled file `path` stepped to its end: (variant name, initial loss, final loss,
/// skipped steps).
fn bundled(path: &str) -> Vec<(String, f64, f64, u64)> {
    let (c, _) = gradscope::load::load_compiled(Path::new(path)).unwrap();
    (0..c.runs.len())
        .map(|i| {
            let request = RunRequest::of(&c, i).unwrap();
            let mut run = Run::new(&c, request).unwrap();
            let initial = run.current_loss().unwrap();
            while !run.is_done() {
                run.step().unwrap();
            }
            assert!(run.halted.is_none(), "{path} {}", run.name);
            let last = run.current_loss().unwrap();
            (run.name.clone(), initial, last, run.skipped)
        })
        .collect()
}

#[test]
fn bundled_bf16_adam_stalls_where_master_weights_kahan_and_rounding_converge() {
    let runs = bundled("losses/tricks_bf16.toml");
    let names: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "base",
            "master weights",
            "kahan",
            "stochastic rounding",
            "f32"
        ]
    );
    let (_, initial, last, _) = &runs[0];
    assert_eq!(last, initial, "plain bf16 Adam never moves");
    for (name, initial, last, _) in &runs[1..] {
        assert!(*last < 1e-3 * initial, "{name}: {initial} -> {last}");
    }
}

#[test]
fn bundled_cliffs_stall_plain_adam_and_not_agc_or_clip_norm() {
    let runs = bundled("losses/spikes.toml");
    let last = |name: &str| runs.iter().find(|r| r.0 == name).unwrap();
    // Stuck past the first cliff: the second's height (100) is still in the loss.
    assert!(last("base").2 > 100.0, "{:?}", last("base"));
    for name in ["agc", "clip_norm"] {
        assert!(last(name).2 < 1e-6, "{:?}", last(name));
    }
    // The spike comes back at the same params: skipped a few times, then taken all the same.
    let (_, _, loss, skipped) = last("skip_spikes");
    assert!(*skipped > 0 && *loss > 100.0, "{:?}", last("skip_spikes"));
}

#[test]
fn state_kept_across_steps_holds_no_graph_of_the_params() {
    // Built from params that tracked their graph, ema's average and Adam's moments of agc's
    // gradients would chain each step's graph to the one before: memory grows with every step
    // and dropping the run at last overflows the stack.
    let c = compiled(WITH_TRICKS);
    let mut run = start(&c, "adam + agc(clipping=0.05) + ema(decay=0.99)");
    step_to(&mut run, 3);
    let state = run.optimizer_state();
    let Some(TrickState::Ema {
        average: Some(average),
        ..
    }) = state.trick(TrickKind::Ema)
    else {
        panic!("no ema average after 3 steps");
    };
    let moments = adam_states(state)
        .iter()
        .flat_map(|s| [&s.exp_avg, &s.exp_avg_sq])
        .flatten();
    for t in average.iter().chain(moments) {
        assert!(!t.track_op(), "a state tensor holds a graph: {t}");
    }
}
