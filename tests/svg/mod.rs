//! Reading back the SVG pictures the tests write (its own module: only the tests that write
//! pictures include it).

use std::path::Path;

/// Every `<text>` node's text in the SVG at `path`, trimmed.
pub fn svg_texts(path: &Path) -> Vec<String> {
    let svg = std::fs::read_to_string(path).expect("the SVG is written");
    let doc = roxmltree::Document::parse(&svg).expect("the SVG is well-formed XML");
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| {
            n.descendants()
                .filter(|t| t.is_text())
                .filter_map(|t| t.text())
                .collect::<String>()
        })
        .map(|t| t.trim().to_string())
        .collect()
}
