//! The one key table: every key, the action it names and its help text. It drives key dispatch
//! in `App::update`, the help overlay and the status bar's hints, so they cannot disagree. Each
//! key has one meaning; the one that depends on the tab (`l`) says so in its help.
//! Dialogs read their few keys (arrows, enter, esc, typing) themselves.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What a key asks the app to do, one name per binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAction {
    PlayPause,
    Step,
    Step100,
    Rewind,
    Rewind100,
    Reset,
    NextTab,
    PreviousTab,
    LogScale,
    Smoothing,
    SetSmoothing,
    LastSteps,
    PerParam,
    NextMetric,
    DoubleLr,
    HalveLr,
    AddRun,
    Compare,
    Duplicate,
    Remove,
    ClearBefore,
    Gradcheck,
    LrFind,
    Sweep,
    Hessian,
    Formula,
    NextFocus,
    PreviousFocus,
    Down,
    Up,
    PageDown,
    PageUp,
    First,
    Last,
    Open,
    Edit,
    WriteRuns,
    SavePictures,
    ZoomIn,
    ZoomOut,
    PanLeft,
    PanDown,
    PanUp,
    PanRight,
    Fit,
    NewPlane,
    SwitchPlane,
    Help,
    Quit,
}

/// A key as a binding names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// The key, whatever modifiers are held (shift makes the letter).
    Code(KeyCode),
    /// The letter with ctrl held: it acts everywhere, in dialogs and the help too.
    Ctrl(char),
}

impl Key {
    /// How the help and the status bar show the key.
    pub fn label(self) -> String {
        match self {
            Key::Ctrl(c) => format!("ctrl-{c}"),
            Key::Code(KeyCode::Char(' ')) => "space".into(),
            Key::Code(KeyCode::Char(c)) => c.to_string(),
            Key::Code(KeyCode::Right) => "→".into(),
            Key::Code(KeyCode::Left) => "←".into(),
            Key::Code(KeyCode::Down) => "↓".into(),
            Key::Code(KeyCode::Up) => "↑".into(),
            Key::Code(KeyCode::Tab) => "tab".into(),
            Key::Code(KeyCode::Enter) => "enter".into(),
            Key::Code(KeyCode::BackTab) => "shift-tab".into(),
            Key::Code(code) => code.to_string(),
        }
    }
}

/// One row of the key table.
#[derive(Debug, Clone, Copy)]
pub struct Binding {
    pub keys: &'static [Key],
    pub action: KeyAction,
    /// The help overlay's line.
    pub help: &'static str,
    /// The status bar's word for it, for the few keys it lists.
    pub hint: Option<&'static str>,
}

impl Binding {
    /// The binding's keys as the help shows them (`n  →`).
    pub fn label(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.label())
            .collect::<Vec<_>>()
            .join("  ")
    }
}

const fn bind(
    keys: &'static [Key],
    action: KeyAction,
    help: &'static str,
    hint: Option<&'static str>,
) -> Binding {
    Binding {
        keys,
        action,
        help,
        hint,
    }
}

const fn ch(c: char) -> Key {
    Key::Code(KeyCode::Char(c))
}

use KeyAction as A;
use KeyCode as K;

/// Every key binding, in the help's order.
pub const BINDINGS: &[Binding] = &[
    bind(
        &[ch(' ')],
        A::PlayPause,
        "run / pause all runs of the loss; once all have finished, play them on",
        Some("run/pause"),
    ),
    bind(
        &[ch('n'), Key::Code(K::Right)],
        A::Step,
        "one step (a count first: 25n)",
        Some("step"),
    ),
    bind(&[ch('N')], A::Step100, "100 steps", Some("×100")),
    bind(
        &[ch('b'), Key::Code(K::Left)],
        A::Rewind,
        "rewind one step (a count first: 25b)",
        Some("back"),
    ),
    bind(&[ch('B')], A::Rewind100, "rewind 100 steps", None),
    bind(
        &[ch('r')],
        A::Reset,
        "reset to the initial params",
        Some("reset"),
    ),
    bind(&[ch('t')], A::NextTab, "next chart tab", Some("tab")),
    bind(&[ch('T')], A::PreviousTab, "previous chart tab", None),
    bind(
        &[ch('l')],
        A::LogScale,
        "log scale: the y axis; on the Landscape tab, the colours",
        Some("log"),
    ),
    bind(
        &[ch('s')],
        A::Smoothing,
        "smoothing weight 0 → 0.6 → 0.9 → 0.99 (TensorBoard's EMA)",
        Some("smooth"),
    ),
    bind(&[ch('S')], A::SetSmoothing, "type a smoothing weight", None),
    bind(
        &[ch('a')],
        A::LastSteps,
        "x range: whole run / last 500 steps",
        None,
    ),
    bind(
        &[ch('v')],
        A::PerParam,
        "per-parameter lines (gradient norm tab)",
        None,
    ),
    bind(
        &[ch('M')],
        A::NextMetric,
        "next metric (Metrics tab, files with [metrics])",
        None,
    ),
    bind(
        &[ch('+'), ch('=')],
        A::DoubleLr,
        "double the selected run's lr",
        None,
    ),
    bind(&[ch('-')], A::HalveLr, "halve the selected run's lr", None),
    bind(
        &[ch('o')],
        A::AddRun,
        "add a run with another optimizer or one more trick",
        Some("add"),
    ),
    bind(
        &[ch('R')],
        A::Compare,
        "compare the runs in a table (tab: sort column, r: order)",
        None,
    ),
    bind(
        &[ch('d')],
        A::Duplicate,
        "duplicate the run with another variant or dtype",
        None,
    ),
    bind(
        &[ch('x')],
        A::Remove,
        "remove the selected run (a gone one too)",
        None,
    ),
    bind(
        &[ch('C')],
        A::ClearBefore,
        "clear the faded curves from before the edits",
        None,
    ),
    bind(
        &[ch('g')],
        A::Gradcheck,
        "check the selected run's gradients (finite differences)",
        None,
    ),
    bind(
        &[ch('W')],
        A::Sweep,
        "Sweep tab: lr, a hyper-parameter or a const (arrows, enter, esc)",
        None,
    ),
    bind(
        &[ch('F')],
        A::LrFind,
        "find an lr: the lr range test on a copy of the selected run",
        None,
    ),
    bind(
        &[ch('h')],
        A::Hessian,
        "the Hessian: spectrum, heat map; top λ past 2,000 params",
        None,
    ),
    bind(
        &[ch('G')],
        A::Formula,
        "inspector: the next param's gradient as a formula (then none)",
        None,
    ),
    bind(
        &[Key::Code(K::Tab)],
        A::NextFocus,
        "focus the next panel",
        None,
    ),
    bind(
        &[Key::Code(K::BackTab)],
        A::PreviousFocus,
        "focus the previous panel",
        None,
    ),
    bind(
        &[ch('j'), Key::Code(K::Down)],
        A::Down,
        "down: in lists; scrolls the inspector",
        None,
    ),
    bind(
        &[ch('k'), Key::Code(K::Up)],
        A::Up,
        "up: in lists; scrolls the inspector",
        None,
    ),
    bind(
        &[Key::Code(K::PageDown)],
        A::PageDown,
        "ten down in lists and the inspector",
        None,
    ),
    bind(
        &[Key::Code(K::PageUp)],
        A::PageUp,
        "ten up in lists and the inspector",
        None,
    ),
    bind(
        &[Key::Code(K::Home)],
        A::First,
        "first of a list, top of the inspector",
        None,
    ),
    bind(
        &[Key::Code(K::End)],
        A::Last,
        "last of a list, end of the inspector",
        None,
    ),
    bind(
        &[Key::Code(K::Enter)],
        A::Open,
        "warnings: the selected one in full (small terminal: the newest)",
        None,
    ),
    bind(
        &[ch('e')],
        A::Edit,
        "edit the loss file in $EDITOR, then reload",
        None,
    ),
    bind(
        &[ch('w')],
        A::WriteRuns,
        "write the runs to CSV and JSONL, their params to safetensors",
        None,
    ),
    bind(
        &[ch('p')],
        A::SavePictures,
        "save curves (and landscape) as SVG and PNG",
        None,
    ),
    bind(&[ch('z')], A::ZoomIn, "landscape: zoom in", None),
    bind(&[ch('Z')], A::ZoomOut, "landscape: zoom out", None),
    bind(&[ch('H')], A::PanLeft, "landscape: pan left", None),
    bind(&[ch('J')], A::PanDown, "landscape: pan down", None),
    bind(&[ch('K')], A::PanUp, "landscape: pan up", None),
    bind(&[ch('L')], A::PanRight, "landscape: pan right", None),
    bind(
        &[ch('f')],
        A::Fit,
        "landscape: fit the view to the paths again",
        None,
    ),
    bind(&[ch('c')], A::NewPlane, "landscape: new random plane", None),
    bind(
        &[ch('m')],
        A::SwitchPlane,
        "landscape: switch random ⇄ update plane",
        None,
    ),
    bind(&[ch('?')], A::Help, "this help", Some("help")),
    bind(&[ch('q'), Key::Ctrl('c')], A::Quit, "quit", Some("quit")),
];

/// The action of a ctrl key, which acts everywhere (dialogs and the help included).
pub fn ctrl_action(k: KeyEvent) -> Option<KeyAction> {
    let KeyCode::Char(c) = k.code else {
        return None;
    };
    find(Key::Ctrl(c)).filter(|_| k.modifiers.contains(KeyModifiers::CONTROL))
}

/// The action of a key on the main screen.
pub fn action(code: KeyCode) -> Option<KeyAction> {
    find(Key::Code(code))
}

fn find(key: Key) -> Option<KeyAction> {
    BINDINGS
        .iter()
        .find(|b| b.keys.contains(&key))
        .map(|b| b.action)
}

/// The status bar's reminder in at most `width` columns: `space run/pause  n step  …  ? help
/// q quit`, from the bindings with a hint. Where they do not all fit, the last of the others go
/// first: help and quit are what a new user must find.
pub fn hints(width: usize) -> String {
    let mut hints: Vec<(KeyAction, String)> = BINDINGS
        .iter()
        .filter_map(|b| Some((b.action, format!("{} {}", b.keys[0].label(), b.hint?))))
        .collect();
    let join = |hints: &[(KeyAction, String)]| {
        hints
            .iter()
            .map(|(_, h)| h.as_str())
            .collect::<Vec<_>>()
            .join("  ")
    };
    while join(&hints).chars().count() > width
        && let Some(i) = hints
            .iter()
            .rposition(|(a, _)| !matches!(a, KeyAction::Help | KeyAction::Quit))
    {
        hints.remove(i);
    }
    join(&hints)
}
