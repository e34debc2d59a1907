//! Optimizers written in the loss language (`[optimizers.NAME]`): the bundled classics against
//! the built-ins they write out, closed forms of updates that read `t`, `gnorm` and
//! `step_loss`, rewinding through their state, the diagnostics of broken definitions, the
//! `optimizers/` folders and their scope, and non-finite updates traced to their op.

use std::path::{Path, PathBuf};

use gradscope::compile::trace::Pass;
use gradscope::compile::{CompiledFile, compile};
use gradscope::diagnostic::Diagnostic;
use gradscope::lang::file::load_bytes;
use gradscope::load::{self, LoadedFile};
use gradscope::optim::settings::NonFinitePolicy;
use gradscope::optim::spec::OptimizerSpec;
use gradscope::run::{Run, RunRequest};

/// Two problems as in tests/optim_reference.rs: Rosenbrock (two scalars) and a least-squares
/// fit (a vector and a scalar). Named as if in losses/, so losses/optimizers is in scope.
fn problem(name: &str, dtype: &str) -> (PathBuf, String) {
    let text = match name {
        "rosenbrock" => format!(
            "name = \"rosenbrock\"\ndtype = \"{dtype}\"\nloss = \"(1 - x)^2 + 100 * (y - x^2)^2\"\n\
             [params]\nx = -1.5\ny = 2.0\n"
        ),
        _ => format!(
            "name = \"lstsq\"\ndtype = \"{dtype}\"\nloss = \"mean((X @ w + b - y)^2)\"\n[data]\n\
             X = \"reshape(linspace(-1, 1, 24), 8, 3)\"\ny = \"sin(arange(8))\"\n[params]\n\
             w = \"[0.1, -0.2, 0.3]\"\nb = 0.0\n"
        ),
    };
    (
        PathBuf::from(format!("losses/{name}-custom-test.toml")),
        text,
    )
}

/// `text` loaded as if from `path` (which need not exist): its folders' optimizers in scope.
fn loaded(path: &Path, text: &str) -> LoadedFile {
    load::load_bytes(path, text.as_bytes().to_vec())
}

fn compiled(path: &Path, text: &str) -> CompiledFile {
    let l = loaded(path, text);
    let diags: Vec<String> = l.diagnostics.iter().map(Diagnostic::headline).collect();
    l.compiled
        .unwrap_or_else(|| panic!("{}: {diags:#?}", path.display()))
}

/// A run of the file's base definition with `spec` (parsed against the file), for `steps`.
fn run(c: &CompiledFile, spec: &str, steps: u64) -> Run {
    let mut settings = c.runs[0].settings.clone();
    settings.optimizer = c.spec(spec).unwrap().base.over_defaults().unwrap();
    settings.steps = steps;
    settings.on_nonfinite = NonFinitePolicy::Stop;
    Run::new(c, RunRequest::new(c, 0, spec.into(), settings)).unwrap()
}

/// Whether `got` is within `rel` of `want`, relative to `want` (to 1e-3 below that).
fn close(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want.abs().max(1e-3)
}

#[test]
fn the_classics_equal_the_builtins_they_write_out_over_100_steps_in_f64() {
    let pairs = [
        ("adam_written(lr=0.01)", "adam(lr=0.01)"),
        (
            "nesterov_written(lr=0.001, momentum=0.9)",
            "sgd(lr=0.001, momentum=0.9, nesterov=true)",
        ),
        (
            "lion_written(lr=0.001, weight_decay=0.1)",
            "lion(lr=0.001, weight_decay=0.1)",
        ),
    ];
    let mut worst: f64 = 0.0;
    for prob in ["rosenbrock", "lstsq"] {
        let (path, text) = problem(prob, "f64");
        let c = compiled(&path, &text);
        for (written, builtin) in pairs {
            let (mut a, mut b) = (run(&c, written, 100), run(&c, builtin, 100));
            for step in 1..=100 {
                a.step().unwrap();
                b.step().unwrap();
                let (got, want) = (a.flat_params(), b.flat_params());
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        close(*g, *w, 1e-9),
                        "{prob} {written} vs {builtin}, step {step}: {g} vs {w}"
                    );
                    worst = worst.max((g - w).abs() / w.abs().max(1e-3));
                }
            }
        }
    }
    eprintln!("worst relative difference: {worst:e}");
}

#[test]
fn the_classics_run_finite_in_f32() {
    for prob in ["rosenbrock", "lstsq"] {
        let (path, text) = problem(prob, "f32");
        let c = compiled(&path, &text);
        for spec in ["adam_written(lr=0.01)", "nesterov_written", "lion_written"] {
            let mut r = run(&c, spec, 100);
            for _ in 0..100 {
                r.step().unwrap();
            }
            assert!(r.halted.is_none(), "{prob} {spec}");
            assert!(r.current_loss().unwrap().is_finite(), "{prob} {spec}");
        }
    }
}

/// A loss file (at `t.toml`, no folders in scope) of one param `w` whose `[optimizer]` names
/// `[optimizers.mine]`, with `settings` (lines) besides.
fn own(loss: &str, w: &str, mine: &str, settings: &str) -> String {
    format!(
        "name = \"t\"\ndtype = \"f64\"\nloss = \"{loss}\"\n[params]\nw = \"{w}\"\n\
         [optimizer]\nname = \"mine\"\n{settings}[optimizers.mine]\n{mine}\n"
    )
}

/// Steps the file `text` (at `t.toml`) with `mine` once per row of `want`, each row the params
/// after that step (to 1e-12).
fn steps_through(text: &str, want: &[Vec<f64>]) {
    let c = compiled(Path::new("t.toml"), text);
    let mut r = run(&c, "mine", want.len() as u64);
    for (k, want) in want.iter().enumerate() {
        r.step().unwrap();
        let got = r.flat_params();
        let off = got.iter().zip(want).any(|(g, w)| (g - w).abs() > 1e-12);
        assert!(!off, "step {}: {got:?} vs {want:?}", k + 1);
    }
}

#[test]
fn t_counts_updates_from_one() {
    // f = sum(w): g = 1 everywhere; w_k = w_0 - lr (1 + 2 + ... + k) = w_0 - lr k (k + 1) / 2.
    let text = own(
        "sum(w)",
        "[1, 2]",
        "hyper = { lr = 0.1 }\nupdate = \"p - lr * t * g\"",
        "",
    );
    let drop = |k: f64| 0.1 * k * (k + 1.0) / 2.0;
    let want: Vec<Vec<f64>> = (1..=10)
        .map(|k| vec![1.0 - drop(f64::from(k)), 2.0 - drop(f64::from(k))])
        .collect();
    steps_through(&text, &want);
}

#[test]
fn gnorm_and_step_loss_are_the_steps_global_values() {
    // Polyak's step on f = |w|^2 / 2: g = w, |g|^2 = 2 f, so w - f / |g|^2 g = w / 2.
    let text = own(
        "sum(w^2) / 2",
        "[3, -4]",
        "hyper = { lr = 1.0 }\nupdate = \"p - step_loss / gnorm^2 * g\"",
        "",
    );
    let want: Vec<Vec<f64>> = (1..=5)
        .map(|k| vec![3.0 * 0.5f64.powi(k), -4.0 * 0.5f64.powi(k)])
        .collect();
    steps_through(&text, &want);
}

#[test]
fn g_is_the_gradient_after_clipping_and_lr_the_scheduled_one() {
    // f = 10 sum(w): g = [10, 10], clipped to norm 1: 10 / (sqrt(200) + 1e-6) each (torch's
    // clip_grad_norm_); an exponential schedule with gamma 0.5 halves lr every step.
    let text = own(
        "10 * sum(w)",
        "[0, 0]",
        "hyper = { lr = 1.0 }\nupdate = \"p - lr * g\"",
        "clip_norm = 1\nschedule = \"exponential\"\ngamma = 0.5\n",
    );
    let g = 10.0 / (200f64.sqrt() + 1e-6);
    let w = |k: i32| -(0..k).map(|j| 0.5f64.powi(j) * g).sum::<f64>();
    let want: Vec<Vec<f64>> = (1..=3).map(|k| vec![w(k), w(k)]).collect();
    steps_through(&text, &want);
}

#[test]
fn sign_and_round_are_allowed_in_an_update() {
    // signSGD on f = |w|^2 / 2 from 1.25: each step moves lr = 0.5 against the sign.
    let text = own(
        "sum(w^2) / 2",
        "[1.25, -1.25]",
        "hyper = { lr = 0.5 }\nupdate = \"p - lr * sign(g) + 0 * round(g)\"",
        "",
    );
    let want: Vec<Vec<f64>> = [0.75, 0.25, -0.25].iter().map(|w| vec![*w, -w]).collect();
    steps_through(&text, &want);
}

#[test]
fn rewinding_restores_the_state_of_an_own_optimizer() {
    let (path, text) = problem("lstsq", "f64");
    let c = compiled(&path, &text);
    let mut r = run(&c, "adam_written(lr=0.05)", 250);
    let mut trail = Vec::new();
    for _ in 0..250 {
        r.step().unwrap();
        trail.push(r.flat_params());
    }
    r.rewind_to(137).unwrap();
    assert_eq!(r.flat_params(), trail[136]);
    for (k, want) in trail.iter().enumerate().skip(137) {
        r.step().unwrap();
        assert_eq!(&r.flat_params(), want, "step {}", k + 1);
    }
}

#[test]
fn own_optimizers_are_named_by_variants_and_keep_their_typed_values() {
    let text = own(
        "sum(w^2)",
        "[1, 2]",
        "hyper = { lr = 0.1, decay = 0.5 }\nupdate = \"p * decay - lr * g\"",
        "",
    ) + "[[variants]]\nname = \"slow\"\noptimizer = { decay = 0.9 }\n";
    let c = compiled(Path::new("t.toml"), &text);
    assert_eq!(c.runs[0].settings.optimizer.to_string(), "mine(lr=0.1)");
    assert_eq!(
        c.runs[1].settings.optimizer.to_string(),
        "mine(lr=0.1, decay=0.9)"
    );
    let over = c.spec("mine(decay=0.25)").unwrap();
    let spec = over.base.over(&c.runs[1].settings.optimizer).unwrap();
    assert_eq!(spec.to_string(), "mine(lr=0.1, decay=0.25)");
    assert_eq!(spec.kind(), None);
    assert_eq!(spec.name(), "mine");
}

/// The diagnostics of loading `text` as `t.toml`.
fn diagnostics(text: &str) -> Vec<Diagnostic> {
    let l = loaded(Path::new("t.toml"), text);
    assert!(l.compiled.is_none(), "{text}");
    l.diagnostics
}

/// The error whose message contains `says`, and the source text under its span.
fn error_at(diags: &[Diagnostic], says: &str) -> (Diagnostic, String) {
    let d = diags
        .iter()
        .find(|d| d.is_error() && d.message.contains(says))
        .unwrap_or_else(|| {
            let all: Vec<String> = diags.iter().map(Diagnostic::headline).collect();
            panic!("no error saying {says:?} in {all:#?}")
        })
        .clone();
    let text = d.source.as_ref().expect("a span").text[d.span.clone().expect("a span")].to_string();
    (d, text)
}

#[test]
fn broken_definitions_are_errors_at_their_spans() {
    // (the `[optimizers.mine]` body, or [optimizer] keys after `name`; what the error says; the
    // text its span covers).
    let adam = "hyper = { lr = 0.1, beta1 = 0.9 }\nstate = { m = \"zeros_like(p)\" }";
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "hyper = { lr = 0.1, beta2 = 0.9 }\nupdate = \"\"\"\nv = beta2 * v + g^2\np - lr * v\n\"\"\"",
            "",
            "unknown state `v`",
            "v",
        ),
        (
            &format!("{adam}\nupdate = \"\"\"\nm = bta1 * m + g\np - lr * m\n\"\"\""),
            "",
            "unknown name `bta1`",
            "bta1",
        ),
        (
            "hyper = { lr = 0.1 }\nstate = { m = \"zeros(5)\" }\nupdate = \"p - lr * m\"",
            "",
            "state `m` starts with shape [5], but its param has shape [3]",
            "zeros(5)",
        ),
        (
            &format!("{adam}\nupdate = \"\"\"\nm = sum(g)\np - lr * m\n\"\"\""),
            "",
            "state `m` has shape [3], but this line gives it shape []",
            "sum(g)",
        ),
        (
            "hyper = { lr = 0.1 }\nupdate = \"sum(p - lr * g)\"",
            "",
            "the update gives shape [], but the param has shape [3]",
            "sum(p - lr * g)",
        ),
        (
            &format!("{adam}\nupdate = \"\"\"\nm = beta1 * m + g\n\"\"\""),
            "",
            "the last line must be the param's new value, not an assignment",
            "m",
        ),
        (
            &format!("{adam}\nupdate = \"\"\"\ng = 2 * g\np - lr * g\n\"\"\""),
            "",
            "`g` is already a value every update is given",
            "g",
        ),
        (
            "hyper = { lr = 0.1, beta1 = 0.9 }\nupdate = \"p - lr * g\"",
            "bta1 = 0.5\n",
            "unknown setting `bta1` for `mine`",
            "bta1",
        ),
        (
            "hyper = { beta1 = 0.9 }\nupdate = \"p - g\"",
            "",
            "`hyper` needs `lr`",
            "{ beta1 = 0.9 }",
        ),
        (
            "hyper = { lr = 0.1, t = 1 }\nupdate = \"p - lr * g\"",
            "",
            "`t` is the 1-based update count, which every update is given",
            "t",
        ),
        (
            "hyper = { lr = 0.1, gamma = 1 }\nupdate = \"p - lr * g\"",
            "",
            "`gamma` is a run setting",
            "gamma",
        ),
        (
            "hyper = { lr = 0.1, m = 1 }\nstate = { m = 0 }\nupdate = \"p - lr * g\"",
            "",
            "`m` is already a hyper-parameter",
            "m",
        ),
        (
            "hyper = { lr = 0.1 }\nupdate = \"p - lr * g\"\nupdates = 1",
            "",
            "unknown key `updates` in an optimizer",
            "updates",
        ),
    ];
    for (body, settings, says, under) in cases {
        let text = format!(
            "name = \"t\"\nloss = \"sum(w^2)\"\n[params]\nw = \"[1, 2, 3]\"\n\
             [optimizer]\nname = \"mine\"\n{settings}[optimizers.mine]\n{body}\n"
        );
        let (d, text) = error_at(&diagnostics(&text), says);
        assert_eq!(text, *under, "{says}: {}", d.render(false));
        assert!(d.help.is_some(), "{says}: no help");
    }
}

#[test]
fn unused_locals_and_states_never_assigned_are_warnings() {
    let body = "hyper = { lr = 0.1 }\nstate = { m = 0 }\nupdate = \"\"\"\nx = 2 * g\np - lr * m * g\n\"\"\"";
    let l = loaded(Path::new("t.toml"), &own("sum(w^2)", "[1, 2]", body, ""));
    assert!(l.ok(), "warnings only");
    let warnings: Vec<(&str, &str)> = l
        .diagnostics
        .iter()
        .map(|d| {
            (
                d.message.as_str(),
                &d.source.as_ref().unwrap().text[d.span.clone().unwrap()],
            )
        })
        .collect();
    assert_eq!(
        warnings,
        [
            ("`x` is never used", "x"),
            (
                "state `m` is never assigned, so it keeps its initial value",
                "m"
            ),
        ]
    );
}

#[test]
fn an_own_optimizer_may_not_take_a_builtin_name() {
    let text = "name = \"t\"\nloss = \"sum(w^2)\"\n[params]\nw = 1\n\
                [optimizers.adam]\nhyper = { lr = 0.1 }\nupdate = \"p - lr * g\"\n";
    let (d, under) = error_at(&diagnostics(text), "`adam` is a built-in optimizer");
    assert_eq!(under, "adam");
    assert_eq!(
        d.help.as_deref(),
        Some("an optimizer of the file's own needs a name of its own, e.g. `my_adam`")
    );
}

#[test]
fn an_unknown_optimizer_name_suggests_the_files_own() {
    let text = "name = \"t\"\nloss = \"sum(w^2)\"\n[params]\nw = 1\n[optimizer]\nname = \"mien\"\n\
                [optimizers.mine]\nhyper = { lr = 0.1 }\nupdate = \"p - lr * g\"\n";
    let (d, under) = error_at(&diagnostics(text), "unknown optimizer `mien`");
    assert_eq!(under, "\"mien\"");
    assert_eq!(d.help.as_deref(), Some("did you mean `mine`?"));
}

#[test]
fn specs_are_checked_against_the_definition() {
    let text = own(
        "sum(w^2)",
        "[1]",
        "hyper = { lr = 0.1, beta = 0.9 }\nupdate = \"p - lr * beta * g\"",
        "",
    );
    let c = compiled(Path::new("t.toml"), &text);
    let e = c.spec("mine(bta=0.5)").unwrap_err();
    assert_eq!(e.message, "unknown setting `bta` for `mine`");
    assert_eq!(e.help.as_deref(), Some("did you mean `beta`?"));
    let e = c.spec("mine(lr=-1)").unwrap_err();
    assert!(e.message.starts_with("`lr` must be at least 0"), "{e}");
    let e = c.spec("mine(beta=x)").unwrap_err();
    assert_eq!(e.to_string(), "`x` is not a number");
    // Without the file, the name means nothing.
    assert!(OptimizerSpec::parse("mine").is_err());
}

#[test]
fn a_non_finite_update_is_traced_to_its_op_in_the_optimizers_file() {
    // sqrt(g - 10) is NaN where g < 10: the first step, g = 2 w = [2, 4].
    let body = "hyper = { lr = 0.1 }\nupdate = \"\"\"\nd = sqrt(g - 10)\np - lr * d\n\"\"\"";
    let text = own("sum(w^2)", "[1, 2]", body, "");
    let c = compiled(Path::new("t.toml"), &text);
    let mut r = run(&c, "mine", 5);
    r.step().unwrap();
    let halt = r.halted.clone().expect("halted");
    let p = halt.provenance.clone().expect("a provenance");
    assert_eq!(
        (p.pass, p.op.as_str(), p.count),
        (Pass::Update, "sqrt(g - 10)", 2)
    );
    let d = halt.diagnostic(r.source()).unwrap();
    let (line, col) = d.line_col().unwrap();
    let at = text
        .lines()
        .position(|l| l.starts_with("d = sqrt"))
        .unwrap()
        + 1;
    assert_eq!((line, col), (at, 5));
    assert!(d.message.contains("in the update"), "{}", d.message);
    assert_eq!(r.first_provenance.as_ref().map(|(s, _)| *s), Some(0));
}

/// A scratch folder under target/, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!("target/custom-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An optimizer file defining `name` as plain SGD with step size `scale * lr`.
fn sgd_file(name: &str, scale: f64) -> String {
    format!(
        "[optimizers.{name}]\nabout = \"sgd\"\nhyper = {{ lr = 0.1 }}\nupdate = \"p - {scale} * lr * g\"\n"
    )
}

const LOSS: &str = "name = \"t\"\ndtype = \"f64\"\nloss = \"sum(w^2) / 2\"\n[params]\nw = 1\n";

#[test]
fn an_optimizers_folder_serves_every_loss_file_below_it_and_the_nearest_wins() {
    let dir = Scratch::new("scope");
    dir.write("optimizers/a.toml", &sgd_file("shared", 1.0));
    dir.write("optimizers/b.toml", &sgd_file("far", 1.0));
    dir.write("sub/optimizers/a.toml", &sgd_file("shared", 2.0));
    let top = dir.write("top.toml", LOSS);
    let deep = dir.write("sub/deep/deep.toml", LOSS);
    let outside = Scratch::new("outside");
    let lonely = outside.write("lonely.toml", LOSS);
    // One step from w = 1 with lr 0.1 on w^2 / 2: 1 - scale * 0.1.
    let after_one = |file: &Path, spec: &str| {
        let (c, _) = load::load_compiled(file).unwrap();
        let mut r = run(&c, spec, 1);
        r.step().unwrap();
        r.flat_params()[0]
    };
    assert!((after_one(&top, "shared") - 0.9).abs() < 1e-15);
    assert!(
        (after_one(&deep, "shared") - 0.8).abs() < 1e-15,
        "the nearer folder wins"
    );
    assert!(
        (after_one(&deep, "far") - 0.9).abs() < 1e-15,
        "a farther folder still serves"
    );
    let (c, _) = load::load_compiled(&lonely).unwrap();
    assert!(c.spec("shared").is_err(), "not in scope");
    // The folders' files are no loss files, but check checks them.
    let (files, _) = load::discover(std::slice::from_ref(&dir.0));
    assert_eq!(
        files,
        vec![dir.0.join("top.toml"), dir.0.join("sub/deep/deep.toml")]
    );
    let (all, _) = load::discover_with_optimizers(std::slice::from_ref(&dir.0));
    assert_eq!(all.len(), 5);
}

/// Naming an optimizer that a folder above defines with an error says so, at the name, with
/// the file to fix: not "unknown optimizer" with another of the folder's names suggested.
#[test]
fn naming_a_folders_broken_optimizer_says_where_its_errors_are() {
    let dir = Scratch::new("broken");
    let opt = dir.write(
        "optimizers/o.toml",
        "[optimizers.half]\nhyper = { lr = 0.1 }\nupdate = \"p - lr * g +\"\n\
         [optimizers.halves]\nhyper = { lr = 0.1 }\nupdate = \"p - lr * g\"\n",
    );
    let loss = dir.write(
        "sub/loss.toml",
        &format!("{LOSS}[optimizer]\nname = \"half\"\n"),
    );
    let diags = load::load(&loss).diagnostics;
    let named = diags
        .iter()
        .find(|d| d.file() == Some(loss.as_path()))
        .expect("an error at the loss file");
    assert_eq!(
        named.message,
        format!("optimizer `half` has errors in {}", opt.display())
    );
    assert_eq!(named.line_col(), Some((7, 8)));
    assert!(
        !diags
            .iter()
            .any(|d| d.message.contains("unknown optimizer"))
    );
}

#[test]
fn a_non_finite_update_of_a_folders_optimizer_points_into_its_file() {
    let dir = Scratch::new("nan");
    let opt = dir.write(
        "optimizers/o.toml",
        "[optimizers.rooted]\nhyper = { lr = 0.1 }\nupdate = \"p - lr * sqrt(g - 10)\"\n",
    );
    let loss = dir.write(
        "loss.toml",
        &format!("{LOSS}[optimizer]\nname = \"rooted\"\n"),
    );
    let (c, _) = load::load_compiled(&loss).unwrap();
    let mut r = run(&c, "rooted", 3);
    r.step().unwrap();
    let halt = r.halted.clone().expect("halted");
    let p = halt.provenance.clone().expect("a provenance");
    assert_eq!(p.op, "sqrt(g - 10)");
    let d = halt.diagnostic(r.source()).unwrap();
    assert_eq!(d.file(), Some(opt.as_path()));
    assert_eq!(d.line_col(), Some((3, 20)));
    let summary = p.summary_at(r.source());
    assert!(
        summary.starts_with(&format!(
            "{}:3:20 `sqrt(g - 10)` in the update",
            opt.display()
        )),
        "{summary}"
    );
}

#[test]
fn check_checks_an_optimizer_file_as_one() {
    let dir = Scratch::new("check");
    let good = dir.write("optimizers/good.toml", &sgd_file("fine", 1.0));
    let twice = dir.write("optimizers/twice.toml", &sgd_file("fine", 2.0));
    let stray = dir.write(
        "optimizers/stray.toml",
        "name = \"a loss\"\n[optimizers.odd]\nhyper = { lr = 1 }\nupdate = \"sum(p - lr * g, axis=0)\"\n",
    );
    let ok = load::load(&good);
    assert!(ok.ok(), "{:?}", ok.diagnostics);
    assert_eq!(ok.name.as_deref(), Some("optimizers: fine"));
    let (_, under) = error_at(
        &load::load(&twice).diagnostics,
        "optimizer `fine` is already defined in",
    );
    assert_eq!(under, "fine");
    let stray = load::load(&stray).diagnostics;
    let (_, under) = error_at(&stray, "`name` in an optimizer file");
    assert_eq!(under, "name");
    // Lowered for a [2, 3] param: the update's shape is [3], not [2, 3].
    let (_, under) = error_at(
        &stray,
        "the update gives shape [3], but the param has shape [2, 3]",
    );
    assert_eq!(under, "sum(p - lr * g, axis=0)");
}

#[test]
fn an_inherited_optimizer_that_cannot_run_on_a_file_says_why_where_it_is_named() {
    let dir = Scratch::new("unusable");
    dir.write(
        "optimizers/rows.toml",
        "[optimizers.rows]\nhyper = { lr = 0.1 }\nupdate = \"p - lr * g / sum(g, axis=1)\"\n",
    );
    let text = "name = \"t\"\nloss = \"sum(w^2)\"\n[params]\nw = \"[1, 2]\"\n";
    // Not named: the file loads, and a spec naming it says why it cannot run.
    let free = dir.write("free.toml", text);
    let (c, _) = load::load_compiled(&free).unwrap();
    let e = c.spec("rows").unwrap_err();
    assert_eq!(
        e.message,
        "optimizer `rows` does not compile for this file's params"
    );
    assert!(e.help.unwrap().contains("rows.toml"));
    // Named: an error at the name, and the optimizer's own error in its file.
    let named = dir.write(
        "named.toml",
        &format!("{text}[optimizer]\nname = \"rows\"\n"),
    );
    let diags = load::load(&named).diagnostics;
    let (_, under) = error_at(
        &diags,
        "optimizer `rows` does not compile for this file's params",
    );
    assert_eq!(under, "\"rows\"");
    let (d, _) = error_at(&diags, "axis 1 is out of range for shape [2]");
    assert!(
        d.file().unwrap().ends_with("optimizers/rows.toml"),
        "{}",
        d.headline()
    );
}

#[test]
fn broken_optimizer_files_are_reported_with_the_loss_files_that_fail() {
    let dir = Scratch::new("broken");
    dir.write("optimizers/bad.toml", "[optimizers.bad\n");
    let fine = dir.write("fine.toml", LOSS);
    assert!(
        load::load(&fine).ok(),
        "a broken neighbour breaks no loss file"
    );
    let named = dir.write(
        "named.toml",
        &format!("{LOSS}[optimizer]\nname = \"bad\"\n"),
    );
    let diags = load::load(&named).diagnostics;
    error_at(&diags, "unknown optimizer `bad`");
    let (d, _) = error_at(&diags, "invalid TOML");
    assert!(d.file().unwrap().ends_with("optimizers/bad.toml"));
}

#[test]
fn the_bundled_classics_check_and_every_loss_in_losses_may_name_them() {
    let l = load::load(Path::new("losses/optimizers/classics.toml"));
    assert!(l.ok(), "{:?}", l.diagnostics);
    assert_eq!(
        l.name.as_deref(),
        Some("optimizers: adam_written, nesterov_written, lion_written")
    );
    let (c, _) = load::load_compiled(Path::new("losses/bench/mlp.toml")).unwrap();
    let names: Vec<&str> = c
        .optimizers
        .iter()
        .map(|o| o.signature().name.as_str())
        .collect();
    assert_eq!(names, ["adam_written", "nesterov_written", "lion_written"]);
}

#[test]
fn o_names_an_optimizer_of_the_folder_on_the_command_line() {
    let gradscope = |o: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gradscope"))
            .args(["run", "losses/rosenbrock.toml", "-o", o, "--steps", "2"])
            .args(["--format", "jsonl"])
            .output()
            .unwrap()
    };
    let out = gradscope("adam_written(beta2=0.99)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["summary"] == true)
        .unwrap();
    // rosenbrock.toml's optimizer is adam: another optimizer starts from its own defaults.
    assert_eq!(summary["optimizer"], "adam_written(lr=0.001, beta2=0.99)");
    let out = gradscope("adam_writen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("unknown optimizer `adam_writen` (did you mean `adam_written`?)"),
        "{stderr}"
    );
}

#[test]
fn lang_level_loading_sees_no_folder() {
    // lang::file::load_bytes checks one file alone: only its own optimizers are nameable.
    let (_, text) = problem("rosenbrock", "f64");
    let l = load_bytes(
        Path::new("losses/x.toml"),
        format!("{text}[optimizer]\nname = \"adam_written\"\n").into_bytes(),
    );
    assert!(l.file.is_none());
    let (c, _) = compile(
        load_bytes(Path::new("losses/x.toml"), text.into_bytes())
            .file
            .unwrap(),
    );
    assert!(c.unwrap().optimizers.is_empty());
}

mod tui {
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use gradscope::tui::app::{App, Msg, Popup};
    use gradscope::tui::session::Link;

    use super::{LOSS, Scratch, sgd_file};

    fn press(app: &mut App, code: KeyCode) {
        app.handle(Msg::Key(KeyEvent::new(code, KeyModifiers::NONE)));
    }

    /// Each run's name and its param `w` after the steps taken.
    fn runs(app: &App) -> Vec<(String, Option<f64>)> {
        let s = app.session().expect("a session");
        s.runs
            .iter()
            .map(|r| {
                let w = r.params.first().and_then(|p| p.value.values.clone());
                (r.info.name.clone(), w.map(|v| v[0]))
            })
            .collect()
    }

    #[test]
    fn the_add_run_dialog_offers_the_files_own_and_reloads_follow_the_optimizer_file() {
        let dir = Scratch::new("tui");
        let opt = dir.write("optimizers/o.toml", &sgd_file("mine", 1.0));
        dir.write("loss.toml", LOSS);
        let (mut app, rx) = App::detached(&dir.0);
        app.settle(&rx);
        assert_eq!(app.files.len(), 1, "the optimizer file is no loss file");

        // `o`, down to the file's own, enter twice: a run of it.
        press(&mut app, KeyCode::Char('o'));
        let entries = app.catalogue();
        let at = entries.iter().position(|e| e.name() == "mine");
        let at = at.expect("the file's own optimizer is listed");
        assert_eq!(
            entries[at].section.title(),
            "written for this file (its own, optimizers/)"
        );
        press(&mut app, KeyCode::Home);
        for _ in 0..at {
            press(&mut app, KeyCode::Down);
        }
        press(&mut app, KeyCode::Enter);
        let Some(Popup::EditSpec { text, .. }) = app.popup.clone() else {
            panic!("expected the spec editor, got {:?}", app.popup);
        };
        assert_eq!(text.text(), "mine(lr=0.1)");
        press(&mut app, KeyCode::Enter);
        app.settle(&rx);
        press(&mut app, KeyCode::Char('n'));
        app.settle(&rx);
        // w^2 / 2 from 1: adam(lr=0.001) moves by 0.001, mine by lr w = 0.1.
        let after = runs(&app);
        assert_eq!(after.len(), 2);
        assert_eq!(after[1].0, "base · mine(lr=0.1)");
        assert!((after[1].1.unwrap() - 0.9).abs() < 1e-7, "{after:?}");

        // Doubling the step in the optimizer file restarts the runs with the new definition.
        std::fs::write(&opt, sgd_file("mine", 2.0)).unwrap();
        app.handle(Msg::FileChanged(opt.clone()));
        app.settle(&rx);
        let message = app.message.clone().unwrap_or_default();
        assert!(
            message.contains("2 runs restarted (optimizer mine changed)"),
            "{message}"
        );
        press(&mut app, KeyCode::Char('n'));
        app.settle(&rx);
        let after = runs(&app);
        assert!((after[1].1.unwrap() - 0.8).abs() < 1e-7, "{after:?}");

        // An optimizer gone from the folder takes its runs with it.
        std::fs::write(&opt, sgd_file("other", 1.0)).unwrap();
        app.handle(Msg::FileChanged(opt.clone()));
        app.settle(&rx);
        let s = app.session().unwrap();
        assert_eq!(s.runs[1].link, Link::Gone);
    }

    #[test]
    fn a_tui_on_one_loss_file_reloads_it_when_an_optimizer_file_above_it_changes() {
        let dir = Scratch::new("tui-one");
        let opt = dir.write("optimizers/o.toml", &sgd_file("mine", 1.0));
        let loss = dir.write(
            "sub/loss.toml",
            &format!("{LOSS}[optimizer]\nname = \"mine\"\n"),
        );
        let (mut app, rx) = App::detached(&loss);
        app.settle(&rx);
        assert!(
            app.files[0].reads.contains(&opt),
            "{:?}",
            app.files[0].reads
        );
        std::fs::write(&opt, sgd_file("mine", 2.0)).unwrap();
        app.handle(Msg::FileChanged(opt.clone()));
        app.settle(&rx);
        let message = app.message.clone().unwrap_or_default();
        assert!(
            message.contains("1 run restarted (optimizer mine changed)"),
            "{message}"
        );
    }
}
