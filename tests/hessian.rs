//! The whole Hessian: against closed forms (a quadratic with a known spectrum, Rosenbrock at its
//! minimum, the saddle x² - y², a singular quadratic), against finite differences of gradients,
//! Lanczos against the full eigen-decomposition just past the size limit, one param's block,
//! the `hessian` command's reports, and the TUI's `h` view.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Once;

use common::gradscope;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use gradscope::compile::hessian::{Condition, Hessian, Method, Options, hessian_exact};
use gradscope::compile::{Evaluator, compile};
use gradscope::lang::file::load_bytes;
use gradscope::tui::app::{App, Msg, Popup};
use gradscope::tui::render;
use ratatui::Terminal;
use ratatui::backend::TestBackend;

/// Starts the curvature thread before any test evaluates (every test calls it first, so no
/// other thread of the binary has taken a backward pass while it sets up).
fn setup() {
    static INIT: Once = Once::new();
    INIT.call_once(|| gradscope::init_process(None));
}

fn evaluator(text: &str) -> (Evaluator, Vec<String>) {
    setup();
    let loaded = load_bytes(Path::new("h.toml"), text.as_bytes().to_vec());
    let (c, d) = compile(loaded.file.expect("loads"));
    let c = c.unwrap_or_else(|| panic!("{d:?}"));
    let names = c.params.iter().map(|p| p.name.clone()).collect();
    (Evaluator::new(&c, 0).unwrap(), names)
}

fn full_of(text: &str) -> Hessian {
    let (ev, names) = evaluator(text);
    hessian_exact(&ev, &names, None, &Options::default()).unwrap()
}

fn eigenvalues(h: &Hessian) -> &[f64] {
    match &h.method {
        Method::Full(f) => &f.eigenvalues,
        Method::Lanczos(_) => panic!("expected the full Hessian"),
    }
}

fn matrix(h: &Hessian) -> &nalgebra::DMatrix<f64> {
    match &h.method {
        Method::Full(f) => &f.matrix,
        Method::Lanczos(_) => panic!("expected the full Hessian"),
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

/// An MLP through the fused tanh and bias-add ops: 4·8 + 8 + 8 = 48 params.
const MLP: &str = "name = \"m\"\ndtype = \"f64\"\nseed = 1\nloss = \"mean((tanh(X @ W + b) @ v - y)^2)\"\n[data]\nX = \"randn(16, 4)\"\ny = \"randn(16)\"\n[params]\nW = \"randn(4, 8) / 2\"\nb = \"randn(8) / 4\"\nv = \"randn(8) / 3\"\n";

#[test]
fn a_rotated_quadratic_has_its_known_spectrum() {
    // 0.5 wᵀAw with A = Q diag(lam) Qᵀ: H = A, eigenvalues lam = 1 … 1000 log-spaced, so the
    // condition number is 1000 and 2/λmax = 0.002.
    let h = full_of(
        "name = \"q\"\ndtype = \"f64\"\nloss = \"0.5 * sum(w * (A @ w))\"\n[data]\nlam = \"exp(linspace(0, 6.907755278982137, 10))\"\nv = \"ones(10) / sqrt(10)\"\nQ = \"eye(10) - 2 * reshape(v, 10, 1) @ reshape(v, 1, 10)\"\nA = \"Q @ (reshape(lam, 10, 1) * Q)\"\n[params]\nw = \"ones(10)\"\n",
    );
    let want: Vec<f64> = (0..10)
        .map(|i| (6.907755278982137 * i as f64 / 9.0).exp())
        .collect();
    for (got, want) in eigenvalues(&h).iter().zip(&want) {
        assert!(close(*got, *want, 1e-12), "{got} vs {want}");
    }
    let Condition::Number(k) = h.condition() else {
        panic!("{:?}", h.condition())
    };
    assert!(close(k, 1000.0, 1e-10), "{k}");
    assert!(close(h.max_stable_lr().unwrap(), 0.002, 1e-12));
    assert_eq!(h.inertia().negative, 0);
    assert!(h.verdict().contains("positive definite"), "{}", h.verdict());
    // The off-diagonal entries are there: Q mixes every coordinate.
    assert!(matrix(&h)[(0, 1)].abs() > 1.0, "{}", matrix(&h));
}

#[test]
fn rosenbrock_at_its_minimum() {
    // H(1, 1) = [[1200x² - 400y + 2, -400x], [-400x, 200]] = [[802, -400], [-400, 200]]:
    // trace 1002, determinant 400, λ = (1002 ± √(1002² - 1600)) / 2.
    let h = full_of(
        "name = \"r\"\ndtype = \"f64\"\nloss = \"(1 - x)^2 + 100 * (y - x^2)^2\"\n[params]\nx = 1.0\ny = 1.0\n",
    );
    let m = matrix(&h);
    assert_eq!(m.as_slice(), &[802.0, -400.0, -400.0, 200.0]);
    let root = (1002.0f64.powi(2) - 1600.0).sqrt();
    let (lo, hi) = ((1002.0 - root) / 2.0, (1002.0 + root) / 2.0);
    let ev = eigenvalues(&h);
    assert!(close(ev[0], lo, 1e-12) && close(ev[1], hi, 1e-13), "{ev:?}");
    let Condition::Number(k) = h.condition() else {
        panic!("{:?}", h.condition())
    };
    assert!(close(k, hi / lo, 1e-10), "{k}");
    assert_eq!(h.grad_norm, 0.0);
    assert!(
        h.verdict()
            .contains("positive definite, convex at this stationary point"),
        "{}",
        h.verdict()
    );
    let Method::Full(f) = &h.method else {
        unreachable!()
    };
    assert_eq!(f.labels, ["x", "y"]);
    assert_eq!(f.asymmetry, 0.0);
    assert!(f.fd_rel_err < 1e-8, "{}", f.fd_rel_err);
}

#[test]
fn the_finite_difference_check_holds_far_from_the_origin() {
    // After 100 steps down a saddle the params are near 1e7: an absolute difference step left
    // the check to rounding, and a smooth quadratic was reported as a kink.
    for (x, y) in [(1.3e7, -2.1e6), (0.3, -0.2)] {
        let h = full_of(&format!(
            "name = \"s\"\ndtype = \"f64\"\nloss = \"x^2 - 3 * y^2 + x * y\"\n[params]\nx = {x}\ny = {y}\n"
        ));
        assert_eq!(h.fd_agrees(), Some(true), "at ({x}, {y})");
    }
}

#[test]
fn the_saddle_x2_minus_y2_says_so() {
    // H = diag(2, -2): one negative eigenvalue, |λ|max/|λ|min = 1, 2/λmax = 1.
    let h = full_of(
        "name = \"s\"\ndtype = \"f64\"\nloss = \"x^2 - y^2\"\n[params]\nx = 0.0\ny = 0.0\n",
    );
    assert_eq!(eigenvalues(&h), &[-2.0, 2.0]);
    let i = h.inertia();
    assert_eq!((i.negative, i.zero, i.positive), (1, 0, 1));
    assert_eq!(h.condition(), Condition::Number(1.0));
    assert_eq!(h.max_stable_lr(), Some(1.0));
    assert_eq!(
        h.verdict(),
        "1 negative eigenvalue: a saddle at this stationary point, the loss curves down along 1 direction"
    );
}

#[test]
fn a_flat_direction_is_singular() {
    // (x - y)²: H = [[2, -2], [-2, 2]], eigenvalues 0 and 4; the loss is flat along (1, 1).
    let h = full_of(
        "name = \"f\"\ndtype = \"f64\"\nloss = \"(x - y)^2\"\n[params]\nx = 1.0\ny = 3.0\n",
    );
    let ev = eigenvalues(&h);
    assert!(ev[0].abs() < 1e-14 && close(ev[1], 4.0, 1e-14), "{ev:?}");
    assert_eq!(h.condition(), Condition::Singular);
    assert!(h.condition_words().starts_with("infinite: singular"));
    assert!(
        h.verdict()
            .contains("positive semi-definite, flat along 1 direction"),
        "{}",
        h.verdict()
    );
    // A param the loss does not reach adds a zero row and column.
    let h = full_of(
        "name = \"f\"\ndtype = \"f64\"\nloss = \"x^2\"\n[params]\nx = 1.0\nunused = \"[1, 2]\"\n",
    );
    assert_eq!(eigenvalues(&h), &[0.0, 0.0, 2.0]);
}

#[test]
fn every_entry_matches_finite_differences_of_gradients() {
    every_entry_matches_finite_differences(MLP);
}

/// The activations whose derivatives are ops of their own: their second derivatives too.
#[test]
fn every_activation_hessian_matches_finite_differences_of_gradients() {
    for activation in ["gelu", "silu", "elu", "elu_alpha"] {
        let call = match activation {
            "elu_alpha" => "elu(X @ W + b, 0.7)".to_string(),
            f => format!("{f}(X @ W + b)"),
        };
        every_entry_matches_finite_differences(&MLP.replace("tanh(X @ W + b)", &call));
    }
}

/// Column j of H is ∂g/∂w_j ≈ (g(w + h e_j) - g(w - h e_j)) / 2h, taken here on this thread
/// from first-order gradients only.
fn every_entry_matches_finite_differences(text: &str) {
    let (ev, names) = evaluator(text);
    let h = hessian_exact(&ev, &names, None, &Options::default()).unwrap();
    let m = matrix(&h);
    let n = h.dim;
    assert_eq!(n, 48);
    let flat = |ev: &Evaluator| -> Vec<f64> {
        ev.params()
            .iter()
            .flat_map(|p| gradscope::compile::values_f64(p.as_tensor()).unwrap())
            .collect()
    };
    let w = flat(&ev);
    let grad_at = |x: &[f64]| -> Vec<f64> {
        ev.set_flat(x).unwrap();
        ev.evaluate()
            .unwrap()
            .grads
            .iter()
            .flat_map(|g| gradscope::compile::values_f64(g).unwrap())
            .collect()
    };
    let step = 1e-5;
    let scale = m.camax();
    let mut worst: f64 = 0.0;
    for j in 0..n {
        let (mut up, mut down) = (w.clone(), w.clone());
        up[j] += step;
        down[j] -= step;
        let (gu, gd) = (grad_at(&up), grad_at(&down));
        for i in 0..n {
            worst = worst.max(((gu[i] - gd[i]) / (2.0 * step) - m[(i, j)]).abs() / scale);
        }
    }
    ev.set_flat(&w).unwrap();
    assert!(
        worst < 1e-8,
        "{text}: worst entry off by {worst} of max |H|"
    );
    let Method::Full(f) = &h.method else {
        unreachable!()
    };
    assert!(f.asymmetry < 1e-14, "{text}: {}", f.asymmetry);
    assert!(f.fd_rel_err < 1e-8, "{text}: {}", f.fd_rel_err);
}

#[test]
fn one_params_block_is_the_submatrix() {
    // Params W (32), b (8), v (8): b's block is rows and columns 32..40 of the whole.
    let (ev, names) = evaluator(MLP);
    let whole = hessian_exact(&ev, &names, None, &Options::default()).unwrap();
    let b = hessian_exact(&ev, &names, Some(1), &Options::default()).unwrap();
    assert_eq!(b.params, ["b"]);
    assert_eq!(b.dim, 8);
    let Method::Full(f) = &b.method else {
        panic!("expected the full block")
    };
    assert_eq!(f.labels[0], "b[0]");
    assert_eq!(f.labels[7], "b[7]");
    let want = matrix(&whole).view((32, 32), (8, 8)).clone_owned();
    assert!(
        (&f.matrix - &want).camax() <= 1e-15 * want.camax(),
        "{want}"
    );
    let Method::Full(w) = &hessian_exact(&ev, &names, Some(0), &Options::default())
        .unwrap()
        .method
    else {
        unreachable!()
    };
    assert_eq!(&w.labels[..3], ["W[0,0]", "W[0,1]", "W[0,2]"]);
    assert_eq!(w.labels[8], "W[1,0]");
}

#[test]
fn lanczos_just_past_the_limit_agrees_with_the_full_decomposition() {
    // 48 params, the limit set at 47: the Lanczos ends must sit within their residuals of the
    // full spectrum's, reached in fewer products than there are params.
    let (ev, names) = evaluator(MLP);
    let whole = hessian_exact(&ev, &names, None, &Options::default()).unwrap();
    let exact = eigenvalues(&whole);
    let options = Options {
        full_limit: 47,
        ..Options::default()
    };
    let h = hessian_exact(&ev, &names, None, &options).unwrap();
    let Method::Lanczos(l) = &h.method else {
        panic!("expected Lanczos past the limit")
    };
    assert!(l.converged && l.steps < 48, "{l:?}");
    let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let n = exact.len();
    for (k, r) in l.top.iter().enumerate() {
        let want = exact[n - 1 - k];
        assert!(
            (r.value - want).abs() <= r.residual + 1e-12 * scale,
            "top {k}: {r:?} vs {want}"
        );
        assert!(r.residual <= 1e-6 * scale, "top {k}: {r:?}");
    }
    for (k, r) in l.bottom.iter().enumerate() {
        let want = exact[k];
        assert!(
            (r.value - want).abs() <= r.residual + 1e-12 * scale,
            "bottom {k}: {r:?} vs {want}"
        );
    }
    // The MLP's Hessian is indefinite here, as the full spectrum says.
    assert!(exact[0] < 0.0 && h.lambda_min() < 0.0, "{exact:?}");
    assert_eq!(h.condition(), Condition::Unknown);
    assert!(h.verdict().contains("a saddle"), "{}", h.verdict());
}

#[test]
fn lanczos_finds_a_known_spectrum_of_a_block() {
    // w's block of 0.5 Σ d w² + b² is diag(d), d = 1 … 300: Lanczos on the block alone.
    let (ev, names) = evaluator(
        "name = \"d\"\ndtype = \"f64\"\nloss = \"0.5 * sum(d * w^2) + b^2\"\n[data]\nd = \"linspace(1, 300, 300)\"\n[params]\nw = \"ones(300)\"\nb = 1.0\n",
    );
    let options = Options {
        full_limit: 100,
        ..Options::default()
    };
    let h = hessian_exact(&ev, &names, Some(0), &options).unwrap();
    let Method::Lanczos(l) = &h.method else {
        panic!("expected Lanczos")
    };
    assert_eq!(h.dim, 300);
    let (top, bottom) = (l.top[0], l.bottom[0]);
    assert!((top.value - 300.0).abs() <= top.residual + 1e-9, "{top:?}");
    assert!(
        (bottom.value - 1.0).abs() <= bottom.residual + 1e-9,
        "{bottom:?}"
    );
    assert!(top.residual < 1e-4 && bottom.residual < 1e-4, "{l:?}");
    // Positive definite: the bottom end is the smallest |λ|.
    let Condition::Number(k) = h.condition() else {
        panic!("{:?}", h.condition())
    };
    assert!((k - 300.0).abs() < 0.1, "{k}");
}

#[test]
fn a_non_finite_hessian_is_an_error_naming_the_entry() {
    // sqrt(x) at 0 has a finite loss but an infinite gradient, so no Hessian.
    let (ev, names) = evaluator(
        "name = \"n\"\ndtype = \"f64\"\nloss = \"sqrt(x) + y^2\"\n[params]\nx = 0.0\ny = 1.0\n",
    );
    let e = hessian_exact(&ev, &names, None, &Options::default()).unwrap_err();
    assert!(
        e.message
            .starts_with("the Hessian is not finite at these params: ∂²loss/∂x∂x is"),
        "{}",
        e.message
    );
}

// The command.

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn temp_file(test: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("gradscope-{test}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_command_reports_the_rosenbrock_hessian() {
    let o = gradscope(&["hessian", "losses/rosenbrock.toml", "--dtype", "f64"]);
    assert_eq!(o.status.code(), Some(0));
    insta::with_settings!({snapshot_path => "snapshots/hessian", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("rosenbrock_text", stdout(&o));
    });
}

#[test]
fn the_command_names_a_saddle() {
    let file = temp_file(
        "saddle",
        "name = \"saddle\"\ndtype = \"f64\"\nloss = \"x^2 - y^2\"\n[params]\nx = 0.0\ny = 0.0\n",
    );
    let o = gradscope(&["hessian", file.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("1 negative eigenvalue: a saddle"), "{out}");
}

#[test]
fn a_kink_under_the_finite_differences_is_explained() {
    // mse_l1 starts at w = 0, where the gradient of |w| jumps from -1 to 1.
    let o = gradscope(&["hessian", "losses/mse_l1.toml", "--dtype", "f64"]);
    let out = stdout(&o);
    assert!(
        out.contains("finite differences disagree: the gradient jumps"),
        "{out}"
    );
    let o = gradscope(&["hessian", "losses/rosenbrock.toml", "--dtype", "f64"]);
    assert!(!stdout(&o).contains("disagree"));
}

#[test]
fn json_has_the_matrix_and_the_spectrum() {
    let o = gradscope(&[
        "hessian",
        "losses/ill_conditioned_quadratic.toml",
        "--format",
        "json",
        "--dtype",
        "f64",
        "--at-step",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["step"], 3);
    assert_eq!(v["method"], "full");
    assert_eq!(v["dim"], 10);
    assert_eq!(v["hessian"].as_array().unwrap().len(), 10);
    assert_eq!(v["labels"][9], "w[9]");
    let k = v["condition_number"].as_f64().unwrap();
    assert!((k - 1000.0).abs() < 1e-9, "{k}");
    let top = v["eigenvalues"][9].as_f64().unwrap();
    assert!((top - 1000.0).abs() < 1e-9, "{top}");
    assert!((v["max_stable_lr"].as_f64().unwrap() - 0.002).abs() < 1e-15);
    assert_eq!(v["negative"], 0);
    assert_eq!(v["saddle"], false);
}

#[test]
fn past_the_limit_the_command_uses_lanczos() {
    // 2,001 params: one more than the full Hessian takes. 0.5 Σ d w², d = 1 … 2001.
    let file = temp_file(
        "lanczos",
        "name = \"big\"\ndtype = \"f64\"\nloss = \"0.5 * sum(d * w^2)\"\n[data]\nd = \"linspace(1, 2001, 2001)\"\n[params]\nw = \"ones(2001)\"\n",
    );
    let o = gradscope(&["hessian", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["method"], "lanczos");
    let top = &v["top"][0];
    let (value, residual) = (
        top["value"].as_f64().unwrap(),
        top["residual"].as_f64().unwrap(),
    );
    assert!((value - 2001.0).abs() <= residual + 1e-9, "{top}");
    let o = gradscope(&["hessian", file.to_str().unwrap()]);
    assert!(stdout(&o).contains("so Lanczos on exact Hessian-vector products"));
}

#[test]
fn param_restricts_and_a_wrong_name_suggests_one() {
    let o = gradscope(&[
        "hessian",
        "losses/rosenbrock.toml",
        "--param",
        "y",
        "--dtype",
        "f64",
    ]);
    let out = stdout(&o);
    assert!(out.contains("Hessian of y (1 × 1)"), "{out}");
    assert!(out.contains("200"), "{out}");
    let file = temp_file(
        "param_name",
        "name = \"p\"\nloss = \"sum(weight^2)\"\n[params]\nweight = \"[1, 2]\"\n",
    );
    let o = gradscope(&["hessian", file.to_str().unwrap(), "--param", "wieght"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("no param named `wieght`"), "{out}");
    assert!(out.contains("did you mean `weight`?"), "{out}");
}

#[test]
fn the_command_refuses_at_a_nonfinite_point() {
    let file = temp_file(
        "nonfinite",
        "name = \"halts\"\ndtype = \"f64\"\nloss = \"sqrt(detach(x)) + x\"\n[params]\nx = 2.5\n[optimizer]\nname = \"sgd\"\nlr = 1\n",
    );
    let o = gradscope(&["hessian", file.to_str().unwrap(), "--at-step", "10"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("no Hessian here: the loss is NaN at these params"),
        "{}",
        stdout(&o)
    );
}

// The TUI.

fn press(app: &mut App, c: char) {
    app.handle(Msg::Key(KeyEvent::new(
        KeyCode::Char(c),
        KeyModifiers::NONE,
    )));
}

/// The screen as text, after checking it against snapshot `name` when one is given.
fn screen(app: &App, name: Option<&str>) -> String {
    let mut t = Terminal::new(TestBackend::new(120, 40)).unwrap();
    t.draw(|f| render::render(f, app)).unwrap();
    if let Some(name) = name {
        insta::with_settings!({snapshot_path => "snapshots/hessian", prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(name, t.backend());
        });
    }
    let buf = t.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
                + "\n"
        })
        .collect()
}

#[test]
fn h_shows_the_spectrum_and_the_heat_map_of_a_small_model() {
    setup();
    let (mut app, rx) = App::detached(Path::new("losses/ill_conditioned_quadratic.toml"));
    app.settle(&rx);
    press(&mut app, 'h');
    app.settle(&rx);
    let run = &app.session().unwrap().runs[0];
    let Some((0, Ok(h))) = &run.hessian else {
        panic!(
            "no Hessian: {:?}",
            run.hessian.as_ref().map(|h| h.1.as_ref().err())
        )
    };
    assert!((h.lambda_max() - 1000.0).abs() < 1e-2, "{}", h.lambda_max());
    let text = screen(&app, Some("tui_ill_conditioned_quadratic"));
    assert!(
        text.contains("Spectrum: 10 eigenvalues, symlog scale"),
        "{text}"
    );
    assert!(text.contains("w[9]  "), "{text}");
    // j scrolls, any other key closes; the inspector keeps the summary.
    press(&mut app, 'j');
    assert!(matches!(app.popup, Some(Popup::Hessian { scroll: 1, .. })));
    press(&mut app, 'x');
    assert_eq!(app.popup, None);
    let text = screen(&app, None);
    assert!(text.contains("Hessian @0: λ 1 … 1000  0 neg"), "{text}");
}

#[test]
fn h_shows_the_spectrum_without_a_heat_map_past_64_params() {
    setup();
    let dir = PathBuf::from("target/hessian-test-mid");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mid.toml");
    // 0.5 Σ d w² - v²: 100 eigenvalues 1 … 100 and one -2, a saddle.
    std::fs::write(
        &file,
        "name = \"mid\"\nloss = \"0.5 * sum(d * w^2) - v^2\"\n[data]\nd = \"linspace(1, 100, 100)\"\n[params]\nw = \"ones(100)\"\nv = 0.5\n",
    )
    .unwrap();
    let (mut app, rx) = App::detached(&file);
    app.settle(&rx);
    press(&mut app, 'h');
    app.settle(&rx);
    let text = screen(&app, Some("tui_saddle_101_params"));
    assert!(
        text.contains("1 negative eigenvalue: a saddle here"),
        "{text}"
    );
    assert!(
        text.contains("(the heat map is drawn for at most 64 params; this block has 101)"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn h_falls_back_to_the_top_eigenvalue_past_the_limit() {
    setup();
    let dir = PathBuf::from("target/hessian-test-big");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big.toml");
    // 0.5 Σ w² + 500 v² over 2,001 params: λmax = 1000.
    std::fs::write(
        &file,
        "name = \"big\"\nloss = \"0.5 * sum(w^2) + 500 * v^2\"\n[params]\nw = \"ones(2000)\"\nv = 1.0\n",
    )
    .unwrap();
    let (mut app, rx) = App::detached(&file);
    app.settle(&rx);
    press(&mut app, 'h');
    app.settle(&rx);
    let text = screen(&app, Some("tui_curvature_fallback"));
    assert!(
        text.contains("2001 param values: more than the 2000 the whole Hessian takes"),
        "{text}"
    );
    assert!(text.contains("λmax 1000.0"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Past the full decomposition's limit, a Hessian whose spectrum reaches 0 from one side is
/// singular, not "indefinite": zero everywhere (`sum(W)`), and positive semi-definite with
/// zero directions (`sum(w[0:150]^2)` over 300 values).
#[test]
fn lanczos_calls_a_spectrum_ending_at_zero_singular() {
    let options = Options {
        full_limit: 100,
        ..Options::default()
    };
    for loss in ["sum(w)", "sum(w[0:150]^2)"] {
        let (ev, names) = evaluator(&format!(
            "name = \"z\"\ndtype = \"f64\"\nloss = \"{loss}\"\n[params]\nw = \"ones(300)\"\n"
        ));
        let h = hessian_exact(&ev, &names, None, &options).unwrap();
        assert!(matches!(h.method, Method::Lanczos(_)), "{loss}");
        assert_eq!(h.condition(), Condition::Singular, "{loss}");
        assert!(
            h.condition_words().starts_with("infinite: singular"),
            "{loss}"
        );
    }
}
