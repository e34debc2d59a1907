//! The bundled library in losses/: every file loads, compiles and evaluates; `check` passes.

use std::process::Command;

use gradscope::cli::check::check_all;
use gradscope::load::discover;

#[test]
fn the_library_has_at_least_fourteen_files_plus_the_benchmarks() {
    let (files, _) = discover(&["losses".into()]);
    let bench = files
        .iter()
        .filter(|f| f.starts_with("losses/bench"))
        .count();
    assert!(files.len() - bench >= 14, "{files:?}");
    assert_eq!(bench, 4);
}

/// losses/data holds what the loss files read (CSV, NumPy, their scripts): none is a loss file,
/// and `npy_linear.toml` reads its NumPy arrays from there.
#[test]
fn the_data_folder_holds_no_loss_file_and_the_numpy_example_reads_it() {
    let (files, _) = discover(&["losses".into()]);
    assert!(
        !files.iter().any(|f| f.starts_with("losses/data")),
        "{files:?}"
    );
    let loaded = gradscope::load::load(std::path::Path::new("losses/npy_linear.toml"));
    assert!(loaded.ok(), "{:?}", loaded.diagnostics);
    let reads: Vec<String> = loaded
        .reads
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with("losses/data"))
        .collect();
    assert_eq!(
        reads,
        [
            "losses/data/linear_X.npy",
            "losses/data/linear_w0.npy",
            "losses/data/linear_y.npy"
        ]
    );
}

#[test]
fn every_bundled_file_is_finite_at_its_initial_params() {
    let (reports, missing) = check_all(&["losses".into()], true);
    assert!(missing.is_empty());
    // The files of losses/optimizers hold optimizers only: they check, but define no run.
    let (optimizer_files, reports): (Vec<_>, Vec<_>) = reports
        .iter()
        .partition(|r| gradscope::load::is_optimizer_file(&r.file.path));
    assert!(!optimizer_files.is_empty());
    for r in optimizer_files {
        assert!(r.ok() && r.runs.is_empty(), "{}", r.file.path.display());
    }
    for r in reports {
        let errors: Vec<String> = r
            .file
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.render(false))
            .collect();
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            r.file.path.display(),
            errors.join("\n")
        );
        let compiled = r.file.compiled.as_ref().expect("compiled");
        assert_eq!(
            r.runs.len(),
            compiled.runs.len(),
            "{}",
            r.file.path.display()
        );
        assert!(
            compiled.file.about.is_some(),
            "{} has no `about`",
            r.file.path.display()
        );
        for run in &r.runs {
            assert!(
                run.loss.is_finite(),
                "{} {}",
                r.file.path.display(),
                run.name
            );
        }
        let base = &r.runs[0];
        for p in &base.params {
            assert!(
                p.grad.iter().all(|g| g.is_finite()),
                "{}: base gradient of {} is not finite",
                r.file.path.display(),
                p.name
            );
        }
    }
}

#[test]
fn check_exits_zero_on_the_library() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args(["check", "losses"])
        .output()
        .expect("binary runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn check_json_has_the_documented_fields() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args(["check", "--json", "losses/robust_log_mse.toml"])
        .output()
        .expect("binary runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["ok"], true);
    assert!(v["loss"].is_f64());
    let w = &v["params"]["w"];
    assert_eq!(w["shape"], serde_json::json!([3]));
    assert_eq!(w["grad"].as_array().unwrap().len(), 3);
    assert!(w["grad_norm"].is_f64());
    let variants = v["variants"].as_array().unwrap();
    assert!(variants.iter().any(|x| x["name"] == "eps = 0 (naive)"));
    assert_eq!(v["diagnostics"], serde_json::json!([]));
}

#[test]
fn list_shows_params_variants_and_status() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args(["list", "--json", "losses"])
        .output()
        .expect("binary runs");
    assert_eq!(out.status.code(), Some(0));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let rosen = rows
        .iter()
        .find(|r| r["file"] == "losses/rosenbrock.toml")
        .unwrap();
    assert_eq!(rosen["params"]["x"]["shape"], serde_json::json!([]));
    assert_eq!(rosen["ok"], true);
}

/// Warnings that are a bundled file's point: (file, what the warning names), each announced by
/// the file's own `about` text.
const INTENDED_WARNINGS: &[(&str, &str)] = &[
    (
        "losses/custom_gradients.toml",
        "the gradient of `round_ste`",
    ),
    ("losses/norm_at_zero.toml", "naive"),
];

#[test]
fn check_warns_about_bundled_files_only_where_the_warning_is_their_point() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args(["check", "losses", "--json"])
        .output()
        .expect("binary runs");
    assert!(out.status.success());
    let mut unexpected = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let report: serde_json::Value = serde_json::from_str(line).expect("one object a line");
        let file = report["file"].as_str().unwrap();
        for d in report["diagnostics"].as_array().unwrap() {
            let message = d["message"].as_str().unwrap();
            let intended = INTENDED_WARNINGS
                .iter()
                .any(|(f, what)| *f == file && message.contains(what));
            if !intended {
                unexpected.push(format!("{file}: {message}"));
            }
        }
    }
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    for (file, _) in INTENDED_WARNINGS {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.contains("point"),
            "{file}'s about does not say its warning is the point"
        );
    }
}
