//! Curvature at a point: the Hessian's dominant eigenvalue by power iteration on exact
//! Hessian-vector products (double backward), checked against finite differences of gradients,
//! the largest stable learning rate of gradient descent, 2/λ, and the Hessian's exact diagonal
//! (Sophia's preconditioner).
//!
//! Double backward needs candle to keep the graph of the gradients, which candle decides per
//! thread from `CANDLE_GRAD_DO_NOT_DETACH` at the thread's first backward pass. Keeping graphs
//! everywhere costs first-order runs up to 30% (and memory), so one named service thread is
//! started with it set, before any other thread exists ([`start_service`]), and every
//! second-order computation runs there ([`second_order`]).

use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};

use candle_core::{DType as CDType, Device, Tensor};
use rand_distr::{Distribution, StandardNormal};

use super::Evaluator;
use crate::diagnostic::Diagnostic;

/// What power iteration found.
#[derive(Debug, Clone, PartialEq)]
pub struct Curvature {
    /// The Hessian's top (largest) eigenvalue, negative only where every one is.
    pub lambda: f64,
    pub iterations: usize,
    pub converged: bool,
    /// ||Hv - Hv_fd|| / ||Hv|| for the final direction, Hv_fd from central differences of
    /// gradients.
    pub fd_rel_err: f64,
}

impl Curvature {
    /// The largest learning rate at which gradient descent is stable along the top eigenvector.
    pub fn max_stable_lr(&self) -> Option<f64> {
        (self.lambda > 0.0).then(|| 2.0 / self.lambda)
    }
}

fn internal(e: candle_core::Error) -> Diagnostic {
    Diagnostic::error(format!("curvature failed: {e}"))
}

fn dot(a: &[Tensor], b: &[Tensor]) -> Result<f64, Diagnostic> {
    let mut s = 0.0;
    for (x, y) in a.iter().zip(b) {
        s += (x.to_dtype(CDType::F64).map_err(internal)?
            * y.to_dtype(CDType::F64).map_err(internal)?)
        .and_then(|t| t.sum_all()?.to_scalar::<f64>())
        .map_err(internal)?;
    }
    Ok(s)
}

fn scale(v: &[Tensor], k: f64) -> Result<Vec<Tensor>, Diagnostic> {
    v.iter()
        .map(|t| t.affine(k, 0.0).map_err(internal))
        .collect()
}

/// Exact Hessian-vector product at the evaluator's params.
pub fn hvp(ev: &Evaluator, v: &[Tensor]) -> Result<Vec<Tensor>, Diagnostic> {
    let out = ev.forward()?;
    let store = out.backward().map_err(internal)?;
    let mut g_dot_v: Option<Tensor> = None;
    for (p, vi) in ev.params().iter().zip(v) {
        if let Some(g) = store.get(p.as_tensor()) {
            let term = (g * vi.detach())
                .and_then(|t| t.sum_all())
                .map_err(internal)?;
            g_dot_v = Some(match g_dot_v {
                Some(acc) => (acc + term).map_err(internal)?,
                None => term,
            });
        }
    }
    let Some(g_dot_v) = g_dot_v else {
        return v.iter().map(|t| t.zeros_like().map_err(internal)).collect();
    };
    let second = g_dot_v.backward().map_err(internal)?;
    ev.params()
        .iter()
        .map(|p| match second.get(p.as_tensor()) {
            Some(h) => Ok(h.detach()),
            None => p.as_tensor().zeros_like().map_err(internal),
        })
        .collect()
}

/// Hv by central differences of gradients: (g(w + εv) - g(w - εv)) / 2ε.
pub fn hvp_fd(ev: &Evaluator, v: &[Tensor], eps: f64) -> Result<Vec<Tensor>, Diagnostic> {
    let w: Vec<Tensor> = ev
        .params()
        .iter()
        .map(|p| p.as_tensor().copy())
        .collect::<candle_core::Result<_>>()
        .map_err(internal)?;
    let at = |k: f64| -> Result<Vec<Tensor>, Diagnostic> {
        for ((p, wi), vi) in ev.params().iter().zip(&w).zip(v) {
            p.set(&(wi + vi.affine(k, 0.0).map_err(internal)?).map_err(internal)?)
                .map_err(internal)?;
        }
        Ok(ev.evaluate()?.grads)
    };
    let (up, down) = (at(eps)?, at(-eps)?);
    for (p, wi) in ev.params().iter().zip(&w) {
        p.set(wi).map_err(internal)?;
    }
    up.iter()
        .zip(&down)
        .map(|(a, b)| {
            (a - b)
                .and_then(|d| d.affine(1.0 / (2.0 * eps), 0.0))
                .map_err(internal)
        })
        .collect()
}

/// A computation for the curvature thread, which sends its own answer back.
type Job = Box<dyn FnOnce() + Send>;

static SERVICE: OnceLock<std::sync::Mutex<Sender<Job>>> = OnceLock::new();

/// Starts the curvature thread. Call first thing in `main`, while no other thread exists.
pub fn start_service() {
    let (tx, rx) = channel::<Job>();
    let (ready_tx, ready_rx) = channel();
    // SAFETY: no other thread exists yet (see above); the variable is removed again below,
    // after the service thread has read it, so only that thread keeps gradient graphs.
    let preset = std::env::var_os("CANDLE_GRAD_DO_NOT_DETACH");
    unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") };
    let spawned = std::thread::Builder::new()
        .name("curvature".into())
        .stack_size(crate::GRAPH_STACK)
        .spawn(move || {
            super::region::op_by_op();
            // A first backward pass latches the thread's setting while the variable is set.
            let latch = candle_core::Var::new(1.0f64, &Device::Cpu)
                .and_then(|v| v.as_tensor().sqr()?.backward());
            let _ = ready_tx.send(latch.is_ok());
            for job in rx {
                job();
            }
        });
    if spawned.is_ok() && ready_rx.recv() == Ok(true) {
        let _ = SERVICE.set(std::sync::Mutex::new(tx));
    }
    match preset {
        Some(v) => unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", v) },
        None => unsafe { std::env::remove_var("CANDLE_GRAD_DO_NOT_DETACH") },
    }
}

/// Runs `job` on the curvature thread, the one where second-order derivatives are right, and
/// waits for its answer (so it may use evaluators whose params the caller borrows); a panic in
/// `job` becomes an error and the thread serves on.
pub fn second_order<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, Diagnostic> + Send + 'static,
) -> Result<T, Diagnostic> {
    let unavailable = || {
        Diagnostic::error(
            "curvature needs second-order gradients, which this process did not set up",
        )
    };
    let tx = SERVICE
        .get()
        .ok_or_else(unavailable)?
        .lock()
        .map_err(|_| unavailable())?
        .clone();
    let (reply, answer) = channel();
    let job: Job = Box::new(move || {
        let _ = reply.send(
            crate::diagnostic::catch_panic("a second-order computation", job).and_then(|r| r),
        );
    });
    tx.send(job).map_err(|_| unavailable())?;
    answer.recv().map_err(|_| unavailable())?
}

/// [`top_eigenvalue`] on the curvature thread (the evaluator's params are borrowed for the
/// duration, so the caller waits).
pub fn top_eigenvalue_exact(
    ev: &Evaluator,
    iters: usize,
    seed: u64,
) -> Result<Curvature, Diagnostic> {
    let ev = ev.clone();
    second_order(move || top_eigenvalue(&ev, iters, seed))
}

/// The Hessian's diagonal at the evaluator's params, shaped as the params: entry i is the
/// derivative of gradient entry i with respect to param entry i, one backward pass through the
/// gradient's graph per entry (cheaper than a Hessian-vector product with each unit vector,
/// which would redo the forward and first backward pass every time). Only right on a thread
/// that keeps gradient graphs: run it through [`second_order`].
pub fn hessian_diagonal(ev: &Evaluator) -> Result<Vec<Tensor>, Diagnostic> {
    let out = ev.forward()?;
    let store = out.backward().map_err(internal)?;
    ev.params()
        .iter()
        .map(|p| {
            let p = p.as_tensor();
            let Some(g) = store.get(p) else {
                return p.zeros_like().map_err(internal);
            };
            let g = g.flatten_all().map_err(internal)?;
            let mut diag = Vec::with_capacity(g.elem_count());
            for i in 0..g.elem_count() {
                let second = g.get(i).and_then(|gi| gi.backward()).map_err(internal)?;
                diag.push(
                    match second.get(p) {
                        Some(row) => row.flatten_all().and_then(|r| r.get(i)),
                        None => Tensor::zeros((), p.dtype(), p.device()),
                    }
                    .map_err(internal)?
                    .detach(),
                );
            }
            Tensor::stack(&diag, 0)
                .and_then(|d| d.reshape(p.shape()))
                .map_err(internal)
        })
        .collect()
}

/// Power iteration on `H - shift I` from the unit vector `v`, at most `iters` products: the
/// Rayleigh quotient of H at the end (shift added back), the products taken, whether it
/// converged, and the last direction.
fn iterate(
    ev: &Evaluator,
    mut v: Vec<Tensor>,
    shift: f64,
    iters: usize,
) -> Result<(f64, usize, bool, Vec<Tensor>), Diagnostic> {
    let mut lambda = 0.0;
    let mut converged = false;
    let mut iterations = 0;
    for k in 0..iters {
        iterations = k + 1;
        let mut hv = hvp(ev, &v)?;
        if shift != 0.0 {
            hv = hv
                .iter()
                .zip(&v)
                .map(|(h, x)| x.affine(shift, 0.0).and_then(|sx| h - sx).map_err(internal))
                .collect::<Result<_, _>>()?;
        }
        let next = dot(&v, &hv)?;
        let norm = dot(&hv, &hv)?.sqrt();
        if norm == 0.0 || !norm.is_finite() {
            lambda = next;
            break;
        }
        v = scale(&hv, 1.0 / norm)?;
        let done = (next - lambda).abs() <= 1e-6 * next.abs().max(1e-12);
        lambda = next;
        if done {
            converged = true;
            break;
        }
    }
    Ok((lambda + shift, iterations, converged, v))
}

/// The Hessian's top (largest) eigenvalue by power iteration from a seeded random direction,
/// at most `iters` products (twice that at a saddle). Second order is
/// only right on a thread that keeps gradient graphs: use [`top_eigenvalue_exact`].
pub fn top_eigenvalue(ev: &Evaluator, iters: usize, seed: u64) -> Result<Curvature, Diagnostic> {
    let mut rng = super::lower::rng_for(seed, "curvature");
    let v: Vec<Tensor> = ev
        .params()
        .iter()
        .map(|p| {
            let n = p.as_tensor().elem_count();
            let data: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
            Tensor::from_vec(data, p.as_tensor().dims(), &Device::Cpu)
                .and_then(|t| t.to_dtype(ev.dtype()))
        })
        .collect::<candle_core::Result<_>>()
        .map_err(internal)?;
    let n0 = dot(&v, &v)?.sqrt();
    let start = scale(&v, 1.0 / n0)?;
    // Power iteration finds the eigenvalue of largest magnitude; when that one is negative (a
    // saddle), iterating on H - λ I from the same start (its eigenvalues are all ≥ 0, the
    // direction found first has 0) finds the top one.
    let (mut lambda, mut iterations, mut converged, mut v) =
        iterate(ev, start.clone(), 0.0, iters)?;
    if lambda < 0.0 {
        let (top, more, done, v1) = iterate(ev, start, lambda, iters)?;
        (lambda, iterations, converged, v) = (top, iterations + more, done, v1);
    }
    let hv = hvp(ev, &v)?;
    let eps = if ev.dtype() == CDType::F64 {
        1e-5
    } else {
        1e-2
    };
    let fd = hvp_fd(ev, &v, eps)?;
    let diff: Vec<Tensor> = hv
        .iter()
        .zip(&fd)
        .map(|(a, b)| (a - b).map_err(internal))
        .collect::<Result<_, _>>()?;
    let fd_rel_err = dot(&diff, &diff)?.sqrt() / dot(&hv, &hv)?.sqrt().max(1e-300);
    Ok(Curvature {
        lambda,
        iterations,
        converged,
        fd_rel_err,
    })
}
