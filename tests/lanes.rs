//! Batched runs (`gradscope::compile::lanes`): every lane's loss and gradients equal those of its
//! run's own `Evaluator` at the same params (within 1e-12 in f64 and 1e-5 in f32), over every
//! bundled loss file, a table of small programs that covers every op, and lanes whose consts
//! differ; `select` keeps lanes as they were; and the programs that do not batch are refused.

use std::path::{Path, PathBuf};

use candle_core::{DType as CDType, Tensor};
use gradscope::compile::lanes::LaneEvaluator;
use gradscope::compile::{CompiledFile, Evaluator, compile, values_f64};
use gradscope::lang::file::{DType, load_bytes};

fn compiled_file(path: &Path) -> CompiledFile {
    gradscope::load::load_compiled(path)
        .unwrap_or_else(|d| panic!("{}: {}", path.display(), d[0].headline()))
        .0
}

fn compiled_text(name: &str, toml: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new(&format!("{name}.toml")), toml.as_bytes().to_vec());
    let rendered = |diags: &[gradscope::diagnostic::Diagnostic]| -> String {
        diags.iter().map(|d| d.render(false)).collect()
    };
    let file = loaded
        .file
        .unwrap_or_else(|| panic!("[{name}] does not load:\n{}", rendered(&loaded.diagnostics)));
    let (c, diags) = compile(file);
    c.unwrap_or_else(|| panic!("[{name}] does not compile:\n{}", rendered(&diags)))
}

/// The bundled loss files: `losses/` and `losses/bench/`.
fn bundled() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["losses", "losses/bench"] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// Lane `lane`'s param values (f64): the file's initial values for lane 0, moved by a different
/// small amount per lane and element for the others.
fn lane_params(c: &CompiledFile, lane: usize) -> Vec<Tensor> {
    c.params
        .iter()
        .map(|p| {
            let v: Vec<f64> = values_f64(&p.value)
                .unwrap()
                .iter()
                .enumerate()
                .map(|(j, x)| x + 0.05 * lane as f64 * (1.3 * j as f64 + lane as f64).cos())
                .collect();
            Tensor::from_vec(v, p.value.dims(), &candle_core::Device::Cpu).unwrap()
        })
        .collect()
}

fn candle(d: DType) -> CDType {
    gradscope::compile::candle_dtype(d)
}

/// Whether `got` equals `want` within `tol` relative to `want`'s largest finite magnitude (0:
/// equal values), NaN matching NaN.
fn agree(got: &[f64], want: &[f64], tol: f64) -> bool {
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f64, |m, v| m.max(v.abs()));
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= tol * scale)
}

/// Evaluates runs `defs` of `c` as lanes in `dtype`, each lane at its own params, and returns how
/// each lane's loss and gradients differ from its run's own `Evaluator` (empty when they agree
/// within 1e-12 in f64 and 1e-5 in f32).
fn lane_mismatches(name: &str, c: &CompiledFile, defs: &[usize], dtype: DType) -> Vec<String> {
    let cd = candle(dtype);
    let lanes = LaneEvaluator::new(c, defs, cd)
        .unwrap()
        .unwrap_or_else(|| panic!("[{name}] runs {defs:?} do not batch"));
    assert_eq!(lanes.lanes(), defs.len());
    let per_lane: Vec<Vec<Tensor>> = (0..defs.len()).map(|l| lane_params(c, l)).collect();
    let stacked: Vec<Tensor> = (0..c.params.len())
        .map(|j| {
            let ts: Vec<&Tensor> = per_lane.iter().map(|p| &p[j]).collect();
            Tensor::stack(&ts, 0).unwrap()
        })
        .collect();
    lanes.set_params(&stacked).unwrap();
    let got = lanes.evaluate().unwrap();
    // Matmuls of all lanes at once may round differently from a run's own.
    let tol = match dtype {
        DType::F64 => 1e-12,
        _ => 1e-5,
    };
    let mut out = Vec::new();
    for (l, &d) in defs.iter().enumerate() {
        let ev = Evaluator::with_dtype(c, d, dtype).unwrap();
        for (v, t) in ev.params().iter().zip(&per_lane[l]) {
            v.set(&t.to_dtype(cd).unwrap()).unwrap();
        }
        let want = ev.evaluate().unwrap();
        let at = format!("[{name}] {dtype:?} lane {l} (run `{}`)", c.runs[d].name);
        if !agree(&[got.losses[l]], &[want.loss], tol) {
            out.push(format!("{at}: loss {} vs {}", got.losses[l], want.loss));
        }
        for (j, w) in want.grads.iter().enumerate() {
            let g = values_f64(&got.grads[j].get(l).unwrap()).unwrap();
            let w = values_f64(w).unwrap();
            if !agree(&g, &w, tol) {
                let p = &c.params[j].name;
                out.push(format!("{at}: gradient of `{p}` {g:?} vs {w:?}"));
            }
        }
    }
    out
}

/// The file's runs in groups that batch together (in f64), each run in the first group it joins.
fn groups(c: &CompiledFile) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for d in 0..c.runs.len() {
        let joins = |g: &Vec<usize>| {
            let mut defs = g.clone();
            defs.push(d);
            LaneEvaluator::new(c, &defs, CDType::F64).unwrap().is_some()
        };
        match groups.iter_mut().find(|g| joins(g)) {
            Some(g) => g.push(d),
            None => groups.push(vec![d]),
        }
    }
    groups
}

/// Every run of every bundled file batches, with the runs it shares a program with (and itself
/// again, at other params).
#[test]
fn every_bundled_loss_file_gives_each_lane_its_own_runs_numbers() {
    let mut mismatches = Vec::new();
    for path in bundled() {
        let name = path.display().to_string();
        let c = compiled_file(&path);
        for group in groups(&c) {
            let mut defs = group.clone();
            defs.push(group[0]);
            for dtype in [DType::F64, DType::F32] {
                mismatches.extend(lane_mismatches(&name, &c, &defs, dtype));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// How some bundled files' runs group: variants that differ only in consts, optimizer or dtype
/// batch; a const that changes the program's ops (a factor of 0 is no longer an affine op) or a
/// variant's own loss does not.
#[test]
fn variants_that_differ_only_in_constant_values_share_a_batch() {
    let cases: &[(&str, &[&[usize]])] = &[
        // base, sgd, momentum, rmsprop: one program
        ("losses/rosenbrock.toml", &[&[0, 1, 2, 3]]),
        // eps = 1e-7, 0, 1e-3 and the f16 one batch; plain MSE is another loss
        ("losses/robust_log_mse.toml", &[&[0, 1, 2, 4], &[3]]),
        // A = 10 and A = 1 (with sgd); A = 0 multiplies by a folded 0
        ("losses/rastrigin.toml", &[&[0, 1, 2], &[3]]),
        // delta 1 and 10 batch; MSE and L1 are their own losses
        ("losses/huber_vs_mse.toml", &[&[0, 3], &[1], &[2]]),
        ("losses/bench/logreg.toml", &[&[0]]),
    ];
    for (path, want) in cases {
        let c = compiled_file(Path::new(path));
        let want: Vec<Vec<usize>> = want.iter().map(|g| g.to_vec()).collect();
        assert_eq!(groups(&c), want, "{path}");
    }
}

/// A loss over data `X`, `v` and params of several shapes, with a const `c` whose value differs in
/// variant `other`.
fn op_file(loss: &str) -> String {
    format!(
        r#"name = "lanes"
dtype = "f64"
loss = """
{loss}
"""

[data]
X = "reshape(sin(arange(12)) + 0.1, 4, 3)"
M = "reshape(cos(0.7 * arange(9)), 3, 3)"
T3 = "reshape(cos(0.3 * arange(24)) + 0.2, 2, 3, 4)"
v = "[0.5, -1.5, 2.0]"
lab = "[0, 2, 1, 2]"

[consts]
c = 0.7

[params]
x = "[0.3, -1.2, 0.7]"
s = 1.3
W = "reshape(cos(arange(6)) - 0.2, 3, 2)"
Z = "reshape(sin(1.7 * arange(12)), 4, 3)"
B = "reshape(sin(0.9 * arange(24)) + 0.25, 2, 3, 4)"

[[variants]]
name = "other"
consts = {{ c = -1.9 }}
"#
    )
}

/// One program per op and lane form: elementwise ops and broadcasting between lanes and shared
/// data, reductions, shape ops, every matmul form, and constants that differ between the lanes.
const OP_PROGRAMS: &[(&str, &str)] = &[
    (
        "elementwise",
        "sum(exp(x) + log(abs(x) + 1) + sqrt(x^2 + 1) + sin(x) * cos(x) + tanh(x) + relu(x) + elu(x, 0.5) + silu(x) + erf(x) + gelu(x) + sigmoid(x) + softplus(x) + log1p(x^2)) + s^3 + x[0]^2.5",
    ),
    (
        "broadcast",
        "sum(X * x) + sum(x * s) + sum((X - x) / (s + 3)) + sum(min(X, x) + max(x, s)) + sum(pow(abs(X) + 1, x)) + sum(reshape(x, 3, 1) * Z[0])",
    ),
    (
        "where, clamp, compare",
        "sum(where(X > x, X * x, x^2)) + sum(clamp(X, -s, x)) + sum(where(x > 0, x, 0) * (x < s))",
    ),
    (
        "reductions",
        "sum(Z) + mean(Z, 0)[1] + sum(amax(Z, 1)) + amin(Z) + logsumexp(Z) + sum(logsumexp(Z, -1)) + norm(Z) + sum(norm(B, 1)) + mean(B) + sum(amax(B, 0)) + sum(x, 0)",
    ),
    (
        "softmax, one_hot, argmax",
        "-mean(sum(one_hot(lab, 3) * log_softmax(Z, -1), -1)) + sum(v * softmax(x)) + sum(softmax(B, 1)[0] * T3[1]) + sum(one_hot(detach(argmax(Z, axis=1)), 3) * Z) + sum(detach(Z) * Z)",
    ),
    (
        "shapes",
        "sum(reshape(Z, 2, 6)[1] * reshape(B, 4, 6)[1]) + sum(transpose(Z) * transpose(Z)^2) + sum(transpose(B)[1]) + Z[1, 2] * x[-1] + sum(Z[1:3, 1:] ^ 3)",
    ),
    (
        "stack, concat, pad",
        "sum(X[0] * [s, x[0], 2.0]) + sum(M * stack(x, v, x^2, axis=1)) + sum(concat(Z, X) * concat(X, Z)) + sum(concat(x, v, axis=0)^2) + sum(pad(x, 1, 2) * pad(v, 2, 1)) + sum(pad(Z, 1, 0, 1) * pad(X, 0, 1, 1)) + sum(put(s, 1, 3) * v)",
    ),
    (
        "bias add",
        "sum(tanh(X @ W + W[0])) + sum(Z + x) + sum(X + x) + sum(B + transpose(Z))",
    ),
    (
        "matmul forms",
        "x @ v + v @ x + x @ x + sum(X @ x) + sum(x @ M) + sum(v @ W) + sum(X @ W) + sum(Z @ x) + sum(Z @ M) + sum(x @ W @ transpose(W)) + sum((Z @ W) @ W[0]) + sum(Z @ transpose(Z)) + sum(W @ transpose(W) @ x)",
    ),
    (
        "rank-3 matmuls",
        "sum(B @ Z[:, 0]) + sum(B @ Z) + sum(T3 @ Z) + sum(Z[0] @ B) + sum(v @ B) + sum(B @ B[0, 0]) + sum(X[0:2] @ B) + sum(B @ transpose(B)) + sum(T3 @ transpose(T3) @ Z[0:3])",
    ),
    (
        "linear models' losses",
        "z = X[0:3] @ x + s\nmean(softplus(z) - v * z) + sum(log1p((x @ M - c)^2) * c) + mean(exp(-(X @ (2 * x))) * c) + sum(sqrt(s * x @ M + 9)) + mean(exp(-((X * c) @ x)) * v[0])",
    ),
    (
        "per-lane consts",
        "c * sum(x^2) + sum(x) + c + sum([c, 2.0, -c] * x) + sum(v * c) * s + sum(where(x > c, x, 0)) + sum(clamp(Z, -c, 2)) + sum(X * [c, 1, 1]) + mean(X * c) * s",
    ),
];

#[test]
fn every_op_gives_each_lane_its_own_runs_numbers() {
    let mut mismatches = Vec::new();
    for (name, loss) in OP_PROGRAMS {
        let c = compiled_text(name, &op_file(loss));
        for dtype in [DType::F64, DType::F32] {
            mismatches.extend(lane_mismatches(name, &c, &[0, 1, 1, 0], dtype));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn lanes_in_f16_match_their_runs_bit_for_bit() {
    // Sums of 4096 f16 values, with and without f32 accumulation (each lane group alike).
    let c = compiled_file(Path::new("losses/f16_accumulation.toml"));
    for defs in [[0, 0], [1, 3]] {
        let m = lane_mismatches("f16_accumulation", &c, &defs, DType::F16);
        assert!(m.is_empty(), "{}", m.join("\n"));
    }
}

#[test]
fn select_keeps_the_chosen_lanes_at_their_params() {
    let c = compiled_file(Path::new("losses/robust_log_mse.toml"));
    let defs = [0, 1, 2, 0];
    let lanes = LaneEvaluator::new(&c, &defs, CDType::F64).unwrap().unwrap();
    let per_lane: Vec<Vec<Tensor>> = (0..4).map(|l| lane_params(&c, l)).collect();
    let stacked: Vec<Tensor> = (0..c.params.len())
        .map(|j| Tensor::stack(&per_lane.iter().map(|p| &p[j]).collect::<Vec<_>>(), 0).unwrap())
        .collect();
    lanes.set_params(&stacked).unwrap();
    let all = lanes.evaluate().unwrap();
    let kept = lanes.select(&[2, 0]).unwrap();
    assert_eq!(kept.lanes(), 2);
    let some = kept.evaluate().unwrap();
    // Lane 2 (eps = 1e-3) and lane 0 (eps = 1e-7), in that order, exactly as they were.
    assert_eq!(some.losses, [all.losses[2], all.losses[0]]);
    for (g, all_g) in some.grads.iter().zip(&all.grads) {
        let want = Tensor::stack(&[all_g.get(2).unwrap(), all_g.get(0).unwrap()], 0).unwrap();
        assert_eq!(values_f64(g).unwrap(), values_f64(&want).unwrap());
    }
    // Its params are its own: moving them leaves the full batch where it was.
    let moved: Vec<Tensor> = kept
        .params()
        .iter()
        .map(|v| v.as_tensor().affine(2.0, 1.0).unwrap())
        .collect();
    kept.set_params(&moved).unwrap();
    assert_eq!(lanes.evaluate().unwrap().losses, all.losses);
    assert!(lanes.select(&[4]).is_err());
    assert!(lanes.select(&[]).is_err());
}

#[test]
fn programs_that_differ_beyond_constant_values_do_not_batch() {
    let refused = |path: &str, defs: &[usize]| {
        let c = compiled_file(Path::new(path));
        LaneEvaluator::new(&c, defs, CDType::F64).unwrap().is_none()
    };
    // Matmuls in f16 go through candle's gemm, whose sums depend on the shapes.
    let logreg = compiled_file(Path::new("losses/bench/logreg.toml"));
    assert!(
        LaneEvaluator::new(&logreg, &[0, 0], CDType::F16)
            .unwrap()
            .is_none()
    );
    assert!(
        LaneEvaluator::new(&logreg, &[0, 0], CDType::F32)
            .unwrap()
            .is_some()
    );
    // mse + lam * sum(|w|) and the ridge variant: other ops.
    assert!(refused("losses/mse_l1.toml", &[0, 3]));
    // A = 0 turns `A * cos(..)` from an affine op into a product with a folded 0.
    assert!(refused("losses/rastrigin.toml", &[0, 3]));
    // A const as an exponent: `x^c` raises to different powers.
    let c = compiled_text("powers", &op_file("sum(abs(x)^c)"));
    assert!(
        LaneEvaluator::new(&c, &[0, 1], CDType::F64)
            .unwrap()
            .is_none()
    );
    assert!(
        LaneEvaluator::new(&c, &[0, 0], CDType::F64)
            .unwrap()
            .is_some()
    );
    // No runs, or a run the file does not have.
    assert!(refused("losses/rosenbrock.toml", &[]));
    assert!(refused("losses/rosenbrock.toml", &[0, 9]));
}
