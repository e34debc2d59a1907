//! Nothing a loss file says aborts the process: a seeded corpus of bundled files mutated at the
//! token level (inserted, deleted, duplicated and swapped tokens), each checked and then run for
//! three steps of every variant in its own process. Each must exit 0 or 1, within a time limit,
//! without a panic or a signal.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MUTANTS: usize = 300;
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// Words (names and numbers) and single other characters, so a mutation moves whole tokens.
fn tokens(text: &str) -> Vec<&str> {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '.';
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if word(c) {
            while chars.peek().is_some_and(|&(_, d)| word(d)) {
                chars.next();
            }
        }
        let end = chars.peek().map_or(text.len(), |&(j, _)| j);
        out.push(&text[start.max(i)..end]);
        start = end;
    }
    out
}

/// One to three token mutations of `text`.
fn mutate(text: &str, rng: &mut ChaCha8Rng) -> String {
    let mut toks = tokens(text);
    for _ in 0..rng.random_range(1..=3) {
        let n = toks.len();
        if n < 2 {
            break;
        }
        let i = rng.random_range(0..n);
        match rng.random_range(0..4) {
            0 => {
                let t = toks[rng.random_range(0..n)];
                toks.insert(i, t);
            }
            1 => {
                toks.remove(i);
            }
            2 => toks.insert(i, toks[i]),
            _ => toks.swap(i, rng.random_range(0..n)),
        }
    }
    toks.concat()
}

/// Runs the binary on `args` and returns its exit code; Err says what went wrong (a signal, a
/// panic, an exit code other than 0 or 1, or the time limit).
fn survives(args: &[&str]) -> Result<i32, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            return Err(format!("still running after {TIME_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr =
        std::io::read_to_string(child.stderr.take().expect("piped")).map_err(|e| e.to_string())?;
    match status.code() {
        _ if stderr.contains("panicked") => Err(format!("panicked:\n{stderr}")),
        Some(c @ (0 | 1)) => Ok(c),
        Some(c) => Err(format!("exit code {c}:\n{stderr}")),
        None => Err(format!("killed by a signal ({status}):\n{stderr}")),
    }
}

#[test]
fn mutated_loss_files_never_crash_check_or_run() {
    let sources: Vec<PathBuf> = gradscope::load::discover(&["losses".into()])
        .0
        .into_iter()
        .filter(|p| !p.starts_with("losses/bench"))
        .collect();
    assert!(sources.len() >= 10, "{sources:?}");
    let texts: Vec<String> = sources
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("a bundled file"))
        .collect();
    // The mutants sit beside a copy of the bundled data, so CSV paths still resolve.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz_mutations");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).expect("a temp dir");
    for e in std::fs::read_dir("losses/data").expect("bundled data") {
        let p = e.expect("an entry").path();
        std::fs::copy(&p, dir.join("data").join(p.file_name().expect("a name"))).expect("copied");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut failures = Vec::new();
    let mut checked = [0; 2];
    for i in 0..MUTANTS {
        let k = rng.random_range(0..texts.len());
        let path = dir.join(format!("{i:03}.toml"));
        std::fs::write(&path, mutate(&texts[k], &mut rng)).expect("written");
        let file = path.to_str().expect("utf-8 path");
        let runs = ["run", file, "--variant", "all", "--steps", "3"];
        for args in [&["check", file][..], &runs[..]] {
            match survives(args) {
                Ok(code) if args[0] == "check" => checked[code as usize] += 1,
                Ok(_) => {}
                Err(why) => failures.push(format!(
                    "{} (from {}): {why}",
                    args.join(" "),
                    sources[k].display()
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Both kinds of mutant occur: files that still work and files that are refused.
    assert!(
        checked[0] >= 30 && checked[1] >= 30,
        "ok/refused: {checked:?}"
    );
}

#[test]
fn mutations_move_whole_tokens() {
    assert_eq!(
        tokens("w = \"zeros(3)\""),
        ["w", " ", "=", " ", "\"", "zeros", "(", "3", ")", "\""]
    );
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let text = "loss = \"sum(w^2)\"";
    let mutants: Vec<String> = (0..20).map(|_| mutate(text, &mut rng)).collect();
    assert!(mutants.iter().any(|m| m != text));
    assert!(mutants.iter().all(|m| m.len() < 2 * text.len()));
}
