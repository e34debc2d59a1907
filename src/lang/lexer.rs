//! Tokens of the expression language. Spans are byte offsets in the loss file itself, mapped from
//! the decoded TOML string through an [`OffsetMap`].

use crate::diagnostic::Span;

/// Maps byte offsets in a decoded TOML string back to offsets in the file.
#[derive(Debug, Clone)]
pub enum OffsetMap {
    /// The string's bytes stand in the file unchanged, starting at this offset.
    Shift(usize),
    /// One file offset per decoded byte, plus one for the end.
    Table(Vec<usize>),
}

impl OffsetMap {
    /// The file offset of a byte of the decoded string.
    pub fn map(&self, local: usize) -> usize {
        match self {
            OffsetMap::Shift(base) => base + local,
            OffsetMap::Table(t) => t[local.min(t.len() - 1)],
        }
    }

    /// The file span of a range of the decoded string.
    pub fn span(&self, local: std::ops::Range<usize>) -> Span {
        self.map(local.start)..self.map(local.end)
    }
}

/// A token of the expression language.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Number(f64),
    Ident(String),
    Plus,
    Minus,
    Star,
    Slash,
    At,
    Caret,
    Lt,
    Le,
    Gt,
    Ge,
    EqEq,
    Ne,
    Assign,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Colon,
    Dot,
    Newline,
    Eof,
}

impl Tok {
    /// The token as messages name it (``number `3` ``, `` `+` ``).
    pub fn describe(&self) -> String {
        match self {
            Tok::Number(n) => format!("number `{n}`"),
            Tok::Ident(s) => format!("name `{s}`"),
            Tok::Newline => "end of line".into(),
            Tok::Eof => "end of input".into(),
            other => format!("`{}`", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::At => "@",
            Tok::Caret => "^",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::EqEq => "==",
            Tok::Ne => "!=",
            Tok::Assign => "=",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Colon => ":",
            Tok::Dot => ".",
            _ => "?",
        }
    }
}

/// A token and where it stands in the file.
#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

/// A lexing error: message and span (file offsets).
#[derive(Debug, Clone)]
pub struct LexError {
    pub message: String,
    pub span: Span,
    pub help: Option<String>,
}

/// Splits `text` into tokens. Newlines are tokens; the parser skips those inside brackets.
pub fn lex(text: &str, map: &OffsetMap) -> (Vec<Token>, Vec<LexError>) {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut errors = Vec::new();
    // Where the latest run of unexpected characters started and ended.
    let (mut unexpected_since, mut unexpected_end) = (None, 0);
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let single = |t: Tok| (t, 1);
        let (tok, len) = match c {
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\n' => {
                i += 1;
                tokens.push(Token {
                    tok: Tok::Newline,
                    span: map.span(start..start + 1),
                });
                continue;
            }
            // `.` before a letter is an attribute (`x.T`); before a digit it starts a number.
            b'.' if bytes
                .get(i + 1)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') =>
            {
                single(Tok::Dot)
            }
            b'0'..=b'9' | b'.' => match lex_number(&text[i..]) {
                Ok((n, len)) => (Tok::Number(n), len),
                Err(len) => {
                    errors.push(LexError {
                        message: format!("malformed number `{}`", &text[i..i + len]),
                        span: map.span(i..i + len),
                        help: Some("numbers look like 1, 2.5, 1e-7 or .5".into()),
                    });
                    i += len;
                    continue;
                }
            },
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let len = text[i..]
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    .count();
                (Tok::Ident(text[i..i + len].to_string()), len)
            }
            b'+' => single(Tok::Plus),
            b'-' => single(Tok::Minus),
            b'*' if bytes.get(i + 1) == Some(&b'*') => (Tok::Caret, 2),
            b'*' => single(Tok::Star),
            b'/' => single(Tok::Slash),
            b'@' => single(Tok::At),
            b'^' => single(Tok::Caret),
            b'<' if bytes.get(i + 1) == Some(&b'=') => (Tok::Le, 2),
            b'<' => single(Tok::Lt),
            b'>' if bytes.get(i + 1) == Some(&b'=') => (Tok::Ge, 2),
            b'>' => single(Tok::Gt),
            b'=' if bytes.get(i + 1) == Some(&b'=') => (Tok::EqEq, 2),
            b'=' => single(Tok::Assign),
            b'!' if bytes.get(i + 1) == Some(&b'=') => (Tok::Ne, 2),
            b'(' => single(Tok::LParen),
            b'[' => single(Tok::LBracket),
            b')' => single(Tok::RParen),
            b']' => single(Tok::RBracket),
            b',' => single(Tok::Comma),
            b':' => single(Tok::Colon),
            _ if text[i..].starts_with(|c: char| c.is_alphabetic()) => {
                // One error for a whole word that is not ASCII (`δδδ`), not one per letter.
                let len = text[i..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(text.len() - i);
                errors.push(LexError {
                    message: format!("`{}` is not a name", &text[i..i + len]),
                    span: map.span(i..i + len),
                    help: Some(
                        "names are ASCII letters, digits and `_` (write `delta`, not `δ`)".into(),
                    ),
                });
                // Read on as the name it was meant to be, so the line parses without a
                // follow-on error at the `=` after it.
                (Tok::Ident(text[i..i + len].to_string()), len)
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                // A quoted string is one mistake, whatever it holds (up to a comment or the end
                // of the line); a `'` right after a name or a bracket is a transpose, not a quote.
                let transposed = ch == '\''
                    && text[..i]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | ')' | ']'));
                let quoted = (matches!(ch, '"' | '\'') && !transposed)
                    .then(|| text[i + 1..].split(['\n', '#']).next()?.find(ch))
                    .flatten();
                let len = quoted.map_or(ch.len_utf8(), |end| end + 2);
                // A run of them is one mistake (`"é"`, a pasted `✓✓✓`): one error for it.
                let from = match (errors.last_mut(), unexpected_since) {
                    (Some(last), Some(from)) if unexpected_end == i => {
                        *last = unexpected(&text[from..i + len], map.span(from..i + len));
                        from
                    }
                    _ => {
                        errors.push(unexpected(&text[i..i + len], map.span(i..i + len)));
                        i
                    }
                };
                (unexpected_since, unexpected_end) = (Some(from), i + len);
                i += len;
                continue;
            }
        };
        tokens.push(Token {
            tok,
            span: map.span(start..start + len),
        });
        i += len;
    }
    tokens.push(Token {
        tok: Tok::Eof,
        span: map.span(text.len()..text.len()),
    });
    (tokens, errors)
}

/// The error for `chars`, characters no token starts with, at `span`. Invisible ones are named
/// by code point: a pasted no-break space showed as "unexpected character ` `".
fn unexpected(chars: &str, span: Span) -> LexError {
    let invisible = |c: char| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
    };
    let shown: String = chars
        .chars()
        .map(|c| match invisible(c) {
            true => format!("U+{:04X}", c as u32),
            false => c.to_string(),
        })
        .collect();
    let plural = if chars.chars().count() > 1 { "s" } else { "" };
    let first = chars.chars().next().unwrap_or('?');
    LexError {
        message: format!("unexpected character{plural} `{shown}`"),
        span,
        help: match first {
            '{' | '}' => Some("group with ( ) and write arrays with [ ]".into()),
            '%' => Some("there is no modulo operator".into()),
            '&' | '|' => {
                Some("combine conditions with where(...) or arithmetic on 0/1 masks".into())
            }
            '\'' if chars.len() == 1 => Some("a transpose is written `x.T`".into()),
            // Typographic look-alikes, pasted from papers and word processors.
            '−' | '–' | '—' => Some("a typographic dash: type a plain `-` for minus".into()),
            '×' | '·' | '⋅' => Some("type a plain `*` for multiplication".into()),
            '÷' => Some("type a plain `/` for division".into()),
            '“' | '”' | '‘' | '’' => {
                Some("typographic quotes: the loss language has no strings; a transpose is written `x.T`".into())
            }
            '"' | '\'' => Some("the loss language has no strings: names, numbers and operators".into()),
            c if invisible(c) => Some(
                "an invisible character (pasted from a web page or document?): delete it and type a plain space"
                    .into(),
            ),
            _ => Some(
                "the loss language is ASCII names, numbers, operators and brackets: delete it or type its ASCII form"
                    .into(),
            ),
        },
    }
}

/// Parses a number at the start of `s`: digits, optional fraction, optional exponent.
/// On failure returns the length of the malformed run.
fn lex_number(s: &str) -> Result<(f64, usize), usize> {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let int_end = digits(0);
    let mut end = int_end;
    if b.get(end) == Some(&b'.') {
        end = digits(end + 1);
    }
    let mantissa_digits = s[..end].bytes().filter(u8::is_ascii_digit).count();
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let mut j = end + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let exp_end = digits(j);
        if exp_end == j {
            let bad = exp_end
                + s[exp_end..]
                    .bytes()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .count();
            return Err(bad.max(1));
        }
        end = exp_end;
    }
    let trailing = s[end..]
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.')
        .count();
    if mantissa_digits == 0 || trailing > 0 {
        return Err((end + trailing).max(1));
    }
    s[..end]
        .parse::<f64>()
        .map(|n| (n, end))
        .map_err(|_| end.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        let (t, e) = lex(s, &OffsetMap::Shift(0));
        assert!(e.is_empty(), "{e:?}");
        t.into_iter().map(|t| t.tok).collect()
    }

    /// A run of characters no token starts with is one error over the run; invisible ones are
    /// named by code point.
    #[test]
    fn unexpected_characters_are_one_error_a_run() {
        let errors = |s: &str| lex(s, &OffsetMap::Shift(0)).1;
        let e = errors("a + \u{2713}\u{2713}\u{2713} b");
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0].message,
            "unexpected characters `\u{2713}\u{2713}\u{2713}`"
        );
        assert_eq!(e[0].span, 4..13);
        let e = errors("q = \"\u{e9}\" + 1 % 2");
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].message, "unexpected characters `\"\u{e9}\"`");
        assert!(
            e[0].help
                .as_deref()
                .is_some_and(|h| h.contains("no strings"))
        );
        assert_eq!(e[1].message, "unexpected character `%`");
        let e = errors("a\u{a0}+ b\u{200b}");
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].message, "unexpected character `U+00A0`");
        assert_eq!(e[1].message, "unexpected character `U+200B`");
        assert!(
            e[1].help
                .as_deref()
                .is_some_and(|h| h.contains("invisible"))
        );
        // A MATLAB transpose is not the start of a string, and a comment ends the search.
        for text in ["x' # it's", "sum(a') + b'"] {
            let e = errors(text);
            assert!(
                e.iter().all(|e| e.message == "unexpected character `'`"),
                "{e:?}"
            );
            assert!(
                e[0].help.as_deref().is_some_and(|h| h.contains("x.T")),
                "{e:?}"
            );
        }
        assert_eq!(errors("sum(a') + b'").len(), 2);
        // Look-alikes pasted from a paper say which plain character to type.
        for (text, plain) in [
            ("a \u{2212} b", "`-`"),
            ("2 \u{d7} x", "`*`"),
            ("x \u{f7} 2", "`/`"),
        ] {
            let e = errors(text);
            assert!(
                e.len() == 1 && e[0].help.as_deref().is_some_and(|h| h.contains(plain)),
                "{text}: {e:?}"
            );
        }
    }

    #[test]
    fn numbers_in_every_form() {
        assert_eq!(
            toks("1 2.5 1e-7 .5 3E+2"),
            vec![
                Tok::Number(1.0),
                Tok::Number(2.5),
                Tok::Number(1e-7),
                Tok::Number(0.5),
                Tok::Number(300.0),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn malformed_numbers_are_errors() {
        for bad in ["1e", "1.2.3", "3x", "."] {
            let (_, e) = lex(bad, &OffsetMap::Shift(0));
            assert_eq!(e.len(), 1, "{bad}");
        }
    }

    #[test]
    fn spans_go_through_the_offset_map() {
        let map = OffsetMap::Table(vec![10, 11, 14, 15, 16]);
        let (t, _) = lex("a+b", &map);
        assert_eq!(t[2].span, 14..15);
    }
}
