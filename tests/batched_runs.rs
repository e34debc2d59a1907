//! Runs stepped as one batched program equal the same runs stepped apart: every row's loss and
//! norms and the final params, in f64 to 1e-12 and f32 to 1e-5; a run that leaves the batch
//! (rewound, its lr changed, diverged) goes on exactly as it would have alone.

use std::ops::ControlFlow;
use std::path::Path;

use gradscope::compile::{CompiledFile, compile};
use gradscope::lang::file::load_bytes;
use gradscope::optim::spec::OptimizerSpec;
use gradscope::run::batch::{self, Batch};
use gradscope::run::summary::{drive, drive_many};
use gradscope::run::{Run, RunRequest};

fn compiled(text: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new("t.toml"), text.as_bytes().to_vec());
    let (c, d) = compile(loaded.file.expect("loads"));
    c.unwrap_or_else(|| panic!("{d:?}"))
}

/// A ridge-penalised logistic regression whose variants differ in a const, the optimizer's
/// numbers and the lr (well conditioned: rounding differences do not grow).
fn regression(dtype: &str) -> String {
    format!(
        r#"
name = "logistic regression"
seed = 3
dtype = "{dtype}"
loss = """
z = x @ w + b
mean(softplus(z) - y * z) + lam * sum(w^2)
"""
[data]
x = "randn(64, 3)"
y = "where(x @ [1.0, -2.0, 0.5] > 0, 1, 0)"
[consts]
lam = 1e-3
[params]
w = "randn(3)"
b = 0.5
[optimizer]
name = "adam"
lr = 0.01
steps = 100
[[variants]]
name = "lam 1e-2"
consts = {{ lam = 1e-2 }}
[[variants]]
name = "lr 0.05, betas"
optimizer = {{ lr = 0.05, beta1 = 0.8, beta2 = 0.99 }}
[[variants]]
name = "lam 1e-4, lr 0.002"
consts = {{ lam = 1e-4 }}
optimizer = {{ lr = 0.002 }}
"#
    )
}

const ROSENBROCK: &str = r#"
name = "rosenbrock"
dtype = "f64"
loss = "(1 - x)^2 + 100 * (y - x^2)^2"
[params]
x = -1.5
y = 2.0
[optimizer]
name = "sgd"
lr = 1e-4
momentum = 0.9
steps = 100
[[variants]]
name = "lr 2e-4"
optimizer = { lr = 2e-4 }
[[variants]]
name = "nesterov off, lr 5e-5"
optimizer = { lr = 5e-5, momentum = 0.5 }
[[variants]]
name = "too fast"
optimizer = { lr = 0.01 }
"#;

fn runs_of(c: &CompiledFile, spec: Option<&str>) -> Vec<Run> {
    (0..c.runs.len())
        .map(|def| {
            let mut request = RunRequest::of(c, def).unwrap();
            if let Some(s) = spec {
                request.settings.optimizer = OptimizerSpec::parse(s).unwrap();
            }
            Run::new(c, request).unwrap()
        })
        .collect()
}

fn batch_of(c: &CompiledFile, runs: &[Run]) -> Batch {
    let refs: Vec<&Run> = runs.iter().collect();
    let ids = (0..runs.len() as u64).collect();
    Batch::new(c, &refs, ids)
        .unwrap()
        .expect("these runs batch")
}

/// Steps the batch `n` times; returns the ids of the runs that left it.
fn step_batch(b: &mut Batch, runs: &mut [Run], n: usize) -> Vec<u64> {
    let mut left = Vec::new();
    for _ in 0..n {
        if b.is_empty() {
            break;
        }
        let ids = b.ids().to_vec();
        let mut lanes: Vec<&mut Run> = runs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| ids.contains(&(*i as u64)))
            .map(|(_, r)| r)
            .collect();
        left.extend(b.step(&mut lanes).unwrap());
    }
    left
}

/// `a` and `b` within `tol` relative to the larger of them and `scale` (a value's typical size:
/// a gradient norm near a minimum is mostly rounding).
fn assert_close_to(a: f64, b: f64, tol: f64, scale: f64, what: &str) {
    let ok = a == b
        || (a.is_nan() && b.is_nan())
        || (a - b).abs() <= tol * a.abs().max(b.abs()).max(scale).max(1e-300);
    assert!(ok, "{what}: {a} vs {b} (tolerance {tol})");
}

fn assert_close(a: f64, b: f64, tol: f64, what: &str) {
    assert_close_to(a, b, tol, 0.0, what);
}

/// Every row (loss, gradient norm, update norm, per-param norms) and the params of `a` and `b`;
/// norms relative to their first row's.
fn assert_same_runs(a: &Run, b: &Run, tol: f64) {
    assert_eq!(a.step_count(), b.step_count(), "{}", a.name);
    let first = b.history().get(0).unwrap();
    let grad_scale = first.core.grad_norm as f64;
    for k in 0..a.history().len() {
        let (x, y) = (a.history().get(k).unwrap(), b.history().get(k).unwrap());
        let what = format!("{} row {k}", a.name);
        assert_close(x.core.loss, y.core.loss, tol, &format!("{what} loss"));
        // Norms are kept in f32.
        let t = tol.max(1e-6);
        let (g, u) = (x.core.grad_norm as f64, y.core.grad_norm as f64);
        assert_close_to(g, u, t, grad_scale, &format!("{what} grad norm"));
        let (g, u) = (x.core.update_norm as f64, y.core.update_norm as f64);
        assert_close(g, u, t, &format!("{what} update norm"));
        assert_eq!(x.core.flags, y.core.flags, "{what} flags");
        for (p, q) in x.param_grad_norms.iter().zip(&y.param_grad_norms) {
            assert_close_to(*p as f64, *q as f64, t, grad_scale, &what);
        }
    }
    for (p, q) in a.param_values().iter().zip(b.param_values()) {
        for (x, y) in p.iter().zip(&q) {
            assert_close(*x, *y, tol, &format!("{} params", a.name));
        }
    }
    let (Some((k, x)), Some((j, y))) = (a.totals().best, b.totals().best) else {
        panic!("{}: no best loss", a.name);
    };
    assert_eq!(k, j, "{} best step", a.name);
    assert_close(x, y, tol, &format!("{} best loss", a.name));
}

fn alone(c: &CompiledFile, spec: Option<&str>) -> Vec<Run> {
    let mut runs = runs_of(c, spec);
    for r in &mut runs {
        drive(r, |_, _| ControlFlow::Continue(())).unwrap();
    }
    runs
}

fn batched_equals_alone(text: &str, spec: Option<&str>, tol: f64) {
    let c = compiled(text);
    let mut runs = runs_of(&c, spec);
    let mut b = batch_of(&c, &runs);
    let left = step_batch(&mut b, &mut runs, 100);
    assert!(left.is_empty(), "no run should leave: {left:?}");
    // Leaving hands over the optimizer state: the runs read their params alone again.
    for r in (0..b.len()).rev() {
        let id = b.ids()[r] as usize;
        b.leave(r, &mut runs[id]).unwrap();
    }
    for (a, s) in runs.iter().zip(alone(&c, spec)) {
        assert_same_runs(a, &s, tol);
    }
}

#[test]
fn batched_adam_runs_equal_separate_runs_in_f64() {
    batched_equals_alone(&regression("f64"), None, 1e-12);
}

#[test]
fn batched_adam_runs_equal_separate_runs_in_f32() {
    batched_equals_alone(&regression("f32"), None, 1e-5);
}

#[test]
fn batched_sgd_momentum_runs_equal_separate_runs() {
    let text = ROSENBROCK.replace(
        "[[variants]]\nname = \"too fast\"\noptimizer = { lr = 0.01 }\n",
        "",
    );
    batched_equals_alone(&text, None, 1e-12);
}

#[test]
fn every_batchable_classic_optimizer_equals_its_runs_alone() {
    for spec in [
        "adamw(lr=0.01, weight_decay=0.1)",
        "adam(lr=0.01, amsgrad=true)",
        "rmsprop(lr=0.001, momentum=0.5)",
        "adagrad(lr=0.1)",
        "lion(lr=0.001)",
        "sgd(lr=0.01, momentum=0.9, nesterov=true)",
    ] {
        batched_equals_alone(&regression("f64"), Some(spec), 1e-12);
    }
}

#[test]
fn a_diverging_run_leaves_the_batch_and_halts_as_it_would_alone() {
    let c = compiled(ROSENBROCK);
    let mut runs = runs_of(&c, None);
    let mut b = batch_of(&c, &runs);
    let left = step_batch(&mut b, &mut runs, 100);
    assert_eq!(left, vec![3], "the run with lr 0.01 diverges");
    for r in (0..b.len()).rev() {
        let id = b.ids()[r] as usize;
        b.leave(r, &mut runs[id]).unwrap();
    }
    // It left at its first unclean step and went on alone from there.
    while !runs[3].is_done() {
        runs[3].step().unwrap();
    }
    let separate = alone(&c, None);
    for (a, s) in runs.iter().zip(&separate) {
        assert_same_runs(a, s, 1e-12);
    }
    let (halt, expected) = (runs[3].halted.as_ref(), separate[3].halted.as_ref());
    assert!(expected.is_some(), "the fast run halts alone");
    assert_eq!(halt, expected);
}

#[test]
fn a_run_that_leaves_goes_on_as_it_would_have_alone() {
    let c = compiled(&regression("f64"));
    let mut runs = runs_of(&c, None);
    let mut b = batch_of(&c, &runs);
    step_batch(&mut b, &mut runs, 40);
    // Run 1 leaves at step 40 and has its lr halved there; the rest stay batched.
    b.leave(1, &mut runs[1]).unwrap();
    runs[1].set_lr_scale(0.5);
    for _ in 0..60 {
        runs[1].step().unwrap();
    }
    step_batch(&mut b, &mut runs, 60);
    for r in (0..b.len()).rev() {
        let id = b.ids()[r] as usize;
        b.leave(r, &mut runs[id]).unwrap();
    }
    let mut separate = runs_of(&c, None);
    for (i, s) in separate.iter_mut().enumerate() {
        for k in 0..100 {
            if i == 1 && k == 40 {
                s.set_lr_scale(0.5);
            }
            s.step().unwrap();
        }
    }
    for (a, s) in runs.iter().zip(&separate) {
        assert_same_runs(a, s, 1e-12);
    }
}

#[test]
fn rewinding_a_run_that_left_re_steps_bit_for_bit() {
    let c = compiled(&regression("f64"));
    let mut runs = runs_of(&c, None);
    let mut b = batch_of(&c, &runs);
    step_batch(&mut b, &mut runs, 40);
    let r = b.ids().iter().position(|&id| id == 2).unwrap();
    b.leave(r, &mut runs[2]).unwrap();
    while runs[2].step_count() < 250 {
        runs[2].step().unwrap();
    }
    let before: Vec<_> = (0..=250)
        .map(|k| runs[2].history().get(k).unwrap())
        .collect();
    let params = runs[2].param_values();
    // Back to just after it left, and past the snapshot at 200: forward again, the same bits.
    for back_to in [45, 40, 222] {
        runs[2].rewind_to(back_to).unwrap();
        assert_eq!(runs[2].step_count(), back_to);
        while runs[2].step_count() < 250 {
            runs[2].step().unwrap();
        }
        for x in &before {
            let y = runs[2].history().get(x.step as usize).unwrap();
            assert_eq!(
                x.core.loss.to_bits(),
                y.core.loss.to_bits(),
                "row {}",
                x.step
            );
            assert_eq!(x.param_grad_norms, y.param_grad_norms, "row {}", x.step);
        }
        assert_eq!(params, runs[2].param_values());
    }
}

#[test]
fn a_batch_steps_the_same_bits_every_time() {
    let c = compiled(&regression("f64"));
    let step = || {
        let mut runs = runs_of(&c, None);
        let mut b = batch_of(&c, &runs);
        step_batch(&mut b, &mut runs, 100);
        runs.iter()
            .map(|r| {
                (0..=100)
                    .map(|k| r.history().get(k).unwrap().core.loss.to_bits())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(step(), step());
}

#[test]
fn drive_many_batches_what_batches_and_summarises_every_run() {
    let c = compiled(&regression("f64"));
    let mut runs = runs_of(&c, None);
    let refs: Vec<&Run> = runs.iter().collect();
    assert_eq!(batch::groups(&c, &refs), vec![vec![0, 1, 2, 3]]);
    let mut rows = vec![0u64; runs.len()];
    let summaries = drive_many(&c, &mut runs, |i, _, r| {
        assert_eq!(r.step, rows[i], "run {i}'s rows come in order");
        rows[i] += 1;
        ControlFlow::Continue(())
    });
    assert_eq!(rows, vec![101; 4]);
    let separate = alone(&c, None);
    for ((a, s), sum) in runs.iter().zip(&separate).zip(summaries) {
        assert_same_runs(a, s, 1e-12);
        let sum = sum.unwrap().unwrap();
        assert_eq!(sum.steps, 100);
        assert_close(
            sum.final_loss,
            s.history().get(100).unwrap().core.loss,
            1e-12,
            "final",
        );
    }
}

#[test]
fn runs_that_cannot_batch_are_not_grouped() {
    let c = compiled(&regression("f64"));
    let mut runs = runs_of(&c, None);
    // Clipping looks at the whole gradient of a run: that run steps alone.
    runs[1].config.clip_norm = Some(1.0);
    let refs: Vec<&Run> = runs.iter().collect();
    assert_eq!(batch::groups(&c, &refs), vec![vec![0, 2, 3]]);
    // Another optimizer kind is another group.
    let mut runs = runs_of(&c, None);
    runs[3].config.optimizer = OptimizerSpec::parse("sgd(lr=0.01)").unwrap();
    let refs: Vec<&Run> = runs.iter().collect();
    assert_eq!(batch::groups(&c, &refs), vec![vec![0, 1, 2]]);
}

#[test]
fn the_workers_batched_runs_leave_on_an_lr_change_and_rewind_alone() {
    use gradscope::run::history::StepRecord;
    use gradscope::run::worker::{self, Command, Event};
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::mpsc::channel;

    let c = compiled(&regression("f64"));
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let emit: worker::Emit = Box::new(move |e: Event| {
        let _ = tx.lock().unwrap().send(e);
    });
    let (commands, inbox) = channel();
    let handle = worker::spawn("t", c.clone(), inbox, emit).unwrap();
    // 60 steps batched, run 1's lr halved (it leaves), 40 more, back 30, 30 again.
    for cmd in [
        Command::Step(60),
        Command::ScaleLr(1, 0.5),
        Command::Step(40),
        Command::Rewind(30),
        Command::Step(30),
        Command::Ping(1),
    ] {
        commands.send(cmd).unwrap();
    }
    let mut rows: BTreeMap<u64, Vec<StepRecord>> = BTreeMap::new();
    loop {
        match rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("events")
        {
            Event::Records(id, records) => {
                let kept = rows.entry(id).or_default();
                let from = records[0].step as usize;
                kept.truncate(from);
                kept.extend(records);
            }
            Event::Truncated(id, len, _) => rows.entry(id).or_default().truncate(len),
            Event::Pong(1) => break,
            _ => {}
        }
    }
    commands.send(Command::Shutdown).unwrap();
    handle.join().unwrap();
    let mut separate = runs_of(&c, None);
    for (i, s) in separate.iter_mut().enumerate() {
        for k in 0..100 {
            if i == 1 && k == 60 {
                s.set_lr_scale(0.5);
            }
            s.step().unwrap();
        }
    }
    assert_eq!(rows.len(), 4);
    for (id, s) in separate.iter().enumerate() {
        let got = &rows[&(id as u64)];
        assert_eq!(got.len(), 101, "{}", s.name);
        for r in got {
            let want = s.history().get(r.step as usize).unwrap();
            assert_close(
                r.core.loss,
                want.core.loss,
                1e-12,
                &format!("{} row {}", s.name, r.step),
            );
            assert_eq!(r.core.lr, want.core.lr, "{} row {}", s.name, r.step);
        }
    }
}

#[test]
fn variants_whose_programs_differ_batch_apart() {
    // A variant with a loss of its own runs another program: it batches with its own kind only.
    let text = r#"
name = "eps"
dtype = "f64"
loss = "mean(log((x @ w - y)^2 + eps))"
[data]
x = "randn(16, 2)"
y = "randn(16)"
[consts]
eps = 1e-3
[params]
w = "zeros(2)"
[optimizer]
name = "adam"
lr = 0.01
steps = 10
[[variants]]
name = "eps 1e-2"
consts = { eps = 1e-2 }
[[variants]]
name = "mse"
loss = "mean((x @ w - y)^2)"
[[variants]]
name = "mse, lr 0.1"
loss = "mean((x @ w - y)^2)"
optimizer = { lr = 0.1 }
"#;
    let c = compiled(text);
    let runs = runs_of(&c, None);
    let refs: Vec<&Run> = runs.iter().collect();
    assert_eq!(batch::groups(&c, &refs), vec![vec![0, 1], vec![2, 3]]);
}

#[test]
fn runs_with_a_weight_matrix_per_run_step_apart() {
    // Each run's layer is a matrix: as lanes, a gemm per lane anyway, without a run alone's
    // fused layers (slower than apart), so they do not batch; a vector of weights does.
    let layer = |w: &str| {
        format!(
            "name = \"layer\"\ndtype = \"f64\"\nloss = \"mean((tanh(x @ W) @ v - y)^2)\"\n\
             [data]\nx = \"randn(16, 3)\"\ny = \"randn(16)\"\n[params]\nW = \"{w}\"\n\
             v = \"ones(4) / 4\"\n[optimizer]\nname = \"adam\"\nlr = 0.01\n\
             [[variants]]\nname = \"faster\"\noptimizer = {{ lr = 0.1 }}\n"
        )
    };
    let c = compiled(&layer("randn(3, 4) / 2"));
    let runs = runs_of(&c, None);
    let refs: Vec<&Run> = runs.iter().collect();
    let lanes = gradscope::compile::lanes::LaneEvaluator::new(&c, &[0, 1], candle_core::DType::F64)
        .unwrap();
    assert!(!lanes.expect("the program has a lane form").pays());
    assert!(Batch::new(&c, &refs, vec![0, 1]).unwrap().is_none());
    let c = compiled(&regression("f64"));
    let runs = runs_of(&c, None);
    let refs: Vec<&Run> = runs.iter().collect();
    assert!(Batch::new(&c, &refs, vec![0, 1, 2, 3]).unwrap().is_some());
}

#[test]
fn runs_whose_loss_sums_a_large_tensors_squares_step_apart() {
    // Past 32 MiB a run alone sums the squares as one op, in f64; lanes would sum them as
    // candle does, and a run leaving its batch would re-take its row with another loss.
    let text = |n: usize| {
        format!(
            "name = \"l2\"\ndtype = \"f32\"\nloss = \"sum(w^2)\"\n[params]\nw = \"zeros({n}, {n})\"\n\
             [optimizer]\nname = \"adam\"\nlr = 0.01\nsteps = 3\n\
             [[variants]]\nname = \"faster\"\noptimizer = {{ lr = 0.1 }}\n"
        )
    };
    for (n, batches) in [(2900, false), (100, true)] {
        let c = compiled(&text(n));
        let runs = runs_of(&c, None);
        let refs: Vec<&Run> = runs.iter().collect();
        assert_eq!(!batch::groups(&c, &refs).is_empty(), batches, "{n}x{n}");
    }
}
