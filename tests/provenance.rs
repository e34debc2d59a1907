//! NaN/Inf provenance: each case names the op, its span, the pass, and the elements.

use std::path::Path;
use std::process::Command;

use gradscope::compile::trace::{Pass, Provenance};
use gradscope::compile::{Evaluator, compile};
use gradscope::lang::file::load_bytes;

/// Loads a one-param file and traces its initial evaluation.
fn trace(loss: &str, data: &str, params: &str, dtype: &str) -> (Provenance, String) {
    let text = format!(
        "name = \"t\"\ndtype = \"{dtype}\"\nloss = \"{loss}\"\n[data]\n{data}\n[params]\n{params}\n"
    );
    let loaded = load_bytes(Path::new("t.toml"), text.clone().into_bytes());
    let (c, d) = compile(loaded.file.expect("loads"));
    let c = c.unwrap_or_else(|| panic!("{d:?}"));
    let ev = Evaluator::new(&c, 0).unwrap();
    let p = ev.trace().unwrap().expect("something is non-finite");
    let source = ev.source().clone();
    let (line, col) = source.line_col(p.span.start);
    let at = text[p.span.clone()].to_string();
    (p, format!("{line}:{col} {at}"))
}

#[test]
fn log_of_zero_in_the_forward_pass() {
    let (p, at) = trace("sum(log(w * x))", "x = \"[1, 0, 2, 0]\"", "w = 1.0", "f32");
    assert_eq!(p.pass, Pass::Forward);
    assert_eq!(p.op, "log(w * x)");
    assert_eq!((p.count, p.total), (2, 4));
    assert_eq!(p.indices, vec![vec![1], vec![3]]);
    assert_eq!(p.inputs, vec!["log of 0", "log of 0"]);
    assert_eq!(at, "3:13 log(w * x)");
}

#[test]
fn sqrt_at_zero_in_the_backward_pass() {
    let (p, at) = trace(
        "sqrt(sum(w^2)) + sum(x)",
        "x = \"[1]\"",
        "w = \"zeros(4)\"",
        "f32",
    );
    assert_eq!(p.pass, Pass::Backward);
    assert_eq!(p.op, "sqrt(sum(w^2))");
    assert_eq!((p.count, p.total), (1, 1));
    assert_eq!(p.inputs, vec!["sqrt backward at 0"]);
    assert_eq!(at, "3:9 sqrt(sum(w^2))");
}

#[test]
fn exp_overflowing_f32_but_not_f64() {
    // e^92.1 is about 1e40: past f32's 3.4e38, well inside f64.
    let (p, _) = trace("sum(exp(w * x))", "x = \"[1, 92.1]\"", "w = 1.0", "f32");
    assert_eq!(
        (p.pass, p.op.as_str(), p.count),
        (Pass::Forward, "exp(w * x)", 1)
    );
    assert_eq!(p.inputs, vec!["exp of 92.099998"]); // 92.1 rounded to f32
    let text = "name = \"t\"\ndtype = \"f64\"\nloss = \"sum(exp(w * x))\"\n[data]\nx = \"[1, 92.1]\"\n[params]\nw = 1.0\n";
    let (c, _) = compile(load_bytes(Path::new("t.toml"), text.into()).file.unwrap());
    assert!(
        Evaluator::new(&c.unwrap(), 0)
            .unwrap()
            .trace()
            .unwrap()
            .is_none()
    );
}

#[test]
fn zero_over_zero() {
    let (p, _) = trace("sum((w - x) / (w - x))", "x = \"[1, 2]\"", "w = 1.0", "f64");
    assert_eq!(
        (p.pass, p.op.as_str(), p.count),
        (Pass::Forward, "(w - x) / (w - x)", 1)
    );
    assert_eq!(p.inputs, vec!["0 / 0"]);
    assert_eq!(p.indices, vec![vec![0]]);
}

#[test]
fn relu_swallowing_the_value_does_not_hide_the_origin() {
    // relu(-inf) = 0 keeps the loss finite, but the gradient through log at 0 is not.
    let (p, _) = trace(
        "sum(relu(log(w * x)))",
        "x = \"[1, 0, 2]\"",
        "w = 1.0",
        "f32",
    );
    assert_eq!(
        (p.pass, p.op.as_str(), p.count),
        (Pass::Forward, "log(w * x)", 1)
    );
}

#[test]
fn run_halts_at_the_step_and_names_op_line_column_pass_and_count() {
    let dir = std::env::temp_dir().join(format!("gradscope-prov-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("nan_at_3.toml");
    // dL/dx = 1, so SGD with lr 1 walks x = 2.5, 1.5, 0.5, -0.5: sqrt of -0.5 at step 3.
    std::fs::write(&file, "name = \"nan at 3\"\nloss = \"sqrt(detach(x)) + x\"\n[params]\nx = 2.5\n[optimizer]\nname = \"sgd\"\nlr = 1.0\nsteps = 10\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .arg("run")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("halted at step 3: the loss is NaN"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "non-finite values start here at step 3: `sqrt(detach(x))` in the forward pass (1 of 1 elements)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("nan_at_3.toml:2:9"), "{stderr}");
    assert!(stderr.contains("sqrt of -0.500000"), "{stderr}");
    // `precision` there: NaN in f64 too, which no precision explains; it says so, and where.
    let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args(["precision", "--at-step", "5"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("the loss is NaN in f64 too, so this is no precision problem; it starts at 2:9 `sqrt(detach(x))`"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn precision_counts_overflow_and_subnormal_values_against_f64() {
    // In f16, e^12 = 162755 is past the largest finite 65504, and 1e-3 * 1e-3 = 1e-6 is below
    // the smallest normal 6.1e-5.
    let text = "name = \"p\"\ndtype = \"f16\"\nloss = \"sum(exp(x * w)) + sum(t * v)\"\n[data]\nx = \"[12, 1]\"\nt = \"[1e-3, 1]\"\n[params]\nw = 1.0\nv = 1e-3\n";
    let (c, _) = compile(load_bytes(Path::new("p.toml"), text.into()).file.unwrap());
    let stats = Evaluator::new(&c.unwrap(), 0).unwrap().precision().unwrap();
    let exp = stats
        .iter()
        .find(|s| s.op == "exp(x * w)")
        .expect("exp reported");
    assert_eq!(
        (exp.total, exp.overflowed, exp.flushed, exp.subnormal),
        (2, 1, 0, 0)
    );
    let mul = stats
        .iter()
        .find(|s| s.op == "t * v" && s.subnormal > 0)
        .expect("t * v reported");
    assert_eq!((mul.total, mul.subnormal), (2, 1));
}

#[test]
fn the_f16_overflow_demo_halts_only_in_its_naive_f16_run() {
    use gradscope::run::{Run, RunRequest};
    let (c, _) = gradscope::load::load_compiled(Path::new("losses/f16_exp_overflow.toml")).unwrap();
    let halt_of = |run: usize| {
        let mut r = Run::new(
            &c,
            RunRequest::new(&c, run, "r".into(), c.runs[run].settings.clone()),
        )
        .unwrap();
        while !r.is_done() {
            r.step().unwrap();
        }
        r.halted
    };
    assert!(halt_of(0).is_none(), "f32 survives");
    let h = halt_of(1).expect("naive f16 halts");
    let p = h.provenance.expect("traced");
    assert_eq!((p.pass, p.op.as_str()), (Pass::Forward, "sum(exp(w * x))"));
    assert!(h.step > 10 && h.step < 100, "{}", h.step);
    assert!(halt_of(2).is_none(), "logsumexp in f16 survives");
}

#[test]
fn tracing_through_a_matmul_whose_data_side_has_no_gradient() {
    // d norm(w)/dw = w / |w| is 0/0 at w = 0. The tracer probes every value, so `-A` (data)
    // carries gradient there although the program never differentiates it: candle used to panic
    // ("grad not populated") instead of tracing.
    let (p, at) = trace(
        "sum((-A @ w - t)^2) + norm(w)",
        "A = \"[[1, 2], [3, 4], [5, 6]]\"\nt = \"[1, 0, 1]\"",
        "w = \"zeros(2)\"",
        "f32",
    );
    assert_eq!((p.pass, p.op.as_str()), (Pass::Backward, "norm(w)"));
    assert_eq!((p.count, p.total), (2, 2));
    assert_eq!(at, "3:31 norm(w)");
}

#[test]
fn ops_are_named_as_the_user_wrote_them() {
    // 1000^2 = 1e6 overflows f16 (max 65504) at the square, which messages call `^2`.
    let (p, at) = trace("sum((w * x)^2)", "x = \"[1, 1000]\"", "w = 1.0", "f16");
    assert_eq!(
        (p.pass, p.op.as_str(), p.count),
        (Pass::Forward, "(w * x)^2", 1)
    );
    assert_eq!(at, "3:13 (w * x)^2");
}

/// The precision report of a one-param file (data `t`, param `v`) in f16.
fn f16_precision(loss: &str) -> Vec<gradscope::compile::trace::PrecisionStats> {
    let text = format!(
        "name = \"p\"\ndtype = \"f16\"\nloss = \"{loss}\"\n[data]\nt = \"[1e-3, 1]\"\n[params]\nv = 1e-3\n"
    );
    let (c, _) = compile(load_bytes(Path::new("p.toml"), text.into()).file.unwrap());
    Evaluator::new(&c.unwrap(), 0).unwrap().precision().unwrap()
}

#[test]
fn a_negation_is_quoted_as_written() {
    // 1e-3 * 1e-3 = 1e-6 is below f16's smallest normal 6.1e-5, and so is its negation.
    let stats = f16_precision("sum(-(t * v))");
    let neg = stats
        .iter()
        .find(|s| s.op == "-(t * v)")
        .expect("{stats:?}");
    assert_eq!((neg.total, neg.subnormal), (2, 1));
}

#[test]
fn an_indexing_is_quoted_as_written() {
    // (t * v)[0] = 1e-3 * 1e-3 = 1e-6: subnormal in f16.
    let stats = f16_precision("(t * v)[0] + sum(t * v)");
    let index = stats
        .iter()
        .find(|s| s.op == "(t * v)[0]")
        .expect("{stats:?}");
    assert_eq!((index.total, index.subnormal), (1, 1));
}

#[test]
fn a_long_op_is_quoted_cut_after_a_whole_word() {
    // e^900 overflows f32; the exp's 42 characters are cut after a whole word, within 40.
    let (p, _) = trace(
        "sum(exp(w * x + x + x + x + x + x + x + x + x))",
        "x = \"[100]\"",
        "w = 1.0",
        "f32",
    );
    assert_eq!(p.op, "exp(w * x + x + x + x + x + x + x + x …");
}

#[test]
fn an_eps_too_small_for_f16_gets_the_smallest_eps_that_keeps_log_finite() {
    // At d = w - x = 0 log's backward is 1/(d^2 + eps). f16 holds 1e-7 as the subnormal
    // 2 * 2^-24 = 1.19e-7, so it reaches 2^23 = 8.39e6 > 65504. 1/eps <= 65504 needs
    // eps >= 1.5266e-5; f16's nearest, 2^-16, has 1/eps = 65536, so the smallest is the next
    // value 257 * 2^-24 = 1.5318e-5, rounded up to three digits.
    let (p, _) = trace(
        "sum(log((w - x)^2 + 1e-7))",
        "x = \"[1, 2]\"",
        "w = 1.0",
        "f16",
    );
    assert_eq!(
        (p.pass, p.op.as_str()),
        (Pass::Backward, "log((w - x)^2 + 1e-7)")
    );
    assert_eq!(
        p.help,
        "eps = 1e-7 is too small for f16, where it is subnormal (held as 1.19e-7, below the \
         smallest normal 6.10e-5): log's backward 1/(x + eps) reaches 8.39e6 at x = 0, past \
         f16's max 65504; the smallest eps that keeps it finite is 1.54e-5 (1/eps ≤ 65504)"
    );
}

#[test]
fn the_same_eps_in_f32_is_fine() {
    // 1/1e-7 = 1e7 is far below f32's 3.4e38: nothing goes non-finite, so there is no hint.
    let text = "name = \"t\"\ndtype = \"f32\"\nloss = \"sum(log((w - x)^2 + 1e-7))\"\n[data]\nx = \"[1, 2]\"\n[params]\nw = 1.0\n";
    let (c, _) = compile(load_bytes(Path::new("t.toml"), text.into()).file.unwrap());
    let ev = Evaluator::new(&c.unwrap(), 0).unwrap();
    assert!(ev.trace().unwrap().is_none());
}

#[test]
fn an_eps_that_f16_rounds_to_zero_gets_the_smallest_eps_that_keeps_sqrt_finite() {
    // 1e-12 is below half of f16's smallest subnormal 2^-24, so it rounds to 0 and sqrt's
    // backward 1/(2 sqrt(d^2 + eps)) is infinite at d = 0. 1/(2 sqrt(eps)) <= 65504 needs only
    // eps >= 1/(4 * 65504^2) = 5.8e-11: the smallest f16 above that is 2^-24 = 5.96e-8.
    let (p, _) = trace(
        "sum(sqrt((w - x)^2 + 1e-12))",
        "x = \"[1, 2]\"",
        "w = 1.0",
        "f16",
    );
    assert_eq!(
        (p.pass, p.op.as_str()),
        (Pass::Backward, "sqrt((w - x)^2 + 1e-12)")
    );
    assert_eq!(
        p.help,
        "eps = 1e-12 is too small for f16, which rounds it to 0: sqrt's backward \
         1/(2 sqrt(x + eps)) is infinite at x = 0; the smallest eps that keeps it finite is \
         5.97e-8 (1/(2 sqrt(eps)) ≤ 65504)"
    );
}

#[test]
fn an_eps_too_small_for_f16_gets_the_smallest_eps_that_keeps_a_division_finite() {
    // 1 / (d^2 + eps) at d = 0: the gradient into the denominator is -1/eps^2, and f16 holds
    // 1e-3 as 1.0004e-3, so it reaches 1/1.0004e-3^2 = 9.99e5 > 65504. 1/eps^2 <= 65504 needs
    // eps >= sqrt(1/65504) = 3.9072e-3: f16's 2^-8 = 3.90625e-3 is just below, so the smallest
    // is 2^-8 + 2^-18 = 3.91006e-3, rounded up to three digits.
    let (p, _) = trace(
        "sum(1 / ((w - x)^2 + 1e-3))",
        "x = \"[1, 2]\"",
        "w = 1.0",
        "f16",
    );
    assert_eq!(
        (p.pass, p.op.as_str()),
        (Pass::Backward, "1 / ((w - x)^2 + 1e-3)")
    );
    assert_eq!(
        p.help,
        "eps = 1e-3 is too small for f16: the division's backward |a|/(x + eps)^2 reaches \
         9.99e5 at x = 0, past f16's max 65504; the smallest eps that keeps it finite is \
         3.92e-3 (|a|/eps^2 and 1/eps ≤ 65504, with |a| ≤ 1 here)"
    );
}

/// A product whose first factor is a call is still a product: its inputs are written as the
/// product's (`1875 * 100`, not "sum of 1875"), and the help names the overflow.
#[test]
fn an_overflowing_product_of_a_call_is_described_as_the_product() {
    let (p, at) = trace(
        "sum(w^4) * 100 + sum(x)",
        "x = \"[1]\"",
        "w = \"ones(3) * 5\"",
        "f16",
    );
    assert_eq!(p.pass, Pass::Forward);
    assert_eq!(p.op, "sum(w^4) * 100");
    assert_eq!(p.inputs, vec!["1875.000000 * 100"]);
    assert_eq!(at, "3:9 sum(w^4) * 100");
    assert!(
        p.help.contains("overflowed the dtype (f16 past 65504"),
        "{}",
        p.help
    );
}
