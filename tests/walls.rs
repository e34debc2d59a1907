//! The crate's walls, read from `src/` the way `../shared/tools/module-graph` reads them: a
//! top-level module of `src/` imports another when its files name `crate::other` (in a path or a
//! `crate::{..}` group), outside `#[cfg(test)]` modules. No two modules may import each other,
//! directly or round a longer circle, and the walls below hold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Which modules each top-level module of `src` imports.
fn module_graph(src: &Path) -> Graph {
    let mods: BTreeSet<String> = std::fs::read_dir(src)
        .expect("src/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            p.file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned()
        })
        .filter(|m| m != "main" && m != "lib")
        .collect();
    let mut graph: Graph = mods.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for m in &mods {
        let dir = src.join(m);
        let files = if dir.is_dir() {
            rust_files(&dir)
        } else {
            vec![src.join(format!("{m}.rs"))]
        };
        for f in files {
            let text = std::fs::read_to_string(&f).expect("readable source");
            for name in imported(without_test_modules(&text)) {
                if mods.contains(&name) && &name != m {
                    graph.get_mut(m).expect("a module").insert(name);
                }
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("readable dir") {
        let p = e.expect("readable entry").path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// The text before the first `#[cfg(test)] mod`: tests may reach anywhere.
fn without_test_modules(text: &str) -> &str {
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        let rest = text[at + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod ") {
            return &text[..at];
        }
        from = at + 1;
    }
    text
}

/// The first path segment after every `crate::`, and of every item of a `crate::{..}` group.
fn imported(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(group.split(',').map(|item| ident(item.trim())));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Every circle: the strongly connected components with more than one module.
fn circles(graph: &Graph) -> Vec<BTreeSet<String>> {
    let reaches = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for n in graph.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    stack.push(n.clone());
                }
            }
        }
        seen
    };
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for m in graph.keys() {
        let circle: BTreeSet<String> = reaches(m)
            .into_iter()
            .filter(|n| reaches(n).contains(m))
            .collect();
        if circle.len() > 1 && !out.contains(&circle) {
            out.push(circle);
        }
    }
    out
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = module_graph(Path::new("src"));
    assert!(graph.len() >= 10, "modules found: {:?}", graph.keys());
    assert_eq!(
        circles(&graph),
        Vec::<BTreeSet<String>>::new(),
        "{graph:#?}"
    );
}

#[test]
fn the_walls_hold() {
    let graph = module_graph(Path::new("src"));
    // (module, what it must never import): the language knows no tensors or runs, the compiler
    // no runs or front ends, optimizers see tensors and never programs, the run engine knows no
    // front end, drawing needs no terminal, and only main/lib sit above the front ends.
    let walls: &[(&str, &[&str])] = &[
        (
            "lang",
            &["compile", "run", "tui", "cli", "load", "landscape", "draw"],
        ),
        (
            "compile",
            &["run", "tui", "cli", "load", "landscape", "draw"],
        ),
        ("optim", &["compile", "lang", "run", "tui", "cli"]),
        ("run", &["tui", "cli", "draw", "load"]),
        ("landscape", &["run", "tui", "cli", "draw"]),
        ("draw", &["tui", "cli"]),
        ("load", &["run", "tui", "cli"]),
        ("tui", &["cli"]),
    ];
    let mut broken = Vec::new();
    for (module, never) in walls {
        let imports = graph
            .get(*module)
            .unwrap_or_else(|| panic!("no module `{module}`"));
        broken.extend(
            never
                .iter()
                .filter(|n| imports.contains(**n))
                .map(|n| format!("{module} -> {n}")),
        );
    }
    assert!(broken.is_empty(), "walls broken: {broken:?}");
}

#[test]
fn the_language_never_touches_tensors() {
    for f in rust_files(Path::new("src/lang")) {
        let text = std::fs::read_to_string(&f).expect("readable source");
        assert!(!text.contains("candle_core"), "{} uses candle", f.display());
    }
}

#[test]
fn the_reader_finds_paths_groups_and_circles() {
    let text = "use crate::a::X;\nuse crate::{b::Y, c};\nfn f() { crate::d::g() }\n\
                #[cfg(test)]\nmod tests { use crate::e; }";
    let found = imported(without_test_modules(text));
    assert_eq!(found, ["a", "b", "c", "d"].map(String::from).into());
    let graph: Graph = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_string(), to.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        circles(&graph),
        vec![["a", "b", "c"].map(String::from).into()]
    );
}
