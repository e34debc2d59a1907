//! Evaluates `[data]` and the initial `[params]` once, in float64 and in dependency order, so
//! every run of a file starts from the same numbers whatever its dtype.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::arrays::ArrayError;
use super::lower::{Kind, Lowerer, NoFunctions};
use super::plan::Op;
use crate::diagnostic::{Diagnostic, SourceFile, Span, did_you_mean};
use crate::lang::ast::{Expr, ExprKind, Spanned};
use crate::lang::file::{ArrayFile, DataValue, LossFile};

/// A named tensor in f64.
#[derive(Debug, Clone)]
pub struct Named {
    pub name: String,
    pub span: Span,
    pub value: Tensor,
    /// Where its values come from when a file gave them: `read from data/x.npy`, `computed from
    /// data/points.csv` (for shape reports, which then name the file).
    pub origin: Option<String>,
}

struct Entry<'a> {
    name: &'a Spanned<String>,
    kind: Kind,
    source: &'a DataValue,
    deps: Vec<String>,
}

/// How a report names an entry's file: `data/x.npy`, or `m.safetensors, key `fc1.weight``.
fn file_name(v: &DataValue) -> Option<String> {
    let path = v.path()?.node.display();
    Some(match v {
        DataValue::Array(ArrayFile { key: Some(k), .. }) => format!("{path}, key `{}`", k.node),
        _ => path.to_string(),
    })
}

/// Data and initial params, each in file order; None where an entry failed.
pub struct Values {
    pub data: Vec<Option<Named>>,
    pub params: Vec<Option<Named>>,
}

/// Evaluates every data entry and initial param, reporting errors as diagnostics.
pub fn evaluate(file: &LossFile, diags: &mut Vec<Diagnostic>) -> Values {
    let data = file.data.iter().map(|d| (&d.name, Kind::Data, &d.value));
    let params = file.params.iter().map(|p| (&p.name, Kind::Param, &p.value));
    let entries: Vec<Entry> = data
        .chain(params)
        .map(|(name, kind, source)| Entry {
            name,
            kind,
            source,
            deps: match source {
                DataValue::Expr(e) => free_names(e),
                _ => Vec::new(),
            },
        })
        .collect();
    let index: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.node.as_str(), i))
        .collect();
    let order = order(&entries, &index, &file.source, diags);

    let mut values: Vec<Option<Tensor>> = vec![None; entries.len()];
    let mut failed = vec![false; entries.len()];
    // The files each entry's values come from: its own, or those of the entries it reads.
    let mut files: Vec<Vec<String>> = vec![Vec::new(); entries.len()];
    for i in order {
        files[i] = match file_name(entries[i].source) {
            Some(f) => vec![f],
            None => {
                let mut from: Vec<String> = Vec::new();
                for &j in entries[i].deps.iter().filter_map(|d| index.get(d.as_str())) {
                    for f in &files[j] {
                        if !from.contains(f) {
                            from.push(f.clone());
                        }
                    }
                }
                from
            }
        };
        let e = &entries[i];
        if e.kind == Kind::Data
            && let Some(p) = e.deps.iter().find(|d| {
                index
                    .get(d.as_str())
                    .is_some_and(|&j| entries[j].kind == Kind::Param)
            })
        {
            diags.push(
                Diagnostic::error(format!("data `{}` depends on the param `{p}`", e.name.node))
                    .at(&file.source, e.name.span.clone())
                    .help("data stay fixed while params change; compute it in the loss program instead"),
            );
            failed[i] = true;
            continue;
        }
        let value = match e.source {
            DataValue::Csv { path, columns } => {
                read_csv(&file.source, file.dir(), path, columns, diags)
            }
            DataValue::Array(a) => read_array(&file.source, file.dir(), a, diags),
            DataValue::Expr(expr) => {
                let context = format!("{:?}:{}", e.kind, e.name.node);
                let mut lw = Lowerer::new(&file.source, file.seed, &context).without_functions(
                    NoFunctions::Data(e.name.node.clone()),
                    file.functions.iter().map(|f| f.name.node.clone()).collect(),
                );
                for c in &file.consts {
                    if let Ok(t) = Tensor::new(c.value, &Device::Cpu) {
                        lw.bind_known(&c.name.node, t, Kind::Const);
                    }
                }
                for (j, other) in entries.iter().enumerate() {
                    match &values[j] {
                        Some(v) => lw.bind_known(&other.name.node, v.clone(), other.kind),
                        None if failed[j] || j != i => {
                            lw.bind_poisoned(&other.name.node, other.kind)
                        }
                        None => {}
                    }
                }
                let (plan, d) = lw.expression(expr);
                diags.extend(d);
                plan.and_then(|p| match &p.instrs[p.output].op {
                    Op::Const(t) => Some(t.clone()),
                    _ => None,
                })
            }
        };
        match value {
            Some(v) => values[i] = Some(v),
            None => failed[i] = true,
        }
    }
    let named = |i: usize, v: &Option<Tensor>| {
        v.as_ref().map(|value| Named {
            name: entries[i].name.node.clone(),
            span: entries[i].name.span.clone(),
            value: value.clone(),
            origin: match (entries[i].source, files[i].as_slice()) {
                (_, []) => None,
                (DataValue::Expr(_), from) => Some(format!("computed from {}", from.join(" and "))),
                (_, [own, ..]) => Some(format!("read from {own}")),
            },
        })
    };
    let n = file.data.len();
    Values {
        data: values[..n]
            .iter()
            .enumerate()
            .map(|(i, v)| named(i, v))
            .collect(),
        params: values[n..]
            .iter()
            .enumerate()
            .map(|(i, v)| named(n + i, v))
            .collect(),
    }
}

/// Dependency order; entries on a cycle are reported and left out.
fn order(
    entries: &[Entry],
    index: &HashMap<&str, usize>,
    source: &Arc<SourceFile>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        i: usize,
        entries: &[Entry],
        index: &HashMap<&str, usize>,
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        out: &mut Vec<usize>,
        cycles: &mut Vec<Vec<usize>>,
    ) {
        marks[i] = Mark::Active;
        stack.push(i);
        for d in &entries[i].deps {
            let Some(&j) = index.get(d.as_str()) else {
                continue;
            };
            match marks[j] {
                Mark::New => visit(j, entries, index, marks, stack, out, cycles),
                Mark::Active => {
                    let from = stack.iter().position(|&k| k == j).unwrap_or(0);
                    cycles.push(stack[from..].to_vec());
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        out.push(i);
    }
    let mut marks = vec![Mark::New; entries.len()];
    let mut out = Vec::new();
    let mut cycles = Vec::new();
    for i in 0..entries.len() {
        if marks[i] == Mark::New {
            visit(
                i,
                entries,
                index,
                &mut marks,
                &mut Vec::new(),
                &mut out,
                &mut cycles,
            );
        }
    }
    let mut on_cycle = vec![false; entries.len()];
    for cycle in cycles {
        let names: Vec<&str> = cycle
            .iter()
            .map(|&k| entries[k].name.node.as_str())
            .collect();
        let first = &entries[cycle[0]];
        let path = format!("{} -> {}", names.join(" -> "), names[0]);
        diags.push(
            Diagnostic::error(format!("dependency cycle: {path}"))
                .at(source, first.name.span.clone())
                .label("this entry depends on itself through the cycle")
                .help("entries may refer to each other in any order, but not in a circle"),
        );
        cycle.iter().for_each(|&k| on_cycle[k] = true);
    }
    out.retain(|&k| !on_cycle[k]);
    out
}

/// Names an expression refers to.
pub fn free_names(e: &Expr) -> Vec<String> {
    name_uses(e).into_iter().map(|(n, _)| n).collect()
}

/// Every use of a name in an expression, with its span, in source order.
pub fn name_uses(e: &Expr) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    fn walk(e: &Expr, out: &mut Vec<(String, Span)>) {
        match &e.kind {
            ExprKind::Number(_) => {}
            ExprKind::Name(n) => out.push((n.clone(), e.span.clone())),
            ExprKind::Array(items) => items.iter().for_each(|i| walk(i, out)),
            ExprKind::Neg(x) => walk(x, out),
            ExprKind::Binary { lhs, rhs, .. } => {
                walk(lhs, out);
                walk(rhs, out);
            }
            ExprKind::Call { args, kwargs, .. } => args
                .iter()
                .chain(kwargs.iter().map(|k| &k.value))
                .for_each(|a| walk(a, out)),
            ExprKind::Index { target, .. } | ExprKind::Transposed { target, .. } => {
                walk(target, out)
            }
        }
    }
    walk(e, &mut out);
    out
}

fn read_csv(
    source: &Arc<SourceFile>,
    dir: &Path,
    path: &Spanned<std::path::PathBuf>,
    columns: &[Spanned<String>],
    diags: &mut Vec<Diagnostic>,
) -> Option<Tensor> {
    let full = dir.join(&path.node);
    let shown = path.node.display();
    let mut error = |message: String, span: &Span, help: Option<String>| {
        diags.push(
            Diagnostic::error(message)
                .at(source, span.clone())
                .help_opt(help),
        );
        None
    };
    let mut reader = match csv::ReaderBuilder::new().has_headers(true).from_path(&full) {
        Ok(r) => r,
        Err(e) => {
            return error(
                format!("cannot read CSV `{shown}`: {}", io_message(&e)),
                &path.span,
                Some(format!(
                    "the path is relative to the loss file: {}",
                    full.display()
                )),
            );
        }
    };
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => return error(format!("cannot read CSV `{shown}`: {e}"), &path.span, None),
    };
    if headers.iter().all(|h| h.trim().is_empty()) {
        return error(
            format!("CSV `{shown}` is empty: it has no header row and no data"),
            &path.span,
            Some("a first row naming the columns, then one row of numbers per example".into()),
        );
    }
    // A first row of numbers is data: read as the header, it would be lost and its values
    // taken for column names.
    if !headers.is_empty() && headers.iter().all(|h| h.trim().parse::<f64>().is_ok()) {
        return error(
            format!("CSV `{shown}` has no header row: its first row is numbers"),
            &path.span,
            Some(format!(
                "add a first row naming the columns (e.g. {}), which `columns` then picks",
                (1..=headers.len().min(3))
                    .map(|k| format!("c{k}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        );
    }
    let mut picks = Vec::new();
    let mut missing = false;
    for c in columns {
        match headers.iter().position(|h| h.trim() == c.node) {
            Some(k) => picks.push(k),
            None => {
                let help =
                    did_you_mean(&c.node, headers.iter().map(str::trim)).unwrap_or_else(|| {
                        format!(
                            "its header row has: {}",
                            headers.iter().collect::<Vec<_>>().join(", ")
                        )
                    });
                error(
                    format!("CSV `{shown}` has no column `{}`", c.node),
                    &c.span,
                    Some(help),
                );
                missing = true;
            }
        }
    }
    if missing {
        return None;
    }
    let mut values = Vec::new();
    let mut rows = 0;
    for (r, record) in reader.records().enumerate() {
        let record = match record {
            Ok(rec) => rec,
            Err(e) => {
                return error(
                    format!("CSV `{shown}`, row {}: {e}", r + 1),
                    &path.span,
                    None,
                );
            }
        };
        let line = record.position().map_or(r + 2, |p| p.line() as usize);
        for (&k, c) in picks.iter().zip(columns) {
            let cell = record.get(k).unwrap_or("").trim();
            match cell.parse::<f64>() {
                Ok(v) => values.push(v),
                Err(_) => {
                    return error(
                        format!(
                            "CSV `{shown}`, row {} (line {line}), column `{}`: `{cell}` is not a number",
                            r + 1,
                            c.node
                        ),
                        &path.span,
                        Some("every listed column must hold numbers".into()),
                    );
                }
            }
        }
        rows += 1;
    }
    if rows == 0 {
        return error(format!("CSV `{shown}` has no data rows"), &path.span, None);
    }
    Tensor::from_vec(values, (rows, columns.len()), &Device::Cpu).ok()
}

/// One array of a NumPy or safetensors file, as f64; errors point at the key when the key is
/// at fault, else at the path.
fn read_array(
    source: &Arc<SourceFile>,
    dir: &Path,
    a: &ArrayFile,
    diags: &mut Vec<Diagnostic>,
) -> Option<Tensor> {
    let full = dir.join(&a.path.node);
    let shown = a.path.node.display().to_string();
    let key = a.key.as_ref().map(|k| k.node.as_str());
    let e = match super::arrays::read(a.format, &full, key, &shown) {
        Ok(t) => return Some(t),
        Err(e) => e,
    };
    let at_key = matches!(
        e,
        ArrayError::NoKey { .. } | ArrayError::Dtype { .. } | ArrayError::TooLarge { .. }
    );
    let span = match (&a.key, at_key) {
        (Some(k), true) => k.span.clone(),
        _ => a.path.span.clone(),
    };
    let help = match (&e, key) {
        (ArrayError::Io { .. }, _) => Some(format!(
            "the path is relative to the loss file: {}",
            full.display()
        )),
        (ArrayError::NoKey { keys, .. }, Some(k)) => {
            did_you_mean(k, keys.iter().map(String::as_str)).or_else(|| e.help())
        }
        _ => e.help(),
    };
    diags.push(
        Diagnostic::error(e.to_string())
            .at(source, span)
            .help_opt(help),
    );
    None
}

fn io_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Io(io) => io.to_string(),
        _ => e.to_string(),
    }
}
