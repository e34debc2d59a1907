//! Number and duration formatting shared by every front end, and the JSON number writer.

use serde_json::{Value, json};

/// `NaN`, `+Inf` or `-Inf`: how a non-finite value is named in tables, JSON and messages.
pub fn describe(v: f64) -> &'static str {
    if v.is_nan() {
        "NaN"
    } else if v > 0.0 {
        "+Inf"
    } else {
        "-Inf"
    }
}

/// `NaN`, `+Inf`, `-Inf` and `0`, written alike by every number format.
fn fmt_special(v: f64) -> Option<String> {
    if !v.is_finite() {
        Some(describe(v).to_string())
    } else if v == 0.0 {
        Some("0".into())
    } else {
        None
    }
}

/// `text` cut to `max` characters, the cut marked with `…` (one of the `max`).
pub fn cut(text: &str, max: usize) -> String {
    match text.chars().count() <= max {
        true => text.to_string(),
        false => text
            .chars()
            .take(max.saturating_sub(1))
            .chain(std::iter::once('…'))
            .collect(),
    }
}

/// The columns `text` takes in a terminal (a CJK character or an emoji two, a combining mark
/// none): what a table's column must be as wide as.
pub fn columns(text: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(text)
}

/// `text` padded with spaces to `width` terminal columns (see [`columns`]); `{:<w$}` counts
/// characters, and a name with an emoji shifted the rest of its row.
pub fn pad(text: &str, width: usize) -> String {
    format!("{text}{}", " ".repeat(width.saturating_sub(columns(text))))
}

/// Compact number formatting for tables.
pub fn fmt_num(v: f64) -> String {
    if let Some(s) = fmt_special(v) {
        return s;
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        format!("{v:.4e}")
    } else {
        format!("{v:.6}")
    }
}

/// A duration in the unit that suits it: `250 µs`, `3.4 ms`, `45.8 s`.
pub fn fmt_duration(d: std::time::Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1e3)
    } else if ms < 1e4 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.1} s", ms / 1e3)
    }
}

/// A number to three significant digits, for legends and axes where space is short (trailing
/// zeros of a fixed-point form dropped).
pub fn fmt_short(v: f64) -> String {
    let s = fmt_digits(v, 3);
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A number to `digits` significant digits: fixed-point in [1e-3, 1e5), scientific outside.
pub fn fmt_digits(v: f64, digits: usize) -> String {
    if let Some(s) = fmt_special(v) {
        return s;
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.*e}", digits.saturating_sub(1));
    }
    let decimals = (digits as i32 - 1 - a.log10().floor() as i32).max(0) as usize;
    format!("{v:.decimals$}")
}

/// An axis tick label: `v` on an axis spanning `span`, with float noise next to zero (the
/// -2.22e-16 of 0.1 + 0.2 - 0.3) written as the 0 it stands for.
pub fn fmt_tick(v: f64, span: f64) -> String {
    if v.abs() <= span.abs() * 1e-9 {
        "0".to_string()
    } else {
        fmt_short(v)
    }
}

/// A tick label of a log axis: powers of ten as `10^k` (in superscript digits), anything
/// else as [`fmt_short`].
pub fn fmt_log_tick(v: f64) -> String {
    let k = v.log10().round();
    if v > 0.0 && (v.log10() - k).abs() < 1e-9 {
        const SUPERSCRIPT: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];
        let digits: String = (k as i64)
            .unsigned_abs()
            .to_string()
            .chars()
            .map(|d| SUPERSCRIPT[d.to_digit(10).unwrap_or(0) as usize])
            .collect();
        format!("10{}{digits}", if k < 0.0 { "⁻" } else { "" })
    } else {
        fmt_short(v)
    }
}

/// A number for CSV: as Rust writes it (the shortest digits that read back the same value),
/// with an exponent where that would be long (`1.6e40`, not 41 digits; `1e-30`, not 31 zeros).
pub fn csv_num<T: Copy + Into<f64> + std::fmt::Display + std::fmt::LowerExp>(v: T) -> String {
    let x: f64 = v.into();
    match x.abs() {
        a if a.is_finite() && a != 0.0 && !(1e-5..1e16).contains(&a) => format!("{v:e}"),
        _ => v.to_string(),
    }
}

/// JSON has no NaN or Inf: they become strings, so nothing is silently turned into null.
pub fn json_num(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        json!(describe(v))
    }
}

/// `n` and `noun`, plural unless `n` is 1: "1 argument", "2 arguments".
pub fn counted(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// `bytes` in GiB, for messages about memory.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

#[cfg(test)]
mod tests {
    use super::csv_num;

    #[test]
    fn csv_numbers_take_an_exponent_only_where_plain_digits_would_be_long() {
        assert_eq!(csv_num(-1.8572429247880626e19), "-1.8572429247880626e19");
        assert_eq!(csv_num(1e-30), "1e-30");
        assert_eq!(csv_num(0.1f32), "0.1");
        assert_eq!(csv_num(123.5), "123.5");
        assert_eq!(csv_num(0.0), "0");
        assert_eq!(csv_num(f64::NAN), "NaN");
        assert_eq!(csv_num(f64::INFINITY), "inf");
        for x in [1.6e40, 3.3e-7, -2.5e16, 7e-6f64] {
            assert_eq!(csv_num(x).parse::<f64>().unwrap(), x);
        }
    }
}
