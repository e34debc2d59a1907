//! The lr range test: its lr schedule, smoothing and stop rule against hand computations, its
//! suggestions on a quadratic whose stable lrs are known, that it leaves the run it starts from
//! as it was, and `gradscope lrfind` end to end.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use common::gradscope;
use gradscope::compile::{CompiledFile, compile};
use gradscope::lang::file::load_bytes;
use gradscope::run::lrfind::{Curve, LrRange, RangeError, Smoother, Stop, lr_find};
use gradscope::run::{Run, RunRequest};

fn compiled(text: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new("t.toml"), text.as_bytes().to_vec());
    let (c, d) = compile(loaded.file.expect("loads"));
    c.unwrap_or_else(|| panic!("{d:?}"))
}

fn run_of(c: &CompiledFile) -> Run {
    Run::new(c, RunRequest::of(c, 0).unwrap()).unwrap()
}

/// 0.5 * sum(d * w^2) with curvatures d = 1, 10, 100 (λ = 100) from w = 1, under plain SGD:
/// gradient descent diverges along the stiffest axis once lr > 2/λ = 0.02.
const QUADRATIC: &str = "name = \"quadratic\"\ndtype = \"f64\"\nloss = \"0.5 * sum(d * w^2)\"\n\
    [data]\nd = \"[1, 10, 100]\"\n[params]\nw = \"[1, 1, 1]\"\n\
    [optimizer]\nname = \"sgd\"\nlr = 0.01\n";
const LAMBDA: f64 = 100.0;

fn default_range() -> LrRange {
    LrRange::new(1e-7, 10.0, 100).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

#[test]
fn the_lr_grows_by_the_same_factor_each_step_from_from_to_to() {
    // from * (to/from)^(i/(steps-1)): 1e-3 * 10^i over 5 steps to 10.
    let range = LrRange::new(1e-3, 10.0, 5).unwrap();
    let lrs: Vec<f64> = (0..5).map(|i| range.lr(i)).collect();
    for (lr, want) in lrs.iter().zip([1e-3, 1e-2, 1e-1, 1.0, 10.0]) {
        assert!(close(*lr, want), "{lrs:?}");
    }
    assert_eq!(range.lr(0), 1e-3);
}

#[test]
fn each_step_of_the_test_uses_its_lr() {
    // SGD on 0.5 x^2 from x = 1: the step at lr_i takes x to (1 - lr_i) x, so the loss after
    // step i is 0.5 * prod_{k<=i} (1 - lr_k)^2, whatever lr the file's optimizer has.
    let c = compiled(
        "name = \"x2\"\ndtype = \"f64\"\nloss = \"0.5 * x^2\"\n[params]\nx = 1.0\n\
         [optimizer]\nname = \"sgd\"\nlr = 0.3\n",
    );
    let range = LrRange::new(1e-2, 0.5, 6).unwrap();
    let found = lr_find(&run_of(&c), &range, |_, _| ControlFlow::Continue(())).unwrap();
    assert_eq!(found.stop, Stop::Finished);
    let mut x = 1.0;
    for (i, p) in found.curve.points.iter().enumerate() {
        x *= 1.0 - range.lr(i);
        assert_eq!(p.lr, range.lr(i));
        assert!(
            close(p.loss, 0.5 * x * x),
            "step {i}: {} vs {}",
            p.loss,
            0.5 * x * x
        );
    }
    assert_eq!(found.curve.points.len(), 6);
}

#[test]
fn the_smoothed_loss_is_the_debiased_moving_average() {
    // avg_1 = 0.02 * 4 = 0.08, / (1 - 0.98) = 4;
    // avg_2 = 0.98 * 0.08 + 0.02 * 2 = 0.1184, / (1 - 0.98^2 = 0.0396) = 2.98989898...;
    // avg_3 = 0.98 * 0.1184 + 0.02 * 1 = 0.136032, / (1 - 0.98^3 = 0.058808) = 2.31315467...
    let mut s = Smoother::new();
    let got: Vec<f64> = [4.0, 2.0, 1.0].iter().map(|&l| s.push(l)).collect();
    for (g, want) in got.iter().zip([4.0, 0.1184 / 0.0396, 0.136032 / 0.058808]) {
        assert!(close(*g, want), "{got:?}");
    }
}

#[test]
fn a_loss_going_negative_stops_only_once_it_rises_3x_its_drop() {
    // Smoothed: 1, -0.0101, -1.027, -2.051, -2.664, -3.074 (the minimum), then 3.459, 8.356,
    // 12.163 as the loss jumps to 40. The drop from the start is 4.074, so the test stops once
    // the rise passes 12.22: at 12.163 + 3.074 = 15.24 (point 8), not at 11.43 (point 7).
    // fastai's "4x the minimum" would have stopped at point 1 (-0.0101 > 4 * -0.0101).
    let losses = [1.0, -1.0, -3.0, -5.0, -5.0, -5.0, 40.0, 40.0, 40.0, 40.0];
    let mut curve = Curve::new();
    let stops: Vec<Option<Stop>> = losses.iter().map(|&l| curve.push(1.0, l)).collect();
    assert_eq!(stops.iter().position(Option::is_some), Some(8), "{stops:?}");
    assert_eq!(stops[8], Some(Stop::Diverged));
}

#[test]
fn a_nonfinite_loss_stops_the_test() {
    let mut curve = Curve::new();
    assert_eq!(curve.push(1e-3, 2.0), None);
    assert_eq!(curve.push(1e-2, 1.0), None);
    assert_eq!(curve.push(1e-1, f64::INFINITY), Some(Stop::NonFinite));
    assert!(curve.points[2].smoothed.is_nan());
    // The suggestions read only the finite points.
    assert_eq!(curve.min_tenth(), Some(1e-3));
    assert_eq!(curve.steepest(), Some(1e-3));
}

#[test]
fn a_loss_that_never_falls_suggests_no_lr_and_says_it_found_no_descent() {
    // The lowest loss is where the test started: a tenth of its lr was never tried. It stops at
    // its first rise (3x a drop of 0), saying so rather than calling it a divergence.
    let mut curve = Curve::new();
    let stops: Vec<Option<Stop>> = [(1e-7, 1.0), (1e-6, 1.5), (1e-5, 2.0)]
        .iter()
        .map(|&(lr, loss)| curve.push(lr, loss))
        .collect();
    assert_eq!(stops, [None, Some(Stop::NoDescent), Some(Stop::NoDescent)]);
    assert!(
        Stop::NoDescent
            .to_string()
            .starts_with("no descent from here")
    );
    assert_eq!(curve.min_tenth(), None);
    assert_eq!(curve.steepest(), None);
}

#[test]
fn a_run_whose_loss_turns_nan_ends_the_test_there() {
    // dL/dx = 1, so SGD moves x = 2.5 by -lr_i: lrs 0.5, 1, 2, 4 take it to 2, 1, -1, where
    // sqrt(detach(x)) is NaN (the run's `stop` policy halts it there).
    let c = compiled(
        "name = \"nan\"\ndtype = \"f64\"\nloss = \"sqrt(detach(x)) + x\"\n[params]\nx = 2.5\n\
         [optimizer]\nname = \"sgd\"\nlr = 1\n",
    );
    let range = LrRange::new(0.5, 4.0, 4).unwrap();
    let found = lr_find(&run_of(&c), &range, |_, _| ControlFlow::Continue(())).unwrap();
    assert_eq!(found.stop, Stop::NonFinite);
    let losses: Vec<f64> = found.curve.points.iter().map(|p| p.loss).collect();
    assert_eq!(losses[..2], [2f64.sqrt() + 2.0, 2.0]);
    assert!(losses[2].is_nan(), "{losses:?}");
}

#[test]
fn the_suggestions_on_a_quadratic_lie_below_the_divergence_bound() {
    let c = compiled(QUADRATIC);
    let found = lr_find(&run_of(&c), &default_range(), |_, _| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(found.stop, Stop::Diverged);
    let window = 2.0 / (100.0 * LAMBDA)..2.0 / LAMBDA;
    let steepest = found.curve.steepest().unwrap();
    let min_tenth = found.curve.min_tenth().unwrap();
    assert!(window.contains(&steepest), "steepest {steepest}");
    assert!(window.contains(&min_tenth), "minimum / 10 {min_tenth}");
}

/// Everything about a run that stepping could change, as text (not the wall time of its steps).
fn state_of(run: &Run) -> String {
    let cores: Vec<_> = run
        .history()
        .cores()
        .iter()
        .map(|c| gradscope::run::history::Core { wall_us: 0.0, ..*c })
        .collect();
    format!(
        "{:?} {cores:?} {:?} {} {:?}",
        run.param_values(),
        run.optimizer_state(),
        run.lr_scale,
        run.current().map(|e| e.loss)
    )
}

#[test]
fn the_test_leaves_the_run_it_starts_from_as_it_was() {
    // Adam keeps moments and a step count: a test that touched them would change the next step.
    let text = QUADRATIC.replace("\"sgd\"", "\"adam\"");
    let c = compiled(&text);
    let (mut run, mut twin) = (run_of(&c), run_of(&c));
    for _ in 0..5 {
        run.step().unwrap();
        twin.step().unwrap();
    }
    let before = state_of(&run);
    let found = lr_find(&run, &default_range(), |_, _| ControlFlow::Continue(())).unwrap();
    assert!(found.curve.points.len() > 10);
    assert_eq!(state_of(&run), before);
    run.step().unwrap();
    twin.step().unwrap();
    assert_eq!(state_of(&run), state_of(&twin));
}

#[test]
fn the_callback_can_stop_the_test() {
    let c = compiled(QUADRATIC);
    let found = lr_find(&run_of(&c), &default_range(), |i, _| match i {
        3 => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .unwrap();
    assert_eq!(found.stop, Stop::Interrupted);
    assert_eq!(found.curve.points.len(), 4);
}

#[test]
fn ranges_that_are_not_one_are_refused() {
    let cases = [
        (
            1.0,
            1.0,
            10,
            RangeError::NotIncreasing { from: 1.0, to: 1.0 },
        ),
        (
            10.0,
            1.0,
            10,
            RangeError::NotIncreasing {
                from: 10.0,
                to: 1.0,
            },
        ),
        (0.0, 1.0, 10, RangeError::NotPositive { from: 0.0, to: 1.0 }),
        (
            1e-3,
            f64::INFINITY,
            10,
            RangeError::NotPositive {
                from: 1e-3,
                to: f64::INFINITY,
            },
        ),
        (1e-3, 1.0, 1, RangeError::TooFewSteps(1)),
    ];
    for (from, to, steps, error) in cases {
        assert_eq!(LrRange::new(from, to, steps), Err(error));
    }
}

/// The quadratic written under a name of `test`'s own, as tests run in parallel.
fn quadratic_file(test: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "gradscope-lrfind-{test}-{}.toml",
        std::process::id()
    ));
    std::fs::write(&path, QUADRATIC).unwrap();
    path
}

#[test]
fn lrfind_prints_the_curve_the_suggestions_and_a_plot() {
    let file = quadratic_file("table");
    let o = gradscope(&["lrfind", file.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for says in [
        "lr range test of base (",
        "step           lr           loss       smoothed",
        "stopped at step",
        "more than 3x the drop",
        "steepest descent of the smoothed loss against log lr",
        "the lr of the lowest smoothed loss, divided by 10",
        "(lr, log scale; s: steepest, m: minimum / 10)",
    ] {
        assert!(out.contains(says), "no `{says}` in\n{out}");
    }
    assert!(out.contains('•') && out.contains('└'), "{out}");
}

#[test]
fn lrfind_writes_csv_and_json_lines_with_the_suggestions() {
    let file = quadratic_file("formats");
    let csv = gradscope(&[
        "lrfind",
        file.to_str().unwrap(),
        "--format",
        "csv",
        "--steps",
        "40",
    ]);
    let text = String::from_utf8_lossy(&csv.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("step,lr,loss,smoothed"));
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect();
    assert!(rows.len() > 10 && rows.len() <= 40, "{text}");
    assert_eq!(rows[0][1], 1e-7);
    // The suggestions go to stderr, so stdout stays CSV.
    assert!(String::from_utf8_lossy(&csv.stderr).contains("suggested lr"));

    let jsonl = gradscope(&["lrfind", file.to_str().unwrap(), "--format", "jsonl"]);
    let text = String::from_utf8_lossy(&jsonl.stdout);
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = rows.last().unwrap();
    assert_eq!(summary["stop"], "diverged");
    let steepest = summary["steepest_lr"].as_f64().unwrap();
    assert!((2.0 / (100.0 * LAMBDA)..2.0 / LAMBDA).contains(&steepest));
    assert_eq!(rows[1]["step"], 1);
}

#[test]
fn malformed_lrfind_arguments_get_a_diagnostic() {
    let file = quadratic_file("malformed");
    let f = file.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &["lrfind", f, "--from", "1", "--to", "0.1"],
            "must be below --to",
        ),
        (
            &["lrfind", f, "--from", "-1"],
            "must be positive and finite",
        ),
        (&["lrfind", f, "--steps", "1"], "at least 2 steps"),
        (&["lrfind", "no/such/file.toml"], "no/such/file.toml"),
        (&["lrfind", f, "-o", "sgd(lr=)"], "-o sgd(lr=)"),
        (&["lrfind", f, "--variant", "all"], "lrfind tests one run"),
    ];
    for (args, says) in cases {
        let o = gradscope(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
