//! What an edit changed in a loss file, in a few words for the chart's "before the edit"
//! legend: `eps 1e-7 → 1e-4, loss changed at line 6, dtype f32 → f16`.

use std::sync::Arc;

use crate::compile::data::Named;
use crate::compile::{CompiledFile, values_f64};
use crate::lang::file::{ConstEntry, LossFile, OptimizerDef, Setting, SettingValue, Variant};
use crate::optim::settings::is_run_setting;
use crate::run::worker::RunInfo;

/// The differences between two compiled versions of a file, joined with commas (`text
/// changed` when only comments or layout did).
pub fn describe(old: &CompiledFile, new: &CompiledFile) -> String {
    let out = differences(old, new);
    match out.is_empty() {
        true => "text changed".into(),
        false => out.join(", "),
    }
}

/// Whether two compiled versions of a file have the same text and the same data and initial
/// values (a data file changed and changed back).
pub fn same(old: &CompiledFile, new: &CompiledFile) -> bool {
    old.file.source.text == new.file.source.text && differences(old, new).is_empty()
}

/// What differs between two compiled versions of a file, each in a few words.
fn differences(old: &CompiledFile, new: &CompiledFile) -> Vec<String> {
    let (a, b) = (old.file.as_ref(), new.file.as_ref());
    let mut out = Vec::new();
    consts(&mut out, "", &a.consts, &b.consts);
    pair(
        &mut out,
        "dtype",
        Some(a.dtype.name().into()),
        Some(b.dtype.name().into()),
    );
    settings(&mut out, "", &a.optimizer, &b.optimizer);
    if let Some(line) = first_changed_line(a, b) {
        out.push(format!("loss changed at line {line}"));
    }
    values_changed(&mut out, "init of ", &old.params, &new.params);
    values_changed(&mut out, "data ", &old.data, &new.data);
    variants(&mut out, &a.variants, &b.variants);
    optimizers(&mut out, &a.optimizers, &b.optimizers);
    out
}

/// How run `info` differs from the file's base run: its variant's consts (`eps 1e-7 → 1e-4`)
/// and own loss, its dtype and its optimizer where they differ; `-` for none.
pub fn from_base(compiled: &CompiledFile, info: &RunInfo) -> String {
    let file = compiled.file.as_ref();
    let mut out = Vec::new();
    if let Some(v) = info.def.checked_sub(1).and_then(|i| file.variants.get(i)) {
        let overridden: Vec<ConstEntry> = file
            .consts
            .iter()
            .filter(|c| v.consts.iter().any(|w| w.name.node == c.name.node))
            .cloned()
            .collect();
        consts(&mut out, "", &overridden, &v.consts);
        if v.loss.is_some() {
            out.push("its own loss".into());
        }
    }
    if let Some(base) = compiled.runs.first() {
        let text = |s: &dyn std::fmt::Display| Some(s.to_string());
        pair(
            &mut out,
            "dtype",
            text(&base.dtype.name()),
            text(&info.dtype.name()),
        );
        pair(
            &mut out,
            "optimizer",
            text(&base.settings.optimizer),
            text(&info.optimizer),
        );
        // The run settings its definition sets otherwise (steps, schedule, clipping...); the
        // tricks are in the optimizer's chain above.
        if let Some(own) = compiled.runs.get(info.def) {
            let run_settings = |d: &[Setting]| -> Vec<Setting> {
                d.iter()
                    .filter(|s| s.key.node != "tricks")
                    .filter(|s| is_run_setting(&s.key.node))
                    .cloned()
                    .collect()
            };
            settings(
                &mut out,
                "",
                &run_settings(&base.optimizer),
                &run_settings(&own.optimizer),
            );
        }
    }
    if out.is_empty() {
        return "-".into();
    }
    out.join(", ")
}

/// A number as briefly as it was likely written: `0.01`, `1e-7`.
fn num(v: f64) -> String {
    if v == 0.0 || (1e-2..1e5).contains(&v.abs()) {
        v.to_string()
    } else {
        format!("{v:e}")
    }
}

/// `what a → b`, `what = b added` or `what removed`, when the two differ.
fn pair(out: &mut Vec<String>, what: &str, a: Option<String>, b: Option<String>) {
    match (a, b) {
        (Some(a), Some(b)) if a != b => out.push(format!("{what} {a} → {b}")),
        (None, Some(b)) => out.push(format!("{what} = {b} added")),
        (Some(_), None) => out.push(format!("{what} removed")),
        _ => {}
    }
}

/// Every key of either list, in first-seen order, with its value in each.
fn keyed<T>(
    a: &[T],
    b: &[T],
    key: impl Fn(&T) -> &str,
    value: impl Fn(&T) -> String,
) -> Vec<(String, Option<String>, Option<String>)> {
    let mut keys: Vec<&str> = a.iter().map(&key).collect();
    keys.extend(
        b.iter()
            .map(&key)
            .filter(|k| !a.iter().any(|x| key(x) == *k)),
    );
    let find = |list: &[T], k: &str| list.iter().find(|x| key(x) == k).map(&value);
    keys.into_iter()
        .map(|k| (k.to_string(), find(a, k), find(b, k)))
        .collect()
}

fn consts(out: &mut Vec<String>, prefix: &str, a: &[ConstEntry], b: &[ConstEntry]) {
    for (k, x, y) in keyed(a, b, |c| c.name.node.as_str(), |c| num(c.value)) {
        pair(out, &format!("{prefix}{k}"), x, y);
    }
}

fn settings(out: &mut Vec<String>, prefix: &str, a: &[Setting], b: &[Setting]) {
    let text = |s: &Setting| match &s.value.node {
        SettingValue::Number(v) => num(*v),
        SettingValue::Bool(v) => v.to_string(),
        SettingValue::Text(v) => v.clone(),
    };
    for (k, x, y) in keyed(a, b, |s| s.key.node.as_str(), text) {
        // `[optimizer] name` is the optimizer, not the file's name.
        let k = if k == "name" {
            "optimizer".to_string()
        } else {
            k
        };
        pair(out, &format!("{prefix}{k}"), x, y);
    }
}

/// Names whose values differ between the versions (`init of w`, `data x`), and names added or
/// removed.
fn values_changed(out: &mut Vec<String>, prefix: &str, a: &[Named], b: &[Named]) {
    let value = |n: &Named| format!("{:?}", values_f64(&n.value).unwrap_or_default());
    named_changes(out, prefix, keyed(a, b, |n| n.name.as_str(), value));
}

/// `prefix name changed`, `added` or `removed` for each name of `keyed` whose values differ.
fn named_changes(
    out: &mut Vec<String>,
    prefix: &str,
    keyed: Vec<(String, Option<String>, Option<String>)>,
) {
    for (k, x, y) in keyed {
        match (x, y) {
            (Some(x), Some(y)) if x != y => out.push(format!("{prefix}{k} changed")),
            (None, Some(_)) => out.push(format!("{prefix}{k} added")),
            (Some(_), None) => out.push(format!("{prefix}{k} removed")),
            _ => {}
        }
    }
}

/// The first line of the new file's loss program that differs from the old one's.
fn first_changed_line(a: &LossFile, b: &LossFile) -> Option<usize> {
    let text = |f: &LossFile, span: &std::ops::Range<usize>| {
        f.source
            .text
            .get(span.clone())
            .unwrap_or_default()
            .to_string()
    };
    let (x, y) = (text(a, &a.loss.span), text(b, &b.loss.span));
    if x.trim() == y.trim() {
        return None;
    }
    let (xs, ys): (Vec<&str>, Vec<&str>) = (x.lines().collect(), y.lines().collect());
    let i = (0..xs.len().max(ys.len()))
        .find(|&i| xs.get(i).map(|l| l.trim()) != ys.get(i).map(|l| l.trim()))
        .unwrap_or(0);
    Some(b.source.line_col(b.loss.span.start).0 + i)
}

/// Optimizers of the loss language (the file's own or its folders') added, removed or written
/// differently: their hyper-parameters, each state's initial value or the update.
fn optimizers(out: &mut Vec<String>, a: &[Arc<OptimizerDef>], b: &[Arc<OptimizerDef>]) {
    let written = |d: &Arc<OptimizerDef>| {
        let text = |span: &std::ops::Range<usize>| {
            d.source
                .text
                .get(span.clone())
                .unwrap_or_default()
                .to_string()
        };
        let hyper: Vec<(&str, f64)> = d
            .hyper
            .iter()
            .map(|h| (h.name.node.as_str(), h.value))
            .collect();
        let state: Vec<(&str, String)> = d
            .state
            .iter()
            .map(|s| (s.name.node.as_str(), text(&s.init.span)))
            .collect();
        format!("{hyper:?} {state:?} {}", text(&d.update.span))
    };
    named_changes(
        out,
        "optimizer ",
        keyed(a, b, |d| d.name.node.as_str(), written),
    );
}

/// Variants added or removed, and what changed in the ones both versions have.
fn variants(out: &mut Vec<String>, a: &[Variant], b: &[Variant]) {
    for v in b
        .iter()
        .filter(|v| !a.iter().any(|w| w.name.node == v.name.node))
    {
        out.push(format!("variant `{}` added", v.name.node));
    }
    for v in a {
        let Some(w) = b.iter().find(|w| w.name.node == v.name.node) else {
            out.push(format!("variant `{}` removed", v.name.node));
            continue;
        };
        let prefix = format!("{}: ", v.name.node);
        consts(out, &prefix, &v.consts, &w.consts);
        let dtype = |v: &Variant| v.dtype.map(|d| d.name().to_string());
        pair(out, &format!("{prefix}dtype"), dtype(v), dtype(w));
        settings(out, &prefix, &v.optimizer, &w.optimizer);
    }
}
