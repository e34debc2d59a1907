//! The command line as the README describes it: global options, completions, argument checks
//! and the layout of `run`'s tables.

mod common;

use common::gradscope;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn threads_is_accepted_before_the_command() {
    let o = gradscope(&["--threads", "1", "run", "losses/beale.toml", "--steps", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("final loss"), "{}", stdout(&o));
}

/// A count past the cores is cut to them with a note, not thousands of threads started (it
/// would not finish within the test's time at 100,000).
#[test]
fn threads_past_the_cores_are_cut_to_them() {
    let o = gradscope(&[
        "--threads",
        "100000",
        "run",
        "losses/beale.toml",
        "--steps",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        stderr(&o).contains(&format!(
            "100000 threads asked for, more than this machine's {cores} cores: using {cores}"
        )),
        "{}",
        stderr(&o)
    );
}

#[test]
fn threads_is_accepted_after_the_command() {
    let o = gradscope(&["check", "--threads", "1", "losses/beale.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn completions_are_printed_for_each_shell() {
    // Each script names the binary and at least one subcommand it completes.
    for (shell, marker) in [
        ("bash", "_gradscope()"),
        ("zsh", "#compdef gradscope"),
        ("fish", "complete -c gradscope"),
    ] {
        let o = gradscope(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("gradcheck"),
            "{shell} does not complete the subcommands"
        );
    }
}

#[test]
fn steps_must_be_positive() {
    for steps in ["-5", "0"] {
        let o = gradscope(&["run", "losses/beale.toml", "--steps", steps]);
        assert_eq!(o.status.code(), Some(2), "--steps {steps}");
        assert!(
            stderr(&o).contains("steps must be positive"),
            "{}",
            stderr(&o)
        );
    }
}

/// Where the cell after the run's name starts and ends, in characters, on each line of a table
/// whose rows start with one of `names` (the header with `run`).
fn second_cells(table: &str, names: &[&str]) -> Vec<(usize, usize)> {
    table
        .lines()
        .map(|l| {
            let name = ["run"]
                .iter()
                .chain(names)
                .filter(|n| l.starts_with(**n))
                .max_by_key(|n| n.len());
            let after = name
                .unwrap_or_else(|| panic!("no run name in {l:?}"))
                .chars()
                .count();
            let chars: Vec<char> = l.chars().collect();
            let start = (after..chars.len()).find(|&i| chars[i] != ' ').unwrap();
            let end = (start..chars.len())
                .find(|&i| chars[i] == ' ')
                .unwrap_or(chars.len());
            (start, end)
        })
        .collect()
}

#[test]
fn run_tables_align_for_long_run_names() {
    let long = "sgd(lr=0.001, momentum=0.9, nesterov=true, weight_decay=0.5)";
    let o = gradscope(&[
        "run",
        "losses/beale.toml",
        "-o",
        long,
        "-o",
        "adam",
        "--steps",
        "4",
        "--every",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let (steps, summary) = out.split_once("\n\n").expect("two tables");
    let names = [long, "adam(lr=0.01)"];
    // The step column is right-aligned: every cell ends where `step` ends.
    let ends: Vec<usize> = second_cells(steps, &names).iter().map(|c| c.1).collect();
    assert!(ends.windows(2).all(|w| w[0] == w[1]), "{steps}");
    // The summary is left-aligned: every `final loss` cell starts where its header does.
    let starts: Vec<usize> = second_cells(summary.trim_end(), &names)
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(starts.len(), 3, "{summary}");
    assert!(starts.windows(2).all(|w| w[0] == w[1]), "{summary}");
}

/// The optimizer of each run in `run --format jsonl`'s summaries.
fn summary_optimizers(args: &[&str]) -> Vec<String> {
    let o = gradscope(args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["summary"] == true)
        .map(|v| v["optimizer"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn o_with_the_files_optimizer_keeps_its_hyper_parameters() {
    // rosenbrock.toml's [optimizer] is adam with lr 0.01 (torch's default is 0.001).
    let specs = summary_optimizers(&[
        "run",
        "losses/rosenbrock.toml",
        "-o",
        "adam",
        "-o",
        "adam(beta2=0.99)",
        "--steps",
        "1",
        "--format",
        "jsonl",
    ]);
    assert_eq!(specs, ["adam(lr=0.01)", "adam(lr=0.01, beta2=0.99)"]);
}

#[test]
fn o_with_another_optimizer_starts_from_torchs_defaults() {
    let specs = summary_optimizers(&[
        "run",
        "losses/rosenbrock.toml",
        "-o",
        "sgd(momentum=0.5)",
        "--steps",
        "1",
        "--format",
        "jsonl",
    ]);
    assert_eq!(specs, ["sgd(lr=0.001, momentum=0.5)"]);
}

#[test]
fn hyper_parameters_torch_refuses_are_refused_on_the_command_line() {
    for (spec, says) in [
        ("adam(lr=-0.1)", "`lr` must be at least 0"),
        ("adam(beta1=1)", "`beta1` must be in [0, 1)"),
        ("sgd(nesterov=true)", "nesterov needs momentum > 0"),
    ] {
        let o = gradscope(&["run", "losses/rosenbrock.toml", "-o", spec, "--steps", "1"]);
        assert_eq!(o.status.code(), Some(2), "{spec}");
        assert!(stderr(&o).contains(says), "{spec}: {}", stderr(&o));
    }
}

/// A loss whose run halts at step 3: SGD with lr 1 walks x = 2.5, 1.5, 0.5, -0.5, and the
/// forward value sqrt(detach(x)) is NaN at -0.5.
/// Written under a name of `test`'s own, as tests run in parallel.
fn halting_file(test: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("gradscope-{test}-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "name = \"halts\"\ndtype = \"f64\"\nloss = \"sqrt(detach(x)) + x\"\n[params]\nx = 2.5\n\
         [optimizer]\nname = \"sgd\"\nlr = 1\n",
    )
    .unwrap();
    path
}

#[test]
fn gradcheck_past_a_halt_says_which_step_it_checks() {
    let file = halting_file("gradcheck_past");
    let o = gradscope(&["gradcheck", file.to_str().unwrap(), "--at-step", "10"]);
    let out = stdout(&o);
    assert!(
        out.contains("halted at step 3 (the loss is NaN); checking at step 3, not 10"),
        "{out}"
    );
    assert!(out.contains("at step 3 (atol"), "{out}");
}

/// A generated file with many unused lines gets ten "never used" warnings and one that counts
/// the rest, not a warning a line.
#[test]
fn never_used_warnings_stop_at_ten_and_count_the_rest() {
    let path = std::env::temp_dir().join(format!("gradscope-unused-{}.toml", std::process::id()));
    let lines: String = (0..25).map(|i| format!("t{i} = w * {i}\n")).collect();
    std::fs::write(
        &path,
        format!("name = \"unused\"\nloss = \"\"\"\n{lines}sum(w^2)\n\"\"\"\n[params]\nw = \"[1.0, 2.0]\"\n"),
    )
    .unwrap();
    let o = gradscope(&["check", path.to_str().unwrap()]);
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(text.matches("is never used").count(), 10, "{text}");
    assert!(
        text.contains("15 more lines are never used, from `t10` on"),
        "{text}"
    );
    assert_eq!(o.status.code(), Some(0));
}

/// Two runs of one name saved to one file get `-2` on the second, as files in a directory do
/// (the save failed after all the stepping, writing nothing).
#[test]
fn runs_of_one_name_save_to_one_file_numbered() {
    let path = std::env::temp_dir().join(format!("gradscope-twice-{}.npz", std::process::id()));
    let o = gradscope(&[
        "run",
        "losses/rosenbrock.toml",
        "-o",
        "adam",
        "-o",
        "adam",
        "--steps",
        "5",
        "--save-params",
        path.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut keys: Vec<String> = candle_core::Tensor::read_npz(&path)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.ends_with(".x"))
        .collect();
    keys.sort();
    assert_eq!(keys, ["adam(lr=0.01)-2.x", "adam(lr=0.01).x"]);
    let _ = std::fs::remove_file(path);
}

/// A sweep where every point halts found nothing and exits 1; one point that finishes is enough
/// for 0 (the halted ones are reported, not failures).
#[test]
fn a_sweep_exits_1_only_when_no_point_finished() {
    let file = halting_file("sweep_none_finished");
    let f = file.to_str().unwrap();
    let o = gradscope(&["sweep", f, "-o", "sgd(lr=[1, 2])", "--steps", "10"]);
    assert!(stdout(&o).contains("no point finished"), "{}", stdout(&o));
    assert_eq!(o.status.code(), Some(1));
    let o = gradscope(&["sweep", f, "-o", "sgd(lr=[0.01, 1])", "--steps", "10"]);
    assert!(
        stdout(&o).contains("best of sgd(lr=[0.01, 1]): sgd(lr=0.01)"),
        "{}",
        stdout(&o)
    );
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn a_gradcheck_fail_names_the_element_and_why() {
    let file = halting_file("gradcheck_fail");
    let o = gradscope(&["gradcheck", file.to_str().unwrap(), "--at-step", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("x fails: the loss is not finite here (NaN at the point"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn curvature_at_a_nonfinite_point_refuses_with_the_reason() {
    let file = halting_file("curvature_nonfinite");
    let o = gradscope(&["curvature", file.to_str().unwrap(), "--at-step", "10"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("checking at step 3, not 10"), "{out}");
    assert!(
        out.contains("no curvature here: the loss is NaN at these params"),
        "{out}"
    );
    assert!(!out.contains("eigenvalue"), "{out}");
}

#[test]
fn grad_past_a_halt_checks_where_the_run_stopped() {
    let file = halting_file("grad_past");
    let o = gradscope(&["grad", file.to_str().unwrap(), "--check", "--at-step", "10"]);
    let out = stdout(&o);
    assert!(
        out.contains("grad_x = 1\n# run `base` halted at step 3 (the loss is NaN); checking at step 3, not 10\n# check at step 3"),
        "{out}"
    );
    assert_eq!(o.status.code(), Some(0), "{out}");
}

/// `--every 0`, `--threads 0` and a landscape grid outside 2..=1024 are refused when parsed,
/// with the range in the message (they were taken as something else silently).
#[test]
fn counts_and_grids_out_of_range_are_refused_when_parsed() {
    use clap::Parser;
    for (args, says) in [
        (
            &["run", "f.toml", "--every", "0"][..],
            "every must be positive",
        ),
        (&["--threads", "0", "list"][..], "threads must be positive"),
        (&["bench", "--repeat", "0"][..], "repeat must be positive"),
        (
            &["landscape", "f.toml", "--grid", "1"][..],
            "2 to 1024 cells",
        ),
        (
            &["plot", "f.toml", "--grid", "100000"][..],
            "2 to 1024 cells",
        ),
    ] {
        let argv = std::iter::once("gradscope").chain(args.iter().copied());
        let e = gradscope::cli::Cli::try_parse_from(argv).unwrap_err();
        assert!(e.to_string().contains(says), "{args:?}: {e}");
    }
    let ok = ["gradscope", "landscape", "f.toml", "--grid", "1024"];
    assert!(gradscope::cli::Cli::try_parse_from(ok).is_ok());
}

/// A path that is not there: `check` says so and no "0 files" line follows; with `--json` it
/// is a JSON line like every file's, never text in the stream.
#[test]
fn check_on_a_missing_path_gives_no_empty_summary_and_json_stays_json() {
    let o = gradscope(&["check", "no-such-file.toml"]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains("no such file or directory"), "{text}");
    assert!(!text.contains("0 files"), "{text}");
    let o = gradscope(&["check", "no-such-file.toml", "losses/rosenbrock.toml"]);
    assert!(
        stdout(&o).contains("1 file: 1 ok, 0 with errors; 1 path not found"),
        "{}",
        stdout(&o)
    );
    let o = gradscope(&["check", "--json", "no-such-file.toml"]);
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
    assert_eq!(line["ok"], false);
    assert_eq!(line["file"], "no-such-file.toml");
}

/// Ranked by a metric that is NaN at every point, a sweep says it ranked nothing.
#[test]
fn a_sweep_ranked_by_a_metric_that_is_never_finite_says_so() {
    let path =
        std::env::temp_dir().join(format!("gradscope-nanmetric-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "name = \"m\"\nloss = \"sum((w - 1)^2)\"\n[params]\nw = \"[0.0, 0.0]\"\n[metrics]\nzero = \"0 / 0\"\n",
    )
    .unwrap();
    let o = gradscope(&[
        "sweep",
        path.to_str().unwrap(),
        "-o",
        "sgd(lr=[0.01, 0.1])",
        "--steps",
        "5",
        "--rank-by",
        "zero",
    ]);
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        text.contains("note: `zero` is not finite at any point that finished, so it ranks nothing"),
        "{text}"
    );
}

/// `landscape --variant all` draws every run's path on the first run's surface, and says which
/// runs minimise a loss of their own there.
#[test]
fn a_landscape_names_the_runs_whose_loss_is_not_its_surface() {
    let o = gradscope(&[
        "landscape",
        "losses/robust_log_mse.toml",
        "--variant",
        "all",
        "--steps",
        "5",
        "--grid",
        "8",
    ]);
    let text = stdout(&o);
    assert!(
        text.contains("note: eps = 0 (naive), eps = 1e-3, plain MSE, eps = 0, f16 (naive) minimise a loss of their own"),
        "{text}"
    );
    let o = gradscope(&[
        "landscape",
        "losses/rosenbrock.toml",
        "--steps",
        "5",
        "--grid",
        "8",
    ]);
    assert!(!stdout(&o).contains("note:"), "{}", stdout(&o));
}

/// A loss of `lines` lines, each a step of one chain: `z{i} = softmax(z{i-1})`.
fn chain_file(test: &str, lines: usize) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("gradscope-{test}-{}.toml", std::process::id()));
    let chain: Vec<String> = (1..lines)
        .map(|i| format!("z{i} = softmax(z{})", i - 1))
        .collect();
    std::fs::write(
        &path,
        format!(
            "name = \"chain\"\nloss = \"\"\"\nz0 = w\n{}\nsum(z{} * w)\n\"\"\"\n[params]\nw = \"randn(4)\"\n",
            chain.join("\n"),
            lines - 1
        ),
    )
    .unwrap();
    path
}

/// candle's backward pass recurses once per op: a chain as long as gradscope takes is
/// differentiated twice over (a Hessian) without overflowing a stack, and a longer one is an
/// error naming the line where it passes the limit, not an abort.
#[test]
fn the_longest_chain_taken_gets_a_hessian_and_a_longer_one_an_error() {
    let limit = gradscope::compile::lower::MAX_CHAIN;
    let file = chain_file("longest_chain", limit - 2);
    let o = gradscope(&["hessian", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("relative error 0"), "{}", stdout(&o));
    let file = chain_file("too_long_chain", limit + 5);
    let o = gradscope(&["check", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o) + &stderr(&o);
    let line = limit + 3;
    assert!(
        out.contains(&format!("more than {limit} operations"))
            && out.contains(&format!(":{line}:10")),
        "{out}"
    );
}

/// A reader that has left stderr (`gradscope run ... 2>&1 | head -1`) ends nothing but the
/// report: with `--format jsonl` the table goes to stderr, and the run still exits 0.
#[test]
fn a_closed_stderr_is_not_a_panic() {
    let args = [
        "run",
        "losses/rosenbrock.toml",
        "--steps",
        "5",
        "--format",
        "jsonl",
    ];
    assert_eq!(exit_with_a_closed_pipe(&args, Closed::Stderr), Some(0));
}

/// Which output of the process its reader has left.
#[derive(PartialEq)]
enum Closed {
    Stdout,
    Stderr,
}

/// The exit code of `gradscope args` whose `closed` output is a pipe closed as it starts (as
/// `| head` closes it once it has read enough; the other output is discarded).
fn exit_with_a_closed_pipe(args: &[&str], closed: Closed) -> Option<i32> {
    use std::process::Stdio;
    let pipe = |this: Closed| match this == closed {
        true => Stdio::piped(),
        false => Stdio::null(),
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args(args)
        .stdout(pipe(Closed::Stdout))
        .stderr(pipe(Closed::Stderr))
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    child.wait().unwrap().code()
}

/// An output in a folder that does not exist is refused before any run steps (exit 2, as a
/// usage error), naming the option and the folder.
#[test]
fn outputs_into_missing_folders_are_refused_before_the_runs() {
    let missing = std::env::temp_dir().join("gradscope-missing-folder");
    for (args, flag, file) in [
        (
            &["run", "losses/rosenbrock.toml"][..],
            "--save-params",
            "x.safetensors",
        ),
        (&["run", "losses/rosenbrock.toml"][..], "--out", "x.csv"),
        (&["plot", "losses/rosenbrock.toml"][..], "--out", "x.svg"),
        (
            &[
                "sweep",
                "losses/rosenbrock.toml",
                "-o",
                "adam(lr=[1e-3, 1e-2])",
            ][..],
            "--out",
            "x.svg",
        ),
    ] {
        let out = missing.join(file);
        let mut all: Vec<&str> = args.to_vec();
        all.extend([flag, out.to_str().unwrap()]);
        let o = gradscope(&all);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{all:?}: {err}");
        assert!(
            err.contains(&format!(
                "{flag} {}: no folder {}",
                out.display(),
                missing.display()
            )),
            "{all:?}: {err}"
        );
        assert!(stdout(&o).is_empty(), "{all:?} stepped: {}", stdout(&o));
    }
    // A folder given as the file, and a folder that takes no files (/proc), likewise.
    let unwritable = [
        ("tests", "--out tests: is a folder; name a file in it"),
        ("/proc/x.npz", "--out /proc/x.npz: cannot write in /proc"),
    ];
    for (out, says) in unwritable
        .iter()
        .filter(|(o, _)| !o.starts_with('/') || cfg!(target_os = "linux"))
    {
        let o = gradscope(&["run", "losses/rosenbrock.toml", "--out", out]);
        assert_eq!(o.status.code(), Some(2), "{out}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{out}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{out} stepped: {}", stdout(&o));
    }
}

/// `--clip-norm` takes what a file's `clip_norm` takes: -1 made every step ascend, NaN halted
/// the run with a message about the update.
#[test]
fn clip_norm_on_the_command_line_is_checked_as_in_a_file() {
    let run = |clip: &str| {
        gradscope(&[
            "run",
            "losses/rosenbrock.toml",
            "--steps",
            "3",
            "--clip-norm",
            clip,
        ])
    };
    for bad in ["-1", "nan", "inf"] {
        let o = run(bad);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(
            stderr(&o).contains("`clip_norm` must be a non-negative number"),
            "{}",
            stderr(&o)
        );
    }
    let o = run("2.5");
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Tensors past the memory free are refused with an error at the entry or op that needs it,
/// not an aborted allocation (which took every other file of a folder with it): a data
/// constant built at load, and a step whose values and gradients would not fit. The process is
/// held to 3 GB of address space, as `ulimit -v` would.
#[cfg(target_os = "linux")]
#[test]
fn tensors_past_the_memory_free_are_errors_not_aborts() {
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!("gradscope-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big_data = dir.join("big_data.toml");
    std::fs::write(
        &big_data,
        "name = \"x\"\nloss = \"(sum(A) + sum(B)) * w\"\n[data]\nA = \"full(1, 16384, 16384)\"\nB = \"full(2, 16384, 16384)\"\n[params]\nw = 1.0\n",
    )
    .unwrap();
    let big_step = dir.join("big_step.toml");
    std::fs::write(
        &big_step,
        "name = \"x\"\nloss = \"\"\"\na = A * w\nb = a * w\nc = b * w\nd = c * w\nsum(d)\n\"\"\"\n[data]\nA = \"ones(8000, 8000)\"\n[params]\nw = 1.0\n",
    )
    .unwrap();
    let small = "losses/rosenbrock.toml";
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gradscope"));
    cmd.args([
        "check",
        big_data.to_str().unwrap(),
        big_step.to_str().unwrap(),
        small,
    ]);
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 3 << 30,
                rlim_max: 3 << 30,
            };
            match libc::setrlimit(libc::RLIMIT_AS, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let o = cmd.output().unwrap();
    let out = stdout(&o) + &stderr(&o);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("big_data.toml:5:6") && out.contains("of memory free"),
        "{out}"
    );
    assert!(
        out.contains("big_step.toml:") && out.matches("of memory free").count() >= 2,
        "{out}"
    );
    assert!(out.contains("1 ok, 2 with errors"), "{out}");
}

/// A completion script into a closed pipe (`gradscope completions bash | head -1`) ends
/// quietly, as a run's output does, instead of clap's panic.
#[test]
fn completions_into_a_closed_pipe_are_not_a_panic() {
    let args = ["completions", "bash"];
    assert_eq!(exit_with_a_closed_pipe(&args, Closed::Stdout), Some(0));
}

/// A run its optimizer cannot start (sm3 on a scalar) names the file, the run and the param.
#[test]
fn a_run_that_cannot_start_names_its_file_run_and_param() {
    let o = gradscope(&["run", "tests/malformed/sm3_scalar_param.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "tests/malformed/sm3_scalar_param.toml: run `base` cannot start: sm3 keeps one \
             accumulator per dimension of a param, so it cannot step `a`, a scalar"
        ),
        "{}",
        stderr(&o)
    );
}
