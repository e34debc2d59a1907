//! The whole Hessian of a small loss: every entry, exact, by double backward (one backward pass
//! of each gradient coordinate), its eigenvalues by nalgebra's `SymmetricEigen`, and what they
//! say (condition number, negative directions, the largest stable lr of gradient descent). Past
//! [`FULL_LIMIT`] coordinates the matrix is too big to build, and Lanczos on Hessian-vector
//! products finds the ends of the spectrum, each Ritz value with its residual norm as the error
//! bound. Second order is only right on the curvature thread: use [`hessian_exact`].

use candle_core::{DType as CDType, Device, Tensor};
use nalgebra::{DMatrix, SymmetricEigen};
use rand_distr::{Distribution, StandardNormal};

use super::curvature::{hvp, hvp_fd, second_order};
use super::{Evaluator, values_f64};
use crate::diagnostic::Diagnostic;
use crate::format::fmt_num;

/// The most coordinates whose Hessian is built in full (2,000² entries are 32 MB in f64).
pub const FULL_LIMIT: usize = 2000;

/// How to take the Hessian.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Blocks of at most this many coordinates are built in full; larger ones go to Lanczos.
    pub full_limit: usize,
    /// The most Lanczos steps (Hessian-vector products).
    pub lanczos_steps: usize,
    /// Ritz values reported at each end of the spectrum.
    pub extremes: usize,
    /// Seeds the random start of Lanczos and the direction of the finite-difference check.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            full_limit: FULL_LIMIT,
            lanczos_steps: 100,
            extremes: 3,
            seed: 0,
        }
    }
}

/// The Hessian of the loss with respect to a block of params (all of them, or one).
#[derive(Debug, Clone)]
pub struct Hessian {
    /// The params of the block, in the file's order.
    pub params: Vec<String>,
    /// Coordinates in the block (the matrix is `dim × dim`).
    pub dim: usize,
    /// Machine epsilon of the dtype it was computed in, which sets the numerical zero.
    pub eps: f64,
    /// The norm of the block's gradient, to tell a stationary point from a slope.
    pub grad_norm: f64,
    pub method: Method,
}

/// How the spectrum was found.
#[derive(Debug, Clone)]
pub enum Method {
    Full(Full),
    Lanczos(Lanczos),
}

/// The whole matrix and every eigenvalue.
#[derive(Debug, Clone)]
pub struct Full {
    /// Each coordinate's name: `x`, `w[2]`, `W[1,0]`.
    pub labels: Vec<String>,
    /// Symmetrized: (H + Hᵀ)/2 of the computed rows.
    pub matrix: DMatrix<f64>,
    /// Ascending.
    pub eigenvalues: Vec<f64>,
    /// max |H - Hᵀ| / max |H| of the computed rows: zero up to rounding for an exact Hessian.
    pub asymmetry: f64,
    /// ||Hv - Hv_fd|| / ||Hv|| for a random v, Hv_fd from central differences of gradients.
    pub fd_rel_err: f64,
}

/// The ends of the spectrum by Lanczos.
#[derive(Debug, Clone)]
pub struct Lanczos {
    /// Hessian-vector products taken (one per step).
    pub steps: usize,
    /// Whether every reported Ritz value met the tolerance before the step limit.
    pub converged: bool,
    /// The largest Ritz values, descending.
    pub top: Vec<Ritz>,
    /// The smallest Ritz values, ascending.
    pub bottom: Vec<Ritz>,
}

/// A Ritz value θ and ||Hy - θy|| for its unit Ritz vector y: some eigenvalue of H lies within
/// that distance of θ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ritz {
    pub value: f64,
    pub residual: f64,
}

/// |λ|max / |λ|min, or why there is none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Number(f64),
    /// The smallest |λ| is a numerical zero.
    Singular,
    /// Lanczos on an indefinite Hessian: the smallest |λ| lies inside the spectrum.
    Unknown,
}

/// How many eigenvalues are negative, zero and positive (Lanczos: of the Ritz values found).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inertia {
    pub negative: usize,
    pub zero: usize,
    pub positive: usize,
    /// False for Lanczos, which sees only the ends of the spectrum.
    pub exact: bool,
}

/// How far finite differences of gradients may be from exact second derivatives and still
/// agree: in f64 (`f64_run`) 1e-6, in lower precisions (rounding dominates the differences) 1e-2.
pub fn fd_tolerance(f64_run: bool) -> f64 {
    if f64_run { 1e-6 } else { 1e-2 }
}

impl Hessian {
    /// The largest eigenvalue (Lanczos: the largest Ritz value, a lower bound of it).
    pub fn lambda_max(&self) -> f64 {
        match &self.method {
            Method::Full(f) => f.eigenvalues.last().copied().unwrap_or(0.0),
            Method::Lanczos(l) => l.top.first().map_or(0.0, |r| r.value),
        }
    }

    /// The smallest eigenvalue (Lanczos: the smallest Ritz value, an upper bound of it).
    pub fn lambda_min(&self) -> f64 {
        match &self.method {
            Method::Full(f) => f.eigenvalues.first().copied().unwrap_or(0.0),
            Method::Lanczos(l) => l.bottom.first().map_or(0.0, |r| r.value),
        }
    }

    /// Eigenvalues at most this far from 0 are zero: n·ε·|λ|max, NumPy's `matrix_rank` rule.
    pub fn zero_tol(&self) -> f64 {
        let scale = self.lambda_max().abs().max(self.lambda_min().abs());
        self.dim as f64 * self.eps * scale
    }

    /// The condition number |λ|max / |λ|min.
    pub fn condition(&self) -> Condition {
        let tol = self.zero_tol();
        let big = self.lambda_max().abs().max(self.lambda_min().abs());
        match &self.method {
            Method::Full(f) => {
                let small = f
                    .eigenvalues
                    .iter()
                    .map(|l| l.abs())
                    .fold(f64::MAX, f64::min);
                if small <= tol || big == 0.0 {
                    Condition::Singular
                } else {
                    Condition::Number(big / small)
                }
            }
            // Positive (or negative) definite: the end nearer 0 is the smallest |λ|. An end
            // within the tolerance of 0 with the spectrum on one side of it (a zero Hessian
            // too) is singular; only ends on both sides leave the smallest |λ| unknown.
            Method::Lanczos(_) => {
                let (lo, hi) = (self.lambda_min(), self.lambda_max());
                if lo > tol || hi < -tol {
                    Condition::Number(big / lo.abs().min(hi.abs()))
                } else if lo >= -tol || hi <= tol {
                    Condition::Singular
                } else {
                    Condition::Unknown
                }
            }
        }
    }

    /// The signs of the eigenvalues, zero within [`Hessian::zero_tol`].
    pub fn inertia(&self) -> Inertia {
        let tol = self.zero_tol();
        let count = |values: &mut dyn Iterator<Item = f64>| {
            let mut i = Inertia {
                negative: 0,
                zero: 0,
                positive: 0,
                exact: true,
            };
            for v in values {
                match v {
                    v if v < -tol => i.negative += 1,
                    v if v > tol => i.positive += 1,
                    _ => i.zero += 1,
                }
            }
            i
        };
        match &self.method {
            Method::Full(f) => count(&mut f.eigenvalues.iter().copied()),
            Method::Lanczos(l) => {
                // A Ritz value is yᵀHy for a unit y, so one below 0 proves a negative eigenvalue
                // (and one above 0 a positive one); the ends may share Ritz values.
                let below = l.bottom.iter().filter(|r| r.value < -tol).count();
                let above = l.top.iter().filter(|r| r.value > tol).count();
                Inertia {
                    negative: below,
                    zero: 0,
                    positive: above,
                    exact: false,
                }
            }
        }
    }

    /// The largest learning rate at which gradient descent is stable on this quadratic model,
    /// 2/λmax (None when no direction curves up).
    pub fn max_stable_lr(&self) -> Option<f64> {
        let top = self.lambda_max();
        (top > self.zero_tol() && top > 0.0).then(|| 2.0 / top)
    }

    /// What the signs of the eigenvalues say about the point, in words.
    pub fn verdict(&self) -> String {
        let i = self.inertia();
        let dirs = |n: usize| if n == 1 { "direction" } else { "directions" };
        let slope = if self.grad_norm == 0.0 {
            "at this stationary point"
        } else {
            "here"
        };
        if !i.exact {
            return match (i.negative > 0, i.positive > 0) {
                (true, true) => format!(
                    "λmin < 0 < λmax: a saddle {slope}, the loss curves down along at least one direction"
                ),
                (true, false) => format!("λmax < 0: the loss curves down in every direction {slope}"),
                (false, true) if self.lambda_min() > 0.0 => {
                    format!("λmin > 0: positive definite, convex {slope}")
                }
                _ => "the smallest eigenvalues found are numerically zero: flat directions, no negative one found".into(),
            };
        }
        match (i.negative, i.zero, i.positive) {
            (0, _, 0) => "the Hessian is zero here".into(),
            (0, 0, _) => format!("no negative eigenvalue: positive definite, convex {slope}"),
            (0, z, _) => format!(
                "no negative eigenvalue, {z} zero: positive semi-definite, flat along {z} {}",
                dirs(z)
            ),
            (n, _, 0) => format!(
                "{n} negative {} and none positive: the loss curves down in every direction {slope}",
                if n == 1 { "eigenvalue" } else { "eigenvalues" },
            ),
            (n, _, _) => format!(
                "{n} negative {}: a saddle {slope}, the loss curves down along {n} {}",
                if n == 1 { "eigenvalue" } else { "eigenvalues" },
                dirs(n)
            ),
        }
    }

    /// Whether the finite-difference check agrees, to what central differences of gradients
    /// can show in the dtype (None for Lanczos, which has its residuals instead).
    pub fn fd_agrees(&self) -> Option<bool> {
        match &self.method {
            Method::Full(f) => Some(f.fd_rel_err <= fd_tolerance(self.eps <= f64::EPSILON)),
            Method::Lanczos(_) => None,
        }
    }

    /// The condition number in words: `2508.2`, or why there is none.
    pub fn condition_words(&self) -> String {
        match self.condition() {
            Condition::Number(k) => fmt_num(k),
            Condition::Singular => format!(
                "infinite: singular (the smallest |λ| is within {} of 0)",
                fmt_num(self.zero_tol())
            ),
            Condition::Unknown => {
                "unknown: the Hessian is indefinite, so the smallest |λ| lies inside the spectrum, which Lanczos does not reach".into()
            }
        }
    }
}

/// Each coordinate's name: the param's name for a scalar, `name[i]` or `name[i,j]` otherwise.
pub fn coordinate_labels(name: &str, dims: &[usize]) -> Vec<String> {
    let n: usize = dims.iter().product();
    if dims.is_empty() {
        return vec![name.to_string()];
    }
    (0..n)
        .map(|flat| {
            let mut rest = flat;
            let mut index = vec![0; dims.len()];
            for (k, d) in dims.iter().enumerate().rev() {
                index[k] = rest % d;
                rest /= d;
            }
            let index: Vec<String> = index.iter().map(usize::to_string).collect();
            format!("{name}[{}]", index.join(","))
        })
        .collect()
}

fn internal(e: candle_core::Error) -> Diagnostic {
    Diagnostic::error(format!("the Hessian failed: {e}"))
}

/// [`hessian`] on the curvature thread, the one that keeps gradient graphs (the evaluator's
/// params are borrowed for the duration, so the caller waits).
pub fn hessian_exact(
    ev: &Evaluator,
    names: &[String],
    param: Option<usize>,
    options: &Options,
) -> Result<Hessian, Diagnostic> {
    let (ev, names, options) = (ev.clone(), names.to_vec(), options.clone());
    second_order(move || hessian(&ev, &names, param, &options))
}

/// The Hessian with respect to every param (`param` None) or one param's block, at the
/// evaluator's params: in full up to `options.full_limit` coordinates, by Lanczos past it.
/// Second order is only right on a thread that keeps gradient graphs: use [`hessian_exact`].
pub fn hessian(
    ev: &Evaluator,
    names: &[String],
    param: Option<usize>,
    options: &Options,
) -> Result<Hessian, Diagnostic> {
    let block = match param {
        Some(p) if p >= ev.params().len() => {
            return Err(Diagnostic::error(format!(
                "no param {p}: the loss has {}",
                ev.params().len()
            )));
        }
        Some(p) => vec![p],
        None => (0..ev.params().len()).collect(),
    };
    let op = Block { ev, params: block };
    let dim = op.dim();
    if dim == 0 {
        return Err(Diagnostic::error(
            "the loss has no param values, so no Hessian",
        ));
    }
    let eps = match ev.dtype() {
        CDType::F64 => f64::EPSILON,
        CDType::F16 => 9.77e-4,
        CDType::BF16 => 7.81e-3,
        _ => f64::from(f32::EPSILON),
    };
    let params = op
        .params
        .iter()
        .map(|&p| names.get(p).cloned().unwrap_or_else(|| format!("param{p}")))
        .collect::<Vec<_>>();
    let grad = op.extract(&ev.evaluate()?.grads)?;
    let grad_norm = dot(&grad, &grad).sqrt();
    let method = if dim <= options.full_limit {
        let labels = op
            .params
            .iter()
            .zip(&params)
            .flat_map(|(&p, name)| coordinate_labels(name, ev.params()[p].as_tensor().dims()))
            .collect();
        Method::Full(full(&op, labels, options.seed)?)
    } else {
        Method::Lanczos(lanczos(&op, options, eps)?)
    };
    Ok(Hessian {
        params,
        dim,
        eps,
        grad_norm,
        method,
    })
}

/// The params of a block and how to move between its flat f64 vectors and the evaluator's
/// per-param tensors.
struct Block<'a> {
    ev: &'a Evaluator,
    /// Indices into the evaluator's params, ascending.
    params: Vec<usize>,
}

impl Block<'_> {
    fn dim(&self) -> usize {
        self.params
            .iter()
            .map(|&p| self.ev.params()[p].as_tensor().elem_count())
            .sum()
    }

    /// Per-param tensors in the run's dtype: `v` on the block, zeros elsewhere.
    fn embed(&self, v: &[f64]) -> Result<Vec<Tensor>, Diagnostic> {
        let mut at = 0;
        let mut out = Vec::with_capacity(self.ev.params().len());
        for (i, var) in self.ev.params().iter().enumerate() {
            let t = var.as_tensor();
            if self.params.contains(&i) {
                let n = t.elem_count();
                out.push(
                    Tensor::from_slice(&v[at..at + n], t.dims(), &Device::Cpu)
                        .and_then(|x| x.to_dtype(self.ev.dtype()))
                        .map_err(internal)?,
                );
                at += n;
            } else {
                out.push(t.zeros_like().map_err(internal)?);
            }
        }
        Ok(out)
    }

    /// The block's part of per-param tensors, flat, in f64.
    fn extract(&self, full: &[Tensor]) -> Result<Vec<f64>, Diagnostic> {
        let mut out = Vec::with_capacity(self.dim());
        for &p in &self.params {
            out.extend(values_f64(&full[p]).map_err(internal)?);
        }
        Ok(out)
    }

    /// Hv, exact.
    fn apply(&self, v: &[f64]) -> Result<Vec<f64>, Diagnostic> {
        let hv = self.extract(&hvp(self.ev, &self.embed(v)?)?)?;
        match hv.iter().all(|x| x.is_finite()) {
            true => Ok(hv),
            false => Err(Diagnostic::error(
                "a Hessian-vector product is not finite at these params",
            )),
        }
    }

    /// The Hessian's rows, one double-backward pass per coordinate of the block, from one
    /// forward and first backward pass.
    fn rows(&self) -> Result<DMatrix<f64>, Diagnostic> {
        let n = self.dim();
        let mut h = DMatrix::zeros(n, n);
        let out = self.ev.forward()?;
        let first = out.backward().map_err(internal)?;
        let mut row = 0;
        for &p in &self.params {
            let var = &self.ev.params()[p];
            let count = var.as_tensor().elem_count();
            // A param the loss does not reach has a zero gradient, so zero rows.
            let Some(g) = first.get(var.as_tensor()) else {
                row += count;
                continue;
            };
            let g = g.flatten_all().map_err(internal)?;
            for i in 0..count {
                let second = g
                    .narrow(0, i, 1)
                    .and_then(|gi| gi.sum_all()?.backward())
                    .map_err(internal)?;
                let mut col = 0;
                for &q in &self.params {
                    let t = self.ev.params()[q].as_tensor();
                    if let Some(hq) = second.get(t) {
                        for (k, x) in values_f64(hq).map_err(internal)?.into_iter().enumerate() {
                            h[(row, col + k)] = x;
                        }
                    }
                    col += t.elem_count();
                }
                row += 1;
            }
        }
        Ok(h)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A seeded standard normal vector of unit length.
fn random_unit(n: usize, seed: u64, context: &str) -> Vec<f64> {
    let mut rng = super::lower::rng_for(seed, context);
    let mut v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    let norm = dot(&v, &v).sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// Eigen-decomposition of a symmetric matrix (eigenvalues ascending, eigenvectors as columns
/// in the same order). The QR sweeps are bounded: nalgebra's can stall on some matrices
/// (nalgebra issue #1025), and a stall must be an error, not a hang.
fn symmetric_eigen(m: DMatrix<f64>) -> Result<(Vec<f64>, DMatrix<f64>), Diagnostic> {
    let n = m.nrows();
    let sweeps = 100 + 30 * n;
    let e = SymmetricEigen::try_new(m, f64::EPSILON, sweeps).ok_or_else(|| {
        Diagnostic::error(format!(
            "the eigenvalue iteration did not converge in {sweeps} sweeps on this Hessian"
        ))
    })?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| e.eigenvalues[a].total_cmp(&e.eigenvalues[b]));
    let values = order.iter().map(|&i| e.eigenvalues[i]).collect();
    let vectors = DMatrix::from_fn(n, n, |r, c| e.eigenvectors[(r, order[c])]);
    Ok((values, vectors))
}

/// The whole block, checked for finiteness, symmetry and against finite differences.
fn full(op: &Block, labels: Vec<String>, seed: u64) -> Result<Full, Diagnostic> {
    let rows = op.rows()?;
    if let Some(k) = rows.iter().position(|x| !x.is_finite()) {
        // nalgebra stores column-major.
        let (r, c) = (k % rows.nrows(), k / rows.nrows());
        return Err(Diagnostic::error(format!(
            "the Hessian is not finite at these params: ∂²loss/∂{}∂{} is {}",
            labels[r],
            labels[c],
            fmt_num(rows[(r, c)])
        )));
    }
    let largest = rows.camax();
    let asymmetry = (&rows - rows.transpose()).camax() / largest.max(f64::MIN_POSITIVE);
    let matrix = (&rows + rows.transpose()) * 0.5;
    let v = random_unit(op.dim(), seed, "hessian check");
    let hv: Vec<f64> = (&matrix * nalgebra::DVector::from_column_slice(&v))
        .iter()
        .copied()
        .collect();
    // Relative to the params' size: at params of 1e7 an absolute 1e-5 step left the difference
    // of two gradients of 1e7 to rounding, and a smooth quadratic read as a kink.
    let size = op
        .ev
        .params()
        .iter()
        .flat_map(|p| super::values_f64(p.as_tensor()).unwrap_or_default())
        .fold(1.0f64, |m, x| m.max(x.abs()));
    let step = size
        * if op.ev.dtype() == CDType::F64 {
            1e-5
        } else {
            1e-2
        };
    let fd = op.extract(&hvp_fd(op.ev, &op.embed(&v)?, step)?)?;
    let diff: Vec<f64> = hv.iter().zip(&fd).map(|(a, b)| a - b).collect();
    let fd_rel_err = dot(&diff, &diff).sqrt() / dot(&hv, &hv).sqrt().max(f64::MIN_POSITIVE);
    let (eigenvalues, _) = symmetric_eigen(matrix.clone())?;
    Ok(Full {
        labels,
        matrix,
        eigenvalues,
        asymmetry,
        fd_rel_err,
    })
}

/// Lanczos with full reorthogonalization from a seeded random start, until the `extremes`
/// Ritz values at each end have estimated residuals within √ε of the spectrum's scale, or the
/// step limit. The residuals reported are computed afresh, ||Hy - θy|| with one product each.
fn lanczos(op: &Block, options: &Options, eps: f64) -> Result<Lanczos, Diagnostic> {
    let n = op.dim();
    let max_steps = options.lanczos_steps.clamp(1, n);
    let mut basis = vec![random_unit(n, options.seed, "hessian lanczos")];
    let (mut alphas, mut betas) = (Vec::new(), Vec::<f64>::new());
    let (mut converged, mut ritz) = (false, (Vec::new(), DMatrix::zeros(0, 0)));
    for j in 0..max_steps {
        let mut w = op.apply(&basis[j])?;
        let alpha = dot(&basis[j], &w);
        alphas.push(alpha);
        // Twice is enough (Kahan's rule) to keep the basis orthogonal to working precision.
        for _ in 0..2 {
            for q in &basis {
                let c = dot(q, &w);
                w.iter_mut().zip(q).for_each(|(x, qi)| *x -= c * qi);
            }
        }
        let beta = dot(&w, &w).sqrt();
        let k = alphas.len();
        let t = DMatrix::from_fn(k, k, |r, c| match r.abs_diff(c) {
            0 => alphas[r],
            1 => betas[r.min(c)],
            _ => 0.0,
        });
        ritz = symmetric_eigen(t)?;
        let (values, vectors) = &ritz;
        let scale = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let ends = ends(k, options.extremes);
        // ||H(Qs) - θ(Qs)|| = β_k |s_k| for the last component of the Ritz vector s.
        let settled = ends
            .iter()
            .all(|&i| beta * vectors[(k - 1, i)].abs() <= eps.sqrt() * scale);
        if settled || beta <= eps * scale || beta == 0.0 {
            converged = true;
            break;
        }
        if j + 1 < max_steps {
            betas.push(beta);
            basis.push(w.iter().map(|x| x / beta).collect());
        }
    }
    let (values, vectors) = ritz;
    let k = values.len();
    let pair = |i: usize| -> Result<Ritz, Diagnostic> {
        let mut y = vec![0.0; n];
        for (j, q) in basis.iter().enumerate().take(k) {
            let s = vectors[(j, i)];
            y.iter_mut().zip(q).for_each(|(x, qj)| *x += s * qj);
        }
        let hy = op.apply(&y)?;
        let r: Vec<f64> = hy.iter().zip(&y).map(|(a, b)| a - values[i] * b).collect();
        Ok(Ritz {
            value: values[i],
            residual: dot(&r, &r).sqrt() / dot(&y, &y).sqrt(),
        })
    };
    let e = options.extremes.clamp(1, k);
    Ok(Lanczos {
        steps: k,
        converged,
        top: (0..e).map(|i| pair(k - 1 - i)).collect::<Result<_, _>>()?,
        bottom: (0..e).map(pair).collect::<Result<_, _>>()?,
    })
}

/// Indices of the `extremes` smallest and largest of `k` ascending values.
fn ends(k: usize, extremes: usize) -> Vec<usize> {
    let e = extremes.clamp(1, k);
    let mut i: Vec<usize> = (0..e).chain(k - e..k).collect();
    i.dedup();
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_each_coordinate_row_major() {
        assert_eq!(coordinate_labels("x", &[]), vec!["x"]);
        assert_eq!(coordinate_labels("w", &[3]), vec!["w[0]", "w[1]", "w[2]"]);
        assert_eq!(
            coordinate_labels("W", &[2, 2]),
            vec!["W[0,0]", "W[0,1]", "W[1,0]", "W[1,1]"]
        );
    }

    #[test]
    fn symmetric_eigen_sorts_values_and_their_vectors() {
        // [[2, 1], [1, 2]] has eigenvalues 1 and 3, along (1, -1) and (1, 1).
        let m = DMatrix::from_row_slice(2, 2, &[2.0, 1.0, 1.0, 2.0]);
        let (v, q) = symmetric_eigen(m.clone()).unwrap();
        assert!(
            (v[0] - 1.0).abs() < 1e-14 && (v[1] - 3.0).abs() < 1e-14,
            "{v:?}"
        );
        for (k, value) in v.iter().enumerate() {
            let residual = &m * q.column(k) - q.column(k) * *value;
            assert!(residual.norm() < 1e-14, "{k}: {residual}");
        }
        // Zero rows and columns around a 4×4 block of ones: rank one, eigenvalue 4, the rest 0.
        let idx = [1, 4, 6, 9];
        let m = DMatrix::from_fn(12, 12, |r, c| {
            if idx.contains(&r) && idx.contains(&c) {
                1.0
            } else {
                0.0
            }
        });
        let (v, _) = symmetric_eigen(m).unwrap();
        assert!((v[11] - 4.0).abs() < 1e-12, "{v:?}");
        assert!(v[..11].iter().all(|x| x.abs() < 1e-12), "{v:?}");
    }
}
