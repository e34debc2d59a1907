//! Optimizers whose eval params differ from where they take gradients (schedule-free's x): the
//! loss there beside the training loss in every row, the CSV/JSONL exports and the summary.

mod common;

use std::ops::ControlFlow;
use std::path::Path;

use gradscope::compile::{CompiledFile, compile};
use gradscope::lang::file::load_bytes;
use gradscope::optim::settings::RunSettings;
use gradscope::optim::spec::OptimizerSpec;
use gradscope::optim::step::StateValue;
use gradscope::run::export::{csv_header, csv_row, step_json, summary_json};
use gradscope::run::summary::drive;
use gradscope::run::{Run, RunRequest};

const ROSENBROCK: &str = "name = \"r\"\ndtype = \"f64\"\nloss = \"(1 - x)^2 + 100 * (y - x^2)^2\"\n[params]\nx = -1.5\ny = 2.0\n";

fn rosenbrock(x: f64, y: f64) -> f64 {
    (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2)
}

fn compiled(text: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new("t.toml"), text.as_bytes().to_vec());
    let (c, d) = compile(loaded.file.expect("loads"));
    c.unwrap_or_else(|| panic!("{d:?}"))
}

fn run(c: &CompiledFile, spec: &str, steps: u64) -> Run {
    let mut s = RunSettings::from_table(&[]);
    s.optimizer = OptimizerSpec::parse(spec).unwrap();
    s.steps = steps;
    Run::new(c, RunRequest::new(c, 0, spec.into(), s)).unwrap()
}

/// Schedule-free SGD's x from the run's params (y) and its z: x = lerp(y, z, 1 - 1/momentum).
fn x_of(run: &Run, momentum: f64) -> Vec<f64> {
    let z = run
        .state_values()
        .into_iter()
        .find_map(|(k, v)| match v {
            StateValue::PerParam(z) if k == "z" => Some(z),
            _ => None,
        })
        .expect("schedule-free shows z");
    let w = 1.0 - 1.0 / momentum;
    run.param_values()
        .iter()
        .zip(&z)
        .map(|(y, z)| {
            let z = z.to_scalar::<f64>().unwrap();
            y[0] + w * (z - y[0])
        })
        .collect()
}

#[test]
fn every_row_records_the_loss_at_the_eval_params() {
    let c = compiled(ROSENBROCK);
    let mut r = run(&c, "schedulefree_sgd(lr=1e-3, momentum=0.8)", 10);
    // Before any update x = y: the eval loss is the loss.
    let row0 = r.history().get(0).unwrap();
    assert_eq!(row0.eval_loss, Some(row0.core.loss));
    for k in 1..=10 {
        r.step().unwrap();
        let x = x_of(&r, 0.8);
        let want = rosenbrock(x[0], x[1]);
        let got = r.history().eval_loss(k).expect("an eval loss");
        assert!(
            (got - want).abs() <= 1e-12 * want,
            "step {k}: {got} vs {want}"
        );
        // y = z = x after the first update; then gradients are taken at y, away from x.
        if k >= 2 {
            assert_ne!(got, r.history().core(k).loss, "step {k}");
        }
    }
    // Rewinding recomputes the same rows.
    let before: Vec<Option<f64>> = (0..=10).map(|k| r.history().eval_loss(k)).collect();
    r.rewind_to(4).unwrap();
    while r.step_count() < 10 {
        r.step().unwrap();
    }
    let after: Vec<Option<f64>> = (0..=10).map(|k| r.history().eval_loss(k)).collect();
    assert_eq!(before, after);
}

#[test]
fn exports_and_summary_carry_the_eval_loss() {
    let c = compiled(ROSENBROCK);
    let mut r = run(&c, "schedulefree_adamw(lr=0.01)", 5);
    let mut rows = Vec::new();
    let summary = drive(&mut r, |_, rec| {
        rows.push(rec.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    let names = r.param_names().to_vec();
    let header: Vec<String> = csv_header(&names).split(',').map(String::from).collect();
    let col = header
        .iter()
        .position(|h| h == "eval_loss")
        .expect("a column");
    for rec in &rows {
        let want = rec.eval_loss.expect("every row has one");
        let csv = csv_row("sf", &names, rec);
        let cell: f64 = csv.split(',').nth(col).unwrap().parse().unwrap();
        assert_eq!(cell, want, "{csv}");
        assert_eq!(step_json("sf", &names, rec)["eval_loss"], want);
    }
    let last = rows.last().unwrap().eval_loss;
    assert_eq!(summary.final_eval_loss, last);
    assert_eq!(summary_json(&summary)["final_eval_loss"], last.unwrap());
}

#[test]
fn without_eval_params_the_eval_loss_is_absent() {
    let c = compiled(ROSENBROCK);
    let mut r = run(&c, "adam(lr=0.01)", 3);
    let summary = drive(&mut r, |_, _| ControlFlow::Continue(())).unwrap();
    assert!(!r.history().has_eval_loss());
    let names = r.param_names().to_vec();
    let header: Vec<String> = csv_header(&names).split(',').map(String::from).collect();
    let col = header.iter().position(|h| h == "eval_loss").unwrap();
    let rec = r.history().get(2).unwrap();
    assert_eq!(rec.eval_loss, None);
    assert_eq!(csv_row("adam", &names, &rec).split(',').nth(col), Some(""));
    assert!(step_json("adam", &names, &rec)["eval_loss"].is_null());
    assert!(summary_json(&summary)["final_eval_loss"].is_null());
}

#[test]
fn the_run_command_has_an_eval_loss_column_when_a_run_has_eval_params() {
    let out = common::gradscope(&[
        "run",
        "losses/rosenbrock.toml",
        "-o",
        "schedulefree_sgd(lr=1e-3)",
        "-o",
        "adam",
        "--steps",
        "5",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    // The comparison table ends the output: its header, then one row a run.
    let table: Vec<Vec<&str>> = stdout
        .lines()
        .rev()
        .filter(|l| !l.is_empty())
        .take(3)
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    let (adam, sf, header) = (&table[0], &table[1], &table[2]);
    assert_eq!(
        header[..3],
        ["run", "final loss", "final eval loss"],
        "{stdout}"
    );
    assert!(
        sf[2].parse::<f64>().is_ok_and(|l| l.is_finite()),
        "{stdout}"
    );
    // adam evaluates where it takes gradients: no eval loss.
    assert_eq!((adam[0], adam[2]), ("adam(lr=0.01)", "-"), "{stdout}");
    let plain = common::gradscope(&[
        "run",
        "losses/rosenbrock.toml",
        "-o",
        "adam",
        "--steps",
        "5",
    ]);
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("eval loss"));
}
