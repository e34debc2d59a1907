//! torch.optim's L-BFGS, ported line by line from `LBFGS.step`, `_strong_wolfe` and
//! `_cubic_interpolate` (torch/optim/lbfgs.py) so trajectories match torch to float rounding.
//! One step is one `.step(closure)`: up to `max_iter` inner iterations, the closure being the
//! step's [`Oracle`]. The params are one flat vector, in problem order; all state persists
//! across steps.

use std::collections::VecDeque;

use candle_core::{DType, Tensor};

use super::spec::{Conflict, HyperValue, Lbfgs, SettingError};
use super::step::{Oracle, Rule, StateValue, StepCx};

words! {
    /// The line search an L-BFGS iteration uses to choose its step length.
    LineSearchFn {
        /// A fixed step of `lr` (the first iteration ever: scaled down by the gradient's size).
        None = "none",
        /// torch's strong-Wolfe search (bracketing, then cubic-interpolation zoom).
        StrongWolfe = "strong_wolfe",
    }
}

/// torch's `_strong_wolfe` sufficient-decrease constant (`c1`).
const C1: f64 = 1e-4;
/// torch's `_strong_wolfe` curvature constant (`c2`).
const C2: f64 = 0.9;
/// The line search's own `tolerance_change`: torch does not pass the optimizer's down.
const LS_TOLERANCE_CHANGE: f64 = 1e-9;
/// A curvature pair is kept only when `y·s` exceeds this (torch's constant).
const MIN_CURVATURE: f64 = 1e-10;

/// What `torch.optim.LBFGS` refuses, or fails on, before taking a step.
pub(super) fn lbfgs_needs_room(o: &Lbfgs) -> Result<(), Conflict> {
    if o.history_size == 0 {
        return Err(Conflict {
            key: "history_size",
            error: SettingError {
                message: "history_size must be at least 1".into(),
                help: Some(
                    "torch.optim.LBFGS fails on its second iteration with no room for a curvature pair"
                        .into(),
                ),
            },
        });
    }
    if o.line_search_fn == LineSearchFn::StrongWolfe && o.max_eval == Some(0) {
        return Err(Conflict {
            key: "max_eval",
            error: SettingError {
                message: format!(
                    "line_search_fn=strong_wolfe needs max_eval >= 1 (here max_eval = {})",
                    HyperValue::Number(0.0)
                ),
                help: Some(
                    "the step's first evaluation leaves the line search -1 evaluations, which torch's _strong_wolfe fails on; leave max_eval at none"
                        .into(),
                ),
            },
        });
    }
    Ok(())
}

/// L-BFGS's state, named as torch names it (`state[params[0]]`).
#[derive(Debug, Clone, Default)]
pub struct LbfgsState {
    /// Loss evaluations so far, over all steps (the gradient at the start of each step counts).
    pub func_evals: u64,
    /// Inner iterations so far, over all steps.
    pub n_iter: u64,
    /// The last search direction (flat).
    pub d: Option<Tensor>,
    /// The last step length along `d`.
    pub t: f64,
    /// Gradient differences `y` of the kept curvature pairs, oldest first.
    pub old_dirs: VecDeque<Tensor>,
    /// Steps `s` of the kept curvature pairs, oldest first.
    pub old_stps: VecDeque<Tensor>,
    /// `1 / y·s` of each kept pair.
    pub ro: VecDeque<f64>,
    /// The scale of the initial inverse-Hessian guess, `y·s / y·y` of the newest pair.
    pub h_diag: f64,
    /// The flat gradient where the last iteration started.
    pub prev_flat_grad: Option<Tensor>,
}

impl Rule for Lbfgs {
    type State = LbfgsState;
    const NEEDS_ORACLE: bool = true;
    /// torch's LBFGS "doesn't support per-parameter options (parameter groups)".
    const PARAM_GROUPS: bool = false;

    fn init(&self, _params: &[Tensor]) -> candle_core::Result<LbfgsState> {
        Ok(LbfgsState::default())
    }

    /// torch's cumulative counts.
    fn state_values(&self, s: &LbfgsState) -> Vec<(&'static str, StateValue)> {
        vec![
            ("func_evals", StateValue::Scalar(s.func_evals as f64)),
            ("n_iter", StateValue::Scalar(s.n_iter as f64)),
        ]
    }

    fn step(&self, s: &mut LbfgsState, cx: &mut StepCx) -> candle_core::Result<Vec<Tensor>> {
        let shapes = Shapes::of(cx.params);
        if shapes.numel == 0 {
            return Ok(cx.params.to_vec());
        }
        let max_eval = self.max_eval.unwrap_or(self.max_iter * 5 / 4);
        let (lr, tolerance_change) = (cx.lr, self.tolerance_change);
        let mut closure = Directional {
            oracle: &mut *cx.oracle,
            shapes: &shapes,
        };

        // The loss and gradient the run took at the params: torch's first closure call.
        let mut loss = cx.loss;
        let mut current_evals: u64 = 1;
        s.func_evals += 1;
        let mut flat_grad = shapes.flatten(cx.grads)?;
        let mut opt_cond = max_abs(&flat_grad)? <= self.tolerance_grad;
        if opt_cond {
            return Ok(cx.params.to_vec());
        }
        let mut x = shapes.flatten(cx.params)?;

        let mut n_iter = 0;
        while n_iter < self.max_iter {
            n_iter += 1;
            s.n_iter += 1;

            // The descent direction.
            let d = match (&s.d, &s.prev_flat_grad) {
                (Some(d_prev), Some(prev_flat_grad)) if s.n_iter != 1 => {
                    let y = (&flat_grad - prev_flat_grad)?;
                    let step = d_prev.affine(s.t, 0.0)?;
                    let ys = dot(&y, &step)?;
                    if ys > MIN_CURVATURE {
                        if s.old_dirs.len() as u64 == self.history_size {
                            s.old_dirs.pop_front();
                            s.old_stps.pop_front();
                            s.ro.pop_front();
                        }
                        s.h_diag = ys / dot(&y, &y)?;
                        s.old_dirs.push_back(y);
                        s.old_stps.push_back(step);
                        s.ro.push_back(1.0 / ys);
                    }
                    // The two-loop recursion: the approximate inverse Hessian times -g.
                    let num_old = s.old_dirs.len();
                    let mut al = vec![0.0; num_old];
                    let mut q = flat_grad.neg()?;
                    for i in (0..num_old).rev() {
                        al[i] = dot(&s.old_stps[i], &q)? * s.ro[i];
                        q = (q + s.old_dirs[i].affine(-al[i], 0.0)?)?;
                    }
                    let mut r = q.affine(s.h_diag, 0.0)?;
                    let pairs = s.old_dirs.iter().zip(&s.old_stps).zip(&s.ro).zip(&al);
                    for (((y_i, s_i), ro_i), al_i) in pairs {
                        let be_i = dot(y_i, &r)? * ro_i;
                        r = (r + s_i.affine(al_i - be_i, 0.0)?)?;
                    }
                    r
                }
                _ => {
                    s.old_dirs.clear();
                    s.old_stps.clear();
                    s.ro.clear();
                    s.h_diag = 1.0;
                    flat_grad.neg()?
                }
            };
            s.prev_flat_grad = Some(flat_grad.clone());
            let prev_loss = loss;

            // The step length: the very first iteration is scaled down by the gradient's size.
            s.t = if s.n_iter == 1 {
                py_min(1.0, 1.0 / scalar(&flat_grad.abs()?.sum_all()?)?) * lr
            } else {
                lr
            };
            s.d = Some(d.clone());

            let gtd = dot(&flat_grad, &d)?;
            if gtd > -tolerance_change {
                break;
            }

            let mut ls_func_evals = 0;
            match self.line_search_fn {
                LineSearchFn::StrongWolfe => {
                    // Never below 0: iterating stops once the evaluations reach max_eval, and
                    // max_eval = 0 is refused with strong_wolfe (lbfgs_needs_room).
                    let max_ls = max_eval.saturating_sub(current_evals);
                    let found =
                        strong_wolfe(&mut closure, &x, s.t, &d, (loss, &flat_grad, gtd), max_ls)?;
                    (loss, flat_grad, s.t, ls_func_evals) = found;
                    x = add_scaled(&x, &d, s.t)?;
                    opt_cond = max_abs(&flat_grad)? <= self.tolerance_grad;
                }
                LineSearchFn::None => {
                    x = add_scaled(&x, &d, s.t)?;
                    // Not after the last iteration: the next step evaluates there anyway.
                    if n_iter != self.max_iter {
                        (loss, flat_grad) = closure.at(&x)?;
                        opt_cond = max_abs(&flat_grad)? <= self.tolerance_grad;
                        ls_func_evals = 1;
                    }
                }
            }
            current_evals += ls_func_evals;
            s.func_evals += ls_func_evals;

            if n_iter == self.max_iter
                || current_evals >= max_eval
                || opt_cond
                || max_abs(&d.affine(s.t, 0.0)?)? <= tolerance_change
                || (loss - prev_loss).abs() < tolerance_change
            {
                break;
            }
        }
        shapes.unflatten(&x)
    }
}

/// torch's `_strong_wolfe` from `x` along `d` with trial step `t`, given the loss, gradient
/// and directional derivative at `x` (`f`, `g`, `gtd`), making at most `max_ls` evaluations
/// after the first: the loss, gradient and step length found, and the evaluations made.
fn strong_wolfe(
    closure: &mut Directional,
    x: &Tensor,
    mut t: f64,
    d: &Tensor,
    (f, g, gtd): (f64, &Tensor, f64),
    max_ls: u64,
) -> candle_core::Result<(f64, Tensor, f64, u64)> {
    let d_norm = max_abs(d)?;
    let (mut f_new, mut g_new) = closure.at(&add_scaled(x, d, t)?)?;
    let mut ls_func_evals = 1;
    let mut gtd_new = dot(&g_new, d)?;

    // Bracket an interval containing a point satisfying the Wolfe criteria.
    let (mut t_prev, mut f_prev, mut g_prev, mut gtd_prev) = (0.0, f, g.clone(), gtd);
    let mut ls_iter = 0;
    let mut bracket = loop {
        if ls_iter == max_ls {
            // Out of evaluations while bracketing: the start and the last trial.
            break [(0.0, f, g.clone(), gtd), (t, f_new, g_new, gtd_new)];
        }
        if f_new > f + C1 * t * gtd || (ls_iter > 1 && f_new >= f_prev) {
            break [
                (t_prev, f_prev, g_prev, gtd_prev),
                (t, f_new, g_new, gtd_new),
            ];
        }
        if gtd_new.abs() <= -C2 * gtd {
            // Both conditions hold at t: torch's `done`, where its zoom loop does not run.
            return Ok((f_new, g_new, t, ls_func_evals));
        }
        if gtd_new >= 0.0 {
            break [
                (t_prev, f_prev, g_prev, gtd_prev),
                (t, f_new, g_new, gtd_new),
            ];
        }
        // Interpolate a longer step.
        let min_step = t + 0.01 * (t - t_prev);
        let max_step = t * 10.0;
        let tmp = t;
        t = cubic_interpolate(
            (t_prev, f_prev, gtd_prev),
            (t, f_new, gtd_new),
            Some((min_step, max_step)),
        );
        (t_prev, f_prev, g_prev, gtd_prev) = (tmp, f_new, g_new, gtd_new);
        (f_new, g_new) = closure.at(&add_scaled(x, d, t)?)?;
        ls_func_evals += 1;
        gtd_new = dot(&g_new, d)?;
        ls_iter += 1;
    };

    // Zoom: refine the bracket until a point satisfies the criteria.
    let mut insuf_progress = false;
    let (mut low, mut high) = if bracket[0].1 <= bracket[1].1 {
        (0, 1)
    } else {
        (1, 0)
    };
    let mut done = false;
    while !done && ls_iter < max_ls {
        let (b0, b1) = (bracket[0].0, bracket[1].0);
        if (b1 - b0).abs() * d_norm < LS_TOLERANCE_CHANGE {
            break;
        }
        let mut t = cubic_interpolate(
            (b0, bracket[0].1, bracket[0].3),
            (b1, bracket[1].1, bracket[1].3),
            None,
        );
        // Too close to an end (twice in a row, or outside): move 0.1 of the bracket inside.
        let (bmax, bmin) = (py_max(b0, b1), py_min(b0, b1));
        let eps = 0.1 * (bmax - bmin);
        if py_min(bmax - t, t - bmin) < eps {
            if insuf_progress || t >= bmax || t <= bmin {
                t = if (t - bmax).abs() < (t - bmin).abs() {
                    bmax - eps
                } else {
                    bmin + eps
                };
                insuf_progress = false;
            } else {
                insuf_progress = true;
            }
        } else {
            insuf_progress = false;
        }

        let (f_new, g_new) = closure.at(&add_scaled(x, d, t)?)?;
        ls_func_evals += 1;
        let gtd_new = dot(&g_new, d)?;
        ls_iter += 1;

        if f_new > f + C1 * t * gtd || f_new >= bracket[low].1 {
            // Not a sufficient decrease, or no lower than the lowest point: the new high end.
            bracket[high] = (t, f_new, g_new, gtd_new);
            (low, high) = if bracket[0].1 <= bracket[1].1 {
                (0, 1)
            } else {
                (1, 0)
            };
        } else {
            if gtd_new.abs() <= -C2 * gtd {
                done = true;
            } else if gtd_new * (bracket[high].0 - bracket[low].0) >= 0.0 {
                // The old low end becomes the high end.
                bracket[high] = bracket[low].clone();
            }
            bracket[low] = (t, f_new, g_new, gtd_new);
        }
    }
    let (t, f_new, g_new, _) = bracket[low].clone();
    Ok((f_new, g_new, t, ls_func_evals))
}

/// torch's `_cubic_interpolate`: the minimiser of the cubic through two points with their
/// values and derivatives `(x, f, g)`, clamped to `bounds` (default: between the points); the
/// middle of the bounds when the cubic has no minimiser.
fn cubic_interpolate(
    (x1, f1, g1): (f64, f64, f64),
    (x2, f2, g2): (f64, f64, f64),
    bounds: Option<(f64, f64)>,
) -> f64 {
    let (xmin_bound, xmax_bound) = bounds.unwrap_or(if x1 <= x2 { (x1, x2) } else { (x2, x1) });
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2_square = d1 * d1 - g1 * g2;
    if d2_square >= 0.0 {
        let d2 = d2_square.sqrt();
        let min_pos = if x1 <= x2 {
            x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        } else {
            x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
        };
        py_min(py_max(min_pos, xmin_bound), xmax_bound)
    } else {
        (xmin_bound + xmax_bound) / 2.0
    }
}

/// Python's `min(a, b)`: `a` unless `b < a` (so NaN comparisons go as in torch's code).
fn py_min(a: f64, b: f64) -> f64 {
    if b < a { b } else { a }
}

/// Python's `max(a, b)`: `a` unless `b > a`.
fn py_max(a: f64, b: f64) -> f64 {
    if b > a { b } else { a }
}

/// The closure seen from a flat vector: torch's `_directional_evaluate` without the in-place
/// params (the run's params are put back by the oracle).
struct Directional<'a, 'o> {
    oracle: &'a mut (dyn Oracle + 'o),
    shapes: &'a Shapes,
}

impl Directional<'_, '_> {
    /// The loss and flat gradient at the flat params `x`.
    fn at(&mut self, x: &Tensor) -> candle_core::Result<(f64, Tensor)> {
        let (loss, grads) = self.oracle.loss_and_grads(&self.shapes.unflatten(x)?)?;
        Ok((loss, self.shapes.flatten(&grads)?))
    }
}

/// The params' shapes, to go between them and one flat vector (torch's views of `_params`).
struct Shapes {
    dims: Vec<Vec<usize>>,
    numel: usize,
}

impl Shapes {
    fn of(params: &[Tensor]) -> Self {
        let dims: Vec<Vec<usize>> = params.iter().map(|p| p.dims().to_vec()).collect();
        let numel = dims.iter().map(|d| d.iter().product::<usize>()).sum();
        Self { dims, numel }
    }

    /// The tensors, each flattened row-major, one after the other.
    fn flatten(&self, tensors: &[Tensor]) -> candle_core::Result<Tensor> {
        let flat: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.flatten_all())
            .collect::<candle_core::Result<_>>()?;
        Tensor::cat(&flat, 0)
    }

    /// The flat vector cut back into tensors of the params' shapes.
    fn unflatten(&self, flat: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut offset = 0;
        self.dims
            .iter()
            .map(|dims| {
                let n = dims.iter().product::<usize>();
                let t = flat.narrow(0, offset, n)?.reshape(dims.as_slice())?;
                offset += n;
                Ok(t)
            })
            .collect()
    }
}

/// `x + t * d` (torch's `_add_grad`).
fn add_scaled(x: &Tensor, d: &Tensor, t: f64) -> candle_core::Result<Tensor> {
    x + d.affine(t, 0.0)?
}

/// A 0-d tensor's value.
fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// `a · b` of two flat vectors.
fn dot(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    scalar(&(a * b)?.sum_all()?)
}

/// `max |v|` of a flat vector.
fn max_abs(v: &Tensor) -> candle_core::Result<f64> {
    scalar(&v.abs()?.max(0)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::optim::spec::OptimizerSpec;

    /// A loss of one vector param, given as its value and gradient.
    struct Loss(fn(&[f64]) -> (f64, Vec<f64>));

    impl Loss {
        fn eval(&self, p: &Tensor) -> (f64, Tensor) {
            let (f, g) = (self.0)(&p.to_vec1::<f64>().unwrap());
            (f, Tensor::new(g, &Device::Cpu).unwrap())
        }
    }

    impl Oracle for Loss {
        fn loss_and_grads(&mut self, params: &[Tensor]) -> candle_core::Result<(f64, Vec<Tensor>)> {
            let (f, g) = self.eval(&params[0]);
            Ok((f, vec![g]))
        }
    }

    /// One `.step()` of `spec` from `x0`: the new params and the state after it.
    fn step(spec: &str, loss: fn(&[f64]) -> (f64, Vec<f64>), x0: &[f64]) -> (Vec<f64>, LbfgsState) {
        let OptimizerSpec::Lbfgs(o) = OptimizerSpec::parse(spec).unwrap() else {
            panic!("{spec} is not lbfgs")
        };
        let mut oracle = Loss(loss);
        let p = Tensor::new(x0, &Device::Cpu).unwrap();
        let (f, g) = oracle.eval(&p);
        let mut state = o.init(std::slice::from_ref(&p)).unwrap();
        let new = o
            .step(
                &mut state,
                &mut StepCx {
                    params: &[p],
                    grads: &[g],
                    loss: f,
                    lr: o.lr,
                    t: 1,
                    oracle: &mut oracle,
                },
            )
            .unwrap();
        (new[0].to_vec1().unwrap(), state)
    }

    /// sqrt(1 + x^2): nearly linear far from 0, so a tiny first step makes the line search
    /// extrapolate (each trial at most 10 times the last) for many evaluations.
    fn pseudo_huber(x: &[f64]) -> (f64, Vec<f64>) {
        let r = (1.0 + x[0] * x[0]).sqrt();
        (r, vec![x[0] / r])
    }

    #[test]
    fn the_line_search_gets_the_evaluations_left_in_the_step() {
        // max_iter = 2: max_eval = 2 * 5 / 4 = 2, one used by the gradient at the start, so the
        // search makes its first trial and max_ls = 1 more (torch's max_ls = max_eval -
        // current_evals): 3 evaluations, after which the step stops.
        let spec = "lbfgs(lr=1e-6, max_iter=2, line_search_fn=strong_wolfe)";
        let (x, state) = step(spec, pseudo_huber, &[10.0]);
        assert_eq!((state.func_evals, state.n_iter), (3, 1));
        assert!(x[0] < 10.0, "{x:?}");
    }

    #[test]
    fn without_a_line_search_the_last_iteration_is_not_evaluated() {
        // max_iter = 5, max_eval = 6: iterations 1..4 re-evaluate, the 5th does not.
        let (_, state) = step("lbfgs(lr=0.1, max_iter=5)", pseudo_huber, &[10.0]);
        assert_eq!((state.func_evals, state.n_iter), (5, 5));
    }

    #[test]
    fn a_stationary_point_ends_the_step_after_its_first_evaluation() {
        let (x, state) = step("lbfgs", pseudo_huber, &[0.0]);
        assert_eq!(x, [0.0]);
        assert_eq!((state.func_evals, state.n_iter), (1, 0));
        assert!(state.d.is_none());
    }

    #[test]
    fn the_first_step_is_scaled_down_by_the_gradient_and_later_ones_are_lr() {
        // x^2 from 3: g = 6, so t = min(1, 1/6) * lr and x = 3 - 6 t = 3 - lr; max_iter = 1.
        fn square(x: &[f64]) -> (f64, Vec<f64>) {
            (x[0] * x[0], vec![2.0 * x[0]])
        }
        let (x, state) = step("lbfgs(lr=0.5, max_iter=1)", square, &[3.0]);
        assert_eq!(x, [2.5]);
        assert_eq!(state.t, 0.5 / 6.0);
    }

    #[test]
    fn cubic_interpolation_finds_a_quadratics_minimum() {
        // (x - 2)^2 at 0 (f 4, g -4) and 3 (f 1, g 2): d1 = -2 + 3 = 1, d2 = sqrt(1 + 8) = 3,
        // min = 3 - 3 (2 + 3 - 1) / (2 + 4 + 6) = 2, in either order.
        assert_eq!(
            cubic_interpolate((0.0, 4.0, -4.0), (3.0, 1.0, 2.0), None),
            2.0
        );
        assert_eq!(
            cubic_interpolate((3.0, 1.0, 2.0), (0.0, 4.0, -4.0), None),
            2.0
        );
        // Clamped to the bounds given.
        let b = Some((2.5, 30.0));
        assert_eq!(cubic_interpolate((0.0, 4.0, -4.0), (3.0, 1.0, 2.0), b), 2.5);
        // Slope 2 at both ends, 1 on average: d1 = 4 - 3 = 1 and d1^2 < g1 g2, no minimiser, so
        // the middle of the bounds.
        assert_eq!(
            cubic_interpolate((0.0, 0.0, 2.0), (1.0, 1.0, 2.0), None),
            0.5
        );
    }

    #[test]
    fn defaults_are_torchs_and_what_torch_fails_on_is_refused() {
        use HyperValue::{Number as N, Word as W};
        let spec = OptimizerSpec::parse("lbfgs").unwrap();
        let torch = [
            ("lr", N(1.0)),
            ("max_iter", N(20.0)),
            ("max_eval", W("none")),
            ("tolerance_grad", N(1e-7)),
            ("tolerance_change", N(1e-9)),
            ("history_size", N(100.0)),
            ("line_search_fn", W("none")),
        ];
        assert_eq!(spec.values(), torch);
        let refused = [
            ("lbfgs(lr=-1)", "`lr` must be at least 0"),
            ("lbfgs(history_size=0)", "history_size must be at least 1"),
            (
                "lbfgs(max_eval=0, line_search_fn=strong_wolfe)",
                "line_search_fn=strong_wolfe needs max_eval >= 1",
            ),
            (
                "lbfgs(line_search_fn=backtracking)",
                "`line_search_fn` must be one of none, strong_wolfe",
            ),
            ("lbfgs(max_iter=2.5)", "`max_iter` must be a whole number"),
        ];
        for (text, why) in refused {
            let e = OptimizerSpec::parse(text).unwrap_err();
            assert!(e.message.starts_with(why), "{text}: {e}");
        }
        for text in [
            "lbfgs(max_eval=0)",
            "lbfgs(max_iter=0)",
            "lbfgs(max_eval=7, line_search_fn=strong_wolfe)",
        ] {
            assert!(OptimizerSpec::parse(text).is_ok(), "{text}");
        }
    }
}
