//! Params that stop moving: an update that rounds away in bf16, or comes out zero once Adam's
//! g² overflowed f32, is flagged at its step and reported at the param's line; convergence to
//! the precision (SGD near a minimum) is not, nor a param its own `lr_scale` freezes; a lane of
//! a batch that stalls leaves it and goes on as it would have alone.

use std::ops::ControlFlow;
use std::path::Path;

use gradscope::compile::{CompiledFile, compile};
use gradscope::lang::file::load_bytes;
use gradscope::run::batch::Batch;
use gradscope::run::export::{step_json, summary_json};
use gradscope::run::history::flags;
use gradscope::run::summary::{Summary, drive};
use gradscope::run::{Run, RunRequest};

fn compiled(text: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new("t.toml"), text.as_bytes().to_vec());
    let (c, d) = compile(loaded.file.expect("loads"));
    c.unwrap_or_else(|| panic!("{d:?}"))
}

/// Run definition `def` of `c`, stepped to its end alone, and its summary.
fn summarised(c: &CompiledFile, def: usize) -> (Run, Summary) {
    let mut run = Run::new(c, RunRequest::of(c, def).unwrap()).unwrap();
    let summary = drive(&mut run, |_, _| ControlFlow::Continue(())).unwrap();
    (run, summary)
}

fn driven(c: &CompiledFile, def: usize) -> Run {
    summarised(c, def).0
}

fn stalled_rows(run: &Run) -> Vec<u64> {
    (0..run.history().len())
        .filter_map(|k| run.history().get(k))
        .filter(|r| r.has(flags::STALLED))
        .map(|r| r.step)
        .collect()
}

/// Least squares in bf16 with Adam at lr 1e-3: below half the gap between bf16 values at
/// |w| = 1 (2^-8 = 0.0039), so every update rounds back to where it started.
const BF16: &str = r#"
name = "bf16 adam"
dtype = "bf16"
loss = "mean((X @ w - y)^2)"
[data]
X = "randn(32, 2)"
y = "X @ [2.0, -3.0]"
[params]
w = "[1.0, -1.0]"
[optimizer]
name = "adam"
lr = 1e-3
steps = 20
[[variants]]
name = "master weights"
tricks = ["master_weights"]
"#;

#[test]
fn bf16_updates_that_round_away_stall_from_the_first_step_and_say_where() {
    let c = compiled(BF16);
    let (run, summary) = summarised(&c, 0);
    assert_eq!(run.param_values()[0], vec![1.0, -1.0], "w never moved");
    assert_eq!(run.stalled, 20);
    assert_eq!(stalled_rows(&run), (0..20).collect::<Vec<_>>());
    let stall = run.first_stall.as_ref().expect("a stall");
    assert_eq!((stall.step, stall.params.len()), (0, 1));
    assert_eq!(stall.params[0].size, 1.0);
    let d = stall.diagnostic(&c.file);
    assert!(!d.is_error());
    // `w = "[1.0, -1.0]"` is line 9 of the file (whose text starts with a line break).
    assert_eq!(d.line_col(), Some((9, 1)));
    let text = d.render(false);
    assert!(text.contains("`w` did not move at step 0"), "{text}");
    // bf16 has 8 significant bits: values in [1, 2) lie 2^-7 apart.
    assert!(text.contains("bf16") && text.contains("0.0078"), "{text}");
    assert!(text.contains("master_weights"), "{text}");
    assert_eq!(
        stall.short(&c.file),
        "`w` did not move: updates round away in bf16"
    );
    // `run`'s table: the count in the `stalled` column.
    let table = gradscope::cli::run::comparison_table(std::slice::from_ref(&summary));
    let [header, row] = [0, 1].map(|i| table.lines().nth(i).unwrap().to_string());
    let column = header.find("stalled").expect("a stalled column");
    assert_eq!(
        row[column..].split_whitespace().next(),
        Some("20"),
        "{table}"
    );
    let summary = summary_json(&summary);
    assert_eq!(summary["stalled"], 20);
    assert_eq!(summary["first_stalled_step"], 0);
    let row = step_json("base", &["w".into()], &run.history().get(3).unwrap());
    assert_eq!(row["stalled"], true);

    // f32 master weights keep what rounding drops: the bf16 params move once it adds up, and a
    // step that leaves them in place is no stall.
    let master = driven(&c, 1);
    assert_ne!(master.param_values()[0], vec![1.0, -1.0]);
    assert_eq!((master.stalled, master.first_stall.is_none()), (0, true));
}

/// `w` has the gradient 2e25 w: its square overflows f32, so Adam's second moment is inf and
/// m / (√inf + eps) is 0. In f64 the same first step is Adam's lr * sign(g).
fn overflow(dtype: &str) -> String {
    format!(
        r#"
name = "adam overflow"
dtype = "{dtype}"
loss = "s * sum(w^2)"
[consts]
s = 1e25
[params]
w = "[1.0, 2.0]"
[optimizer]
name = "adam"
lr = 0.1
steps = 5
[[variants]]
name = "tame"
consts = {{ s = 1.0 }}
"#
    )
}

#[test]
fn adams_second_moment_overflowing_f32_stalls_and_is_named_the_cause() {
    let c = compiled(&overflow("f32"));
    let run = driven(&c, 0);
    assert_eq!(run.param_values()[0], vec![1.0, 2.0]);
    assert_eq!(stalled_rows(&run), (0..5).collect::<Vec<_>>());
    let stall = run.first_stall.as_ref().unwrap();
    assert_eq!(stall.params[0].grad, 4e25_f32 as f64);
    let text = stall.diagnostic(&c.file).render(false);
    assert!(text.contains("whose square overflows f32"), "{text}");
    assert!(text.contains("clip_norm"), "{text}");

    let c64 = compiled(&overflow("f64"));
    let mut run = Run::new(&c64, RunRequest::of(&c64, 0).unwrap()).unwrap();
    run.step().unwrap();
    // Adam's first update is lr * m̂ / (√v̂ + eps) = 0.1 * g / (|g| + 1e-8), 0.1 to 1e-33 here.
    assert_eq!(run.param_values()[0], vec![0.9, 1.9]);
    assert_eq!((run.stalled, run.first_stall.is_none()), (0, true));
}

#[test]
fn sgd_converging_to_the_precision_does_not_stall() {
    // 3.3 is no f32: w settles next to it, where 2 (w - 3.3) * 0.1 is below half a gap (1.2e-7)
    // and w + that rounds back to w, a gradient ~1e-7 of the first one (6.6).
    let c = compiled(
        "name = \"q\"\ndtype = \"f32\"\nloss = \"(w - 3.3)^2\"\n[params]\nw = 0.0\n\
         [optimizer]\nname = \"sgd\"\nlr = 0.1\nsteps = 200\n",
    );
    let run = driven(&c, 0);
    let still = (0..200)
        .filter_map(|k| run.history().get(k))
        .filter(|r| r.core.update_norm == 0.0 && r.core.grad_norm > 0.0)
        .count();
    assert!(
        still > 50,
        "the precision is reached: {still} updates left w in place"
    );
    assert_eq!((run.stalled, run.first_stall.is_none()), (0, true));
}

#[test]
fn a_param_its_lr_scale_freezes_does_not_stall() {
    let c = compiled(
        "name = \"frozen\"\ndtype = \"f64\"\nloss = \"(w - 1)^2 + (b - 2)^2\"\n[params]\nw = 0.0\n\
         b = 0.0\n[optimizer]\nname = \"adam\"\nlr = 0.1\nsteps = 10\n\
         [optimizer.params.b]\nlr_scale = 0\n",
    );
    let run = driven(&c, 0);
    let values = run.param_values();
    assert!(values[0][0] > 0.5, "w moves: {values:?}");
    assert_eq!(values[1], vec![0.0]);
    assert_eq!((run.stalled, run.first_stall.is_none()), (0, true));
}

#[test]
fn a_lane_that_stalls_leaves_its_batch_and_goes_on_as_alone() {
    let c = compiled(&overflow("f32"));
    let mut runs: Vec<Run> = (0..2)
        .map(|def| Run::new(&c, RunRequest::of(&c, def).unwrap()).unwrap())
        .collect();
    let refs: Vec<&Run> = runs.iter().collect();
    let mut batch = Batch::new(&c, &refs, vec![0, 1])
        .unwrap()
        .expect("they batch");
    let mut left = Vec::new();
    while !batch.is_empty() && runs[1].step_count() < 5 {
        let ids = batch.ids().to_vec();
        let mut lanes: Vec<&mut Run> = runs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| ids.contains(&(*i as u64)))
            .map(|(_, r)| r)
            .collect();
        left.extend(batch.step(&mut lanes).unwrap());
    }
    assert_eq!(left, vec![0], "the overflowing lane left at its first step");
    batch.leave(0, &mut runs[1]).unwrap();
    while !runs[0].is_done() {
        runs[0].step().unwrap();
    }
    for (def, run) in runs.iter().enumerate() {
        let alone = driven(&c, def);
        assert_eq!(run.step_count(), alone.step_count());
        assert_eq!(stalled_rows(run), stalled_rows(&alone), "{}", run.name);
        assert_eq!(run.first_stall, alone.first_stall, "{}", run.name);
        for (p, q) in run.param_values().iter().zip(alone.param_values()) {
            for (x, y) in p.iter().zip(q) {
                assert!((x - y).abs() <= 1e-5 * y.abs(), "{}: {x} vs {y}", run.name);
            }
        }
    }
    assert_eq!(runs[0].stalled, 5);
    assert_eq!(runs[1].stalled, 0);
}

/// A file of one param `w` in `dtype` with `loss`, stepped by `optimizer` at `lr` for `steps`.
fn one_param(
    dtype: &str,
    loss: &str,
    w: &str,
    optimizer: &str,
    lr: f64,
    steps: u64,
) -> CompiledFile {
    compiled(&format!(
        "name = \"one\"\ndtype = \"{dtype}\"\nloss = \"{loss}\"\n[params]\nw = {w}\n\
         [optimizer]\nname = \"{optimizer}\"\nlr = {lr}\nsteps = {steps}\n"
    ))
}

#[test]
fn optimizers_that_hold_a_param_on_purpose_do_not_stall() {
    // Rprop skips the step where the gradient's sign flips; L-BFGS stops at its tolerances.
    // On this flat loss (a gradient of 6e-6 at the start) L-BFGS meets its tolerances and
    // takes zero steps with a gradient left.
    for (optimizer, loss, lr) in [
        ("rprop", "(w - 3)^2", 0.5),
        ("lbfgs", "1e-6 * (w - 3)^2", 1.0),
    ] {
        let run = driven(&one_param("f64", loss, "0.0", optimizer, lr, 30), 0);
        let held = (0..30)
            .filter_map(|k| run.history().get(k))
            .filter(|r| r.core.update_norm == 0.0 && r.core.grad_norm > 0.0)
            .count();
        assert!(held > 0, "{optimizer} left w in place with a gradient");
        assert_eq!(
            (run.stalled, run.first_stall.is_none()),
            (0, true),
            "{optimizer}"
        );
    }
}

#[test]
fn a_param_whose_first_gradient_is_zero_is_judged_by_its_largest() {
    // b's gradient is 0 at the start and grows as a moves; at the end both sit next to 3.3 (no
    // f32), their gradients ~1e-7 of their largest: converged, not stalled.
    let c = compiled(
        "name = \"z\"\ndtype = \"f32\"\nloss = \"(a - 3.3)^2 + (b - a)^2\"\n[params]\na = 0.0\n\
         b = 0.0\n[optimizer]\nname = \"sgd\"\nlr = 0.1\nsteps = 400\n",
    );
    let run = driven(&c, 0);
    assert_eq!(run.history().get(0).unwrap().param_grad_norms[1], 0.0);
    assert!((run.param_values()[1][0] - 3.3).abs() < 1e-5);
    assert_eq!((run.stalled, run.first_stall.is_none()), (0, true));
}

#[test]
fn an_overflow_is_named_only_for_an_optimizer_that_keeps_squares() {
    // |g| = 300 squares past f16's 65504, but SGD keeps no g²: its lr * g rounds away. (Adam's
    // case is the f32 test above.)
    let c = one_param("f16", "300 * w", "1.5", "sgd", 1e-6, 5);
    let stall = driven(&c, 0).first_stall.expect("stalls");
    assert!(stall.short(&c.file).ends_with("updates round away in f16"));
}
