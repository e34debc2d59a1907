//! The READMEs' optimizer tables are generated from the registry: what each holds between
//! `<!-- begin: COMMAND -->` and `<!-- end: gradscope optimizers -->` must be what COMMAND prints
//! now. `UPDATE_DOCS=1 cargo test --test docs` writes them.

use gradscope::cli::optimizers::{ListFormat, regenerate_command, render};
use gradscope::optim::catalogue::registry;

mod common;

const END: &str = "<!-- end: gradscope optimizers -->";

/// The generated block of `path` (text after the begin marker up to the end marker) and where it
/// lies.
fn block(text: &str, command: &str) -> std::ops::Range<usize> {
    let begin = format!("<!-- begin: {command} -->\n");
    let start = text.find(&begin).expect("the begin marker") + begin.len();
    let end = start + text[start..].find(END).expect("the end marker");
    start..end
}

/// Checks (or with UPDATE_DOCS=1, rewrites) the block of `path` that `brief` renders.
fn check(path: &str, brief: bool) {
    let command = regenerate_command(brief);
    let text = std::fs::read_to_string(path).expect("the README exists");
    let at = block(&text, command);
    let want = render(&registry(), ListFormat::Markdown, brief);
    if text[at.clone()] == want {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let mut new = text.clone();
        new.replace_range(at, &want);
        std::fs::write(path, new).expect("the README is writable");
        return;
    }
    panic!(
        "{path}'s optimizer table is stale: regenerate it with `{command}` (between its markers), \
         or run `UPDATE_DOCS=1 cargo test --test docs`"
    );
}

#[test]
fn the_readme_optimizer_table_is_the_registrys() {
    check("README.md", true);
}

#[test]
fn the_loss_file_reference_lists_every_optimizer_with_its_hyper_parameters() {
    check("losses/README.md", false);
}

#[test]
fn the_command_prints_the_tables_the_readmes_hold() {
    for brief in [false, true] {
        let mut args = vec!["optimizers", "--format", "markdown"];
        if brief {
            args.push("--brief");
        }
        assert_eq!(
            regenerate_command(brief),
            format!("gradscope {}", args.join(" "))
        );
        let out = common::gradscope(&args);
        assert!(out.status.success());
        let printed = String::from_utf8(out.stdout).expect("utf-8");
        assert_eq!(printed, render(&registry(), ListFormat::Markdown, brief));
    }
}

#[test]
fn the_help_of_o_points_to_the_list() {
    let out = common::gradscope(&["run", "--help"]);
    let help = String::from_utf8(out.stdout).expect("utf-8");
    let o = help
        .split("\n\n")
        .find(|p| p.contains("--optimizer"))
        .expect("-o is documented");
    assert!(
        o.contains("`gradscope optimizers` lists every optimizer"),
        "{o}"
    );
}

#[test]
fn given_a_file_the_list_adds_its_own_optimizers() {
    let out = common::gradscope(&["optimizers", "losses/rosenbrock.toml", "--brief"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let own = printed
        .split_once("written for this file (its own, optimizers/)\n")
        .map(|(_, rest)| rest)
        .expect("a section of the file's own");
    // The bundled losses/optimizers/classics.toml, before the tricks.
    let (own, tricks) = own.split_once("tricks\n").expect("the tricks follow");
    for name in ["adam_written", "nesterov_written", "lion_written"] {
        assert!(own.contains(&format!("  {name} ")), "{own}");
    }
    assert!(tricks.contains("  agc "), "{tricks}");
    let missing = common::gradscope(&["optimizers", "no/such.toml"]);
    assert!(!missing.status.success());
    let said = String::from_utf8(missing.stdout).expect("utf-8");
    assert!(said.contains("cannot read no/such.toml"), "{said}");
}
