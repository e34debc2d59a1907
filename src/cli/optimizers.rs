//! `gradscope optimizers`: every optimizer of the registry, grouped (torch.optim, modern,
//! optax), with its hyper-parameters, their defaults and one-line docs, as plain text or as the
//! Markdown tables the READMEs hold.

use crate::optim::catalogue::{Entry, by_group};

/// How `gradscope optimizers` writes the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Text,
    Markdown,
}

/// The list of `entries` in `format`; `brief`: one line (row) an optimizer with its defaults,
/// without the hyper-parameters' docs.
pub fn render(entries: &[Entry], format: ListFormat, brief: bool) -> String {
    match (format, brief) {
        (ListFormat::Text, false) => text(entries),
        (ListFormat::Text, true) => text_brief(entries),
        (ListFormat::Markdown, false) => markdown(entries),
        (ListFormat::Markdown, true) => markdown_brief(entries),
    }
}

/// The command that prints what the READMEs hold between their markers, for a stale table.
pub fn regenerate_command(brief: bool) -> &'static str {
    if brief {
        "gradscope optimizers --format markdown --brief"
    } else {
        "gradscope optimizers --format markdown"
    }
}

/// The widest of `items`, in characters.
fn widest<'a>(items: impl Iterator<Item = &'a str>) -> usize {
    items.map(|s| s.chars().count()).max().unwrap_or(0)
}

/// Each group a heading, each optimizer its name and doc, then each hyper-parameter as
/// `name = default` and its doc.
fn text(entries: &[Entry]) -> String {
    let name_w = widest(entries.iter().map(Entry::name));
    let mut out = String::new();
    for (i, (group, members)) in by_group(entries).into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{}\n", group.title()));
        for e in members {
            out.push_str(&format!("  {:<name_w$}  {}\n", e.name(), e.doc));
            let assigned: Vec<String> = e
                .hyper
                .iter()
                .map(|h| format!("{} = {}", h.name, h.default))
                .collect();
            let w = widest(assigned.iter().map(String::as_str));
            for (a, h) in assigned.iter().zip(&e.hyper) {
                out.push_str(&format!("      {a:<w$}  {}\n", h.doc));
            }
        }
    }
    out
}

/// Each group a heading, each optimizer one line: its name and every default.
fn text_brief(entries: &[Entry]) -> String {
    let name_w = widest(entries.iter().map(Entry::name));
    let mut out = String::new();
    for (group, members) in by_group(entries) {
        out.push_str(&format!("{}\n", group.title()));
        for e in members {
            out.push_str(&format!("  {:<name_w$}  {}\n", e.name(), e.defaults()));
        }
    }
    out
}

/// Text for a Markdown table cell: pipes escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// One table a group (under its name in bold), one row a hyper-parameter: the reference in
/// losses/README.md.
fn markdown(entries: &[Entry]) -> String {
    let mut out = String::new();
    for (i, (group, members)) in by_group(entries).into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("**{}**\n\n", group.title()));
        out.push_str("| optimizer | hyper-parameter | default | meaning |\n");
        out.push_str("| --- | --- | --- | --- |\n");
        for e in members {
            for (j, h) in e.hyper.iter().enumerate() {
                let first = match j {
                    0 => format!("`{}`: {}", e.name(), cell(&e.doc)),
                    _ => String::new(),
                };
                out.push_str(&format!(
                    "| {first} | `{}` | `{}` | {} |\n",
                    h.name,
                    cell(&h.default),
                    cell(&h.doc)
                ));
            }
        }
    }
    out
}

/// One table, one row an optimizer: its name, where it comes from, its defaults and what it
/// is: the table in README.md.
fn markdown_brief(entries: &[Entry]) -> String {
    let mut out = String::from("| optimizer | from | hyper-parameters (defaults) | what it is |\n");
    out.push_str("| --- | --- | --- | --- |\n");
    for e in entries {
        let defaults: Vec<String> = e
            .hyper
            .iter()
            .map(|h| format!("`{}={}`", h.name, cell(&h.default)))
            .collect();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            e.name(),
            e.group.title(),
            defaults.join(" "),
            cell(&e.doc)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::catalogue::registry;
    use crate::optim::spec::OptimizerKind;

    #[test]
    fn the_text_list_has_every_optimizer_and_hyper_parameter_with_its_default_and_doc() {
        let text = render(&registry(), ListFormat::Text, false);
        for &k in OptimizerKind::ALL {
            assert!(text.contains(k.doc()), "{}", k.name());
        }
        // sgd's block: its line, then one line per hyper-parameter, aligned.
        let at = text.find("  sgd ").expect("sgd is listed");
        let block: Vec<&str> = text[at..].lines().take(6).collect();
        assert!(
            block[0].trim_end().ends_with(OptimizerKind::Sgd.doc()),
            "{block:?}"
        );
        assert_eq!(block[1].trim(), "lr = 0.001        Learning rate.");
        assert_eq!(block[4].trim(), "nesterov = false  Nesterov momentum.");
        assert!(text.starts_with("torch.optim\n"), "{text}");
    }

    #[test]
    fn the_brief_markdown_is_one_row_an_optimizer_with_its_source() {
        let md = render(&registry(), ListFormat::Markdown, true);
        let rows: Vec<&str> = md.lines().skip(2).collect();
        assert_eq!(rows.len(), OptimizerKind::ALL.len());
        let lion = rows
            .iter()
            .find(|r| r.starts_with("| `lion` |"))
            .expect("lion");
        assert!(
            lion.contains("| modern | `lr=0.0001` `beta1=0.9` `beta2=0.99` `weight_decay=0` |"),
            "{lion}"
        );
    }

    #[test]
    fn the_markdown_reference_is_one_row_a_hyper_parameter() {
        let md = render(&registry(), ListFormat::Markdown, false);
        let rows = md.lines().filter(|l| {
            l.starts_with("| ") && !l.starts_with("| optimizer") && !l.starts_with("| ---")
        });
        let hyper: usize = OptimizerKind::ALL
            .iter()
            .map(|k| k.hyper_parameters().len())
            .sum();
        assert_eq!(rows.count(), hyper);
        assert!(md.contains(
            "|  | `eps` | `1e-10` | Added to the denominator for numerical stability. |"
        ));
    }

    #[test]
    fn pipes_in_docs_do_not_break_a_table() {
        assert_eq!(cell("|g| / (|g| + eps)"), "\\|g\\| / (\\|g\\| + eps)");
    }
}
