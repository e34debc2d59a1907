//! Curvature: the top eigenvalue against closed forms and finite differences, 2/λ, and the TUI's
//! `h` key past the whole Hessian's size. One test, which sets up the process (and its curvature
//! thread) first.

use std::path::Path;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use gradscope::compile::curvature::top_eigenvalue_exact as top_eigenvalue;
use gradscope::compile::{Evaluator, compile};
use gradscope::lang::file::load_bytes;
use gradscope::tui::app::{App, Msg};

fn evaluator(text: &str) -> Evaluator {
    let loaded = load_bytes(Path::new("c.toml"), text.as_bytes().to_vec());
    let (c, d) = compile(loaded.file.expect("loads"));
    Evaluator::new(&c.unwrap_or_else(|| panic!("{d:?}")), 0).unwrap()
}

#[test]
fn top_eigenvalue_matches_closed_forms_and_finite_differences() {
    gradscope::init_process(None);

    // 0.5 w^T diag(1, 10, 100) w has Hessian diag(1, 10, 100): λ = 100, 2/λ = 0.02.
    let ev = evaluator(
        "name = \"q\"\ndtype = \"f64\"\nloss = \"0.5 * sum(d * w^2)\"\n[data]\nd = \"[1, 10, 100]\"\n[params]\nw = \"[1, 1, 1]\"\n",
    );
    let c = top_eigenvalue(&ev, 100, 0).unwrap();
    assert!((c.lambda - 100.0).abs() < 1e-6, "{c:?}");
    assert!((c.max_stable_lr().unwrap() - 0.02).abs() < 1e-9);
    assert!(c.fd_rel_err < 1e-6, "{c:?}");

    // At a saddle the eigenvalue of largest magnitude is negative: x² - 10y² + y⁴ at (1, 0.1)
    // has H = diag(2, -20 + 12y²) = diag(2, -19.88). The top one is 2 (2/λ = 1), not -19.88;
    // where every eigenvalue is negative, the top is the one nearest 0.
    for (loss, want) in [("x^2 - 10 * y^2 + y^4", 2.0), ("-x^2 - 10 * y^2", -2.0)] {
        let ev = evaluator(&format!(
            "name = \"s\"\ndtype = \"f64\"\nloss = \"{loss}\"\n[params]\nx = 1.0\ny = 0.1\n"
        ));
        let c = top_eigenvalue(&ev, 100, 0).unwrap();
        assert!((c.lambda - want).abs() < 1e-6, "{loss}: {c:?}");
        assert!(c.fd_rel_err < 1e-6, "{loss}: {c:?}");
    }

    // Rosenbrock at (-1.5, 2): H = [[1200x² - 400y + 2, -400x], [-400x, 200]] = [[1902, 600],
    // [600, 200]], λ = (2102 + sqrt(2102² - 4·20400)) / 2.
    let ev = evaluator(
        "name = \"r\"\ndtype = \"f64\"\nloss = \"(1 - x)^2 + 100 * (y - x^2)^2\"\n[params]\nx = -1.5\ny = 2.0\n",
    );
    let c = top_eigenvalue(&ev, 100, 0).unwrap();
    let want = (2102.0 + (2102.0f64.powi(2) - 4.0 * 20400.0).sqrt()) / 2.0;
    assert!(
        (c.lambda - want).abs() < 1e-6 * want,
        "{} vs {want}",
        c.lambda
    );
    assert!(c.fd_rel_err < 1e-6, "{c:?}");

    // Through the fused tanh and bias-add ops of an MLP, the product still matches differences.
    let ev = evaluator(
        "name = \"m\"\ndtype = \"f64\"\nseed = 1\nloss = \"mean((tanh(X @ W + b) @ v - y)^2)\"\n[data]\nX = \"randn(16, 4)\"\ny = \"randn(16)\"\n[params]\nW = \"randn(4, 8) / 2\"\nb = \"zeros(8)\"\nv = \"randn(8) / 3\"\n",
    );
    let c = top_eigenvalue(&ev, 200, 0).unwrap();
    assert!(c.lambda > 0.0 && c.fd_rel_err < 1e-5, "{c:?}");

    // And through a chain of dense layers backpropagated as one node (`compile::dense`), with a
    // param as its input and a layer without bias.
    let ev = evaluator(
        "name = \"c\"\ndtype = \"f64\"\nseed = 2\nloss = \"\"\"\nh1 = tanh(P @ W1 + b1)\nh2 = tanh(h1 @ W2)\n\
         mean((reshape(h2 @ W3 + b3, -1) - y)^2)\n\"\"\"\n[data]\ny = \"randn(16)\"\n[params]\n\
         P = \"randn(16, 4) / 2\"\nW1 = \"randn(4, 6) / 2\"\nb1 = \"randn(6) / 4\"\n\
         W2 = \"randn(6, 5) / 2\"\nW3 = \"randn(5, 1) / 2\"\nb3 = \"[0.1]\"\n",
    );
    let c = top_eigenvalue(&ev, 200, 0).unwrap();
    assert!(c.lambda > 0.0 && c.fd_rel_err < 1e-5, "{c:?}");

    // Through the products of data with a param (`compile::matvec`, each the other's backward):
    // 0.5 |X w|² has Hessian XᵀX = diag(1, 9), 0.5 |v A|² has A Aᵀ = diag(16, 1).
    for (loss, want) in [
        ("0.5 * sum((X @ w)^2)", 9.0),
        ("0.5 * sum((w @ A)^2)", 16.0),
    ] {
        let ev = evaluator(&format!(
            "name = \"p\"\ndtype = \"f64\"\nloss = \"{loss}\"\n[data]\n\
             X = \"[[1, 0], [0, 3], [0, 0]]\"\nA = \"[[4, 0, 0], [0, 1, 0]]\"\n\
             [params]\nw = \"[1, 1]\"\n"
        ));
        let c = top_eigenvalue(&ev, 100, 0).unwrap();
        assert!((c.lambda - want).abs() < 1e-6 * want, "{loss}: {c:?}");
        assert!(c.fd_rel_err < 1e-6, "{loss}: {c:?}");
    }

    // The TUI's `h` falls back to it for a model past the whole Hessian's 2,000 param values:
    // 0.5 Σ w² + 500 v² has λ = 1 (2,000 times) and 1000.
    let dir = std::path::PathBuf::from("target/curvature-test-big");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big.toml");
    std::fs::write(
        &file,
        "name = \"big\"\nloss = \"0.5 * sum(w^2) + 500 * v^2\"\n[params]\nw = \"ones(2000)\"\nv = 1.0\n",
    )
    .unwrap();
    let (mut app, rx) = App::detached(&file);
    app.settle(&rx);
    app.handle(Msg::Key(KeyEvent::new(
        KeyCode::Char('h'),
        KeyModifiers::NONE,
    )));
    app.settle(&rx);
    let run = &app.session().unwrap().runs[0];
    assert!(run.hessian.is_none());
    let (step, c) = run.curvature.clone().expect("estimated");
    assert_eq!(step, 0);
    assert!((c.lambda - 1000.0).abs() < 1e-2, "{c:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
