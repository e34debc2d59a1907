//! Per-param settings (torch's param groups): a run whose params step in groups equals the
//! separate optimizers of each group, `lr_scale` multiplies the scheduled lr, variants lay
//! their per-param tables over the file's, and `-o` keeps them.

mod common;

use std::path::Path;

use gradscope::compile::{CompiledFile, compile};
use gradscope::lang::file::load_bytes;
use gradscope::optim::groups::{GroupError, LR_SCALE, ParamSettings, Written, param_groups};
use gradscope::optim::spec::{HyperValue, OptimizerKind, OptimizerSpec, RawValue};
use gradscope::run::{Run, RunRequest};

fn compiled(text: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new("t.toml"), text.as_bytes().to_vec());
    let file = loaded
        .file
        .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    let (c, d) = compile(file);
    c.unwrap_or_else(|| panic!("{d:?}"))
}

/// Definition `def` of `c` as the file describes it.
fn run(c: &CompiledFile, def: usize) -> Run {
    Run::new(c, RunRequest::of(c, def).expect("a definition")).expect("starts")
}

/// A loss separable in `w`, `b` and `v`, so each param's gradient is the one it has alone.
const SEPARABLE: &str = r#"
name = "groups"
dtype = "f64"
loss = """
sum((w - [1, -2, 3])^2) + sum(log(1 + exp(b - 0.5))) + sum((v - [0.5, 0.25])^4)
"""
[params]
w = "[0.3, 0.1, -0.2]"
b = "[2.0]"
v = "[-1.0, 1.5]"
"#;

/// The separable loss without `b`, or with `b` only.
const W_AND_V: &str = r#"
name = "w and v"
dtype = "f64"
loss = "sum((w - [1, -2, 3])^2) + sum((v - [0.5, 0.25])^4)"
[params]
w = "[0.3, 0.1, -0.2]"
v = "[-1.0, 1.5]"
"#;
const B_ONLY: &str = r#"
name = "b"
dtype = "f64"
loss = "sum(log(1 + exp(b - 0.5)))"
[params]
b = "[2.0]"
"#;

#[test]
fn a_group_run_equals_the_separate_optimizers_of_its_groups() {
    // torch: AdamW([{params: [w, v], weight_decay: 0.01}, {params: [b], weight_decay: 0}]) takes
    // the steps of AdamW([w, v], weight_decay=0.01) and AdamW([b], weight_decay=0) side by side.
    let optimizer = "[optimizer]\nname = \"adamw\"\nlr = 0.05\nweight_decay = 0.01\n";
    let grouped = compiled(&format!(
        "{SEPARABLE}{optimizer}[optimizer.params.b]\nweight_decay = 0\n"
    ));
    let both = compiled(&format!("{W_AND_V}{optimizer}"));
    let alone = compiled(&format!(
        "{B_ONLY}{optimizer}[optimizer.params.b]\nweight_decay = 0\n"
    ));
    let (mut g, mut wv, mut b) = (run(&grouped, 0), run(&both, 0), run(&alone, 0));
    for step in 1..=30 {
        g.step().unwrap();
        wv.step().unwrap();
        b.step().unwrap();
        let p = g.param_values();
        let (want_wv, want_b) = (wv.param_values(), b.param_values());
        assert_eq!(p[0], want_wv[0], "w at step {step}");
        assert_eq!(p[1], want_b[0], "b at step {step}");
        assert_eq!(p[2], want_wv[1], "v at step {step}");
    }
    // And the decay made a difference: b with decay 0.01 ends elsewhere.
    let decayed = compiled(&format!("{B_ONLY}{optimizer}"));
    let mut d = run(&decayed, 0);
    for _ in 0..30 {
        d.step().unwrap();
    }
    assert_ne!(d.param_values()[0], b.param_values()[0]);
}

#[test]
fn lr_scale_multiplies_the_scheduled_lr() {
    // L = (w b - 1)^2 / 2: g_w = (w b - 1) b, g_b = (w b - 1) w. SGD with ExponentialLR:
    // lr_t = 0.1 * 0.9^t, and b steps at lr_scale = 0.25 times that.
    let c = compiled(
        r#"
name = "scaled"
dtype = "f64"
loss = "(w * b - 1)^2 / 2"
[params]
w = "0.5"
b = "2.0"
[optimizer]
name = "sgd"
lr = 0.1
schedule = "exponential"
gamma = 0.9
[optimizer.params.b]
lr_scale = 0.25
"#,
    );
    let mut r = run(&c, 0);
    let (mut w, mut b) = (0.5f64, 2.0f64);
    for t in 0..20 {
        let lr = 0.1 * 0.9f64.powi(t);
        let e = w * b - 1.0;
        (w, b) = (w - lr * e * b, b - 0.25 * lr * e * w);
        r.step().unwrap();
        let p = r.param_values();
        assert!((p[0][0] - w).abs() < 1e-14, "w at step {}: {p:?}", t + 1);
        assert!((p[1][0] - b).abs() < 1e-14, "b at step {}: {p:?}", t + 1);
    }
}

#[test]
fn params_with_the_same_settings_share_a_group() {
    let names: Vec<String> = ["w", "b", "v", "c"].map(String::from).to_vec();
    let spec = OptimizerSpec::parse("adamw(lr=0.01)").unwrap();
    let wd0 = |p: &str| ParamSettings {
        param: p.into(),
        hyper: vec![("weight_decay".into(), Written::Number(0.0))],
        lr_scale: 1.0,
    };
    // `c` writes adamw's default decay: the same spec as the params without settings.
    let same_as_base = ParamSettings {
        param: "c".into(),
        hyper: vec![("weight_decay".into(), Written::Number(0.01))],
        lr_scale: 1.0,
    };
    let groups = param_groups(&spec, &[wd0("b"), wd0("v"), same_as_base], &names).unwrap();
    let members: Vec<&[usize]> = groups.iter().map(|g| g.params.as_slice()).collect();
    assert_eq!(members, [&[0, 3][..], &[1, 2][..]]);
    assert_eq!(groups[0].spec, spec);
    assert_eq!(
        groups[1].spec.get("weight_decay"),
        Some(HyperValue::Number(0.0))
    );
}

#[test]
fn keys_another_optimizer_lacks_are_left_out_and_lr_scale_stays() {
    // `-o rprop`-like: the run's optimizer has no `amsgrad`; b keeps only its lr multiplier.
    let names: Vec<String> = ["w", "b"].map(String::from).to_vec();
    let settings = ParamSettings::from_table(
        "b",
        &[
            ("amsgrad", RawValue::Bool(true)),
            (LR_SCALE, RawValue::Number(0.5)),
        ],
    );
    let sgd = OptimizerSpec::parse("sgd(lr=0.1)").unwrap();
    let groups = param_groups(&sgd, &[settings], &names).unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!((groups[1].spec.clone(), groups[1].lr_scale), (sgd, 0.5));
}

#[test]
fn an_unknown_param_or_a_refused_combination_is_an_error_naming_it() {
    let names: Vec<String> = ["w", "bias"].map(String::from).to_vec();
    let spec = OptimizerSpec::parse("sgd(lr=0.1, momentum=0.9, nesterov=true)").unwrap();
    let typo = ParamSettings::from_table("bais", &[]);
    let e = param_groups(&spec, &[typo], &names).unwrap_err();
    assert_eq!(e.error.help.as_deref(), Some("did you mean `bias`?"));
    let dampened = ParamSettings::from_table("bias", &[("dampening", RawValue::Number(0.5))]);
    let GroupError { param, key, error } = param_groups(&spec, &[dampened], &names).unwrap_err();
    assert_eq!((param.as_str(), key.as_deref()), ("bias", Some("nesterov")));
    assert!(error.message.starts_with("nesterov needs"), "{error}");
}

#[test]
fn optimizers_that_step_every_param_as_one_refuse_groups() {
    // torch's LBFGS "doesn't support per-parameter options (parameter groups)"; every
    // other torch.optim optimizer takes them.
    for &kind in OptimizerKind::ALL {
        if kind.name() == "lbfgs" {
            assert!(!kind.takes_param_groups(), "lbfgs must refuse groups");
        }
        if kind.group() == gradscope::optim::spec::Group::Torch && kind.name() != "lbfgs" {
            assert!(kind.takes_param_groups(), "{}", kind.name());
        }
        if kind.takes_param_groups() {
            continue;
        }
        let names: Vec<String> = ["w", "b"].map(String::from).to_vec();
        let spec = OptimizerSpec::new(kind);
        let scaled = ParamSettings::from_table("b", &[(LR_SCALE, RawValue::Number(0.5))]);
        let e = param_groups(&spec, &[scaled], &names).unwrap_err();
        assert!(
            e.error.message.contains("takes no per-param settings"),
            "{e}"
        );
        // Settings that change nothing for it form no second group and pass.
        let same = ParamSettings::from_table("b", &[]);
        assert_eq!(param_groups(&spec, &[same], &names).unwrap().len(), 1);
    }
}

#[test]
fn a_variant_lays_its_per_param_tables_over_the_files_key_by_key() {
    let c = compiled(
        r#"
name = "v"
dtype = "f64"
loss = "(w * b - 1)^2"
[params]
w = "0.5"
b = "2.0"
[optimizer]
name = "adamw"
[optimizer.params.b]
weight_decay = 0
lr_scale = 2

[[variants]]
name = "b slower"
[variants.optimizer.params.b]
lr_scale = 0.5
[variants.optimizer.params.w]
amsgrad = true
"#,
    );
    let b = |def: usize| {
        let s = c.runs[def].param_settings.iter().find(|s| s.param == "b");
        s.cloned().expect("b has settings")
    };
    assert_eq!(b(0).lr_scale, 2.0);
    assert_eq!(b(1).lr_scale, 0.5);
    assert_eq!(b(1).hyper, b(0).hyper, "the file's weight_decay = 0 stays");
    assert_eq!(c.runs[1].param_settings.len(), 2);
    assert!(c.runs[0].param_settings.iter().all(|s| s.param != "w"));
}

#[test]
fn another_optimizer_on_the_command_line_keeps_the_per_param_settings() {
    // The file's adamw is replaced by sgd with weight decay 0.1; b keeps weight_decay = 0:
    // w' = w - lr (g_w + 0.1 w), b' = b - lr g_b, with L = w^2/2 + b^2/2, so g = the param.
    let c = compiled(
        r#"
name = "o"
dtype = "f64"
loss = "w^2 / 2 + b^2 / 2"
[params]
w = "1.0"
b = "1.0"
[optimizer]
name = "adamw"
[optimizer.params.b]
weight_decay = 0
"#,
    );
    let mut request = RunRequest::of(&c, 0).unwrap();
    request.settings.optimizer = OptimizerSpec::parse("sgd(lr=0.1, weight_decay=0.1)").unwrap();
    let mut r = Run::new(&c, request).unwrap();
    r.step().unwrap();
    let p = r.param_values();
    assert!((p[0][0] - (1.0 - 0.1 * 1.1)).abs() < 1e-15, "{p:?}");
    assert!((p[1][0] - 0.9).abs() < 1e-15, "{p:?}");
}

#[test]
fn an_o_that_the_per_param_settings_refuse_names_both() {
    // b's dampening is fine under the file's sgd; `-o sgd(nesterov=true)` makes b's group one
    // torch refuses.
    let dir = std::env::temp_dir().join(format!("gradscope-groups-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("groups.toml");
    std::fs::write(
        &path,
        r#"
name = "groups"
loss = "(w * b - 1)^2"
[params]
w = "0.5"
b = "2.0"
[optimizer]
name = "sgd"
momentum = 0.9
[optimizer.params.b]
dampening = 0.5
"#,
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let ok = common::gradscope(&["run", file, "--steps", "2"]);
    assert!(ok.status.success());
    let refused = common::gradscope(&["run", file, "-o", "sgd(nesterov=true)", "--steps", "2"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("-o sgd(nesterov=true): [optimizer.params.b]: nesterov needs momentum > 0"),
        "{stderr}"
    );
}
