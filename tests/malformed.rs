//! Every file in tests/malformed/ holds one mistake: its rendered diagnostics are snapshotted, it
//! must carry a line and column, and `gradscope check` must exit 1 for it without panicking.
//! Every file in tests/warnings/ compiles with warnings only, snapshotted the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

use gradscope::cli::check::check_file;

fn malformed_files() -> Vec<PathBuf> {
    toml_files("tests/malformed")
}

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the fixture folder exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

#[test]
fn there_are_at_least_twenty_malformed_files() {
    assert!(malformed_files().len() >= 20);
}

#[test]
fn each_malformed_file_gets_located_diagnostics() {
    for path in malformed_files() {
        let report = check_file(&path, true);
        assert!(!report.ok(), "{} should have an error", path.display());
        let rendered = rendered(&report.file.diagnostics);
        for d in report.file.diagnostics.iter().filter(|d| d.is_error()) {
            assert!(
                d.line_col().is_some(),
                "{}: error without line and column: {}",
                path.display(),
                d.headline()
            );
        }
        insta::with_settings!({snapshot_path => "snapshots/malformed", prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(stem(&path), rendered);
        });
    }
}

fn rendered(diags: &[gradscope::diagnostic::Diagnostic]) -> String {
    diags.iter().map(|d| d.render(false)).collect()
}

#[test]
fn each_warning_file_compiles_and_gets_its_warnings() {
    for path in toml_files("tests/warnings") {
        let report = check_file(&path, true);
        assert!(report.ok(), "{} should compile", path.display());
        assert!(
            !report.file.diagnostics.is_empty(),
            "{} should warn",
            path.display()
        );
        insta::with_settings!({snapshot_path => "snapshots/warnings", prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(stem(&path), rendered(&report.file.diagnostics));
        });
    }
}

/// A file's control characters (a binary file's bytes, escape sequences in a name) never reach
/// the terminal: the reports show them as U+FFFD or escaped.
#[test]
fn no_report_holds_a_control_character() {
    for path in malformed_files()
        .into_iter()
        .chain(toml_files("tests/warnings"))
    {
        let report = check_file(&path, true);
        let text = rendered(&report.file.diagnostics);
        let bad = text.chars().find(|&c| c.is_control() && c != '\n');
        assert_eq!(bad, None, "{}:\n{text}", path.display());
    }
}

#[test]
fn check_exits_one_for_each_malformed_file() {
    for path in malformed_files() {
        let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
            .arg("check")
            .arg(&path)
            .output()
            .expect("binary runs");
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("error"), "{}: {stdout}", path.display());
    }
}

#[test]
fn json_diagnostics_carry_file_line_and_column() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args(["check", "--json", "tests/malformed/unknown_function.toml"])
        .output()
        .expect("binary runs");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["ok"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(d["file"], "tests/malformed/unknown_function.toml");
    assert_eq!(d["line"], 4);
    assert_eq!(d["column"], 7);
    assert_eq!(d["message"], "unknown function `expp`");
}

#[test]
fn one_bad_file_does_not_stop_the_others() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args([
            "check",
            "--json",
            "tests/malformed/unknown_function.toml",
            "losses/rosenbrock.toml",
            "tests/malformed/nope-does-not-exist.toml",
        ])
        .output()
        .expect("binary runs");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rosen = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["file"] == "losses/rosenbrock.toml")
        .expect("rosenbrock reported");
    assert_eq!(rosen["ok"], true);
    assert_eq!(rosen["loss"], 12.5);
    assert!(stdout.contains("no such file or directory"));
}

#[test]
fn a_directory_without_loss_files_is_an_error() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no_loss_files");
    std::fs::create_dir_all(&dir).expect("a temp dir");
    std::fs::write(dir.join("notes.txt"), "not a loss file").expect("written");
    for command in ["check", "list"] {
        let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
            .args([command, dir.to_str().expect("utf-8")])
            .output()
            .expect("binary runs");
        assert_eq!(out.status.code(), Some(1), "{command}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("no loss files (*.toml) in"),
            "{command}: {stdout}"
        );
    }
}

#[test]
fn list_and_check_agree_on_a_loss_that_is_nan_at_its_start() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("nan_at_start");
    std::fs::create_dir_all(&dir).expect("a temp dir");
    std::fs::write(
        dir.join("nan.toml"),
        "name = \"NaN at start\"\nloss = \"log(w - 1)\"\n[params]\nw = 0.5\n",
    )
    .expect("written");
    for command in ["check", "list"] {
        let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
            .args([command, dir.to_str().expect("utf-8")])
            .output()
            .expect("binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{command}: {stdout}");
        assert!(
            stdout.contains("is NaN at the initial params"),
            "{command}: {stdout}"
        );
    }
}

#[test]
fn check_names_a_broken_file_by_its_name_key() {
    // a schema error and a TOML syntax error both leave the `name` key readable
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("broken_named");
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let broken_toml = dir.join("broken_toml.toml");
    std::fs::write(
        &broken_toml,
        "name = \"Half written\"\nloss = \"mean(w^2)\"\n[params\n",
    )
    .expect("written");
    for (path, name) in [
        (Path::new("tests/malformed/bad_dtype.toml"), "Bad dtype"),
        (broken_toml.as_path(), "Half written"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
            .arg("check")
            .arg(path)
            .output()
            .expect("binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let first = stdout.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error") && first.ends_with(&format!("  {name}")),
            "{first}"
        );
    }
}
