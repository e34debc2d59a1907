//! Where each byte of a decoded TOML string stands in the file.

use crate::diagnostic::Span;
use crate::lang::lexer::OffsetMap;

/// Maps each byte of a decoded TOML string to its offset in the file, so errors inside `loss`
/// point at the right line and column even across escapes and CRLF line ends. If the raw text
/// cannot be aligned with the decoded one, every byte maps to the string's start.
pub fn string_offsets(file: &str, span: Span, decoded: &str) -> OffsetMap {
    let raw = file.get(span.clone()).unwrap_or("");
    let (delim, literal) = if raw.starts_with("\"\"\"") {
        (3, false)
    } else if raw.starts_with("'''") {
        (3, true)
    } else if raw.starts_with('"') {
        (1, false)
    } else if raw.starts_with('\'') {
        (1, true)
    } else {
        return OffsetMap::Shift(span.start);
    };
    let mut start = delim;
    if delim == 3 {
        if raw[start..].starts_with("\r\n") {
            start += 2;
        } else if raw[start..].starts_with('\n') {
            start += 1;
        }
    }
    let body = &raw[start..raw.len().saturating_sub(delim).max(start)];
    let base = span.start + start;
    if body == decoded {
        return OffsetMap::Shift(base);
    }
    align(body, decoded, literal)
        .map(|t| OffsetMap::Table(t.into_iter().map(|o| base + o).collect()))
        .unwrap_or(OffsetMap::Shift(span.start))
}

fn align(raw: &str, decoded: &str, literal: bool) -> Option<Vec<usize>> {
    let (rb, db) = (raw.as_bytes(), decoded.as_bytes());
    let mut table = Vec::with_capacity(db.len() + 1);
    let (mut i, mut j) = (0, 0);
    while j < db.len() {
        if !literal && rb.get(i) == Some(&b'\\') {
            let next = *rb.get(i + 1)?;
            let len = match next {
                b'x' => 4,
                b'u' => 6,
                b'U' => 10,
                b' ' | b'\t' | b'\r' | b'\n' => {
                    i += 1;
                    while i < rb.len() && matches!(rb[i], b' ' | b'\t' | b'\r' | b'\n') {
                        i += 1;
                    }
                    continue;
                }
                _ => 2,
            };
            let ch = decoded[j..].chars().next()?;
            table.extend(std::iter::repeat_n(i, ch.len_utf8()));
            i += len;
            j += ch.len_utf8();
        } else if rb[i..].starts_with(b"\r\n") && db[j] == b'\n' {
            table.push(i);
            i += 2;
            j += 1;
        } else {
            let ch = raw.get(i..)?.chars().next()?;
            if !decoded[j..].starts_with(ch) {
                return None;
            }
            for k in 0..ch.len_utf8() {
                table.push(i + k);
            }
            i += ch.len_utf8();
            j += ch.len_utf8();
        }
    }
    table.push(i);
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_through_escapes_and_crlf() {
        let file = "loss = \"a\\tb + c\"";
        let span = 7..file.len();
        let map = string_offsets(file, span, "a\tb + c");
        assert_eq!(&file[map.map(2)..map.map(3)], "b");
        let file = "loss = \"\"\"\r\nx = 1\r\nx\r\n\"\"\"";
        let map = string_offsets(file, 7..file.len(), "x = 1\nx\n");
        assert_eq!(&file[map.map(6)..map.map(7)], "x");
    }
}
