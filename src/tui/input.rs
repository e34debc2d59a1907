//! Input: what keys (through the table in [`crate::tui::keys`]), dialogs and the mouse do to the
//! [`App`]. Part of `update`: these change the model and return the I/O they need as an
//! [`Action`].

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, MouseButton, MouseEvent, MouseEventKind};
use ratatui::layout::Position;

use super::app::{Action, Answer, App, Focus, Io, Popup, Tab, duplicate_choices};
use super::keys::{self, KeyAction};
use super::line_edit::LineEdit;
use crate::landscape::PlaneKind;
use crate::optim::catalogue::Item;
use crate::run::worker::{Command, Overrides, RunId};

/// Entries `page up`/`page down` move in a long list.
const PAGE: usize = 10;

/// Where a list key moves a dialog's selection from `selected` in a list whose last entry is
/// `last` (arrows, j/k, page up/down, home/end, g/G); None for any other key.
fn moved(selected: usize, code: KeyCode, last: usize) -> Option<usize> {
    let to = match code {
        KeyCode::Up | KeyCode::Char('k') => selected.saturating_sub(1),
        KeyCode::Down | KeyCode::Char('j') => selected + 1,
        KeyCode::PageUp => selected.saturating_sub(PAGE),
        KeyCode::PageDown => selected + PAGE,
        KeyCode::Home | KeyCode::Char('g') => 0,
        KeyCode::End | KeyCode::Char('G') => last,
        _ => return None,
    };
    Some(to.min(last))
}

impl App {
    /// A key press: ctrl keys, then the open dialog or help, then a count digit, then the table.
    pub(super) fn key(&mut self, k: KeyEvent) -> Option<Action> {
        if let Some(a) = keys::ctrl_action(k) {
            return self.act(a, None);
        }
        if self.popup.is_some() {
            self.popup_key(k);
            return None;
        }
        if self.show_help {
            match k.code {
                KeyCode::Char('j') | KeyCode::Down => {
                    self.help_scroll = super::render::help_scrolled(self, true);
                }
                KeyCode::Char('k') | KeyCode::Up => {
                    self.help_scroll = super::render::help_scrolled(self, false);
                }
                _ => self.show_help = false,
            }
            return None;
        }
        if let KeyCode::Char(c @ '0'..='9') = k.code {
            let d = u64::from(c as u8 - b'0');
            self.count = Some(
                self.count
                    .unwrap_or(0)
                    .saturating_mul(10)
                    .saturating_add(d)
                    .min(1_000_000),
            );
            return None;
        }
        if self.tab == Tab::Sweep && self.sweep_key(k.code) {
            return None;
        }
        let count = self.count.take();
        self.message = None;
        self.act(keys::action(k.code)?, count)
    }

    /// Starts the sweep a form's `text` describes over the selected run, and shows it.
    fn start_sweep(&mut self, text: &str) -> Result<(), String> {
        let events = self.events.clone();
        let compiled = self.file().and_then(|f| f.compiled.clone());
        let compiled = compiled.ok_or("the file does not compile")?;
        let session = self.session_mut().ok_or("no session")?;
        let r = session.selected_run().ok_or("no run selected")?;
        let run = Overrides {
            optimizer: Some(r.info.optimizer.clone()),
            dtype: r.info.overrides.dtype,
            consts: r.info.overrides.consts.clone(),
        };
        let consts = compiled.const_names();
        let (axes, points) = super::sweep::parse_form(text, &run, &consts)?;
        let shape = (r.info.def, r.info.steps);
        let name = r.info.name.clone();
        let id = session.id;
        session.sweep = Some(super::sweep::SweepView::start(
            id, compiled, &name, shape, axes, points, events,
        ));
        self.tab = Tab::Sweep;
        Ok(())
    }

    /// The Sweep tab's own keys: arrows move over the points, `enter` adds the one under the
    /// cursor as a run, `esc` stops a running sweep and closes a finished one. Whether it took
    /// the key.
    fn sweep_key(&mut self, code: KeyCode) -> bool {
        let Some(view) = self.session_mut().and_then(|s| s.sweep.as_mut()) else {
            return false;
        };
        // One key lists its points down the tab; two draw the second key's largest value on top.
        let down = if view.axes.len() == 1 {
            (1, 0)
        } else {
            (0, -1)
        };
        match code {
            KeyCode::Left => view.move_cursor(-view.right(), 0),
            KeyCode::Right => view.move_cursor(view.right(), 0),
            KeyCode::Up => view.move_cursor(-down.0, -down.1),
            KeyCode::Down => view.move_cursor(down.0, down.1),
            KeyCode::Enter => {
                let overrides = view.points[view.cursor].clone();
                let def = view.def;
                let what = overrides
                    .optimizer
                    .as_ref()
                    .map_or("the point".to_string(), ToString::to_string);
                self.command(Command::AddRun { def, overrides });
                self.message = Some(format!("added a run of {what} from the sweep"));
            }
            KeyCode::Esc if view.running => view.cancel(),
            KeyCode::Esc => {
                if let Some(s) = self.session_mut() {
                    s.sweep = None;
                }
                self.tab = Tab::Loss;
            }
            _ => return false,
        }
        true
    }

    /// Does what a key of the table names, `count` times where a count applies.
    fn act(&mut self, a: KeyAction, count: Option<u64>) -> Option<Action> {
        let n = count.unwrap_or(1);
        let run = self.selected_run_id();
        match a {
            KeyAction::Quit => return Some(Action::Quit),
            KeyAction::Help => (self.show_help, self.help_scroll) = (true, 0),
            KeyAction::PlayPause => {
                // Counted steps under way, or just asked for, are stopped as playing is.
                let moving = self
                    .session()
                    .is_some_and(|s| s.playing || s.stepping.is_some() || s.steps_asked);
                self.command(if moving {
                    Command::Pause
                } else {
                    Command::Play
                });
            }
            KeyAction::Step => self.command(Command::Step(n)),
            KeyAction::Step100 => self.command(Command::Step(n * 100)),
            KeyAction::Rewind => self.command(Command::Rewind(n)),
            KeyAction::Rewind100 => self.command(Command::Rewind(n * 100)),
            KeyAction::Reset => self.command(Command::Reset),
            KeyAction::DoubleLr => self.run_command(run, |id| Command::ScaleLr(id, 2.0)),
            KeyAction::HalveLr => self.run_command(run, |id| Command::ScaleLr(id, 0.5)),
            KeyAction::Remove => {
                if !self.session_mut().is_some_and(|s| s.forget_selected_gone()) {
                    let name = self
                        .session()
                        .and_then(|s| s.selected_run())
                        .map(|r| r.info.name.clone());
                    self.run_command(run, Command::Remove);
                    // Gone from the list now: a second `x` typed before the worker answers
                    // removes the next run, not this one again.
                    if let (Some(id), Some(s)) = (run, self.session_mut()) {
                        s.drop_run(id);
                    }
                    if let Some(name) = name {
                        self.message = Some(format!("removed run `{name}`"));
                    }
                }
            }
            KeyAction::ClearBefore => {
                if let Some(s) = self.session_mut() {
                    s.clear_before();
                    self.message = Some("cleared the curves from before the edits".into());
                }
            }
            KeyAction::Gradcheck => {
                self.run_command(run, Command::Gradcheck);
                self.overlay_inspector(run, Answer::Gradcheck);
            }
            KeyAction::LrFind => {
                self.run_command(run, Command::LrFind);
                self.overlay_inspector(run, Answer::LrFind);
            }
            KeyAction::Sweep => {
                if let Some(r) = self.session().and_then(|s| s.selected_run()) {
                    let form = super::sweep::default_form(r.info.optimizer.base.lr());
                    self.popup = Some(Popup::Sweep {
                        text: LineEdit::new(form),
                        error: None,
                    });
                }
            }
            KeyAction::Hessian => {
                if let Some((s, id)) = self.session_mut().zip(run) {
                    if let Some(r) = s.runs.iter_mut().find(|r| r.info.id == id) {
                        r.hessian = None;
                        r.curvature = None;
                    }
                    self.popup = Some(Popup::Hessian { run: id, scroll: 0 });
                    self.command(Command::Hessian(id));
                }
            }
            KeyAction::Formula => {
                self.next_formula();
                self.overlay_inspector(run, Answer::Formula);
            }
            KeyAction::AddRun if self.session().is_some() => {
                // Starts at the current chain's optimizer.
                let kind = self.current_chain().base.kind();
                let selected = self
                    .catalogue()
                    .iter()
                    .position(|e| matches!(&e.item, Item::Optimizer(s) if s.kind() == kind));
                self.popup = Some(Popup::PickOptimizer {
                    selected: selected.unwrap_or(0),
                })
            }
            // With no run left it adds one of the file's own back.
            KeyAction::Duplicate
                if self.session().is_some()
                    && self.file().is_some_and(|f| f.compiled.is_some()) =>
            {
                self.popup = Some(Popup::Duplicate { selected: 0 });
            }
            KeyAction::AddRun | KeyAction::Duplicate => self.say_why_no_runs(),
            KeyAction::Compare if self.session().is_some() => {
                self.popup = Some(Popup::Compare {
                    column: 0,
                    descending: false,
                })
            }
            KeyAction::Compare => {}
            KeyAction::LogScale => {
                let landscape = self.tab == Tab::Landscape;
                match self.session_mut().filter(|_| landscape) {
                    Some(s) => s.landscape.toggle_log(),
                    None => self.log_y = !self.log_y,
                }
            }
            KeyAction::Smoothing => {
                self.set_smoothing(super::chart::next_smoothing(self.smoothing))
            }
            // Empty, the current weight in its hint: a prefilled one took the typed digits after it.
            KeyAction::SetSmoothing => {
                self.popup = Some(Popup::Smoothing {
                    text: LineEdit::new(""),
                    error: None,
                })
            }
            KeyAction::LastSteps => self.last_n = !self.last_n,
            KeyAction::PerParam => self.per_param = !self.per_param,
            KeyAction::Open => {
                let n = self.session().map_or(0, |s| s.warnings.len());
                if self.focus == Focus::Warnings && n > 0 {
                    self.popup = Some(Popup::Warning(self.warning.min(n - 1)));
                } else if n > 0 && !self.shows_warnings() {
                    self.popup = Some(Popup::Warning(n - 1));
                }
            }
            KeyAction::Edit => return self.file().map(|f| Action::Edit(f.path.clone())),
            KeyAction::WriteRuns => return self.export("write", Io::WriteRuns),
            KeyAction::SavePictures => return self.export("draw", Io::SavePictures),
            KeyAction::NextFocus => self.cycle_focus(1),
            KeyAction::PreviousFocus => self.cycle_focus(-1),
            KeyAction::NextTab => self.tab = self.tab.next(1, &self.tabs()),
            KeyAction::PreviousTab => {
                let tabs = self.tabs();
                self.tab = self.tab.next(tabs.len() - 1, &tabs);
            }
            KeyAction::NextMetric => self.next_metric(),
            KeyAction::Down => return self.move_selection(n as i64),
            KeyAction::Up => return self.move_selection(-(n as i64)),
            KeyAction::PageDown => {
                return self.move_selection(n.saturating_mul(PAGE as u64) as i64);
            }
            KeyAction::PageUp => {
                return self.move_selection(-(n.saturating_mul(PAGE as u64) as i64));
            }
            // Past either end: the moves clamp to it.
            KeyAction::First => return self.move_selection(-(u32::MAX as i64)),
            KeyAction::Last => return self.move_selection(u32::MAX as i64),
            KeyAction::ZoomIn
            | KeyAction::ZoomOut
            | KeyAction::PanLeft
            | KeyAction::PanDown
            | KeyAction::PanUp
            | KeyAction::PanRight
            | KeyAction::Fit
            | KeyAction::NewPlane
            | KeyAction::SwitchPlane => self.landscape_act(a),
        }
        None
    }

    /// Moves the focus `by` panels along [`App::focusable`], wrapping around.
    fn cycle_focus(&mut self, by: isize) {
        let panels = self.focusable();
        let i = panels.iter().position(|p| *p == self.focus).unwrap_or(0) as isize;
        self.focus = panels[(i + by).rem_euclid(panels.len() as isize) as usize];
    }

    /// Shows the inspector's answer to a key over the panels, where the terminal has no room
    /// for its panel (and there is a run to answer about).
    fn overlay_inspector(&mut self, run: Option<RunId>, key: Answer) {
        if run.is_some()
            && super::layout::layout(self, self.screen())
                .inspector
                .is_none()
        {
            self.inspector_scroll = 0;
            self.popup = Some(Popup::Inspector(key));
        }
    }

    /// `G`: the inspector's gradient formula moves on to the selected run's next param, and past
    /// the last to none; the worker writes it and looks for its first non-finite value.
    fn next_formula(&mut self) {
        let Some(id) = self.selected_run_id() else {
            return;
        };
        let count = self
            .file()
            .and_then(|f| f.compiled.as_ref())
            .map_or(0, |c| c.params.len());
        let Some(r) = self
            .session_mut()
            .and_then(|s| s.runs.iter_mut().find(|r| r.info.id == id))
        else {
            return;
        };
        let next = r.formula.as_ref().map_or(0, |(_, f)| f.param + 1);
        if next >= count {
            r.formula = None;
        } else {
            self.command(Command::Formula(id, next));
        }
    }

    /// Sends the command `make` builds for the selected run, if there is one.
    fn run_command(&mut self, run: Option<RunId>, make: impl FnOnce(RunId) -> Command) {
        match run {
            Some(id) => self.command(make(id)),
            None => self.say_why_no_runs(),
        }
    }

    /// The Landscape tab's own keys: they act on its view only while it is shown.
    fn landscape_act(&mut self, a: KeyAction) {
        if self.tab != Tab::Landscape {
            return;
        }
        let Some(s) = self.session_mut() else {
            return;
        };
        let l = &mut s.landscape;
        match a {
            KeyAction::ZoomIn => l.zoom(0.5),
            KeyAction::ZoomOut => l.zoom(2.0),
            KeyAction::PanLeft => l.pan(-0.25, 0.0),
            KeyAction::PanRight => l.pan(0.25, 0.0),
            KeyAction::PanDown => l.pan(0.0, -0.25),
            KeyAction::PanUp => l.pan(0.0, 0.25),
            KeyAction::Fit => {
                if let Some(plane) = l.plane.clone() {
                    l.fit(&s.runs, &plane);
                }
            }
            _ => {
                let Some(run) = s.selected_run().map(|r| r.info.id) else {
                    return;
                };
                let kind = match (a, s.landscape.kind) {
                    (KeyAction::SwitchPlane, PlaneKind::Random) => PlaneKind::Update,
                    (KeyAction::SwitchPlane, _) => PlaneKind::Random,
                    (_, kind) => kind,
                };
                if s.dims <= 2 {
                    self.message = Some(
                        match s.dims {
                            2 => "this loss has two param values: the landscape is over them",
                            _ => "this loss has a single param value: there is no plane to draw",
                        }
                        .into(),
                    );
                    return;
                }
                s.new_plane(kind, run);
            }
        }
    }

    /// A key while a dialog is open.
    fn popup_key(&mut self, k: KeyEvent) {
        let Some(popup) = self.popup.clone() else {
            return;
        };
        // `q` closes a list as `esc` does, as it closes the table and the panels any key
        // closes: it had done nothing in the lists, where the status bar offers `q`. In a
        // text field it is a letter.
        let typing = matches!(
            popup,
            Popup::EditSpec { .. } | Popup::Sweep { .. } | Popup::Smoothing { .. }
        );
        if k.code == KeyCode::Esc || (k.code == KeyCode::Char('q') && !typing) {
            self.popup = None;
            return;
        }
        match popup {
            Popup::Warning(_) => self.popup = None,
            Popup::Inspector(key) => match k.code {
                KeyCode::Down | KeyCode::Char('j') => {
                    let most = super::render::inspector_len(self, Some(key));
                    self.inspector_scroll = (self.inspector_scroll + 1).min(most);
                }
                KeyCode::Up | KeyCode::Char('k') => {
                    self.inspector_scroll = self.inspector_scroll.saturating_sub(1);
                }
                _ => self.popup = None,
            },
            Popup::Hessian { run, scroll } => {
                self.popup = match k.code {
                    KeyCode::Down | KeyCode::Char('j') => Some(Popup::Hessian {
                        run,
                        scroll: scroll.saturating_add(1),
                    }),
                    KeyCode::Up | KeyCode::Char('k') => Some(Popup::Hessian {
                        run,
                        scroll: scroll.saturating_sub(1),
                    }),
                    _ => None,
                }
            }
            Popup::Compare { column, descending } => {
                let n = super::compare::COLUMNS.len();
                self.popup = match k.code {
                    KeyCode::Tab => Some(Popup::Compare {
                        column: (column + 1) % n,
                        descending,
                    }),
                    KeyCode::BackTab => Some(Popup::Compare {
                        column: (column + n - 1) % n,
                        descending,
                    }),
                    KeyCode::Char('r') => Some(Popup::Compare {
                        column,
                        descending: !descending,
                    }),
                    KeyCode::Enter | KeyCode::Char('R') => None,
                    _ => Some(popup),
                }
            }
            Popup::PickOptimizer { selected } => {
                let entries = self.catalogue();
                let last = entries.len().saturating_sub(1);
                let to = match k.code {
                    KeyCode::Enter => {
                        let current = self.current_chain();
                        let spec = entries.get(selected).map(|e| e.chosen(&current));
                        let spec = spec.unwrap_or_default();
                        // A trick the chain cannot take (one it has, a second precision
                        // trick) says why at once, for the user to edit.
                        let error = self.parse_spec(&spec).err().map(|e| e.to_string());
                        self.popup = Some(Popup::EditSpec {
                            text: LineEdit::new(spec),
                            error,
                        });
                        return;
                    }
                    code => moved(selected, code, last).unwrap_or(selected),
                };
                self.popup = Some(Popup::PickOptimizer { selected: to });
            }
            Popup::EditSpec { mut text, .. } => match k.code {
                KeyCode::Enter => match self.parse_spec(text.text()) {
                    Ok(spec) => {
                        let run = self.session().and_then(|s| s.selected_run());
                        let def = run.map_or(0, |r| r.info.def);
                        let overrides = Overrides {
                            optimizer: Some(spec),
                            dtype: None,
                            consts: run.map_or_else(Vec::new, |r| r.info.overrides.consts.clone()),
                        };
                        self.command(Command::AddRun { def, overrides });
                        self.popup = None;
                    }
                    Err(e) => {
                        let error = Some(e.to_string());
                        self.popup = Some(Popup::EditSpec { text, error });
                    }
                },
                _ => {
                    if text.key(k) {
                        self.popup = Some(Popup::EditSpec { text, error: None });
                    }
                }
            },
            Popup::Sweep { mut text, .. } => match k.code {
                KeyCode::Enter => match self.start_sweep(text.text()) {
                    Ok(()) => self.popup = None,
                    Err(error) => {
                        self.popup = Some(Popup::Sweep {
                            text,
                            error: Some(error),
                        })
                    }
                },
                _ => {
                    if text.key(k) {
                        self.popup = Some(Popup::Sweep { text, error: None });
                    }
                }
            },
            Popup::Smoothing { mut text, .. } => match k.code {
                KeyCode::Enter if text.text().trim().is_empty() => self.popup = None,
                KeyCode::Enter => match text.text().trim().parse::<f64>() {
                    Ok(w) if (0.0..1.0).contains(&w) => {
                        self.set_smoothing(w);
                        self.popup = None;
                    }
                    _ => {
                        let error = Some(format!(
                            "`{text}` is not a smoothing weight: a number from 0 (off) up to, not including, 1"
                        ));
                        self.popup = Some(Popup::Smoothing { text, error });
                    }
                },
                _ => {
                    if text.key(k) {
                        self.popup = Some(Popup::Smoothing { text, error: None });
                    }
                }
            },
            Popup::Duplicate { selected } => {
                let choices = self
                    .file()
                    .and_then(|f| f.compiled.as_ref())
                    .map(duplicate_choices)
                    .unwrap_or_default();
                match k.code {
                    KeyCode::Enter => {
                        let run = self.session().and_then(|s| s.selected_run());
                        let add = match (choices.get(selected), run) {
                            // In another dtype it is the same run: what it overrides stays
                            // overridden and the rest follows the file's edits, as the run
                            // does. On another variant it takes the run's optimizer along.
                            (Some((_, Some(variant), _)), Some(run)) => Some((
                                *variant,
                                Overrides {
                                    optimizer: Some(run.info.optimizer.clone()),
                                    ..Overrides::default()
                                },
                            )),
                            (Some((_, None, dtype)), Some(run)) => Some((
                                run.info.def,
                                Overrides {
                                    dtype: dtype.or(run.info.overrides.dtype),
                                    ..run.info.overrides.clone()
                                },
                            )),
                            // No run left: the file's own, as its definitions make them.
                            (Some((_, variant, dtype)), None) => Some((
                                variant.unwrap_or(0),
                                Overrides {
                                    dtype: *dtype,
                                    ..Overrides::default()
                                },
                            )),
                            (None, _) => None,
                        };
                        if let Some((def, overrides)) = add {
                            self.command(Command::AddRun { def, overrides });
                        }
                        self.popup = None;
                    }
                    code => {
                        let last = choices.len().saturating_sub(1);
                        if let Some(selected) = moved(selected, code, last) {
                            self.popup = Some(Popup::Duplicate { selected });
                        }
                    }
                }
            }
        }
    }

    /// Clicks select files, runs and tabs; the wheel moves the selection under the pointer.
    pub(super) fn mouse(&mut self, m: MouseEvent) -> Option<Action> {
        if self.popup.is_some() || self.show_help {
            return None;
        }
        let areas = super::layout::layout(self, self.screen());
        let pos = Position::new(m.column, m.row);
        match m.kind {
            MouseEventKind::Down(MouseButton::Left) => {
                if areas.losses.contains(pos) {
                    self.focus = Focus::Losses;
                    let row = (m.row - areas.losses.y) as usize;
                    if row >= 1
                        && let Some(i) =
                            super::layout::file_at_row(self, row - 1, areas.losses.height)
                    {
                        return self.select_file(i);
                    }
                } else if areas.runs.contains(pos) {
                    self.focus = Focus::Runs;
                    let row = (m.row - areas.runs.y) as usize;
                    let height = areas.runs.height.saturating_sub(2) as usize;
                    if let Some(s) = self.session_mut()
                        && row >= 1
                    {
                        let k = super::layout::list_offset(s.selected, height) + row - 1;
                        if k < s.runs.len() {
                            s.selected = k;
                        }
                    }
                } else if areas.inspector.is_some_and(|r| r.contains(pos)) {
                    self.focus = Focus::Inspector;
                } else if areas.warnings.is_some_and(|r| r.contains(pos)) {
                    self.focus = Focus::Warnings;
                } else if areas.tabs.contains(pos) {
                    self.focus = Focus::Charts;
                    if let Some(t) = super::layout::tab_at_column(
                        m.column.saturating_sub(areas.tabs.x),
                        &self.tabs(),
                    ) {
                        self.tab = t;
                    }
                }
            }
            MouseEventKind::ScrollDown | MouseEventKind::ScrollUp => {
                if areas.runs.contains(pos) {
                    self.focus = Focus::Runs;
                } else if areas.losses.contains(pos) {
                    self.focus = Focus::Losses;
                }
                let down = m.kind == MouseEventKind::ScrollDown;
                return self.move_selection(if down { 1 } else { -1 });
            }
            _ => {}
        }
        None
    }

    /// `w` and `p`: asks `io` to write the selected file's runs out, or says there are none.
    fn export(&mut self, what: &str, io: fn(PathBuf) -> Io) -> Option<Action> {
        let f = self.file()?;
        if f.session.is_none() {
            self.message = Some(format!("nothing to {what}: this file has no runs"));
            return None;
        }
        Some(Action::Io(io(f.path.clone())))
    }
}
