//! `gradscope sweep`: the grid it makes, that every point is the run `gradscope run` would
//! step, seeds, and the command end to end.

mod common;
mod svg;

use std::path::Path;

use clap::Parser;
use gradscope::cli::run::{RunOptions, build_runs};
use gradscope::cli::sweep::{SweepArgs, build_grid, sweep_chart, sweep_command};
use gradscope::cli::{Cli, Command};
use gradscope::compile::CompiledFile;
use gradscope::draw::sweep::{SweepPicture, save_sweep};
use gradscope::load::load_compiled;
use gradscope::run::Retention;
use gradscope::run::summary::{FinalParams, drive};
use gradscope::run::sweep::{RankBy, drive_grid, rows};

/// `gradscope sweep ARGS` as clap parses it.
fn sweep_args(args: &[&str]) -> SweepArgs {
    let cli = Cli::try_parse_from(["gradscope", "sweep"].iter().chain(args)).unwrap();
    match cli.command {
        Some(Command::Sweep(a)) => a,
        other => panic!("not a sweep: {other:?}"),
    }
}

fn compiled(path: &str) -> CompiledFile {
    load_compiled(Path::new(path)).unwrap().0
}

/// Every value of a tensor, flattened, in f64.
fn values(t: &candle_core::Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn the_grid_is_the_product_of_lists_consts_variants_and_dtypes() {
    let file = compiled("losses/robust_log_mse.toml");
    let args = sweep_args(&[
        "losses/robust_log_mse.toml",
        "-o",
        "adam(lr=[1e-3, 1e-2], beta1=linspace(0.8, 0.9, 3))",
        "-o",
        "sgd",
        "--const",
        "eps=[1e-7, 1e-3]",
        "--variant",
        "all",
        "--dtype",
        "f32,f64",
        "--steps",
        "3",
    ]);
    let grid = build_grid(&args, &file).unwrap();
    let variants = file.runs.len();
    // (2 x 3 adam points + 1 sgd point) x variants x 2 dtypes x 2 eps.
    assert_eq!(grid.points.len(), 7 * variants * 2 * 2);
    assert_eq!(grid.files.len(), 2, "one compiled file per eps");
    let runs: usize = grid.files.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(runs, grid.points.len());
    assert!(grid.mixed_objectives);
    for (file, runs) in &grid.files {
        let eps = file.file.consts[0].value;
        for v in &file.file.variants {
            assert!(
                v.consts.iter().all(|c| c.value == eps),
                "a variant's eps is overridden"
            );
        }
        for (i, run) in runs {
            let axes = &grid.points[*i].axes;
            let axis = |name: &str| axes.iter().find(|(a, _)| a == name).unwrap().1.clone();
            assert_eq!(axis("eps").parse::<f64>().unwrap(), eps);
            assert_eq!(run.dtype.name(), axis("dtype"));
            assert!(run.name.starts_with(if grid.points[*i].group == 0 {
                "adam"
            } else {
                "sgd"
            }));
        }
    }
    let names: Vec<&str> = grid.points[0]
        .axes
        .iter()
        .map(|(a, _)| a.as_str())
        .collect();
    assert_eq!(names, ["variant", "dtype", "eps", "lr", "beta1"]);
    let beta1: Vec<String> = grid
        .points
        .iter()
        .filter_map(|p| {
            p.axes
                .iter()
                .find(|(a, _)| a == "beta1")
                .map(|(_, v)| v.clone())
        })
        .take(3 * 2 * 2 * variants)
        .collect();
    assert!(beta1.iter().any(|v| v == "0.8") && beta1.iter().any(|v| v == "0.9"));
    assert!(beta1.iter().any(|v| v.parse::<f64>().unwrap() == 0.85));
}

#[test]
fn every_grid_point_is_the_run_started_alone() {
    let path = "losses/rosenbrock.toml";
    let file = compiled(path);
    let args = sweep_args(&[
        path,
        "-o",
        "adam(lr=logspace(1e-3, 1e-1, 5))",
        "-o",
        "sgd(lr=[1e-4, 5e-4], momentum=[0, 0.9])",
        "--dtype",
        "f64",
        "--steps",
        "200",
    ]);
    let grid = build_grid(&args, &file).unwrap();
    let points = drive_grid(grid, || std::ops::ControlFlow::Continue(())).unwrap();
    assert_eq!(points.len(), 9);
    for p in &points {
        let options = RunOptions {
            file: path.into(),
            optimizers: vec![p.spec.clone()],
            variant: None,
            steps: Some(200),
            dtype: Some(gradscope::lang::file::DType::F64),
            clip_norm: None,
            on_nonfinite: None,
            grad: None,
            consts: Vec::new(),
        };
        let mut alone = build_runs(&options, &file, Retention::Totals { best: false }).unwrap();
        let alone = drive(&mut alone[0], |_, _| std::ops::ControlFlow::Continue(())).unwrap();
        let swept = &p.outcomes[0].summary;
        assert!(
            (swept.final_loss - alone.final_loss).abs() <= 1e-12,
            "{}",
            p.name
        );
        assert_eq!(swept.best_step, alone.best_step, "{}", p.name);
        let (FinalParams::Inline(a), FinalParams::Inline(b)) =
            (&swept.final_params, &alone.final_params)
        else {
            panic!("params omitted")
        };
        for ((_, x), (_, y)) in a.iter().zip(b) {
            for (x, y) in x.iter().zip(y) {
                assert!((x - y).abs() <= 1e-12, "{}: {x} vs {y}", p.name);
            }
        }
    }
}

#[test]
fn a_sweeps_runs_keep_a_short_path_of_params() {
    let path = "losses/rosenbrock.toml";
    let file = compiled(path);
    let options = RunOptions {
        file: path.into(),
        optimizers: Vec::new(),
        variant: None,
        steps: Some(1000),
        dtype: None,
        clip_norm: None,
        on_nonfinite: None,
        grad: None,
        consts: Vec::new(),
    };
    // The path: every step 0..=1000 for `run`'s totals; for a sweep's outcome, at most 64
    // points, the stride doubling when full: every 16th step (0, 16, ..., 992: 63) and the
    // current params.
    for (retention, points) in [
        (Retention::Totals { best: false }, 1001),
        (Retention::Outcome, 64),
    ] {
        let mut runs = build_runs(&options, &file, retention).unwrap();
        drive(&mut runs[0], |_, _| std::ops::ControlFlow::Continue(())).unwrap();
        assert_eq!(runs[0].trajectory(None).len(), points, "{retention:?}");
    }
}

#[test]
fn seeds_draw_the_data_and_params_again_and_change_nothing_else() {
    let file = compiled("losses/dead_relu.toml");
    let same = file.recompiled(file.file.seed, &[]).unwrap();
    let next = file.recompiled(file.file.seed + 1, &[]).unwrap();
    let differs = |a: &CompiledFile, b: &CompiledFile| -> Vec<bool> {
        a.data
            .iter()
            .chain(&a.params)
            .zip(b.data.iter().chain(&b.params))
            .map(|(x, y)| values(&x.value) != values(&y.value))
            .collect()
    };
    // X, y (from X), W1, b1, w2, b2: the random ones and those computed from them change.
    assert_eq!(differs(&file, &same), [false; 6]);
    assert_eq!(
        differs(&file, &next),
        [true, true, true, false, true, false]
    );
    for (a, b) in file.runs.iter().zip(&next.runs) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.dtype, b.dtype);
        assert_eq!(format!("{:?}", a.settings), format!("{:?}", b.settings));
    }
    // A sweep over 3 seeds steps each point on the file's seed, seed+1 and seed+2.
    let args = sweep_args(&["losses/dead_relu.toml", "--seeds", "3", "--steps", "2"]);
    let grid = build_grid(&args, &file).unwrap();
    let seeds: Vec<u64> = grid.files.iter().map(|(f, _)| f.file.seed).collect();
    assert_eq!(seeds, [0, 1, 2]);
    let points = drive_grid(grid, || std::ops::ControlFlow::Continue(())).unwrap();
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].outcomes.len(), 3);
}

#[test]
fn an_unknown_const_is_a_diagnostic_with_the_closest_name() {
    let out = common::gradscope(&[
        "sweep",
        "losses/robust_log_mse.toml",
        "--const",
        "esp=[1, 2]",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no const named `esp`"), "{err}");
    assert!(err.contains("did you mean `eps`?"), "{err}");
}

/// A const value the file does not compile with (a shape that stops matching) leaves its point
/// out, named with the diagnostic; the other points run. None compiling is the error, naming
/// the value.
#[test]
fn a_const_value_the_file_does_not_compile_with_is_left_out_and_named() {
    let file = written(
        "const-shape",
        "name = \"c\"\nloss = \"sum((x @ w - 1)^2)\"\n[consts]\nn = 3\n[data]\n\
         x = \"randn(4, n)\"\n[params]\nw = \"zeros(3)\"\n",
    );
    let path = file.to_str().unwrap();
    let out = common::gradscope(&["sweep", path, "-o", "sgd", "--const", "n=[1, 3, 5]"]);
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{err}");
    for n in [1, 5] {
        assert!(
            err.contains(&format!(
                "note: n = {n} is left out of the sweep: the file does not compile with it"
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!("cannot multiply [4, {n}] by [3]")),
            "{err}"
        );
    }
    assert!(err.contains("loss.toml:2:16"), "{err}");
    assert!(err.contains("sweeping 1 point"), "{err}");
    assert!(stdout.contains("best of sgd"), "{stdout}");
    let out = common::gradscope(&["sweep", path, "-o", "sgd", "--const", "n=[1, 5]"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("with n = 1: shape mismatch"), "{err}");
}

#[test]
fn malformed_lists_are_diagnostics_not_panics() {
    let cases: [(&[&str], &str); 12] = [
        (
            &["-o", "adam(lr=logspace(0, 1e-1, 3))"],
            "needs lo and hi above 0",
        ),
        (
            &["-o", "adam(lr=linspace(0, 1, 0))"],
            "n must be a whole number from 1",
        ),
        (
            &["-o", "adam(lr=[1e-3, 1e-2], lrr=[1, 2])"],
            "unknown setting `lrr` for `adam`",
        ),
        (
            &["--const", "eps=logspace(1e-8, 1e-2)"],
            "takes three values",
        ),
        (&["--const", "eps"], "is not `K=VALUES`"),
        // A key given twice: which value was meant is not for us to guess.
        (
            &["-o", "adam(lr=[1e-3, 0.1], lr=[1, 2])"],
            "`lr` is given twice",
        ),
        (
            &["--const", "eps=[1e-3, 1e-2]", "--const", "eps=[1, 2]"],
            "`eps` is given twice",
        ),
        // Counted before anything is made, whatever multiplies the points.
        (
            &["-o", "adam(lr=[0.1, 1])", "--seeds", "100000000000"],
            "this sweep makes 200000000000 runs, more than 10000",
        ),
        (
            &[
                "-o",
                "adam(lr=logspace(1e-4, 1e-1, 10000))",
                "--const",
                "eps=logspace(1e-8, 1e-2, 10000)",
            ],
            "makes 100000000 runs",
        ),
        (&["--seeds", "0"], "seeds must be positive"),
        (&["--rank-by", "accuracy"], "this file has no [metrics]"),
        (
            &["-o", "adam(lr=[0.1, 1])", "--out", "no-such-folder/s.svg"],
            "no folder no-such-folder",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["sweep", "losses/robust_log_mse.toml", "--steps", "2"];
        all.extend(args);
        let out = common::gradscope(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        // A command-line error, as a malformed -o is for `run`.
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

/// `gradscope sweep ARGS --format FORMAT`'s stdout, the command having succeeded.
fn sweep_stdout(args: &[&str], format: &str) -> String {
    let argv: Vec<&str> = std::iter::once("sweep")
        .chain(args.iter().copied())
        .chain(["--format", format])
        .collect();
    let out = common::gradscope(&argv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `text` written as a loss file in a folder of `test`'s own.
fn written(test: &str, text: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("loss.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn a_sweep_where_every_point_grows_names_no_best() {
    // sgd on d = 100 grows by |1 - 100 lr| a step past lr = 0.02: just past it both points end
    // above the start (6.6x and 47x), which no user would call the best.
    let file = written(
        "sweep_all_grow",
        "name = \"q\"\ndtype = \"f64\"\nloss = \"0.5 * sum(d * w^2)\"\n[data]\nd = \"[1.0, 10.0, 100.0]\"\n[params]\nw = \"[1.0, 1.0, 1.0]\"\n",
    );
    let sweep = |lrs: &str| {
        let spec = format!("sgd(lr=[{lrs}])");
        common::gradscope(&[
            "sweep",
            file.to_str().unwrap(),
            "-o",
            &spec,
            "--steps",
            "100",
        ])
    };
    let out = sweep("0.0201, 0.0202");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("best of sgd(lr=[0.0201, 0.0202]): none, no point improved on the initial loss (the least bad: sgd(lr=0.0201)"),
        "{text}"
    );
    // Further past it (8e36 and 1e122 from 55.5, finite), both diverged: none finished (exit 1).
    let out = sweep("0.025, 0.05");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(text.matches(" diverged ").count(), 2, "{text}");
    assert!(
        text.contains("best of sgd(lr=[0.025, 0.05]): no point finished"),
        "{text}"
    );
}

#[test]
fn the_command_ranks_the_points_and_gives_the_lr_window() {
    // The same sweep in each format, its stdout.
    let sweep = |format: &str| {
        sweep_stdout(
            &[
                "losses/rosenbrock.toml",
                "-o",
                "sgd(lr=[1e-4, 1e-3, 1e-2])",
                "--steps",
                "300",
            ],
            format,
        )
    };
    let text = sweep("table");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("#  run"), "{text}");
    // lr = 1e-2 is above 2/λ at the start (λ ≈ 2092): it diverges and is ranked last, as such.
    assert!(
        lines[3].starts_with("3  sgd(lr=0.01)") && lines[3].contains("halted at step"),
        "{text}"
    );
    assert!(lines[1].starts_with("1  sgd(lr=0.001)"), "{text}");
    assert!(
        text.contains("best of sgd(lr=[1e-4, 1e-3, 1e-2]): sgd(lr=0.001)"),
        "{text}"
    );
    assert!(
        text.contains("lr window (improvement within 10% of the best):"),
        "{text}"
    );
    // CSV: a header, then one row a point, best first, the halted one without a loss.
    let text = sweep("csv");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("rank,run,lr,final_loss,"), "{text}");
    assert!(
        lines[1].starts_with("1,\"sgd(lr=0.001)\",\"1e-3\",5.04"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("3,\"sgd(lr=0.01)\",\"1e-2\",,,,,"),
        "{text}"
    );
    // JSON lines: one row a point, best first, the halted one without a loss.
    let rows: Vec<serde_json::Value> = sweep("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["axes"]["lr"], 1e-3);
    assert!(rows[2]["final_loss"].is_null());
    assert!(
        rows[2]["status"]
            .as_str()
            .unwrap()
            .starts_with("halted at step")
    );
}

#[test]
fn ctrl_c_prints_the_table_so_far_and_exits_130() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args([
            "sweep",
            "losses/rosenbrock.toml",
            "-o",
            "adam(lr=[1e-3, 1e-2])",
            "--steps",
            "100000000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut err = String::new();
    // The sweep says it starts once ctrl-c is caught.
    while !err.contains("sweeping") {
        assert!(
            stderr.read_line(&mut err).unwrap() > 0,
            "ended early: {err}"
        );
    }
    // SAFETY: kill only sends a signal to the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    stderr.read_to_string(&mut err).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{err}");
    assert!(out.contains("interrupted at step"), "{out}");
    assert!(out.contains("best of adam(lr=[1e-3, 1e-2])"), "{out}");
}

/// The picture `gradscope sweep ARGS --out PATH` draws, written as SVG to `name` in a fresh
/// directory, and the SVG's texts.
fn sweep_svg(args: &[&str], name: &str) -> Vec<String> {
    let args = sweep_args(args);
    let file = compiled(args.file.to_str().unwrap());
    let grid = build_grid(&args, &file).unwrap();
    let (groups, consts) = (grid.groups.clone(), grid.consts.clone());
    let points = drive_grid(grid, || std::ops::ControlFlow::Continue(())).unwrap();
    let rows = rows(&points, &RankBy::Loss).unwrap();
    let picture = SweepPicture {
        title: file.file.name.clone(),
        chart: sweep_chart(&points, &rows, &groups, &consts).unwrap(),
    };
    let dir = std::env::temp_dir().join(format!("gradscope-sweep-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.svg"));
    save_sweep(&picture, &path).unwrap();
    let texts = svg::svg_texts(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    texts
}

/// A quadratic with curvatures up to 100, so plain gradient descent diverges above lr = 2/100,
/// and runs on to an infinite loss instead of halting; written for test `name`.
fn diverging_quadratic(name: &str) -> std::path::PathBuf {
    let file = std::env::temp_dir().join(format!(
        "gradscope-sweep-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(
        &file,
        "name = \"Quadratic\"\nloss = \"0.5 * sum(lam * w^2)\"\n\n[data]\n\
         lam = \"linspace(1, 100, 4)\"\n\n[params]\nw = \"ones(4)\"\n\n[optimizer]\n\
         name = \"sgd\"\nlr = 0.001\non_nonfinite = \"continue\"\n",
    )
    .unwrap();
    file
}

#[test]
fn the_sweep_picture_names_each_optimizer_the_axis_and_divergence() {
    let file = diverging_quadratic("lines");
    let texts = sweep_svg(
        &[
            file.to_str().unwrap(),
            "-o",
            "sgd(lr=[1e-3, 1e-2, 1])",
            "-o",
            "adam(lr=[1e-3, 1e-2])",
            "--steps",
            "400",
        ],
        "lines",
    );
    std::fs::remove_file(&file).unwrap();
    for name in [
        "sgd",
        "adam",
        "lr (log)",
        "final loss (log)",
        "diverged",
        "best",
    ] {
        assert!(texts.iter().any(|t| t == name), "no `{name}` in {texts:?}");
    }
    assert!(!texts.iter().any(|t| t == "halted"), "{texts:?}");
    // Both axes in powers of ten.
    for tick in ["10⁻³", "10⁰", "10⁻⁶"] {
        assert!(texts.iter().any(|t| t == tick), "no `{tick}` in {texts:?}");
    }

    let texts = sweep_svg(
        &[
            "losses/robust_log_mse.toml",
            "-o",
            "adam(lr=[1e-3, 1e-2])",
            "--variant",
            "all",
            "--steps",
            "5",
        ],
        "variants",
    );
    let file = compiled("losses/robust_log_mse.toml");
    for run in &file.runs {
        assert!(texts.contains(&run.name), "no `{}` in {texts:?}", run.name);
    }
    assert!(texts.iter().any(|t| t == "lr"), "{texts:?}");
    assert!(!texts.iter().any(|t| t == "diverged"), "{texts:?}");
}

#[test]
fn two_swept_numbers_make_a_heat_map_naming_both() {
    let texts = sweep_svg(
        &[
            "losses/rosenbrock.toml",
            "-o",
            "adam(lr=logspace(1e-3, 1, 4), beta1=[0.8, 0.9])",
            "--steps",
            "20",
        ],
        "heat",
    );
    for name in ["lr (log)", "beta1", "best", "log"] {
        assert!(texts.iter().any(|t| t == name), "no `{name}` in {texts:?}");
    }
    assert_eq!(texts.iter().filter(|t| *t == "best").count(), 1);
    // A swept const makes each of its values an objective of its own: a best for each.
    let texts = sweep_svg(
        &[
            "losses/robust_log_mse.toml",
            "-o",
            "adam(lr=[0.003, 0.01])",
            "--const",
            "eps=logspace(1e-8, 1e-2, 4)",
            "--steps",
            "20",
        ],
        "heat-const",
    );
    assert_eq!(
        texts.iter().filter(|t| *t == "best").count(),
        4,
        "{texts:?}"
    );
    // Two lrs are two cells in order, not an axis reaching below 0.
    for name in ["0.003", "0.01", "eps (log)"] {
        assert!(texts.iter().any(|t| t == name), "no `{name}` in {texts:?}");
    }
    assert!(!texts.iter().any(|t| t == "0"), "{texts:?}");
    assert!(!texts.iter().any(|t| t == "diverged"), "{texts:?}");

    let file = diverging_quadratic("heat");
    let texts = sweep_svg(
        &[
            file.to_str().unwrap(),
            "-o",
            "sgd(lr=[1e-3, 1e-2, 1], momentum=[0, 0.5])",
            "--steps",
            "200",
        ],
        "heat-diverged",
    );
    std::fs::remove_file(&file).unwrap();
    // lr's values are not evenly spaced even in log: a cell each, labelled with its value.
    for name in ["lr", "10⁻²", "10⁰", "momentum", "best", "diverged"] {
        assert!(texts.iter().any(|t| t == name), "no `{name}` in {texts:?}");
    }
}

#[test]
fn out_needs_a_picture_format_and_a_numeric_axis() {
    let error = |args: &[&str]| {
        let args = sweep_args(args);
        sweep_command(&args, false).unwrap_err().to_string()
    };
    let bad = error(&[
        "losses/rosenbrock.toml",
        "-o",
        "sgd(lr=[1e-3, 1e-2])",
        "--out",
        "sweep.jpg",
    ]);
    assert!(
        bad.contains("sweep.jpg") && bad.contains(".svg or .png"),
        "{bad}"
    );
    let flat = error(&["losses/rosenbrock.toml", "-o", "sgd", "--out", "sweep.svg"]);
    assert!(flat.contains("varies no number"), "{flat}");
    assert!(!Path::new("sweep.svg").exists() && !Path::new("sweep.jpg").exists());
}

#[test]
fn seeds_of_a_file_that_draws_nothing_at_random_are_said_to_be_the_same() {
    let note = |file: &str| {
        let out = common::gradscope(&[
            "sweep",
            file,
            "-o",
            "adam(lr=[0.01, 0.1])",
            "--steps",
            "5",
            "--seeds",
            "2",
        ]);
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stderr).contains("draws nothing at random")
    };
    assert!(note("losses/rosenbrock.toml"));
    assert!(!note("losses/robust_log_mse.toml"));
}

/// Ranked by a metric, the CSV has it as a column (`metric_<name>`, as `run`'s CSV) and each
/// JSONL row its rank and the metric, in the table's order.
#[test]
fn csv_and_jsonl_carry_the_rank_and_the_metric_they_are_ranked_by() {
    let sweep = |format: &str| {
        sweep_stdout(
            &[
                "losses/softmax_xent.toml",
                "-o",
                "adam(lr=[0.001, 0.1])",
                "--steps",
                "30",
                "--rank-by",
                "max:accuracy",
            ],
            format,
        )
    };
    let csv = sweep("csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = header
        .iter()
        .position(|h| *h == "metric_accuracy")
        .expect("a metric column");
    let accuracies: Vec<f64> = lines
        .map(|l| l.split(',').nth(at).unwrap().parse().unwrap())
        .collect();
    assert_eq!(accuracies.len(), 2, "{csv}");
    assert!(
        accuracies[0] >= accuracies[1],
        "ranked by max:accuracy: {csv}"
    );
    let rows: Vec<serde_json::Value> = sweep("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(row["rank"], k + 1);
        assert_eq!(row["metrics"]["accuracy"].as_f64(), Some(accuracies[k]));
    }
}

#[test]
fn run_with_a_const_is_the_sweeps_point_computing_the_data_again() {
    // `k` scales the data: a variant's k leaves the data as the file made it, while
    // `run --const` and `sweep --const` compute it again, and give the same numbers.
    let file = written(
        "run_const",
        "name = \"k\"\ndtype = \"f64\"\nloss = \"sum((w - t)^2)\"\n[consts]\nk = 1.0\n[data]\nt = \"k * [1.0, 2.0]\"\n[params]\nw = \"zeros(2)\"\n[optimizer]\nname = \"sgd\"\nlr = 0.1\nsteps = 3\n",
    );
    let path = file.to_str().unwrap();
    let final_loss = |args: &[&str]| -> f64 {
        let out = common::gradscope(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["summary"] == true)
            .and_then(|v| v["final_loss"].as_f64())
            .expect("a summary")
    };
    let plain = final_loss(&["run", path, "--format", "jsonl"]);
    let with_k = final_loss(&["run", path, "--const", "k=3", "--format", "jsonl"]);
    // (1 - 0.2)^3 of the distance each step: 0.8^6 of the initial 5 k^2.
    assert!((plain - 5.0 * 0.8f64.powi(6)).abs() < 1e-12, "{plain}");
    assert!((with_k - 45.0 * 0.8f64.powi(6)).abs() < 1e-12, "{with_k}");
    let sweep = sweep_stdout(&[path, "--const", "k=[3]"], "csv");
    assert!(
        sweep.contains(&format!("{with_k}")) || sweep.contains(&format!("{with_k:.6}")),
        "{sweep}\n{with_k}"
    );
    let out = common::gradscope(&["run", path, "--const", "k=[1, 2]"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("one value per const"));
    let out = common::gradscope(&["run", path, "--const", "kk=2"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no const named `kk`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
