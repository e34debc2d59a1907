//! `[functions]`: user functions with their own gradient, as custom ops.

use std::path::Path;

use gradscope::compile::gradcheck::{Verdict, gradcheck};
use gradscope::compile::{Evaluator, compile};
use gradscope::lang::file::load_bytes;

fn load(
    text: &str,
) -> (
    Option<gradscope::compile::CompiledFile>,
    Vec<gradscope::diagnostic::Diagnostic>,
) {
    let loaded = load_bytes(Path::new("f.toml"), text.as_bytes().to_vec());
    match loaded.file {
        Some(f) => compile(f),
        None => (None, loaded.diagnostics),
    }
}

const STE: &str = "name = \"ste\"\ndtype = \"f64\"\nloss = \"\"\"\nq = round_ste(w * 4) / 4\nmean((q - t)^2)\n\"\"\"\n[functions.round_ste]\nargs = [\"x\"]\nvalue = \"round(x)\"\ngrad = \"g\"\n[data]\nt = \"[0.3, -0.6, 1.1]\"\n[params]\nw = \"[0.1, 0.2, 0.3]\"\n";

#[test]
fn a_straight_through_estimator_rounds_forward_and_passes_the_gradient() {
    let (c, diags) = load(STE);
    let c = c.unwrap_or_else(|| panic!("{diags:?}"));
    let ev = Evaluator::new(&c, 0).unwrap();
    let e = ev.evaluate().unwrap();
    // q = round(4w)/4 = [0, 0.25, 0.25]; dL/dw = 2 (q - t) / 3 · (d round_ste / dx = 1) · 4 / 4.
    let q = [0.0, 0.25, 0.25];
    let t = [0.3, -0.6, 1.1];
    let want: Vec<f64> = q.iter().zip(&t).map(|(q, t)| 2.0 * (q - t) / 3.0).collect();
    let got: Vec<f64> = e.grads[0].to_vec1().unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
    }
    let loss: f64 = q
        .iter()
        .zip(&t)
        .map(|(q, t)| (q - t) * (q - t))
        .sum::<f64>()
        / 3.0;
    assert!((e.loss - loss).abs() < 1e-12);
    // It differs from the value's derivative (0 almost everywhere) on purpose: a warning, and
    // gradcheck says so instead of failing.
    assert!(
        diags
            .iter()
            .any(|d| !d.is_error() && d.message.contains("`round_ste`")),
        "{diags:?}"
    );
    assert_eq!(
        gradcheck(&c, 0, c.runs[0].dtype, None, 0).unwrap()[0].verdict,
        Verdict::CustomGradient
    );
}

#[test]
fn a_wrong_custom_gradient_is_flagged_with_its_span() {
    let text = "name = \"bad\"\ndtype = \"f64\"\nloss = \"sum(sq(w))\"\n[functions.sq]\nargs = [\"x\"]\nvalue = \"x^2\"\ngrad = \"g * x\"\n[params]\nw = \"[1, 2]\"\n";
    let (c, diags) = load(text);
    assert!(c.is_some());
    let d = diags
        .iter()
        .find(|d| d.message.contains("gradient of `sq`"))
        .expect("flagged");
    assert_eq!(d.line_col(), Some((7, 9)));
}

#[test]
fn a_correct_custom_gradient_matches_autograd_and_draws_no_warning() {
    let text = "name = \"ok\"\ndtype = \"f64\"\nloss = \"sum(cube(w) * v)\"\n[functions.cube]\nargs = [\"x\"]\nvalue = \"x^3\"\ngrad = \"3 * g * x^2\"\n[data]\nv = \"[1, -2]\"\n[params]\nw = \"[0.5, 1.5]\"\n";
    let (c, diags) = load(text);
    assert!(diags.is_empty(), "{diags:?}");
    let c = c.unwrap();
    let g: Vec<f64> = Evaluator::new(&c, 0).unwrap().evaluate().unwrap().grads[0]
        .to_vec1()
        .unwrap();
    assert_eq!(g, vec![3.0 * 0.25, -2.0 * 3.0 * 2.25]);
    assert_eq!(
        gradcheck(&c, 0, c.runs[0].dtype, None, 0).unwrap()[0].verdict,
        Verdict::Pass
    );
}

#[test]
fn malformed_functions_are_errors() {
    let cases = [
        (
            "[functions.exp]\nargs = [\"x\"]\nvalue = \"x\"\ngrad = \"g\"\n",
            "cannot name a function",
        ),
        (
            "[functions.f]\nargs = [\"x\", \"y\"]\nvalue = \"x * y\"\ngrad = \"g\"\n",
            "2 arguments but 1 gradient",
        ),
        (
            "[functions.f]\nargs = [\"x\"]\nvalue = \"x\"\ngrad = \"sum(g)\"\n",
            "has shape []",
        ),
    ];
    for (table, want) in cases {
        let text = format!("name = \"m\"\nloss = \"sum(f(w))\"\n{table}[params]\nw = \"[1, 2]\"\n");
        let (_, diags) = load(&text);
        assert!(
            diags
                .iter()
                .any(|d| d.is_error() && d.message.contains(want)),
            "{want}: {diags:?}"
        );
    }
}
