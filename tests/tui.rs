//! The TUI: rendering snapshots (ratatui's `TestBackend` + insta), input handling on the app's
//! state (keys, mouse, hot reload), and end-to-end runs of the real binary inside tmux.
//!
//! Everything here is deterministic: tests call [`App::settle`] before looking at state, and
//! only paused screens are snapshotted (the status bar shows steps/s while running).

mod svg;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crossterm::event::{
    KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use gradscope::lang::file::DType;
use gradscope::optim::catalogue;
use gradscope::optim::spec::OptimizerKind;
use gradscope::optim::tricks::TrickKind;
use gradscope::run::turns::Turns;
use gradscope::tui::app::{Action, Answer, App, Focus, Msg, Popup, Tab};
use gradscope::tui::session::Link;
use gradscope::tui::{keys, layout, render};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier};

const ROSENBROCK: &str = "losses/rosenbrock.toml";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn open(path: &str) -> (App, Receiver<Msg>) {
    let (mut app, rx) = App::detached(Path::new(path));
    app.settle(&rx);
    (app, rx)
}

fn press(app: &mut App, code: KeyCode) -> Option<Action> {
    app.handle(Msg::Key(KeyEvent::new(code, KeyModifiers::NONE)))
}

/// Types `keys` one character at a time (`"50n"` is '5', '0', 'n').
fn typed(app: &mut App, keys: &str) {
    for c in keys.chars() {
        press(app, KeyCode::Char(c));
    }
}

/// Types `keys`, then waits until the worker has handled them.
fn typed_settled(app: &mut App, rx: &Receiver<Msg>, keys: &str) {
    typed(app, keys);
    app.settle(rx);
}

/// Each run's step (updates taken; its history holds one row more).
fn history_lens(app: &App) -> Vec<usize> {
    app.session()
        .expect("a session")
        .runs
        .iter()
        .map(|r| r.steps())
        .collect()
}

fn run_names(app: &App) -> Vec<String> {
    app.session()
        .expect("a session")
        .runs
        .iter()
        .map(|r| r.info.name.clone())
        .collect()
}

fn draw(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    t.draw(|f| render::render(f, app)).expect("draws");
    t
}

fn snapshot(name: &str, t: &Terminal<TestBackend>) {
    insta::with_settings!({snapshot_path => "snapshots/tui", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!(name, t.backend());
    });
}

/// The screen as text, one string per row (every cell holds one character).
fn rows(t: &Terminal<TestBackend>) -> Vec<String> {
    let buf = t.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect()
        })
        .collect()
}

/// Column and row of the first cell inside `area` where `text` is drawn.
fn find(t: &Terminal<TestBackend>, area: Rect, text: &str) -> Option<(u16, u16)> {
    let buf = t.backend().buffer();
    let want: Vec<String> = text.chars().map(String::from).collect();
    for y in area.top()..area.bottom() {
        let row: Vec<&str> = (area.left()..area.right())
            .map(|x| buf[(x, y)].symbol())
            .collect();
        if let Some(x) = row.windows(want.len()).position(|w| w == want.as_slice()) {
            return Some((area.x + x as u16, y));
        }
    }
    None
}

fn areas(app: &App, w: u16, h: u16) -> layout::Areas {
    layout::layout(app, Rect::new(0, 0, w, h))
}

fn click(app: &mut App, column: u16, row: u16) {
    mouse(app, MouseEventKind::Down(MouseButton::Left), column, row);
}

fn mouse(app: &mut App, kind: MouseEventKind, column: u16, row: u16) {
    app.handle(Msg::Mouse(MouseEvent {
        kind,
        column,
        row,
        modifiers: KeyModifiers::NONE,
    }));
}

/// A scratch directory `target/tui-test-<name>/`, opened through its relative path so that
/// paths shown on screen are stable; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!("target/tui-test-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn copy(&self, from: &str, to: &str) -> PathBuf {
        let p = self.0.join(to);
        std::fs::copy(from, &p).expect("copy into scratch dir");
        p
    }

    /// Writes `text` to the file `to` in it.
    fn write(&self, to: &str, text: &str) -> PathBuf {
        let p = self.0.join(to);
        std::fs::write(&p, text).expect("write into scratch dir");
        p
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering snapshots
// ---------------------------------------------------------------------------------------------

#[test]
fn snapshot_main_screen_with_several_runs() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "50n");
    assert_eq!(history_lens(&app), vec![50; 4]);
    let t = draw(&app, 160, 45);
    let screen = rows(&t).join("\n");
    for name in run_names(&app) {
        assert!(screen.contains(&name), "run `{name}` not listed:\n{screen}");
    }
    assert!(screen.contains("step 50 · paused"), "{screen}");
    snapshot("main_rosenbrock_50_steps", &t);
}

/// Each step is settled on its own, so every step is reported and the curve is the same on a
/// loaded machine.
#[test]
fn snapshot_metrics_tab_charts_one_line_per_run_and_the_inspector_shows_the_values() {
    let (mut app, rx) = open("losses/mse_l1.toml");
    for _ in 0..10 {
        typed_settled(&mut app, &rx, "n");
    }
    assert_eq!(app.tabs().last(), Some(&Tab::Metrics));
    app.tab = Tab::Metrics;
    let t = draw(&app, 160, 45);
    let screen = rows(&t).join("\n");
    assert!(screen.contains("Metrics: dist (1/2, M next)"), "{screen}");
    assert!(screen.contains("metrics @10"), "{screen}");
    snapshot("metrics_tab_mse_l1_10_steps", &t);
    typed(&mut app, "M");
    let screen = rows(&draw(&app, 160, 45)).join("\n");
    assert!(screen.contains("Metrics: r2 (2/2, M next)"), "{screen}");
}

#[test]
fn files_without_metrics_have_no_metrics_tab() {
    let (app, _rx) = open(ROSENBROCK);
    assert!(!app.tabs().contains(&Tab::Metrics));
}

#[test]
fn snapshot_nan_event_shows_warnings_and_a_red_marker() {
    let (mut app, rx) = open("losses/norm_at_zero.toml");
    typed_settled(&mut app, &rx, "n");
    let s = app.session().expect("a session");
    let halted: Vec<&str> = s
        .runs
        .iter()
        .filter(|r| r.halted.is_some())
        .map(|r| r.info.name.as_str())
        .collect();
    assert_eq!(halted, ["naive sqrt(sum(w^2))", "naive norm(w)"]);
    assert!(
        s.warnings
            .iter()
            .any(|w| w.step == 0 && w.text.contains("non-finite")),
        "{:?}",
        s.warnings
    );
    // The loss stays finite; the gradient norm is what went NaN.
    typed(&mut app, "t");
    assert_eq!(app.tab, Tab::GradNorm);
    let t = draw(&app, 160, 45);
    let screen = rows(&t).join("\n");
    assert!(screen.contains("halted@0"), "{screen}");
    assert!(
        screen.contains("NaN/Inf"),
        "legend entry missing:\n{screen}"
    );
    // The marker: a red block inside the chart (the legend swatch is not a block cell).
    let chart = areas(&app, 160, 45).chart;
    let buf = t.backend().buffer();
    let red_marker = (chart.top()..chart.bottom()).any(|y| {
        (chart.left()..chart.right())
            .any(|x| buf[(x, y)].symbol() == "█" && buf[(x, y)].fg == Color::Red)
    });
    assert!(red_marker, "no red NaN marker in the chart:\n{screen}");
    snapshot("nan_norm_at_zero", &t);
}

/// The red marker sits on the chart's top edge, where ratatui draws the y axis title.
#[test]
fn log_scale_does_not_hide_the_nan_marker() {
    let (mut app, rx) = open("losses/norm_at_zero.toml");
    typed_settled(&mut app, &rx, "20ntl");
    let t = draw(&app, 160, 45);
    let chart = areas(&app, 160, 45).chart;
    let buf = t.backend().buffer();
    let red_marker = (chart.top()..chart.bottom()).any(|y| {
        (chart.left()..chart.right())
            .any(|x| buf[(x, y)].symbol() == "█" && buf[(x, y)].fg == Color::Red)
    });
    assert!(red_marker, "{}", rows(&t).join("\n"));
}

#[test]
fn snapshot_broken_file_diagnostics() {
    let dir = Scratch::new("broken");
    dir.copy(ROSENBROCK, "rosenbrock.toml");
    dir.copy(
        "tests/malformed/unknown_function.toml",
        "unknown_function.toml",
    );
    let (mut app, rx) = open(dir.path());
    assert_eq!(app.files.len(), 2);
    assert!(!app.file().unwrap().broken());
    typed(&mut app, "j");
    app.settle(&rx);
    let f = app.file().unwrap();
    assert!(f.broken());
    assert!(f.session.is_none());
    let t = draw(&app, 160, 45);
    let screen = rows(&t).join("\n");
    assert!(
        screen.contains("target/tui-test-broken/unknown_function.toml:4:7"),
        "{screen}"
    );
    assert!(screen.contains("unknown function `expp`"), "{screen}");
    assert!(screen.contains("✗ Unknown function"), "{screen}");
    snapshot("broken_file_diagnostics", &t);
    // Keys about runs say why nothing happens, and where the errors are, in a status line
    // that fits 120 columns.
    for key in ["n", "o", "g", " "] {
        typed(&mut app, key);
        let message = app.message.clone().unwrap_or_default();
        assert!(
            message.contains("does not compile, so it has no runs: the Diagnostics panel"),
            "{key}: {message}"
        );
        let status = rows(&draw(&app, 120, 35)).pop().unwrap();
        assert!(
            status.trim_end().ends_with("it reloads when saved"),
            "{status}"
        );
        assert!(screen.contains("Diagnostics"), "{screen}");
    }
}

/// A file whose own run cannot start (sm3 on a scalar param) is broken as `check` says it is:
/// ✗, the same located diagnostic in place of the chart, the run listed as an error and its
/// line in Warnings opening the diagnostic. Fixed, the run starts.
#[test]
fn snapshot_a_run_that_cannot_start_is_the_files_error() {
    let dir = Scratch::new("refused");
    let file = dir.copy("tests/malformed/sm3_scalar_param.toml", "sm3.toml");
    let (mut app, rx) = open(dir.path());
    let checked = gradscope::cli::check::check_file(&file, true)
        .file
        .diagnostics;
    let [error] = checked.as_slice() else {
        panic!("{checked:?}");
    };
    let f = app.file().unwrap();
    assert!(f.broken());
    let shown: Vec<String> = f.refused().map(|d| d.render(false)).collect();
    assert_eq!(shown, [error.render(false)]);
    let (line, column) = error.line_col().unwrap();
    let at = format!("{}:{line}:{column}", file.display());
    let t = draw(&app, 120, 30);
    let screen = rows(&t).join("\n");
    for shown in [
        "✗ sm3 on a scalar param",
        &at,
        "this optimizer",
        "error      base",
    ] {
        assert!(screen.contains(shown), "`{shown}`:\n{screen}");
    }
    assert!(!screen.contains("the last good version"), "{screen}");
    snapshot("run_that_cannot_start", &t);
    app.focus = Focus::Warnings;
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.popup, Some(Popup::Warning(0)));
    let popup = rows(&draw(&app, 120, 30)).join("\n");
    assert!(popup.contains(&at), "{popup}");
    press(&mut app, KeyCode::Esc);

    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("\"sm3\"", "\"adam\"")).unwrap();
    app.handle(Msg::FileChanged(file.clone()));
    app.settle(&rx);
    let f = app.file().unwrap();
    assert!(!f.broken());
    assert_eq!(run_names(&app), ["base"]);

    // And back: an edit that leaves the running run unable to start lists it once, as the
    // refusal (not also as a run starting forever), and the next fix starts one run again.
    std::fs::write(&file, &text).unwrap();
    app.handle(Msg::FileChanged(file.clone()));
    app.settle(&rx);
    let f = app.file().unwrap();
    assert!(f.broken());
    assert_eq!(run_names(&app), Vec::<String>::new());
    assert_eq!(f.refused().count(), 1);
    std::fs::write(&file, text.replace("\"sm3\"", "\"adam\"")).unwrap();
    app.handle(Msg::FileChanged(file.clone()));
    app.settle(&rx);
    assert!(!app.file().unwrap().broken());
    assert_eq!(run_names(&app), ["base"]);
}

/// A run the user asks for that cannot start says why in the status line and Warnings, and
/// leaves the file as it was.
#[test]
fn an_added_run_that_cannot_start_says_why() {
    let (mut app, rx) = open(ROSENBROCK);
    typed(&mut app, "o");
    press(&mut app, KeyCode::Enter);
    for _ in 0..40 {
        press(&mut app, KeyCode::Backspace);
    }
    typed(&mut app, "sm3");
    press(&mut app, KeyCode::Enter);
    app.settle(&rx);
    let said = app.message.clone().unwrap_or_default();
    assert!(
        said.starts_with("run `base · sm3") && said.contains("cannot start: sm3 keeps one"),
        "{said}"
    );
    let s = app.session().unwrap();
    assert_eq!(s.runs.len(), 4);
    assert!(s.refused.is_empty());
    let w = s.warnings.last().unwrap();
    assert!(w.text.contains("cannot step `x`, a scalar"), "{}", w.text);
    assert!(w.diagnostic.is_some());
    assert!(!app.file().unwrap().broken());
}

#[test]
fn snapshot_help_overlay() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "?");
    let t = draw(&app, 160, 45);
    let screen = rows(&t).join("\n");
    assert!(
        screen.contains("Keys (j/k scroll, any other key closes)"),
        "{screen}"
    );
    for key in keys::BINDINGS.iter().map(|b| b.label()) {
        assert!(screen.contains(&key), "help lacks `{key}`:\n{screen}");
    }
    // On a small terminal the keys are one column that j scrolls down to the last line, the
    // glossary's (after the keys, at most as many entries as keys).
    let late = "finished (! halted)";
    assert!(screen.contains(late), "{screen}");
    assert!(!rows(&draw(&app, 60, 20)).join("\n").contains(late));
    app.handle(Msg::Resize(60, 20));
    typed(&mut app, &"j".repeat(2 * keys::BINDINGS.len()));
    assert!(app.show_help);
    let bottom = rows(&draw(&app, 60, 20));
    assert!(bottom.join("\n").contains(late), "{}", bottom.join("\n"));
    // Held at the end: more j, and one k moves it back up (it had counted on past the end),
    // with the box as wide as before.
    typed(&mut app, "jjjjj");
    assert_eq!(rows(&draw(&app, 60, 20)), bottom);
    typed(&mut app, "k");
    let up = rows(&draw(&app, 60, 20));
    assert_ne!(up, bottom);
    // The box's top border, from its corner to the next one.
    let width = |screen: &[String]| {
        let top = screen.iter().find(|r| r.contains("┌Keys (")).unwrap();
        let from = top.find("┌Keys (").unwrap();
        top[from..]
            .split_inclusive('┐')
            .next()
            .unwrap()
            .chars()
            .count()
    };
    assert_eq!(width(&up), width(&bottom));
    snapshot("help_overlay", &t);
}

/// Every key's description fits in the help box at a normal terminal size.
#[test]
fn help_shows_every_description_in_full() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "?");
    let screen = rows(&draw(&app, 160, 45)).join("\n");
    for what in keys::BINDINGS.iter().map(|b| b.help) {
        assert!(screen.contains(what), "help cuts `{what}`:\n{screen}");
    }
    // After the keys, what the screen's marks mean.
    for mark in ["Δ/p", "update norm / param norm", "(eval)", "NaN/Inf loss"] {
        assert!(screen.contains(mark), "help lacks `{mark}`:\n{screen}");
    }
}

/// On a narrow terminal the help wraps each description under its own column, and every key
/// starts in the keys' column.
#[test]
fn the_help_wraps_descriptions_and_aligns_keys() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "?");
    let t = draw(&app, 160, 45);
    let label_w = keys::BINDINGS
        .iter()
        .map(|b| b.label().chars().count())
        .max()
        .unwrap();
    let x = |key: &str, text: &str| {
        let row = format!("{key:<label_w$}  {text}");
        find(&t, Rect::new(0, 0, 160, 45), &row).unwrap().0
    };
    assert_eq!(x("q  ctrl-c", "quit"), x("?", "this help"));
    assert_eq!(x("space", "run"), x("n  →", "one step"));
    app.handle(Msg::Resize(60, 15));
    let log = keys::BINDINGS
        .iter()
        .position(|b| b.action == keys::KeyAction::LogScale)
        .unwrap();
    app.help_scroll = log;
    let screen = rows(&draw(&app, 60, 15));
    let top = screen.iter().position(|r| r.contains("┌Keys")).unwrap();
    // Inside the box: its key column, then its text column.
    let inside = |r: &String| -> (String, String) {
        let cells: Vec<char> = r.chars().skip_while(|&c| c != '│').skip(1).collect();
        let key: String = cells.iter().take(label_w).collect();
        let text: String = cells.iter().skip(label_w + 2).collect();
        (
            key.trim().to_string(),
            text.trim_end_matches(['│', ' ']).to_string(),
        )
    };
    let (key, first) = inside(&screen[top + 1]);
    assert_eq!(key, "l", "{}", screen.join("\n"));
    let texts: Vec<String> = std::iter::once(first)
        .chain(
            screen[top + 2..]
                .iter()
                .map(inside)
                .take_while(|(key, _)| key.is_empty())
                .map(|(_, text)| text),
        )
        .filter(|t| !t.is_empty())
        .collect();
    let help = keys::BINDINGS[log].help;
    assert!(texts.len() > 1, "{}", screen.join("\n"));
    assert_eq!(texts.join(" "), help, "{}", screen.join("\n"));
}

#[test]
fn snapshot_log_scale() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "50nl");
    assert!(app.log_y);
    let t = draw(&app, 160, 45);
    assert!(rows(&t).join("\n").contains("(log y)"));
    snapshot("log_scale", &t);
}

/// Smoothing on a log y axis: a loss that reaches exactly 0 (left out of a log axis) has an EMA
/// that decays through f64 subnormals to 5e-324; the axis stays on the raw values rather than
/// reach down to it.
#[test]
fn smoothing_on_a_log_axis_keeps_the_raw_values_lower_bound() {
    let dir = Scratch::new("log-smooth");
    let (_, mut app, rx) = open_written(
        &dir,
        "zero.toml",
        "name = \"zero\"\nloss = \"w^2\"\n[params]\nw = 1.0\n[optimizer]\nname = \"sgd\"\n\
         lr = 0.5\nsteps = 2000\n[[variants]]\nname = \"quarter\"\noptimizer = { lr = 0.25 }\n",
    );
    typed_settled(&mut app, &rx, "2000nls");
    assert_eq!(app.smoothing, 0.6);
    assert_eq!(app.session().unwrap().runs[0].history.core(1).loss, 0.0);
    let screen = rows(&draw(&app, 160, 45)).join("\n");
    // No y label of three-digit exponent (4.9407e-324).
    let tiny = screen
        .match_indices("e-")
        .any(|(i, _)| screen[i + 2..].chars().take(3).all(|c| c.is_ascii_digit()));
    assert!(!tiny, "{screen}");
    assert!(
        screen.contains("smoothed 0.6") && screen.contains("(log y)"),
        "{screen}"
    );
}

/// `a` shows the last 500 steps, and the chart's title says so.
#[test]
fn the_last_steps_view_is_named_in_the_title() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "600n");
    assert!(
        !rows(&draw(&app, 160, 45))
            .join("\n")
            .contains("last 500 steps")
    );
    typed_settled(&mut app, &rx, "a");
    assert!(
        rows(&draw(&app, 160, 45))
            .join("\n")
            .contains("Loss · last 500 steps")
    );
}

/// A loss that goes below 0 cannot be drawn on a log axis: the chart stays linear and its title
/// says why, and a loss above 0 again gets the log axis back.
#[test]
fn log_scale_is_off_while_a_value_is_below_0() {
    let dir = Scratch::new("log-negative");
    dir.write(
        "negative.toml",
        "name = \"Negative\"\nloss = \"(x - 1)^2 - 0.5\"\n\n[params]\nx = \"0.0\"\n\n[optimizer]\nname = \"sgd\"\nlr = 0.1\nsteps = 50\n",
    );
    let (mut app, rx) = open(&format!("{}/negative.toml", dir.path()));
    typed_settled(&mut app, &rx, "50nl");
    assert!(app.log_y);
    let text = rows(&draw(&app, 160, 45)).join("\n");
    assert!(text.contains("(linear: values < 0)"), "{text}");
    assert!(!text.contains("(log y)"), "{text}");
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "5nl");
    assert!(rows(&draw(&app, 160, 45)).join("\n").contains("(log y)"));
}

/// A file that compiles but whose every run halted (NaN at its initial params) is marked `!` in
/// the list, not ✓: `check` fails it. One with a run still going keeps its ✓.
#[test]
fn a_file_whose_runs_all_halted_is_marked_in_the_list() {
    let dir = Scratch::new("all-halted");
    dir.write(
        "nan.toml",
        "name = \"Starts at NaN\"\nloss = \"sum(log(w))\"\n\n[params]\nw = \"[-1.0, 2.0]\"\n",
    );
    let (mut app, rx) = open(&format!("{}/nan.toml", dir.path()));
    typed_settled(&mut app, &rx, "n");
    let list = |app: &App| rows(&draw(app, 160, 45)).join("\n");
    assert!(list(&app).contains("! Starts at NaN"), "{}", list(&app));
    let (mut app, rx) = open("losses/norm_at_zero.toml");
    typed_settled(&mut app, &rx, "n");
    assert!(list(&app).contains("✓ "), "{}", list(&app));
    assert!(!list(&app).contains("! "), "{}", list(&app));
}

/// A run whose bf16 updates round away: its report heads the Warnings (`enter` shows it at the
/// param's line), a count follows it, the inspector counts the steps; a reset and the same
/// steps again say it once.
#[test]
fn a_stalled_run_is_in_the_warnings_list_with_its_report() {
    let dir = Scratch::new("stalled");
    dir.write(
        "stall.toml",
        "name = \"Stalls\"\ndtype = \"bf16\"\nloss = \"sum((w - 3)^2)\"\n[params]\nw = \"[1.0, 1.5]\"\n\
         [optimizer]\nname = \"adam\"\nlr = 1e-3\nsteps = 50\n",
    );
    let (mut app, rx) = open(&format!("{}/stall.toml", dir.path()));
    typed_settled(&mut app, &rx, "5n");
    let said = |app: &App| -> Vec<String> {
        let s = app.session().unwrap();
        s.warnings
            .iter()
            .map(|w| format!("{} {}: {}", w.run, w.step, w.text))
            .collect()
    };
    assert_eq!(
        said(&app),
        [
            "base 0: `w` did not move: updates round away in bf16",
            "base 0: 5 steps stalled",
        ]
    );
    let s = app.session().unwrap();
    let full = s.warnings[0]
        .diagnostic
        .as_ref()
        .expect("in full")
        .render(false);
    assert!(full.contains("5 | w = \"[1.0, 1.5]\""), "{full}");
    assert_eq!(s.runs[0].stalled, 5);
    assert!(
        rows(&draw(&app, 160, 45))
            .join("\n")
            .contains("stalled 5 (see Warnings)")
    );
    typed_settled(&mut app, &rx, "r5n");
    assert_eq!(
        said(&app),
        [
            "base 0: `w` did not move: updates round away in bf16",
            "base 0: 5 steps stalled",
        ]
    );
}

/// A run that goes on past a NaN (`on_nonfinite = "continue"`): its first non-finite step is one
/// line of the Warnings, `enter` showing where the NaN started.
#[test]
fn a_run_going_on_past_a_nan_has_one_warning_that_says_where() {
    let dir = Scratch::new("continue-nan");
    dir.write(
        "nan.toml",
        "name = \"NaN at 3\"\nloss = \"sqrt(detach(x)) + x\"\n[params]\nx = 2.5\n[optimizer]\n\
         name = \"sgd\"\nlr = 1.0\nsteps = 10\non_nonfinite = \"continue\"\n",
    );
    let (mut app, rx) = open(&format!("{}/nan.toml", dir.path()));
    typed_settled(&mut app, &rx, "10n");
    let s = app.session().unwrap();
    let at_3: Vec<_> = s.warnings.iter().filter(|w| w.step == 3).collect();
    assert_eq!(at_3.len(), 1, "{:?}", s.warnings);
    assert_eq!(at_3[0].text, "loss is NaN (first non-finite step)");
    let full = at_3[0].diagnostic.as_ref().expect("in full").render(false);
    assert!(
        full.contains("non-finite values start here at step 3"),
        "{full}"
    );
}

/// A terminal too small for the Warnings panel: the status line of a halted file says `enter`
/// tells why, and `enter` shows the newest warning in full, whatever the focus.
#[test]
fn enter_shows_the_newest_warning_where_the_terminal_has_no_warnings_panel() {
    let dir = Scratch::new("small-halted");
    dir.write(
        "nan.toml",
        "name = \"Starts at NaN\"\nloss = \"sum(log(w))\"\n\n[params]\nw = \"[-1.0, 2.0]\"\n",
    );
    let (mut app, rx) = open(&format!("{}/nan.toml", dir.path()));
    typed_settled(&mut app, &rx, "n");
    app.handle(Msg::Resize(60, 15));
    let screen = rows(&draw(&app, 60, 15)).join("\n");
    assert!(!screen.contains("Warnings"), "{screen}");
    assert!(screen.contains("all runs halted (enter: why"), "{screen}");
    press(&mut app, KeyCode::Enter);
    let screen = rows(&draw(&app, 60, 15)).join("\n");
    assert!(screen.contains("non-finite values start here"), "{screen}");
    // With the panel on screen, `enter` is the panel's: elsewhere it opens nothing.
    press(&mut app, KeyCode::Esc);
    app.handle(Msg::Resize(160, 45));
    assert!(
        rows(&draw(&app, 160, 45))
            .join("\n")
            .contains("(see Warnings")
    );
    press(&mut app, KeyCode::Enter);
    assert!(
        !rows(&draw(&app, 160, 45))
            .join("\n")
            .contains("any key closes")
    );
}

/// A file's own warnings, from loading it, are in the Warnings list, `enter` showing each in
/// full as `check` prints it.
#[test]
fn a_files_load_warnings_are_in_the_warnings_list() {
    let dir = Scratch::new("load-warnings");
    dir.write(
        "warns.toml",
        "name = \"Warns\"\nloss = \"\"\"\na = 2\nsum(w^2)\n\"\"\"\n[params]\nw = \"[1.0, 2.0]\"\n",
    );
    let (app, _rx) = open(&format!("{}/warns.toml", dir.path()));
    let s = app.session().expect("a session");
    let w = s.warnings.first().expect("the file's warning");
    assert_eq!(
        (w.run.as_str(), w.text.as_str()),
        ("warns.toml", "3:1: `a` is never used")
    );
    let full = w.diagnostic.as_ref().expect("in full").render(false);
    assert!(full.contains("3 | a = 2"), "{full}");
}

/// A schedule-free run beside Adam: its eval params' loss is a second, dimmer line of its colour.
const SCHEDULE_FREE: &str = r#"name = "Schedule-free"
loss = "(1 - x)^2 + 100 * (y - x^2)^2"

[params]
x = "-1.5"
y = "2.0"

[optimizer]
name = "schedulefree_adamw"
lr = 0.05
steps = 1000

[[variants]]
name = "adam"
optimizer = { name = "adam", lr = 0.05, steps = 1000 }
"#;

#[test]
fn snapshot_eval_loss_beside_the_training_loss() {
    let dir = Scratch::new("eval-loss");
    dir.write("schedule_free.toml", SCHEDULE_FREE);
    let (mut app, rx) = open(dir.path());
    typed_settled(&mut app, &rx, "50n");
    let t = draw(&app, 160, 45);
    let screen = rows(&t).join("\n");
    assert!(screen.contains("base (eval)"), "{screen}");
    assert!(
        !screen.contains("adam (eval)"),
        "adam has no eval params:\n{screen}"
    );
    // The eval curve: dim cells of the base run's colour inside the chart.
    let base = app.session().expect("a session").runs[0].color;
    let chart = areas(&app, 160, 45).chart;
    let buf = t.backend().buffer();
    let dim = (chart.top()..chart.bottom()).any(|y| {
        (chart.left()..chart.right()).any(|x| {
            let c = &buf[(x, y)];
            c.fg == base && c.modifier.contains(Modifier::DIM) && c.symbol() != " "
        })
    });
    assert!(dim, "no dim curve of the base run's colour:\n{screen}");
    snapshot("eval_loss_schedule_free", &t);
}

#[test]
fn snapshot_tiny_terminals() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "50n");
    let t = draw(&app, 39, 11);
    assert!(rows(&t).join(" ").contains("too small"));
    snapshot("tiny_39x11", &t);
    let t = draw(&app, 40, 12);
    assert!(!rows(&t).join(" ").contains("too small"));
    snapshot("tiny_40x12", &t);
}

/// On a terminal too narrow for every hint, the status line keeps `? help  q quit` (the last of
/// the others go); with no room for the inspector, `g`, `G` and `F` open it over the panels.
#[test]
fn a_small_terminal_keeps_help_and_quit_in_the_footer_and_overlays_the_inspector() {
    let (mut app, rx) = open(ROSENBROCK);
    for w in [40, 60, 80, 100] {
        let status = rows(&draw(&app, w, 24)).pop().unwrap();
        assert!(
            status.trim_end().ends_with("? help  q quit"),
            "{w}: {status}"
        );
        assert!(
            w < 60 || status.contains("space run/pause"),
            "{w}: {status}"
        );
    }
    let status = rows(&draw(&app, 160, 24)).pop().unwrap();
    assert!(status.contains("o add  ? help  q quit"), "{status}");

    app.handle(Msg::Resize(80, 24));
    typed_settled(&mut app, &rx, "5n");
    for (key, answer, shown) in [
        ("g", Answer::Gradcheck, "gradcheck @5"),
        ("F", Answer::LrFind, "lr range test @5"),
        ("G", Answer::Formula, "as a formula @5"),
    ] {
        typed_settled(&mut app, &rx, key);
        assert_eq!(app.popup, Some(Popup::Inspector(answer)), "{key}");
        let screen = rows(&draw(&app, 80, 24)).join("\n");
        assert!(screen.contains(shown), "{key}:\n{screen}");
        press(&mut app, KeyCode::Esc);
        assert_eq!(app.popup, None);
    }
    app.handle(Msg::Resize(120, 40));
    typed_settled(&mut app, &rx, "g");
    assert_eq!(app.popup, None, "the inspector's panel shows it");
}

/// Terminal sizes around every layout threshold (the 40x12 minimum, the warnings panel at 24
/// rows, the left column's clamp, the inspector at 110 columns) and every tiny size.
fn sizes() -> Vec<(u16, u16)> {
    let widths: Vec<u16> = (1..=44)
        .chain([50, 60, 71, 72, 73, 80, 109, 110, 111, 140])
        .collect();
    let heights: Vec<u16> = (1..=14).chain([20, 23, 24, 25, 30]).collect();
    widths
        .iter()
        .flat_map(|&w| heights.iter().map(move |&h| (w, h)))
        .collect()
}

/// Every screen state, in every tab, renders at every size of [`sizes`] without panicking.
#[test]
fn no_size_panics() {
    let dir = Scratch::new(&format!("sizes-{}", std::process::id()));
    dir.copy("losses/norm_at_zero.toml", "a.toml");
    dir.copy("tests/malformed/unknown_function.toml", "b.toml");
    let c = KeyCode::Char;
    let states: [(&str, &[KeyCode]); 8] = [
        ("main", &[]),
        ("log, smoothing, per param", &[c('l'), c('s'), c('v')]),
        ("help", &[c('?')]),
        ("pick optimizer", &[c('o')]),
        ("edit spec", &[c('o'), KeyCode::Enter]),
        ("duplicate", &[c('d')]),
        ("broken file", &[c('j')]),
        ("inspector overlay", &[c('g')]),
    ];
    for (what, keys) in states {
        let (mut app, rx) = open(dir.path());
        app.handle(Msg::Resize(80, 24));
        typed_settled(&mut app, &rx, "3n");
        for k in keys {
            press(&mut app, *k);
        }
        for tab in Tab::ALL {
            app.tab = tab;
            for (w, h) in sizes() {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    draw(&app, w, h);
                }));
                assert!(r.is_ok(), "{what}, tab {tab:?}: panicked at {w}x{h}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input on state
// ---------------------------------------------------------------------------------------------

#[test]
fn space_toggles_playing() {
    let (mut app, rx) = open(ROSENBROCK);
    assert!(!app.session().unwrap().playing);
    typed_settled(&mut app, &rx, " ");
    assert!(app.session().unwrap().playing);
    typed_settled(&mut app, &rx, " ");
    assert!(!app.session().unwrap().playing);
    // Paused means paused: the history stops growing.
    let before = history_lens(&app);
    std::thread::sleep(Duration::from_millis(100));
    app.settle(&rx);
    assert_eq!(history_lens(&app), before);
}

#[test]
fn step_keys_step_the_right_number_of_times() {
    let cases: &[(&str, &[KeyCode], usize)] = &[
        ("n", &[KeyCode::Char('n')], 1),
        ("→", &[KeyCode::Right], 1),
        ("N", &[KeyCode::Char('N')], 100),
        (
            "25n",
            &[KeyCode::Char('2'), KeyCode::Char('5'), KeyCode::Char('n')],
            25,
        ),
        ("2N", &[KeyCode::Char('2'), KeyCode::Char('N')], 200),
        ("n n n", &[KeyCode::Char('n'); 3], 3),
        ("7→", &[KeyCode::Char('7'), KeyCode::Right], 7),
    ];
    for (what, keys, steps) in cases {
        let (mut app, rx) = open(ROSENBROCK);
        for k in *keys {
            press(&mut app, *k);
        }
        app.settle(&rx);
        assert_eq!(history_lens(&app), vec![*steps; 4], "{what}");
        assert_eq!(app.count, None, "{what}: the count was not consumed");
    }
}

#[test]
fn count_prefix_shows_in_the_status_bar_until_used() {
    let (mut app, rx) = open(ROSENBROCK);
    typed(&mut app, "12");
    assert_eq!(app.count, Some(12));
    assert!(rows(&draw(&app, 160, 45)).join("").contains("12…"));
    typed_settled(&mut app, &rx, "n");
    assert_eq!(app.count, None);
    assert_eq!(history_lens(&app), vec![12; 4]);
}

#[test]
fn rewind_and_reset_keys() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "250n");
    let cases: &[(&str, KeyCode, usize)] = &[
        ("b", KeyCode::Char('b'), 249),
        ("←", KeyCode::Left, 248),
        ("B", KeyCode::Char('B'), 148),
        ("n after rewinding", KeyCode::Char('n'), 149),
        ("r", KeyCode::Char('r'), 0),
        ("b at 0", KeyCode::Char('b'), 0),
    ];
    for (what, key, len) in cases {
        press(&mut app, *key);
        app.settle(&rx);
        assert_eq!(history_lens(&app), vec![*len; 4], "after {what}");
    }
    typed_settled(&mut app, &rx, "120n40b");
    assert_eq!(history_lens(&app), vec![80; 4], "after 120n40b");
    typed_settled(&mut app, &rx, "2B");
    assert_eq!(history_lens(&app), vec![0; 4], "2B rewinds at most to 0");
}

/// Rewinding takes every run to one step, counted back from the furthest run: a run that halted
/// earlier stays where it is until that step is before its own.
#[test]
fn rewinding_takes_every_run_to_the_same_step_past_a_halted_one() {
    let (mut app, rx) = open("losses/f16_exp_overflow.toml");
    typed_settled(&mut app, &rx, "40n");
    let lens = history_lens(&app);
    let halted = *lens.iter().min().unwrap();
    assert!(halted < 39 && lens.contains(&40), "{lens:?}");
    typed_settled(&mut app, &rx, "b");
    assert!(history_lens(&app).iter().all(|&l| l == 39 || l == halted));
    let back = 40 - (halted - 2);
    typed_settled(&mut app, &rx, &format!("{}b", back - 1));
    assert_eq!(history_lens(&app), vec![halted - 2; lens.len()]);
}

/// Handles messages until `done` holds (a minute at most).
fn until(app: &mut App, rx: &Receiver<Msg>, what: &str, done: impl Fn(&App) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(app) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if let Ok(m) = rx.recv_timeout(Duration::from_millis(100)) {
            app.handle(m);
        }
    }
}

/// Counted steps under way are said in the status line, and a key that changes the runs ends
/// them at once: `space` stops them (it was queued as a play for after 300,000 steps), `r`
/// resets and `n` takes one step from where they stopped.
#[test]
fn a_key_ends_counted_steps_at_once() {
    let (mut app, rx) = open(ROSENBROCK);
    let under_way = |app: &App| {
        let s = app.session().unwrap();
        s.stepping.is_some() && s.runs.iter().all(|r| r.steps() >= 20)
    };
    typed(&mut app, "3000N");
    until(&mut app, &rx, "the steps to be under way", under_way);
    let status = rows(&draw(&app, 160, 45)).pop().unwrap();
    assert!(status.contains("stepping to 300000…"), "{status}");
    typed_settled(&mut app, &rx, " ");
    let s = app.session().unwrap();
    assert!(!s.playing && s.stepping.is_none());
    let stopped = history_lens(&app);
    assert!(stopped.iter().all(|&k| k < 300_000), "{stopped:?}");
    std::thread::sleep(Duration::from_millis(100));
    app.settle(&rx);
    assert_eq!(history_lens(&app), stopped, "stopped means stopped");
    assert!(rows(&draw(&app, 160, 45)).pop().unwrap().contains("paused"));

    for (key, after) in [("r", 0), ("n", 1)] {
        typed_settled(&mut app, &rx, "r");
        typed(&mut app, "3000N");
        until(&mut app, &rx, "the steps to be under way", under_way);
        let at = history_lens(&app)[0];
        typed_settled(&mut app, &rx, key);
        let lens = history_lens(&app);
        assert!(lens.iter().all(|&k| k < 300_000), "after {key}: {lens:?}");
        if after == 0 {
            assert_eq!(lens, vec![0; 4], "r resets at once");
        } else {
            assert!(lens[0] > at, "n steps on from where they stopped");
        }
        assert!(app.session().unwrap().stepping.is_none(), "after {key}");
    }
}

/// `space` typed right after `3000N`, before the worker has said it takes the steps, pauses:
/// it would otherwise be queued as "play", and the runs would play on past the 300,000 steps.
#[test]
fn space_right_after_counted_steps_pauses_them() {
    let (mut app, rx) = open(ROSENBROCK);
    typed(&mut app, "3000N ");
    app.settle(&rx);
    std::thread::sleep(Duration::from_millis(100));
    app.settle(&rx);
    let s = app.session().unwrap();
    assert!(!s.playing && s.stepping.is_none() && !s.steps_asked);
    let stopped = history_lens(&app);
    assert!(stopped.iter().all(|&k| k < 300_000), "{stopped:?}");
    std::thread::sleep(Duration::from_millis(100));
    app.settle(&rx);
    assert_eq!(history_lens(&app), stopped, "paused means paused");
}

/// Plays `app` until every run has taken its steps (or ten seconds pass).
fn play_to_the_end(app: &mut App, rx: &Receiver<Msg>) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < until && !app.session().unwrap().runs.iter().all(|r| r.done())
    {
        app.settle(rx);
    }
}

/// `space` on finished runs plays them on for as many steps again, and says so: the status line
/// says "finished" (not "paused") while they wait, and a reset gives the runs their own steps
/// back.
#[test]
fn finished_runs_say_so_play_on_and_a_reset_gives_their_steps_back() {
    let dir = Scratch::new("play-on");
    dir.write(
        "short.toml",
        "name = \"Short\"\nloss = \"(x - 1)^2\"\n\n[params]\nx = \"0.0\"\n\n[optimizer]\nname = \"sgd\"\nlr = 0.1\nsteps = 20\n",
    );
    let (mut app, rx) = open(&format!("{}/short.toml", dir.path()));
    let steps = |app: &App| {
        app.session()
            .unwrap()
            .runs
            .iter()
            .map(|r| r.info.steps)
            .collect::<Vec<_>>()
    };
    typed_settled(&mut app, &rx, " ");
    play_to_the_end(&mut app, &rx);
    assert_eq!(history_lens(&app), vec![20]);
    // The session stops playing once every run is done.
    app.settle(&rx);
    assert!(
        rows(&draw(&app, 160, 45))
            .join("\n")
            .contains("finished (space plays on)")
    );
    typed_settled(&mut app, &rx, " ");
    assert_eq!(steps(&app), vec![40]);
    play_to_the_end(&mut app, &rx);
    assert_eq!(history_lens(&app), vec![40]);
    typed_settled(&mut app, &rx, "r");
    assert_eq!(steps(&app), vec![20]);
    assert_eq!(history_lens(&app), vec![0]);
}

/// A run added after the others finished plays to its end alone: `space` plays the finished
/// runs on only once every run is finished, as the status line's `space plays on` says.
#[test]
fn space_plays_an_added_run_to_its_end_and_the_finished_ones_on_only_after() {
    let dir = Scratch::new("play-added");
    let (_, mut app, rx) = open_written(
        &dir,
        "short.toml",
        "name = \"Short\"\nloss = \"(x - 1)^2\"\n[params]\nx = \"0.0\"\n[optimizer]\n\
         name = \"sgd\"\nlr = 0.1\nsteps = 20\n",
    );
    typed_settled(&mut app, &rx, " ");
    play_to_the_end(&mut app, &rx);
    typed(&mut app, "o");
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Enter);
    app.settle(&rx);
    assert_eq!(history_lens(&app), vec![20, 0]);
    typed_settled(&mut app, &rx, " ");
    play_to_the_end(&mut app, &rx);
    let steps = |app: &App| -> Vec<u64> {
        app.session()
            .unwrap()
            .runs
            .iter()
            .map(|r| r.info.steps)
            .collect()
    };
    assert_eq!(history_lens(&app), vec![20, 20]);
    assert_eq!(steps(&app), vec![20, 20]);
    // Every run finished (the session stops playing then): now `space` plays them all on.
    app.settle(&rx);
    assert!(!app.session().unwrap().playing);
    typed_settled(&mut app, &rx, " ");
    assert_eq!(steps(&app), vec![40, 40]);
    play_to_the_end(&mut app, &rx);
    assert_eq!(history_lens(&app), vec![40, 40]);
}

/// A run that halts again at the same step after a reset is logged once, not once a replay.
/// When every run halted, playing on cannot move them: the status says they halted and where
/// to look, rather than offer `space`.
#[test]
fn the_status_says_when_every_run_halted() {
    let dir = Scratch::new("all-halted");
    let (_, mut app, rx) = open_written(
        &dir,
        "h.toml",
        "name = \"h\"\nloss = \"sum(log(w))\"\n[params]\nw = \"zeros(3)\"\n[optimizer]\n\
         name = \"sgd\"\nlr = 0.1\nsteps = 10\n",
    );
    typed_settled(&mut app, &rx, "n");
    assert!(
        app.session()
            .unwrap()
            .runs
            .iter()
            .all(|r| r.halted.is_some())
    );
    let status = rows(&draw(&app, 80, 24)).pop().unwrap();
    assert!(
        status.starts_with(" step 0 · all runs halted (see Warnings; b/r rewind)"),
        "{status}"
    );
    assert!(!status.contains("space plays on"), "{status}");
    assert!(status.trim_end().ends_with("? help  q quit"), "{status}");
}

/// `r` starts the log of a run over: its count of clipped steps went with its steps.
#[test]
fn a_reset_clears_the_warnings_of_the_steps_it_took_back() {
    let (mut app, rx) = open("losses/spikes.toml");
    typed_settled(&mut app, &rx, "300n");
    let clipped = |app: &App| {
        let s = app.session().unwrap();
        s.warnings
            .iter()
            .filter(|w| w.text.ends_with("steps clipped"))
            .map(|w| w.text.clone())
            .collect::<Vec<_>>()
    };
    assert!(!clipped(&app).is_empty(), "no run clipped a step");
    typed_settled(&mut app, &rx, "r");
    assert!(app.session().unwrap().warnings.is_empty());
    typed_settled(&mut app, &rx, "300n100b");
    let runs = &app.session().unwrap().runs;
    let counts: Vec<String> = runs
        .iter()
        .filter(|r| r.clipped > 0)
        .map(|r| format!("{} steps clipped", r.clipped))
        .collect();
    assert_eq!(clipped(&app), counts, "a rewind recounts them");
}

#[test]
fn a_halt_replayed_after_a_reset_is_logged_once() {
    let (mut app, rx) = open("losses/f16_exp_overflow.toml");
    typed_settled(&mut app, &rx, "40n");
    let logged = app.session().unwrap().warnings.len();
    assert!(logged > 0);
    typed_settled(&mut app, &rx, "r40n");
    typed_settled(&mut app, &rx, "r40n");
    assert_eq!(app.session().unwrap().warnings.len(), logged);
}

/// Rewinding re-steps from a snapshot: the records it produces must be the ones it replaced.
#[test]
fn rewind_reproduces_the_same_records() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "150n");
    let before: Vec<_> = app.session().unwrap().runs[0].history.cores().to_vec();
    typed_settled(&mut app, &rx, "30b30n");
    let after = app.session().unwrap().runs[0].history.cores().to_vec();
    let strip = |c: &[gradscope::run::history::Core]| -> Vec<(f64, f32, f32)> {
        c.iter().map(|c| (c.loss, c.grad_norm, c.lr)).collect()
    };
    assert_eq!(strip(&before), strip(&after));
}

#[test]
fn plus_and_minus_scale_the_selected_runs_lr() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "10n");
    // Select the second run (focus the Runs list first).
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.focus, Focus::Runs);
    typed_settled(&mut app, &rx, "j+");
    let s = app.session().unwrap();
    assert_eq!(s.selected, 1);
    assert_eq!(s.runs[1].lr_scale, 2.0);
    assert_eq!(s.runs[1].lr_changes, vec![10]);
    for i in [0, 2, 3] {
        assert_eq!(s.runs[i].lr_scale, 1.0, "run {i} was not selected");
        assert!(s.runs[i].lr_changes.is_empty());
    }
    // The inspector shows the lr the next update takes, not the one its row was recorded with.
    let base = f64::from(s.runs[1].history.core(9).lr);
    let want = format!("lr        {} (×2)", gradscope::format::fmt_num(2.0 * base));
    let t = draw(&app, 160, 45);
    assert!(
        rows(&t).iter().any(|l| l.contains(&want)),
        "{}",
        rows(&t).join("\n")
    );
    // The engine uses it: the next step's recorded lr is twice the previous one.
    typed_settled(&mut app, &rx, "n");
    let h = &app.session().unwrap().runs[1].history;
    assert_eq!(h.core(10).lr, 2.0 * h.core(9).lr);
    typed_settled(&mut app, &rx, "5n--");
    let r = &app.session().unwrap().runs[1];
    assert_eq!(r.lr_scale, 0.5);
    assert_eq!(r.lr_changes, vec![10, 16, 16]);
    // `=` is `+` without shift.
    typed_settled(&mut app, &rx, "=");
    assert_eq!(app.session().unwrap().runs[1].lr_scale, 1.0);
}

/// While the worker computes an inspection its runs wait for, the status bar says so instead
/// of "running" (a large model's Hessian takes seconds).
#[test]
fn the_status_bar_says_what_the_playing_runs_wait_for() {
    use gradscope::run::worker::Event;
    let (mut app, rx) = open(ROSENBROCK);
    typed(&mut app, " ");
    let status = |app: &App| {
        rows(&draw(app, 160, 45))
            .last()
            .cloned()
            .unwrap_or_default()
    };
    let id = app.session().unwrap().id;
    app.handle(Msg::Worker(id, Event::Playing(true)));
    assert!(status(&app).contains("running"), "{}", status(&app));
    app.handle(Msg::Worker(id, Event::Busy(Some("the Hessian"))));
    assert!(
        status(&app).contains("waiting for the Hessian…"),
        "{}",
        status(&app)
    );
    assert!(!status(&app).contains("running"), "{}", status(&app));
    app.handle(Msg::Worker(id, Event::Busy(None)));
    assert!(status(&app).contains("running"), "{}", status(&app));
    typed_settled(&mut app, &rx, " ");
}

/// The chart marks the step where the lr changed, also while the runs play.
#[test]
fn lr_change_while_playing_is_marked_at_the_step_it_took_effect() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, " ");
    std::thread::sleep(Duration::from_millis(100));
    typed(&mut app, "+");
    std::thread::sleep(Duration::from_millis(100));
    typed_settled(&mut app, &rx, " ");
    let r = &app.session().unwrap().runs[0];
    let base = r.history.core(0).lr;
    let first_doubled = (0..r.history.len())
        .find(|&k| r.history.core(k).lr == 2.0 * base)
        .expect("some step ran with the doubled lr");
    assert_eq!(r.lr_changes, vec![first_doubled as u64]);
}

/// Rewinding to a step after an lr change keeps the change (the engine re-steps with it).
#[test]
fn rewind_past_an_lr_change_keeps_it() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "50n+20n");
    let r = &app.session().unwrap().runs[0];
    let base = r.history.core(0).lr;
    assert_eq!(r.history.core(69).lr, 2.0 * base);
    typed_settled(&mut app, &rx, "bn");
    let r = &app.session().unwrap().runs[0];
    assert_eq!(r.lr_scale, 2.0);
    assert_eq!(
        r.history.core(69).lr,
        2.0 * base,
        "re-stepped without the change"
    );
    // And back before the change, the scale is 1 again, in the UI and in the engine.
    typed_settled(&mut app, &rx, "30bn");
    let r = &app.session().unwrap().runs[0];
    assert_eq!((r.steps(), r.history.len()), (41, 42));
    assert_eq!(r.history.core(40).lr, base);
    assert_eq!(r.lr_scale, 1.0, "the UI still shows the rewound-away scale");
    assert!(r.lr_changes.is_empty());
    // The log says the change was undone, once.
    let said: Vec<&str> = app
        .session()
        .unwrap()
        .warnings
        .iter()
        .map(|w| w.text.as_str())
        .filter(|t| t.starts_with("rewound past the lr change"))
        .collect();
    assert_eq!(
        said,
        ["rewound past the lr change at step 50: the lr is ×1 again"]
    );
}

#[test]
fn o_enter_enter_adds_a_run() {
    let (mut app, rx) = open(ROSENBROCK);
    typed(&mut app, "o");
    assert!(matches!(app.popup, Some(Popup::PickOptimizer { .. })));
    press(&mut app, KeyCode::Enter);
    let Some(Popup::EditSpec { text, .. }) = app.popup.clone() else {
        panic!("expected the spec editor, got {:?}", app.popup);
    };
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.popup, None);
    app.settle(&rx);
    let names = run_names(&app);
    assert_eq!(names.len(), 5);
    assert_eq!(names[4], format!("{} · {text}", names[0]));
    // It steps with the others.
    typed_settled(&mut app, &rx, "3n");
    assert_eq!(history_lens(&app), vec![3; 5]);
}

/// A reset or a rewind takes the run back before the steps the gradient check and the Hessian
/// were taken at: the inspector drops them rather than show them as the run's; a rewind to
/// a step after them keeps them.
#[test]
fn a_rewind_before_the_inspections_drops_them() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "30ng");
    typed_settled(&mut app, &rx, "h");
    press(&mut app, KeyCode::Esc);
    let steps = |app: &App| {
        let r = &app.session().unwrap().runs[0];
        (
            r.gradcheck.as_ref().map(|a| a.0),
            r.hessian.as_ref().map(|a| a.0),
        )
    };
    let screen = |app: &App| rows(&draw(app, 160, 45)).join("\n");
    assert_eq!(steps(&app), (Some(30), Some(30)));
    assert!(screen(&app).contains("gradcheck @30"), "{}", screen(&app));
    typed_settled(&mut app, &rx, "10n10b");
    assert_eq!(history_lens(&app), vec![30; 4]);
    assert_eq!(
        steps(&app),
        (Some(30), Some(30)),
        "step 30 is the run's again"
    );
    typed_settled(&mut app, &rx, "b");
    assert_eq!(steps(&app), (None, None));
    for gone in ["gradcheck @30", "Hessian @30"] {
        assert!(!screen(&app).contains(gone), "{}", screen(&app));
    }
    typed_settled(&mut app, &rx, "ng");
    typed_settled(&mut app, &rx, "r");
    assert_eq!(steps(&app), (None, None));
}

#[test]
fn snapshot_optimizer_list_groups_every_optimizer_and_trick_with_its_defaults() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "o");
    let t = draw(&app, 120, 56);
    let screen = rows(&t).join("\n");
    for e in catalogue::registry() {
        let shown = listed(&t, e.name()).unwrap_or_else(|| panic!("{} missing", e.name()));
        // The defaults, then a column of docs where they leave room: the tricks'.
        let (defaults, doc) = shown
            .split_once("  ")
            .map_or((shown.as_str(), ""), |(d, doc)| (d, doc.trim_start()));
        assert!(cut_from(defaults, &e.defaults()), "{shown}");
        match e.item {
            catalogue::Item::Trick(_) => assert!(cut_from(doc, &e.doc), "{shown}"),
            catalogue::Item::Optimizer(_) => assert_eq!(doc, "", "{shown}"),
        }
    }
    for (section, _) in catalogue::by_section(&catalogue::registry()) {
        assert!(
            screen.contains(section.title()),
            "{} missing",
            section.title()
        );
    }
    // The selected run is adam's: the list starts there, its doc below.
    assert!(screen.contains(OptimizerKind::Adam.doc()), "{screen}");
    snapshot("optimizer_list", &t);
}

/// What the `o` list shows beside the entry called `name` (its defaults), if it is on screen.
fn listed(t: &Terminal<TestBackend>, name: &str) -> Option<String> {
    let w = catalogue::registry().iter().map(|e| e.name().len()).max()?;
    let at = format!("│  {name:<w$}  ");
    let row = rows(t).into_iter().find(|r| r.contains(&at))?;
    let rest = &row[row.find(&at)? + at.len()..];
    Some(rest.split('│').next()?.trim_end().to_string())
}

/// Whether `shown` is `full`, or its start cut with `…` where the dialog ends.
fn cut_from(shown: &str, full: &str) -> bool {
    match shown.strip_suffix('…') {
        Some(cut) => full.starts_with(cut),
        None => shown == full,
    }
}

/// Moves the `o` list's selection to the entry called `name`.
fn choose(app: &mut App, name: &str) {
    let at = app.catalogue().iter().position(|e| e.name() == name);
    press(app, KeyCode::Home);
    for _ in 0..at.unwrap_or_else(|| panic!("{name} is not listed")) {
        press(app, KeyCode::Down);
    }
}

/// The spec editor's text and error.
fn editor(app: &App) -> (String, Option<String>) {
    match &app.popup {
        Some(Popup::EditSpec { text, error }) => (text.text().to_string(), error.clone()),
        other => panic!("expected the spec editor, got {other:?}"),
    }
}

#[test]
fn snapshot_a_selected_trick_shows_its_doc_and_what_enter_does() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "o");
    choose(&mut app, "skip_spikes");
    let t = draw(&app, 120, 30);
    let screen = rows(&t).join("\n");
    assert!(screen.contains("tricks"), "{screen}");
    let shown = listed(&t, "skip_spikes").expect("skip_spikes is on screen");
    assert!(shown.starts_with("factor=10, window=20  "), "{shown}");
    assert!(screen.contains(TrickKind::SkipSpikes.doc()), "{screen}");
    assert!(
        screen.contains("enter adds it to the run's spec"),
        "{screen}"
    );
    snapshot("optimizer_list_trick", &t);
}

#[test]
fn enter_on_a_trick_adds_it_with_its_defaults_after_the_selected_runs_tricks() {
    let (mut app, rx) = open("losses/spikes.toml");
    // The second run is the `agc` variant: adam with agc.
    press(&mut app, KeyCode::Tab);
    typed_settled(&mut app, &rx, "j");
    let chain = app
        .session()
        .unwrap()
        .selected_run()
        .unwrap()
        .info
        .optimizer
        .clone();
    assert_eq!(chain.to_string(), "adam(lr=0.01) + agc(clipping=0.1)");
    typed(&mut app, "o");
    choose(&mut app, "ema");
    press(&mut app, KeyCode::Enter);
    assert_eq!(
        editor(&app),
        (format!("{chain} + ema(decay=0.999)"), None),
        "every parameter written, to edit in place"
    );
    // Edit the decay, then confirm: a run of the same variant with the longer chain.
    for _ in 0.."999)".len() {
        press(&mut app, KeyCode::Backspace);
    }
    typed(&mut app, "9)");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.popup, None);
    app.settle(&rx);
    let s = app.session().unwrap();
    let new = &s.runs.last().unwrap().info;
    assert_eq!(
        new.optimizer.to_string(),
        "adam(lr=0.01) + agc(clipping=0.1) + ema(decay=0.9)"
    );
    assert_eq!(new.def, s.runs[1].info.def);
    typed_settled(&mut app, &rx, "3n");
    assert_eq!(history_lens(&app), vec![3; 5]);
}

#[test]
fn a_trick_without_parameters_is_added_by_its_name() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "o");
    choose(&mut app, "centralize");
    press(&mut app, KeyCode::Enter);
    assert_eq!(editor(&app), ("adam(lr=0.01) + centralize".into(), None));
}

#[test]
fn a_trick_the_chain_cannot_take_opens_with_the_reason() {
    // (the file, whose second run is chosen; the trick; the spec and error the editor opens with)
    let cases = [
        (
            "losses/spikes.toml",
            "agc",
            "adam(lr=0.01) + agc(clipping=0.1) + agc(clipping=0.01, eps=0.001)",
            "`agc` is written twice",
        ),
        (
            "losses/tricks_bf16.toml",
            "kahan",
            "adam(lr=0.001) + master_weights + kahan",
            "`master_weights` and `kahan` cannot be combined",
        ),
    ];
    for (file, trick, spec, error) in cases {
        let (mut app, rx) = open(file);
        press(&mut app, KeyCode::Tab);
        typed_settled(&mut app, &rx, "j");
        typed(&mut app, "o");
        choose(&mut app, trick);
        press(&mut app, KeyCode::Enter);
        let (text, shown) = editor(&app);
        assert_eq!(text, spec);
        let shown = shown.unwrap_or_else(|| panic!("{text}: no error shown"));
        assert!(shown.starts_with(error), "{shown}");
        // Enter does not add it; the reason stays.
        press(&mut app, KeyCode::Enter);
        assert!(editor(&app).1.is_some_and(|e| e.starts_with(error)));
    }
}

#[test]
fn the_optimizer_list_scrolls_to_keep_the_selection_in_view() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "o");
    let entries = app.catalogue();
    let (first, last) = (&entries[0], &entries[entries.len() - 1]);
    // 12 rows: the dialog's list shows fewer rows than the list has.
    let line = |e: &catalogue::Entry| format!("  {} ", e.name());
    press(&mut app, KeyCode::End);
    assert_eq!(
        app.popup,
        Some(Popup::PickOptimizer {
            selected: entries.len() - 1
        })
    );
    let screen = rows(&draw(&app, 80, 12)).join("\n");
    assert!(screen.contains(&line(last)), "{screen}");
    assert!(!screen.contains(&line(first)), "{screen}");
    press(&mut app, KeyCode::Home);
    let screen = rows(&draw(&app, 80, 12)).join("\n");
    assert!(screen.contains(&line(first)), "{screen}");
    assert!(!screen.contains(&line(last)), "{screen}");
    // Past either end it stays at the end.
    press(&mut app, KeyCode::Up);
    assert_eq!(app.popup, Some(Popup::PickOptimizer { selected: 0 }));
    press(&mut app, KeyCode::PageDown);
    press(&mut app, KeyCode::PageDown);
    assert_eq!(
        app.popup,
        Some(Popup::PickOptimizer {
            selected: (2 * 10).min(entries.len() - 1)
        })
    );
}

/// `q`, which the status bar offers, closes the lists as `esc` does (and as it closes the
/// comparison table); in a text field it is a letter.
#[test]
fn q_closes_the_lists_and_types_in_a_field() {
    let (mut app, _rx) = open(ROSENBROCK);
    for open in ["o", "d", "R"] {
        typed(&mut app, open);
        assert!(app.popup.is_some(), "{open}");
        assert_eq!(press(&mut app, KeyCode::Char('q')), None, "{open}");
        assert_eq!(app.popup, None, "{open}");
    }
    typed(&mut app, "o");
    press(&mut app, KeyCode::Enter);
    typed(&mut app, "q");
    let Some(Popup::EditSpec { text, .. }) = &app.popup else {
        panic!("{:?}", app.popup);
    };
    assert!(text.text().ends_with('q'), "{}", text.text());
}

#[test]
fn enter_on_an_optimizer_edits_its_defaults() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "o");
    let last = catalogue::registry()
        .into_iter()
        .rfind(|e| matches!(e.item, catalogue::Item::Optimizer(_)))
        .expect("an optimizer");
    choose(&mut app, last.name());
    press(&mut app, KeyCode::Enter);
    let catalogue::Item::Optimizer(spec) = &last.item else {
        unreachable!("an optimizer")
    };
    assert_eq!(editor(&app), (spec.to_string(), None));
}

#[test]
fn with_no_run_left_a_trick_goes_after_the_files_own_chain() {
    let (mut app, rx) = open("losses/spikes.toml");
    press(&mut app, KeyCode::Tab);
    for _ in 0..4 {
        typed_settled(&mut app, &rx, "x");
    }
    assert!(run_names(&app).is_empty());
    typed(&mut app, "o");
    choose(&mut app, "lookahead");
    press(&mut app, KeyCode::Enter);
    assert_eq!(
        editor(&app).0,
        "adam(lr=0.01) + lookahead(sync_period=5, slow_step_size=0.5)"
    );
}

#[test]
fn the_spec_editor_takes_tricks_after_the_optimizer() {
    let (mut app, rx) = open(ROSENBROCK);
    typed(&mut app, "o");
    press(&mut app, KeyCode::Enter);
    // The cursor is at the end of the optimizer's spec.
    typed(&mut app, " + agc(clipping=0.05) + ema(decay=0.9)");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.popup, None);
    app.settle(&rx);
    let names = run_names(&app);
    assert_eq!(
        names[4],
        format!(
            "{} · adam(lr=0.001) + agc(clipping=0.05) + ema(decay=0.9)",
            names[0]
        )
    );
    typed_settled(&mut app, &rx, "3n");
    assert_eq!(history_lens(&app), vec![3; 5]);
}

#[test]
fn spec_editor_rejects_a_bad_spec_and_esc_cancels() {
    let (mut app, rx) = open(ROSENBROCK);
    typed(&mut app, "o");
    press(&mut app, KeyCode::Enter);
    // Typing `q` edits the spec, it does not quit.
    assert_eq!(press(&mut app, KeyCode::Char('q')), None);
    typed(&mut app, "zz(");
    press(&mut app, KeyCode::Enter);
    match &app.popup {
        Some(Popup::EditSpec { error: Some(_), .. }) => {}
        other => panic!("expected an error in the editor, got {other:?}"),
    }
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.popup, None);
    app.settle(&rx);
    assert_eq!(run_names(&app).len(), 4);
}

#[test]
fn snapshot_spec_editor_wraps_a_long_error_and_draws_the_cursor_where_it_is() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "o");
    press(&mut app, KeyCode::Enter);
    // ctrl-w empties the field word by word; ← and home move the cursor.
    for _ in 0..10 {
        app.handle(Msg::Key(KeyEvent::new(
            KeyCode::Char('w'),
            KeyModifiers::CONTROL,
        )));
    }
    typed(
        &mut app,
        "lr=0.1, momentum=0.9, nesterov=true, dampening=0.5)",
    );
    press(&mut app, KeyCode::Home);
    typed(&mut app, "sgd(");
    press(&mut app, KeyCode::Enter);
    let Some(Popup::EditSpec {
        error: Some(error), ..
    }) = app.popup.clone()
    else {
        panic!("expected an error in the editor, got {:?}", app.popup);
    };
    assert!(error.len() > 58, "a long error: {error}");
    let t = draw(&app, 120, 30);
    let screen = rows(&t).join("\n");
    assert!(screen.contains("sgd(▏lr=0.1"), "{screen}");
    // Every word of the error is on screen.
    for word in error.split_whitespace() {
        assert!(screen.contains(word), "`{word}` missing:\n{screen}");
    }
    snapshot("spec_editor_long_error", &t);
}

#[test]
fn d_duplicates_the_selected_run() {
    // (keys after `d` before enter; the copy's name starts and ends with; its dtype)
    let cases: &[(&[KeyCode], &str, &str, DType)] = &[
        (&[], "base", "adam(lr=0.01)", DType::F32),
        (
            &[KeyCode::Char('j')],
            "sgd, lr 1e-3",
            "adam(lr=0.01)",
            DType::F32,
        ),
        // Four variants, then the dtypes: f32, f64, f16, bf16.
        (&[KeyCode::Char('j'); 5], "base", "f64", DType::F64),
    ];
    for (keys, prefix, suffix, dtype) in cases {
        let (mut app, rx) = open(ROSENBROCK);
        typed(&mut app, "d");
        assert!(matches!(app.popup, Some(Popup::Duplicate { .. })));
        for k in *keys {
            press(&mut app, *k);
        }
        press(&mut app, KeyCode::Enter);
        assert_eq!(app.popup, None);
        app.settle(&rx);
        let names = run_names(&app);
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(
            names[4].starts_with(prefix) && names[4].ends_with(suffix),
            "copy is `{}`, wanted `{prefix}…{suffix}`",
            names[4]
        );
        assert_eq!(app.session().unwrap().runs[4].info.dtype, *dtype);
    }
}

/// A copy in another dtype is the same run: it follows an edit of the file's lr as the run
/// does. A second copy of the same kind gets a number.
#[test]
fn a_dtype_copy_follows_the_files_edits_and_copies_are_numbered() {
    let dir = Scratch::new("dtype_copy_edit");
    dir.copy("losses/robust_log_mse.toml", "robust.toml");
    let file = dir.0.join("robust.toml");
    let (mut app, rx) = open(file.to_str().unwrap());
    let bf16 = duplicate_count(&app) - 1;
    for _ in 0..2 {
        typed(&mut app, "d");
        for _ in 0..bf16 {
            press(&mut app, KeyCode::Char('j'));
        }
        press(&mut app, KeyCode::Enter);
        app.settle(&rx);
    }
    let names = run_names(&app);
    let n = names.len();
    assert_eq!(
        names[n - 2..],
        ["base · bf16", "base · bf16 #2"],
        "{names:?}"
    );
    edit_file(&mut app, &rx, &file, "lr = 0.01", "lr = 0.05");
    let runs = &app.session().unwrap().runs;
    let lr_of = |name: &str| {
        let r = runs.iter().find(|r| r.info.name == name).expect(name);
        (r.info.optimizer.base.lr(), r.info.dtype)
    };
    assert_eq!(lr_of("base"), (0.05, DType::F32));
    assert_eq!(lr_of("base · bf16"), (0.05, DType::BF16));
}

/// With every run removed, `x` says how to get one back, and `d` adds the file's own again.
#[test]
fn d_brings_a_files_own_run_back_after_every_run_is_removed() {
    let (mut app, rx) = open(ROSENBROCK);
    press(&mut app, KeyCode::Tab);
    typed_settled(&mut app, &rx, "xxxx");
    assert!(run_names(&app).is_empty());
    typed(&mut app, "x");
    assert!(
        app.message
            .as_deref()
            .is_some_and(|m| m.starts_with("no runs: d adds")),
        "{:?}",
        app.message
    );
    typed(&mut app, "d");
    assert!(matches!(app.popup, Some(Popup::Duplicate { .. })));
    press(&mut app, KeyCode::Enter);
    app.settle(&rx);
    assert_eq!(run_names(&app), ["base"]);
    let r = &app.session().unwrap().runs[0];
    assert_eq!(r.info.optimizer.to_string(), "adam(lr=0.01)");
}

/// Two `x` typed before the worker answers the first remove two runs.
#[test]
fn x_x_in_one_burst_removes_two_runs() {
    let (mut app, rx) = open(ROSENBROCK);
    let names = run_names(&app);
    press(&mut app, KeyCode::Tab);
    typed(&mut app, "xx");
    app.settle(&rx);
    assert_eq!(run_names(&app), names[2..]);
}

#[test]
fn x_removes_the_selected_run() {
    let (mut app, rx) = open(ROSENBROCK);
    let names = run_names(&app);
    press(&mut app, KeyCode::Tab);
    typed_settled(&mut app, &rx, "jjjx");
    assert_eq!(run_names(&app), names[..3]);
    assert_eq!(app.session().unwrap().selected, 2, "selection clamps");
    let said = app.message.clone().unwrap_or_default();
    assert_eq!(said, format!("removed run `{}`", names[3]));
    typed_settled(&mut app, &rx, "kx");
    assert_eq!(run_names(&app), [names[0].clone(), names[2].clone()]);
    // (`x` removes the run the UI has selected: settle between presses.)
    for _ in 0..3 {
        typed_settled(&mut app, &rx, "x");
    }
    assert!(run_names(&app).is_empty());
    // Nothing to act on: no panic.
    typed_settled(&mut app, &rx, "x+-nbr");
    let t = draw(&app, 160, 45);
    assert!(rows(&t).join("").contains("no run selected"));
}

#[test]
fn toggle_keys() {
    type Getter = fn(&App) -> bool;
    let cases: [(char, Getter); 3] = [
        ('l', |a| a.log_y),
        ('a', |a| a.last_n),
        ('v', |a| a.per_param),
    ];
    for (key, get) in cases {
        let (mut app, _rx) = open(ROSENBROCK);
        assert!(!get(&app), "{key}: on at start");
        typed(&mut app, &key.to_string());
        assert!(get(&app), "{key}: not toggled on");
        typed(&mut app, &key.to_string());
        assert!(!get(&app), "{key}: not toggled off");
    }
    // `s` cycles the smoothing weight (issue 11: 0 → 0.6 → 0.9 → 0.99 → 0).
    let (mut app, _rx) = open(ROSENBROCK);
    assert_eq!(app.smoothing, 0.0, "s: on at start");
    let mut seen = Vec::new();
    for _ in 0..4 {
        typed(&mut app, "s");
        seen.push(app.smoothing);
    }
    assert_eq!(seen, [0.6, 0.9, 0.99, 0.0], "s: the cycle");
}

#[test]
fn t_cycles_tabs_and_shift_t_goes_back() {
    let (mut app, _rx) = open(ROSENBROCK);
    assert_eq!(app.tab, Tab::Loss);
    let mut seen = vec![app.tab];
    for _ in 0..5 {
        typed(&mut app, "t");
        seen.push(app.tab);
    }
    assert_eq!(
        seen,
        [
            Tab::Loss,
            Tab::GradNorm,
            Tab::LrRatio,
            Tab::Params,
            Tab::Landscape,
            Tab::Loss
        ]
    );
    typed(&mut app, "T");
    assert_eq!(app.tab, Tab::Landscape);
}

#[test]
fn tab_and_shift_tab_move_focus() {
    // A terminal without the inspector and the warnings: the lists and the chart.
    let (mut app, _rx) = open(ROSENBROCK);
    app.handle(Msg::Resize(80, 20));
    assert_eq!(app.focus, Focus::Losses);
    let forward: Vec<Focus> = (0..3)
        .map(|_| {
            press(&mut app, KeyCode::Tab);
            app.focus
        })
        .collect();
    assert_eq!(forward, [Focus::Runs, Focus::Charts, Focus::Losses]);
    let back: Vec<Focus> = (0..3)
        .map(|_| {
            press(&mut app, KeyCode::BackTab);
            app.focus
        })
        .collect();
    assert_eq!(back, [Focus::Charts, Focus::Runs, Focus::Losses]);
    // A large one adds the inspector and the warnings to the cycle.
    app.handle(Msg::Resize(160, 45));
    let forward: Vec<Focus> = (0..5)
        .map(|_| {
            press(&mut app, KeyCode::Tab);
            app.focus
        })
        .collect();
    assert_eq!(
        forward,
        [
            Focus::Runs,
            Focus::Charts,
            Focus::Inspector,
            Focus::Warnings,
            Focus::Losses
        ]
    );
    press(&mut app, KeyCode::BackTab);
    assert_eq!(app.focus, Focus::Warnings);
}

#[test]
fn j_and_k_move_the_selection() {
    let (mut app, rx) = open("losses");
    // The data folder's CSV and NumPy files are read by loss files, not listed as ones.
    assert!(
        app.files
            .iter()
            .all(|f| f.path.extension().is_some_and(|e| e == "toml"))
    );
    assert!(!app.files.iter().any(|f| f.group == "data"));
    let n = app.files.len();
    assert!(n > 3);
    assert_eq!(app.selected_file, 0);
    // Losses: each move starts the newly selected file's runs.
    typed(&mut app, "j");
    assert_eq!(app.selected_file, 1);
    app.settle(&rx);
    assert!(!app.session().unwrap().runs.is_empty());
    press(&mut app, KeyCode::Down);
    typed(&mut app, "k");
    assert_eq!(app.selected_file, 1);
    press(&mut app, KeyCode::Up);
    typed(&mut app, "k");
    assert_eq!(app.selected_file, 0, "clamps at the top");
    typed(&mut app, "3j");
    assert_eq!(app.selected_file, 3, "count prefix");
    typed(&mut app, "999j");
    assert_eq!(app.selected_file, n - 1, "clamps at the bottom");
    // Home, End and the page keys, for long folders.
    press(&mut app, KeyCode::Home);
    assert_eq!(app.selected_file, 0, "home");
    press(&mut app, KeyCode::PageDown);
    assert_eq!(app.selected_file, 10.min(n - 1), "page down");
    press(&mut app, KeyCode::End);
    assert_eq!(app.selected_file, n - 1, "end");
    press(&mut app, KeyCode::PageUp);
    assert_eq!(app.selected_file, (n - 1).saturating_sub(10), "page up");
    // Runs.
    let (mut app, _rx) = open(ROSENBROCK);
    press(&mut app, KeyCode::Tab);
    let mut seen = Vec::new();
    for k in "jjjjkkkkk".chars() {
        typed(&mut app, &k.to_string());
        seen.push(app.session().unwrap().selected);
    }
    assert_eq!(seen, [1, 2, 3, 3, 2, 1, 0, 0, 0]);
}

#[test]
fn help_opens_and_any_key_closes_it_without_acting() {
    let (mut app, rx) = open(ROSENBROCK);
    typed(&mut app, "?");
    assert!(app.show_help);
    typed_settled(&mut app, &rx, "n");
    assert!(!app.show_help);
    assert_eq!(
        history_lens(&app),
        vec![0; 4],
        "the closing key must not step"
    );
    typed(&mut app, "?");
    assert_eq!(
        press(&mut app, KeyCode::Char('q')),
        None,
        "q closes help first"
    );
    assert!(!app.show_help);
}

#[test]
fn q_and_ctrl_c_quit_e_edits() {
    let ctrl_c = Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    let (mut app, _rx) = open(ROSENBROCK);
    assert_eq!(press(&mut app, KeyCode::Char('q')), Some(Action::Quit));
    assert_eq!(app.handle(ctrl_c), Some(Action::Quit));
    // ctrl-c quits from inside a dialog and the help too.
    for opener in ["o", "d", "?"] {
        let (mut app, _rx) = open(ROSENBROCK);
        typed(&mut app, opener);
        let ctrl_c = Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert_eq!(app.handle(ctrl_c), Some(Action::Quit), "inside `{opener}`");
    }
    assert_eq!(
        press(&mut app, KeyCode::Char('e')),
        Some(Action::Edit(PathBuf::from(ROSENBROCK)))
    );
}

#[test]
fn w_writes_csv_and_jsonl_of_every_run_and_their_params() {
    let stem = "tui_write_test";
    let dir = Scratch::new(stem);
    dir.copy(ROSENBROCK, &format!("{stem}.toml"));
    // Next to the loss file.
    let csv = dir.0.join(format!("gradscope-{stem}.csv"));
    let jsonl = dir.0.join(format!("gradscope-{stem}.jsonl"));
    let params = dir.0.join(format!("gradscope-{stem}.safetensors"));
    let (mut app, rx) = open(dir.path());
    typed_settled(&mut app, &rx, "3n");
    typed(&mut app, "w");
    let wrote = format!("wrote {}, {}", csv.display(), jsonl.display());
    assert_eq!(
        app.message.as_deref(),
        Some(format!("{wrote}; saving the params…").as_str())
    );
    // The worker saves the params and the status says so.
    app.settle(&rx);
    assert_eq!(
        app.message.as_deref(),
        Some(format!("{wrote} and {}", params.display()).as_str())
    );
    let screen = rows(&draw(&app, 160, 45)).join("");
    assert!(screen.contains(&format!("wrote {}", csv.display())));
    // `<run>.<param>` and `.best` for the 4 runs, each at the values the inspector shows.
    let saved = candle_core::safetensors::load(&params, &candle_core::Device::Cpu).unwrap();
    assert_eq!(saved.len(), 4 * 2 * 2);
    for r in &app.session().unwrap().runs {
        for p in &r.params {
            let t = &saved[&format!("{}.{}", r.info.name, p.name)];
            let v = t.to_dtype(candle_core::DType::F64).unwrap();
            assert_eq!(
                v.to_scalar::<f64>().unwrap(),
                p.value.values.as_ref().unwrap()[0]
            );
            assert!(saved.contains_key(&format!("{}.{}.best", r.info.name, p.name)));
        }
    }
    let csv_text = std::fs::read_to_string(&csv).expect("csv written");
    // Rows 0..=3 of each of the 4 runs.
    assert_eq!(csv_text.lines().count(), 1 + 4 * 4, "{csv_text}");
    let jsonl_text = std::fs::read_to_string(&jsonl).expect("jsonl written");
    assert_eq!(jsonl_text.lines().count(), 4 * 4);
    for line in jsonl_text.lines() {
        let _: serde_json::Value = serde_json::from_str(line).expect("one JSON object a line");
    }
    for name in run_names(&app) {
        assert!(csv_text.contains(&name) || csv_text.contains(&format!("\"{name}\"")));
    }
    // The next key clears the message.
    typed(&mut app, "l");
    assert_eq!(app.message, None);
}

#[test]
fn w_writes_the_metrics_into_the_out_dir() {
    let dir = Scratch::new("tui_write_metrics");
    dir.copy("losses/mse_l1.toml", "mse_l1.toml");
    let scratch = Scratch::new("tui_write_metrics_out");
    // A folder still to be made, which `w` makes.
    let out = scratch.0.join("new").join("folder");
    let (mut app, rx) = open(dir.path());
    app.out_dir = Some(out.clone());
    typed_settled(&mut app, &rx, "3n");
    typed_settled(&mut app, &rx, "w");
    let csv = out.join("gradscope-mse_l1.csv");
    let jsonl = out.join("gradscope-mse_l1.jsonl");
    let params = out.join("gradscope-mse_l1.safetensors");
    assert_eq!(
        app.message.as_deref(),
        Some(
            format!(
                "wrote {}, {} and {}",
                csv.display(),
                jsonl.display(),
                params.display()
            )
            .as_str()
        )
    );
    assert!(!dir.0.join("gradscope-mse_l1.csv").exists());
    assert!(!dir.0.join("gradscope-mse_l1.safetensors").exists());
    // As `run --format csv` writes them: a `metric_<name>` column each, the values of the steps
    // the TUI has them for (θ_0 and the latest), empty cells elsewhere.
    let csv_text = std::fs::read_to_string(&csv).expect("csv written");
    let mut lines = csv_text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[header.len() - 2..], ["metric_dist", "metric_r2"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.rsplitn(3, ',').collect()).collect();
    let with_values = |step: &str| {
        csv_text
            .lines()
            .skip(1)
            .filter(|l| l.split(',').nth(1) == Some(step))
            .all(|l| l.rsplitn(3, ',').take(2).all(|c| c.parse::<f64>().is_ok()))
    };
    assert!(with_values("0") && with_values("3"), "{csv_text}");
    assert!(rows.iter().any(|r| r[0].is_empty()), "{csv_text}");
    let jsonl_text = std::fs::read_to_string(&jsonl).expect("jsonl written");
    for line in jsonl_text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let metrics = &row["metrics"];
        assert!(
            metrics["dist"].is_number() || metrics["dist"].is_null(),
            "{row}"
        );
        if row["step"] == 0 {
            assert!(metrics["r2"].is_number(), "{row}");
        }
    }
}

#[test]
fn p_saves_the_curves_and_the_landscape_as_svg_and_png() {
    let stem = "tui_picture_test";
    let dir = Scratch::new(stem);
    dir.copy(ROSENBROCK, &format!("{stem}.toml"));
    // Next to the loss file.
    let svg = dir.0.join(format!("gradscope-{stem}.svg"));
    let png = dir.0.join(format!("gradscope-{stem}.png"));
    let (mut app, rx) = open(dir.path());
    app.handle(Msg::Resize(160, 45));
    typed_settled(&mut app, &rx, "40n");
    app.tab = Tab::Landscape;
    // Until the grid is complete (the landscape thread answers on its own channel).
    for _ in 0..100 {
        app.handle(Msg::Tick);
        while let Ok(m) = rx.recv_timeout(Duration::from_millis(20)) {
            app.handle(m);
        }
        let l = &app.session().unwrap().landscape;
        if l.grid.as_ref().is_some_and(|g| g.is_complete()) {
            break;
        }
    }
    typed(&mut app, "p");
    assert_eq!(
        app.message.as_deref(),
        Some(format!("wrote {} and {}", svg.display(), png.display()).as_str())
    );
    let texts = svg::svg_texts(&svg);
    for name in run_names(&app) {
        assert!(texts.contains(&name), "{name} not in the legend");
    }
    // The landscape's axes are the params.
    assert!(texts.iter().any(|t| t == "x") && texts.iter().any(|t| t == "y"));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn key_release_events_do_nothing() {
    let (mut app, rx) = open(ROSENBROCK);
    for c in ['n', 'l', 'q', '?', 't', 'o', '5'] {
        let release =
            KeyEvent::new_with_kind(KeyCode::Char(c), KeyModifiers::NONE, KeyEventKind::Release);
        assert_eq!(app.handle(Msg::Key(release)), None, "{c}");
    }
    app.settle(&rx);
    assert_eq!(history_lens(&app), vec![0; 4]);
    assert!(!app.log_y && !app.show_help && app.popup.is_none());
    assert_eq!((app.tab, app.count), (Tab::Loss, None));
}

#[test]
fn mouse_click_selects_runs_tabs_and_losses() {
    let (mut app, rx) = open("losses");
    app.handle(Msg::Resize(160, 45));
    // Runs: click the row where the third run is drawn.
    let t = draw(&app, 160, 45);
    // (Long names are cut at the panel's edge: look for the start of the name.)
    let third: String = run_names(&app)[2].chars().take(12).collect();
    let a = areas(&app, 160, 45);
    let (x, y) = find(&t, a.runs, &third).expect("third run drawn");
    click(&mut app, x, y);
    assert_eq!(app.focus, Focus::Runs);
    assert_eq!(app.session().unwrap().selected, 2);
    // Tabs: click each title where it is drawn.
    for tab in [Tab::Params, Tab::LrRatio, Tab::GradNorm, Tab::Loss] {
        let t = draw(&app, 160, 45);
        let (x, y) = find(&t, a.tabs, tab.title()).expect("tab drawn");
        click(&mut app, x + 1, y);
        assert_eq!(app.tab, tab);
        assert_eq!(app.focus, Focus::Charts);
    }
    // Losses: click a file's name (a short one, drawn in full).
    let i = app
        .files
        .iter()
        .position(|f| f.name == "Himmelblau")
        .unwrap();
    let target = app.files[i].name.clone();
    let t = draw(&app, 160, 45);
    let (x, y) = find(&t, a.losses, &target).expect("file drawn");
    click(&mut app, x, y);
    assert_eq!(app.focus, Focus::Losses);
    assert_eq!(app.selected_file, i);
    app.settle(&rx);
    assert!(!app.session().unwrap().runs.is_empty(), "its runs started");
    // Scrolling over the runs list moves the run selection.
    let runs = a.runs;
    mouse(&mut app, MouseEventKind::ScrollDown, runs.x + 2, runs.y + 2);
    assert_eq!(app.focus, Focus::Runs);
    assert_eq!(app.session().unwrap().selected, 1);
    mouse(&mut app, MouseEventKind::ScrollUp, runs.x + 2, runs.y + 2);
    assert_eq!(app.session().unwrap().selected, 0);
}

/// A click lands on the file drawn under the pointer, also once the list has scrolled.
#[test]
fn mouse_click_on_a_scrolled_losses_list() {
    let (mut app, _rx) = open("losses");
    app.handle(Msg::Resize(100, 24));
    typed(&mut app, "999j");
    let last = app.files.len() - 1;
    assert_eq!(app.selected_file, last);
    let t = draw(&app, 100, 24);
    let losses = areas(&app, 100, 24).losses;
    // The first row inside the panel, as drawn.
    let drawn: String = rows(&t)[losses.y as usize + 1]
        .chars()
        .skip(losses.x as usize + 1)
        .take(losses.width as usize - 2)
        .collect();
    click(&mut app, losses.x + 2, losses.y + 1);
    let picked = app.files[app.selected_file].name.clone();
    let shown: String = picked.chars().take(8).collect();
    assert!(
        drawn.contains(&shown),
        "clicked the row showing `{}`, selected `{picked}`",
        drawn.trim()
    );
}

/// Deleting another file keeps the selection on the same file.
#[test]
fn deleting_a_file_keeps_the_selection() {
    let dir = Scratch::new(&format!("delete-{}", std::process::id()));
    for n in ["a", "b", "c", "d"] {
        dir.copy(ROSENBROCK, &format!("{n}.toml"));
    }
    let (mut app, rx) = open(dir.path());
    typed_settled(&mut app, &rx, "jj5n");
    let selected = app.file().unwrap().path.clone();
    assert!(selected.ends_with("c.toml"));
    let a = dir.0.join("a.toml");
    std::fs::remove_file(&a).unwrap();
    app.handle(Msg::FileChanged(a));
    assert_eq!(app.files.len(), 3);
    assert_eq!(app.file().unwrap().path, selected);
    app.settle(&rx);
    assert_eq!(history_lens(&app), vec![5; 4], "its runs kept going");
}

#[test]
fn hot_reload_restarts_runs_and_keeps_the_last_good_version_when_broken() {
    let dir = Scratch::new(&format!("reload-{}", std::process::id()));
    let file = dir.copy(ROSENBROCK, "r.toml");
    let (mut app, rx) = open(dir.path());
    assert_eq!(app.file().unwrap().path, file);
    typed_settled(&mut app, &rx, "5n");
    assert_eq!(history_lens(&app), vec![5; 4]);

    // A change event for an unchanged file restarts nothing; after `e`, the status says so.
    app.handle(Msg::FileChanged(file.clone()));
    app.settle(&rx);
    assert_eq!(history_lens(&app), vec![5; 4]);
    app.handle(Msg::Edited(file.clone()));
    app.settle(&rx);
    assert_eq!(history_lens(&app), vec![5; 4]);
    assert_eq!(
        app.message.as_deref(),
        Some(format!("{} is unchanged: nothing restarted", file.display()).as_str())
    );

    // A good edit: the runs restart from the new definition.
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = text.replace("name = \"Rosenbrock\"", "name = \"Rosenbrock 2\"");
    let edited = edited.replacen("lr = 0.01", "lr = 0.02", 1);
    assert_ne!(edited, text);
    std::fs::write(&file, &edited).unwrap();
    app.handle(Msg::FileChanged(file.clone()));
    app.settle(&rx);
    assert_eq!(app.file().unwrap().name, "Rosenbrock 2");
    assert_eq!(history_lens(&app), vec![0; 4]);
    typed_settled(&mut app, &rx, "5n");
    assert_eq!(app.session().unwrap().runs[0].history.core(0).lr, 0.02);

    // A broken edit: diagnostics show, the last good session keeps running.
    let broken = edited.replace("(1 - x)^2", "(1 - expp(x))^2");
    std::fs::write(&file, broken).unwrap();
    app.handle(Msg::FileChanged(file.clone()));
    let status = app.message.clone().unwrap_or_default();
    assert!(
        status.ends_with("no longer compiles (1 error): the runs keep the last version that did"),
        "{status}"
    );
    let f = app.file().unwrap();
    assert!(f.broken());
    assert!(f.session.is_some());
    app.settle(&rx);
    assert_eq!(history_lens(&app), vec![5; 4]);
    typed_settled(&mut app, &rx, "2n");
    assert_eq!(
        history_lens(&app),
        vec![7; 4],
        "the last good version still steps"
    );
    let t = draw(&app, 160, 45);
    let screen = rows(&t).join("\n");
    assert!(screen.contains("unknown function `expp`"), "{screen}");
    assert!(
        screen.contains("the last good version keeps running"),
        "{screen}"
    );

    // Fixed back to the text the runs are running: diagnostics go, nothing restarts.
    std::fs::write(&file, &edited).unwrap();
    app.handle(Msg::FileChanged(file.clone()));
    app.settle(&rx);
    assert!(!app.file().unwrap().broken());
    assert_eq!(history_lens(&app), vec![7; 4]);
    assert!(
        app.message
            .as_deref()
            .unwrap_or("")
            .contains("nothing restarted")
    );

    // Fixed to another text: the runs restart.
    std::fs::write(&file, edited.replacen("lr = 0.02", "lr = 0.03", 1)).unwrap();
    app.handle(Msg::FileChanged(file.clone()));
    app.settle(&rx);
    assert_eq!(history_lens(&app), vec![0; 4]);
}

#[test]
fn hot_reload_adds_and_removes_files() {
    let dir = Scratch::new(&format!("appear-{}", std::process::id()));
    dir.copy(ROSENBROCK, "a.toml");
    let (mut app, rx) = open(dir.path());
    assert_eq!(app.files.len(), 1);
    // A new file in a sub-folder appears under its group.
    std::fs::create_dir_all(dir.0.join("sub")).unwrap();
    let new = dir.copy("losses/beale.toml", "sub/b.toml");
    app.handle(Msg::FileChanged(new.clone()));
    assert_eq!(app.files.len(), 2);
    assert_eq!(app.files[1].group, "sub");
    assert_eq!(app.selected_file, 0, "selection stays");
    // Non-TOML files are ignored.
    let csv = dir.0.join("data.csv");
    std::fs::write(&csv, "x\n1\n").unwrap();
    app.handle(Msg::FileChanged(csv));
    assert_eq!(app.files.len(), 2);
    // Deleting the selected file selects another and starts its runs.
    let a = dir.0.join("a.toml");
    std::fs::remove_file(&a).unwrap();
    app.handle(Msg::FileChanged(a));
    assert_eq!(app.files.len(), 1);
    assert_eq!(app.file().unwrap().path, new);
    app.settle(&rx);
    assert!(!app.session().unwrap().runs.is_empty());
}

const ROBUST: &str = "losses/robust_log_mse.toml";

/// Writes `file` with `from` replaced by `to`, and tells the app it changed.
fn edit_file(app: &mut App, rx: &Receiver<Msg>, file: &Path, from: &str, to: &str) {
    rewrite_file(app, rx, file, |text| {
        assert!(text.contains(from), "{from} not in {}", file.display());
        text.replacen(from, to, 1)
    });
}

/// Writes `edit` of `file`'s text over it, as an editor saves, and lets the app reload it.
fn rewrite_file(app: &mut App, rx: &Receiver<Msg>, file: &Path, edit: impl Fn(&str) -> String) {
    let text = std::fs::read_to_string(file).unwrap();
    std::fs::write(file, edit(&text)).unwrap();
    app.handle(Msg::FileChanged(file.to_path_buf()));
    app.settle(rx);
}

/// `text` written as `name` in `dir`, opened: the file's path, the app and its events.
fn open_written(dir: &Scratch, name: &str, text: &str) -> (PathBuf, App, Receiver<Msg>) {
    let file = dir.write(name, text);
    let (app, rx) = open(file.to_str().unwrap());
    (file, app, rx)
}

/// An edit clears what the inspector found at the old version's steps: the lr range test too,
/// as the gradient check is.
#[test]
fn an_edit_clears_the_lr_range_test() {
    let dir = Scratch::new(&format!("lrfind-edit-{}", std::process::id()));
    let file = dir.copy(ROBUST, "r.toml");
    let (mut app, rx) = open(file.to_str().unwrap());
    typed_settled(&mut app, &rx, "20nFg");
    let r = app.session().unwrap().selected_run().unwrap();
    assert!(r.lrfind.is_some() && r.gradcheck.is_some());
    edit_file(&mut app, &rx, &file, "eps = 1e-7", "eps = 1e-4");
    let r = app.session().unwrap().selected_run().unwrap();
    assert!(r.lrfind.is_none() && r.gradcheck.is_none());
}

/// An edit restarts the runs the user had (an added run, an lr change re-applied at its step,
/// the selection), with the old curves kept as a "before the edit" overlay naming the change.
#[test]
fn an_edit_keeps_the_session() {
    let dir = Scratch::new(&format!("keep-{}", std::process::id()));
    let file = dir.copy(ROBUST, "r.toml");
    let (mut app, rx) = open(file.to_str().unwrap());
    typed_settled(&mut app, &rx, "5n");
    typed(&mut app, "o");
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Tab);
    typed_settled(&mut app, &rx, "j+5n");
    let names = run_names(&app);
    assert_eq!(names.len(), 6);
    assert_eq!(app.session().unwrap().runs[1].lr_changes, vec![5]);

    edit_file(&mut app, &rx, &file, "eps = 1e-7", "eps = 1e-4");
    assert_eq!(run_names(&app), names, "the added run is still there");
    assert_eq!(history_lens(&app), vec![0; 6], "the runs restarted");
    let message = app.message.clone().unwrap_or_default();
    assert!(
        message.starts_with(&format!("reloaded {}: 6 runs restarted", file.display())),
        "{message}"
    );
    let s = app.session().unwrap();
    assert_eq!(s.selected, 1, "the selection stays");
    for r in &s.runs {
        assert_eq!(r.before.len(), 1);
        assert_eq!(r.before[0].change, "eps 1e-7 → 1e-4");
        assert!(!r.before[0].history.is_empty(), "the old curve is kept");
    }
    typed_settled(&mut app, &rx, "8n");
    let r = &app.session().unwrap().runs[1];
    assert_eq!(
        r.lr_changes,
        vec![5],
        "the lr change is set again at step 5"
    );
    assert_eq!(r.lr_scale, 2.0);
    assert_eq!(r.history.core(5).lr, 2.0 * r.history.core(4).lr);
    let t = draw(&app, 160, 45);
    let screen = rows(&t).join("\n");
    assert!(
        screen.contains("before the edit: eps 1e-7 → 1e-4"),
        "{screen}"
    );

    // Renaming a variant leaves its run gone, dimmed, with its curves, until `x`; the variant
    // of the new name starts a run of its own.
    edit_file(
        &mut app,
        &rx,
        &file,
        "name = \"eps = 1e-3\"",
        "name = \"eps = 1e-2\"",
    );
    let message = app.message.clone().unwrap_or_default();
    assert!(
        message.contains(": 5 runs restarted, 1 variant gone"),
        "{message}"
    );
    let s = app.session().unwrap();
    let gone: Vec<_> = s.runs.iter().filter(|r| r.link == Link::Gone).collect();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].info.name, "eps = 1e-3");
    assert_eq!(gone[0].steps(), 8, "a gone run keeps its curves");
    assert_eq!(s.runs[1].before.len(), 2, "two versions back");
    let k = s.runs.iter().position(|r| r.link == Link::Gone).unwrap();
    press(&mut app, KeyCode::Char('k'));
    typed(&mut app, &"j".repeat(k));
    typed_settled(&mut app, &rx, "x");
    assert_eq!(run_names(&app).len(), 6);
    assert!(run_names(&app).iter().all(|n| n != "eps = 1e-3"));
    assert!(run_names(&app).iter().any(|n| n == "eps = 1e-2"));

    // `C` clears the overlays; the runs were playing, and play on after an edit.
    typed(&mut app, "C");
    assert!(
        app.session()
            .unwrap()
            .runs
            .iter()
            .all(|r| r.before.is_empty())
    );
    assert_eq!(
        app.message.as_deref(),
        Some("cleared the curves from before the edits")
    );
    typed_settled(&mut app, &rx, " ");
    edit_file(&mut app, &rx, &file, "lr = 0.01", "lr = 0.02");
    assert!(app.session().unwrap().playing, "still playing");
    assert!(
        app.message
            .as_deref()
            .unwrap_or_default()
            .contains("lr 0.01 → 0.02")
    );
    typed_settled(&mut app, &rx, " ");
}

/// Two files with one `name` show their file stems in the losses list; the inspector names the
/// selected run's file.
#[test]
fn shared_names_show_the_file_stem_and_the_inspector_names_the_file() {
    let dir = Scratch::new(&format!("stems-{}", std::process::id()));
    dir.copy(ROSENBROCK, "first.toml");
    let second = dir.copy(ROSENBROCK, "second.toml");
    let (mut app, rx) = open(dir.path());
    typed_settled(&mut app, &rx, "j");
    let t = draw(&app, 160, 45);
    let a = areas(&app, 160, 45);
    assert!(find(&t, a.losses, "first: Rosenbrock").is_some());
    assert!(find(&t, a.losses, "second: Rosenbrock").is_some());
    let inspector = a.inspector.expect("an inspector at 160x45");
    assert_eq!(second.file_name().unwrap(), "second.toml");
    assert!(
        find(&t, inspector, "second.toml").is_some(),
        "{}",
        rows(&t).join("\n")
    );
    // A name too long for the panel is cut with `…`, after the stem that tells them apart.
    let long = "Quad number one with a fairly long descriptive name to test the cut";
    let text = format!("name = \"{long}\"\nloss = \"w^2\"\n[params]\nw = 1.0\n");
    for stem in ["f1", "f2"] {
        dir.write(&format!("{stem}.toml"), &text);
    }
    let (app, _rx) = open(dir.path());
    let t = draw(&app, 80, 24);
    let losses = areas(&app, 80, 24).losses;
    for stem in ["f1", "f2"] {
        let at = find(&t, losses, &format!("{stem}: Quad number")).expect(stem);
        let row: String = rows(&t)[at.1 as usize]
            .chars()
            .skip(usize::from(losses.x))
            .take(usize::from(losses.width))
            .collect();
        assert!(row.contains('…'), "{row}");
    }
}

#[test]
fn the_losses_panel_is_as_wide_as_the_longest_name_up_to_a_third_of_the_terminal() {
    let dir = Scratch::new("wide-names");
    let long = "A loss name long enough to need a wider panel";
    let n = long.chars().count() as u16;
    let text = std::fs::read_to_string(ROSENBROCK)
        .unwrap()
        .replace("name = \"Rosenbrock\"", &format!("name = \"{long}\""));
    dir.write("long.toml", &text);
    dir.copy(ROSENBROCK, "short.toml");
    let (app, _rx) = open(dir.path());
    // The name, the badge and the borders, within a third of 160.
    let a = areas(&app, 160, 45);
    assert!(n + 4 > 34 && n + 4 <= 160 / 3);
    assert_eq!(a.losses.width, n + 2 + 2);
    assert!(find(&draw(&app, 160, 45), a.losses, long).is_some());
    // A third of 120 is the most it takes.
    assert_eq!(areas(&app, 120, 30).losses.width, 40);
    // Short names keep a quarter of the terminal (18 to 34 columns).
    let (short, _rx) = open(ROSENBROCK);
    assert_eq!(areas(&short, 120, 30).losses.width, 30);
    assert_eq!(areas(&short, 60, 20).losses.width, 18);
}

/// A change to a CSV the loss reads reloads the loss, though its own text is the same.
#[test]
fn a_changed_csv_reloads_the_loss_that_reads_it() {
    let dir = Scratch::new(&format!("csv-{}", std::process::id()));
    std::fs::create_dir_all(dir.0.join("data")).unwrap();
    let csv = dir.copy("losses/data/points.csv", "data/points.csv");
    let file = dir.copy("losses/csv_quadratic_fit.toml", "fit.toml");
    let (mut app, rx) = open(file.to_str().unwrap());
    typed_settled(&mut app, &rx, "3n");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    app.handle(Msg::FileChanged(csv.clone()));
    app.settle(&rx);
    assert!(
        history_lens(&app).iter().all(|&n| n == 0),
        "the runs restarted"
    );
    let message = app.message.clone().unwrap_or_default();
    assert!(message.contains("data pts changed"), "{message}");
}

/// A CSV broken and put back as it was restarts nothing: the runs go on with the data they
/// have, as a loss file's text put back does.
#[test]
fn a_csv_broken_and_put_back_restarts_nothing() {
    let dir = Scratch::new(&format!("csv-back-{}", std::process::id()));
    std::fs::create_dir_all(dir.0.join("data")).unwrap();
    let csv = dir.copy("losses/data/points.csv", "data/points.csv");
    let file = dir.copy("losses/csv_quadratic_fit.toml", "fit.toml");
    let (mut app, rx) = open(file.to_str().unwrap());
    typed_settled(&mut app, &rx, "3n");
    let text = std::fs::read_to_string(&csv).unwrap();
    std::fs::write(&csv, text.replacen('x', "z", 1)).unwrap();
    app.handle(Msg::FileChanged(csv.clone()));
    app.settle(&rx);
    assert!(app.file().unwrap().broken());
    std::fs::write(&csv, &text).unwrap();
    app.handle(Msg::FileChanged(csv.clone()));
    app.settle(&rx);
    assert!(!app.file().unwrap().broken());
    assert!(history_lens(&app).iter().all(|&n| n == 3));
    let message = app.message.clone().unwrap_or_default();
    assert!(message.contains("nothing restarted"), "{message}");
}

/// So does a change to a NumPy file it reads, data or a param's initial value.
#[test]
fn a_changed_npy_reloads_the_loss_that_reads_it() {
    use gradscope::compile::arrays::read;
    use gradscope::lang::file::ArrayFormat;
    let dir = Scratch::new(&format!("npy-{}", std::process::id()));
    std::fs::create_dir_all(dir.0.join("data")).unwrap();
    for f in ["linear_X.npy", "linear_y.npy", "linear_w0.npy"] {
        dir.copy(&format!("losses/data/{f}"), &format!("data/{f}"));
    }
    let file = dir.copy("losses/npy_linear.toml", "fit.toml");
    let (mut app, rx) = open(file.to_str().unwrap());
    typed_settled(&mut app, &rx, "3n");
    for (f, what) in [
        ("linear_y.npy", "data y changed"),
        ("linear_w0.npy", "init of w"),
    ] {
        let path = dir.0.join("data").join(f);
        let t = read(ArrayFormat::Npy, &path, None, f).unwrap();
        (t * 2.0).unwrap().write_npy(&path).unwrap();
        app.handle(Msg::FileChanged(path));
        app.settle(&rx);
        assert!(
            history_lens(&app).iter().all(|&n| n == 0),
            "{f}: the runs restarted"
        );
        let message = app.message.clone().unwrap_or_default();
        assert!(message.contains(what), "{f}: {message}");
    }
}

#[test]
fn quitting_does_not_wait_for_a_busy_worker() {
    // Dropping the app (quitting; a reload drops a session too) only tells the workers to stop:
    // waiting for each in turn took 20 s with 30 files playing.
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, " ");
    // Every turn at the cores held here: the playing worker waits in line, as one in a long
    // step would, and cannot stop until it gets one.
    let turns = Turns::global();
    let slots = std::thread::available_parallelism().map_or(1, |n| n.get());
    let held: Vec<_> = (0..slots).map(|_| turns.take()).collect();
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(app);
        let _ = done.send(());
    });
    let quit = dropped.recv_timeout(Duration::from_secs(60)).is_ok();
    drop(held);
    assert!(quit, "dropping the app waited for its worker");
}

// ---------------------------------------------------------------------------------------------
// End to end, in tmux
// ---------------------------------------------------------------------------------------------

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
    session: String,
    socket_path: Option<PathBuf>,
}

impl Tmux {
    /// Starts `command` in a detached 160x45 session, or None when tmux is missing.
    fn start(name: &str, command: &str) -> Option<Self> {
        if Command::new("tmux").arg("-V").output().is_err() {
            eprintln!("tmux is not installed: skipping the end-to-end test");
            return None;
        }
        let mut t = Self {
            socket: format!("gradscope-test-{name}-{}", std::process::id()),
            session: name.to_string(),
            socket_path: None,
        };
        let cwd = env!("CARGO_MANIFEST_DIR");
        let out = t.cmd(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "160",
            "-y",
            "45",
            "-c",
            cwd,
            command,
        ]);
        assert!(out.status.success(), "tmux new-session failed: {out:?}");
        t.socket_path = Some(PathBuf::from(t.var("#{socket_path}")));
        Some(t)
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(
            &self
                .cmd(&["capture-pane", "-p", "-t", &self.session])
                .stdout,
        )
        .into_owned()
    }

    /// A pane format variable, such as `#{alternate_on}`.
    fn var(&self, format: &str) -> String {
        let out = self.cmd(&["display-message", "-p", "-t", &self.session, format]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.session.as_str()];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success());
    }

    /// Polls the screen until `pred` holds (10 s at most).
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The TUI's process: the child of the pane's shell.
    fn app_pid(&self) -> i32 {
        let shell = self.var("#{pane_pid}");
        let out = Command::new("pgrep")
            .args(["-P", &shell])
            .output()
            .expect("pgrep runs");
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "gradscope")
            })
            .collect();
        assert_eq!(
            pids.len(),
            1,
            "gradscope processes under the pane: {pids:?}"
        );
        pids[0]
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        // tmux leaves the socket file behind.
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The shell line run in the pane: the TUI (in an environment that sets `env`, such as
/// `EDITOR=ed`), then whether the tty settings came back, the exit code, and a pause so the pane
/// stays readable.
fn pane_command(env: &str) -> String {
    let bin = env!("CARGO_BIN_EXE_gradscope");
    format!(
        "before=$(stty -g); {env} '{bin}' {ROSENBROCK}; code=$?; \
         if [ \"$before\" = \"$(stty -g)\" ]; then echo TTY=restored; else echo TTY=changed; fi; \
         echo EXIT=$code; sleep 30"
    )
}

fn wait_for_tui(t: &Tmux) {
    t.wait_for("the Runs panel", |s| {
        s.contains("Runs") && s.contains("sgd, lr 1e-3") && s.contains("step 0")
    });
    assert_eq!(
        t.var("#{alternate_on}"),
        "1",
        "the TUI uses the alternate screen"
    );
    assert_eq!(
        t.var("#{mouse_any_flag}"),
        "1",
        "the TUI captures the mouse"
    );
}

fn assert_restored(t: &Tmux) {
    let screen = t.wait_for("the TUI to exit", |s| s.contains("EXIT="));
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(
        screen.contains("TTY=restored"),
        "raw mode left on:\n{screen}"
    );
    assert!(
        !screen.contains(['┌', '│', '└', '■']) && !screen.contains("Runs"),
        "the TUI is still on screen:\n{screen}"
    );
    assert_eq!(
        t.var("#{alternate_on}"),
        "0",
        "still on the alternate screen"
    );
    for flag in [
        "mouse_any_flag",
        "mouse_button_flag",
        "mouse_standard_flag",
        "mouse_sgr_flag",
    ] {
        assert_eq!(t.var(&format!("#{{{flag}}}")), "0", "{flag} left on");
    }
    assert_eq!(t.var("#{cursor_flag}"), "1", "the cursor is still hidden");
}

#[test]
fn e2e_step_with_keys_then_quit_restores_the_terminal() {
    let Some(t) = Tmux::start("quit", &pane_command("")) else {
        return;
    };
    wait_for_tui(&t);
    t.keys(&["5", "0", "n"]);
    let screen = t.wait_for("step 50", |s| s.contains(" step 50 · paused"));
    assert!(screen.contains("Inspector"), "{screen}");
    t.keys(&["q"]);
    assert_restored(&t);
}

#[test]
fn e2e_sigterm_restores_the_terminal() {
    let Some(t) = Tmux::start("sigterm", &pane_command("")) else {
        return;
    };
    wait_for_tui(&t);
    // While the runs play, so the worker is busy.
    t.keys(&["Space"]);
    // (A release build may finish the 10,000 steps before the first capture.)
    t.wait_for("running", |s| {
        s.contains("running") || s.contains("finished")
    });
    let pid = t.app_pid();
    // SAFETY: kill(2) with a pid we just looked up; no memory is involved.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill failed");
    assert_restored(&t);
}

#[test]
fn e2e_ctrl_c_restores_the_terminal() {
    let Some(t) = Tmux::start("ctrlc", &pane_command("")) else {
        return;
    };
    wait_for_tui(&t);
    t.keys(&["?"]);
    t.wait_for("the help", |s| s.contains("any other key closes"));
    t.keys(&["C-c"]);
    assert_restored(&t);
}

/// An editor that cannot be started is news in the status line: the TUI is back on screen and
/// the session goes on.
#[test]
fn e2e_an_editor_that_cannot_start_keeps_the_session() {
    let Some(t) = Tmux::start(
        "noeditor",
        &pane_command("env -u VISUAL EDITOR=nonexistent-ed"),
    ) else {
        return;
    };
    wait_for_tui(&t);
    t.keys(&["5", "n"]);
    t.wait_for("step 5", |s| s.contains(" step 5 · paused"));
    t.keys(&["e"]);
    let screen = t.wait_for("the status", |s| {
        s.contains("could not start `nonexistent-ed`")
    });
    assert!(
        screen.contains(" step 5 · paused") && screen.contains("Runs"),
        "{screen}"
    );
    t.keys(&["n"]);
    t.wait_for("step 6", |s| s.contains(" step 6 · paused"));
    t.keys(&["q"]);
    assert_restored(&t);
}

/// Quitting while a long step command runs returns promptly.
#[test]
fn e2e_quit_during_a_long_step_is_prompt() {
    let Some(t) = Tmux::start("longstep", &pane_command("")) else {
        return;
    };
    wait_for_tui(&t);
    t.keys(&["1", "0", "0", "0", "0", "0", "0", "N"]);
    std::thread::sleep(Duration::from_millis(300));
    t.keys(&["q"]);
    assert_restored(&t);
}

#[test]
fn g_checks_the_selected_runs_gradients() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "10ng");
    let r = &app.session().unwrap().runs[0];
    let (step, checks) = r.gradcheck.as_ref().expect("checked");
    assert_eq!(*step, 10);
    assert_eq!(checks.len(), 2);
    assert!(
        checks
            .iter()
            .all(|c| c.verdict == gradscope::compile::gradcheck::Verdict::Pass)
    );
}

/// `g` where the loss is NaN logs what `gradscope gradcheck` says: finite differences cannot
/// check autograd there (not a disagreement with a relative error of 0).
#[test]
fn g_where_the_loss_is_nan_says_so_as_the_cli_does() {
    let dir = Scratch::new("gradcheck-nan");
    let (file, mut app, rx) = open_written(&dir, "nan.toml", NAN_AT_STEP_2);
    typed_settled(&mut app, &rx, "5ng");
    let s = app.session().unwrap();
    assert_eq!(s.runs[0].halted.as_ref().map(|h| h.0), Some(2));
    let logged: Vec<&str> = s
        .warnings
        .iter()
        .filter(|w| w.text.starts_with("gradcheck"))
        .map(|w| w.text.as_str())
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .args(["gradcheck", file.to_str().unwrap(), "--at-step", "2"])
        .output()
        .expect("binary runs");
    let cli = String::from_utf8_lossy(&out.stdout);
    let why = "w fails: the loss is not finite here (NaN at the point";
    assert!(cli.contains(why), "{cli}");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].starts_with(&format!("gradcheck: {why}")),
        "{logged:?}"
    );
    let line = cli.lines().find(|l| l.contains(why)).unwrap().trim();
    assert_eq!(logged[0], format!("gradcheck: {line}"));
}

#[test]
fn without_a_terminal_the_tui_says_what_to_use_instead() {
    let out = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .arg("losses")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("binary runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the TUI needs a terminal"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The issue's loop, end to end: open a copy of a loss file, add a run, double one run's lr,
/// edit the file on disk twice (`sed -i` replaces it, as editors do): the added run and the lr
/// change are still there, the runs restarted, and the old curves are drawn faded with a legend
/// naming the change.
#[test]
fn e2e_an_edit_on_disk_keeps_the_session() {
    let dir = Scratch::new(&format!("e2e-edit-{}", std::process::id()));
    let file = dir.copy(ROBUST, "robust.toml");
    let bin = env!("CARGO_BIN_EXE_gradscope");
    let Some(t) = Tmux::start("edit", &format!("'{bin}' {}; sleep 30", file.display())) else {
        return;
    };
    t.wait_for("the runs", |s| {
        s.contains("eps = 1e-3") && s.contains("step 0")
    });
    // The steps first: a command while counted steps are under way ends them.
    t.keys(&["2", "0", "n"]);
    t.wait_for("step 20", |s| s.contains("step 20 · paused"));
    t.keys(&["o", "Enter", "Enter"]);
    t.wait_for("the added run", |s| s.contains("base · adam"));
    t.keys(&["Tab", "j", "+", "2", "0", "n"]);
    t.wait_for("step 40", |s| s.contains("step 40") && s.contains("(×2)"));
    let sed = |from: &str, to: &str| {
        let out = Command::new("sed")
            .args(["-i", &format!("s/{from}/{to}/"), file.to_str().unwrap()])
            .output()
            .expect("sed runs");
        assert!(out.status.success(), "{out:?}");
    };
    sed("eps = 1e-7", "eps = 1e-4");
    let screen = t.wait_for("the reload", |s| {
        s.contains("before the edit: eps 1e-7 → 1e-4") && s.contains("6 runs restarted")
    });
    assert!(screen.contains("base · adam"), "the added run:\n{screen}");
    assert!(screen.contains("step 0"), "the runs restarted:\n{screen}");
    t.keys(&["1", "9", "n"]);
    let screen = t.wait_for("step 19", |s| s.contains("step 19"));
    assert!(
        !screen.contains("(×2)"),
        "the lr change is at step 20:\n{screen}"
    );
    t.keys(&["n"]);
    t.wait_for("the lr change again", |s| {
        s.contains("step 20") && s.contains("(×2)")
    });
    // A second save reloads too (a watch on the replaced file itself would have lost it).
    sed("eps = 1e-4", "eps = 1e-3");
    t.wait_for("the second reload", |s| {
        s.contains("before the edit: eps 1e-4 → 1e-3") && s.contains("2 edits back")
    });
    t.keys(&["q"]);
}

#[test]
fn a_halted_run_shows_the_step_it_halted_at() {
    // x walks 2.5, 1.5, 0.5, -0.5 under sgd(lr=1): θ_3 is NaN, so the run stops at step 3, which
    // the inspector and the runs list both call step 3.
    let dir = Scratch::new("halted_numbering");
    dir.write(
        "nan.toml",
        "name = \"nan at 3\"\ndtype = \"f64\"\nloss = \"sqrt(detach(x)) + x\"\n[params]\nx = 2.5\n[optimizer]\nname = \"sgd\"\nlr = 1.0\nsteps = 10\n",
    );
    let (mut app, rx) = open(dir.path());
    typed_settled(&mut app, &rx, "10n");
    assert_eq!(history_lens(&app), vec![3]);
    let screen = rows(&draw(&app, 160, 45)).join("\n");
    assert!(screen.contains("step 3 · halted@3"), "{screen}");
    let r = &app.session().unwrap().runs[0];
    assert_eq!(r.history.len(), 4, "rows 0..=3");
    assert!(r.history.core(3).loss.is_nan());
}

// ---------------------------------------------------------------------------------------------
// Section 2 of issue 11: what the TUI shows
// ---------------------------------------------------------------------------------------------

/// A small param `b` (3 values) and a large one `W` (128 values), 1 step of sgd on
/// sum((W - 1)^2) + sum(b^2): ∇W = 2(W - 1), ∇b = 2b.
const TWO_PARAMS: &str = r#"
name = "two params"
seed = 0
loss = "sum((W - 1)^2) + sum(b^2)"

[params]
W = "randn(16, 8)"
b = "full(2.0, 3)"

[optimizer]
name = "sgd"
lr = 0.1
steps = 10
"#;

#[test]
fn snapshot_inspector_shows_small_params_in_full_and_large_ones_summarised() {
    let dir = Scratch::new("inspector-values");
    let file = dir.write("two.toml", TWO_PARAMS);
    let (mut app, rx) = open(file.to_str().unwrap());
    typed_settled(&mut app, &rx, "n");
    let r = app.session().unwrap().selected_run().unwrap();
    // θ_1 = θ_0 - 0.1 · 2 θ_0 for b: 1.6, and its gradient there 3.2.
    let b = &r.params[1];
    let near = |v: &[f64], want: f64| v.len() == 3 && v.iter().all(|x| (x - want).abs() < 1e-6);
    assert!(near(b.value.values.as_ref().unwrap(), 1.6), "{b:?}");
    let gb = b.grad.as_ref().expect("the gradient at θ_1");
    assert!(near(gb.values.as_ref().unwrap(), 3.2), "{gb:?}");
    // W is summarised: no values, a histogram of all 128.
    let w = &r.params[0];
    assert_eq!(w.value.values, None);
    assert_eq!(w.value.histogram.iter().sum::<u32>(), 128);
    assert_eq!(w.grad.as_ref().unwrap().histogram.iter().sum::<u32>(), 128);
    let t = draw(&app, 160, 45);
    let inspector = areas(&app, 160, 45).inspector.unwrap();
    assert!(find(&t, inspector, "b [3]  3 values").is_some());
    assert!(find(&t, inspector, "[2]").is_some());
    assert!(find(&t, inspector, "W [16, 8]  128 values").is_some());
    snapshot("inspector_small_and_large_params", &t);
}

#[test]
fn the_focused_inspector_scrolls_with_j_and_k() {
    let dir = Scratch::new("inspector-scroll");
    let file = dir.write("two.toml", TWO_PARAMS);
    let (mut app, rx) = open(file.to_str().unwrap());
    app.handle(Msg::Resize(120, 30));
    typed_settled(&mut app, &rx, "n");
    while app.focus != Focus::Inspector {
        press(&mut app, KeyCode::Tab);
    }
    let inspector = areas(&app, 120, 30).inspector.unwrap();
    let top = |app: &App| rows(&draw(app, 120, 30))[inspector.y as usize + 1].clone();
    let first = top(&app);
    typed(&mut app, "j");
    assert_eq!(app.inspector_scroll, 1);
    assert_ne!(top(&app), first);
    // No further than the end: the last line stays on screen.
    typed(&mut app, "999j");
    let screen = rows(&draw(&app, 120, 30)).join("\n");
    assert!(screen.contains("[2]"), "{screen}");
    typed(&mut app, "999k");
    assert_eq!(app.inspector_scroll, 0);
    assert_eq!(top(&app), first);
    // A gradient check's answer scrolls back to the top, where it is shown.
    typed(&mut app, "999j");
    typed_settled(&mut app, &rx, "g");
    assert_eq!(app.inspector_scroll, 0);
    let screen = rows(&draw(&app, 120, 30)).join("\n");
    assert!(screen.contains("gradcheck @1"), "{screen}");
}

fn focus(app: &mut App, panel: Focus) {
    for _ in 0..5 {
        if app.focus == panel {
            return;
        }
        press(app, KeyCode::Tab);
    }
    panic!("{panel:?} is not focusable at {:?}", app.size);
}

#[test]
fn snapshot_warnings_panel_focused_scrolled_and_wrapped() {
    let (mut app, rx) = open("losses/norm_at_zero.toml");
    app.handle(Msg::Resize(100, 30));
    typed_settled(&mut app, &rx, "n");
    let n = app.session().unwrap().warnings.len();
    assert!(n >= 4, "{:?}", app.session().unwrap().warnings);
    focus(&mut app, Focus::Warnings);
    let panel = areas(&app, 100, 30).warnings.unwrap();
    let t = draw(&app, 100, 30);
    snapshot("warnings_focused", &t);
    // Every row is cut at a space or at the end of its warning: no word is split.
    let words: Vec<String> = app
        .session()
        .unwrap()
        .warnings
        .iter()
        .flat_map(|w| {
            format!("{} step {}: {}", w.run, w.step, w.text)
                .split(' ')
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    let screen = rows(&t);
    for y in panel.y + 1..panel.bottom() - 1 {
        let inside: String = screen[y as usize]
            .chars()
            .skip(panel.x as usize + 1)
            .take(panel.width as usize - 2)
            .collect();
        for word in inside.split_whitespace() {
            assert!(
                words.iter().any(|w| w == word),
                "`{word}` cut in `{inside}`"
            );
        }
    }
    // j moves to the last warning, scrolling; k brings the first back.
    typed(&mut app, "99j");
    assert_eq!(app.warning, n - 1);
    let t = draw(&app, 100, 30);
    snapshot("warnings_scrolled_to_the_last", &t);
    let first = &app.session().unwrap().warnings[0].run.clone();
    typed(&mut app, "99k");
    assert_eq!(app.warning, 0);
    assert!(find(&draw(&app, 100, 30), panel, first).is_some());
}

#[test]
fn the_warnings_panel_grows_with_the_terminal() {
    let (app, _rx) = open(ROSENBROCK);
    let h = |w, h| areas(&app, w, h).warnings.map_or(0, |r| r.height);
    assert_eq!(h(160, 20), 0);
    assert_eq!(h(160, 45), 7);
    assert!(h(160, 80) > h(160, 45));
}

#[test]
fn snapshot_enter_on_a_halt_shows_its_diagnostic_as_the_cli_does() {
    let (mut app, rx) = open("losses/norm_at_zero.toml");
    app.handle(Msg::Resize(120, 40));
    typed_settled(&mut app, &rx, "n");
    focus(&mut app, Focus::Warnings);
    let s = app.session().unwrap();
    let k = s
        .warnings
        .iter()
        .position(|w| w.diagnostic.is_some())
        .expect("a halt with a diagnostic");
    let rendered = s.warnings[k].diagnostic.as_ref().unwrap().render(false);
    typed(&mut app, &format!("{k}j"));
    if k == 0 {
        typed(&mut app, "k");
    }
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.popup, Some(Popup::Warning(k)));
    let t = draw(&app, 120, 40);
    let screen = rows(&t).join("\n");
    for line in rendered.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            screen.contains(line.trim_end()),
            "`{line}` not on screen:\n{screen}"
        );
    }
    snapshot("warning_diagnostic_overlay", &t);
    typed(&mut app, "n");
    assert_eq!(app.popup, None, "any key closes it");
}

#[test]
fn snapshot_the_smoothing_weight_is_in_the_chart_title() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "50nss");
    let t = draw(&app, 120, 30);
    assert!(find(&t, areas(&app, 120, 30).chart, "Loss · smoothed 0.9").is_some());
    snapshot("smoothing_title", &t);
    typed(&mut app, "lss");
    let t = draw(&app, 120, 30);
    assert!(find(&t, areas(&app, 120, 30).chart, "Loss (log y)┐").is_none());
    assert!(
        find(&t, areas(&app, 120, 30).chart, "Loss (log y)─").is_some(),
        "off again"
    );
}

#[test]
fn shift_s_sets_a_smoothing_weight_and_refuses_one_out_of_range() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "20n");
    typed(&mut app, "S");
    assert!(matches!(app.popup, Some(Popup::Smoothing { .. })));
    press(&mut app, KeyCode::Backspace);
    typed(&mut app, "1.5");
    press(&mut app, KeyCode::Enter);
    assert!(
        matches!(&app.popup, Some(Popup::Smoothing { error: Some(_), .. })),
        "{:?}",
        app.popup
    );
    for _ in 0..3 {
        press(&mut app, KeyCode::Backspace);
    }
    typed(&mut app, "0.75");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.popup, None);
    assert_eq!(app.smoothing, 0.75);
    let t = draw(&app, 120, 30);
    assert!(find(&t, areas(&app, 120, 30).chart, "smoothed 0.75").is_some());
    // From a typed weight, `s` goes on to the next larger one of the cycle.
    typed(&mut app, "s");
    assert_eq!(app.smoothing, 0.9);
}

#[test]
fn snapshot_compare_table_sorts_by_any_column() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "30n");
    typed(&mut app, "R");
    assert_eq!(
        app.popup,
        Some(Popup::Compare {
            column: 0,
            descending: false
        })
    );
    // Sorted by final loss (tab once), then reversed (r).
    press(&mut app, KeyCode::Tab);
    let order = |app: &App| {
        let Some(Popup::Compare { column, descending }) = app.popup else {
            panic!("{:?}", app.popup)
        };
        let s = app.session().unwrap();
        let final_loss = |name: &str| {
            let r = s.runs.iter().find(|r| r.info.name == name).unwrap();
            r.history.core(r.history.len() - 1).loss
        };
        let file = app.file().unwrap();
        gradscope::tui::compare::rows(s, file.compiled.as_ref(), column, descending)
            .into_iter()
            .map(|r| final_loss(&r.cells[0]))
            .collect::<Vec<f64>>()
    };
    let up = order(&app);
    assert!(up.windows(2).all(|w| w[0] <= w[1]), "{up:?}");
    typed(&mut app, "r");
    let down = order(&app);
    assert!(down.windows(2).all(|w| w[0] >= w[1]), "{down:?}");
    let t = draw(&app, 160, 45);
    let screen = rows(&t).join("\n");
    assert!(screen.contains("final loss ▼"), "{screen}");
    assert!(screen.contains("optimizer adam(lr=0.01) → sgd"), "{screen}");
    // Steps/s depend on the machine: masked.
    let lines = rows(&t);
    let top = lines.iter().position(|r| r.contains("steps/s")).unwrap();
    let at = lines[top].split("steps/s").next().unwrap().chars().count();
    let end = lines
        .iter()
        .position(|r| r.contains("tab/shift-tab"))
        .unwrap();
    let masked: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(y, r)| {
            // A run's row (its `vs base` may go on in the rows under it, blank here).
            let number = r.chars().skip(at).take(7).any(|c| c.is_ascii_digit());
            r.chars()
                .enumerate()
                .map(|(x, c)| {
                    let cell = (top + 1..end).contains(&y) && (at..at + 7).contains(&x);
                    if cell && number { '#' } else { c }
                })
                .collect()
        })
        .collect();
    insta::with_settings!({snapshot_path => "snapshots/tui", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("compare_table", masked.join("\n"));
    });
    // At 100 columns the names and `vs base` give up room: every number column stays in view.
    let narrow = rows(&draw(&app, 100, 30)).join("\n");
    for header in ["final loss", "clipped", "skipped", "steps/s"] {
        assert!(narrow.contains(header), "{header}:\n{narrow}");
    }
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.popup, None);
}

/// The table uses the screen before it cuts: `vs base` wraps under its column where the screen
/// is tall enough to show it whole; on a screen too narrow for every number column, tab
/// brings each into view with the names.
#[test]
fn the_compare_table_wraps_vs_base_and_tab_reaches_every_column() {
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "3n");
    typed(&mut app, "R");
    let diffs: Vec<String> = {
        let s = app.session().unwrap();
        let file = app.file().unwrap();
        gradscope::tui::compare::rows(s, file.compiled.as_ref(), 0, false)
            .into_iter()
            .map(|r| r.cells[8].clone())
            .collect()
    };
    let screen = rows(&draw(&app, 160, 45)).join("\n");
    assert!(!screen.contains('…'), "{screen}");
    for word in diffs.iter().flat_map(|d| d.split_whitespace()) {
        assert!(screen.contains(word), "`{word}`:\n{screen}");
    }
    for column in gradscope::tui::compare::COLUMNS {
        let screen = rows(&draw(&app, 60, 15)).join("\n");
        assert!(screen.contains("sgd, lr 1e-3"), "{screen}");
        if column != "vs base" {
            let sorted = format!("{column} ▲");
            assert!(screen.contains(&sorted), "`{sorted}`:\n{screen}");
        }
        press(&mut app, KeyCode::Tab);
    }
}

/// The compare table's `vs base` names the run settings a variant changes (its schedule, warmup,
/// steps), not only its optimizer.
#[test]
fn the_compare_table_names_a_variants_schedule_and_steps() {
    let dir = Scratch::new("compare-settings");
    dir.write(
        "v.toml",
        "name = \"V\"\nloss = \"sum(w^2)\"\n[params]\nw = \"[1.0, 2.0]\"\n[optimizer]\n\
         name = \"sgd\"\nlr = 0.1\nsteps = 50\n[[variants]]\nname = \"cosine\"\n\
         optimizer = { name = \"adam\", schedule = \"cosine\", warmup = 5, steps = 20 }\n",
    );
    let (app, _rx) = open(&format!("{}/v.toml", dir.path()));
    let s = app.session().unwrap();
    let file = app.file().unwrap();
    let rows = gradscope::tui::compare::rows(s, file.compiled.as_ref(), 0, false);
    let vs_base: Vec<&str> = rows
        .iter()
        .map(|r| r.cells.last().unwrap().as_str())
        .collect();
    assert_eq!(
        vs_base,
        [
            "-",
            "optimizer sgd(lr=0.1) → adam(lr=0.001), steps 50 → 20, schedule = cosine added, \
             warmup = 5 added"
        ]
    );
}

/// `G` shows the selected run's gradient of its next param as the program `gradscope grad`
/// writes, wrapped to the inspector, with where its first non-finite value is; past the last
/// param, none.
#[test]
fn snapshot_inspector_shows_a_params_gradient_formula_and_its_first_nan() {
    let (mut app, rx) = open("losses/norm_at_zero.toml");
    typed_settled(&mut app, &rx, "n");
    focus(&mut app, Focus::Runs);
    typed(&mut app, "j");
    typed_settled(&mut app, &rx, "G");
    let r = app.session().unwrap().selected_run().unwrap();
    assert_eq!(r.info.name, "naive sqrt(sum(w^2))");
    let (step, f) = r.formula.as_ref().expect("a formula");
    assert_eq!((*step, f.name.as_str()), (0, "w"));
    assert_eq!(
        f.lines,
        Ok(vec![
            "d_r = r / 32".to_string(),
            "grad_w = A.T @ d_r + lam * w / sqrt(sum(w^2))".to_string()
        ])
    );
    let t = draw(&app, 160, 45);
    let inspector = areas(&app, 160, 45).inspector.unwrap();
    assert!(find(&t, inspector, "∇w as a formula @0").is_some());
    assert!(find(&t, inspector, "non-finite in `lam * w /").is_some());
    snapshot("inspector_gradient_formula", &t);
    typed_settled(&mut app, &rx, "G");
    assert!(
        app.session()
            .unwrap()
            .selected_run()
            .unwrap()
            .formula
            .is_none()
    );
}

#[test]
fn f_runs_the_lr_range_test_on_a_copy_and_the_inspector_shows_its_suggestions() {
    use gradscope::run::lrfind::{LrRange, lr_find};
    use gradscope::run::{Run, RunRequest};
    let (mut app, rx) = open(ROSENBROCK);
    typed_settled(&mut app, &rx, "20n");
    let before = history_lens(&app);
    typed_settled(&mut app, &rx, "F");
    // The run itself has not moved.
    assert_eq!(history_lens(&app), before);
    let r = app.session().unwrap().selected_run().unwrap();
    let (step, found) = r.lrfind.as_ref().expect("a test came back");
    let found = found.as_ref().expect("the test ran");
    assert_eq!(*step, 20);
    // The same test on the same run stepped alone, as `gradscope lrfind` would run it.
    let (c, _) = gradscope::load::load_compiled(Path::new(ROSENBROCK)).unwrap();
    let mut alone = Run::new(&c, RunRequest::of(&c, r.info.def).unwrap()).unwrap();
    for _ in 0..20 {
        alone.step().unwrap();
    }
    let range = LrRange::new(1e-7, 10.0, 100).unwrap();
    let want = lr_find(&alone, &range, |_, _| std::ops::ControlFlow::Continue(())).unwrap();
    assert_eq!(found.curve.steepest(), want.curve.steepest());
    assert_eq!(found.curve.points.len(), want.curve.points.len());
    // The status line has the suggestions too, for a terminal too small for the inspector.
    let status = app.message.clone().unwrap_or_default();
    let steepest = gradscope::format::fmt_num(want.curve.steepest().unwrap());
    assert!(
        status.starts_with(&format!("lr range test from step 20: steepest {steepest}")),
        "{status}"
    );
    let t = draw(&app, 200, 60);
    let inspector = areas(&app, 200, 60)
        .inspector
        .expect("an inspector at 200 columns");
    assert!(
        find(&t, inspector, "lr range test @20").is_some(),
        "{:#?}",
        rows(&t)
    );
    let steepest = format!(
        "steepest {}",
        gradscope::format::fmt_short(want.curve.steepest().unwrap())
    );
    assert!(find(&t, inspector, &steepest).is_some(), "{:#?}", rows(&t));
    assert!(find(&t, inspector, "stopped: ").is_some());
}

/// A loss that halts at step 2: the log of a negative w, times 0, is NaN.
const NAN_AT_STEP_2: &str = "name = \"NaN test\"\nloss = \"log(w) * 0 + (w + 1)^2\"\n[params]\nw = 0.5\n\
                             [optimizer]\nname = \"sgd\"\nlr = 0.1\nsteps = 50\n";

/// An lr range test that cannot run says why in the inspector in full, wrapped to its width.
#[test]
fn an_lr_range_test_error_is_wrapped_in_the_inspector() {
    let dir = Scratch::new("lrfind-error");
    let (_, mut app, rx) = open_written(&dir, "l.toml", NAN_AT_STEP_2);
    typed_settled(&mut app, &rx, "5nF");
    let r = app.session().unwrap().selected_run().unwrap();
    let why = r.lrfind.as_ref().unwrap().1.as_ref().unwrap_err().clone();
    assert!(why.contains("the run halted at step 2: "), "{why}");
    assert!(
        why.chars().count() > 32,
        "longer than the inspector is wide: {why}"
    );
    let t = draw(&app, 160, 45);
    let inspector = areas(&app, 160, 45).inspector.unwrap();
    let inside = inspector.x as usize + 1..inspector.right() as usize - 1;
    let text: Vec<String> = rows(&t)
        .iter()
        .map(|r| {
            r.chars().collect::<Vec<_>>()[inside.clone()]
                .iter()
                .collect::<String>()
        })
        .map(|r| r.trim().to_string())
        .collect();
    assert!(
        text.join(" ").contains(&why),
        "`{why}` not shown whole: {text:#?}"
    );
}

/// The status line's step is the furthest of the runs still stepped: a variant removed by an
/// edit leaves a gone run at its old step, which it does not count.
#[test]
fn the_status_step_leaves_out_gone_runs() {
    let dir = Scratch::new("status-gone");
    let (file, mut app, rx) = open_written(
        &dir,
        "v.toml",
        "name = \"v\"\nloss = \"(x - 1)^2\"\n[params]\nx = 0.0\n[optimizer]\nname = \"sgd\"\nlr = 0.1\nsteps = 100\n[[variants]]\nname = \"other\"\noptimizer = { lr = 0.2 }\n",
    );
    typed_settled(&mut app, &rx, "20n");
    edit_file(
        &mut app,
        &rx,
        &file,
        "[[variants]]\nname = \"other\"\noptimizer = { lr = 0.2 }\n",
        "",
    );
    let screen = rows(&draw(&app, 160, 45)).join("\n");
    assert!(screen.contains(" step 0 · "), "{screen}");
}

/// A long "before the edit" line is cut in the legend, which stays (ratatui hid the whole
/// legend, run names too, once a name made it wider than 60% of the chart).
#[test]
fn a_long_change_is_cut_in_the_legend_not_the_legend_hidden() {
    let dir = Scratch::new("long-change");
    let (file, mut app, rx) = open_written(
        &dir,
        "c.toml",
        "name = \"c\"\nloss = \"a_rather_long_const_name_one * (x - 1)^2 + a_rather_long_const_name_two * x^2\"\n[consts]\na_rather_long_const_name_one = 1.0\na_rather_long_const_name_two = 1.0\n[params]\nx = 0.0\n[optimizer]\nname = \"sgd\"\nlr = 0.1\n",
    );
    typed_settled(&mut app, &rx, "5n");
    rewrite_file(&mut app, &rx, &file, |t| t.replace("= 1.0", "= 2.0"));
    typed_settled(&mut app, &rx, "5n");
    let screen = rows(&draw(&app, 120, 40)).join("\n");
    assert!(screen.contains("│before the edit: a_rat"), "{screen}");
    assert!(screen.contains('…'), "{screen}");
}

/// A variant added by an edit starts its run beside the restarted ones.
#[test]
fn a_variant_added_by_an_edit_gets_its_run() {
    let dir = Scratch::new("variant-added");
    let (file, mut app, rx) = open_written(
        &dir,
        "v.toml",
        "name = \"v\"\nloss = \"(x - 1)^2\"\n[params]\nx = 0.0\n[optimizer]\nname = \"sgd\"\nlr = 0.1\n",
    );
    typed_settled(&mut app, &rx, "3n");
    rewrite_file(&mut app, &rx, &file, |t| {
        format!("{t}[[variants]]\nname = \"faster\"\noptimizer = {{ lr = 0.3 }}\n")
    });
    let names: Vec<String> = app
        .session()
        .unwrap()
        .runs
        .iter()
        .map(|r| r.info.name.clone())
        .collect();
    assert_eq!(names, ["base", "faster"]);
    let status = app.message.clone().unwrap_or_default();
    assert!(
        status.contains("1 run restarted (variant `faster` added)"),
        "{status}"
    );
}

/// An edit of `[optimizer] name` is named as the optimizer's change, not as the file's `name`.
#[test]
fn a_changed_optimizer_is_named_as_such() {
    let dir = Scratch::new("optimizer-change");
    let (file, mut app, rx) = open_written(
        &dir,
        "o.toml",
        "name = \"o\"\nloss = \"(x - 1)^2\"\n[params]\nx = 0.0\n[optimizer]\nname = \"adam\"\nlr = 0.1\n",
    );
    typed_settled(&mut app, &rx, "3n");
    edit_file(&mut app, &rx, &file, "name = \"adam\"", "name = \"sgd\"");
    let status = app.message.clone().unwrap_or_default();
    assert!(status.contains("(optimizer adam → sgd)"), "{status}");
}

/// An edit of the file ends its sweep (of the old version): the status line says so and the
/// chart goes back to the Loss tab.
#[test]
fn an_edit_ends_the_sweep_and_says_so() {
    let dir = Scratch::new("sweep-edit");
    let (file, mut app, rx) = open_written(
        &dir,
        "r.toml",
        "name = \"r\"\nloss = \"(1 - x)^2 + 100 * (y - x^2)^2\"\n[params]\nx = -1.5\ny = 2.0\n[optimizer]\nname = \"adam\"\nlr = 0.01\nsteps = 300\n",
    );
    typed(&mut app, "W");
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.tab, Tab::Sweep);
    edit_file(&mut app, &rx, &file, "lr = 0.01", "lr = 0.02");
    let status = app.message.clone().unwrap_or_default();
    assert!(
        status.contains("its sweep ended with the old version"),
        "{status}"
    );
    assert_eq!(app.tab, Tab::Loss);
    assert!(app.session().unwrap().sweep.is_none());
}

#[test]
fn w_sweeps_the_selected_runs_lr_in_its_tab_and_enter_adds_a_point_as_a_run() {
    // Rosenbrock in f64, where the sweep's batched runs equal runs alone to 1e-12.
    let dir = Scratch::new("sweep");
    let file = dir.write(
        "r.toml",
        "name = \"r\"\ndtype = \"f64\"\nloss = \"(1 - x)^2 + 100 * (y - x^2)^2\"\n[params]\nx = -1.5\ny = 2.0\n[optimizer]\nname = \"adam\"\nlr = 0.01\nsteps = 300\n",
    );
    let path = file.to_str().unwrap();
    let (mut app, rx) = open(path);
    typed(&mut app, "W");
    let Some(Popup::Sweep { text, .. }) = &app.popup else {
        panic!("the sweep form: {:?}", app.popup);
    };
    // Nine lrs around the base run's 0.01, half a decade apart.
    assert_eq!(text.text(), "lr=logspace(0.0001, 1, 9)");
    assert_eq!(
        gradscope::tui::sweep::default_form(0.003),
        "lr=logspace(0.00003, 0.3, 9)"
    );
    // A malformed form says why and stays open.
    for c in " x".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    press(&mut app, KeyCode::Enter);
    assert!(
        matches!(&app.popup, Some(Popup::Sweep { error: Some(e), .. }) if e.contains("`x`")),
        "{:?}",
        app.popup
    );
    for _ in 0..2 {
        press(&mut app, KeyCode::Backspace);
    }
    press(&mut app, KeyCode::Enter);
    assert!(app.popup.is_none());
    assert_eq!(app.tab, Tab::Sweep);
    // The points fill in as their runs end, on the sweep's own thread.
    finish_sweep(&mut app, &rx);
    let view = app.session().unwrap().sweep.as_ref().unwrap();
    assert!(view.ended.iter().all(Option::is_some));
    // Each point ended where the same run stepped alone ends.
    let (c, _) = gradscope::load::load_compiled(&file).unwrap();
    for (point, ended) in view.points.iter().zip(&view.ended) {
        let chain = point.optimizer.as_ref().unwrap();
        let mut request = gradscope::run::RunRequest::of(&c, 0).unwrap();
        request.settings.optimizer = chain.base.clone();
        let mut alone = gradscope::run::Run::new(&c, request).unwrap();
        let s =
            gradscope::run::summary::drive(&mut alone, |_, _| std::ops::ControlFlow::Continue(()))
                .unwrap();
        let e = ended.unwrap();
        assert_eq!(e.halted_at.is_some(), alone.halted.is_some(), "{chain}");
        if e.halted_at.is_none() {
            assert!(
                (e.final_loss - s.final_loss).abs() <= 1e-12 * s.final_loss.abs().max(1e-12),
                "{chain}: {} vs {}",
                e.final_loss,
                s.final_loss
            );
        }
    }
    let t = draw(&app, 200, 60);
    let screen = rows(&t).join("\n");
    assert!(
        screen.contains("base over lr · 9/9 · enter adds · esc closes"),
        "{screen}"
    );
    assert!(screen.contains("★ lr"), "{screen}");
    // The cursor moves; enter adds its point as a normal run of the file.
    let before = run_names(&app).len();
    press(&mut app, KeyCode::Right);
    press(&mut app, KeyCode::Right);
    let chain = {
        let view = app.session().unwrap().sweep.as_ref().unwrap();
        assert_eq!(view.cursor, 2);
        view.points[2].optimizer.as_ref().unwrap().to_string()
    };
    press(&mut app, KeyCode::Enter);
    assert_eq!(
        app.message.as_deref(),
        Some(format!("added a run of {chain} from the sweep").as_str())
    );
    app.settle(&rx);
    let names = run_names(&app);
    assert_eq!(names.len(), before + 1);
    assert!(
        names.last().unwrap().contains(&chain),
        "{names:?} lacks {chain}"
    );
    // `p` writes the sweep's picture beside the others: final loss against lr, the run's name.
    typed(&mut app, "p");
    let svg = dir.0.join("gradscope-r-sweep.svg");
    assert!(
        app.message
            .as_deref()
            .is_some_and(|m| m.contains(&svg.display().to_string())),
        "{:?}",
        app.message
    );
    let texts = svg::svg_texts(&svg);
    assert!(texts.iter().any(|t| t.starts_with("lr")), "{texts:?}");
    assert!(texts.iter().any(|t| t == "base"), "{texts:?}");
    assert!(
        std::fs::read(dir.0.join("gradscope-r-sweep.png"))
            .unwrap()
            .starts_with(b"\x89PNG")
    );
    // Esc closes a finished sweep, and its tab goes.
    press(&mut app, KeyCode::Esc);
    assert!(app.session().unwrap().sweep.is_none());
    assert!(!app.tabs().contains(&Tab::Sweep));
}

#[test]
fn a_sweep_form_names_one_or_two_keys_with_lists() {
    use gradscope::optim::tricks::ChainSpec;
    use gradscope::run::worker::Overrides;
    use gradscope::tui::sweep::parse_form;
    let run = Overrides {
        optimizer: Some(ChainSpec::parse("adam(lr=0.01)").unwrap()),
        dtype: None,
        consts: vec![("k".into(), 2.0)],
    };
    let consts = ["eps".to_string(), "k".to_string()];
    let (axes, points) =
        parse_form("lr=[1e-3, 1e-2] beta1=linspace(0.5, 0.9, 3)", &run, &consts).unwrap();
    assert_eq!(axes.len(), 2);
    assert_eq!(axes[1].values, vec![0.5, 0.7, 0.9]);
    assert_eq!(points.len(), 6);
    // The first key varies fastest; the run's own consts stay.
    let chain = |i: usize| points[i].optimizer.as_ref().unwrap().to_string();
    assert_eq!(chain(1), "adam(lr=0.01, beta1=0.5)");
    assert_eq!(chain(2), "adam(lr=0.001, beta1=0.7)");
    assert!(points.iter().all(|p| p.consts == run.consts));
    // Keys apart by a comma, as in a spec, are the same form.
    let (comma, _) = parse_form(
        "lr=[1e-3, 1e-2], beta1=linspace(0.5, 0.9, 3)",
        &run,
        &consts,
    )
    .unwrap();
    assert_eq!(comma, axes);
    // A const of the file is a key too; `eps` is also adam's, so it must say which. A swept
    // const replaces the run's own value of it.
    let (axes, points) = parse_form("adam.eps=[1e-7, 1e-6] k=[1, 3]", &run, &consts).unwrap();
    assert!(!axes[0].is_const && axes[1].is_const);
    assert_eq!(
        points[0].optimizer.as_ref().unwrap().to_string(),
        "adam(lr=0.01, eps=1e-7)"
    );
    assert_eq!(points[3].consts, vec![("k".to_string(), 3.0)]);
    let (axes, points) = parse_form("const.eps=[1e-8, 1e-6]", &run, &consts).unwrap();
    assert!(axes[0].is_const);
    assert_eq!(axes[0].key, "eps");
    assert_eq!(
        points[1].consts,
        vec![("k".into(), 2.0), ("eps".into(), 1e-6)]
    );
    assert_eq!(points[1].optimizer, run.optimizer);
    for (text, why) in [
        ("lr=0.1", "one value"),
        ("", "name a hyper-parameter"),
        ("momentum=[0.9, 0.5]", "nor a const of the file (eps, k)"),
        ("const.lr=[0.9, 0.5]", "no const `lr`"),
        ("eps=[1e-8, 1e-6]", "write adam.eps or const.eps"),
        ("lr=[0.01, 0.1] adam.lr=[1, 2]", "`lr` is given twice"),
        (
            "lr=logspace(1e-4, 1e-1, 10000) beta1=linspace(0.1, 0.9, 10000)",
            "10000 × 10000 points: at most 10000",
        ),
        ("lr=[1] beta1=[0.9] beta2=[0.99]", "3 keys"),
        ("lr=logspace(0, 1, 3)", "logspace"),
    ] {
        let e = parse_form(text, &run, &consts).unwrap_err();
        assert!(e.contains(why), "{text}: {e}");
    }
}

/// A small f64 file with a const in its loss (`eps`, also a hyper-parameter of adam) and one in
/// its data (`k`), written into `dir`.
fn const_file(dir: &Scratch) -> PathBuf {
    dir.write(
        "c.toml",
        "name = \"c\"\ndtype = \"f64\"\nloss = \"sum(sqrt((w - y)^2 + eps))\"\n[data]\ny = \"k * [1.0, -2.0]\"\n[consts]\neps = 1e-3\nk = 1.0\n[params]\nw = \"zeros(2)\"\n[optimizer]\nname = \"adam\"\nlr = 0.05\nsteps = 200\n",
    )
}

/// Replaces the open form's text with `text` and presses enter.
/// Over one key the Sweep tab places points by value: on a descending sweep the first point is
/// the rightmost, and the arrows move the cursor the way they point on screen.
#[test]
fn sweep_arrows_move_on_screen_over_a_descending_sweep() {
    let (mut app, rx) = open(ROSENBROCK);
    typed(&mut app, "W");
    submit_form(&mut app, "lr=logspace(1, 1e-3, 3)");
    let lr = |app: &App| {
        let view = app.session().unwrap().sweep.as_ref().unwrap();
        view.axes[0].values[view.cursor]
    };
    assert_eq!(lr(&app), 1.0);
    let moves = [
        (KeyCode::Right, 1.0),
        (KeyCode::Left, 0.0316),
        (KeyCode::Left, 0.001),
        (KeyCode::Right, 0.0316),
    ];
    for (key, want) in moves {
        press(&mut app, key);
        assert!(
            (lr(&app) - want).abs() < 1e-3 * want,
            "{key:?}: lr {}",
            lr(&app)
        );
    }
    finish_sweep(&mut app, &rx);
}

/// `S` starts empty with the current weight in its hint: typed digits are the weight, not
/// digits after a prefilled `0`; enter on nothing keeps the weight.
#[test]
fn s_types_a_smoothing_weight_into_an_empty_field() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "s");
    assert_eq!(app.smoothing, 0.6);
    typed(&mut app, "S");
    let screen = rows(&draw(&app, 160, 45)).join("\n");
    assert!(screen.contains("now 0.6 · enter sets it"), "{screen}");
    typed(&mut app, "0.9");
    press(&mut app, KeyCode::Enter);
    assert_eq!((app.smoothing, app.popup.is_none()), (0.9, true));
    typed(&mut app, "S");
    press(&mut app, KeyCode::Enter);
    assert_eq!((app.smoothing, app.popup.is_none()), (0.9, true));
}

/// The duplicate dialog moves as the other lists do: end, home, page keys.
#[test]
fn the_duplicate_dialog_takes_home_and_end() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "d");
    let n = duplicate_count(&app);
    press(&mut app, KeyCode::End);
    assert_eq!(app.popup, Some(Popup::Duplicate { selected: n - 1 }));
    press(&mut app, KeyCode::Home);
    assert_eq!(app.popup, Some(Popup::Duplicate { selected: 0 }));
    press(&mut app, KeyCode::PageDown);
    assert_eq!(
        app.popup,
        Some(Popup::Duplicate {
            selected: 10.min(n - 1)
        })
    );
}

fn duplicate_count(app: &App) -> usize {
    gradscope::tui::app::duplicate_choices(app.file().unwrap().compiled.as_ref().unwrap()).len()
}

/// The help stays above the status bar wherever it is drawn, scrolled or not.
#[test]
fn the_help_leaves_the_status_bar_alone() {
    let (mut app, _rx) = open(ROSENBROCK);
    typed(&mut app, "?");
    for (w, h, scroll) in [(100, 30, 0), (80, 24, 0), (80, 24, 5), (160, 45, 0)] {
        app.help_scroll = scroll;
        let status = rows(&draw(&app, w, h)).pop().unwrap();
        assert!(status.starts_with(" step 0 · paused"), "{w}x{h}: {status}");
    }
}

fn submit_form(app: &mut App, text: &str) {
    for _ in 0..80 {
        press(app, KeyCode::Backspace);
    }
    typed(app, text);
    press(app, KeyCode::Enter);
}

/// Handles messages until the sweep has ended (a minute at most).
fn finish_sweep(app: &mut App, rx: &Receiver<Msg>) {
    until(app, rx, "the sweep to end", |app| {
        !app.session().unwrap().sweep.as_ref().unwrap().running
    });
}

/// The loss of definition 0 of `file` with `consts` set, stepped alone `steps` times with
/// `optimizer`.
fn loss_alone(file: &Path, consts: &[(String, f64)], optimizer: &str, steps: u64) -> f64 {
    let (c, _) = gradscope::load::load_compiled(file).unwrap();
    let c = c.recompiled(c.file.seed, consts).unwrap();
    let mut request = gradscope::run::RunRequest::of(&c, 0).unwrap();
    request.settings.optimizer = gradscope::optim::tricks::ChainSpec::parse(optimizer)
        .unwrap()
        .base;
    request.settings.steps = steps;
    let mut alone = gradscope::run::Run::new(&c, request).unwrap();
    gradscope::run::summary::drive(&mut alone, |_, _| std::ops::ControlFlow::Continue(()))
        .unwrap()
        .final_loss
}

#[test]
fn w_sweeps_a_const_of_the_file_and_enter_adds_its_point_as_a_run_with_that_const() {
    let dir = Scratch::new("sweep-const");
    let file = const_file(&dir);
    let (mut app, rx) = open(file.to_str().unwrap());
    typed(&mut app, "W");
    // `eps` is adam's and the file's: the form asks which.
    submit_form(&mut app, "eps=[1e-6, 1e-3, 0.1] lr=[0.01, 0.05]");
    assert!(
        matches!(&app.popup, Some(Popup::Sweep { error: Some(e), .. }) if e.contains("const.eps")),
        "{:?}",
        app.popup
    );
    submit_form(&mut app, "const.eps=[1e-6, 1e-3, 0.1] lr=[0.01, 0.05]");
    assert!(app.popup.is_none(), "{:?}", app.popup);
    finish_sweep(&mut app, &rx);
    // Each point ended where the run of the file with that eps, stepped alone, ends.
    let view = app.session().unwrap().sweep.as_ref().unwrap();
    assert_eq!(view.ended.len(), 6);
    for (i, ended) in view.ended.iter().enumerate() {
        let v = view.values(i);
        let alone = loss_alone(
            &file,
            &[("eps".into(), v[0])],
            &format!("adam(lr={})", v[1]),
            200,
        );
        let e = ended.unwrap().final_loss;
        assert!(
            (e - alone).abs() <= 1e-12 * alone.abs(),
            "{v:?}: {e} vs {alone}"
        );
    }
    let screen = rows(&draw(&app, 200, 60)).join("\n");
    assert!(
        screen.contains("over eps × lr · 6/6 · enter adds"),
        "{screen}"
    );
    // Enter on eps = 0.1, lr = 0.05 adds it as a run of the file that keeps eps = 0.1: it
    // steps as that run alone does.
    press(&mut app, KeyCode::Right);
    press(&mut app, KeyCode::Right);
    press(&mut app, KeyCode::Up);
    assert_eq!(app.session().unwrap().sweep.as_ref().unwrap().cursor, 5);
    press(&mut app, KeyCode::Enter);
    app.settle(&rx);
    let names = run_names(&app);
    assert_eq!(names.last().unwrap(), "base · eps=0.1 · adam(lr=0.05)");
    typed_settled(&mut app, &rx, "30n");
    let added = app.session().unwrap().runs.last().unwrap();
    let alone = loss_alone(&file, &[("eps".into(), 0.1)], "adam(lr=0.05)", 30);
    let stepped = added.history.core(30).loss;
    assert!(
        (stepped - alone).abs() <= 1e-12 * alone.abs(),
        "{stepped} vs {alone}"
    );
    // And the file's own run still minimises eps = 1e-3.
    let own = app.session().unwrap().runs[0].history.core(30).loss;
    let own_alone = loss_alone(&file, &[], "adam(lr=0.05)", 30);
    assert!(
        (own - own_alone).abs() <= 1e-12 * own_alone.abs(),
        "{own} vs {own_alone}"
    );
    assert!(app.session().unwrap().failed.is_none());
}

#[test]
fn a_const_that_changes_the_data_sweeps_but_its_point_cannot_join_the_files_runs() {
    let dir = Scratch::new("sweep-data-const");
    let file = const_file(&dir);
    let (mut app, rx) = open(file.to_str().unwrap());
    typed(&mut app, "W");
    submit_form(&mut app, "k=[1, 2]");
    finish_sweep(&mut app, &rx);
    let view = app.session().unwrap().sweep.as_ref().unwrap();
    // k scales the data: each point minimises its own objective, as `sweep --const` runs it.
    for (i, ended) in view.ended.iter().enumerate() {
        let k = view.values(i)[0];
        let alone = loss_alone(&file, &[("k".into(), k)], "adam(lr=0.05)", 200);
        let e = ended.unwrap().final_loss;
        assert!(
            (e - alone).abs() <= 1e-12 * alone.abs(),
            "k={k}: {e} vs {alone}"
        );
    }
    let before = run_names(&app).len();
    press(&mut app, KeyCode::Right);
    press(&mut app, KeyCode::Enter);
    app.settle(&rx);
    assert_eq!(run_names(&app).len(), before);
    let why = app.session().unwrap().failed.clone().unwrap_or_default();
    assert!(
        why.contains("k changes the file's data") && why.contains("gradscope sweep --const"),
        "{why}"
    );
}

/// The Sweep tab's form and its points filling in, with the points' ends given by hand (the
/// sweep's own thread runs on, unread) so that the screen is the same on every machine.
#[test]
fn snapshot_sweep_tab_form_and_live_fill() {
    use gradscope::run::sweep::Ended;
    use gradscope::tui::sweep::SweepMsg;
    let dir = Scratch::new("sweep-snapshot");
    let file = const_file(&dir);
    let (mut app, _rx) = open(file.to_str().unwrap());
    typed(&mut app, "W");
    snapshot("sweep_form", &draw(&app, 120, 36));
    submit_form(&mut app, "lr=logspace(1e-3, 1e-1, 5)");
    let (session, sweep) = (
        app.session().unwrap().id,
        app.session().unwrap().sweep.as_ref().unwrap().id,
    );
    let ended = |loss: f64, halted_at| Ended {
        final_loss: loss,
        halted_at,
    };
    for (i, e) in [
        (0, ended(2.5, None)),
        (1, ended(0.75, None)),
        (3, ended(f64::NAN, Some(12))),
    ] {
        app.handle(Msg::Swept(session, sweep, SweepMsg::Ended(i, e)));
    }
    press(&mut app, KeyCode::Right);
    let t = draw(&app, 120, 36);
    let screen = rows(&t).join("\n");
    assert!(screen.contains("3/5 · enter adds · esc stops"), "{screen}");
    snapshot("sweep_tab_live_one_key", &t);
    // `l` puts the final losses on a log axis, as on the other charts.
    typed(&mut app, "l");
    let screen = rows(&draw(&app, 120, 36)).join("\n");
    assert!(screen.contains("final loss (log)"), "{screen}");
    typed(&mut app, "l");
    // Over two keys the points are a heat map.
    press(&mut app, KeyCode::Esc);
    press(&mut app, KeyCode::Esc);
    typed(&mut app, "W");
    submit_form(&mut app, "lr=[0.01, 0.1] const.eps=[1e-6, 1e-3, 0.1]");
    // What the first sweep's thread still says is not the second's.
    app.handle(Msg::Swept(session, sweep, SweepMsg::Done));
    let view = app.session().unwrap().sweep.as_ref().unwrap();
    assert!(view.running && view.id != sweep);
    let sweep = view.id;
    for (i, e) in [
        (0, ended(0.5, None)),
        (2, ended(0.125, None)),
        (5, ended(3.0, None)),
    ] {
        app.handle(Msg::Swept(session, sweep, SweepMsg::Ended(i, e)));
    }
    snapshot("sweep_tab_live_two_keys", &draw(&app, 120, 36));
}

/// While playing, the status bar's rate is every run's steps together, and says over how many.
#[test]
fn the_status_rate_says_it_is_over_all_the_runs() {
    let (mut app, rx) = open(ROSENBROCK);
    typed(&mut app, " ");
    until(&mut app, &rx, "the runs to play", |app| {
        app.session()
            .is_some_and(|s| s.playing && !s.runs.is_empty())
    });
    let n = app.session().unwrap().runs.len();
    assert!(n > 1);
    let status = rows(&draw(&app, 160, 45)).pop().unwrap();
    assert!(
        status.contains(&format!("steps/s over {n} runs · running")),
        "{status}"
    );
    typed(&mut app, " ");
}
