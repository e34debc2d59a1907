//! `gradscope optimizers`: every optimizer of the registry, grouped (torch.optim, modern,
//! optax), then every trick, with their parameters, defaults and one-line docs, as plain text
//! or as the Markdown tables the READMEs hold.

use std::io::Write;
use std::path::Path;

use crate::load;
use crate::optim::catalogue::{Entry, by_section, registry, with_own};

/// Writes the list: the registry's optimizers and tricks, and `file`'s own optimizers when a
/// file is given (its diagnostics instead when it does not load; false then).
pub fn optimizers_command(
    file: Option<&Path>,
    format: ListFormat,
    brief: bool,
    color: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let entries = match file.map(load::load_compiled) {
        None => registry(),
        Some(Ok((compiled, _))) => with_own(&compiled.optimizers),
        Some(Err(diags)) => return super::inspect::unloadable(&diags, color, out),
    };
    write!(out, "{}", render(&entries, format, brief))?;
    Ok(true)
}

/// How `gradscope optimizers` writes the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Text,
    Markdown,
}

/// The list of `entries` in `format`; `brief`: one line (row) an entry with its defaults,
/// without the parameters' docs.
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

/// Each section a heading, each entry its name and doc, then each parameter as
/// `name = default` and its doc.
fn text(entries: &[Entry]) -> String {
    let name_w = widest(entries.iter().map(Entry::name));
    let mut out = String::new();
    for (i, (section, members)) in by_section(entries).into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{}\n", section.title()));
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

/// Each section a heading, each entry one line: its name and every default.
fn text_brief(entries: &[Entry]) -> String {
    let name_w = widest(entries.iter().map(Entry::name));
    let mut out = String::new();
    for (section, members) in by_section(entries) {
        out.push_str(&format!("{}\n", section.title()));
        for e in members {
            let line = format!("  {:<name_w$}  {}", e.name(), e.defaults());
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out
}

/// Text for a Markdown table cell: pipes escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// A table cell with no value (a trick without parameters).
const NONE: &str = "—";

/// One table a section (under its title in bold), one row a parameter (one an entry without
/// any): the reference in losses/README.md.
fn markdown(entries: &[Entry]) -> String {
    let mut out = String::new();
    for (i, (section, members)) in by_section(entries).into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("**{}**\n\n", section.title()));
        out.push_str(&format!(
            "| {} | {} | default | meaning |\n",
            section.noun(),
            section.parameter_noun()
        ));
        out.push_str("| --- | --- | --- | --- |\n");
        for e in members {
            let first = format!("`{}`: {}", e.name(), cell(&e.doc));
            if e.hyper.is_empty() {
                out.push_str(&format!("| {first} | {NONE} |  |  |\n"));
            }
            for (j, h) in e.hyper.iter().enumerate() {
                let first = if j == 0 { first.as_str() } else { "" };
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

/// One table for the optimizers and one for the tricks, one row an entry: its name, where it
/// comes from (when the table spans several sections), its defaults and what it is: the
/// tables in README.md.
fn markdown_brief(entries: &[Entry]) -> String {
    let tables: Vec<String> = entries
        .chunk_by(|a, b| a.section.noun() == b.section.noun())
        .map(brief_table)
        .collect();
    tables.join("\n")
}

/// One table of [`markdown_brief`]: `rows`, all of one noun.
fn brief_table(rows: &[Entry]) -> String {
    let first = rows[0].section;
    let from = rows.iter().any(|e| e.section != first);
    let mut out = String::new();
    if !from {
        out.push_str(&format!("**{}**\n\n", first.title()));
    }
    let from_column = if from { " from |" } else { "" };
    out.push_str(&format!(
        "| {} |{from_column} {}s (defaults) | what it is |\n",
        first.noun(),
        first.parameter_noun()
    ));
    out.push_str(if from {
        "| --- | --- | --- | --- |\n"
    } else {
        "| --- | --- | --- |\n"
    });
    for e in rows {
        let defaults: Vec<String> = e
            .hyper
            .iter()
            .map(|h| format!("`{}={}`", h.name, cell(&h.default)))
            .collect();
        let defaults = match defaults.is_empty() {
            true => NONE.to_string(),
            false => defaults.join(" "),
        };
        let from = if from {
            format!(" {} |", e.section.title())
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| `{}` |{from} {defaults} | {} |\n",
            e.name(),
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
    use crate::optim::tricks::TrickKind;

    #[test]
    fn the_text_list_has_every_optimizer_and_trick_with_its_defaults_and_docs() {
        let text = render(&registry(), ListFormat::Text, false);
        for &k in OptimizerKind::ALL {
            assert!(text.contains(k.doc()), "{}", k.name());
        }
        for &k in TrickKind::ALL {
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
        // The tricks come last; one without parameters is its line alone.
        let tricks = &text[text.find("\ntricks\n").expect("a tricks heading")..];
        let lines: Vec<&str> = tricks.lines().skip(2).take(5).collect();
        assert_eq!(lines[0].split_whitespace().next(), Some("agc"));
        assert_eq!(
            lines[1].trim(),
            "clipping = 0.01  Largest gradient norm allowed, as a fraction of the param's norm \
             (unit by unit)."
        );
        assert_eq!(lines[3].split_whitespace().next(), Some("centralize"));
        assert_eq!(lines[4].split_whitespace().next(), Some("lookahead"));
    }

    #[test]
    fn the_brief_text_is_one_line_an_entry() {
        let text = render(&registry(), ListFormat::Text, true);
        assert_eq!(
            text.lines().count(),
            4 + OptimizerKind::ALL.len() + TrickKind::ALL.len()
        );
        let line = |name: &str| {
            let l = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name));
            l.expect(name)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("agc"), "agc clipping=0.01, eps=0.001");
        assert_eq!(line("kahan"), "kahan");
        assert!(text.lines().all(|l| l == l.trim_end()), "{text}");
    }

    #[test]
    fn the_brief_markdown_is_a_row_an_optimizer_with_its_source_then_a_row_a_trick() {
        let md = render(&registry(), ListFormat::Markdown, true);
        let (optimizers, tricks) = md.split_once("\n**tricks**\n\n").expect("two tables");
        let rows: Vec<&str> = optimizers.lines().skip(2).collect();
        assert_eq!(rows.len(), OptimizerKind::ALL.len());
        let lion = rows
            .iter()
            .find(|r| r.starts_with("| `lion` |"))
            .expect("lion");
        assert!(
            lion.contains("| modern | `lr=0.0001` `beta1=0.9` `beta2=0.99` `weight_decay=0` |"),
            "{lion}"
        );
        let mut lines = tricks.lines();
        assert_eq!(
            lines.next(),
            Some("| trick | parameters (defaults) | what it is |")
        );
        let rows: Vec<&str> = lines.skip(1).collect();
        assert_eq!(rows.len(), TrickKind::ALL.len());
        assert_eq!(
            rows[0],
            format!(
                "| `agc` | `clipping=0.01` `eps=0.001` | {} |",
                TrickKind::Agc.doc()
            )
        );
        assert_eq!(
            rows[1],
            format!("| `centralize` | — | {} |", TrickKind::Centralize.doc())
        );
    }

    #[test]
    fn the_markdown_reference_is_one_row_a_parameter() {
        let md = render(&registry(), ListFormat::Markdown, false);
        let rows = md.lines().filter(|l| {
            l.starts_with("| ")
                && !l.starts_with("| optimizer |")
                && !l.starts_with("| trick |")
                && !l.starts_with("| ---")
        });
        let hyper: usize = OptimizerKind::ALL
            .iter()
            .map(|k| k.hyper_parameters().len())
            .sum();
        // A trick without parameters has one row all the same.
        let tricks: usize = TrickKind::ALL
            .iter()
            .map(|k| k.parameters().len().max(1))
            .sum();
        assert_eq!(rows.count(), hyper + tricks);
        assert!(md.contains(
            "|  | `eps` | `1e-10` | Added to the denominator for numerical stability. |"
        ));
        assert!(md.contains("**tricks**\n\n| trick | parameter | default | meaning |\n"));
        assert!(md.contains(&format!(
            "| `kahan`: {} | — |  |  |\n",
            TrickKind::Kahan.doc()
        )));
        assert!(md.contains(&format!(
            "| `ema`: {} | `decay` | `0.999` | Weight of the old average at each step. |\n",
            TrickKind::Ema.doc()
        )));
    }

    #[test]
    fn pipes_in_docs_do_not_break_a_table() {
        assert_eq!(cell("|g| / (|g| + eps)"), "\\|g\\| / (\\|g\\| + eps)");
    }
}
