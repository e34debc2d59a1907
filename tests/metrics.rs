//! `[metrics]`: named scalar expressions evaluated beside the loss, without gradients, at the
//! params a run is at; in `run`'s CSV and JSONL at the logged steps, and in its summary.

mod common;

use std::path::Path;

use gradscope::compile::Evaluator;
use gradscope::load::load_compiled;

const TINY: &str = "tests/data/metrics/tiny.toml";

#[test]
fn metrics_match_their_closed_form_at_the_initial_params() {
    let (c, _) = load_compiled(Path::new(TINY)).expect("compiles");
    assert_eq!(c.metric_names(), ["accuracy", "dist", "mse"]);
    let m = Evaluator::new(&c, 0).unwrap().metrics().unwrap();
    // Two of four rows agree; W - 1 has squares summing to 24.
    assert_eq!(m[0], 0.5);
    assert!((m[1] - 24f64.sqrt()).abs() < 1e-12, "{}", m[1]);
}

fn run(format: &str) -> String {
    let out = common::gradscope(&["run", TINY, "--every", "2", "--format", format]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn csv_carries_each_metric_at_the_logged_steps_taken_where_the_loss_was() {
    let text = run("csv");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).expect(name);
    let (step, loss) = (col("step"), col("loss"));
    let (acc, mse) = (col("metric_accuracy"), col("metric_mse"));
    assert!(headers.iter().any(|h| h == "metric_dist"));
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let steps: Vec<&str> = rows.iter().map(|r| &r[step]).collect();
    assert_eq!(
        steps,
        ["0", "2", "4", "5"],
        "rows 0..=5: every 2nd, and the last"
    );
    assert_eq!(&rows[0][acc], "0.5");
    for r in &rows {
        // The metric repeating the loss equals it: both were taken at the same params.
        assert_eq!(&r[mse], &r[loss], "step {}", &r[step]);
    }
}

#[test]
fn jsonl_carries_a_metrics_object_per_logged_step_and_final_metrics_in_the_summary() {
    let lines: Vec<serde_json::Value> = run("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let (summary, steps) = lines.split_last().unwrap();
    assert_eq!(steps.len(), 4, "rows 0, 2, 4 and the last, 5");
    assert_eq!(steps[0]["metrics"]["accuracy"], 0.5);
    for s in steps {
        assert_eq!(s["metrics"]["mse"], s["loss"], "step {}", s["step"]);
    }
    let (c, _) = load_compiled(Path::new(TINY)).unwrap();
    let names: Vec<&String> = summary["final_metrics"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(names.len(), c.metric_names().len());
    assert_eq!(summary["final_metrics"]["mse"], summary["final_loss"]);
}

#[test]
fn the_table_ends_with_each_metrics_final_value() {
    let text = run("table");
    let table: Vec<&str> = text.lines().skip_while(|l| !l.is_empty()).skip(1).collect();
    let header: Vec<&str> = table[0].split_whitespace().collect();
    assert!(
        header.ends_with(&["accuracy", "dist", "mse"]),
        "{}",
        table[0]
    );
    let base: Vec<&str> = table[1].split_whitespace().collect();
    // run, final loss, ..., accuracy, dist, mse: the metric repeating the loss ends the row.
    assert_eq!(base[0], "base");
    assert_eq!(base.last(), base.get(1), "{}", table[1]);
}

#[test]
fn check_reports_each_metric_at_the_initial_params() {
    // The same closed form as above: accuracy 0.5, dist √24.
    let out = common::gradscope(&["check", TINY, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["metrics"]["accuracy"], 0.5);
    let dist = v["metrics"]["dist"].as_f64().unwrap();
    assert!((dist - 24f64.sqrt()).abs() < 1e-5, "{dist}");
    let text = common::gradscope(&["check", TINY]).stdout;
    assert!(String::from_utf8_lossy(&text).contains("accuracy 0.5"));
}
