//! Loss landscapes: grid values against direct evaluation, batched against point-by-point
//! evaluation, the filter-normalized directions' norms, projections of known paths, the next
//! update's learning-rate line, non-finite cells, the terminal picture (snapshot), the Landscape
//! tab's keys and live updates, and `gradscope landscape` / `gradscope plot` end to end.

mod common;
mod svg;

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use gradscope::compile::{CompiledFile, Evaluator};
use gradscope::draw::scene::{Glyphs, Scene, ScenePath};
use gradscope::landscape::surface::{Mode, Surface, lr_multiples};
use gradscope::landscape::{
    ColorScale, Grid, GridSpec, NONFINITE_RGB, PICTURE_CELLS, Plane, PlaneKind, optimum_point,
    param_shapes,
};
use gradscope::load::load_compiled;
use gradscope::run::{Run, RunRequest};
use gradscope::tui::app::{App, Focus, Msg, Tab};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;

fn compiled(path: &str) -> CompiledFile {
    load_compiled(Path::new(path))
        .unwrap_or_else(|d| panic!("{path}: {}", d[0].headline()))
        .0
}

/// A loss file written to a fresh temporary directory.
fn temp_loss(name: &str, text: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("gradscope-landscape-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn rosenbrock(x: f64, y: f64) -> f64 {
    (1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn spec(x: (f64, f64), y: (f64, f64), nx: usize, ny: usize) -> GridSpec {
    GridSpec { x, y, nx, ny }
}

// ---------------------------------------------------------------------------------------------
// Grid values
// ---------------------------------------------------------------------------------------------

#[test]
fn rosenbrock_grid_is_batched_and_matches_the_closed_form() {
    let c = compiled("losses/rosenbrock.toml");
    let plane = Plane::coordinates(&param_shapes(&c)).expect("two scalars");
    assert_eq!(plane.labels, ["x".to_string(), "y".to_string()]);
    let surface = Surface::new(&c, 0).unwrap();
    assert_eq!(surface.mode(), Mode::Batched);
    let (grid, mode) = surface
        .grid(&plane, spec((-2.0, 2.0), (-1.0, 3.0), 17, 13))
        .unwrap();
    assert_eq!(mode, Mode::Batched);
    assert!(grid.is_complete());
    for j in 0..13 {
        for i in 0..17 {
            let [x, y] = grid.spec.coord(i, j);
            let v = grid.values[j * 17 + i].unwrap();
            // The file runs in f32: the params are rounded to f32 first.
            let want = rosenbrock(f64::from(x as f32), f64::from(y as f32));
            assert!(
                rel(v, want) < 1e-5,
                "cell ({i},{j}) at ({x},{y}): {v} vs {want}"
            );
        }
    }
}

#[test]
fn batched_and_point_by_point_grids_agree_with_the_evaluator() {
    let c = compiled("losses/himmelblau.toml");
    let plane = Plane::coordinates(&param_shapes(&c)).unwrap();
    let s = spec((-5.0, 5.0), (-5.0, 5.0), 9, 7);
    let (batched, _) = Surface::new(&c, 0)
        .unwrap()
        .grid(&plane, s.clone())
        .unwrap();
    let (pointwise, mode) = Surface::new(&c, 0)
        .unwrap()
        .pointwise()
        .grid(&plane, s)
        .unwrap();
    assert_eq!(mode, Mode::Pointwise);
    let eval = Evaluator::new(&c, 0).unwrap();
    for k in 0..63 {
        let [x, y] = batched.spec.coord(k % 9, k / 9);
        eval.set_flat(&[x, y]).unwrap();
        let direct = eval.loss().unwrap();
        assert!(rel(batched.values[k].unwrap(), direct) < 1e-6, "cell {k}");
        assert!(rel(pointwise.values[k].unwrap(), direct) < 1e-6, "cell {k}");
    }
}

#[test]
fn a_two_vector_param_batches_through_its_elements() {
    let path = temp_loss(
        "vec2",
        r#"
name = "vector rosenbrock"
dtype = "f64"
loss = "(1 - p[0])^2 + 100 * (p[1] - p[0]^2)^2"
[params]
p = "[-1.5, 2.0]"
"#,
    );
    let c = compiled(path.to_str().unwrap());
    let plane = Plane::coordinates(&param_shapes(&c)).expect("one 2-vector");
    assert_eq!(plane.labels, ["p[0]".to_string(), "p[1]".to_string()]);
    let surface = Surface::new(&c, 0).unwrap();
    assert_eq!(surface.mode(), Mode::Batched);
    let (grid, _) = surface
        .grid(&plane, spec((-2.0, 2.0), (-1.0, 3.0), 8, 8))
        .unwrap();
    for k in 0..64 {
        let [x, y] = grid.spec.coord(k % 8, k / 8);
        assert!(rel(grid.values[k].unwrap(), rosenbrock(x, y)) < 1e-12);
    }
}

#[test]
fn reductions_over_data_fall_back_to_point_by_point() {
    let c = compiled("losses/bench/logreg.toml");
    let surface = Surface::new(&c, 0).unwrap();
    assert_eq!(surface.mode(), Mode::Pointwise);
    let shapes = param_shapes(&c);
    let origin: Vec<f64> = c
        .params
        .iter()
        .flat_map(|p| gradscope::compile::values_f64(&p.value).unwrap())
        .collect();
    let plane = Plane::random(origin, &shapes, 3);
    let (grid, mode) = surface
        .grid(&plane, spec((-1.0, 1.0), (-1.0, 1.0), 3, 3))
        .unwrap();
    assert_eq!(mode, Mode::Pointwise);
    let eval = Evaluator::new(&c, 0).unwrap();
    for k in [0, 4, 8] {
        let [a, b] = grid.spec.coord(k % 3, k / 3);
        eval.set_flat(&plane.point(a, b)).unwrap();
        assert!(rel(grid.values[k].unwrap(), eval.loss().unwrap()) < 1e-6);
    }
    // The centre cell is the plane's origin: the initial loss.
    let init = Evaluator::new(&c, 0).unwrap().loss().unwrap();
    assert!(rel(grid.values[4].unwrap(), init) < 1e-6);
}

#[test]
fn non_finite_cells_are_their_own_colour() {
    let path = temp_loss(
        "log",
        r#"
name = "log of a param"
dtype = "f64"
loss = "log(x) + y^2"
[params]
x = "1.0"
y = "0.5"
"#,
    );
    let c = compiled(path.to_str().unwrap());
    let plane = Plane::coordinates(&param_shapes(&c)).unwrap();
    let (grid, _) = Surface::new(&c, 0)
        .unwrap()
        .grid(&plane, spec((-1.0, 1.0), (-1.0, 1.0), 10, 4))
        .unwrap();
    // Columns left of x = 0 are NaN; the others finite.
    for k in 0..40 {
        let v = grid.values[k].unwrap();
        assert_eq!(v.is_nan(), k % 10 < 5, "cell {k}: {v}");
    }
    let scale = ColorScale::fit(grid.finite(), None).unwrap();
    assert_eq!(scale.rgb(f64::NAN), NONFINITE_RGB);
    assert!((0..5).all(|t| scale.rgb(-1.0 + f64::from(t)) != NONFINITE_RGB));
    let text = ascii(&scene(&grid, &["x", "y"], vec![], None), 50, 10);
    let map_rows: Vec<&str> = text.lines().take(9).collect();
    assert!(map_rows.iter().all(|l| l.contains('!')), "{text}");
    assert!(text.contains("NaN/Inf"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Directions and projections
// ---------------------------------------------------------------------------------------------

#[test]
fn filter_normalized_directions_have_each_filters_norm() {
    let c = compiled("losses/bench/mlp.toml");
    let shapes = param_shapes(&c);
    let weights: Vec<f64> = c
        .params
        .iter()
        .flat_map(|p| gradscope::compile::values_f64(&p.value).unwrap())
        .collect();
    let plane = Plane::random(weights.clone(), &shapes, 11);
    assert_eq!(plane.kind, PlaneKind::Random);
    assert_ne!(plane.d1, plane.d2);
    let mut at = 0;
    for p in &shapes {
        let n = p.len();
        for d in [&plane.d1, &plane.d2] {
            if p.dims.len() == 2 {
                // Each column (one output unit's weights) has the norm of that column of W.
                let cols = p.dims[1];
                for col in 0..cols {
                    let norm = |v: &[f64]| {
                        (0..p.dims[0])
                            .map(|r| v[at + r * cols + col].powi(2))
                            .sum::<f64>()
                            .sqrt()
                    };
                    assert!(
                        rel(norm(d), norm(&weights)) < 1e-9,
                        "{} column {col}",
                        p.name
                    );
                }
            } else {
                // Zero-initialised biases: no direction at all.
                assert!(weights[at..at + n].iter().all(|&w| w == 0.0));
                assert!(d[at..at + n].iter().all(|&x| x == 0.0), "{}", p.name);
            }
        }
        at += n;
    }
}

#[test]
fn a_zero_initialised_model_still_gets_a_plane() {
    // softmax_xent starts from W = 0, b = 0: filter normalization alone would give no direction.
    let c = compiled("losses/softmax_xent.toml");
    let shapes = param_shapes(&c);
    let plane = Plane::random(vec![0.0; 27], &shapes, 1);
    let norm = |d: &[f64]| d.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cos = plane
        .d1
        .iter()
        .zip(&plane.d2)
        .map(|(a, b)| a * b)
        .sum::<f64>()
        / (norm(&plane.d1) * norm(&plane.d2));
    assert!(
        norm(&plane.d1) > 1.0 && cos.abs() < 0.9,
        "|d1| {}, cos {cos}",
        norm(&plane.d1)
    );
    let (grid, _) = Surface::new(&c, 0)
        .unwrap()
        .grid(&plane, spec((-1.0, 1.0), (-1.0, 1.0), 5, 5))
        .unwrap();
    let distinct: std::collections::BTreeSet<u64> = grid.finite().map(f64::to_bits).collect();
    assert!(distinct.len() > 20, "a flat picture: {distinct:?}");
}

#[test]
fn paths_project_onto_their_planes() {
    // Over coordinates the projection of a run's path is its params, step by step.
    let c = compiled("losses/rosenbrock.toml");
    let plane = Plane::coordinates(&param_shapes(&c)).unwrap();
    let mut run = Run::new(
        &c,
        RunRequest::new(&c, 0, "adam".into(), c.runs[0].settings.clone()),
    )
    .unwrap();
    let mut expected = vec![run.flat_params()];
    for _ in 0..20 {
        run.step().unwrap();
        expected.push(run.flat_params());
    }
    let path = run.trajectory(None);
    assert_eq!(path.len(), 21);
    for ((k, p), want) in path.iter().zip(&expected) {
        assert_eq!(plane.project(p), [want[0], want[1]], "step {k}");
    }
    // On a slice of a large model, points built on the plane project back to their coordinates,
    // and moving off the plane orthogonally does not change the projection.
    let mlp = compiled("losses/bench/mlp.toml");
    let shapes = param_shapes(&mlp);
    let origin: Vec<f64> = mlp
        .params
        .iter()
        .flat_map(|p| gradscope::compile::values_f64(&p.value).unwrap())
        .collect();
    let plane = Plane::random(origin, &shapes, 5);
    // A direction off the plane: a random vector minus its projection onto the plane.
    let r = Plane::update(vec![0.0; plane.d1.len()], plane.d1.clone(), 9)
        .unwrap()
        .d2;
    let at_r: Vec<f64> = plane.origin.iter().zip(&r).map(|(o, x)| o + x).collect();
    let [ra, rb] = plane.project(&at_r);
    let off: Vec<f64> = (0..r.len())
        .map(|k| r[k] - ra * plane.d1[k] - rb * plane.d2[k])
        .collect();
    for (a, b) in [(0.0, 0.0), (0.5, -0.25), (-1.0, 2.0)] {
        let p = plane.point(a, b);
        let [pa, pb] = plane.project(&p);
        assert!((pa - a).abs() < 1e-9 && (pb - b).abs() < 1e-9);
        assert!(plane.distance(&p) < 1e-9);
        let moved: Vec<f64> = p.iter().zip(&off).map(|(x, o)| x + 0.3 * o).collect();
        let [ma, mb] = plane.project(&moved);
        assert!(
            (ma - a).abs() < 1e-9 && (mb - b).abs() < 1e-9,
            "({a}, {b}) -> ({ma}, {mb})"
        );
        assert!(plane.distance(&moved) > 0.01);
    }
}

// ---------------------------------------------------------------------------------------------
// The next update's line
// ---------------------------------------------------------------------------------------------

#[test]
fn next_update_is_where_the_step_lands_and_the_line_passes_through_it() {
    let c = compiled("losses/rosenbrock.toml");
    let mut c64 = c.clone();
    c64.runs[0].dtype = gradscope::lang::file::DType::F64;
    for spec in [
        "sgd(lr=1e-3, momentum=0.9)",
        "adam(lr=0.01)",
        "rmsprop(lr=1e-3)",
    ] {
        let mut config = c64.runs[0].settings.clone();
        config.optimizer = gradscope::optim::spec::OptimizerSpec::parse(spec).unwrap();
        let mut run = Run::new(&c64, RunRequest::new(&c64, 0, spec.into(), config)).unwrap();
        for _ in 0..5 {
            run.step().unwrap();
        }
        let origin = run.flat_params();
        let d = run.next_update().unwrap();
        assert_eq!(
            d,
            run.next_update().unwrap(),
            "{spec}: asking twice changes nothing"
        );
        let s = lr_multiples();
        let line = Surface::new(&c64, 0)
            .unwrap()
            .line(&origin, &d, &s)
            .unwrap();
        assert_eq!(s.len(), line.len());
        assert_eq!(
            line[0],
            rosenbrock(origin[0], origin[1]),
            "{spec}: s = 0 stays put"
        );
        run.step().unwrap();
        let after = run.flat_params();
        for k in 0..2 {
            assert!((after[k] - (origin[k] + d[k])).abs() < 1e-12, "{spec}");
        }
        let one = s.iter().position(|&m| m == 1.0).unwrap();
        assert!(
            rel(line[one], rosenbrock(after[0], after[1])) < 1e-12,
            "{spec}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The terminal picture
// ---------------------------------------------------------------------------------------------

const PALETTE: [Color; 4] = [Color::Cyan, Color::Yellow, Color::Magenta, Color::Green];

fn scene<'a>(
    grid: &'a Grid,
    labels: &[&'a str; 2],
    paths: Vec<ScenePath>,
    best: Option<([f64; 2], f64)>,
) -> Scene<'a> {
    Scene {
        grid: Some(grid),
        view: (grid.spec.x, grid.spec.y),
        labels: *labels,
        log: None,
        paths,
        best,
        status: "test".into(),
    }
}

fn ascii(scene: &Scene, w: u16, h: u16) -> String {
    let area = Rect::new(0, 0, w, h);
    let mut buf = Buffer::empty(area);
    scene.render(area, &mut buf, Glyphs::Ascii);
    gradscope::draw::scene::ansi(&buf, false)
}

#[test]
fn rosenbrock_landscape_in_the_terminal() {
    let c = compiled("losses/rosenbrock.toml");
    let plane = Plane::coordinates(&param_shapes(&c)).unwrap();
    let mut paths = Vec::new();
    let mut best: Option<([f64; 2], f64)> = None;
    for (def, color) in PALETTE.iter().enumerate() {
        let config = c.runs[def].settings.clone();
        let mut run = Run::new(
            &c,
            RunRequest::new(&c, def, c.runs[def].name.clone(), config),
        )
        .unwrap();
        for _ in 0..400 {
            let r = run.step().unwrap();
            let p = plane.project(&run.trajectory(Some(r.step)).last().unwrap().1);
            if best.is_none_or(|b| r.core.loss < b.1) {
                best = Some((p, r.core.loss));
            }
        }
        paths.push(ScenePath {
            name: run.name.clone(),
            color: *color,
            points: run
                .trajectory(None)
                .iter()
                .map(|(_, p)| plane.project(p))
                .collect(),
        });
    }
    let (grid, _) = Surface::new(&c, 0)
        .unwrap()
        .grid(&plane, spec((-2.0, 1.5), (-0.5, 3.0), 48, 24))
        .unwrap();
    let text = ascii(&scene(&grid, &["x", "y"], paths.clone(), best), 80, 25);
    insta::with_settings!({snapshot_path => "snapshots/landscape", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("rosenbrock_ascii_80x25", text);
    });
    // In colour, every path shows in its own colour and the grid in the ramp's.
    let area = Rect::new(0, 0, 80, 25);
    let mut buf = Buffer::empty(area);
    scene(&grid, &["x", "y"], paths, best).render(area, &mut buf, Glyphs::HalfBlock);
    for color in PALETTE {
        assert!(
            buf.content()
                .iter()
                .any(|c| c.symbol() == "▀" && (c.fg == color || c.bg == color)),
            "{color:?} path missing"
        );
    }
    let ramp_cells = buf
        .content()
        .iter()
        .filter(|c| matches!(c.bg, Color::Rgb(..)))
        .count();
    assert!(ramp_cells > 800, "{ramp_cells} coloured cells");
}

#[test]
fn the_picture_survives_any_size() {
    let c = compiled("losses/rosenbrock.toml");
    let plane = Plane::coordinates(&param_shapes(&c)).unwrap();
    let (grid, _) = Surface::new(&c, 0)
        .unwrap()
        .grid(&plane, spec((-2.0, 2.0), (-1.0, 3.0), 16, 16))
        .unwrap();
    let path = ScenePath {
        name: "a very long run name that does not fit anywhere at all".into(),
        color: Color::Cyan,
        points: vec![[-1.5, 2.0], [f64::NAN, 0.0], [1e300, -1e300], [0.0, 0.0]],
    };
    for w in 0..70 {
        for h in 0..20 {
            let area = Rect::new(0, 0, w, h);
            let mut buf = Buffer::empty(area);
            for glyphs in [Glyphs::HalfBlock, Glyphs::Ascii] {
                scene(
                    &grid,
                    &["x", "y"],
                    vec![path.clone()],
                    Some(([0.0, 0.0], 1.0)),
                )
                .render(area, &mut buf, glyphs);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Landscape tab
// ---------------------------------------------------------------------------------------------

fn press(app: &mut App, c: char) {
    app.handle(Msg::Key(KeyEvent::new(
        KeyCode::Char(c),
        KeyModifiers::NONE,
    )));
}

/// Ticks and feeds every message until the tab has a complete grid and a fresh slice.
fn settle_landscape(app: &mut App, rx: &Receiver<Msg>) {
    for _ in 0..200 {
        app.handle(Msg::Tick);
        app.settle(rx);
        while let Ok(m) = rx.recv_timeout(Duration::from_millis(50)) {
            app.handle(m);
        }
        let s = app.session().unwrap();
        let r = s.selected_run().unwrap();
        let l = &s.landscape;
        let fresh = l.slice.as_ref().is_some_and(|sl| {
            sl.run == r.info.id && sl.step == r.steps() as u64 && sl.lr_scale == r.lr_scale
        });
        if l.grid.as_ref().is_some_and(Grid::is_complete) && l.elapsed.is_some() && fresh {
            return;
        }
    }
    panic!("the landscape did not settle");
}

fn open_landscape(path: &str, w: u16, h: u16) -> (App, Receiver<Msg>) {
    let (mut app, rx) = App::detached(Path::new(path));
    app.settle(&rx);
    app.handle(Msg::Resize(w, h));
    for _ in 0..4 {
        press(&mut app, 't');
    }
    assert_eq!(app.tab, Tab::Landscape);
    (app, rx)
}

#[test]
fn the_tab_follows_the_paths_and_keeps_its_grid_and_slice_fresh() {
    let (mut app, rx) = open_landscape("losses/rosenbrock.toml", 140, 44);
    for c in "300n".chars() {
        press(&mut app, c);
    }
    settle_landscape(&mut app, &rx);
    let s = app.session().unwrap();
    let l = &s.landscape;
    assert_eq!(l.plane.as_ref().unwrap().kind, PlaneKind::Coordinates);
    let ((x0, x1), (y0, y1)) = l.view.unwrap();
    for r in &s.runs {
        assert_eq!(r.path.latest().unwrap().0, 300);
        for (_, p) in r.path.iter() {
            assert!(
                (x0..=x1).contains(&p[0]) && (y0..=y1).contains(&p[1]),
                "{p:?} outside"
            );
        }
    }
    let grid = l.grid.as_ref().unwrap();
    assert_eq!(l.mode, Some(Mode::Batched));
    // One column per map cell and two rows per line.
    let chart = gradscope::tui::layout::layout(&app, Rect::new(0, 0, 140, 44)).chart;
    let map = gradscope::draw::scene::map_rect(gradscope::tui::layout::landscape_layout(chart).0)
        .unwrap();
    assert_eq!(
        (grid.spec.nx, grid.spec.ny),
        (map.width as usize, 2 * map.height as usize)
    );
    let slice = l.slice.as_ref().unwrap();
    let r = s.selected_run().unwrap();
    let now = r.params.iter().map(|p| p.value.min).collect::<Vec<_>>();
    assert!(rel(slice.line.loss[0], rosenbrock(now[0], now[1])) < 1e-5);

    let mut t = Terminal::new(TestBackend::new(140, 44)).unwrap();
    t.draw(|f| gradscope::tui::render::render(f, &app)).unwrap();
    let screen = format!("{}", t.backend());
    for want in [
        "Landscape of base (f32) · param coordinates",
        "loss (log colour)",
        "★ best",
        "lr × s: now",
    ] {
        assert!(screen.contains(want), "missing {want:?}:\n{screen}");
    }

    // Zoom in, pan, then fit again.
    let before = app.session().unwrap().landscape.view.unwrap();
    press(&mut app, 'z');
    let zoomed = app.session().unwrap().landscape.view.unwrap();
    let width = |v: ((f64, f64), (f64, f64))| v.0.1 - v.0.0;
    assert!((width(zoomed) - width(before) / 2.0).abs() < 1e-9);
    assert!(!app.session().unwrap().landscape.follow);
    press(&mut app, 'L');
    let panned = app.session().unwrap().landscape.view.unwrap();
    assert!((panned.0.0 - zoomed.0.0 - width(zoomed) / 4.0).abs() < 1e-9);
    press(&mut app, 'K');
    assert!(app.session().unwrap().landscape.view.unwrap().1.0 > panned.1.0);
    settle_landscape(&mut app, &rx);
    let g = app.session().unwrap().landscape.grid.clone().unwrap();
    assert_eq!(
        g.spec.x,
        app.session().unwrap().landscape.view.unwrap().0,
        "a new grid for the new view"
    );
    press(&mut app, 'f');
    assert!(app.session().unwrap().landscape.follow);
    // Two params: no other planes.
    press(&mut app, 'c');
    assert!(app.message.as_deref().unwrap().contains("two param values"));
    // Doubling the lr makes the slice stale: the next one is taken at the new lr.
    let before = app.session().unwrap().landscape.slice.clone().unwrap();
    assert_eq!(before.lr_scale, 1.0);
    press(&mut app, '+');
    settle_landscape(&mut app, &rx);
    let after = app.session().unwrap().landscape.slice.clone().unwrap();
    assert_eq!((after.lr_scale, after.step), (2.0, before.step));
    let one = after.line.s.iter().position(|&m| m == 1.0).unwrap();
    let two = before.line.s.iter().position(|&m| m == 2.0).unwrap();
    assert!(
        rel(after.line.loss[one], before.line.loss[two]) < 1e-5,
        "lr x 2 lands where s = 2 did"
    );
}

#[test]
fn a_large_model_gets_a_slice_that_fills_in_and_can_change() {
    let (mut app, rx) = open_landscape("losses/softmax_xent.toml", 120, 40);
    for c in "20n".chars() {
        press(&mut app, c);
    }
    settle_landscape(&mut app, &rx);
    let l = &app.session().unwrap().landscape;
    let plane = l.plane.clone().unwrap();
    assert_eq!(plane.kind, PlaneKind::Random);
    assert_eq!(l.mode, Some(Mode::Pointwise));
    let grid = l.grid.as_ref().unwrap();
    assert!(grid.spec.nx <= 64 && grid.spec.ny <= 64);
    // The selected run's current point is the plane's origin.
    let r = app.session().unwrap().selected_run().unwrap();
    let [a, b] = r.path.latest().unwrap().1;
    assert!(a.abs() < 1e-9 && b.abs() < 1e-9);
    // `m` switches to the update direction, `c` draws new random directions.
    press(&mut app, 'm');
    settle_landscape(&mut app, &rx);
    let l = &app.session().unwrap().landscape;
    assert_eq!(l.plane.as_ref().unwrap().kind, PlaneKind::Update);
    // d1 runs from the point at 90% of the steps to now, so that point sits at (-1, 0).
    let r = app.session().unwrap().selected_run().unwrap();
    let (_, [a0, b0]) = r.path.iter().find(|(k, _)| *k == 18).copied().unwrap();
    assert!((a0 + 1.0).abs() < 1e-6 && b0.abs() < 1e-6, "({a0}, {b0})");
    press(&mut app, 'm');
    press(&mut app, 'c');
    settle_landscape(&mut app, &rx);
    let again = app.session().unwrap().landscape.plane.clone().unwrap();
    assert_eq!(again.kind, PlaneKind::Random);
    assert_ne!(again.d1, plane.d1, "new random directions");
}

// ---------------------------------------------------------------------------------------------
// The commands
// ---------------------------------------------------------------------------------------------

#[test]
fn plot_writes_an_svg_naming_every_run() {
    let dir = std::env::temp_dir().join(format!("gradscope-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("r.svg");
    let out = common::gradscope(&[
        "plot",
        "losses/rosenbrock.toml",
        "-o",
        "sgd(lr=1e-3, momentum=0.9)",
        "-o",
        "adam",
        "--steps",
        "300",
        "--out",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let texts = svg::svg_texts(&svg);
    for name in [
        "sgd(lr=0.001, momentum=0.9)",
        "adam(lr=0.01)", // the file's adam keeps its lr 0.01
        "Rosenbrock",
        "x",
        "y",
    ] {
        assert!(
            texts.iter().any(|t| t == name),
            "{name:?} not among {texts:?}"
        );
    }
    let png = dir.join("r.png");
    let out = common::gradscope(&[
        "plot",
        "losses/norm_at_zero.toml",
        "--steps",
        "20",
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(&png).unwrap().starts_with(b"\x89PNG"),
        "{out:?}"
    );
    let bad = common::gradscope(&[
        "plot",
        "losses/rosenbrock.toml",
        "--steps",
        "5",
        "--out",
        "r.gif",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains(".svg or .png"));
}

#[test]
fn landscape_command_draws_and_reports_its_timing() {
    let out = common::gradscope(&[
        "landscape",
        "losses/rosenbrock.toml",
        "--variant",
        "all",
        "--steps",
        "200",
        "--width",
        "90",
        "--height",
        "24",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(
            "Rosenbrock: loss of `base` (f32) over param coordinates; 64x64 grid batched in"
        ),
        "{text}"
    );
    // Paths are the runs' digits in the uncoloured picture; every run has a next-step line.
    for d in ['1', '2', '3', '4'] {
        assert!(
            text.lines()
                .skip(1)
                .take(22)
                .any(|l| l[9.min(l.len())..].contains(d)),
            "run {d}:\n{text}"
        );
    }
    assert_eq!(text.matches("next step of `").count(), 4);
    let one = common::gradscope(&["landscape", "losses/f16_exp_overflow.toml", "--steps", "3"]);
    let text = String::from_utf8_lossy(&one.stdout);
    assert!(
        text.contains("a single param value, so there is no plane to draw"),
        "{text}"
    );
    assert!(text.contains("next step of `base`"), "{text}");
    let missing = common::gradscope(&["landscape", "losses/no_such_file.toml"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no_such_file.toml"));
}

#[test]
fn landscape_tab_snapshot() {
    let (mut app, rx) = open_landscape("losses/rosenbrock.toml", 120, 36);
    for c in "150n".chars() {
        press(&mut app, c);
    }
    settle_landscape(&mut app, &rx);
    let mut t = Terminal::new(TestBackend::new(120, 36)).unwrap();
    t.draw(|f| gradscope::tui::render::render(f, &app)).unwrap();
    // The grid's timing (`563 µs`, a no-break space inside, on a line of its own or after
    // `in`) differs between runs: blank its digits and unit.
    let screen = format!("{}", t.backend());
    let text: String = screen
        .lines()
        .map(|l| match l.find('\u{a0}') {
            Some(at) => {
                let digits = l[..at]
                    .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .map_or(0, |i| i + 1);
                let unit = l[at..].find([' ', '│']).map_or(l.len(), |i| at + i);
                let blank = " ".repeat(l[digits..unit].chars().count());
                format!("{}{blank}{}\n", &l[..digits], &l[unit..])
            }
            None => format!("{l}\n"),
        })
        .collect();
    insta::with_settings!({snapshot_path => "snapshots/landscape", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("tui_landscape_rosenbrock_120x36", text);
    });
}

#[test]
fn a_diverging_run_does_not_stretch_the_view() {
    let path = temp_loss(
        "diverge",
        r#"
name = "diverging rosenbrock"
loss = "(1 - x)^2 + 100 * (y - x^2)^2"
[params]
x = "-1.5"
y = "2.0"
[optimizer]
name = "adam"
lr = 0.01
[[variants]]
name = "sgd, lr 5e-3"
optimizer = { name = "sgd", lr = 5e-3 }
"#,
    );
    let (mut app, rx) = open_landscape(path.to_str().unwrap(), 140, 44);
    for c in "30n".chars() {
        press(&mut app, c);
    }
    settle_landscape(&mut app, &rx);
    let s = app.session().unwrap();
    let sgd = &s.runs[1];
    let far = sgd.path.iter().map(|(_, p)| p[0].abs()).fold(0.0, f64::max);
    assert!(far > 1e3, "the sgd run diverged: |x| up to {far}");
    let ((x0, x1), _) = s.landscape.view.unwrap();
    assert!(
        x1 - x0 < 20.0,
        "view [{x0}, {x1}] follows the adam run, not the divergence"
    );
    let [ax, _] = s.runs[0].path.latest().unwrap().1;
    assert!((x0..=x1).contains(&ax));
}

#[test]
fn the_star_marks_the_best_point_of_the_runs_whose_objective_is_drawn() {
    // Two variants' objectives lie 5 and 10 below the base's, along the same paths: their points
    // are lower, but not on the base's map. The one of another optimizer has the base's
    // objective, and gets lowest on it (plain GD on x^2 + y^2 shrinks θ by 1 - 2 lr a step).
    let path = temp_loss(
        "star",
        r#"
name = "lifted bowls"
loss = "x^2 + y^2 + lift"
[consts]
lift = 0.0
[params]
x = "1.5"
y = "-1.0"
[optimizer]
name = "sgd"
lr = 0.1
[[variants]]
name = "lifted down"
consts = { lift = -5.0 }
[[variants]]
name = "another loss"
loss = "x^2 + y^2 - 10"
[[variants]]
name = "faster"
optimizer = { name = "sgd", lr = 0.4 }
"#,
    );
    let (mut app, rx) = open_landscape(path.to_str().unwrap(), 140, 44);
    // A run of the base with another optimizer: the same objective, so it counts.
    press(&mut app, 'o');
    for code in [KeyCode::Enter, KeyCode::Enter] {
        app.handle(Msg::Key(KeyEvent::new(code, KeyModifiers::NONE)));
    }
    app.settle(&rx);
    for c in "20n".chars() {
        press(&mut app, c);
    }
    settle_landscape(&mut app, &rx);
    let s = app.session().unwrap();
    assert_eq!(s.runs.len(), 5);
    let (at, loss) = s.landscape.best(&s.runs).expect("a best point");
    assert!((0.0..1e-6).contains(&loss), "on the base's map: {loss}");
    assert_eq!(s.runs[3].info.name, "faster");
    assert!(s.runs[3].path.iter().any(|(_, p)| *p == at), "★ at {at:?}");

    // Selecting the variant draws its objective, and the ★ follows it.
    app.focus = Focus::Runs;
    press(&mut app, 'j');
    assert_eq!(app.session().unwrap().selected, 1);
    settle_landscape(&mut app, &rx);
    let s = app.session().unwrap();
    let (_, loss) = s.landscape.best(&s.runs).expect("a best point");
    assert!(
        (-5.0..-1.75).contains(&loss),
        "on the variant's map: {loss}"
    );
}

/// Rosenbrock's minimum is (1, 1). The picture grid (256 cells a side over a 4 x 4 view) alone
/// finds its lowest sample several cells away along the narrow valley; refined on the loss, the
/// minimum is within one fine cell of (1, 1) on both axes. The file's optimum says (1, 1).
#[test]
fn the_picture_grid_finds_rosenbrocks_minimum_within_one_fine_cell() {
    let c = compiled("losses/rosenbrock.toml");
    let plane = Plane::coordinates(&param_shapes(&c)).unwrap();
    let s = spec((-2.0, 2.0), (-1.0, 3.0), PICTURE_CELLS, PICTURE_CELLS);
    let cell = 4.0 / PICTURE_CELLS as f64;
    let surface = Surface::new(&c, 0).unwrap();
    let (grid, mode) = surface.grid(&plane, s).unwrap();
    assert_eq!(mode, Mode::Batched);
    let (v, start) = grid.min().unwrap();
    let (refined, [x, y]) = surface.refine_min(&plane, (v, start), [cell; 2]).unwrap();
    assert!(refined <= v);
    assert!(
        (x - 1.0).abs() <= cell && (y - 1.0).abs() <= cell,
        "({x}, {y})"
    );
    assert_eq!(optimum_point(&c), Some(vec![1.0, 1.0]));
}

/// Bilinear interpolation reproduces a plane exactly between cell centres (and holds the edge
/// value outside the outermost centres); a NaN cell keeps its nearest value, no blend.
#[test]
fn interpolation_is_exact_on_a_plane_and_keeps_nan_cells_sharp() {
    let s = spec((0.0, 4.0), (0.0, 2.0), 4, 2);
    let f = |[x, y]: [f64; 2]| 2.0 * x + 3.0 * y;
    let mut grid = Grid::new(s.clone());
    for j in 0..2 {
        for i in 0..4 {
            grid.values[j * 4 + i] = Some(f(s.coord(i, j)));
        }
    }
    for p in [[0.5, 0.5], [1.25, 0.9], [3.5, 1.5], [2.0, 1.0]] {
        let v = grid.interpolate(p).unwrap();
        assert!((v - f(p)).abs() < 1e-12, "{p:?}: {v}");
    }
    // Left of the first centre (x = 0.5) the value is the edge's.
    assert_eq!(grid.interpolate([0.1, 0.5]), Some(f([0.5, 0.5])));
    assert_eq!(grid.interpolate([4.5, 0.5]), None);
    // Cell (1, 0) is NaN: a point of cell (0, 0) that would blend it takes (0, 0)'s value.
    grid.values[1] = Some(f64::NAN);
    assert_eq!(grid.interpolate([0.9, 0.6]), Some(f([0.5, 0.5])));
    assert!(grid.interpolate([1.1, 0.6]).unwrap().is_nan());
}

/// On a grid of a separable quadratic, a parabola through the lowest sample and its neighbours
/// is the function itself along each axis: the refined minimum is the true one, off the cell
/// centres, and the value stays the lowest sample's.
#[test]
fn a_quadratic_grids_minimum_refines_to_the_true_one() {
    let s = spec((-1.0, 1.0), (-1.0, 1.0), 8, 8);
    let f = |[x, y]: [f64; 2]| (x - 0.3).powi(2) + 2.0 * (y + 0.2).powi(2);
    let mut grid = Grid::new(s.clone());
    for j in 0..8 {
        for i in 0..8 {
            grid.values[j * 8 + i] = Some(f(s.coord(i, j)));
        }
    }
    let (v, [x, y]) = grid.refined_min().unwrap();
    assert_eq!(Some(v), grid.min().map(|(v, _)| v));
    assert!(
        (x - 0.3).abs() < 1e-12 && (y + 0.2).abs() < 1e-12,
        "({x}, {y})"
    );
}
