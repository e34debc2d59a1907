//! One diagnostic type for every error and warning gradscope reports, rendered with carets in the
//! CLI, as plain records in JSON, and as a list in the TUI.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use serde::Serialize;

thread_local! {
    /// Set on threads whose panics [`catch_panic`] turns into diagnostics.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on a worker thread's loop, turning a panic into an error diagnostic that names `what`
/// was being done: a bug in one job becomes state the UI shows, and the thread serves on.
pub fn catch_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, Diagnostic> {
    CATCHING.with(|c| c.set(true));
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Diagnostic::error(format!("internal error while {what}: {message}"))
            .help("this is a bug in gradscope; everything else keeps working")
    })
}

/// Whether a panic on this thread will be caught by [`catch_panic`], so a panic hook need not
/// restore the terminal (the TUI is still running).
pub fn panics_are_caught() -> bool {
    CATCHING.with(|c| c.get())
}

/// A byte range in a source file.
pub type Span = Range<usize>;

/// How serious a diagnostic is: errors stop a file from running, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// A file's path and text, shared by every diagnostic that points into it.
#[derive(Debug, PartialEq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// A file's text, shared by every diagnostic and span that points into it.
    pub fn new(path: impl Into<PathBuf>, text: String) -> Arc<Self> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Arc::new(Self {
            path: path.into(),
            text,
            line_starts,
        })
    }

    /// 1-based line and column (in characters) of a byte offset, clamped to the text.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = self.floor_char_boundary(offset.min(self.text.len()));
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let col = self.text[self.line_starts[line]..offset].chars().count();
        (line + 1, col + 1)
    }

    fn floor_char_boundary(&self, mut i: usize) -> usize {
        while !self.text.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// One error or warning: what went wrong, where, and what to do about it.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub source: Option<Arc<SourceFile>>,
    pub span: Option<Span>,
    /// Short text shown under the caret.
    pub label: Option<Box<str>>,
    pub help: Option<String>,
    /// A file named without a span into it (e.g. a file that could not be read).
    pub path: Option<Box<Path>>,
}

impl Diagnostic {
    /// An error: the file (or run) it is about cannot be used.
    pub fn error(message: impl Into<String>) -> Self {
        Self::new(Severity::Error, message)
    }

    /// A warning: worth a look, but nothing stops.
    pub fn warning(message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, message)
    }

    fn new(severity: Severity, message: impl Into<String>) -> Self {
        Self {
            severity,
            message: message.into(),
            source: None,
            span: None,
            label: None,
            help: None,
            path: None,
        }
    }

    /// Points the diagnostic at `span` in `source`.
    pub fn at(mut self, source: &Arc<SourceFile>, span: Span) -> Self {
        self.source = Some(Arc::clone(source));
        self.span = Some(span);
        self
    }

    /// Names the file when there is no span to point at (a missing file, an unreadable one).
    pub fn in_file(mut self, path: &Path) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The text written under the carets.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into().into_boxed_str());
        self
    }

    /// What to do about it, shown as `= help:`.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// [`Diagnostic::help`] when there is one.
    pub fn help_opt(mut self, help: Option<String>) -> Self {
        self.help = help.or(self.help);
        self
    }

    /// Whether it stops the file from being used.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The file it is about, from its span's source or [`Diagnostic::in_file`].
    pub fn file(&self) -> Option<&Path> {
        self.source
            .as_ref()
            .map(|s| s.path.as_path())
            .or(self.path.as_deref())
    }

    /// 1-based line and column of the start of the span.
    pub fn line_col(&self) -> Option<(usize, usize)> {
        Some(self.source.as_ref()?.line_col(self.span.as_ref()?.start))
    }

    /// `file:line:col: severity: message`, the one-line form for lists and logs.
    pub fn headline(&self) -> String {
        let mut out = String::new();
        if let Some(file) = self.file() {
            let _ = write!(out, "{}", file.display());
            if let Some((line, col)) = self.line_col() {
                let _ = write!(out, ":{line}:{col}");
            }
            out.push_str(": ");
        }
        let _ = write!(out, "{}: {}", self.severity_word(), escaped(&self.message));
        out
    }

    fn severity_word(&self) -> &'static str {
        match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }

    /// The full report: headline, location, the source line and carets under the span. Long
    /// lines are windowed around the span so a 100,000-character line stays readable.
    pub fn render(&self, color: bool) -> String {
        self.render_within(color, usize::MAX)
    }

    /// [`Diagnostic::render`] with the source line's window cut to fit `width` columns with
    /// its gutter (at most 100 characters of source): a TUI panel wraps a longer line, and
    /// the caret then points at the wrong character.
    pub fn render_within(&self, color: bool, width: usize) -> String {
        let paint = |code: &str, text: &str| {
            if color {
                format!("\x1b[{code}m{text}\x1b[0m")
            } else {
                text.to_string()
            }
        };
        let sev = match self.severity {
            Severity::Error => paint("1;31", "error"),
            Severity::Warning => paint("1;33", "warning"),
        };
        let mut out = format!("{sev}: {}\n", paint("1", &escaped(&self.message)));
        let location = match (&self.source, &self.span) {
            (Some(source), Some(span)) => Some((source, clamp_span(span, &source.text))),
            _ => None,
        };
        let Some((source, span)) = location else {
            if let Some(file) = self.file() {
                let _ = writeln!(out, "  {} {}", paint("34", "-->"), file.display());
            }
            if let Some(help) = &self.help {
                let _ = writeln!(out, "  {} {}", paint("34", "= help:"), escaped(help));
            }
            return out;
        };
        let (line, col) = source.line_col(span.start);
        let gutter = line.to_string().len();
        let pad = " ".repeat(gutter);
        let bar = paint("34", "|");
        let _ = writeln!(
            out,
            "{pad}{} {}:{line}:{col}",
            paint("34", "-->"),
            source.path.display()
        );
        let line_start = source.line_starts[line - 1];
        let line_end = source.text[line_start..]
            .find('\n')
            .map_or(source.text.len(), |i| line_start + i);
        let text = source.text[line_start..line_end].trim_end_matches('\r');
        // One column per character, so the carets line up: a tab as a space, other control
        // characters (a binary file's) as U+FFFD.
        let chars: Vec<char> = text
            .chars()
            .map(|c| match c {
                '\t' => ' ',
                c if c.is_control() => '\u{FFFD}',
                c => c,
            })
            .collect();
        let caret_from = col - 1;
        let caret_len = source.text[span.start..span.end.min(line_end).max(span.start)]
            .chars()
            .count()
            .max(1);
        // The gutter, its bar, and room for the two ellipses.
        let fits = width.saturating_sub(gutter + 5).max(20);
        let window = 100.min(fits);
        let (window_start, prefix) = if chars.len() > window && caret_from > window / 3 {
            (caret_from - window / 3, "…")
        } else {
            (0, "")
        };
        let window_end = (window_start + window).min(chars.len());
        let suffix = if window_end < chars.len() { "…" } else { "" };
        let shown: String = chars[window_start..window_end].iter().collect();
        let caret_col = prefix.chars().count() + caret_from - window_start;
        let caret_len = caret_len.min(window_end.saturating_sub(caret_from).max(1));
        let carets = paint(
            if self.is_error() { "1;31" } else { "1;33" },
            &format!(
                "{}{}",
                "^".repeat(caret_len),
                self.label
                    .as_ref()
                    .map(|l| format!(" {}", escaped(l)))
                    .unwrap_or_default()
            ),
        );
        let _ = writeln!(out, "{pad} {bar}");
        let _ = writeln!(
            out,
            "{} {bar} {prefix}{shown}{suffix}",
            paint("34", &line.to_string())
        );
        let _ = writeln!(out, "{pad} {bar} {}{carets}", " ".repeat(caret_col));
        if let Some(help) = &self.help {
            let help = escaped(help);
            let mut lines = help.lines();
            let _ = writeln!(
                out,
                "{pad} {} {}",
                paint("34", "= help:"),
                lines.next().unwrap_or("")
            );
            for l in lines {
                let _ = writeln!(out, "{pad}         {l}");
            }
        }
        out
    }

    /// The machine-readable record for `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let (line, column) = self.line_col().unzip();
        serde_json::json!({
            "severity": self.severity,
            "message": self.message,
            "file": self.file().map(|p| p.display().to_string()),
            "line": line,
            "column": column,
            "label": self.label,
            "help": self.help,
        })
    }
}

/// `s` with its control characters replaced by U+FFFD, one column each: text from a file
/// printed to a terminal, which would act on an escape sequence.
pub fn plain(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// `s` with its control characters but line breaks escaped (`\u{1b}`), for messages and
/// help that quote a file's text.
fn escaped(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c.is_control() && c != '\n' {
            true => c.escape_unicode().collect::<Vec<_>>(),
            false => vec![c],
        })
        .collect()
}

/// Keeps a span inside the text and on character boundaries, so rendering never panics.
fn clamp_span(span: &Span, text: &str) -> Span {
    let fix = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let start = fix(span.start);
    let end = fix(span.end.max(span.start)).max(start);
    start..end
}

/// The headline: one line naming the file, line and column, for `?` into `anyhow` at the edge.
impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.headline())
    }
}

impl std::error::Error for Diagnostic {}

/// The closest candidate to `name`, for "did you mean" help.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    // Among equally close names, one that differs only in case first (`Y` -> `y`, not `X`).
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|&(d, c)| d <= (name.len().max(c.len()) / 3).max(1) && d > 0)
        .min_by_key(|&(d, c)| (d, !c.eq_ignore_ascii_case(name), c))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_differing_only_in_case_is_suggested_first() {
        assert_eq!(
            did_you_mean("Y", ["X", "y"]).as_deref(),
            Some("did you mean `y`?")
        );
        assert_eq!(
            did_you_mean("lgo", ["log", "lgamma"]).as_deref(),
            Some("did you mean `log`?")
        );
    }

    #[test]
    fn a_long_line_is_windowed_to_the_width_and_the_caret_stays_under_its_span() {
        let line = format!("loss = {} + lgo(x)", vec!["x^2"; 100].join(" + "));
        let at = line.find("lgo").unwrap();
        let source = SourceFile::new("long.toml", line.clone());
        let d = Diagnostic::error("unknown function `lgo`").at(&source, at..at + 3);
        for width in [40, 80, usize::MAX] {
            let text = d.render_within(false, width);
            let rows: Vec<&str> = text.lines().collect();
            let (shown, carets) = (rows[3], rows[4]);
            if width != usize::MAX {
                assert!(shown.chars().count() <= width, "{width}: {shown}");
            }
            let col = carets.chars().position(|c| c == '^').unwrap();
            let under: String = shown.chars().skip(col).take(3).collect();
            assert_eq!(under, "lgo", "{width}:\n{text}");
        }
    }

    #[test]
    fn a_caught_panic_becomes_an_error_naming_the_job() {
        let handle = std::thread::spawn(|| {
            assert!(!panics_are_caught());
            let d =
                catch_panic("testing", || -> u32 { panic!("index 3 out of range") }).unwrap_err();
            let ok = catch_panic("testing", || 7);
            (d, ok.ok(), panics_are_caught())
        });
        let (d, ok, caught) = handle.join().expect("the thread survives its panic");
        assert!(d.is_error());
        assert_eq!(
            d.message,
            "internal error while testing: index 3 out of range"
        );
        assert_eq!(ok, Some(7));
        assert!(caught);
    }
}
