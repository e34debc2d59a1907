//! The Sweep tab's model: a sweep over one or two of the selected run's hyper-parameters (`W`
//! opens its form, `lr=logspace(1e-4, 1e-1, 9)`), stepped on a thread of its own so the UI and
//! the file's runs go on; its points fill in as their runs end, the cursor moves over them, and
//! `enter` adds the one under it as a normal run of the file.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;

use super::app::Msg;
use crate::compile::CompiledFile;
use crate::draw::sweep::{SweepChart, SweepLine, SweepOutcome, SweepPicture};
use crate::lang::file::DType;
use crate::optim::spec::{RawValue, value_list};
use crate::optim::tricks::ChainSpec;
use crate::run::sweep::{Ended, Spread, step_points};
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

/// A swept hyper-parameter and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<f64>,
}

impl Axis {
    /// Whether its values are positive and span more than a decade (drawn on a log scale).
    pub fn log(&self) -> bool {
        let lo = self.values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.values.iter().copied().fold(0.0, f64::max);
        lo > 0.0 && hi / lo > 10.0
    }
}

/// A sweep of a file's run: its axes (one or two), each point's chain (the first axis varying
/// fastest) and how it ended, where the cursor is, and whether it still runs.
pub struct SweepView {
    /// The run it sweeps (its name, definition and dtype).
    pub of: String,
    pub def: usize,
    pub dtype: DType,
    pub axes: Vec<Axis>,
    pub chains: Vec<ChainSpec>,
    pub ended: Vec<Option<Ended>>,
    pub cursor: usize,
    pub running: bool,
    pub failed: Option<String>,
    stop: Arc<AtomicBool>,
}

/// The form's text for a run with learning rate `lr`: nine lrs around it.
pub fn default_form(lr: f64) -> String {
    let short = crate::format::fmt_short;
    format!("lr=logspace({}, {}, 9)", short(lr / 30.0), short(lr * 30.0))
}

/// The axes a form's text names (`key=values`, one or two, separated by spaces) and every
/// point's chain: `base` with each key set to its value. Keys are the optimizer's
/// hyper-parameters; values are lists as `gradscope sweep` takes them.
pub fn parse_form(text: &str, base: &ChainSpec) -> Result<(Vec<Axis>, Vec<ChainSpec>), String> {
    let mut axes = Vec::new();
    for item in split_items(text) {
        let Some((key, values)) = item.split_once('=') else {
            return Err(format!(
                "`{item}` is not key=values (e.g. lr=logspace(1e-4, 1e-1, 9))"
            ));
        };
        let (key, values) = (key.trim(), values.trim());
        let values = value_list(values).map_err(|e| e.message)?.ok_or_else(|| {
            format!("`{key}={values}` is one value: give a list, [a, b] or logspace(lo, hi, n)")
        })?;
        let values = values
            .iter()
            .map(|v| {
                v.parse::<f64>()
                    .map_err(|_| format!("`{v}` is not a number"))
            })
            .collect::<Result<Vec<f64>, String>>()?;
        axes.push(Axis {
            key: key.to_string(),
            values,
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
    let mut chains = Vec::new();
    for i in 0..sizes.iter().product::<usize>() {
        let mut chain = base.clone();
        let mut rest = i;
        for (axis, &n) in axes.iter().zip(&sizes) {
            let v = axis.values[rest % n];
            rest /= n;
            chain
                .base
                .set(&axis.key, RawValue::Number(v))
                .map_err(|e| e.message)?;
        }
        chains.push(chain);
    }
    Ok((axes, chains))
}

/// `text`'s items: split at spaces outside brackets and parentheses.
fn split_items(text: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            c if c.is_whitespace() && depth == 0 => {
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
    /// Starts the sweep of `chains` over `axes` for the run `of` (definition `def`, `dtype`,
    /// `steps`) of `compiled` on a thread of its own; what it finds comes to `events` as
    /// [`Msg::Swept`] tagged `session`.
    pub fn start(
        session: u64,
        compiled: CompiledFile,
        of: &str,
        (def, dtype, steps): (usize, DType, u64),
        axes: Vec<Axis>,
        chains: Vec<ChainSpec>,
        events: Sender<Msg>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut view = SweepView {
            of: of.to_string(),
            def,
            dtype,
            axes,
            ended: vec![None; chains.len()],
            chains: chains.clone(),
            cursor: 0,
            running: true,
            failed: None,
            stop: Arc::clone(&stop),
        };
        let send = move |m: SweepMsg| drop(events.send(Msg::Swept(session, m)));
        let started = std::thread::Builder::new()
            .name(format!("sweep:{of}"))
            .spawn(move || {
                crate::lower_thread_priority(crate::run::worker::NICE);
                let runs: Result<Vec<Run>, String> = chains
                    .into_iter()
                    .map(|chain| {
                        let mut request =
                            RunRequest::of(&compiled, def).ok_or("the run's definition is gone")?;
                        request.name = chain.to_string();
                        request.settings.optimizer = chain.base;
                        request.settings.tricks = chain.tricks;
                        request.settings.steps = steps;
                        request.dtype = dtype;
                        request.retention = Retention::Outcome;
                        Run::new(&compiled, request).map_err(|e| e.to_string())
                    })
                    .collect();
                match runs {
                    Ok(runs) => {
                        step_points(&compiled, runs, &stop, |i, e| send(SweepMsg::Ended(i, e)));
                        send(SweepMsg::Done);
                    }
                    Err(why) => send(SweepMsg::Failed(why)),
                }
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

    /// Moves the cursor `dx` along the first axis and `dy` along the second, within the grid.
    pub fn move_cursor(&mut self, dx: isize, dy: isize) {
        let n0 = self.axes[0].values.len();
        let (x, y) = (self.cursor % n0, self.cursor / n0);
        let n1 = self.axes.get(1).map_or(1, |a| a.values.len());
        let x = x.saturating_add_signed(dx).min(n0 - 1);
        let y = y.saturating_add_signed(dy).min(n1 - 1);
        self.cursor = y * n0 + x;
    }

    /// The point with the lowest final loss among those that ended without halting.
    pub fn best(&self) -> Option<usize> {
        self.ended
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                e.filter(|e| e.halted_at.is_none() && e.final_loss.is_finite())
                    .map(|e| (i, e.final_loss))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }

    /// Its picture as `gradscope sweep --out` draws one (the points ended so far): a line over
    /// one key, a heat map over two.
    pub fn picture(&self, title: &str) -> SweepPicture {
        let outcome = |e: &Ended| match e.halted_at {
            Some(_) => SweepOutcome::Halted,
            None if !e.final_loss.is_finite() => SweepOutcome::Diverged,
            None => SweepOutcome::Loss(Spread {
                median: e.final_loss,
                min: e.final_loss,
                max: e.final_loss,
            }),
        };
        let a = &self.axes[0];
        let ended = self.ended.iter().enumerate();
        let chart = match self.axes.get(1) {
            None => SweepChart::Lines {
                axis: a.key.clone(),
                lines: vec![SweepLine {
                    name: self.of.clone(),
                    points: ended
                        .filter_map(|(i, e)| Some((a.values[i], outcome(e.as_ref()?))))
                        .collect(),
                }],
            },
            Some(b) => SweepChart::Heat {
                axes: [a.key.clone(), b.key.clone()],
                values: [a.values.clone(), b.values.clone()],
                cells: ended
                    .filter_map(|(i, e)| {
                        let n = a.values.len();
                        Some(((i % n, i / n), outcome(e.as_ref()?)))
                    })
                    .collect(),
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

impl Drop for SweepView {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
