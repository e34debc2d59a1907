//! Pictures: SVG and PNG output of a landscape with two runs (one going NaN midway), the names
//! escaped in SVG text, the size of long runs, degenerate data, and the errors for bad paths.

mod svg;

use std::path::PathBuf;

use gradscope::draw::plot::{PlotData, PlotError, PlotLandscape, PlotRun, save};
use gradscope::format::{fmt_log_tick, fmt_tick};
use gradscope::landscape::{ColorScale, Grid, GridSpec};

const ADAM: &str = "adam (lr=0.01)";
const ODD: &str = "sgd·momentum <&> β=0.9";

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gradscope-plot-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rosenbrock([x, y]: [f64; 2]) -> f64 {
    (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2)
}

/// Rosenbrock over x in [-2, 2], y in [-1, 3].
fn landscape(n: usize) -> PlotLandscape {
    let spec = GridSpec {
        x: (-2.0, 2.0),
        y: (-1.0, 3.0),
        nx: n,
        ny: n,
    };
    let mut grid = Grid::new(spec.clone());
    for j in 0..n {
        for i in 0..n {
            grid.values[j * n + i] = Some(rosenbrock(spec.coord(i, j)));
        }
    }
    let scale = ColorScale::fit(grid.finite(), None).unwrap();
    PlotLandscape {
        minimum: grid.refined_min().map(|(_, p)| p),
        grid,
        scale,
        optimum: Some([1.0, 1.0]),
        labels: ["x".into(), "y".into()],
        cells: false,
    }
}

/// A run of `steps` steps whose loss decays from `start`, NaN over `nan` (loss and norm), with
/// a path spiralling from `from` to the minimum (1, 1), part of it outside the view.
fn run(
    name: &str,
    rgb: [u8; 3],
    steps: u64,
    start: f64,
    nan: std::ops::Range<u64>,
    from: [f64; 2],
) -> PlotRun {
    let curve = |scale: f64| {
        (0..steps)
            .map(|s| {
                let wobble = 1.0 + 0.3 * ((s as f64) * 0.7).sin();
                let v = scale * start * wobble * (-(s as f64) / (steps as f64 / 5.0)).exp();
                (s, if nan.contains(&s) { f64::NAN } else { v })
            })
            .collect()
    };
    let path = (0..200)
        .map(|k: u64| {
            let f = 1.0 - k as f64 / 199.0;
            let a = k as f64 * 0.1;
            let p = [
                1.0 + f * ((from[0] - 1.0) * a.cos() - (from[1] - 1.0) * a.sin()),
                1.0 + f * ((from[0] - 1.0) * a.sin() + (from[1] - 1.0) * a.cos()),
            ];
            (k * steps / 200, p)
        })
        .collect();
    PlotRun {
        name: name.into(),
        rgb,
        loss: curve(1.0),
        grad_norm: curve(20.0),
        path,
    }
}

fn data(steps: u64, grid: usize, nan: bool) -> PlotData {
    let nan = if nan { steps / 2..steps / 2 + 20 } else { 0..0 };
    PlotData {
        title: "rosenbrock".into(),
        runs: vec![
            run(ADAM, [255, 127, 14], steps, 900.0, 0..0, [-1.5, 2.5]),
            run(ODD, [214, 39, 40], steps, 400.0, nan, [-1.8, -0.5]),
        ],
        landscape: Some(landscape(grid)),
    }
}

/// `picture` without its landscape and the runs' paths: the curve panels alone.
fn curves_only(mut picture: PlotData) -> PlotData {
    picture.landscape = None;
    for run in &mut picture.runs {
        run.path.clear();
    }
    picture
}

/// The PNG signature checked, and the width and height from the IHDR chunk.
fn png_size(path: &std::path::Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

#[test]
fn svg_names_every_run_and_marks_nonfinite_values() {
    let dir = scratch("names");
    let with_nan = dir.join("nan.svg");
    save(&data(1000, 48, true), &with_nan).unwrap();
    let texts = svg::svg_texts(&with_nan);
    for name in [ADAM, ODD, "rosenbrock", "NaN/Inf", "log", "step"] {
        assert!(
            texts.iter().any(|t| t == name),
            "no text `{name}` in {texts:?}"
        );
    }

    let clean = dir.join("clean.svg");
    save(&data(1000, 48, false), &clean).unwrap();
    let texts = svg::svg_texts(&clean);
    assert!(texts.iter().any(|t| t == ODD));
    assert!(!texts.iter().any(|t| t == "NaN/Inf"), "{texts:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn png_has_the_signature_and_size() {
    let dir = scratch("png");
    let path = dir.join("picture.png");
    save(&data(1000, 48, true), &path).unwrap();
    assert_eq!(png_size(&path), (1200, 640));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_paths_are_errors() {
    let dir = scratch("errors");
    let picture = data(10, 8, false);
    assert!(matches!(
        save(&picture, &dir.join("picture.jpg")),
        Err(PlotError::Format(_))
    ));
    assert!(matches!(
        save(&picture, &dir.join("picture")),
        Err(PlotError::Format(_))
    ));
    for name in ["picture.svg", "picture.png"] {
        let missing = dir.join("no such directory").join(name);
        assert!(
            matches!(save(&picture, &missing), Err(PlotError::Draw { .. })),
            "{name}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn long_runs_make_small_svgs() {
    let dir = scratch("size");
    let path = dir.join("long.svg");
    save(&data(10_000, 64, true), &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    // The shaded landscape is one embedded PNG whose size depends on the picture, not the runs.
    let image = svg.find("<image").expect("the shading is an image");
    let image_len = svg[image..].find("/>").unwrap() + 2;
    assert_eq!(svg.matches("<image").count(), 1);
    let size = svg.len() - image_len;
    eprintln!("64x64 landscape, 2 runs of 10000 steps: {size} bytes besides the shading");
    assert!(size < 300_000, "{size} bytes");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn curves_without_a_landscape() {
    let dir = scratch("curves");
    let picture = curves_only(data(500, 8, true));
    let svg = dir.join("curves.svg");
    save(&picture, &svg).unwrap();
    let texts = svg::svg_texts(&svg);
    assert!(texts.iter().any(|t| t == ADAM) && texts.iter().any(|t| t == "NaN/Inf"));

    let png = dir.join("curves.png");
    save(&picture, &png).unwrap();
    assert_eq!(png_size(&png), (900, 640));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn degenerate_data_still_draws() {
    let dir = scratch("degenerate");
    let mut land = landscape(16);
    for (k, v) in land.grid.values.iter_mut().enumerate() {
        *v = match k % 7 {
            0 => None,
            1 => Some(f64::INFINITY),
            _ => v.map(|v| v - 50.0),
        };
    }
    land.scale = ColorScale::fit(land.grid.finite(), None).unwrap();
    let negative = PlotRun {
        name: "negative & long".into(),
        rgb: [31, 119, 180],
        loss: (0..100_000).map(|s| (s, -(s as f64).sqrt())).collect(),
        grad_norm: (0..100_000).map(|s| (s, (s % 1000) as f64)).collect(),
        path: [[f64::NAN, 0.0], [-5.0, -5.0], [0.0, 1.0], [1e300, -1e300]]
            .into_iter()
            .zip(0..)
            .map(|(p, k)| (k, p))
            .collect(),
    };
    // Zigzags down the valley, then jumps between two points 5000 times.
    let zigzag = PlotRun {
        name: "zigzag".into(),
        rgb: [255, 0, 255],
        loss: Vec::new(),
        grad_norm: Vec::new(),
        path: (0..150)
            .map(|k| {
                let x = -1.5 + k as f64 * 0.02;
                [x, x * x + if k % 2 == 0 { 0.3 } else { -0.3 }]
            })
            .chain((0..5000).map(|k| [0.5 + 0.5 * (k % 2) as f64, -0.5]))
            .zip(0..)
            .map(|(p, k)| (k, p))
            .collect(),
    };
    let nothing = PlotRun {
        name: "diverged".into(),
        rgb: [0, 0, 0],
        loss: vec![(0, f64::INFINITY), (1, f64::NAN)],
        grad_norm: vec![(0, f64::NAN)],
        path: vec![(0, [0.5, 0.5])],
    };
    let empty = PlotRun {
        name: "empty".into(),
        rgb: [0, 200, 0],
        loss: Vec::new(),
        grad_norm: Vec::new(),
        path: Vec::new(),
    };
    // The zigzag first: the first run's path is solid, one SVG line per piece (later runs'
    // are dashed or dotted, one element per dash).
    let pictures = [
        vec![zigzag, negative, nothing.clone(), empty.clone()],
        vec![nothing],
        vec![empty],
        Vec::new(),
    ];
    for (k, runs) in pictures.into_iter().enumerate() {
        let picture = PlotData {
            title: String::new(),
            runs,
            landscape: Some(land.clone()),
        };
        for ext in ["svg", "png"] {
            save(&picture, &dir.join(format!("{k}.{ext}"))).unwrap();
        }
    }
    let texts = svg::svg_texts(&dir.join("0.svg"));
    assert!(texts.iter().any(|t| t == "negative & long"));
    let svg = std::fs::read_to_string(dir.join("0.svg")).unwrap();
    let zigzag_lines = svg.matches("stroke=\"#FF00FF\"").count();
    assert!(zigzag_lines < 300, "{zigzag_lines} lines for the zigzag");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Every contour level's label (powers of ten on Rosenbrock's log scale), each run's name at its
/// end as well as in the legend, and the optimum's label are text in the SVG.
#[test]
fn svg_labels_contour_levels_run_ends_and_the_optimum() {
    let dir = scratch("contours");
    let path = dir.join("contours.svg");
    let picture = data(1000, 64, false);
    save(&picture, &path).unwrap();
    let texts = svg::svg_texts(&path);
    let scale = picture.landscape.as_ref().unwrap().scale;
    assert!(scale.log);
    let levels = scale.levels();
    assert!(levels.len() >= 3, "{levels:?}");
    for level in levels {
        let label = fmt_log_tick(level);
        // One on a contour line and one on the colour bar.
        let count = texts.iter().filter(|t| **t == label).count();
        assert!(count >= 2, "`{label}` {count} times in {texts:?}");
    }
    for run in &picture.runs {
        let count = texts.iter().filter(|t| **t == run.name).count();
        assert_eq!(count, 2, "`{}` in {texts:?}", run.name);
    }
    assert!(texts.iter().any(|t| t == "optimum"), "{texts:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Tick labels: float noise beside zero is 0, powers of ten on log axes read as such.
#[test]
fn tick_labels_are_readable() {
    let cases = [
        (0.1 + 0.2 - 0.3, 1.0, "0"),
        (-2.220446049250313e-16, 4.0, "0"),
        (0.5, 4.0, "0.5"),
        (-1.5, 4.0, "-1.5"),
        (1e-12, 1e-9, "1.00e-12"),
    ];
    for (v, span, want) in cases {
        assert_eq!(fmt_tick(v, span), want, "{v} on a span of {span}");
    }
    let powers = [
        (1e-3, "10⁻³"),
        (1.0, "10⁰"),
        (100.0, "10²"),
        (1e12, "10¹²"),
        (0.003, "0.003"),
    ];
    for (v, want) in powers {
        assert_eq!(fmt_log_tick(v), want, "{v}");
    }
}

/// A loss that reaches exactly 0 after spanning decades keeps its log axis (in powers of ten),
/// with the zeros on the bottom edge and the axis saying so; a negative loss gets a linear one.
#[test]
fn a_loss_reaching_zero_keeps_its_log_axis() {
    let dir = scratch("zero");
    let decaying = |name: &str, floor: f64| PlotRun {
        name: name.into(),
        rgb: [0, 0, 0],
        loss: (0..100)
            .map(|s| {
                (
                    s,
                    if s < 60 {
                        10f64.powi(1 - s as i32 / 10)
                    } else {
                        floor
                    },
                )
            })
            .collect(),
        grad_norm: (0..100).map(|s| (s, 1.0)).collect(),
        path: Vec::new(),
    };
    let picture = |floor: f64| PlotData {
        title: "zero".into(),
        runs: vec![decaying("run", floor)],
        landscape: None,
    };
    let zero = dir.join("zero.svg");
    save(&picture(0.0), &zero).unwrap();
    let texts = svg::svg_texts(&zero);
    assert!(
        texts.iter().any(|t| t == "loss (0 on the bottom edge)"),
        "{texts:?}"
    );
    assert!(texts.iter().any(|t| t == "10⁻³"), "{texts:?}");
    let negative = dir.join("negative.svg");
    save(&picture(-1.0), &negative).unwrap();
    let texts = svg::svg_texts(&negative);
    assert!(texts.iter().any(|t| t == "loss"), "{texts:?}");
    assert!(!texts.iter().any(|t| t.starts_with("10⁻")), "{texts:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Values within one decade get a linear axis with ticks: on a log axis plotters had no power
/// of ten to label (a loss from 2.8 to 6.25 had no y ticks) or labelled one twice.
#[test]
fn curves_within_a_decade_have_their_ticks() {
    let dir = scratch("decade");
    let mut picture = curves_only(data(500, 8, false));
    for run in &mut picture.runs {
        for (k, v) in &mut run.loss {
            *v = 2.8 + 3.45 * (-(*k as f64) / 100.0).exp();
        }
        for (k, v) in &mut run.grad_norm {
            *v = 0.8 + 0.4 * (-(*k as f64) / 100.0).exp();
        }
    }
    let svg = dir.join("decade.svg");
    save(&picture, &svg).unwrap();
    let texts = svg::svg_texts(&svg);
    let ticks = |lo: f64, hi: f64| {
        texts
            .iter()
            .filter(|t| {
                t.parse::<f64>()
                    .is_ok_and(|v| (lo..=hi).contains(&v) && v.fract() != 0.0)
            })
            .count()
    };
    assert!(ticks(2.5, 6.6) >= 3, "loss ticks: {texts:?}");
    assert!(ticks(0.75, 1.25) >= 3, "gradient norm ticks: {texts:?}");
    assert!(
        texts.iter().filter(|t| *t == "10⁰").count() <= 1,
        "{texts:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
