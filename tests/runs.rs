//! Runs: the non-finite policies on a loss built to go NaN at a known step, rewinding, Lion's
//! closed form, every bundled loss for 50 steps, and the `run` command's output formats.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use gradscope::compile::{CompiledFile, compile};
use gradscope::lang::file::load_bytes;
use gradscope::load::discover;
use gradscope::load::load_compiled;
use gradscope::optim::schedule::LrSchedule;
use gradscope::optim::settings::{GradSource, LossScale, NonFinitePolicy, RunSettings};
use gradscope::optim::spec::OptimizerSpec;
use gradscope::run::history::flags;
use gradscope::run::summary::drive;
use gradscope::run::{Retention, Run, RunRequest};

fn compiled(text: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new("t.toml"), text.as_bytes().to_vec());
    let (c, d) = compile(loaded.file.expect("loads"));
    c.unwrap_or_else(|| panic!("{d:?}"))
}

fn config(spec: &str, policy: NonFinitePolicy) -> RunSettings {
    RunSettings {
        optimizer: OptimizerSpec::parse(spec).unwrap(),
        steps: 10,
        clip_norm: None,
        clip_value: None,
        schedule: LrSchedule::constant(),
        on_nonfinite: policy,
        grad: GradSource::Autograd,
        loss_scale: LossScale::Off,
        tricks: Vec::new(),
    }
}

/// dL/dx = 1 everywhere, so SGD with lr 1 walks x = 2.5, 1.5, 0.5, -0.5, ...; the forward value
/// sqrt(detach(x)) turns NaN at step 3, when x = -0.5.
const GOES_NAN_AT_3: &str =
    "name = \"nan at 3\"\ndtype = \"f64\"\nloss = \"sqrt(detach(x)) + x\"\n[params]\nx = 2.5\n";

fn x_of(run: &Run) -> f64 {
    run.param_values()[0][0]
}

#[test]
fn stop_halts_at_the_first_nonfinite_step_without_updating() {
    let c = compiled(GOES_NAN_AT_3);
    let mut run = Run::new(
        &c,
        RunRequest::new(
            &c,
            0,
            "r".into(),
            config("sgd(lr=1)", NonFinitePolicy::Stop),
        ),
    )
    .unwrap();
    while !run.is_done() {
        run.step().unwrap();
    }
    let halt = run.halted.clone().expect("halted");
    // Step 3 is θ_3 (x = -0.5, after three updates): its row is the last, with no update.
    assert_eq!(halt.step, 3);
    assert!(halt.reason.contains("loss is NaN"), "{}", halt.reason);
    assert_eq!(run.step_count(), 3);
    assert_eq!(run.history().len(), 4);
    assert_eq!(x_of(&run), -0.5);
    let last = run.history().get(3).unwrap();
    assert!(last.has(flags::LOSS_NONFINITE) && !last.stepped());
    // The halt says where: no second report.
    assert!(run.nonfinite_report().is_none());
}

#[test]
fn skip_counts_skipped_updates_and_keeps_the_params() {
    let c = compiled(GOES_NAN_AT_3);
    let mut run = Run::new(
        &c,
        RunRequest::new(
            &c,
            0,
            "r".into(),
            config("sgd(lr=1)", NonFinitePolicy::Skip),
        ),
    )
    .unwrap();
    while !run.is_done() {
        run.step().unwrap();
    }
    assert!(run.halted.is_none());
    assert_eq!(run.step_count(), 10);
    assert_eq!(run.skipped, 7);
    assert_eq!(x_of(&run), -0.5);
    assert!(run.history().get(5).unwrap().has(flags::SKIPPED));
    assert!(!run.history().get(2).unwrap().has(flags::SKIPPED));
    assert_eq!(run.nonfinite_report().map(|(k, _)| k), Some(3));
}

#[test]
fn continue_updates_through_nonfinite_losses() {
    let c = compiled(GOES_NAN_AT_3);
    let mut run = Run::new(
        &c,
        RunRequest::new(
            &c,
            0,
            "r".into(),
            config("sgd(lr=1)", NonFinitePolicy::Continue),
        ),
    )
    .unwrap();
    while !run.is_done() {
        run.step().unwrap();
    }
    assert_eq!(run.skipped, 0);
    assert_eq!(x_of(&run), 2.5 - 10.0);
    // The run went on, so no halt says where the NaN started: its report does, as a warning.
    let (step, d) = run.nonfinite_report().expect("a report");
    assert!(!d.is_error());
    // `loss = "sqrt(detach(x)) + x"` is line 3; the sqrt starts at column 9.
    assert_eq!((step, d.line_col()), (3, Some((3, 9))));
    assert!(d.message.contains("`sqrt(detach(x))`"), "{}", d.message);
}

#[test]
fn a_nonfinite_gradient_names_the_param_and_counts_elements() {
    // d/dw sqrt(sum(w^2)) at w = 0 is 0/0 for every element.
    let c = compiled(
        "name = \"g\"\nloss = \"sqrt(sum(w^2)) + sum(v)\"\n[params]\nw = \"zeros(4)\"\nv = \"ones(2)\"\n",
    );
    let run = Run::new(
        &c,
        RunRequest::new(&c, 0, "r".into(), config("sgd", NonFinitePolicy::Stop)),
    )
    .unwrap();
    // θ_0 itself is non-finite: the run halts at step 0 before any update.
    let halt = run.halted.clone().expect("halted");
    assert_eq!((halt.step, run.history().len()), (0, 1));
    assert_eq!(
        halt.reason,
        "the gradient of `w` (4 of 4 values) is non-finite"
    );
}

/// In f16 the gradient of `b` is 1e-5 at step 0: Adam's second moment (1e-10 times 0.001)
/// flushes to 0 and eps = 1e-8 rounds to 0 too, so m / (sqrt(v) + eps) divides by 0. The loss
/// and gradient are finite: the update alone breaks the param.
const ADAM_BREAKS_IN_F16: &str =
    "name = \"f16 adam\"\ndtype = \"f16\"\nloss = \"1e-5 * b + w^2\"\n[params]\nw = 1.0\nb = 0.0\n";

#[test]
fn an_update_that_breaks_finite_params_is_caught_and_explained() {
    let c = compiled(ADAM_BREAKS_IN_F16);
    let mut run = Run::new(
        &c,
        RunRequest::new(
            &c,
            0,
            "stop".into(),
            config("adam(lr=0.1)", NonFinitePolicy::Stop),
        ),
    )
    .unwrap();
    let r = run.step().unwrap();
    assert!(
        r.has(flags::UPDATE_NONFINITE)
            && !r.has(flags::LOSS_NONFINITE)
            && !r.has(flags::GRAD_NONFINITE)
    );
    let halt = run.halted.clone().expect("halted");
    assert_eq!(halt.step, 0);
    assert!(
        halt.reason
            .contains("the adam update made `b` (1 of 1 values) non-finite"),
        "{}",
        halt.reason
    );
    assert!(
        halt.reason.contains("eps = 1.00e-8 is 0 in f16"),
        "{}",
        halt.reason
    );
    assert!(
        run.param_values().concat().iter().all(|v| v.is_finite()),
        "not applied"
    );

    let mut skip = Run::new(
        &c,
        RunRequest::new(
            &c,
            0,
            "skip".into(),
            config("adam(lr=0.1)", NonFinitePolicy::Skip),
        ),
    )
    .unwrap();
    let r = skip.step().unwrap();
    assert!(r.has(flags::SKIPPED) && r.has(flags::UPDATE_NONFINITE));
    assert_eq!((skip.skipped, skip.halted.is_none()), (1, true));
    assert_eq!(skip.param_values(), vec![vec![1.0], vec![0.0]]);

    let mut cont = Run::new(
        &c,
        RunRequest::new(
            &c,
            0,
            "continue".into(),
            config("adam(lr=0.1)", NonFinitePolicy::Continue),
        ),
    )
    .unwrap();
    cont.step().unwrap();
    assert!(cont.param_values()[1][0].is_infinite());
    // The next step's loss is -Inf; its provenance is the param itself, at its definition.
    cont.step().unwrap();
    let (step, p) = cont.first_provenance.clone().expect("traced");
    assert_eq!((step, p.op.as_str()), (1, "b"));
    assert!(
        p.inputs[0].starts_with("already non-finite when the loss began"),
        "{:?}",
        p.inputs
    );
    let text = p.summary_at(cont.source());
    assert!(text.starts_with("6:1 "), "points at `b = 0.0`: {text}");

    // With eps = 1e-4 (representable in f16) the same step is fine.
    let mut fixed = Run::new(
        &c,
        RunRequest::new(
            &c,
            0,
            "eps".into(),
            config("adam(lr=0.1, eps=1e-4)", NonFinitePolicy::Stop),
        ),
    )
    .unwrap();
    let r = fixed.step().unwrap();
    assert!(!r.has(flags::UPDATE_NONFINITE) && fixed.halted.is_none());
}

#[test]
fn a_zero_learning_rate_steps_without_moving() {
    let c = compiled(GOES_NAN_AT_3);
    for spec in [
        "sgd(lr=0)",
        "sgd(lr=0, momentum=0.9)",
        "adam(lr=0)",
        "lion(lr=0)",
    ] {
        let mut run = Run::new(
            &c,
            RunRequest::new(&c, 0, spec.into(), config(spec, NonFinitePolicy::Stop)),
        )
        .unwrap();
        for _ in 0..3 {
            run.step()
                .unwrap_or_else(|d| panic!("{spec}: {}", d.headline()));
        }
        assert_eq!(x_of(&run), 2.5, "{spec}");
    }
}

#[test]
fn clipping_is_recorded_with_the_pre_clip_norm() {
    // grad of sum(3 w0 + 4 w1) is [3, 4]: norm 5, clipped to 1.
    let c = compiled(
        "name = \"c\"\ndtype = \"f64\"\nloss = \"sum(w * [3, 4])\"\n[params]\nw = \"zeros(2)\"\n",
    );
    let mut cfg = config("sgd(lr=1)", NonFinitePolicy::Stop);
    cfg.clip_norm = Some(1.0);
    let mut run = Run::new(&c, RunRequest::new(&c, 0, "r".into(), cfg)).unwrap();
    let r = run.step().unwrap();
    assert!(r.has(flags::CLIPPED));
    assert_eq!(r.core.grad_norm, 5.0);
    assert_eq!(r.nonfinite_params().count(), 0);
    let w = &run.param_values()[0];
    let coef = 1.0 / (5.0 + 1e-6);
    assert!(
        (w[0] + 3.0 * coef).abs() < 1e-12 && (w[1] + 4.0 * coef).abs() < 1e-12,
        "{w:?}"
    );
    assert_eq!(run.clipped, 1);
}

#[test]
fn rewinding_reproduces_the_same_records_bit_for_bit() {
    let (c, _) = load_compiled(Path::new("losses/bench/robust_log_mse.toml")).unwrap();
    let mut cfg = c.runs[0].settings.clone();
    cfg.steps = 250;
    let mut run = Run::new(&c, RunRequest::new(&c, 0, "r".into(), cfg)).unwrap();
    while !run.is_done() {
        run.step().unwrap();
    }
    let before: Vec<_> = (0..250).map(|k| run.history().get(k).unwrap()).collect();
    let params = run.param_values();
    run.rewind_to(137).unwrap();
    assert_eq!(run.step_count(), 137);
    while !run.is_done() {
        run.step().unwrap();
    }
    for (k, old) in before.iter().enumerate() {
        let new = run.history().get(k).unwrap();
        // Bit patterns, so NaN (the update ratio at all-zero params) compares equal to itself;
        // wall time is the one field that may differ.
        let strip = |r: &gradscope::run::history::StepRecord| {
            let c = r.core;
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (
                c.loss.to_bits(),
                [
                    c.grad_norm.to_bits(),
                    c.update_norm.to_bits(),
                    c.update_ratio.to_bits(),
                    c.lr.to_bits(),
                ],
                c.flags,
                bits(&r.param_grad_norms),
                bits(&r.param_norms),
            )
        };
        assert_eq!(strip(old), strip(&new), "step {k}");
    }
    assert_eq!(run.param_values(), params);
    run.rewind_to(0).unwrap();
    assert_eq!(run.step_count(), 0);
    assert_eq!(run.param_values(), vec![vec![0.0, 0.0, 0.0], vec![0.0]]);
}

#[test]
fn lion_follows_its_published_update() {
    // Lion (Chen et al. 2023): c = b1 m + (1 - b1) g; p -= lr (sign(c) + wd p); m = b2 m + (1 - b2) g.
    // L = sum(a * w) has g = a. Step 1: m = 0, c = (1 - b1) a, p1 = p0 - lr sign(a).
    // Step 2: m = (1 - b2) a, c = (b1 (1 - b2) + 1 - b1) a, same sign: p2 = p1 - lr sign(a).
    let c = compiled(
        "name = \"l\"\ndtype = \"f64\"\nloss = \"sum(w * [2, -3])\"\n[params]\nw = \"[1, 1]\"\n",
    );
    let mut run = Run::new(
        &c,
        RunRequest::new(
            &c,
            0,
            "r".into(),
            config("lion(lr=0.1, weight_decay=0.5)", NonFinitePolicy::Stop),
        ),
    )
    .unwrap();
    run.step().unwrap();
    // decoupled decay first: p (1 - lr wd) = 0.95, then -lr sign(a)
    let w1 = run.param_values()[0].clone();
    assert!(
        (w1[0] - (0.95 - 0.1)).abs() < 1e-15 && (w1[1] - (0.95 + 0.1)).abs() < 1e-15,
        "{w1:?}"
    );
    run.step().unwrap();
    let w2 = &run.param_values()[0];
    assert!((w2[0] - (w1[0] * 0.95 - 0.1)).abs() < 1e-15, "{w2:?}");
    assert!((w2[1] - (w1[1] * 0.95 + 0.1)).abs() < 1e-15, "{w2:?}");
}

#[test]
fn every_bundled_loss_runs_fifty_steps_without_a_panic() {
    let (files, _) = discover(&["losses".into()]);
    for f in files {
        let (c, _) =
            load_compiled(&f).unwrap_or_else(|d| panic!("{}: {}", f.display(), d[0].headline()));
        for run_index in 0..c.runs.len() {
            let mut cfg = c.runs[run_index].settings.clone();
            cfg.steps = 50;
            cfg.on_nonfinite = NonFinitePolicy::Continue;
            let mut run = Run::new(&c, RunRequest::new(&c, run_index, "r".into(), cfg)).unwrap();
            while !run.is_done() {
                run.step()
                    .unwrap_or_else(|d| panic!("{} {}: {}", f.display(), run_index, d.headline()));
            }
            assert_eq!(run.step_count(), 50);
        }
    }
}

#[test]
fn jsonl_has_one_object_per_step_and_a_summary_per_run() {
    let out = common::gradscope(&[
        "run",
        "losses/rosenbrock.toml",
        "-o",
        "sgd(lr=1e-3, momentum=0.9)",
        "-o",
        "adam",
        "--steps",
        "20",
        "--format",
        "jsonl",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    // Rows 0..=20 and a summary, per run.
    assert_eq!(lines.len(), 2 * 22);
    let steps: Vec<_> = lines
        .iter()
        .filter(|v| v.get("summary").is_none())
        .collect();
    assert_eq!(steps.len(), 42);
    for key in [
        "run",
        "step",
        "loss",
        "grad_norm",
        "lr",
        "update_norm",
        "clipped",
        "skipped",
    ] {
        assert!(steps[0].get(key).is_some(), "missing {key}");
    }
    let summaries: Vec<_> = lines.iter().filter(|v| v["summary"] == true).collect();
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0]["run"], "sgd(lr=0.001, momentum=0.9)");
    // rosenbrock.toml's own adam keeps its lr 0.01.
    assert_eq!(summaries[1]["run"], "adam(lr=0.01)");
    for key in [
        "final_loss",
        "best_loss",
        "steps",
        "first_nonfinite_step",
        "steps_per_s",
    ] {
        assert!(summaries[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(summaries[0]["steps"], 20);
    assert!(summaries[1]["final_params"]["x"].is_array());
}

#[test]
fn csv_has_a_header_and_one_row_per_logged_step() {
    let out = common::gradscope(&[
        "run",
        "losses/robust_log_mse.toml",
        "--variant",
        "all",
        "--steps",
        "10",
        "--on-nonfinite",
        "continue",
        "--every",
        "5",
        "--format",
        "csv",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(&headers[0], "run");
    assert!(headers.iter().any(|h| h == "grad_norm_w"));
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    // 5 runs, rows 0 and 5 logged, and the last row 10
    assert_eq!(rows.len(), 5 * 3);
    assert_eq!(&rows[0][0], "base");
}

#[test]
fn a_nan_halt_exits_one_with_a_one_line_reason() {
    let out = common::gradscope(&[
        "run",
        "losses/norm_at_zero.toml",
        "--variant",
        "naive sqrt(sum(w^2))",
        "--steps",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("halted at step 0: the gradient of `w` (8 of 8 values) is non-finite"),
        "{stderr}"
    );
}

#[test]
fn unknown_optimizer_on_the_command_line_lists_the_valid_ones() {
    let out = common::gradscope(&["run", "losses/rosenbrock.toml", "-o", "adma"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown optimizer `adma` (did you mean `adam`?)"),
        "{stderr}"
    );
}

#[test]
fn a_million_steps_of_history_fit_in_100_mb() {
    // Capacity, not a timing: the history's own accounting of the bytes it holds.
    assert!(gradscope::cli::bench::history_mb(1_000_000, 6) < 100.0);
}

#[test]
fn finite_difference_gradients_match_autograd_and_drift_little() {
    let text = "name = \"r\"\ndtype = \"f64\"\nloss = \"(1 - x)^2 + 100 * (y - x^2)^2\"\n[params]\nx = -1.5\ny = 2.0\n[[variants]]\nname = \"fd\"\ngrad = \"fd\"\n";
    let c = compiled(text);
    let ev = gradscope::compile::Evaluator::new(&c, 0).unwrap();
    let (auto, fd) = (ev.evaluate().unwrap(), ev.evaluate_fd().unwrap());
    for (a, f) in auto.grads.iter().zip(&fd.grads) {
        let (a, f) = (a.to_scalar::<f64>().unwrap(), f.to_scalar::<f64>().unwrap());
        assert!((a - f).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {f}");
    }
    let mut cfg = c.runs[1].settings.clone();
    assert_eq!(cfg.grad, GradSource::FiniteDifference);
    cfg.steps = 200;
    let mut fd_run = Run::new(&c, RunRequest::new(&c, 1, "fd".into(), cfg.clone())).unwrap();
    cfg.grad = GradSource::Autograd;
    let mut auto_run = Run::new(&c, RunRequest::new(&c, 0, "auto".into(), cfg)).unwrap();
    for run in [&mut fd_run, &mut auto_run] {
        while !run.is_done() {
            run.step().unwrap();
        }
    }
    let (p, q) = (fd_run.param_values(), auto_run.param_values());
    let drift = ((p[0][0] - q[0][0]).powi(2) + (p[1][0] - q[1][0]).powi(2)).sqrt();
    assert!(drift > 0.0 && drift < 1e-5, "drift {drift}");
}

#[test]
fn dynamic_loss_scaling_follows_gradscalers_rule() {
    // d/dw sum(10 w) = 10 per element; scaled by 2^16 .. 2^13 it passes f16's 65504 and
    // overflows, so four steps are skipped while the scale halves; 2^12 (40960) fits. After 2,000
    // clean steps the scale doubles to 2^13, overflows once more, and halves back.
    let text = "name = \"s\"\ndtype = \"f16\"\nloss = \"sum(w * c)\"\n[data]\nc = \"full(10, 4)\"\n[params]\nw = \"zeros(4)\"\n[optimizer]\nname = \"sgd\"\nlr = 1e-9\nloss_scale = \"dynamic\"\n";
    let c = compiled(text);
    let mut cfg = c.runs[0].settings.clone();
    assert_eq!(cfg.loss_scale, LossScale::Dynamic);
    cfg.steps = 2006;
    let mut run = Run::new(&c, RunRequest::new(&c, 0, "s".into(), cfg)).unwrap();
    while !run.is_done() {
        run.step().unwrap();
    }
    let h = run.history();
    let scale = |k: usize| h.core(k).loss_scale_log2;
    let skipped = |k: usize| h.core(k).flags & flags::SKIPPED != 0;
    assert_eq!(
        (0..5).map(scale).collect::<Vec<_>>(),
        vec![16, 15, 14, 13, 12]
    );
    assert_eq!(
        (0..5).map(skipped).collect::<Vec<_>>(),
        vec![true, true, true, true, false]
    );
    // Steps 4..=2003 are the 2,000 clean steps; 2004 runs at 2^13 and is skipped.
    assert!((4..2004).all(|k| !skipped(k) && scale(k) == 12));
    assert_eq!((scale(2004), skipped(2004)), (13, true));
    assert_eq!((scale(2005), skipped(2005)), (12, false));
    assert_eq!(run.skipped, 5);
    assert!(run.halted.is_none());
}

#[test]
fn a_power_of_two_loss_scale_changes_nothing_in_f32_and_f64() {
    // Scaling by 2^k and back is exact there, as torch's GradScaler unscales in the
    // gradient's dtype; it had rounded every gradient through f32.
    for dtype in ["f64", "f32"] {
        let text = format!(
            "name = \"s\"\ndtype = \"{dtype}\"\nloss = \"sum((w - t)^2) / 3 + sum(exp(w) / 7)\"\n[data]\nt = \"[0.1, 0.2, 0.3]\"\n[params]\nw = \"[1.0, 2.0, 3.0]\"\n[optimizer]\nname = \"sgd\"\nlr = 0.1\nsteps = 5\n"
        );
        let c = compiled(&text);
        let run = |scale: Option<f64>| {
            let mut cfg = c.runs[0].settings.clone();
            if let Some(s) = scale {
                cfg.loss_scale = LossScale::Fixed(s);
            }
            let mut run = Run::new(&c, RunRequest::new(&c, 0, "s".into(), cfg)).unwrap();
            drive(&mut run, |_, _| ControlFlow::Continue(())).unwrap();
            run.param_values()
        };
        assert_eq!(run(Some(1024.0)), run(None), "{dtype}");
        assert_eq!(run(Some(1.0)), run(None), "{dtype}");
    }
}

#[test]
fn accumulating_in_f32_fixes_f16_sums() {
    // The f16 sum of 4096 ones is 2048: 2048 + 1 rounds back to 2048.
    let (c, _) = load_compiled(Path::new("losses/f16_accumulation.toml")).unwrap();
    let loss = |run: usize| {
        gradscope::compile::Evaluator::new(&c, run)
            .unwrap()
            .loss()
            .unwrap()
    };
    assert_eq!(loss(0), 0.5);
    assert_eq!(loss(1), 1.0);
    assert_eq!(loss(2), 1.0);
    // The gradient of the broadcast w sums 4096 terms of -2/4096 in its backward pass: f16
    // stops at -1, accumulating in f32 gets torch's f16 gradient, -2 (as in f32).
    let grad = |run: usize| {
        let e = gradscope::compile::Evaluator::new(&c, run)
            .unwrap()
            .evaluate()
            .unwrap();
        e.grads[0]
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    assert_eq!(grad(0), -1.0);
    assert_eq!(grad(1), -2.0);
    assert_eq!(grad(2), -2.0);
}

#[test]
fn a_panic_in_the_worker_becomes_a_failure_and_the_worker_serves_on() {
    use gradscope::run::worker::{self, Command, Event};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::channel;
    use std::sync::{Arc, Mutex};
    // The first batch of step records makes the receiving side panic, as a bug in the worker
    // would: it is caught at the worker's loop, reported, and the runs pause.
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let panicked = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&panicked);
    let emit: worker::Emit = Box::new(move |e: Event| {
        if matches!(e, Event::Records(..)) && !flag.swap(true, Ordering::SeqCst) {
            panic!("a bug while reporting");
        }
        let _ = tx.lock().unwrap().send(e);
    });
    let (commands, inbox) = channel();
    let handle = worker::spawn("t", compiled(GOES_NAN_AT_3), inbox, emit).unwrap();
    commands.send(Command::Play).unwrap();
    let wait = || {
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("events")
    };
    let why = loop {
        if let Event::Failed(why) = wait() {
            break why;
        }
    };
    assert!(panicked.load(Ordering::SeqCst));
    assert!(
        why.contains("internal error while stepping the runs: a bug while reporting"),
        "{why}"
    );
    // Paused, and still serving.
    commands.send(Command::Ping(7)).unwrap();
    let mut playing = true;
    loop {
        match wait() {
            Event::Playing(p) => playing = p,
            Event::Pong(7) => break,
            _ => {}
        }
    }
    assert!(!playing);
    commands.send(Command::Shutdown).unwrap();
    handle.join().expect("the worker thread ends cleanly");
}

/// Writes `text` to a fresh file in the temp directory, named `name`.
fn temp_loss(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gradscope-runs-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn a_run_of_n_steps_logs_rows_0_to_n_and_its_last_row_is_the_final_loss() {
    // Row k is θ_k; 20 steps make 21 rows, the last with the loss the summary calls final.
    let run = |format: &str| {
        let out = common::gradscope(&[
            "run",
            "losses/rosenbrock.toml",
            "--steps",
            "20",
            "--every",
            "1",
            "--format",
            format,
        ]);
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let jsonl: Vec<serde_json::Value> = run("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (rows, summary) = jsonl.split_at(21);
    let steps: Vec<u64> = rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (0..=20).collect::<Vec<u64>>());
    assert_eq!(rows[20]["loss"], summary[0]["final_loss"]);
    assert_eq!(summary[0]["steps"], 20);
    // The last row has no update; the others have one.
    assert!(rows[20]["update_norm"].is_null() && rows[20]["clipped"].is_null());
    assert!(rows[19]["update_norm"].is_number());

    let csv_text = run("csv");
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 21);
    assert_eq!((&rows[0][1], &rows[20][1]), ("0", "20"));
    let final_loss = summary[0]["final_loss"].as_f64().unwrap();
    assert_eq!(rows[20][2].parse::<f64>().unwrap(), final_loss);
    assert_eq!(
        (&rows[20][5], &rows[20][7]),
        ("", ""),
        "no update on the last row"
    );

    // The table's rows end at step 20 with the final loss of its comparison table.
    let table = run("table");
    let last_row = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("20"))
        .expect("a row for step 20");
    let loss = last_row.split_whitespace().nth(2).unwrap();
    let comparison = table.lines().rfind(|l| !l.is_empty()).unwrap();
    assert_eq!(comparison.split_whitespace().nth(1), Some(loss), "{table}");
}

#[test]
fn a_halted_run_numbers_its_halt_the_same_in_every_output() {
    // x walks 2.5, 1.5, 0.5, -0.5: θ_3 is the first NaN, so the run halts at step 3 after three
    // updates, and step 3 is its last row everywhere.
    let file = temp_loss(
        "halted",
        &format!("{GOES_NAN_AT_3}[optimizer]\nname = \"sgd\"\nlr = 1.0\nsteps = 10\n"),
    );
    let file = file.to_str().unwrap();
    let out = common::gradscope(&["run", file, "--format", "jsonl"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("halted at step 3: the loss is NaN"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4 + 1);
    assert_eq!(lines[3]["step"], 3);
    assert_eq!(lines[3]["nonfinite_loss"], true);
    assert_eq!(lines[4]["steps"], 3);
    assert_eq!(lines[4]["first_nonfinite_step"], 3);
    let csv = common::gradscope(&["run", file, "--format", "csv"]);
    let text = String::from_utf8_lossy(&csv.stdout);
    let last = text.lines().last().unwrap();
    assert!(last.starts_with("\"base\",3,NaN,"), "{text}");
    assert_eq!(text.lines().count(), 1 + 4);
    let table = common::gradscope(&["run", file]);
    let text = String::from_utf8_lossy(&table.stdout);
    // run, final loss, best loss (step), first non-finite.
    let row = text.lines().rfind(|l| !l.is_empty()).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..5],
        ["base", "NaN", "1.207107", "(2)", "3"],
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("3")),
        "{text}"
    );
    std::fs::remove_dir_all(std::path::Path::new(file).parent().unwrap()).ok();
}

#[test]
fn divergence_with_heavy_ball_momentum_compares_the_lr_with_its_stability_bound() {
    // Rosenbrock (1-x)^2 + 100(y-x^2)^2 at θ_0 = (-1.5, 2): H = [[2 - 400(y - x^2) + 1200x^2,
    // -400x], [-400x, 200]] = [[1902, 600], [600, 200]], λ = (2102 + sqrt(2102^2 - 4·20400))/2
    // = 2092.2, and heavy-ball's bound 2(1+β)/λ = 3.8/2092.2 = 0.00182 < lr 0.01: the loss
    // grows from 12.5 (step 0) until x^2 overflows f32. The op is where, not why.
    let out = common::gradscope(&[
        "run",
        "losses/rosenbrock.toml",
        "-o",
        "sgd(lr=0.01, momentum=0.9)",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("halted at step 5: diverged: loss grew from 12.5 to 9.21e23 over 4 steps; lr 0.01 is above the stability bound 2(1+β)/λ = 0.00182 (β = 0.9, λ = 2092 at step 0, the lowest loss); it overflowed at `(y - x^2)^2`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the diverging loss overflowed here at step 5"),
        "{stderr}"
    );
    assert!(!stderr.contains("non-finite values start here"), "{stderr}");
}

#[test]
fn a_divergence_names_the_op_it_overflowed_at_as_written() {
    // Plain GD on Rosenbrock: lr 0.01 > 2/λ = 2/2092 = 9.56e-4 at θ_0, so the loss grows until
    // 100 * (y - x^2)^2 = 100 * 4.5e36 leaves f32's 3.4e38: the scaling the user wrote as
    // `100 * (...)` is named so, not by the fused op it lowers to.
    let out = common::gradscope(&["run", "losses/rosenbrock.toml", "-o", "sgd(lr=0.01)"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("; it overflowed at `100 * (y - x^2)^2`"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "the diverging loss overflowed here at step 5: `100 * (y - x^2)^2` in the forward pass"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("^^^^^^^^^^^^^^^^^ 100 * 4.5094e36"),
        "{stderr}"
    );
}

#[test]
fn divergence_under_an_adaptive_optimizer_names_no_bound() {
    // Adam's steps are about lr long, and the lr doubles every step: |x| and x^2 grow until
    // x^2 overflows f32.
    let file = temp_loss(
        "grow",
        "name = \"grow\"\nloss = \"x^2\"\n[params]\nx = 1.0\n[optimizer]\nname = \"adam\"\nlr = 1.0\nsteps = 300\nschedule = \"exponential\"\ngamma = 2.0\n",
    );
    let out = common::gradscope(&["run", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("diverged: loss grew from"), "{stderr}");
    assert!(
        stderr.contains(
            "adam adapts its steps, so no curvature bound applies: the loss diverged at lr"
        ),
        "{stderr}"
    );
    std::fs::remove_dir_all(file.parent().unwrap()).ok();
}

#[test]
fn a_divergence_whose_curvature_cannot_be_computed_says_so() {
    // In-process, without the curvature thread that keeps second-order graphs, plain gradient
    // descent at lr 0.01 > 2/λ = 2/2092 still diverges and is called so.
    let (c, _) = load_compiled(Path::new("losses/rosenbrock.toml")).unwrap();
    let mut cfg = c.runs[0].settings.clone();
    cfg.optimizer = OptimizerSpec::parse("sgd(lr=0.01)").unwrap();
    let mut run = Run::new(&c, RunRequest::new(&c, 0, "r".into(), cfg)).unwrap();
    while !run.is_done() {
        run.step().unwrap();
    }
    let halt = run.halted.expect("diverged");
    assert!(halt.diverged);
    assert!(
        halt.reason
            .contains("over 4 steps; the stability bound 2/λ could not be computed: curvature needs second-order gradients"),
        "{}",
        halt.reason
    );
}

/// GOES_NAN_AT_3 with lr 0.5 under `skip`, 1000 steps, keeping `retention`; its summary.
fn skipping_run(retention: Retention) -> (Run, gradscope::run::summary::Summary) {
    let c = compiled(GOES_NAN_AT_3);
    let mut settings = config("sgd(lr=0.5)", NonFinitePolicy::Skip);
    settings.steps = 1000;
    let mut request = RunRequest::new(&c, 0, "r".into(), settings);
    request.retention = retention;
    let mut run = Run::new(&c, request).unwrap();
    let summary = drive(&mut run, |_, _| ControlFlow::Continue(())).unwrap();
    (run, summary)
}

#[test]
fn a_headless_run_keeps_a_bounded_window_of_rows_however_long() {
    // Totals keep the last 51 rows or so (at most twice that), enough to tell a divergence.
    let (run, _) = skipping_run(Retention::Totals { best: false });
    assert_eq!(run.step_count(), 1000);
    let kept = run.history().cores().len();
    assert!((51..=102).contains(&kept), "{kept} rows kept");
    assert_eq!(run.history().first() + kept, 1001);
    let (run, _) = skipping_run(Retention::Everything);
    assert_eq!(run.history().cores().len(), 1001, "rows 0..=1000");
}

#[test]
fn a_headless_runs_streaming_summary_matches_the_full_history() {
    let (_, totals) = skipping_run(Retention::Totals { best: false });
    let (_, full) = skipping_run(Retention::Everything);
    // x walks 2.5, 2.0, ..., 0.0 (step 5: the best loss, 0), -0.5: NaN from step 6 on, skipped.
    assert_eq!(totals.first_nonfinite_step, Some(6));
    assert_eq!((totals.best_loss, totals.best_step), (0.0, Some(5)));
    assert_eq!(totals.skipped, 994);
    assert_eq!(totals.skipped, full.skipped);
    assert_eq!(
        (
            totals.best_loss,
            totals.best_step,
            totals.first_nonfinite_step
        ),
        (full.best_loss, full.best_step, full.first_nonfinite_step)
    );
    // The params stay at x = -0.5: the final loss is NaN both ways.
    assert!(totals.final_loss.is_nan() && full.final_loss.is_nan());
}

/// Starts `gradscope run` on far more steps than it can take, waits until it logs a step,
/// sends `signal`, and returns its exit code, standard output and standard error.
fn interrupt_run(signal: i32) -> (Option<i32>, String, String) {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args([
            "run",
            "losses/rosenbrock.toml",
            "--steps",
            "100000000",
            "--every",
            "1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut out = String::new();
    // The header, then the first logged step: it is stepping.
    while !out.lines().any(|l| l.starts_with("base")) {
        assert!(
            stdout.read_line(&mut out).unwrap() > 0,
            "ended early: {out}"
        );
    }
    // SAFETY: kill only sends a signal to the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    stdout.read_to_string(&mut out).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), out, err)
}

#[test]
fn ctrl_c_prints_the_summary_so_far_and_exits_130() {
    let (code, out, err) = interrupt_run(libc::SIGINT);
    assert_eq!(code, Some(130), "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("base (interrupted at step "))
        .unwrap_or_else(|| panic!("no interrupted row in {out}"));
    let step: u64 = row["base (interrupted at step ".len()..]
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(step > 0 && step < 100_000_000, "{row}");
    assert!(
        err.contains(&format!("run `base` interrupted at step {step}")),
        "{err}"
    );
}

#[test]
fn sigterm_prints_the_summary_so_far_and_exits_143() {
    let (code, out, err) = interrupt_run(libc::SIGTERM);
    assert_eq!(code, Some(143), "{err}");
    assert!(out.contains("final loss"), "{out}");
}

#[test]
fn exports_count_the_loss_evaluations_of_each_step() {
    // lbfgs with max_iter = 5 and no line search evaluates 5 times a step (the gradient at the
    // start and after each iteration but the last); sgd once. The last row takes no step.
    let run = |spec: &str, format: &str| {
        let out = common::gradscope(&[
            "run",
            "losses/rosenbrock.toml",
            "-o",
            spec,
            "--steps",
            "3",
            "--every",
            "1",
            "--format",
            format,
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (spec, per_step) in [("lbfgs(lr=0.02, max_iter=5)", "5"), ("sgd", "1")] {
        let jsonl: Vec<serde_json::Value> = run(spec, "jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .take(4)
            .collect();
        let evals: Vec<String> = jsonl.iter().map(|r| r["func_evals"].to_string()).collect();
        assert_eq!(evals, [per_step, per_step, per_step, "null"], "{spec}");

        let csv = run(spec, "csv");
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let col = reader
            .headers()
            .unwrap()
            .iter()
            .position(|h| h == "func_evals")
            .expect("a func_evals column");
        let cells: Vec<String> = reader
            .records()
            .map(|r| r.unwrap()[col].to_string())
            .collect();
        assert_eq!(cells, [per_step, per_step, per_step, ""], "{spec}");
    }
}

#[test]
fn a_summary_points_to_save_params_instead_of_writing_out_a_large_param() {
    // 400 x 300 = 120,000 values, past the 100,000 a summary writes out.
    let file = temp_loss(
        "large",
        "name = \"large\"\nloss = \"sum(w^2)\"\n[params]\nw = \"ones(400, 300)\"\n[optimizer]\nname = \"adam\"\nlr = 0.001\nsteps = 2\n",
    );
    let saved = file.with_extension("safetensors");
    let file = file.to_str().unwrap();
    let out = common::gradscope(&[
        "run",
        file,
        "--format",
        "jsonl",
        "--save-params",
        saved.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a summary");
    assert!(last.len() < 2_000, "a {}-byte summary", last.len());
    let summary: serde_json::Value = serde_json::from_str(last).unwrap();
    assert!(summary["final_params"].is_null());
    let note = summary["final_params_omitted"].as_str().expect("a note");
    assert!(
        note.contains("120000 values") && note.contains("--save-params"),
        "{note}"
    );
    // What it points to holds them: Adam's first two steps move each value by lr, from 1.
    let tensors = candle_core::safetensors::load(&saved, &candle_core::Device::Cpu).unwrap();
    let w: Vec<f32> = tensors["w"].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(w.len(), 120_000);
    assert!(w.iter().all(|&v| (v - 0.998).abs() < 1e-6), "{}", w[0]);
    std::fs::remove_dir_all(saved.parent().unwrap()).ok();
}

#[test]
fn a_headless_run_keeps_its_best_params_only_when_asked() {
    // The best loss, 0, is at step 5 (see `skipping_run`).
    for (retention, kept) in [
        (Retention::Totals { best: false }, None),
        (Retention::Totals { best: true }, Some(5)),
        (Retention::Everything, Some(5)),
    ] {
        let (run, summary) = skipping_run(retention);
        assert_eq!(run.best().map(|b| b.step), kept, "{retention:?}");
        assert_eq!(
            summary.best_step,
            Some(5),
            "the summary counts it either way"
        );
    }
}

#[test]
fn a_headless_run_refuses_to_rewind_instead_of_panicking() {
    let (mut run, _) = skipping_run(Retention::Totals { best: false });
    let refused = run.rewind_to(0).unwrap_err();
    assert!(
        refused.message.contains("no snapshots"),
        "{}",
        refused.message
    );
    assert_eq!(run.step_count(), 1000, "it stays where it was");
}

#[test]
fn a_param_larger_than_the_trajectory_budget_keeps_no_trajectory() {
    // 1100 x 1000 values are 8.8 MB in f64, past the 8 MB a trajectory may hold: only the
    // current point is there. 10 x 10 keeps every step.
    for (dims, points) in [("1100, 1000", 1), ("10, 10", 4)] {
        let c = compiled(&format!(
            "name = \"t\"\nloss = \"sum(w^2)\"\n[params]\nw = \"ones({dims})\"\n"
        ));
        let mut run = Run::new(
            &c,
            RunRequest::new(
                &c,
                0,
                "r".into(),
                config("sgd(lr=0.1)", NonFinitePolicy::Stop),
            ),
        )
        .unwrap();
        for _ in 0..3 {
            run.step().unwrap();
        }
        let trajectory = run.trajectory(None);
        assert_eq!(trajectory.len(), points, "{dims}");
        assert_eq!(trajectory.last().unwrap().0, 3);
    }
}

#[test]
fn a_worker_holds_its_rows_while_the_ui_has_not_applied_its_last_report() {
    use gradscope::run::worker::{self, Command, Event};
    use std::sync::Mutex;
    use std::sync::mpsc::channel;
    // A playing worker reports every 30 ms; while the UI holds the receipt of the last report
    // (it has not applied it), the rows wait and come in one report at the end: a UI that falls
    // behind gets fewer, larger reports instead of a growing queue.
    let bowl = "name = \"bowl\"\nloss = \"(x - 1)^2\"\n[params]\nx = 0.0\n\
                [optimizer]\nname = \"sgd\"\nlr = 0.001\nsteps = 20000\n";
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let emit: worker::Emit = Box::new(move |e: Event| {
        let _ = tx.lock().unwrap().send(e);
    });
    let (commands, inbox) = channel();
    let handle = worker::spawn("t", compiled(bowl), inbox, emit).unwrap();
    commands.send(Command::Play).unwrap();
    let next = || {
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("events")
    };
    let held = loop {
        match next() {
            Event::Reported(receipt) => break receipt,
            Event::Playing(false) => panic!("the run finished before its first report"),
            _ => {}
        }
    };
    let mut reports = Vec::new();
    loop {
        match next() {
            Event::Records(_, rows) => reports.push(rows),
            // Once the run has finished, every row is in.
            Event::Playing(false) => commands.send(Command::Ping(1)).unwrap(),
            Event::Pong(1) => break,
            _ => {}
        }
    }
    assert_eq!(reports.len(), 1, "reports while the last was unread");
    assert_eq!(reports[0].last().map(|r| r.step), Some(20000));
    drop(held);
    commands.send(Command::Shutdown).unwrap();
    handle.join().unwrap();
}

#[test]
fn a_large_param_stepped_in_place_rewinds_past_a_snapshot_bit_for_bit() {
    // Past the allocator's large-block size (32 MiB), the loss's sums of squares run as one op
    // each and Adam's moments are written in place once a step is kept. A snapshot (taken at
    // the lr change) shares the moments of its step: the steps after it must leave them alone,
    // so that rewinding to it replays the same numbers.
    let c = compiled(
        "name = \"large\"\ndtype = \"f32\"\nseed = 3\nloss = \"sum(w^2) + mean(w^2)\"\n\
         [params]\nw = \"randn(2900, 2900)\"\n\
         [optimizer]\nname = \"adam\"\nlr = 0.001\nsteps = 4\n",
    );
    let mut run = Run::new(
        &c,
        RunRequest::new(&c, 0, "r".into(), c.runs[0].settings.clone()),
    )
    .unwrap();
    let w0: Vec<f64> = run.param_values()[0].clone();
    let squares: f64 = w0.iter().map(|x| x * x).sum();
    let loss0 = run.history().get(0).unwrap().core.loss;
    let expected = squares * (1.0 + 1.0 / w0.len() as f64);
    assert!(
        (loss0 - expected).abs() <= 1e-6 * expected,
        "{loss0} against {expected}"
    );
    run.step().unwrap();
    run.step().unwrap();
    run.set_lr_scale(0.5);
    run.step().unwrap();
    run.step().unwrap();
    let losses = |run: &Run| {
        (0..5)
            .map(|k| run.history().get(k).unwrap().core.loss.to_bits())
            .collect::<Vec<_>>()
    };
    let (before, params) = (losses(&run), run.param_values());
    run.rewind_to(2).unwrap();
    run.step().unwrap();
    run.step().unwrap();
    assert_eq!(losses(&run), before);
    assert!(run.param_values() == params, "the re-stepped params differ");
    // Adam's first step moves every value by lr against the sign of its gradient (2.02 w).
    let w1 = {
        run.rewind_to(1).unwrap();
        run.param_values()[0].clone()
    };
    for (a, b) in w0.iter().zip(&w1).step_by(9973) {
        assert!((a - b - 0.001 * a.signum()).abs() < 1e-6, "{a} -> {b}");
    }
}

/// A variant naming another optimizer starts from that optimizer's defaults, as the loss-file
/// README says, keeping only the file's run settings; one keeping the optimizer lays its keys
/// over the file's.
#[test]
fn a_variant_that_switches_optimizer_drops_the_files_hyper_parameters() {
    let c = compiled(
        "name = \"v\"\nloss = \"sum((w - 1)^2)\"\n[params]\nw = \"zeros(2)\"\n\
         [optimizer]\nname = \"adam\"\nlr = 0.01\neps = 0.5\nweight_decay = 0.5\nsteps = 7\n\
         schedule = \"cosine\"\n\
         [[variants]]\nname = \"rms\"\noptimizer = { name = \"rmsprop\" }\n\
         [[variants]]\nname = \"rms eps\"\noptimizer = { name = \"rmsprop\", eps = 0.25 }\n\
         [[variants]]\nname = \"adam lr\"\noptimizer = { name = \"adam\", lr = 0.1 }\n",
    );
    let chains: Vec<String> = c
        .runs
        .iter()
        .map(|r| r.settings.chain().to_string())
        .collect();
    assert_eq!(
        chains,
        [
            "adam(lr=0.01, eps=0.5, weight_decay=0.5)",
            "rmsprop(lr=0.01)",
            "rmsprop(lr=0.01, eps=0.25)",
            "adam(lr=0.1, eps=0.5, weight_decay=0.5)",
        ]
    );
    for r in &c.runs {
        assert_eq!(r.settings.steps, 7, "{}", r.name);
        assert_eq!(
            r.settings.schedule, c.runs[0].settings.schedule,
            "{}",
            r.name
        );
    }
}
