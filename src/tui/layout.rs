//! Where things go on screen, shared by drawing and by mouse hit-testing: the panels' areas,
//! the losses list's rows and scrolling, the tab bar's columns and the Landscape tab's inside.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Span;
use ratatui::widgets::Block;

use super::app::{App, Tab};

/// Smallest terminal gradscope draws its panels in.
pub const MIN_SIZE: (u16, u16) = (40, 12);

/// The inspector's width, borders included, on terminals wide enough to show it.
pub const INSPECTOR_WIDTH: u16 = 34;

/// Where each panel goes for a terminal of size `area`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Areas {
    pub losses: Rect,
    pub runs: Rect,
    pub tabs: Rect,
    pub chart: Rect,
    pub inspector: Option<Rect>,
    pub warnings: Option<Rect>,
    pub status: Rect,
}

/// The layout of `app` on a terminal of size `area`, shared by drawing and mouse hit-testing.
pub fn layout(app: &App, area: Rect) -> Areas {
    // The warnings grow with the terminal: a sixth of its height, 7 to 16 rows.
    let warnings_h = if area.height >= 24 {
        (area.height / 6).clamp(7, 16)
    } else {
        0
    };
    let [main, warnings, status] = Layout::vertical([
        Constraint::Min(6),
        Constraint::Length(warnings_h),
        Constraint::Length(1),
    ])
    .areas(area);
    // The left panels are as wide as the longest loss row needs, from a quarter of the
    // terminal (18 to 34 columns) up to a third of it.
    let least = (area.width / 4).clamp(18, 34);
    let left_w = (losses_width(app) + 2).clamp(least, least.max(area.width / 3));
    let right_w = if area.width >= 110 {
        INSPECTOR_WIDTH
    } else {
        0
    };
    let [left, centre, right] = Layout::horizontal([
        Constraint::Length(left_w),
        Constraint::Min(20),
        Constraint::Length(right_w),
    ])
    .areas(main);
    let [losses, runs] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(left);
    let [tabs, chart] = Layout::vertical([Constraint::Length(1), Constraint::Min(3)]).areas(centre);
    Areas {
        losses,
        runs,
        tabs,
        chart,
        inspector: (right_w > 0).then_some(right),
        warnings: (warnings_h > 0).then_some(warnings),
        status,
    }
}

/// The columns the widest row of the losses list takes (without the panel's borders).
fn losses_width(app: &App) -> u16 {
    let widest = file_rows(app)
        .into_iter()
        .map(|r| match r {
            FileRow::Group(group) => group.chars().count() + 1,
            // The indent under a folder, the ✓/✗ badge and the name.
            FileRow::File { index, indented } => {
                2 * usize::from(indented) + 2 + Span::raw(app.file_label(index)).width()
            }
        })
        .max()
        .unwrap_or(0);
    u16::try_from(widest).unwrap_or(u16::MAX)
}

/// A row of the losses list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRow<'a> {
    /// A sub-folder's header.
    Group(&'a str),
    /// File `index` of [`App::files`], indented under a sub-folder.
    File { index: usize, indented: bool },
}

impl FileRow<'_> {
    /// The file this row shows, if any.
    pub fn file(self) -> Option<usize> {
        match self {
            FileRow::Group(_) => None,
            FileRow::File { index, .. } => Some(index),
        }
    }
}

/// The losses list's rows in display order: files grouped by sub-folder under a header each.
pub fn file_rows(app: &App) -> Vec<FileRow<'_>> {
    let mut rows = Vec::new();
    for (group, files) in app.groups() {
        if !group.is_empty() {
            rows.push(FileRow::Group(group));
        }
        rows.extend(files.into_iter().map(|index| FileRow::File {
            index,
            indented: !group.is_empty(),
        }));
    }
    rows
}

/// First visible row of a list drawn with a fresh `ListState`: ratatui scrolls just far enough
/// to show the selected row at the bottom.
pub fn list_offset(selected: usize, height: usize) -> usize {
    (selected + 1).saturating_sub(height.max(1))
}

/// The file shown on row `row` of the losses panel (0 = first row inside the border).
pub fn file_at_row(app: &App, row: usize, panel_height: u16) -> Option<usize> {
    let rows = file_rows(app);
    let selected = rows
        .iter()
        .position(|r| r.file() == Some(app.selected_file))
        .unwrap_or(0);
    let offset = list_offset(selected, panel_height.saturating_sub(2) as usize);
    rows.get(offset + row).and_then(|r| r.file())
}

/// Column where each of the shown tabs' titles starts, for mouse clicks.
fn tab_spans(tabs: &[Tab]) -> Vec<(u16, u16)> {
    let mut x = 1;
    tabs.iter()
        .map(|t| {
            let w = t.title().chars().count() as u16;
            let span = (x, x + w);
            x += w + 3;
            span
        })
        .collect()
}

/// The tab under column `x` of a tab bar showing `tabs`.
pub fn tab_at_column(x: u16, tabs: &[Tab]) -> Option<Tab> {
    tab_spans(tabs)
        .iter()
        .position(|&(a, b)| (a..b).contains(&x))
        .map(|i| tabs[i])
}

/// The Landscape tab's inside: the map and, when there is room, the learning-rate slice.
pub fn landscape_layout(chart: Rect) -> (Rect, Option<Rect>) {
    let inner = Block::bordered().inner(chart);
    if inner.height >= 22 {
        let [scene, slice] =
            Layout::vertical([Constraint::Min(10), Constraint::Length(9)]).areas(inner);
        (scene, Some(slice))
    } else {
        (inner, None)
    }
}

/// A `w` x `h` rectangle in the middle of `area` (clipped to it).
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}
