//! The `optimum` key of loss files: where a test function's minimum is, for pictures to mark.

use std::path::Path;

use gradscope::lang::file::load_bytes;

fn load(text: &str) -> gradscope::lang::file::Loaded {
    load_bytes(Path::new("optimum.toml"), text.as_bytes().to_vec())
}

const HEAD: &str = "name = \"t\"\nloss = \"(1 - x)^2 + sum(w^2)\"\n";
const PARAMS: &str = "\n[params]\nx = 0.0\nw = \"[1.0, 2.0]\"\n";

#[test]
fn an_optimum_parses_in_params_order() {
    let loaded = load(&format!(
        "{HEAD}optimum = {{ w = [0.0, -0.5], x = 1.0 }}\n{PARAMS}"
    ));
    let file = loaded.file.expect("the file checks");
    let optimum = file.optimum.expect("it has an optimum");
    let got: Vec<(&str, &[f64])> = optimum
        .iter()
        .map(|o| (o.name.node.as_str(), o.value.as_slice()))
        .collect();
    assert_eq!(got, [("x", &[1.0][..]), ("w", &[0.0, -0.5][..])]);
}

#[test]
fn without_the_key_there_is_no_optimum() {
    let file = load(&format!("{HEAD}{PARAMS}"))
        .file
        .expect("the file checks");
    assert!(file.optimum.is_none());
}

/// Each malformed optimum gives one error at the line and column of its mistake.
#[test]
fn a_malformed_optimum_is_an_error_at_its_place() {
    let cases = [
        // (the optimum line, message part, line, column)
        (
            "optimum = { x = 1.0, z = 2.0, w = [0, 0] }",
            "`z`, which is not a param",
            3,
            22,
        ),
        (
            "optimum = { x = \"one\", w = [0, 0] }",
            "must be a number",
            3,
            17,
        ),
        (
            "optimum = { x = 1.0, w = [0, true] }",
            "must be a number",
            3,
            26,
        ),
        ("optimum = { x = 1.0 }", "no value for `w`", 3, 11),
        ("optimum = 1.0", "must be a table", 3, 11),
    ];
    for (line, message, at_line, at_col) in cases {
        let loaded = load(&format!("{HEAD}{line}\n{PARAMS}"));
        assert!(loaded.file.is_none(), "{line}");
        let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
        assert_eq!(errors.len(), 1, "{line}: {errors:?}");
        assert!(
            errors[0].headline().contains(message),
            "{line}: {}",
            errors[0].headline()
        );
        assert_eq!(errors[0].line_col(), Some((at_line, at_col)), "{line}");
    }
}
