//! optax's family beyond the reference trajectories (tests/optim_more.rs): Sophia's Hessian
//! diagonal from the compiler against closed forms and finite differences, Hutchinson's
//! estimate against it, seeded runs that rewind to the same numbers, SM3's refusal of scalar
//! params, and `gamma` in a loss file's `[optimizer]` table.

use std::path::Path;

use candle_core::Tensor;
use gradscope::compile::curvature::{hessian_diagonal, hvp, hvp_fd, second_order};
use gradscope::compile::{CompiledFile, Evaluator, compile, values_f64};
use gradscope::lang::file::load_bytes;
use gradscope::optim::optax::hutchinson;
use gradscope::optim::spec::{HyperValue, OptimizerSpec};
use gradscope::optim::step::Oracle;
use gradscope::run::{Run, RunRequest};

/// The process set-up the binary does (the curvature thread), once, before any test computes.
fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| gradscope::init_process(None));
}

fn compiled(text: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new("t.toml"), text.as_bytes().to_vec());
    let (c, d) = compile(loaded.file.expect("loads"));
    c.unwrap_or_else(|| panic!("{d:?}"))
}

fn diagonal(ev: &Evaluator) -> Vec<f64> {
    let ev = ev.clone();
    second_order(move || hessian_diagonal(&ev))
        .unwrap()
        .iter()
        .flat_map(|t| values_f64(t).unwrap())
        .collect()
}

/// 0.5 w^T A w: Hessian A, whose diagonal is [2, 4, 3] and whose off-diagonal squares sum to
/// [1, 3.25, 2.25] per row (the variance of Hutchinson's estimate of each entry).
const QUADRATIC: &str = "name = \"q\"\ndtype = \"f64\"\nloss = \"0.5 * sum(w * (A @ w))\"\n[data]\nA = \"reshape([2, 1, 0, 1, 4, -1.5, 0, -1.5, 3], 3, 3)\"\n[params]\nw = \"[1, -1, 0.5]\"\n";

#[test]
fn the_exact_hessian_diagonal_matches_closed_forms_and_finite_differences() {
    init();
    // Rosenbrock at (-1.5, 2): d2/dx2 = 1200 x^2 - 400 y + 2 = 1902, d2/dy2 = 200.
    let ev = Evaluator::new(
        &compiled(
            "name = \"r\"\ndtype = \"f64\"\nloss = \"(1 - x)^2 + 100 * (y - x^2)^2\"\n[params]\nx = -1.5\ny = 2.0\n",
        ),
        0,
    )
    .unwrap();
    assert_eq!(diagonal(&ev), [1902.0, 200.0]);

    let ev = Evaluator::new(&compiled(QUADRATIC), 0).unwrap();
    assert_eq!(diagonal(&ev), [2.0, 4.0, 3.0]);

    // Through matmul, tanh and a bias: entry i against (g(w + e e_i) - g(w - e e_i))_i / 2e.
    let ev = Evaluator::new(
        &compiled(
            "name = \"m\"\ndtype = \"f64\"\nseed = 1\nloss = \"mean((tanh(X @ W + b) @ v - y)^2)\"\n[data]\nX = \"randn(16, 3)\"\ny = \"randn(16)\"\n[params]\nW = \"randn(3, 4) / 2\"\nb = \"randn(4) / 4\"\nv = \"randn(4) / 3\"\n",
        ),
        0,
    )
    .unwrap();
    let exact = diagonal(&ev);
    let shapes: Vec<Vec<usize>> = ev
        .params()
        .iter()
        .map(|p| p.as_tensor().dims().to_vec())
        .collect();
    let n: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(exact.len(), n);
    for i in 0..n {
        let mut at = 0;
        let unit: Vec<Tensor> = shapes
            .iter()
            .map(|s| {
                let len: usize = s.iter().product();
                let e: Vec<f64> = (at..at + len).map(|k| f64::from(k == i)).collect();
                at += len;
                Tensor::from_vec(e, s.as_slice(), &candle_core::Device::Cpu).unwrap()
            })
            .collect();
        let fd: Vec<f64> = hvp_fd(&ev, &unit, 1e-5)
            .unwrap()
            .iter()
            .flat_map(|t| values_f64(t).unwrap())
            .collect();
        assert!(
            (exact[i] - fd[i]).abs() < 1e-7 * exact[i].abs().max(1.0),
            "entry {i}: {} vs {}",
            exact[i],
            fd[i]
        );
    }
}

/// The loss's Hessian-vector products from the compiler, as a step would get them.
struct Products(Evaluator);

impl Oracle for Products {
    fn loss_and_grads(&mut self, _: &[Tensor]) -> candle_core::Result<(f64, Vec<Tensor>)> {
        candle_core::bail!("not used: Hutchinson's estimate asks for products only")
    }
    fn hessian_diag(&mut self, _: &[Tensor]) -> candle_core::Result<Vec<Tensor>> {
        candle_core::bail!("not used: Hutchinson's estimate asks for products only")
    }
    fn hvp(&mut self, _: &[Tensor], v: &[Tensor]) -> candle_core::Result<Vec<Tensor>> {
        let (ev, v) = (self.0.clone(), v.to_vec());
        second_order(move || hvp(&ev, &v)).map_err(|d| candle_core::Error::Msg(d.message))
    }
}

#[test]
fn hutchinsons_estimate_averages_to_the_exact_diagonal() {
    init();
    let ev = Evaluator::new(&compiled(QUADRATIC), 0).unwrap();
    let exact = diagonal(&ev);
    let params: Vec<Tensor> = ev.params().iter().map(|p| p.as_tensor().clone()).collect();
    let mut oracle = Products(ev);
    let n = 2000;
    let mut sum = [0.0; 3];
    for t in 1..=n {
        let h = values_f64(&hutchinson(&mut oracle, &params, 11, t).unwrap()[0]).unwrap();
        for (s, h) in sum.iter_mut().zip(h) {
            *s += h;
        }
    }
    // Within 4 standard errors: sqrt(sum_{j != i} A_ij^2 / n).
    for ((s, want), var) in sum.iter().zip(&exact).zip([1.0, 3.25, 2.25]) {
        let se = (var / n as f64).sqrt();
        assert!(
            (s / n as f64 - want).abs() < 4.0 * se,
            "mean {} vs {want}",
            s / n as f64
        );
    }
}

/// A run of `spec` on `file` for `steps` steps; its flat params.
fn run(file: &CompiledFile, spec: &str, steps: u64) -> (Run, Vec<f64>) {
    let mut settings = file.runs[0].settings.clone();
    settings.optimizer = OptimizerSpec::parse(spec).unwrap();
    let mut run = Run::new(file, RunRequest::new(file, 0, spec.into(), settings)).unwrap();
    while run.step_count() < steps {
        run.step().unwrap();
    }
    let p = run.flat_params();
    (run, p)
}

#[test]
fn a_seeded_hutchinson_run_repeats_itself_and_rewinds_to_the_same_numbers() {
    init();
    let file = compiled(QUADRATIC);
    // gamma = 1 and a short Hessian average: the steps are Newton-like, not clipped signs, so
    // the estimates decide them.
    let spec =
        "sophia(lr=0.5, beta2=0.5, gamma=1, update_interval=2, hessian_diag=hutchinson, seed=3)";
    let (mut first, end) = run(&file, spec, 20);
    assert_eq!(run(&file, spec, 20).1, end);
    let (_, other_seed) = run(&file, &spec.replace("seed=3", "seed=4"), 20);
    assert_ne!(other_seed, end);
    first.rewind_to(7).unwrap();
    while first.step_count() < 20 {
        first.step().unwrap();
    }
    assert_eq!(first.flat_params(), end);
    // Exact and estimated diagonals both bring the loss down from 3.125.
    for spec in [
        spec,
        "sophia(lr=0.5, beta2=0.5, gamma=1, update_interval=2)",
    ] {
        let (r, _) = run(&file, spec, 50);
        let loss = r.current_loss().unwrap();
        assert!(loss < 0.1, "{spec}: {loss}");
    }
}

#[test]
fn sm3_refuses_a_run_with_a_scalar_param() {
    init();
    let file = compiled(
        "name = \"r\"\nloss = \"(1 - x)^2 + sum((w - 1)^2)\"\n[params]\nx = 0.5\nw = \"[1, 2]\"\n",
    );
    let mut settings = file.runs[0].settings.clone();
    settings.optimizer = OptimizerSpec::parse("sm3").unwrap();
    let e = Run::new(&file, RunRequest::new(&file, 0, "sm3".into(), settings))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("cannot step `x`, a scalar"), "{e}");
}

#[test]
fn gamma_in_an_optimizer_table_is_sophias_and_lr_gamma_is_the_schedules() {
    init();
    let file = |table: &str| {
        format!("name = \"g\"\nloss = \"x^2\"\n[params]\nx = 1.0\n[optimizer]\n{table}\n")
    };
    // Sophia's gamma, and an exponential schedule halving the lr every step.
    let c = compiled(&file(
        "name = \"sophia\"\nlr = 0.01\ngamma = 0.05\nschedule = \"exponential\"\nlr_gamma = 0.5",
    ));
    let settings = &c.runs[0].settings;
    assert_eq!(
        settings.optimizer.get("gamma"),
        Some(HyperValue::Number(0.05))
    );
    assert_eq!(settings.schedule.lr(0.01, 3), 0.01 * 0.5f64.powi(3));
    // For an optimizer without its own gamma, both spellings are the schedule's.
    for key in ["gamma", "lr_gamma"] {
        let c = compiled(&file(&format!(
            "name = \"adam\"\nlr = 0.01\nschedule = \"exponential\"\n{key} = 0.5"
        )));
        assert_eq!(
            c.runs[0].settings.schedule.lr(0.01, 3),
            0.01 * 0.5f64.powi(3)
        );
    }
    // Sophia's gamma is checked as Sophia's, at its key.
    let loaded = load_bytes(
        Path::new("t.toml"),
        file("name = \"sophia\"\ngamma = -1").into_bytes(),
    );
    assert!(loaded.file.is_none());
    let d = &loaded.diagnostics[0];
    assert_eq!(d.message, "`gamma` must be at least 0, not -1");
    assert_eq!(
        d.help.as_deref(),
        Some("optax does not check it, but `sophia` is defined only for gamma at least 0")
    );
}
