//! The Sweep tab's model: a sweep over one or two of the selected run's hyper-parameters or the
//! file's consts (`W` opens its form, `lr=logspace(1e-4, 1e-1, 9) eps=[1e-8, 1e-4]`), stepped
//! on a thread of its own so the UI and the file's runs go on; its points fill in as their runs
//! end, the cursor moves over them, and `enter` adds the one under it as a normal run of the
//! file.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;

use super::app::Msg;
use crate::compile::{CompiledFile, Consts};
use crate::draw::sweep::{SweepChart, SweepLine, SweepOutcome, SweepPicture, best_cells};
use crate::optim::spec::{LIST_MAX, RawValue, value_list};
use crate::optim::tricks::ChainSpec;
use crate::run::sweep::{Ended, Spread, step_points};
use crate::run::worker::Overrides;
use crate::run::{Retention, Run, RunRequest};

/// What the sweep thread tells the UI.
#[derive(Debug, Clone)]
pub enum SweepMsg {
    /// Point `i` ended.
    Ended(usize, Ended),
    /// Every point ended (or the sweep was stopped).
    Done,
    /// The sweep could not start.
    Failed(String),
}

/// A swept hyper-parameter or const and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<f64>,
    /// Whether it is a const of the file (else a hyper-parameter of the run's optimizer).
    pub is_const: bool,
}

impl Axis {
    /// Whether its values are positive and span more than a decade (drawn on a log scale).
    pub fn log(&self) -> bool {
        let lo = self.values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.values.iter().copied().fold(0.0, f64::max);
        lo > 0.0 && hi / lo > 10.0
    }
}

/// A sweep of a file's run: its axes (one or two), each point's optimizer and consts (the
/// first axis varying fastest) and how it ended, where the cursor is, and whether it still runs.
pub struct SweepView {
    /// Which sweep of the process it is: what its thread tells the UI names it, so that a sweep
    /// that replaced another takes none of the other's news.
    pub id: u64,
    /// The run it sweeps (its name and definition), and the steps of each point.
    pub of: String,
    pub def: usize,
    pub steps: u64,
    pub axes: Vec<Axis>,
    /// Each point as a run of definition `def` (its optimizer, the run's dtype, its consts).
    pub points: Vec<Overrides>,
    pub ended: Vec<Option<Ended>>,
    pub cursor: usize,
    pub running: bool,
    pub failed: Option<String>,
    stop: Arc<AtomicBool>,
}

/// The form's text for a run with learning rate `lr`: nine lrs from a hundredth of it to a
/// hundred times it, half a decade apart, its own in the middle (the ends written exactly, so
/// the middle is the run's lr and not a rounding of it).
pub fn default_form(lr: f64) -> String {
    // Rounding undoes the division's (0.003 / 100 is 2.9999999999999997e-5).
    use crate::optim::spec::significant;
    let (lo, hi) = (significant(lr / 100.0, 7), significant(lr * 100.0, 7));
    format!("lr=logspace({lo}, {hi}, 9)")
}

/// The axes a form's text names (`key=values`, one or two, separated by spaces) and every
/// point: `run` (the swept run's optimizer, dtype and consts) with each key set to its value.
/// A key is a hyper-parameter of the optimizer or one of the file's `consts`; a name that is
/// both (`eps` of adam and of a loss) must say which, `adam.eps` or `const.eps`. Values are
/// lists as `gradscope sweep` takes them.
pub fn parse_form(
    text: &str,
    run: &Overrides,
    consts: &[String],
) -> Result<(Vec<Axis>, Vec<Overrides>), String> {
    let base = run.optimizer.as_ref().ok_or("the run has no optimizer")?;
    let mut axes = Vec::new();
    for item in split_items(text) {
        let Some((key, values)) = item.split_once('=') else {
            return Err(format!(
                "`{item}` is not key=values (e.g. lr=logspace(1e-4, 1e-1, 9))"
            ));
        };
        let (key, values) = (key.trim(), values.trim());
        let values = value_list(values)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!("`{key}={values}` is one value: give a list, [a, b] or logspace(lo, hi, n)")
            })?;
        let values = values
            .iter()
            .map(|v| {
                v.parse::<f64>()
                    .map_err(|_| format!("`{v}` is not a number"))
            })
            .collect::<Result<Vec<f64>, String>>()?;
        let (key, is_const) = resolve_key(key, base, consts)?;
        if axes
            .iter()
            .any(|a: &Axis| a.key == key && a.is_const == is_const)
        {
            return Err(crate::optim::spec::twice(&key).to_string());
        }
        axes.push(Axis {
            key,
            values,
            is_const,
        });
    }
    match axes.len() {
        1 | 2 => {}
        0 => {
            return Err(
                "name a hyper-parameter and its values, e.g. lr=logspace(1e-4, 1e-1, 9)".into(),
            );
        }
        n => return Err(format!("{n} keys: the tab sweeps one or two")),
    }
    let sizes: Vec<usize> = axes.iter().map(|a| a.values.len()).collect();
    let total = sizes.iter().product::<usize>();
    if total > LIST_MAX {
        return Err(format!(
            "{} points: at most {LIST_MAX} at once",
            sizes
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" × ")
        ));
    }
    let mut points = Vec::with_capacity(total);
    for i in 0..total {
        let mut point = run.clone();
        let chain = point.optimizer.get_or_insert_with(|| base.clone());
        let mut rest = i;
        for (axis, &n) in axes.iter().zip(&sizes) {
            let v = axis.values[rest % n];
            rest /= n;
            if axis.is_const {
                point.consts.retain(|(c, _)| *c != axis.key);
                point.consts.push((axis.key.clone(), v));
            } else {
                chain
                    .base
                    .set(&axis.key, RawValue::Number(v))
                    .map_err(|e| e.to_string())?;
            }
        }
        points.push(point);
    }
    Ok((axes, points))
}

/// The name `key` sets and whether it is one of the file's `consts` rather than a
/// hyper-parameter of `chain`'s optimizer; an error when it names neither or, unprefixed, both.
fn resolve_key(key: &str, chain: &ChainSpec, consts: &[String]) -> Result<(String, bool), String> {
    let optimizer = chain.base.name();
    let hyper: Vec<&str> = chain.base.values().into_iter().map(|(n, _)| n).collect();
    let (name, said) = match (
        key.strip_prefix("const."),
        key.strip_prefix(optimizer)
            .and_then(|k| k.strip_prefix('.')),
    ) {
        (Some(name), _) => (name, Some(true)),
        (_, Some(name)) => (name, Some(false)),
        _ => (key, None),
    };
    let (is_hyper, is_const) = (hyper.contains(&name), consts.iter().any(|c| c == name));
    match (said, is_hyper, is_const) {
        (Some(true), _, true) | (None, false, true) => Ok((name.to_string(), true)),
        (Some(true), _, false) => Err(format!(
            "the file has no const `{name}` ({})",
            match consts.is_empty() {
                true => "it has none".to_string(),
                false => format!("its consts: {}", consts.join(", ")),
            }
        )),
        (Some(false), true, _) | (None, true, false) => Ok((name.to_string(), false)),
        (None, true, true) => Err(format!(
            "`{name}` is both {optimizer}'s hyper-parameter and a const of the file: \
             write {optimizer}.{name} or const.{name}"
        )),
        _ => {
            let names = hyper
                .iter()
                .copied()
                .chain(consts.iter().map(String::as_str));
            let near = crate::diagnostic::did_you_mean(name, names)
                .map_or_else(String::new, |d| format!("; {d}"));
            let consts = match consts.is_empty() {
                true => "it has none".to_string(),
                false => consts.join(", "),
            };
            Err(format!(
                "`{key}` is neither a hyper-parameter of {optimizer} ({}) nor a const of the \
                 file ({consts}){near}",
                hyper.join(", ")
            ))
        }
    }
}

/// `text`'s items: split at spaces and commas outside brackets and parentheses.
fn split_items(text: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            // Keys apart by spaces, or by commas as in a spec (`lr=[..], beta1=[..]`).
            c if (c.is_whitespace() || c == ',') && depth == 0 => {
                if i > start {
                    items.push(&text[start..i]);
                }
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if start < text.len() {
        items.push(&text[start..]);
    }
    items
}

impl SweepView {
    /// Starts the sweep of `points` over `axes` for the run `of` (definition `def`, `steps`)
    /// of `compiled` on a thread of its own; what it finds comes to `events` as [`Msg::Swept`]
    /// tagged `session`.
    pub fn start(
        session: u64,
        compiled: CompiledFile,
        of: &str,
        (def, steps): (usize, u64),
        axes: Vec<Axis>,
        points: Vec<Overrides>,
        events: Sender<Msg>,
    ) -> Self {
        static SWEEPS: AtomicU64 = AtomicU64::new(0);
        let id = SWEEPS.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let mut view = SweepView {
            id,
            of: of.to_string(),
            def,
            steps,
            axes,
            ended: vec![None; points.len()],
            points: points.clone(),
            cursor: 0,
            running: true,
            failed: None,
            stop: Arc::clone(&stop),
        };
        let send = move |m: SweepMsg| drop(events.send(Msg::Swept(session, id, m)));
        let started = std::thread::Builder::new()
            .name(format!("sweep:{of}"))
            .stack_size(crate::GRAPH_STACK)
            .spawn(move || {
                crate::lower_thread_priority(crate::run::worker::NICE);
                // The points of each set of consts share a compiled file (and batch).
                let mut groups: Vec<(&Consts, Vec<usize>)> = Vec::new();
                for (i, p) in points.iter().enumerate() {
                    match groups.iter_mut().find(|(c, _)| **c == p.consts) {
                        Some((_, members)) => members.push(i),
                        None => groups.push((&p.consts, vec![i])),
                    }
                }
                for (consts, members) in groups {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let built = compiled
                        .recompiled(compiled.file.seed, consts)
                        .map_err(|d| d.first().map_or_else(String::new, |d| d.headline()))
                        .and_then(|file| {
                            let runs = members
                                .iter()
                                .map(|&i| point_run(&file, def, steps, &points[i]))
                                .collect::<Result<Vec<Run>, String>>()?;
                            Ok((file, runs))
                        });
                    match built {
                        Ok((file, runs)) => step_points(&file, runs, &stop, |i, e| {
                            send(SweepMsg::Ended(members[i], e))
                        }),
                        Err(why) => return send(SweepMsg::Failed(why)),
                    }
                }
                send(SweepMsg::Done);
            });
        if let Err(e) = started {
            view.running = false;
            view.failed = Some(format!("cannot start the sweep thread: {e}"));
        }
        view
    }

    /// Applies what the sweep thread found.
    pub fn apply(&mut self, m: SweepMsg) {
        match m {
            SweepMsg::Ended(i, e) => {
                if let Some(slot) = self.ended.get_mut(i) {
                    *slot = Some(e);
                }
            }
            SweepMsg::Done => self.running = false,
            SweepMsg::Failed(why) => {
                self.running = false;
                self.failed = Some(why);
            }
        }
    }

    /// Stops the sweep (its thread ends after the step it is in).
    pub fn cancel(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.running = false;
    }

    /// The step along the first key that moves right on screen: over one key the curve places
    /// points by value, so on a descending sweep (`logspace(1, 1e-3, 3)`) right is back a point;
    /// the heat map's columns go in the sweep's order.
    pub fn right(&self) -> isize {
        let v = &self.axes[0].values;
        match self.axes.len() == 1 && v.first() > v.last() {
            true => -1,
            false => 1,
        }
    }

    /// Moves the cursor `dx` along the first axis and `dy` along the second, within the grid.
    pub fn move_cursor(&mut self, dx: isize, dy: isize) {
        let n0 = self.axes[0].values.len();
        let (x, y) = (self.cursor % n0, self.cursor / n0);
        let n1 = self.axes.get(1).map_or(1, |a| a.values.len());
        let x = x.saturating_add_signed(dx).min(n0 - 1);
        let y = y.saturating_add_signed(dy).min(n1 - 1);
        self.cursor = y * n0 + x;
    }

    /// The points with the lowest final loss among those that ended without halting: one, or
    /// one for each value of a swept const (each minimises its own objective, so losses are
    /// compared only along the other key), none when every key is a const.
    /// The pictures mark the same cells ([`best_cells`]); over one key, the missing second key
    /// counts as a const when the first is one, so that a const alone ranks nothing.
    pub fn bests(&self) -> Vec<usize> {
        let first = self.axes[0].is_const;
        let consts = [first, self.axes.get(1).map_or(first, |b| b.is_const)];
        let n = self.axes[0].values.len();
        best_cells(&self.cells(), consts)
            .into_iter()
            .map(|(i, j)| j * n + i)
            .collect()
    }

    /// Each ended point as a cell of the grid (`(index on the first key, on the second)`) and
    /// how it ended, as the pictures take them.
    fn cells(&self) -> Vec<((usize, usize), SweepOutcome)> {
        let n = self.axes[0].values.len();
        let outcome = |e: &Ended| match e.halted_at {
            Some(_) => SweepOutcome::Halted,
            None if !e.final_loss.is_finite() => SweepOutcome::Diverged,
            None => SweepOutcome::Loss(Spread {
                median: e.final_loss,
                min: e.final_loss,
                max: e.final_loss,
            }),
        };
        self.ended
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some(((i % n, i / n), outcome(e.as_ref()?))))
            .collect()
    }

    /// What the tab says when a const is swept: its points minimise different objectives.
    pub fn objectives_note(&self) -> Option<String> {
        let consts: Vec<&str> = self
            .axes
            .iter()
            .filter(|a| a.is_const)
            .map(|a| a.key.as_str())
            .collect();
        let other = self.axes.iter().find(|a| !a.is_const);
        match (consts.first(), other) {
            (None, _) => None,
            (Some(c), Some(o)) => Some(format!(
                "{c} changes the objective: ★ best {} per {c}",
                o.key
            )),
            (Some(_), None) => Some(format!(
                "{} changes the objective: points not ranked",
                consts.join(" and ")
            )),
        }
    }

    /// Its picture as `gradscope sweep --out` draws one (the points ended so far): a line over
    /// one key, a heat map over two.
    pub fn picture(&self, title: &str) -> SweepPicture {
        let a = &self.axes[0];
        let cells = self.cells();
        let chart = match self.axes.get(1) {
            None => SweepChart::Lines {
                axis: a.key.clone(),
                lines: vec![SweepLine {
                    name: self.of.clone(),
                    points: cells
                        .into_iter()
                        .map(|((i, _), o)| (a.values[i], o))
                        .collect(),
                }],
            },
            Some(b) => SweepChart::Heat {
                consts: [a.is_const, b.is_const],
                axes: [a.key.clone(), b.key.clone()],
                values: [a.values.clone(), b.values.clone()],
                cells,
            },
        };
        SweepPicture {
            title: title.to_string(),
            chart,
        }
    }

    /// Point `i`'s value on each axis.
    pub fn values(&self, i: usize) -> Vec<f64> {
        let mut rest = i;
        self.axes
            .iter()
            .map(|a| {
                let v = a.values[rest % a.values.len()];
                rest /= a.values.len();
                v
            })
            .collect()
    }
}

/// The run of `point` (definition `def` of `file`, `steps` long), keeping only its outcome.
fn point_run(
    file: &CompiledFile,
    def: usize,
    steps: u64,
    point: &Overrides,
) -> Result<Run, String> {
    let mut request = RunRequest::of(file, def).ok_or("the run's definition is gone")?;
    if let Some(chain) = point.optimizer.clone() {
        request.name = chain.to_string();
        request.settings.optimizer = chain.base;
        request.settings.tricks = chain.tricks;
    }
    if let Some(dtype) = point.dtype {
        request.dtype = dtype;
    }
    request.settings.steps = steps;
    request.retention = Retention::Outcome;
    Run::new(file, request).map_err(|e| e.to_string())
}

impl Drop for SweepView {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
