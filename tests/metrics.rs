//! `[metrics]`: named scalar expressions evaluated beside the loss, without gradients, at the
//! params a run is at; in `run`'s CSV and JSONL at the logged steps, and in its summary.

use std::path::Path;

use gradscope::compile::{CompiledFile, Evaluator, compile};
use gradscope::lang::file::load_bytes;

fn compiled(text: &str) -> CompiledFile {
    let loaded = load_bytes(Path::new("t.toml"), text.as_bytes().to_vec());
    let (c, d) = compile(loaded.file.expect("loads"));
    c.unwrap_or_else(|| panic!("{d:?}"))
}

/// X is the identity, so z = W: row argmaxes [0, 1, 1, 0] against Y's [0, 1, 0, 1].
const TINY: &str = r#"
name = "tiny"
dtype = "f64"
loss = """
z = X @ W
mean((z - Y)^2)
"""
[data]
X = "eye(4)"
Y = "[[1, 0], [0, 1], [1, 0], [0, 1]]"
[params]
W = "[[2, 1], [0, 3], [0, 1], [5, 0]]"
[metrics]
accuracy = "mean(argmax(z, axis=1) == argmax(Y, axis=1))"
dist = "norm(W - 1)"
"#;

#[test]
fn metrics_match_their_closed_form_at_the_initial_params() {
    let c = compiled(TINY);
    assert_eq!(c.metric_names(), ["accuracy", "dist"]);
    let m = Evaluator::new(&c, 0).unwrap().metrics().unwrap();
    // Two of four rows agree; W - 1 has squares 1+0+1+4+1+0+16+1 = 24.
    assert_eq!(m[0], 0.5);
    assert!((m[1] - 24f64.sqrt()).abs() < 1e-12, "{}", m[1]);
}
