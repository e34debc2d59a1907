//! Gradient check: every bundled loss passes in f64 (but the one whose NaN gradient is its point), a gradient that is not the derivative of the
//! value fails with its worst element, kinks are kinks, and large params are sampled.

use std::path::Path;
use std::process::Command;

use gradscope::compile::gradcheck::{SAMPLE, Verdict, gradcheck};
use gradscope::compile::{CompiledFile, compile};
use gradscope::lang::file::{DType, load_bytes};
use gradscope::load::discover;
use gradscope::load::load_compiled;

fn compiled(text: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new("g.toml"), text.as_bytes().to_vec());
    compile(loaded.file.expect("loads")).0.expect("compiles")
}

#[test]
fn every_bundled_loss_passes_in_f64() {
    let (files, _) = discover(&["losses".into()]);
    // bench/mlp needs 768 forward passes of a 4096x256 tanh MLP in f64 (40 s in a release
    // build, minutes in a debug one); `gradscope gradcheck --dtype f64 losses/bench/mlp.toml`
    // checks it by hand.
    for f in files.into_iter().filter(|f| !f.ends_with("bench/mlp.toml")) {
        let (mut c, _) = load_compiled(&f).unwrap();
        c.runs.iter_mut().for_each(|r| r.dtype = DType::F64);
        for run in 0..c.runs.len() {
            for check in gradcheck(&c, run, c.runs[run].dtype, None, 0).unwrap() {
                // custom_gradients.toml's straight-through rounding differs on purpose, and the
                // naive norm's NaN gradient at w = 0 is the point of norm_at_zero.toml.
                let want = if f.ends_with("custom_gradients.toml") {
                    Verdict::CustomGradient
                } else if f.ends_with("norm_at_zero.toml") && c.runs[run].name.starts_with("naive")
                {
                    Verdict::Fail
                } else {
                    Verdict::Pass
                };
                assert_eq!(
                    check.verdict,
                    want,
                    "{} run {} param {}: {check:?}",
                    f.display(),
                    c.runs[run].name,
                    check.name
                );
            }
        }
    }
}

#[test]
fn a_gradient_that_is_not_the_derivative_fails_at_its_worst_element() {
    // d/dw sum(detach(w) * w) by autograd is w; the function's derivative is 2w.
    let c = compiled(
        "name = \"g\"\ndtype = \"f64\"\nloss = \"sum(detach(w) * w)\"\n[params]\nw = \"[0.5, -3.0, 1.0]\"\n",
    );
    let checks = gradcheck(&c, 0, c.runs[0].dtype, None, 0).unwrap();
    assert_eq!(checks[0].verdict, Verdict::Fail);
    assert_eq!(checks[0].worst, vec![1]);
    assert!((checks[0].max_abs - 3.0).abs() < 1e-6, "{:?}", checks[0]);
}

#[test]
fn kinks_are_reported_as_kinks_not_failures() {
    let c = compiled(
        "name = \"g\"\ndtype = \"f64\"\nloss = \"sum(abs(w)) + sum(relu(w))\"\n[params]\nw = \"[0.0, 1.0, 0.0, -2.0]\"\n",
    );
    let checks = gradcheck(&c, 0, c.runs[0].dtype, None, 0).unwrap();
    assert_eq!(checks[0].verdict, Verdict::Pass);
    assert_eq!(checks[0].kinks, 2);
}

#[test]
fn large_params_are_sampled_and_tolerances_follow_the_dtype() {
    let c = compiled(
        "name = \"g\"\nloss = \"mean(tanh(w) ^ 2)\"\nseed = 3\n[params]\nw = \"randn(40, 25)\"\n",
    );
    let checks = gradcheck(&c, 0, c.runs[0].dtype, None, 7).unwrap();
    assert_eq!((checks[0].checked, checks[0].total), (SAMPLE, 1000));
    assert_eq!(checks[0].verdict, Verdict::Pass, "{:?}", checks[0]);
}

#[test]
fn the_command_exits_one_on_a_failure() {
    let dir = std::env::temp_dir().join(format!("gradscope-gc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"g\"\nloss = \"sum(detach(w) * w)\"\n[params]\nw = \"[0.5, -3.0]\"\n",
    )
    .unwrap();
    let run = |p: &Path| {
        Command::new(env!("CARGO_BIN_EXE_gradscope"))
            .arg("gradcheck")
            .arg(p)
            .output()
            .unwrap()
    };
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));
    assert_eq!(
        run(Path::new("losses/rosenbrock.toml")).status.code(),
        Some(0)
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A NaN from autograd fails even where the loss has a kink (`sqrt(w^2)` is `|w|`, whose
/// one-sided differences disagree at 0), and the errors say NaN rather than 0.
#[test]
fn a_nan_gradient_fails_even_at_a_kink() {
    let c = compiled(
        "name = \"g\"\ndtype = \"f64\"\nloss = \"sum(sqrt(w^2)) + b^2\"\n[params]\nw = \"[0.0, 1.0]\"\nb = 0.5\n",
    );
    let checks = gradcheck(&c, 0, c.runs[0].dtype, None, 0).unwrap();
    assert_eq!(checks[0].verdict, Verdict::Fail, "{:?}", checks[0]);
    assert_eq!(checks[0].kinks, 0);
    assert!(
        checks[0].max_abs.is_nan() && checks[0].max_tol_ratio.is_nan(),
        "{:?}",
        checks[0]
    );
    assert_eq!(checks[0].worst, vec![0]);
    assert!(
        checks[0]
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("autograd gives NaN")),
        "{:?}",
        checks[0]
    );
    assert_eq!(checks[1].verdict, Verdict::Pass);
}
