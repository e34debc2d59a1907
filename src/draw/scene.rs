//! Drawing a landscape in terminal cells: the grid as colour bands in half-block cells (two
//! samples per cell, so the picture is as tall as it is wide), each run's path in its colour, its
//! current point, the best point any run found, a colour legend, and axes. Used by the TUI's
//! Landscape tab and by `gradscope landscape`. A pure function of a [`Scene`].

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};

use super::terminal_color;
use crate::format::{cut, fmt_short};
use crate::landscape::{BANDS, ColorScale, Grid, NONFINITE_RGB, clip, ramp};

/// How cells are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glyphs {
    /// Upper-half blocks with foreground and background colours: two samples a cell.
    HalfBlock,
    /// One sample a cell as a density character, for output without colour; paths are the
    /// digits of their runs.
    Ascii,
}

/// Density characters of the bands, low to high, for [`Glyphs::Ascii`] (a blank is a cell not
/// computed yet).
const ASCII_RAMP: &[u8] = b".,:;-~=+*#%@&$";
const ASCII_NONFINITE: char = '!';

/// One run's path in plane coordinates, oldest first; the last point is the current one.
#[derive(Debug, Clone)]
pub struct ScenePath {
    pub name: String,
    pub color: Color,
    pub points: Vec<[f64; 2]>,
}

/// Everything a landscape picture shows.
#[derive(Debug, Clone)]
pub struct Scene<'a> {
    pub grid: Option<&'a Grid>,
    /// Bounds of the view in plane coordinates (the grid may cover another area while a new one
    /// is computed).
    pub view: ((f64, f64), (f64, f64)),
    pub labels: [&'a str; 2],
    /// None: log when the values span decades (see [`ColorScale::fit`]).
    pub log: Option<bool>,
    pub paths: Vec<ScenePath>,
    /// The lowest loss any run has reached, and where.
    pub best: Option<([f64; 2], f64)>,
    /// A line under the legend (timing, progress).
    pub status: String,
}

/// Width of the legend column.
const LEGEND_W: u16 = 22;
/// Width of the y-axis labels.
const AXIS_W: u16 = 9;

/// The cells of `area` the map itself takes (without axes and legend); None when too small.
pub fn map_rect(area: Rect) -> Option<Rect> {
    if area.width < AXIS_W + 8 || area.height < 4 {
        return None;
    }
    let legend_w = if area.width >= AXIS_W + LEGEND_W + 16 {
        LEGEND_W
    } else {
        0
    };
    Some(Rect::new(
        area.x + AXIS_W,
        area.y,
        area.width - AXIS_W - legend_w,
        area.height - 1,
    ))
}

impl Scene<'_> {
    /// The colour scale for the grid's values.
    pub fn scale(&self) -> Option<ColorScale> {
        ColorScale::fit(self.grid?.finite(), self.log)
    }

    /// Draws the scene into `area` of `buf`.
    pub fn render(&self, area: Rect, buf: &mut Buffer, glyphs: Glyphs) {
        let Some(map) = map_rect(area) else {
            return;
        };
        let legend_w = area.right() - map.right();
        let scale = self.scale();
        let rows = match glyphs {
            Glyphs::HalfBlock => 2,
            Glyphs::Ascii => 1,
        };
        let (w, h) = (map.width as usize, map.height as usize * rows);
        // Samples, bottom row first: a colour band or non-finite, or None (not computed/outside).
        let mut samples: Vec<Option<Sample>> = vec![None; w * h];
        let ((x0, x1), (y0, y1)) = self.view;
        if let (Some(grid), Some(scale)) = (self.grid, scale) {
            for sy in 0..h {
                for sx in 0..w {
                    let p = [
                        x0 + (sx as f64 + 0.5) / w as f64 * (x1 - x0),
                        y0 + (sy as f64 + 0.5) / h as f64 * (y1 - y0),
                    ];
                    samples[sy * w + sx] = grid
                        .spec
                        .cell(p)
                        .and_then(|(i, j)| grid.display(i, j))
                        .map(|v| match scale.t(v) {
                            Some(t) => Sample::Band(((t * BANDS as f64) as usize).min(BANDS - 1)),
                            None => Sample::NonFinite,
                        });
                }
            }
        }
        // Plane coordinates to fractional sample positions.
        let (kx, ky) = (w as f64 / (x1 - x0), h as f64 / (y1 - y0));
        let to_sample = |p: [f64; 2]| -> Option<[f64; 2]> {
            let (fx, fy) = ((p[0] - x0) * kx, (p[1] - y0) * ky);
            (fx.is_finite() && fy.is_finite()).then_some([fx, fy])
        };
        let size = [w as f64, h as f64];
        for (r, path) in self.paths.iter().enumerate() {
            let mut prev = None;
            for &p in &path.points {
                let cur = to_sample(p);
                let cell = |q: [f64; 2]| (floor(q[0]), floor(q[1]));
                // Most steps of a long path stay within one sample: no line to draw.
                if let (Some(a), Some(b)) = (prev, cur)
                    && cell(a) == cell(b)
                {
                    let (sx, sy) = cell(b);
                    if (0..w as i64).contains(&sx) && (0..h as i64).contains(&sy) {
                        samples[sy as usize * w + sx as usize] = Some(Sample::Path(r));
                    }
                } else if let (Some(a), Some(b)) = (prev, cur)
                    && let Some((t0, t1)) = clip(a, b, [0.0; 2], size)
                {
                    let at = |t: f64| {
                        let q = [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])];
                        cell(q)
                    };
                    for (sx, sy) in line(at(t0), at(t1)) {
                        if (0..w as i64).contains(&sx) && (0..h as i64).contains(&sy) {
                            samples[sy as usize * w + sx as usize] = Some(Sample::Path(r));
                        }
                    }
                }
                prev = cur;
            }
        }
        for cy in 0..map.height as usize {
            for cx in 0..w {
                let cell = &mut buf[(map.x + cx as u16, map.y + cy as u16)];
                // Terminal rows go down, samples go up.
                let top_row = h - 1 - cy * rows;
                match glyphs {
                    Glyphs::HalfBlock => {
                        // A sample not computed yet stays blank (the terminal's background).
                        let top = samples[top_row * w + cx].map(|s| self.color(s));
                        let bottom = samples[(top_row - 1) * w + cx].map(|s| self.color(s));
                        match (top, bottom) {
                            (Some(t), b) => cell
                                .set_symbol("▀")
                                .set_fg(t)
                                .set_bg(b.unwrap_or(Color::Reset)),
                            (None, Some(b)) => cell.set_symbol("▄").set_fg(b).set_bg(Color::Reset),
                            (None, None) => cell.set_symbol(" "),
                        };
                    }
                    Glyphs::Ascii => {
                        let c = match samples[top_row * w + cx] {
                            None => ' ',
                            Some(Sample::Band(b)) => {
                                ASCII_RAMP[b * ASCII_RAMP.len() / BANDS] as char
                            }
                            Some(Sample::NonFinite) => ASCII_NONFINITE,
                            Some(Sample::Path(r)) => {
                                char::from_digit((r as u32 + 1) % 10, 10).unwrap_or('?')
                            }
                        };
                        cell.set_char(c);
                    }
                }
            }
        }
        // Markers: each run's current point, then the best point over them.
        let mut mark = |p: [f64; 2], symbol: &str, style: Style| {
            if let Some([fx, fy]) = to_sample(p)
                && (0.0..w as f64).contains(&fx)
                && (0.0..h as f64).contains(&fy)
            {
                let cy = (h - 1 - fy as usize) / rows;
                let cell = &mut buf[(map.x + fx as u16, map.y + cy as u16)];
                cell.set_symbol(symbol).set_style(style);
            }
        };
        for path in &self.paths {
            if let Some(&p) = path.points.last() {
                mark(
                    p,
                    "●",
                    Style::new().fg(path.color).add_modifier(Modifier::BOLD),
                );
            }
        }
        if let Some((p, _)) = self.best {
            mark(
                p,
                "★",
                Style::new().fg(Color::White).add_modifier(Modifier::BOLD),
            );
        }
        self.render_axes(area, map, buf);
        if legend_w > 0 {
            let legend = Rect::new(map.right(), area.y, legend_w, area.height);
            self.render_legend(legend, buf, scale, glyphs);
        }
    }

    fn color(&self, s: Sample) -> Color {
        match s {
            Sample::Band(b) => terminal_color(ramp((b as f64 + 0.5) / BANDS as f64)),
            Sample::NonFinite => terminal_color(NONFINITE_RGB),
            Sample::Path(r) => self.paths[r].color,
        }
    }

    fn render_axes(&self, area: Rect, map: Rect, buf: &mut Buffer) {
        let ((x0, x1), (y0, y1)) = self.view;
        let dim = Style::new().fg(Color::DarkGray);
        let w = AXIS_W as usize - 1;
        buf.set_stringn(area.x, map.y, format!("{:>w$}", fmt_short(y1)), w, dim);
        buf.set_stringn(
            area.x,
            map.bottom() - 1,
            format!("{:>w$}", fmt_short(y0)),
            w,
            dim,
        );
        let label = format!("{:>w$}", self.labels[1]);
        buf.set_stringn(area.x, map.y + map.height / 2, label, w, Style::new());
        let y = map.bottom();
        let lo = fmt_short(x0);
        let hi = fmt_short(x1);
        buf.set_stringn(map.x, y, &lo, map.width as usize, dim);
        let hi_x = map.right().saturating_sub(hi.chars().count() as u16);
        buf.set_stringn(hi_x, y, &hi, hi.len(), dim);
        let label = self.labels[0];
        let mid = map.x + map.width / 2 - (label.chars().count() as u16 / 2).min(map.width / 2);
        buf.set_stringn(mid, y, label, map.width as usize / 2, Style::new());
    }

    fn render_legend(
        &self,
        area: Rect,
        buf: &mut Buffer,
        scale: Option<ColorScale>,
        glyphs: Glyphs,
    ) {
        let x = area.x + 1;
        let w = area.width.saturating_sub(1) as usize;
        let mut y = area.y;
        let mut line =
            |text: &str, style: Style, swatch: Option<(Color, char)>, buf: &mut Buffer| {
                if y >= area.bottom() {
                    return;
                }
                let mut tx = x;
                if let Some((c, ch)) = swatch {
                    let cell = &mut buf[(x, y)];
                    match glyphs {
                        Glyphs::HalfBlock => {
                            cell.set_symbol("█").set_fg(c);
                        }
                        Glyphs::Ascii => {
                            cell.set_char(ch);
                        }
                    }
                    tx += 2;
                }
                // A cut name ends in `…`, so it does not read as a whole one.
                let room = w.saturating_sub((tx - x) as usize);
                buf.set_stringn(tx, y, cut(text, room), room, style);
                y += 1;
            };
        if let Some(s) = scale {
            let title = if s.log { "loss (log colour)" } else { "loss" };
            line(title, Style::new().add_modifier(Modifier::BOLD), None, buf);
            // The bands from high to low; with little room, every other one.
            let room = area.height.saturating_sub(self.paths.len() as u16 + 6) as usize;
            let step = BANDS.div_ceil(room.max(1)).max(1);
            for b in (0..BANDS).rev().step_by(step) {
                let t = (b as f64 + 0.5) / BANDS as f64;
                let ch = ASCII_RAMP[b * ASCII_RAMP.len() / BANDS] as char;
                let text = format!("≥ {}", fmt_short(s.value_at(b as f64 / BANDS as f64)));
                line(
                    &text,
                    Style::new(),
                    Some((terminal_color(ramp(t)), ch)),
                    buf,
                );
            }
            if self
                .grid
                .is_some_and(|g| g.values.iter().flatten().any(|v| !v.is_finite()))
            {
                line(
                    "NaN/Inf",
                    Style::new(),
                    Some((terminal_color(NONFINITE_RGB), ASCII_NONFINITE)),
                    buf,
                );
            }
        }
        line("", Style::new(), None, buf);
        for (r, p) in self.paths.iter().enumerate() {
            let digit = char::from_digit((r as u32 + 1) % 10, 10).unwrap_or('?');
            line(
                &p.name,
                Style::new().fg(p.color),
                Some((p.color, digit)),
                buf,
            );
        }
        if let Some((_, v)) = self.best {
            let text = format!("★ best {}", fmt_short(v));
            line(&text, Style::new().fg(Color::White), None, buf);
        }
        if let Some((v, _)) = self.grid.and_then(Grid::min) {
            line(
                &format!("grid min {}", fmt_short(v)),
                Style::new(),
                None,
                buf,
            );
        }
        // The grid's status wraps at spaces: its last word is the time it took.
        for part in wrapped(&self.status, w) {
            line(&part, Style::new().fg(Color::DarkGray), None, buf);
        }
    }
}

/// `text` in lines of at most `width` characters, broken at spaces (a longer word alone).
fn wrapped(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(l) if l.chars().count() + 1 + word.chars().count() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sample {
    Band(usize),
    NonFinite,
    Path(usize),
}

/// `x.floor()` as an integer without a call into libm (x86-64's baseline has no rounding
/// instruction; paths of many thousand points call this twice a point every frame). Saturates
/// far outside any map.
fn floor(x: f64) -> i64 {
    let t = x as i64;
    if (t as f64) > x {
        t.saturating_sub(1)
    } else {
        t
    }
}

/// The sample positions of the segment from `a` to `b` (Bresenham); both ends are inside the
/// map (see [`clip`]).
fn line(a: (i64, i64), b: (i64, i64)) -> impl Iterator<Item = (i64, i64)> {
    let (dx, dy) = ((b.0 - a.0).abs(), -(b.1 - a.1).abs());
    let (sx, sy) = ((b.0 - a.0).signum(), (b.1 - a.1).signum());
    let mut p = a;
    let mut err = dx + dy;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let out = p;
        if p == b {
            done = true;
        } else {
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                p.0 += sx;
            }
            if e2 <= dx {
                err += dx;
                p.1 += sy;
            }
        }
        Some(out)
    })
}

/// The buffer as text with ANSI colours (24-bit), one line per row, for `gradscope landscape`.
pub fn ansi(buf: &Buffer, color: bool) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut last: Option<(Color, Color)> = None;
        for x in area.left()..area.right() {
            let cell = &buf[(x, y)];
            if color && last != Some((cell.fg, cell.bg)) {
                out.push_str("\x1b[0m");
                out.push_str(&sgr(cell.fg, 38));
                out.push_str(&sgr(cell.bg, 48));
                last = Some((cell.fg, cell.bg));
            }
            out.push_str(cell.symbol());
        }
        if color {
            out.push_str("\x1b[0m");
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    }
    out
}

/// The SGR sequence setting a foreground (38) or background (48) colour.
fn sgr(c: Color, layer: u8) -> String {
    let named = |n: u8| format!("\x1b[{}m", if layer == 38 { 30 + n } else { 40 + n });
    match c {
        Color::Rgb(r, g, b) => format!("\x1b[{layer};2;{r};{g};{b}m"),
        Color::Black => named(0),
        Color::Red | Color::LightRed => named(1),
        Color::Green | Color::LightGreen => named(2),
        Color::Yellow | Color::LightYellow => named(3),
        Color::Blue | Color::LightBlue => named(4),
        Color::Magenta | Color::LightMagenta => named(5),
        Color::Cyan | Color::LightCyan => named(6),
        Color::White | Color::Gray => named(7),
        Color::DarkGray => format!("\x1b[{}m", if layer == 38 { 90 } else { 100 }),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_wraps_at_spaces_and_keeps_every_word() {
        assert_eq!(
            wrapped("40x48 batched in 364\u{a0}µs", 20),
            ["40x48 batched in", "364\u{a0}µs"]
        );
        assert_eq!(wrapped("computing 10/2304", 20), ["computing 10/2304"]);
        // A word longer than the line stands alone (the legend's line cuts it with `…`).
        assert_eq!(
            wrapped("a b-very-long-word c", 6),
            ["a", "b-very-long-word", "c"]
        );
    }
}
