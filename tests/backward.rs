//! The gradient as a program (`gradscope grad`): every rule agrees with autograd exactly (to
//! 1e-12 normwise in f64, non-finite values in the same places), including at ties and kinks,
//! where the masks must split the gradient as autograd does; the printed formulas read as the
//! issue asks; ops the generator cannot write are diagnostics at their span; and every bundled
//! file passes, its programs snapshotted.

use std::path::{Path, PathBuf};

use gradscope::compile::backward::check::{Agreement, TOLERANCE, check, locate_nonfinite};
use gradscope::compile::backward::{Backward, GradLine, LineKind, backward};
use gradscope::compile::{CompiledFile, compile};
use gradscope::lang::file::load_bytes;
use gradscope::load::{discover, load_compiled};

mod common;

/// Data every case may read: weights that make a transposed or mis-broadcast gradient visible.
const DATA: &str = r#"
C = "[[0.5, -1.0, 2.0], [1.5, -0.3, 0.8]]"
W3 = "[0.7, -1.1, 0.4]"
W4 = "[0.3, -0.8, 1.2, 0.6]"
W23 = "reshape(cos(2 * arange(6)) + 0.1, 2, 3)"
W24 = "reshape(sin(arange(8)) - 0.2, 2, 4)"
W34 = "reshape(cos(arange(12)) + 0.3, 3, 4)"
W234 = "reshape(sin(0.9 * arange(24)) + 0.25, 2, 3, 4)"
W32 = "[[0.5, -1.0], [2.0, 0.3], [-0.7, 1.1]]"
W235 = "reshape(cos(1.1 * arange(30)), 2, 3, 5)"
W232 = "reshape(sin(1.7 * arange(12)) + 0.2, 2, 3, 2)"
W25 = "reshape(cos(0.4 * arange(10)) - 0.1, 2, 5)"
M = "[[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]"
"#;

const X: &str = "[[0.3, -1.2, 0.7], [1.5, -0.4, -2.1]]";
const P: &str = "[[0.3, 1.2, 0.7], [1.5, 0.4, 2.1]]";
const T: &str = "reshape(sin(1.3 * arange(24)) * 1.5 + 0.07 * arange(24) + 0.05, 2, 3, 4)";

fn file(loss: &str, params: &str, extra: &str) -> String {
    format!(
        "name = \"backward test\"\ndtype = \"f64\"\nloss = \"\"\"\n{loss}\n\"\"\"\n{extra}\n[data]\n{DATA}\n[params]\n{params}\n"
    )
}

fn compiled(toml: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new("backward.toml"), toml.as_bytes().to_vec());
    let rendered: Vec<String> = loaded.diagnostics.iter().map(|d| d.render(false)).collect();
    let file = loaded
        .file
        .unwrap_or_else(|| panic!("does not load:\n{}\n{toml}", rendered.join("\n")));
    let (c, diags) = compile(file);
    c.unwrap_or_else(|| {
        let rendered: Vec<String> = diags.iter().map(|d| d.render(false)).collect();
        panic!("does not compile:\n{}\n{toml}", rendered.join("\n"))
    })
}

fn program(c: &CompiledFile, run: usize) -> Backward {
    backward(c, run).unwrap_or_else(|d| {
        let rendered: Vec<String> = d.iter().map(|d| d.render(false)).collect();
        panic!("no program:\n{}", rendered.join("\n"))
    })
}

/// Every param's line of run 0 agrees with autograd at the initial params.
fn agrees(name: &str, toml: &str) -> Backward {
    let c = compiled(toml);
    let b = program(&c, 0);
    let report = check(&c, 0, &b, None).unwrap_or_else(|d| {
        let rendered: Vec<String> = d.iter().map(|d| d.render(false)).collect();
        panic!(
            "[{name}] the program does not evaluate:\n{}\n{}",
            rendered.join("\n"),
            b.text()
        )
    });
    assert_eq!(report.len(), c.params.len(), "[{name}]");
    for a in &report {
        assert!(a.agrees(), "[{name}] {a:?}\n{}", b.text());
    }
    b
}

/// The cases of `tests/grad_tests.rs` (every differentiable built-in and operator), now held to
/// autograd's numbers by the generated program.
#[test]
fn every_rule_agrees_with_autograd() {
    let x = format!("x = \"{X}\"");
    let p = format!("p = \"{P}\"");
    let xp = format!("{x}\n{p}");
    let mm = r#"
A = "reshape(sin(arange(12)) + 0.1, 3, 4)"
B = "reshape(cos(0.5 * arange(8)) - 0.2, 4, 2)"
u = "[0.4, -1.1, 0.9]"
v = "[0.2, 1.3, -0.6, 0.8]"
w = "[-0.5, 0.7, 1.2, 0.3]"
BA = "reshape(sin(0.7 * arange(24)), 2, 3, 4)"
BB = "reshape(cos(0.3 * arange(40)) + 0.05, 2, 4, 5)"
"#;
    let bcast = "col = \"[[0.5], [-1.0], [2.0]]\"\nrow = \"[0.3, -0.7, 1.1, 0.4]\"\ns = 1.3";
    let tx = format!("T = \"{T}\"\n{x}");
    let cases: Vec<(&str, String, String)> = vec![
        ("exp", "sum(C * exp(x))".into(), x.clone()),
        ("log", "sum(C * log(p))".into(), p.clone()),
        ("log1p", "sum(C * log1p(x / 2))".into(), x.clone()),
        ("sqrt", "sum(C * sqrt(p))".into(), p.clone()),
        ("abs", "sum(C * abs(x))".into(), x.clone()),
        ("sqr", "sum(C * sqr(x))".into(), x.clone()),
        ("sin cos", "sum(C * sin(x)) + sum(C * cos(x))".into(), x.clone()),
        ("tanh", "sum(C * tanh(x))".into(), x.clone()),
        ("sigmoid softplus", "sum(C * sigmoid(8 * x)) + sum(C * softplus(8 * x))".into(), x.clone()),
        ("relu", "sum(C * relu(x))".into(), x.clone()),
        ("gelu", "sum(C * gelu(x))".into(), x.clone()),
        ("elu", "sum(C * elu(x)) + sum(C * elu(x, 0.5)) + sum(W3 * elu(x[1], 2.5))".into(), x.clone()),
        ("silu", "sum(C * silu(x))".into(), x.clone()),
        ("erf", "sum(C * erf(x))".into(), x.clone()),
        ("clamp", "sum(C * clamp(x, -1, 1))".into(), x.clone()),
        (
            "clamp param bounds",
            "sum(C * clamp(x, lo, hi)) + sum(W3 * clamp(x[0], lo, hi)^2)".into(),
            format!("{x}\nlo = -1.0\nhi = 1.0"),
        ),
        (
            "min max",
            "sum(C * min(x, y)) + sum(C * max(x, y)^2) + sum(W3 * max(y, 0.5)) + sum(C * min(x, M))".into(),
            format!("{x}\ny = \"[0.1, -0.8, 1.3]\""),
        ),
        ("pow function", "sum(C * pow(p, b))".into(), format!("{p}\nb = \"[1.7, -0.6, 2.3]\"")),
        (
            "where",
            "sum(C * where(M, a, b)) + sum(W3 * where(a[0] > 0.5, a[0]^2, sin(b))) + sum(C * where(M, s, a))".into(),
            format!("a = \"{X}\"\nb = \"[0.4, -0.9, 1.6]\"\ns = 0.75"),
        ),
        ("where on the param", "sum(C * where(x > 0, x^3, exp(x)))".into(), x.clone()),
        (
            "add",
            "sum(W34 * (col + W4)) + sum(W34 * (col + row)) + sum(W4 * (row + s)) + sum(W34 * (W4 + col))".into(),
            bcast.into(),
        ),
        (
            "sub",
            "sum(W34 * (col - W4)) + sum(W34 * (W4 - col)^2) + sum(W34 * (row - col)) + sum(W4 * (s - row))".into(),
            bcast.into(),
        ),
        (
            "mul",
            "sum(W34 * (col * row)) + sum(W34 * (col * W4)) + sum(W4 * (s * row)) + sum(W34 * col * col * row)".into(),
            bcast.into(),
        ),
        (
            "div",
            "sum(W34 * (col / row)) + sum(W34 * (W4 / col)) + sum(W4 * (row / s)) + sum(W4 * (s / row))".into(),
            bcast.into(),
        ),
        (
            "affine",
            "sum(C * (2 * x + 1)) + sum(C * (3 - x)^2) + sum(C * (x - 0.5)^3) + sum(C * (x / 4)) + sum(C * sin(x / 3)) + sum(C * (1 / x)) + sum(C * (0 * x)) + sum(C * (-2.5 * x + x * 1.5))".into(),
            x.clone(),
        ),
        ("neg", "sum(C * -x) + sum(C * -x^2) - sum(-(C * x)^3)".into(), x.clone()),
        (
            "pow constant",
            "sum(C * x^3) + sum(C * x^(-1)) + sum(C * x^(-2)) + sum(C * x^2) + sum(C * x^1) + sum(C * p^0.5) + sum(C * p^1.7) + sum(C * p^(-0.5)) + sum(C * pow(p, 3.5))".into(),
            xp.clone(),
        ),
        (
            "pow tensor",
            "sum(C * p^e) + sum(C * 2^x) + sum(C * q^e) + sum(W3 * 1.5^(e * e))".into(),
            format!("{xp}\ne = \"[1.7, -0.6, 2.3]\"\nq = \"[[0.8], [1.9]]\""),
        ),
        ("pow right-associative", "sum(C * p^2^1.5)".into(), p.clone()),
        (
            "pow tensor at negative and zero bases",
            "sum(n ^ k) + sum(z ^ e2)".into(),
            "n = \"[-2.0, 0.0, 3.0, -1.5]\"\nk = \"[3.0, 0.0, 2.0, 0.0]\"\nz = \"[0.0, 2.0]\"\ne2 = \"[2.0, 3.0]\"".into(),
        ),
        ("matmul 2-D 2-D", "sum(W32 * (A @ B))".into(), mm.into()),
        ("matmul 2-D 1-D", "sum(W3 * (A @ v))".into(), mm.into()),
        ("matmul 1-D 2-D", "sum(W4 * (u @ A))".into(), mm.into()),
        ("matmul 1-D 1-D", "sin(v @ w) + (w @ v)^2".into(), mm.into()),
        (
            "matmul chain",
            "u @ A @ v + sum(W3 * (A @ transpose(A) @ u)) + sum(W32 * (A @ B))^2".into(),
            mm.into(),
        ),
        ("matmul batched", "sum(W235 * (BA @ BB))".into(), mm.into()),
        (
            "matmul batched broadcast",
            "sum(W232 * (BA @ B)) + sum(W235 * (A @ BB)) + sum(W23 * (BA @ v)) + sum(W25 * (w @ BB))".into(),
            mm.into(),
        ),
        (
            "reductions on an axis",
            "sum(W34 * sum(T, 0)) + sum(W24 * mean(T, 1)) + sum(W23 * amax(T, -1)) + sum(W23 * amin(T, 2)) + sum(W24 * logsumexp(T, 1)) + sum(W34 * norm(T, 0))".into(),
            tx.clone(),
        ),
        (
            "reductions of everything",
            "0.7 * sum(T) + mean(T)^2 + amax(x) - 2 * amin(x) + logsumexp(x) + 1.3 * norm(T) + logsumexp(v, -1) + mean(v, -1) * sum(v, 0)".into(),
            format!("{tx}\nv = \"[0.3, -1.7, 2.2, 0.9, -0.4]\""),
        ),
        (
            "softmax",
            "sum(C * softmax(x)) + sum(C * softmax(x, 0)) + sum(W234 * softmax(T, -2)) + sum(W234 * softmax(T, 0)) + sum(W4 * softmax(v))".into(),
            format!("{tx}\nv = \"[0.3, -1.7, 2.2, 0.9]\""),
        ),
        (
            "log_softmax",
            "sum(C * log_softmax(x)) + sum(C * log_softmax(x, 0)) + sum(W234 * log_softmax(T, -2)) + sum(W234 * log_softmax(T, 1)) + sum(W4 * log_softmax(v, 0))".into(),
            format!("{tx}\nv = \"[0.3, -1.7, 2.2, 0.9]\""),
        ),
        (
            "reshape",
            "sum(reshape(W234, 6, 4) * reshape(T, 6, -1)) + sum(W3 * reshape(x, -1)[1:4]) + sum(reshape(x, 3, 2) * reshape(C, 3, 2)^2 * reshape(x, 3, 2)) + sum(W34 * reshape(T, 2, 3, 4)[1, :, :])".into(),
            tx.clone(),
        ),
        (
            "transpose",
            "sum(transpose(C) * transpose(x)^2) + sum(transpose(W234) * transpose(T)) + sum(W23 * transpose(transpose(x))) + sum(W32 * x.T)".into(),
            tx.clone(),
        ),
        (
            "indexing",
            "sum(W3 * Y[1]) + sum(W3 * Y[-1]^2) + sum(W4 * Y[:, 0]) + sum(W4 * Y[:, -1]) + sum(W234 * T[:]) + sum([1.2, -0.3] * T[0, 1:3, 2]) + (x[1])[0] * 2 + sum(W3 * x[-1, :]) + sum(W24 * T[:, 1]) + sum(W23 * T[:, :, 3])".into(),
            format!("Y = \"reshape(sin(arange(12)) + 0.2, 4, 3)\"\n{tx}"),
        ),
        (
            "array literal",
            "sum(W3 * [a, b, c]) + sum(C * [[a, b, c], [c, a * b, 1.5]]) + sum(C * [v, w]^2) + sum(W4 * [sin(a), 2.0, b^3, a])".into(),
            "a = 0.7\nb = -1.3\nc = 2.1\nv = \"[0.3, -0.5, 1.2]\"\nw = \"[1.1, 0.4, -0.8]\"".into(),
        ),
        (
            "stack and concat",
            "sum(W32 * stack(v, w, axis=1)) + sum(C * stack(v, w^2)) + sum(W4 * concat(v[0:2], w[1:3])) + sum(W34 * concat(A[0:1], A[1:3] * 2, axis=0))".into(),
            "v = \"[0.3, -0.5, 1.2]\"\nw = \"[1.1, 0.4, -0.8]\"\nA = \"reshape(sin(arange(12)), 3, 4)\"".into(),
        ),
        (
            "put and pad",
            "sum(W34 * put(v, 1, 3)) + sum(W34 * put(u, 2, 4, axis=1)) + sum(W4 * pad(w, 1, 2)) + sum(W34 * pad(A, 1, 0, axis=-1)^2)".into(),
            "v = \"[0.3, -0.5, 1.2, 2.0]\"\nu = \"[1.1, 0.4, -0.8]\"\nw = \"[0.75]\"\nA = \"reshape(sin(arange(9)), 3, 3)\"".into(),
        ),
        (
            "a program of named lines",
            "h = tanh(x @ A + b)\nz = h @ v\nr = z - y\nmean(r^2) + 0.01 * sum(A^2) + mean(log_softmax(x @ A, -1)[:, 0])".into(),
            format!("{x}\nA = \"reshape(sin(arange(12)) * 0.5, 3, 4)\"\nb = \"[0.1, -0.2, 0.3, 0.05]\"\nv = \"[0.7, -0.4, 1.1, 0.2]\"\ny = \"[0.5, -1.0]\""),
        ),
        (
            "detach",
            "sum(detach(w) * w) + sum(detach(u)^2 * W3) + sum(detach(w * 3) * W3) + mean(detach(exp(w)))".into(),
            "w = \"[0.5, -1.5, 2.0]\"\nu = \"[1.0, -2.0, 3.0]\"".into(),
        ),
    ];
    for (name, loss, params) in cases {
        agrees(name, &file(&loss, &params, ""));
    }
}

/// At a tie autograd splits max/min/clamp's gradient in half; at 0 relu passes none, and
/// abs passes none; the masks must do the same, and 0 · inf stays NaN.
#[test]
fn ties_kinks_and_non_finite_values_match_autograd_exactly() {
    for (name, loss, params) in [
        (
            "ties",
            "sum(W4 * max(w, 0)) + sum(W4 * min(w, u)) + sum(W4 * clamp(w, 0, 1)) + sum(W4 * relu(w)) + sum(W4 * abs(w)) + sum(W4 * amax(stack(w, u), 0))",
            "w = \"[0.0, 1.0, -0.5, 0.0]\"\nu = \"[0.0, 1.0, 2.0, -1.0]\"",
        ),
        (
            "clamp at both bounds",
            "sum(W4 * clamp(w, lo, hi))",
            "w = \"[0.0, 1.0, 0.5, 2.0]\"\nlo = 0.0\nhi = 1.0",
        ),
        (
            "NaN from 0 * inf",
            "sum(W4 * sqrt(w^2)) + sqrt(sum(w^2)) + norm(u)",
            "w = \"[0.0, 1.0, -0.5, 0.0]\"\nu = \"[0.0, 0.0]\"",
        ),
        (
            "infinite gradient",
            "sum(log(w)) + sum(1 / u)",
            "w = \"[0.0, 1.0]\"\nu = \"[0.0, 2.0]\"",
        ),
    ] {
        agrees(name, &file(loss, params, ""));
    }
}

#[test]
fn custom_functions_are_differentiated_by_their_own_grad() {
    let functions = r#"
[functions.softclip]
args = ["x", "c"]
value = "c * tanh(x / c)"
grad = ["g * (1 - tanh(x / c)^2)", "g * (tanh(x / c) - x / c * (1 - tanh(x / c)^2))"]

[functions.ste]
args = ["x"]
value = "round(x)"
grad = "g"
"#;
    let b = agrees(
        "functions",
        &file(
            "y = softclip(w * 3, s) + ste(w)\nsum(W3 * y)",
            "w = \"[0.5, -1.5, 2.0]\"\ns = \"[1.5, 2.0, 1.0]\"",
            functions,
        ),
    );
    assert_eq!(
        b.text(),
        "d_y = W3\n\
         grad_w = 3 * d_y * (1 - tanh(w * 3 / s)^2) + d_y\n\
         grad_s = d_y * (tanh(w * 3 / s) - w * 3 / s * (1 - tanh(w * 3 / s)^2))\n"
    );
}

/// The forms the issue names: constants folded, broadcast reductions as sums, matmul adjoints
/// as transposes, abs as sign, relu as a mask, log(x + eps) as 1 / (x + eps), indexed params
/// put back with `put`.
#[test]
fn the_program_reads_as_the_derivation() {
    for (loss, params, want) in [
        (
            "pred = X @ w + b\nmean((pred - y)^2) + lam * sum(abs(w))",
            "w = \"[0.1, -0.2]\"\nb = 0.5",
            "d_pred = 2 / 4 * (pred - y)\ngrad_w = X.T @ d_pred + lam * sign(w)\ngrad_b = sum(d_pred)\n",
        ),
        (
            "h = relu(X @ W)\nmean(log(h @ v + eps))",
            "W = \"[[0.3, -0.1], [0.2, 0.4]]\"\nv = \"[1.0, 2.0]\"",
            "d_h = reshape(1 / (4 * (h @ v + eps)), 4, 1) * v\ngrad_W = X.T @ ((X @ W > 0) * d_h)\ngrad_v = h.T @ (1 / (h @ v + eps)) / 4\n",
        ),
        (
            "(1 - w[0])^2 + 100 * (w[1] - w[0]^2)^2",
            "w = \"[-1.5, 2.0]\"",
            "grad_w = put(-2 * (1 - w[0]) - 400 * (w[1] - w[0]^2) * w[0], 0, 2) + put(200 * (w[1] - w[0]^2), 1, 2)\n",
        ),
        (
            "sum(W[:, 1:3] * Q)",
            "W = \"zeros(4, 5)\"",
            "grad_W = pad(Q, 1, 2, axis=1)\n",
        ),
    ] {
        let extra = "[consts]\nlam = 0.2\neps = 1e-7\n";
        let data = "X = \"[[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.0, 1.0]]\"\ny = \"[1.0, 0.0, -1.0, 2.0]\"\nQ = \"reshape(arange(8), 4, 2)\"";
        let toml = file(loss, params, extra).replace("[data]\n", &format!("[data]\n{data}\n"));
        assert_eq!(agrees(loss, &toml).text(), want, "{loss}");
    }
}

#[test]
fn a_program_that_is_not_the_gradient_is_caught() {
    let c = compiled(&file("sum(W3 * sqrt(w))", "w = \"[0.0, 1.0, 4.0]\"", ""));
    let right = program(&c, 0);
    assert_eq!(right.text(), "grad_w = W3 / (2 * sqrt(w))\n");
    let with = |value: &str| Backward {
        run: right.run.clone(),
        lines: vec![GradLine {
            name: "grad_w".into(),
            value: value.into(),
            kind: LineKind::Param("w".into()),
            reads: Vec::new(),
        }],
    };
    let first = |b: &Backward| -> Agreement { check(&c, 0, b, None).unwrap().remove(0) };
    // Autograd's W3[0] / 0 is +inf; a finite stand-in there is a mismatch at [0].
    let finite = first(&with("where(w > 0, W3 / (2 * sqrt(w)), 0)"));
    assert_eq!(
        finite.mismatch.as_deref(),
        Some("at [0] the program gives 0, autograd +Inf")
    );
    // Right where finite, off by 1e-9 relative elsewhere: over the tolerance.
    let off = first(&with("W3 / (2 * sqrt(w)) * (1 + 1e-9 * (w > 0))"));
    assert!(off.rel_err > TOLERANCE && off.rel_err < 1e-8, "{off:?}");
    assert!(!off.agrees());
    let exact = first(&right);
    assert_eq!((exact.nonfinite, exact.agrees()), (1, true), "{exact:?}");
}

/// What the generator cannot write is a diagnostic at its span (never a panic, never a formula
/// that does not hold).
#[test]
fn what_cannot_be_written_is_a_diagnostic_at_its_span() {
    for (loss, params, message, at) in [
        (
            "r = w * 2\nr = r + 1\nsum(r)",
            "w = \"[1.0, 2.0]\"",
            "`r` is assigned twice, so the gradient program cannot name its value",
            "r",
        ),
        (
            "sum(W3 * w * randn(3))",
            "w = \"[1.0, 2.0, 3.0]\"",
            "the gradient needs this random value: the loss drew it once, when the file was loaded, and the program read back as text would draw other numbers",
            "randn(3)",
        ),
    ] {
        let c = compiled(&file(loss, params, ""));
        let d = backward(&c, 0).expect_err(loss).remove(0);
        assert_eq!(d.message, message);
        let span = d.span.clone().expect("a span");
        let text = &c.file.source.text[span];
        assert_eq!(text, at, "{loss}");
        if at == "r" {
            assert_eq!(d.line_col().map(|(l, _)| l), Some(5), "{}", d.render(false));
        }
    }
}

#[test]
fn one_param_selects_the_lines_it_needs() {
    let c = compiled(&file(
        "u = w * 2\nv = u + b\nsum(W3 * v) + sum(q^2)",
        "w = \"[1.0, 2.0, 3.0]\"\nb = 0.5\nq = \"[1.0, -1.0]\"",
        "",
    ));
    let b = program(&c, 0);
    assert_eq!(
        b.for_param("w").unwrap().text(),
        "d_v = W3\nd_u = d_v\ngrad_w = 2 * d_u\n"
    );
    assert_eq!(b.for_param("q").unwrap().text(), "grad_q = 2 * q\n");
    assert!(b.for_param("nope").is_none());
}

/// The loss files `gradscope` ships (optimizer-only files aside).
fn bundled() -> Vec<PathBuf> {
    let (files, _) = discover(&["losses".into()]);
    files
        .into_iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "optimizers"))
        .collect()
}

#[test]
fn every_bundled_file_passes_the_check() {
    for f in bundled() {
        let (c, _) = load_compiled(&f).unwrap_or_else(|_| panic!("{} loads", f.display()));
        for run in 0..c.runs.len() {
            let b = program(&c, run);
            for a in check(&c, run, &b, None).unwrap() {
                assert!(
                    a.agrees(),
                    "{} run `{}`: {a:?}\n{}",
                    f.display(),
                    c.runs[run].name,
                    b.text()
                );
            }
        }
    }
}

#[test]
fn the_programs_of_the_bundled_files() {
    for f in bundled() {
        let (c, _) = load_compiled(&f).unwrap();
        let mut text = String::new();
        for run in 0..c.runs.len() {
            text.push_str(&format!(
                "# run `{}`\n{}",
                c.runs[run].name,
                program(&c, run).text()
            ));
        }
        let name = f
            .strip_prefix("losses")
            .unwrap()
            .with_extension("")
            .to_string_lossy()
            .replace('/', "__");
        insta::with_settings!({snapshot_path => "snapshots/backward", prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(name, text);
        });
    }
}

#[test]
fn the_command_checks_after_steps_and_selects() {
    let out = common::gradscope(&[
        "grad",
        "losses/rosenbrock.toml",
        "--variant",
        "base",
        "--param",
        "y",
        "--check",
        "--at-step",
        "100",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("# losses/rosenbrock.toml  run `base`\ngrad_y = 200 * (y - x^2)\n# check at step 100 against autograd in f64"), "{text}");
    assert!(text.contains("grad_y  agrees"), "{text}");
    let bad = common::gradscope(&["grad", "losses/rosenbrock.toml", "--param", "z"]);
    assert_eq!(bad.status.code(), Some(1));
    let said = String::from_utf8_lossy(&bad.stdout);
    assert!(said.contains("the file has no param `z`"), "{said}");
    assert!(
        !said.contains("# losses/"),
        "no program heading before the error: {said}"
    );
}

/// `put` and `pad`, the language's scatters: a tensor placed among zeros.
#[test]
fn put_and_pad_place_a_tensor_among_zeros() {
    let c = compiled(
        "name = \"scatter\"\nloss = \"sum(w)\"\n[params]\nw = 0.0\n[data]\n\
         a = \"put([1.0, 2.0], 1, 3)\"\n\
         b = \"put([1.0, 2.0], 0, 2, axis=1)\"\n\
         c = \"pad([1.0, 2.0], 1, 2)\"\n\
         d = \"pad(eye(2), 0, 1, axis=-1)\"\n\
         e = \"put(5, 2, 4)\"\n",
    );
    let values: Vec<(Vec<usize>, Vec<f64>)> = c
        .data
        .iter()
        .map(|d| {
            let v = gradscope::compile::values_f64(&d.value).unwrap();
            (d.value.dims().to_vec(), v)
        })
        .collect();
    assert_eq!(
        values,
        [
            (vec![3, 2], vec![0.0, 0.0, 1.0, 2.0, 0.0, 0.0]),
            (vec![2, 2], vec![1.0, 0.0, 2.0, 0.0]),
            (vec![5], vec![0.0, 1.0, 2.0, 0.0, 0.0]),
            (vec![2, 3], vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
            (vec![4], vec![0.0, 0.0, 5.0, 0.0]),
        ]
    );
    for (value, message) in [
        ("put(w, 3, 3)", "put's index 3 is not in 0..3"),
        (
            "pad(w, 1, 1)",
            "`pad` extends an existing axis, but this is a scalar",
        ),
        ("pad([1.0], -1, 0)", "pad's before is negative: -1"),
        (
            "put([1.0], 0, 2, axis=2)",
            "axis 2 is out of range for `put` of [1]",
        ),
    ] {
        let toml = format!("name = \"bad\"\nloss = \"sum({value})\"\n[params]\nw = 0.0\n");
        let loaded = load_bytes(Path::new("bad.toml"), toml.into_bytes());
        let (_, diags) = compile(loaded.file.expect("parses"));
        let errors: Vec<&str> = diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.message.as_str())
            .collect();
        assert_eq!(errors, [message], "{value}");
    }
}

/// Where a program's first non-finite value starts: the subexpression and its line.
#[test]
fn the_first_non_finite_value_is_located_in_the_program() {
    let (c, _) = load_compiled(Path::new("losses/norm_at_zero.toml")).unwrap();
    let naive = c
        .runs
        .iter()
        .position(|r| r.name == "naive sqrt(sum(w^2))")
        .unwrap();
    let b = program(&c, naive);
    let place = locate_nonfinite(&c, naive, &b, None)
        .unwrap()
        .expect("NaN at w = 0");
    assert_eq!(
        place.summary(),
        "non-finite in `lam * w / sqrt(sum(w^2))` of grad_w (8 of 8 elements)"
    );
    assert_eq!(
        locate_nonfinite(&c, 0, &program(&c, 0), None).unwrap(),
        None
    );
    // log(0) is -inf already in the loss program: the gradient program only passes it on.
    let c = compiled(&file(
        "p = log(w)\nsum(W3 * p^2)",
        "w = \"[0.0, 1.0, 2.0]\"",
        "",
    ));
    let b = program(&c, 0);
    assert_eq!(b.text(), "d_p = 2 * W3 * p\ngrad_w = d_p / w\n");
    let place = locate_nonfinite(&c, 0, &b, None).unwrap().unwrap();
    assert_eq!(
        place.summary(),
        "non-finite in `2 * W3 * p` of d_p (1 of 3 elements, from a value of the loss program)"
    );
}

/// Token mutations of the bundled losses' programs (`loss = """..."""` only): every mutant that
/// compiles gets a program or a diagnostic, never a panic, and every program it gets agrees with
/// autograd.
#[test]
fn mutated_losses_get_a_program_that_agrees_or_a_diagnostic() {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
    let files: Vec<(PathBuf, String)> = bundled()
        .into_iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "bench"))
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect();
    let (mut programs, mut diagnostics) = (0, 0);
    for i in 0..400 {
        let (path, text) = &files[i % files.len()];
        let Some(start) = text.find("loss = \"\"\"\n").map(|s| s + 11) else {
            continue;
        };
        let end = start + text[start..].find("\"\"\"").unwrap();
        let toks: Vec<&str> = text[start..end]
            .split_inclusive(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .collect();
        let mut toks: Vec<String> = toks.iter().map(|t| t.to_string()).collect();
        for _ in 0..rng.random_range(1..=2) {
            let n = toks.len();
            let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
            match rng.random_range(0..3) {
                0 => toks.swap(a, b),
                1 => {
                    let t = toks[b].clone();
                    toks.insert(a, t);
                }
                _ => {
                    toks.remove(a);
                }
            }
        }
        let mutant = format!("{}{}{}", &text[..start], toks.concat(), &text[end..]);
        let loaded = load_bytes(path, mutant.clone().into_bytes());
        let Some(file) = loaded.file else { continue };
        let (Some(c), _) = compile(file) else {
            continue;
        };
        for run in 0..c.runs.len() {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                backward(&c, run).map(|b| (check(&c, run, &b, None), b))
            }));
            match outcome {
                Err(_) => panic!("backward panicked on\n{mutant}"),
                Ok(Err(_)) => diagnostics += 1,
                Ok(Ok((Ok(report), b))) => {
                    programs += 1;
                    for a in report {
                        assert!(a.agrees(), "{a:?}\n{}\n--- mutant ---\n{mutant}", b.text());
                    }
                }
                Ok(Ok((Err(d), b))) => panic!(
                    "the program does not evaluate: {}\n{}\n--- mutant ---\n{mutant}",
                    d[0].render(false),
                    b.text()
                ),
            }
        }
    }
    assert!(
        programs > 100,
        "{programs} programs, {diagnostics} diagnostics"
    );
}

/// Random expressions over every differentiable built-in and operator, on params of several
/// shapes: each one that compiles gets a program that agrees with autograd (or a diagnostic).
#[test]
fn random_expressions_get_a_program_that_agrees() {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    fn expr(rng: &mut rand_chacha::ChaCha8Rng, depth: u32) -> String {
        const LEAVES: &[&str] = &[
            "w",
            "W",
            "s",
            "X",
            "v",
            "0.5",
            "2",
            "w[0]",
            "W[:, 1]",
            "W[1, 0:2]",
            "W.T",
            "u",
        ];
        const UNARY: &[&str] = &[
            "exp",
            "log1p",
            "abs",
            "sqr",
            "sin",
            "cos",
            "tanh",
            "sigmoid",
            "softplus",
            "relu",
            "gelu",
            "elu",
            "silu",
            "erf",
            "-",
            "sum",
            "mean",
            "amax",
            "norm",
            "logsumexp",
            "softmax",
            "log_softmax",
            "transpose",
            "detach",
        ];
        if depth == 0 || rng.random_range(0..4) == 0 {
            return LEAVES[rng.random_range(0..LEAVES.len())].to_string();
        }
        let a = expr(rng, depth - 1);
        match rng.random_range(0..17) {
            12 => format!(
                "{}({a}, {})",
                ["stack", "concat"][rng.random_range(0..2)],
                expr(rng, depth - 1)
            ),
            13 => format!("reshape({a}, -1)"),
            14 => format!("{}({a}, 1, 2)", ["put", "pad"][rng.random_range(0..2)]),
            15 => format!("(exp({a}))^({})", expr(rng, depth - 1)),
            16 => format!("({a})[0]"),
            0..=3 => {
                let f = UNARY[rng.random_range(0..UNARY.len())];
                match f {
                    "-" => format!("-({a})"),
                    "sum" | "mean" | "amax" | "norm" | "logsumexp" | "softmax" | "log_softmax"
                        if rng.random_range(0..2) == 0 =>
                    {
                        format!("{f}({a}, axis={})", rng.random_range(-1..1))
                    }
                    _ => format!("{f}({a})"),
                }
            }
            4 => format!("log({a}^2 + 0.1)"),
            5 => format!("sqrt(abs({a}) + 0.01)"),
            6 => format!(
                "({a})^{}",
                ["2", "3", "-1", "0.5", "s"][rng.random_range(0..5)]
            ),
            7 => format!("where({a} > 0, {a}, {})", expr(rng, depth - 1)),
            8 => format!(
                "{}({a}, {})",
                ["max", "min"][rng.random_range(0..2)],
                expr(rng, depth - 1)
            ),
            9 => format!("clamp({a}, -0.5, 0.5)"),
            10 => format!("({a}) @ ({})", expr(rng, depth - 1)),
            _ => {
                let op = ["+", "-", "*", "/"][rng.random_range(0..4)];
                format!("({a}) {op} ({})", expr(rng, depth - 1))
            }
        }
    }
    let (mut tried, mut agreed, mut refused) = (0, 0, 0);
    while agreed < 1000 && tried < 50_000 {
        tried += 1;
        let e1 = expr(&mut rng, 4);
        let e2 = expr(&mut rng, 3);
        let loss = format!("a = {e1}\nsum(a * ({e2})) + sum(a)");
        // Sometimes at ties and zeros, where masks must split the gradient as autograd does.
        let (w, big_w, u) = [
            (
                "[0.4, -0.7, 1.1]",
                "[[0.5, -0.3, 0.0], [1.2, 0.9, -1.6]]",
                "[[0.2], [-0.5]]",
            ),
            (
                "[0.0, 0.5, 0.5]",
                "[[0.5, 0.5, 0.0], [0.0, -0.5, 0.5]]",
                "[[0.0], [0.5]]",
            ),
        ][rng.random_range(0..2)];
        let toml = format!(
            "name = \"random\"\ndtype = \"f64\"\nloss = \"\"\"\n{loss}\n\"\"\"\n[data]\nX = \"[[0.3, -1.2, 0.7], [1.5, -0.4, -2.1]]\"\nv = \"[0.2, -0.9, 1.3]\"\n[params]\nw = \"{w}\"\nW = \"{big_w}\"\ns = 0.5\nu = \"{u}\"\n"
        );
        let loaded = load_bytes(Path::new("random.toml"), toml.into_bytes());
        let Some(file) = loaded.file else { continue };
        let (Some(c), _) = compile(file) else {
            continue;
        };
        let Ok(b) = backward(&c, 0) else {
            refused += 1;
            continue;
        };
        let report = check(&c, 0, &b, None)
            .unwrap_or_else(|d| panic!("{}\n{}\n{loss}", d[0].render(false), b.text()));
        for a in report {
            assert!(a.agrees(), "{a:?}\n{}\n--- loss ---\n{loss}", b.text());
        }
        agreed += 1;
    }
    assert_eq!(agreed, 1000, "{tried} tried, {refused} refused");
}
