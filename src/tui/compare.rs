//! The comparison table of a file's runs, as `run` prints it plus each run's difference from
//! the base: the answer to "which trick won?", sortable by any column.

use std::cmp::Ordering;

use ratatui::style::Color;

use super::session::{RunView, Session};
use crate::compile::CompiledFile;
use crate::format::fmt_num;
use crate::run::history::flags;
use crate::run::summary::{TABLE_COLUMNS, best_cell, step_cell};

/// The table's columns, in order: `run`'s, then the difference from the base.
pub const COLUMNS: [&str; 9] = {
    let c = TABLE_COLUMNS;
    [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], "vs base"]
};

/// One run's row: its numbers, and what sorts by them.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub color: Color,
    /// The cells as shown, one per column of [`COLUMNS`].
    pub cells: [String; 9],
    keys: [Key; 9],
}

/// What a column sorts by: numbers (a missing one after every other), or text.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Number(f64),
    Text(String),
}

impl Key {
    fn cmp(&self, other: &Key) -> Ordering {
        match (self, other) {
            (Key::Number(a), Key::Number(b)) => a.total_cmp(b),
            // As people sort names: `L2 (ridge)` after `base`.
            (Key::Text(a), Key::Text(b)) => a.to_lowercase().cmp(&b.to_lowercase()),
            (Key::Number(_), Key::Text(_)) => Ordering::Less,
            (Key::Text(_), Key::Number(_)) => Ordering::Greater,
        }
    }
}

/// A number to sort by; NaN (none) after every other.
fn number(v: f64) -> Key {
    Key::Number(if v.is_nan() { f64::INFINITY } else { v })
}

impl Row {
    /// The row of run `r` of a file compiled as `compiled`.
    fn of(r: &RunView, compiled: Option<&CompiledFile>) -> Self {
        let h = &r.history;
        let totals = h.with_current(h.totals());
        let final_loss = totals.last_loss.unwrap_or(f64::NAN);
        let (best_step, best) = totals.best.map_or((None, f64::NAN), |(k, l)| (Some(k), l));
        let stepped = (0..h.len()).filter(|&k| h.core(k).flags & flags::STEPPED != 0);
        let seconds: f64 = stepped
            .clone()
            .map(|k| f64::from(h.core(k).wall_us) * 1e-6)
            .sum();
        let steps_per_s = if seconds > 0.0 {
            stepped.count() as f64 / seconds
        } else {
            f64::NAN
        };
        let diff = compiled.map_or_else(String::new, |c| super::changes::from_base(c, &r.info));
        Row {
            color: r.color,
            cells: [
                r.info.name.clone(),
                fmt_num(final_loss),
                best_cell(best, best_step),
                step_cell(r.first_nonfinite),
                r.clipped.to_string(),
                r.skipped.to_string(),
                r.stalled.to_string(),
                if steps_per_s.is_nan() {
                    "-".into()
                } else {
                    format!("{steps_per_s:.0}")
                },
                diff.clone(),
            ],
            keys: [
                Key::Text(r.info.name.clone()),
                number(final_loss),
                number(best),
                number(r.first_nonfinite.map_or(f64::NAN, |k| k as f64)),
                number(r.clipped as f64),
                number(r.skipped as f64),
                number(r.stalled as f64),
                number(steps_per_s),
                Key::Text(diff),
            ],
        }
    }
}

/// Every run of `s` as a row, sorted by `column` (ascending, or descending when asked).
pub fn rows(
    s: &Session,
    compiled: Option<&CompiledFile>,
    column: usize,
    descending: bool,
) -> Vec<Row> {
    let mut rows: Vec<Row> = s.runs.iter().map(|r| Row::of(r, compiled)).collect();
    let column = column.min(COLUMNS.len() - 1);
    rows.sort_by(|a, b| {
        let o = a.keys[column].cmp(&b.keys[column]);
        if descending { o.reverse() } else { o }
    });
    rows
}
