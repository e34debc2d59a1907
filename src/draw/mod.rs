//! What draws without a terminal: the run palette and the colour conversions, the landscape
//! scene (rendered into a ratatui buffer, for the TUI and `gradscope landscape` alike), and
//! pictures.

pub mod plot;
pub mod scene;
pub mod sweep;

use ratatui::style::Color;

use crate::run::history::History;
use plot::PlotRun;

/// Run colours, in order of creation.
pub const PALETTE: [Color; 8] = [
    Color::Cyan,
    Color::Yellow,
    Color::Magenta,
    Color::Green,
    Color::LightBlue,
    Color::LightRed,
    Color::White,
    Color::LightGreen,
];

/// RGB of a run colour of the TUI's palette (xterm's values), for pictures.
pub fn palette_rgb(c: Color) -> [u8; 3] {
    match c {
        Color::Rgb(r, g, b) => [r, g, b],
        Color::Cyan => [0, 170, 190],
        Color::Yellow => [215, 165, 0],
        Color::Magenta => [190, 0, 190],
        Color::Green => [0, 160, 0],
        Color::LightBlue => [80, 120, 255],
        Color::LightRed => [240, 80, 80],
        Color::LightGreen => [80, 220, 80],
        _ => [120, 120, 120],
    }
}

/// An RGB triple as a terminal colour (landscape bands, non-finite cells).
pub fn terminal_color(c: [u8; 3]) -> Color {
    Color::Rgb(c[0], c[1], c[2])
}

/// An RGB triple as a plotters colour, for SVG and PNG pictures.
pub fn plotters_color([r, g, b]: [u8; 3]) -> plotters::style::RGBColor {
    plotters::style::RGBColor(r, g, b)
}

/// One run's curves and path for a picture.
pub fn plot_run(
    name: &str,
    color: Color,
    history: &History,
    path: Vec<(u64, [f64; 2])>,
) -> PlotRun {
    let cores = history.cores().iter().enumerate();
    PlotRun {
        name: name.to_string(),
        rgb: palette_rgb(color),
        loss: cores.clone().map(|(k, c)| (k as u64, c.loss)).collect(),
        grad_norm: cores
            .map(|(k, c)| (k as u64, f64::from(c.grad_norm)))
            .collect(),
        path,
    }
}
