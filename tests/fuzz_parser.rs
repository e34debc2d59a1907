//! Arbitrary input never panics: not the parser, not the loader, not the compiler.

use std::path::Path;

use gradscope::compile::{Evaluator, compile};
use gradscope::lang::file::load_bytes;
use gradscope::lang::lexer::OffsetMap;
use gradscope::lang::parser::{parse_expr, parse_program};
use proptest::prelude::*;

/// Strings drawn from the language's own tokens, so the parser sees near-valid programs.
fn tokens() -> impl Strategy<Value = String> {
    let tok = prop::sample::select(vec![
        "x",
        "w",
        "b",
        "y",
        "eps",
        "1",
        "2.5",
        "1e-7",
        "0",
        "-1",
        "+",
        "-",
        "*",
        "/",
        "@",
        "^",
        "<",
        "==",
        "(",
        ")",
        "[",
        "]",
        ",",
        ":",
        "=",
        "\n",
        "# c\n",
        "exp",
        "log",
        "sum",
        "mean",
        "softmax",
        "reshape",
        "zeros",
        "randn",
        "where",
        "clamp",
        "amax",
        "transpose",
        "detach",
        "norm",
        "x[0]",
        "x[:, 1]",
        "round",
        "sqrt",
        "arange",
        "eye",
        "stack",
        "concat",
        "one_hot",
        "put",
        "pad",
        "argmax",
        ".T",
        "axis=",
        "pi",
        "e",
    ]);
    prop::collection::vec(tok, 0..40).prop_map(|v| v.join(" "))
}

fn file_with_loss(loss: &str) -> Vec<u8> {
    format!(
        "name = \"fuzz\"\nloss = '''\n{loss}\n'''\n[data]\nx = \"randn(4, 3)\"\ny = \"randn(4)\"\n[consts]\neps = 1e-7\n[params]\nw = \"zeros(3)\"\nb = 0.5\n"
    )
    .into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parser_never_panics_on_any_string(s in any::<String>()) {
        let _ = parse_program(&s, &OffsetMap::Shift(0));
        let _ = parse_expr(&s, &OffsetMap::Shift(0));
    }

    #[test]
    fn loader_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = load_bytes(Path::new("fuzz.toml"), bytes);
    }

    #[test]
    fn token_soup_never_panics_through_evaluation(loss in tokens()) {
        let loaded = load_bytes(Path::new("fuzz.toml"), file_with_loss(&loss));
        for d in &loaded.diagnostics {
            let _ = d.render(false);
        }
        if let Some(file) = loaded.file {
            let (compiled, diags) = compile(file);
            for d in &diags {
                prop_assert!(d.line_col().is_some() || !d.is_error(), "{}", d.headline());
            }
            if let Some(c) = compiled {
                for run in 0..c.runs.len() {
                    let ev = Evaluator::new(&c, run).expect("prepares");
                    let _ = ev.evaluate();
                }
            }
        }
    }
}
