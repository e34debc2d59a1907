//! Gradients of every differentiable built-in and operator, checked against central finite
//! differences (in the style of candle's `grad_tests.rs`).
//!
//! Each case is a small f64 loss file. `check` compiles it, takes the autograd gradient of the
//! base run, then perturbs every element of every param by ±h through `Var::set` and compares
//! with `(L(p + h) - L(p - h)) / 2h`. Losses weight their outputs with non-uniform data so a
//! transposed or mis-broadcast gradient cannot pass by symmetry. Inputs stay well away from
//! kinks (abs, relu, clamp bounds, min/max and amax/amin ties) and domain edges.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use gradscope::compile::{CompiledFile, Evaluation, Evaluator, compile};
use gradscope::lang::file::load_bytes;

const H: f64 = 1e-6;
const TOL: f64 = 1e-6;

/// Shared data: `C` weights a [2, 3] result, `X` is mixed-sign, `P` is positive (both [2, 3],
/// usable as data or copied into params).
const COMMON_DATA: &str = r#"
C = "[[0.5, -1.0, 2.0], [1.5, -0.3, 0.8]]"
W3 = "[0.7, -1.1, 0.4]"
W4 = "[0.3, -0.8, 1.2, 0.6]"
W34 = "reshape(cos(arange(12)) + 0.3, 3, 4)"
W24 = "reshape(sin(arange(8)) - 0.2, 2, 4)"
W23 = "reshape(cos(2 * arange(6)) + 0.1, 2, 3)"
W234 = "reshape(sin(0.9 * arange(24)) + 0.25, 2, 3, 4)"
"#;

const X: &str = "[[0.3, -1.2, 0.7], [1.5, -0.4, -2.1]]";
const P: &str = "[[0.3, 1.2, 0.7], [1.5, 0.4, 2.1]]";
/// [2, 3, 4], all entries distinct (no ties for amax / amin along any axis), away from 0.
const T: &str = "reshape(sin(1.3 * arange(24)) * 1.5 + 0.07 * arange(24) + 0.05, 2, 3, 4)";

/// A complete f64 loss file around `loss`, with `COMMON_DATA` plus `data` and the given params.
fn file(loss: &str, data: &str, params: &str) -> String {
    format!(
        "name = \"grad test\"\ndtype = \"f64\"\nloss = \"\"\"\n{loss}\n\"\"\"\n\n[data]\n{COMMON_DATA}{data}\n\n[params]\n{params}\n"
    )
}

fn compiled(name: &str, toml: &str) -> CompiledFile {
    let path = Path::new("grad_tests").join(format!("{name}.toml"));
    let loaded = load_bytes(&path, toml.as_bytes().to_vec());
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.render(false))
        .collect();
    assert!(
        errors.is_empty(),
        "[{name}] does not load:\n{}\n--- file ---\n{toml}",
        errors.join("\n")
    );
    let file = loaded.file.expect("loaded without errors");
    let (compiled, diags) = compile(file);
    let rendered: Vec<String> = diags.iter().map(|d| d.render(false)).collect();
    compiled.unwrap_or_else(|| {
        panic!(
            "[{name}] does not compile:\n{}\n--- file ---\n{toml}",
            rendered.join("\n")
        )
    })
}

fn evaluate(name: &str, ev: &Evaluator) -> Evaluation {
    ev.evaluate()
        .unwrap_or_else(|d| panic!("[{name}] evaluation failed:\n{}", d.render(false)))
}

fn to_f64_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("tensor converts to a f64 vector")
}

fn set_param(ev: &Evaluator, i: usize, values: &[f64], dims: &[usize]) {
    let t = Tensor::from_vec(values.to_vec(), dims.to_vec(), &Device::Cpu)
        .and_then(|t| t.to_dtype(ev.dtype()))
        .expect("build param tensor");
    ev.params()[i].set(&t).expect("Var::set");
}

/// Autograd vs central finite differences for every element of every param of run 0.
fn check(name: &str, toml: &str) {
    let compiled = compiled(name, toml);
    let ev = Evaluator::new(&compiled, 0).expect("Evaluator::new");
    assert_eq!(ev.dtype(), DType::F64, "[{name}] grad tests run in f64");
    let eval = evaluate(name, &ev);
    assert!(
        eval.loss.is_finite(),
        "[{name}] loss is not finite: {}",
        eval.loss
    );
    let mut failures = Vec::new();
    let mut worst = 0.0f64;
    for (i, p) in compiled.params.iter().enumerate() {
        let dims = p.value.dims().to_vec();
        let base = to_f64_vec(&p.value);
        let g = &eval.grads[i];
        assert_eq!(
            g.dims(),
            dims.as_slice(),
            "[{name}] grad of `{}` has the wrong shape",
            p.name
        );
        let grad = to_f64_vec(g);
        let mut values = base.clone();
        for k in 0..base.len() {
            values[k] = base[k] + H;
            set_param(&ev, i, &values, &dims);
            let plus = ev.loss().expect("loss at p + h");
            values[k] = base[k] - H;
            set_param(&ev, i, &values, &dims);
            let minus = ev.loss().expect("loss at p - h");
            values[k] = base[k];
            let fd = (plus - minus) / (2.0 * H);
            let ag = grad[k];
            worst = worst.max((ag - fd).abs() / fd.abs().max(1.0));
            if !ag.is_finite() || (ag - fd).abs() > TOL * fd.abs().max(1.0) {
                failures.push(format!(
                    "  `{}` {dims:?} element {k}: autograd {ag:.12e}, finite difference {fd:.12e} (diff {:.3e})",
                    p.name,
                    ag - fd
                ));
            }
        }
        set_param(&ev, i, &base, &dims);
    }
    eprintln!("[{name}] worst |autograd - fd| / max(1, |fd|) = {worst:.2e}");
    assert!(
        failures.is_empty(),
        "[{name}] gradient mismatch (loss {}):\n{}\n--- file ---\n{toml}",
        eval.loss,
        failures.join("\n")
    );
}

/// The harness itself: a loss whose autograd gradient differs from the true derivative (detach
/// hides the x² term from autograd but not from finite differences) must be caught.
#[test]
#[should_panic(expected = "gradient mismatch")]
fn check_detects_a_wrong_gradient() {
    check(
        "harness",
        &file(
            "sum(C * x) + 1e-3 * sum(detach(x)^2 * C)",
            "",
            &format!("x = \"{X}\""),
        ),
    );
}

/// Shorthand: a case with one [2, 3] param `x` holding `init`, no extra data.
fn check_x(name: &str, loss: &str, init: &str) {
    check(name, &file(loss, "", &format!("x = \"{init}\"")));
}

// ---------------------------------------------------------------------------------------------
// Elementwise functions (each weighted by C, so dL/dx = C * f'(x))
// ---------------------------------------------------------------------------------------------

#[test]
fn exp() {
    // d/dx exp(x) = exp(x)
    check_x("exp", "sum(C * exp(x))", X);
}

#[test]
fn log() {
    // d/dx log(x) = 1/x
    check_x("log", "sum(C * log(x))", P);
}

#[test]
fn log1p() {
    // d/dx log1p(x) = 1/(1 + x), on (-1, inf)
    check_x(
        "log1p",
        "sum(C * log1p(x))",
        "[[0.3, -0.6, 0.7], [1.5, -0.4, 2.1]]",
    );
}

#[test]
fn sqrt() {
    // d/dx sqrt(x) = 1/(2 sqrt(x))
    check_x("sqrt", "sum(C * sqrt(x))", P);
}

#[test]
fn abs() {
    // d/dx |x| = sign(x)
    check_x("abs", "sum(C * abs(x))", X);
}

#[test]
fn sqr() {
    // d/dx x^2 = 2x
    check_x("sqr", "sum(C * sqr(x))", X);
}

#[test]
fn sin() {
    // d/dx sin(x) = cos(x)
    check_x("sin", "sum(C * sin(x))", X);
}

#[test]
fn cos() {
    // d/dx cos(x) = -sin(x)
    check_x("cos", "sum(C * cos(x))", X);
}

#[test]
fn tanh() {
    // d/dx tanh(x) = 1 - tanh(x)^2
    check_x("tanh", "sum(C * tanh(x))", X);
}

#[test]
fn sigmoid() {
    // d/dx σ(x) = σ(x) (1 - σ(x))
    check_x(
        "sigmoid",
        "sum(C * sigmoid(x))",
        "[[0.3, -1.2, 0.7], [8.5, -0.4, -12.1]]",
    );
}

#[test]
fn softplus() {
    // d/dx ln(1 + e^x) = σ(x)
    check_x(
        "softplus",
        "sum(C * softplus(x))",
        "[[0.3, -1.2, 0.7], [8.5, -0.4, -12.1]]",
    );
}

#[test]
fn relu() {
    // d/dx relu(x) = 1 for x > 0, 0 for x < 0
    check_x("relu", "sum(C * relu(x))", X);
}

#[test]
fn gelu() {
    // d/dx x Φ(x) = Φ(x) + x φ(x), φ(x) = e^(-x²/2) / sqrt(2π)
    check_x("gelu", "sum(C * gelu(x))", X);
}

#[test]
fn elu_default_alpha() {
    // d/dx elu(x) = 1 for x > 0, e^x for x < 0
    check_x("elu", "sum(C * elu(x))", X);
}

#[test]
fn elu_with_alpha() {
    // d/dx elu(x, α) = 1 for x > 0, α e^x for x < 0
    check_x(
        "elu_alpha",
        "sum(C * elu(x, 0.5)) + sum(W3 * elu(x[1], 2.5))",
        X,
    );
}

#[test]
fn silu() {
    // d/dx x σ(x) = σ(x) (1 + x (1 - σ(x)))
    check_x("silu", "sum(C * silu(x))", X);
}

#[test]
fn erf() {
    // d/dx erf(x) = 2/sqrt(π) e^(-x²)
    check_x("erf", "sum(C * erf(x))", X);
}

#[test]
fn clamp_constant_bounds() {
    // d/dx clamp(x, lo, hi) = 1 inside (lo, hi), 0 where clamped (-1.2, 1.5, -2.1 here)
    check_x("clamp", "sum(C * clamp(x, -1, 1))", X);
}

#[test]
fn clamp_param_bounds() {
    // the gradient reaches a bound wherever that bound is selected
    check(
        "clamp_param_bounds",
        &file(
            "sum(C * clamp(x, lo, hi)) + sum(W3 * clamp(x[0], lo, hi)^2)",
            "",
            &format!("x = \"{X}\"\nlo = -1.0\nhi = 1.0"),
        ),
    );
}

#[test]
fn min_max_broadcast() {
    // d/da min(a, b) = [a < b], d/db = [b < a]; max the other way round; y [3] broadcasts over x [2, 3]
    check(
        "min_max",
        &file(
            "sum(C * min(x, y)) + sum(C * max(x, y)^2) + sum(W3 * max(y, 0.5)) + sum(C * min(x, D))",
            r#"D = "[[0.0, -1.0, 1.0], [1.0, 0.0, -3.0]]""#,
            &format!("x = \"{X}\"\ny = \"[0.1, -0.8, 1.3]\""),
        ),
    );
}

#[test]
fn pow_function_both_params() {
    // d/da a^b = b a^(b-1), d/db a^b = a^b ln a; b [3] broadcasts over a [2, 3]
    check(
        "pow_fn",
        &file(
            "sum(C * pow(a, b))",
            "",
            &format!("a = \"{P}\"\nb = \"[1.7, -0.6, 2.3]\""),
        ),
    );
}

#[test]
fn where_broadcast() {
    // d/da where(m, a, b) = m, d/db = 1 - m (summed over broadcast axes); none to the condition
    check(
        "where",
        &file(
            "sum(C * where(M, a, b)) + sum(W3 * where(a[0] > 0.5, a[0]^2, sin(b))) + sum(C * where(M, s, a))",
            r#"M = "[[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]""#,
            &format!("a = \"{X}\"\nb = \"[0.4, -0.9, 1.6]\"\ns = 0.75"),
        ),
    );
}

#[test]
fn where_cond_from_param() {
    // the condition x > 0 depends on x but passes no gradient; away from 0 FD agrees
    check_x("where_cond_param", "sum(C * where(x > 0, x^3, exp(x)))", X);
}

// ---------------------------------------------------------------------------------------------
// Arithmetic operators
// ---------------------------------------------------------------------------------------------

const BCAST_DATA: &str = r#"V4 = "[1.0, 2.0, -0.5, 0.25]""#;
const BCAST_PARAMS: &str =
    "col = \"[[0.5], [-1.0], [2.0]]\"\nrow = \"[0.3, -0.7, 1.1, 0.4]\"\ns = 1.3";

#[test]
fn add_broadcast() {
    // d/dcol sum(W (col + V4)) = row sums of W; d/drow = column sums; d/ds = sum(W)
    check(
        "add",
        &file(
            "sum(W34 * (col + V4)) + sum(W34 * (col + row)) + sum(W4 * (row + s)) + sum(W34 * (V4 + col))",
            BCAST_DATA,
            BCAST_PARAMS,
        ),
    );
}

#[test]
fn sub_broadcast() {
    // d/da (a - b) = 1, d/db = -1, summed over broadcast axes
    check(
        "sub",
        &file(
            "sum(W34 * (col - V4)) + sum(W34 * (V4 - col)^2) + sum(W34 * (row - col)) + sum(W4 * (s - row))",
            BCAST_DATA,
            BCAST_PARAMS,
        ),
    );
}

#[test]
fn mul_broadcast() {
    // d/da (a b) = b, d/db = a
    check(
        "mul",
        &file(
            "sum(W34 * (col * row)) + sum(W34 * (col * V4)) + sum(W4 * (s * row)) + sum(W34 * col * col * row)",
            BCAST_DATA,
            BCAST_PARAMS,
        ),
    );
}

#[test]
fn div_broadcast() {
    // d/da (a / b) = 1/b, d/db = -a/b²
    check(
        "div",
        &file(
            "sum(W34 * (col / row)) + sum(W34 * (V4 / col)) + sum(W4 * (row / s)) + sum(W4 * (s / row))",
            BCAST_DATA,
            BCAST_PARAMS,
        ),
    );
}

#[test]
fn arithmetic_with_constants() {
    // scalar constants lower to affine ops (x * c + d) where exact; the rest to broadcasts
    // d/dx (2x + 1) = 2, (3 - x) = -1, (x - 0.5) = 1, (x / 4) = 1/4, (x / 3) = 1/3, (1 / x) = -1/x², (0 * x) = 0
    check_x(
        "affine",
        "sum(C * (2 * x + 1)) + sum(C * (3 - x)^2) + sum(C * (x - 0.5)^3) + sum(C * (x / 4)) + sum(C * sin(x / 3)) + sum(C * (1 / x)) + sum(C * (0 * x)) + sum(C * (-2.5 * x + x * 1.5))",
        X,
    );
}

#[test]
fn unary_minus() {
    // d/dx -x = -1; -x^2 is -(x^2): d/dx = -2x
    check_x("neg", "sum(C * -x) + sum(C * -x^2) - sum(-(C * x)^3)", X);
}

#[test]
fn power_constant_exponent() {
    // d/dx x^c = c x^(c-1); x^2 -> sqr, x^0.5 -> sqrt, x^1 -> x, others powf; negative x with
    // integer exponents (x^3, x^(-1), x^(-2)) must work
    check(
        "pow_const",
        &file(
            "sum(C * x^3) + sum(C * x^(-1)) + sum(C * x^(-2)) + sum(C * x^2) + sum(C * x^1) + sum(C * p^0.5) + sum(C * p^1.7) + sum(C * p^(-0.5)) + sum(C * pow(p, 3.5))",
            "",
            &format!("x = \"{X}\"\np = \"{P}\""),
        ),
    );
}

#[test]
fn power_zero_has_no_gradient_even_at_zero() {
    // x^0 = 1 and torch's pow_backward gives exactly 0 for a zero exponent, also where x = 0
    // (a focal loss's (1 - p_t)^gamma with gamma = 0 once p_t rounds to 1); 0 · 0^-1 is NaN.
    let text = "name = \"p0\"\ndtype = \"f64\"\nloss = \"sum((1 - w)^gamma * w) + sum(w^0)\"\n[consts]\ngamma = 0.0\n[params]\nw = \"[1.0, 0.0, 2.0]\"\n";
    let ev = Evaluator::new(&compiled("pow_zero", text), 0).unwrap();
    let eval = evaluate("pow_zero", &ev);
    assert_eq!(eval.loss, 6.0);
    assert_eq!(to_f64_vec(&eval.grads[0]), vec![1.0, 1.0, 1.0]);
}

#[test]
fn power_tensor_exponent_at_negative_and_zero_bases_as_torch() {
    // torch: (-2)^3 = -8, 0^0 = 1; d/dx = y x^(y-1), none where y = 0; d/dy = x^y ln x, none
    // where x = 0 and y >= 0. candle's exp(y ln x) made every one of these NaN.
    let text = "name = \"pw\"\ndtype = \"f64\"\nloss = \"sum(n ^ k) + sum(z ^ e)\"\n[params]\nn = \"[-2.0, 0.0, 3.0, -1.5]\"\nk = \"[3.0, 0.0, 2.0, 0.0]\"\nz = \"[0.0, 2.0]\"\ne = \"[2.0, 3.0]\"\n";
    let ev = Evaluator::new(&compiled("pow_torch", text), 0).unwrap();
    let eval = evaluate("pow_torch", &ev);
    assert_eq!(eval.loss, -8.0 + 1.0 + 9.0 + 1.0 + 0.0 + 8.0);
    assert_eq!(to_f64_vec(&eval.grads[0]), vec![12.0, 0.0, 6.0, 0.0]);
    let dk = to_f64_vec(&eval.grads[1]);
    // ln of a negative base is NaN, as in torch; at 0^0 the exponent gets none.
    assert!(dk[0].is_nan() && dk[1] == 0.0 && (dk[2] - 9.0 * 3f64.ln()).abs() < 1e-12);
    assert_eq!(to_f64_vec(&eval.grads[2]), vec![0.0, 12.0]);
    let de = to_f64_vec(&eval.grads[3]);
    assert!(
        de[0] == 0.0 && (de[1] - 8.0 * 2f64.ln()).abs() < 1e-12,
        "{de:?}"
    );
}

#[test]
fn power_tensor_exponent() {
    // d/dp p^e = e p^(e-1), d/de = p^e ln p; e [3] and q [2, 1] broadcast; 2^x: d/dx = 2^x ln 2
    check(
        "pow_tensor",
        &file(
            "sum(C * p^e) + sum(C * 2^x) + sum(C * q^e) + sum(W3 * 1.5^(e * e))",
            "",
            &format!("p = \"{P}\"\ne = \"[1.7, -0.6, 2.3]\"\nx = \"{X}\"\nq = \"[[0.8], [1.9]]\""),
        ),
    );
}

#[test]
fn power_right_associative() {
    // ^ is right-associative: x^2^1.5 = x^(2^1.5); d/dx = 2^1.5 x^(2^1.5 - 1)
    check_x("pow_assoc", "sum(C * x^2^1.5)", P);
}

// ---------------------------------------------------------------------------------------------
// Matrix product (NumPy matmul rules)
// ---------------------------------------------------------------------------------------------

const MM_PARAMS: &str = r#"
A = "reshape(sin(arange(12)) + 0.1, 3, 4)"
B = "reshape(cos(0.5 * arange(8)) - 0.2, 4, 2)"
u = "[0.4, -1.1, 0.9]"
v = "[0.2, 1.3, -0.6, 0.8]"
w = "[-0.5, 0.7, 1.2, 0.3]"
BA = "reshape(sin(0.7 * arange(24)), 2, 3, 4)"
BB = "reshape(cos(0.3 * arange(40)) + 0.05, 2, 4, 5)"
"#;

const MM_DATA: &str = r#"
W32 = "[[0.5, -1.0], [2.0, 0.3], [-0.7, 1.1]]"
W235 = "reshape(cos(1.1 * arange(30)), 2, 3, 5)"
W232 = "reshape(sin(1.7 * arange(12)) + 0.2, 2, 3, 2)"
W25 = "reshape(cos(0.4 * arange(10)) - 0.1, 2, 5)"
"#;

#[test]
fn matmul_2d_2d() {
    // d/dA sum(W ⊙ (A B)) = W Bᵀ, d/dB = Aᵀ W
    check("mm_2d_2d", &file("sum(W32 * (A @ B))", MM_DATA, MM_PARAMS));
}

#[test]
fn matmul_2d_1d() {
    // [3, 4] @ [4] -> [3]; d/dA = c vᵀ, d/dv = Aᵀ c
    check("mm_2d_1d", &file("sum(W3 * (A @ v))", MM_DATA, MM_PARAMS));
}

#[test]
fn matmul_1d_2d() {
    // [3] @ [3, 4] -> [4]; d/du = A c, d/dA = u cᵀ
    check("mm_1d_2d", &file("sum(W4 * (u @ A))", MM_DATA, MM_PARAMS));
}

#[test]
fn matmul_1d_1d() {
    // [4] @ [4] -> scalar; d/dv sin(v·w) = cos(v·w) w
    check(
        "mm_1d_1d",
        &file("sin(v @ w) + (w @ v)^2", MM_DATA, MM_PARAMS),
    );
}

#[test]
fn matmul_chain_and_transpose() {
    // (u @ A) @ v and A @ transpose(A): gradients through several products
    check(
        "mm_chain",
        &file(
            "u @ A @ v + sum(W3 * (A @ transpose(A) @ u)) + sum(W32 * (A @ B))^2",
            MM_DATA,
            MM_PARAMS,
        ),
    );
}

#[test]
fn matmul_batched_3d() {
    // [2, 3, 4] @ [2, 4, 5] -> [2, 3, 5], one product per batch entry
    check(
        "mm_batched",
        &file("sum(W235 * (BA @ BB))", MM_DATA, MM_PARAMS),
    );
}

#[test]
fn matmul_batched_broadcast() {
    // batch dims broadcast: [2, 3, 4] @ [4, 2] -> [2, 3, 2] (d/dB sums over the batch);
    // [3, 4] @ [2, 4, 5] -> [2, 3, 5]; [2, 3, 4] @ [4] -> [2, 3]; [4] @ [2, 4, 5] -> [2, 5]
    check(
        "mm_batched_broadcast",
        &file(
            "sum(W232 * (BA @ B)) + sum(W235 * (A @ BB)) + sum(W23 * (BA @ v)) + sum(W25 * (w @ BB))",
            MM_DATA,
            MM_PARAMS,
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// Reductions, with and without axis (negative axes too)
// ---------------------------------------------------------------------------------------------

/// `f` over a [2, 3, 4] param T and a [2, 3] param x, reducing everything and along each axis.
fn reduction_case(name: &str, f: &str, x_init: &str) {
    let loss = format!(
        "(0.7 * {f}(T) + sum(W34 * {f}(T, 0)) + sum(W24 * {f}(T, 1)) + sum(W23 * {f}(T, -1)) \
         + 0.5 * sum(W24 * {f}(T, -2)) + sum(W34 * {f}(T, -3))\n\
         + 1.3 * {f}(x) + sum(W3 * {f}(x, 0)) + sum([0.4, -0.9] * {f}(x, -1)) + sum(W3 * {f}(x, -2))^2)"
    );
    check(
        name,
        &file(&loss, "", &format!("T = \"{T}\"\nx = \"{x_init}\"")),
    );
}

#[test]
fn sum_reduction() {
    // d/dx sum(x) = 1 to every element
    reduction_case("sum", "sum", X);
}

#[test]
fn mean_reduction() {
    // d/dx mean(x) = 1/n
    reduction_case("mean", "mean", X);
}

#[test]
fn amax_reduction() {
    // gradient 1 to the (unique) max element of each slice, 0 elsewhere
    reduction_case("amax", "amax", X);
}

#[test]
fn amin_reduction() {
    // gradient 1 to the (unique) min element of each slice, 0 elsewhere
    reduction_case("amin", "amin", X);
}

/// Elements tied at the max (min) share its gradient equally, as torch's amax and JAX's max
/// share it: the weights sum to 1 (so a zero-initialised param gets 1/n each, not 1 each), and
/// the value is the extreme itself, in every dtype.
#[test]
fn amax_and_amin_share_the_gradient_among_ties() {
    for (loss, params, loss_value, want) in [
        ("amax(w)", "w = \"zeros(4)\"", 0.0, vec![0.25; 4]),
        (
            "amax(w)",
            "w = \"[1, 3, 3, 2]\"",
            3.0,
            vec![0.0, 0.5, 0.5, 0.0],
        ),
        (
            "amin(w)",
            "w = \"[1, 3, 1, 1]\"",
            1.0,
            vec![1.0 / 3.0, 0.0, 1.0 / 3.0, 1.0 / 3.0],
        ),
        (
            "amax(w)",
            "w = \"[1, 3, 2, 0]\"",
            3.0,
            vec![0.0, 1.0, 0.0, 0.0],
        ),
        (
            "sum([1, 10] * amax(w, axis=1))",
            "w = \"[[2, 2, 1], [0, 5, 4]]\"",
            52.0,
            vec![0.5, 0.5, 0.0, 0.0, 10.0, 0.0],
        ),
        (
            "sum([1, 10, 100] * amin(w, axis=0))",
            "w = \"[[2, 2, 1], [2, 5, 1]]\"",
            122.0,
            vec![0.5, 10.0, 50.0, 0.5, 0.0, 50.0],
        ),
        // An infinite extreme keeps its value (no inf - inf).
        (
            "amax(w + c) + amin(w)",
            "w = \"[0, 0, 1]\"",
            f64::INFINITY,
            vec![],
        ),
    ] {
        for dtype in ["f64", "f32", "bf16"] {
            let name = format!("ties {loss} {params} {dtype}");
            let toml = file(loss, "c = \"where([1, 1, 0] > 0, exp(1000), 0)\"", params)
                .replace("dtype = \"f64\"", &format!("dtype = \"{dtype}\""));
            let compiled = compiled(&name, &toml);
            let ev = Evaluator::new(&compiled, 0).expect("Evaluator::new");
            let eval = evaluate(&name, &ev);
            assert_eq!(eval.loss, loss_value, "[{name}] loss");
            if !want.is_empty() {
                let got = to_f64_vec(&eval.grads[0]);
                let tol = if dtype == "bf16" { 1e-2 } else { 1e-7 };
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(g, w)| (g - w).abs() <= tol * w.abs().max(1.0)),
                    "[{name}] gradient {got:?}, want {want:?}"
                );
            }
        }
    }
}

#[test]
fn logsumexp_reduction() {
    // d/dx logsumexp(x) = softmax(x)
    reduction_case("logsumexp", "logsumexp", X);
}

#[test]
fn norm_reduction() {
    // d/dx ‖x‖ = x / ‖x‖
    reduction_case("norm", "norm", X);
}

#[test]
fn reductions_of_1d() {
    // every reduction of a [5] vector, without and with axis 0 / -1
    check(
        "reductions_1d",
        &file(
            "sum(v) * 0.3 + mean(v)^2 + amax(v) - 2 * amin(v, 0) + logsumexp(v, -1) + norm(v) * 1.7 + mean(v, -1) * sum(v, 0)",
            "",
            "v = \"[0.3, -1.7, 2.2, 0.9, -0.4]\"",
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// softmax / log_softmax
// ---------------------------------------------------------------------------------------------

#[test]
fn softmax() {
    // d softmax_i / d x_j = s_i (δ_ij - s_j), along the chosen axis
    check(
        "softmax",
        &file(
            "sum(C * softmax(x)) + sum(C * softmax(x, 0)) + sum(W234 * softmax(T, -2)) + sum(W234 * softmax(T, 0)) + sum(W234 * softmax(T)) + sum(W4 * softmax(v))",
            "",
            &format!("x = \"{X}\"\nT = \"{T}\"\nv = \"[0.3, -1.7, 2.2, 0.9]\""),
        ),
    );
}

#[test]
fn log_softmax() {
    // d log_softmax_i / d x_j = δ_ij - s_j
    check(
        "log_softmax",
        &file(
            "sum(C * log_softmax(x)) + sum(C * log_softmax(x, 0)) + sum(W234 * log_softmax(T, -2)) + sum(W234 * log_softmax(T, 1)) + sum(W234 * log_softmax(T, -1)) + sum(W4 * log_softmax(v, 0))",
            "",
            &format!("x = \"{X}\"\nT = \"{T}\"\nv = \"[0.3, -1.7, 2.2, 0.9]\""),
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// Shapes and indexing
// ---------------------------------------------------------------------------------------------

#[test]
fn reshape() {
    // reshape only moves the gradient back to the original layout
    check(
        "reshape",
        &file(
            "sum(reshape(W234, 6, 4) * reshape(T, 6, -1)) + sum(W3 * reshape(x, -1)[1:4]) + sum(reshape(x, 3, 2) * reshape(C, 3, 2)^2 * reshape(x, 3, 2)) + sum(W34 * reshape(T, 2, 3, 4)[1, :, :])",
            "",
            &format!("x = \"{X}\"\nT = \"{T}\""),
        ),
    );
}

#[test]
fn transpose() {
    // d/dx sum(W ⊙ xᵀ) = Wᵀ; 3-D swaps the last two axes
    check(
        "transpose",
        &file(
            "sum(transpose(C) * transpose(x)^2) + sum(transpose(W234) * transpose(T)) + sum(W23 * transpose(transpose(x)))",
            "",
            &format!("x = \"{X}\"\nT = \"{T}\""),
        ),
    );
}

#[test]
fn indexing() {
    // the gradient lands on the indexed entries (zero elsewhere) and accumulates over repeats
    check(
        "indexing",
        &file(
            "sum(W3 * Y[1]) + sum(W3 * Y[-1]^2) + sum(W4 * Y[:, 0]) + sum(W4 * Y[:, -1]) \
             + sum(W23 * Y[1:3]) + sum(Y[:2] * Y[2:]) + sum([[0.5, -1.5], [2.0, 0.7]] * Y[1:3, 1:]^3) \
             + Y[0, 2] * 3 - Y[-1, -1]^2 + sum([0.6, -1.4] * T[:, -1, 1:3][1]) + sum(W34 * T[1]) \
             + sum(W234 * T[:]) + sum([1.2, -0.3] * T[0, 1:3, 2]) + (x[1])[0] * 2 + sum(W3 * x[-1, :])",
            "",
            &format!("Y = \"reshape(sin(arange(12)) + 0.2, 4, 3)\"\nT = \"{T}\"\nx = \"{X}\""),
        ),
    );
}

#[test]
fn array_literals_of_params() {
    // [a, b, c] stacks its entries; the gradient goes back to each entry (and accumulates for
    // repeated ones); rows of vectors and expressions inside literals work too
    check(
        "array_literal",
        &file(
            "sum(W3 * [a, b, c]) + sum(C * [[a, b, c], [c, a * b, 1.5]]) + sum(C * [v, w]^2) + sum(W4 * [sin(a), 2.0, b^3, a])",
            "",
            "a = 0.7\nb = -1.3\nc = 2.1\nv = \"[0.3, -0.5, 1.2]\"\nw = \"[1.1, 0.4, -0.8]\"",
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// Chain rule across statements, and a composite loss
// ---------------------------------------------------------------------------------------------

#[test]
fn multi_statement_program() {
    // names defined on earlier lines; a value used twice accumulates its gradient
    check(
        "program",
        &file(
            "h = tanh(x @ A + b)\nz = h @ v\nr = z - y\nmean(r^2) + 0.01 * sum(A^2) + mean(log_softmax(x @ A, -1)[:, 0])",
            r#"y = "[0.5, -1.0]""#,
            &format!(
                "x = \"{X}\"\nA = \"reshape(sin(arange(12)) * 0.5, 3, 4)\"\nb = \"[0.1, -0.2, 0.3, 0.05]\"\nv = \"[0.7, -0.4, 1.1, 0.2]\""
            ),
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// Closed-form derivatives, exact to rounding (finite differences cannot see errors below ~1e-7)
// ---------------------------------------------------------------------------------------------

/// erf by its Taylor series; accurate to a few ulps for |x| <= 3.
fn erf_series(x: f64) -> f64 {
    assert!(x.abs() <= 3.0);
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term.abs() > 1e-18 * sum.abs() {
        n += 1.0;
        term *= -x * x / n;
        sum += term / (2.0 * n + 1.0);
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn sigmoid_f64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A function (as written in a loss), where to evaluate it, and its derivative.
type Case<'a> = (&'a str, &'a [f64], Box<dyn Fn(f64) -> f64>);

#[test]
fn elementwise_derivatives_match_closed_form() {
    use std::f64::consts::{FRAC_1_SQRT_2, PI};
    let mixed = [-2.1, -1.2, -0.4, 0.3, 0.7, 1.5];
    let positive = [0.05, 0.3, 0.7, 1.5, 2.1, 4.0];
    let above_minus_one = [-0.6, -0.2, 0.3, 0.7, 1.5, 4.0];
    let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * PI).sqrt();
    type D = fn(f64) -> f64;
    let cases: Vec<Case> = vec![
        ("exp(x)", &mixed, Box::new(|x: f64| x.exp())),
        ("log(x)", &positive, Box::new(|x: f64| 1.0 / x)),
        (
            "log1p(x)",
            &above_minus_one,
            Box::new(|x: f64| 1.0 / (1.0 + x)),
        ),
        ("sqrt(x)", &positive, Box::new(|x: f64| 0.5 / x.sqrt())),
        ("abs(x)", &mixed, Box::new(|x: f64| x.signum())),
        ("sqr(x)", &mixed, Box::new(|x: f64| 2.0 * x)),
        ("sin(x)", &mixed, Box::new(|x: f64| x.cos())),
        ("cos(x)", &mixed, Box::new(|x: f64| -x.sin())),
        ("tanh(x)", &mixed, Box::new(|x: f64| 1.0 - x.tanh().powi(2))),
        (
            "sigmoid(x)",
            &mixed,
            Box::new(|x: f64| sigmoid_f64(x) * (1.0 - sigmoid_f64(x))),
        ),
        ("softplus(x)", &mixed, Box::new(sigmoid_f64 as D)),
        (
            "relu(x)",
            &mixed,
            Box::new(|x: f64| if x > 0.0 { 1.0 } else { 0.0 }),
        ),
        // gelu = x Φ(x): Φ(x) + x φ(x), Φ(x) = (1 + erf(x / √2)) / 2, φ(x) = e^(-x²/2) / √(2π)
        (
            "gelu(x)",
            &mixed,
            Box::new(move |x: f64| 0.5 * (1.0 + erf_series(x * FRAC_1_SQRT_2)) + x * pdf(x)),
        ),
        (
            "elu(x)",
            &mixed,
            Box::new(|x: f64| if x > 0.0 { 1.0 } else { x.exp() }),
        ),
        (
            "elu(x, 0.5)",
            &mixed,
            Box::new(|x: f64| if x > 0.0 { 1.0 } else { 0.5 * x.exp() }),
        ),
        (
            "silu(x)",
            &mixed,
            Box::new(|x: f64| sigmoid_f64(x) * (1.0 + x * (1.0 - sigmoid_f64(x)))),
        ),
        (
            "erf(x)",
            &mixed,
            Box::new(|x: f64| 2.0 / PI.sqrt() * (-x * x).exp()),
        ),
        ("x^3", &mixed, Box::new(|x: f64| 3.0 * x * x)),
        ("x^(-1)", &mixed, Box::new(|x: f64| -1.0 / (x * x))),
        ("x^1.7", &positive, Box::new(|x: f64| 1.7 * x.powf(0.7))),
        ("2^x", &mixed, Box::new(|x: f64| 2f64.powf(x) * 2f64.ln())),
        ("-x", &mixed, Box::new(|_| -1.0)),
    ];
    let mut failures = Vec::new();
    for (f, xs, df) in &cases {
        let init: Vec<String> = xs.iter().map(|v| format!("{v:?}")).collect();
        let toml = file(
            &format!("sum({f})"),
            "",
            &format!("x = \"[{}]\"", init.join(", ")),
        );
        let compiled = compiled(f, &toml);
        let ev = Evaluator::new(&compiled, 0).expect("Evaluator::new");
        let g = to_f64_vec(&evaluate(f, &ev).grads[0]);
        for (k, &x) in xs.iter().enumerate() {
            let want = df(x);
            if g[k].is_nan() || (g[k] - want).abs() > 1e-12 * want.abs().max(1.0) {
                failures.push(format!(
                    "  d/dx {f} at x = {x}: autograd {:.17e}, closed form {want:.17e} (rel err {:.2e})",
                    g[k],
                    (g[k] - want).abs() / want.abs().max(1e-300)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "derivatives differ from the closed form:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Special cases
// ---------------------------------------------------------------------------------------------

#[test]
fn detach_passes_no_gradient() {
    // L = sum(detach(w) * w) + sum(detach(u)^2 * W3) + sum(detach(w * 3) * W3):
    // dL/dw = detach(w) = w (not 2w), dL/du = 0 exactly
    let toml = file(
        "sum(detach(w) * w) + sum(detach(u)^2 * W3) + sum(detach(w * 3) * W3) + mean(detach(exp(w)))",
        "",
        "w = \"[0.5, -1.5, 2.0]\"\nu = \"[1.0, -2.0, 3.0]\"",
    );
    let compiled = compiled("detach", &toml);
    let ev = Evaluator::new(&compiled, 0).expect("Evaluator::new");
    let eval = evaluate("detach", &ev);
    let gw = to_f64_vec(&eval.grads[0]);
    let gu = to_f64_vec(&eval.grads[1]);
    assert_eq!(
        gw,
        vec![0.5, -1.5, 2.0],
        "gradient through detach(w) * w must be detach(w)"
    );
    assert_eq!(
        gu,
        vec![0.0, 0.0, 0.0],
        "no gradient may pass through detach"
    );
    let want = 0.5 * 0.5
        + 1.5 * 1.5
        + 2.0 * 2.0
        + (1.0 * 0.7 + 4.0 * -1.1 + 9.0 * 0.4)
        + 3.0 * (0.5 * 0.7 + -1.5 * -1.1 + 2.0 * 0.4)
        + (0.5f64.exp() + (-1.5f64).exp() + 2.0f64.exp()) / 3.0;
    assert!(
        (eval.loss - want).abs() < 1e-12,
        "detach keeps the value: loss {} != {want}",
        eval.loss
    );
}

#[test]
fn abs_gradient_at_zero_is_zero() {
    // PyTorch convention: d|x|/dx at 0 is 0 (sign(0)); ±1 elsewhere, also for abs of an expression
    let toml = file(
        "sum(W3 * abs(x)) + sum(W3 * abs(x - [0.0, 1.0, 0.0]))",
        "",
        "x = \"[0.0, 1.0, -2.0]\"",
    );
    let compiled = compiled("abs_zero", &toml);
    let ev = Evaluator::new(&compiled, 0).expect("Evaluator::new");
    let eval = evaluate("abs_zero", &ev);
    let g = to_f64_vec(&eval.grads[0]);
    // first term: W3 * sign(x) = [0, -1.1, -0.4]; second: W3 * sign(x - [0, 1, 0]) = [0, 0, -0.4]
    assert_eq!(g, vec![0.0, -1.1, -0.8], "abs'(0) must be 0");
}

#[test]
fn sigmoid_softplus_finite_at_extremes_in_f32() {
    // σ(-1000) = 0, σ(1000) = 1, softplus(1000) = 1000, softplus(-1000) = 0; σ' = 0 there,
    // softplus' = σ
    let toml = "name = \"extremes\"\ndtype = \"f32\"\nloss = \"\"\"\nsum(sigmoid(z)) + sum(softplus(z)) + sum(softplus(-z))\n\"\"\"\n\n[params]\nz = \"[-1000.0, 1000.0, -30.0, 30.0]\"\n";
    let compiled = compiled("extremes", toml);
    let ev = Evaluator::new(&compiled, 0).expect("Evaluator::new");
    assert_eq!(ev.dtype(), DType::F32);
    let eval = evaluate("extremes", &ev);
    assert!(eval.loss.is_finite(), "loss not finite: {}", eval.loss);
    // sigmoid: 0 + 1 + σ(-30) + σ(30) = 2; softplus(z) + softplus(-z) = |z| + 2 ln(1 + e^-|z|)
    let want_loss = 2.0 + 2060.0;
    assert!(
        (eval.loss - want_loss).abs() <= 1e-2,
        "loss {} vs {want_loss}",
        eval.loss
    );
    let g = to_f64_vec(&eval.grads[0]);
    assert!(
        g.iter().all(|v| v.is_finite()),
        "gradient not finite: {g:?}"
    );
    // d/dz [softplus(z) + softplus(-z)] = σ(z) - σ(-z) = [-1, 1, -1, 1] (to f32 precision);
    // σ'(±1000) = 0 and σ'(±30) ≈ 9.4e-14
    let want = [-1.0, 1.0, -1.0, 1.0];
    for (k, (&a, &b)) in g.iter().zip(&want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6,
            "element {k}: gradient {a}, want {b} (all: {g:?})"
        );
    }
}

#[test]
fn square_of_negative_numbers() {
    // x^2, sqr(x), x * x and pow(x, 2) all have gradient 2x, also for x < 0 (not NaN, not 2|x|);
    // x^3 and x^4 have 3x² and 4x³
    let toml = file(
        "sum(x^2) + sum(sqr(x)) + sum(x * x) + sum(pow(x, 2)) + sum(x^3) + sum(x^4) + sum((x - 1)^2)",
        "",
        "x = \"[-3.0, -0.5, 2.0]\"",
    );
    let compiled = compiled("square_negative", &toml);
    let ev = Evaluator::new(&compiled, 0).expect("Evaluator::new");
    let eval = evaluate("square_negative", &ev);
    let g = to_f64_vec(&eval.grads[0]);
    for (k, &x) in [-3.0f64, -0.5, 2.0].iter().enumerate() {
        let want = 4.0 * 2.0 * x + 3.0 * x * x + 4.0 * x * x * x + 2.0 * (x - 1.0);
        assert!(
            (g[k] - want).abs() <= 1e-12 * want.abs().max(1.0),
            "x = {x}: gradient {}, want {want}",
            g[k]
        );
    }
    check("square_negative_fd", &toml);
}

#[test]
fn f32_gradient_matches_f64() {
    // a small MLP-ish loss, evaluated in f64 and again in f32 from the same f64 initial values
    let loss = "h1 = tanh(X @ V1 + b1)\nh2 = silu(h1 @ V2) * sigmoid(h1 @ V2)\nlogits = h2 @ V3 + b3\n\
                xent = -mean(sum(Yoh * log_softmax(logits, -1), -1))\n\
                xent + 0.01 * (sum(V1^2) + sum(V2^2) + sum(V3^2)) + 0.1 * mean(softplus(h2 @ w4)) + 0.05 * norm(b1)";
    // one-hot labels for 16 rows, class k = row mod 3, written out explicitly
    let labels: Vec<String> = (0..16)
        .map(|r| {
            let row: Vec<&str> = (0..3).map(|c| if r % 3 == c { "1" } else { "0" }).collect();
            format!("[{}]", row.join(", "))
        })
        .collect();
    let data = format!(
        "X = \"reshape(sin(0.37 * arange(96)) + 0.2 * cos(1.3 * arange(96)), 16, 6)\"\nYoh = \"[{}]\"",
        labels.join(", ")
    );
    let params = "V1 = \"reshape(cos(0.7 * arange(48)), 6, 8) / 2.5\"\nb1 = \"0.1 * sin(arange(8))\"\n\
                  V2 = \"reshape(sin(1.1 * arange(40)) * 0.4, 8, 5)\"\nV3 = \"reshape(cos(0.9 * arange(15)) * 0.6, 5, 3)\"\n\
                  b3 = \"[0.1, -0.2, 0.05]\"\nw4 = \"[0.3, -0.2, 0.5, 0.1, -0.4]\"";
    let text64 = file(loss, &data, params);
    let text32 = text64.replacen("dtype = \"f64\"", "dtype = \"f32\"", 1);
    assert_ne!(text64, text32);

    let c64 = compiled("mlp_f64", &text64);
    let c32 = compiled("mlp_f32", &text32);
    let ev64 = Evaluator::new(&c64, 0).expect("Evaluator::new f64");
    let ev32 = Evaluator::new(&c32, 0).expect("Evaluator::new f32");
    assert_eq!(ev64.dtype(), DType::F64);
    assert_eq!(ev32.dtype(), DType::F32);
    let e64 = evaluate("mlp_f64", &ev64);
    let e32 = evaluate("mlp_f32", &ev32);
    let mut failures = Vec::new();
    if (e32.loss - e64.loss).abs() > 1e-4 * e64.loss.abs() {
        failures.push(format!("loss: f32 {} vs f64 {}", e32.loss, e64.loss));
    }
    for (i, p) in c64.params.iter().enumerate() {
        let g64 = to_f64_vec(&e64.grads[i]);
        let g32 = to_f64_vec(&e32.grads[i]);
        assert_eq!(
            e32.grads[i].dtype(),
            DType::F32,
            "f32 run gives f32 gradients"
        );
        let scale = g64.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (k, (&a, &b)) in g32.iter().zip(&g64).enumerate() {
            // 1e-4 relative, with a floor for entries much smaller than the tensor's largest
            if (a - b).abs() > 1e-4 * b.abs().max(1e-2 * scale) {
                failures.push(format!("`{}`[{k}]: f32 {a:.9e} vs f64 {b:.9e}", p.name));
            }
        }
    }
    assert!(failures.is_empty(), "f32 vs f64:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Joining, one-hot labels, `.T`, `axis=` and the constants pi and e
// ---------------------------------------------------------------------------------------------

const JOIN_DATA: &str = r#"
W26 = "reshape(cos(1.3 * arange(12)) + 0.3, 2, 6)"
lab = "[0, 2, 1, 2]"
D = "[[0.1, 0.9, -0.3], [2.0, -1.0, 0.5]]"
"#;

#[test]
fn stack_along_a_new_axis() {
    // stack(u, v^2, axis=0) has rows u and v²; stack(u^3, v, axis=1) has columns u³ and v:
    // d/du = W23[0] + 3u² ⊙ W23[0], d/dv = 2v ⊙ W23[1] + W23[1]
    check(
        "stack",
        &file(
            "sum(W23 * stack(u, v^2, axis=0)) + sum(W23 * transpose(stack(u^3, v, axis=1)))",
            "",
            "u = \"[0.3, -1.2, 0.7]\"\nv = \"[1.5, -0.4, -2.1]\"",
        ),
    );
}

#[test]
fn concat_along_an_existing_axis() {
    // concat(x, x^2, axis=1) is [2, 6]; concat(x, exp(x)) is [4, 3] (axis 0 by default):
    // d/dx = W26[:, :3] + 2x ⊙ W26[:, 3:] + W34ᵀ[:2] + exp(x) ⊙ W34ᵀ[2:]
    check(
        "concat",
        &file(
            "sum(W26 * concat(x, x^2, axis=1)) + sum(transpose(W34) * concat(x, exp(x)))",
            JOIN_DATA,
            &format!("x = \"{X}\""),
        ),
    );
}

#[test]
fn one_hot_labels_in_cross_entropy() {
    // Y = one_hot(lab, 3); L = -mean(sum(Y ⊙ log_softmax(Z), -1)): dL/dZ = (softmax(Z) - Y) / 4;
    // Y @ w picks w[lab[i]]: d/dw = Σ_i e_{lab[i]} = [1, 1, 2]
    check(
        "one_hot",
        &file(
            "Y = one_hot(lab, 3)\n-mean(sum(Y * log_softmax(Z, -1), -1)) + sum(W4 * (Y @ w))",
            JOIN_DATA,
            "Z = \"reshape(sin(1.7 * arange(12)), 4, 3)\"\nw = \"[0.2, -0.5, 0.9]\"",
        ),
    );
}

#[test]
fn argmax_on_data_and_in_detach_selects_without_gradient() {
    // argmax(D, axis=1) = [1, 0]: d/dx of sum(one_hot(...) ⊙ x) is that one-hot, [[0,1,0],[1,0,0]];
    // argmin(x, axis=1) inside detach adds a constant, so it adds nothing to the gradient
    check(
        "argmax",
        &file(
            "sum(one_hot(argmax(D, axis=1), 3) * x) + sum(W3[0:2] * detach(argmin(x, 1)))",
            JOIN_DATA,
            &format!("x = \"{X}\""),
        ),
    );
}

#[test]
fn dot_t_is_transpose() {
    // sum(W34 ⊙ (xᵀ @ W24)): d/dx = W24 W34ᵀ; sum(C ⊙ (x @ xᵀ @ x)) through both uses of x
    check(
        "dot_t",
        &file(
            "sum(W34 * (x.T @ W24)) + sum(C * (x @ x.T @ x))",
            "",
            &format!("x = \"{X}\""),
        ),
    );
}

#[test]
fn axis_keyword_is_the_positional_axis() {
    // sum(T, axis=1) is sum(T, 1): d/dT[i, j, k] = W24[i, k]; softmax(x, axis=0) is softmax(x, 0)
    check(
        "axis_keyword",
        &file(
            "sum(W24 * sum(T, axis=1)) + sum(W23 * softmax(x, axis=0)) + sum(W3 * amax(x, axis=-2))",
            "",
            &format!("T = \"{T}\"\nx = \"{X}\""),
        ),
    );
}

#[test]
fn pi_and_e_are_constants_that_user_names_shadow() {
    // at x = 0 the loss is pi * e, or pi * 2 where a const `e = 2` shadows Euler's number
    for (consts, want) in [
        ("", std::f64::consts::PI * std::f64::consts::E),
        ("[consts]\ne = 2.0\n", std::f64::consts::PI * 2.0),
    ] {
        let toml = format!(
            "name = \"pi e\"\ndtype = \"f64\"\nloss = \"sum(x^2) + pi * e\"\n{consts}[params]\nx = \"zeros(2)\"\n"
        );
        let c = compiled("pi_e", &toml);
        let ev = Evaluator::new(&c, 0).expect("Evaluator::new");
        assert_eq!(evaluate("pi_e", &ev).loss, want, "{consts}");
    }
}
