//! Muon, momentum orthogonalized by Newton–Schulz: torch.optim.Muon (2-D params; every other
//! param goes to a fallback optimizer named in the spec) and optax.contrib.muon (the others go to
//! its built-in AdamW). Newton–Schulz runs in the run's dtype, where torch casts to bfloat16.

use candle_core::{Result, Tensor};

use super::spec::{Conflict, Muon, OptaxMuon, OptimizerKind, RuleState, SettingError};
use super::step::{Oracle, Rule, StepCx, UpdateRule, add_scaled, lerp};

words! {
    /// How torch's Muon scales the lr by the param's shape (A rows, B columns).
    AdjustLrFn {
        /// Keller Jordan's `sqrt(max(1, A / B))`.
        Original = "original",
        /// Moonshot's `0.2 sqrt(max(A, B))`, so the update's RMS matches AdamW's.
        MatchRmsAdamw = "match_rms_adamw",
        /// `sqrt(A / B)`, below 1 for wide matrices too.
        SpectralUnclamped = "spectral_unclamped",
    }
}

words! {
    /// How optax's Muon brings the momentum's spectral norm to about 1 for Newton–Schulz.
    Preconditioning {
        /// Divide by the Frobenius norm plus eps.
        Frobenius = "frobenius",
        /// Divide by the spectral norm (the largest singular value) plus eps.
        Spectral = "spectral",
        /// Almost-orthogonal-layer rescaling of each row inside the first iteration.
        Aol = "aol",
        /// Schatten-4 rescaling inside the first iteration.
        Schatten = "schatten",
    }
}

/// torch refuses 100 or more Newton–Schulz steps; a fallback that is Muon again would have no
/// param it could take, and one that evaluates the loss elsewhere (LBFGS) sees only part of the
/// model.
pub(super) fn muon_checks(o: &Muon) -> std::result::Result<(), Conflict> {
    if o.ns_steps >= 100 {
        return Err(Conflict {
            key: "ns_steps",
            error: SettingError {
                message: format!("ns_steps must be below 100, not {}", o.ns_steps),
                help: Some(
                    "torch.optim.Muon refuses it: 5 Newton–Schulz steps are the usual".into(),
                ),
            },
        });
    }
    let kind = o.fallback.kind();
    let why = if kind == OptimizerKind::Muon {
        "it is muon again, which has no other optimizer for the params muon leaves to it"
    } else if kind.needs_oracle() {
        "it evaluates the loss at params of its own, and it sees only the params muon leaves to it"
    } else {
        return Ok(());
    };
    Err(Conflict {
        key: "fallback",
        error: SettingError {
            message: format!("`{}` cannot be muon's fallback: {why}", kind.name()),
            help: Some("use an optimizer that steps from the gradient, e.g. fallback=adamw".into()),
        },
    })
}

/// Muon's state.
#[derive(Debug, Clone)]
pub struct MuonState {
    /// Each 2-D param's momentum buffer (None for the fallback's params and before a step).
    pub momentum_buffer: Vec<Option<Tensor>>,
    /// The fallback's state over the params that are not 2-D, in order (None: every param is).
    pub fallback: Option<Box<RuleState>>,
    /// Every param as the last step left it: the 2-D part of the eval params when the fallback
    /// keeps eval params of its own (schedule-free's x).
    params: Vec<Tensor>,
}

/// The oracle the fallback steps with: it sees only part of the model, so it may not ask for
/// the loss elsewhere (specs with such a fallback are refused; this keeps a wrong answer out).
struct NoOracle;

impl Oracle for NoOracle {
    fn loss_and_grads(&mut self, _params: &[Tensor]) -> Result<(f64, Vec<Tensor>)> {
        Err(candle_core::Error::Msg(
            "muon's fallback cannot evaluate the loss at other params".into(),
        ))
    }
}

/// The params Muon orthogonalizes: exactly the 2-D ones, as torch requires.
fn is_matrix(p: &Tensor) -> bool {
    p.rank() == 2
}

/// The positions of the params the fallback steps.
fn fallback_positions(params: &[Tensor]) -> Vec<usize> {
    (0..params.len())
        .filter(|&i| !is_matrix(&params[i]))
        .collect()
}

/// This step's lr over the base lr: the schedule's factor (and the run's lr multiplier), which
/// the fallback's own lr and optax's `adam_lr` follow too; 1 when the base lr is 0.
fn schedule_factor(lr: f64, base: f64) -> f64 {
    if base > 0.0 { lr / base } else { 1.0 }
}

impl Rule for Muon {
    type State = MuonState;

    fn init(&self, params: &[Tensor]) -> Result<MuonState> {
        let others: Vec<Tensor> = fallback_positions(params)
            .into_iter()
            .map(|i| params[i].clone())
            .collect();
        let fallback = match others.is_empty() {
            true => None,
            false => Some(Box::new(self.fallback.init_state(&others)?)),
        };
        Ok(MuonState {
            momentum_buffer: vec![None; params.len()],
            fallback,
            params: params.to_vec(),
        })
    }

    fn step(&self, s: &mut MuonState, cx: &mut StepCx) -> Result<Vec<Tensor>> {
        let mut new: Vec<Tensor> = cx.params.to_vec();
        for (i, (p, g)) in cx.params.iter().zip(cx.grads).enumerate() {
            if is_matrix(p) {
                new[i] = self.update_matrix(&mut s.momentum_buffer[i], p, g, cx.lr)?;
            }
        }
        if let Some(state) = s.fallback.as_deref_mut() {
            let at = fallback_positions(cx.params);
            let params: Vec<Tensor> = at.iter().map(|&i| cx.params[i].clone()).collect();
            let grads: Vec<Tensor> = at.iter().map(|&i| cx.grads[i].clone()).collect();
            let stepped = self
                .fallback
                .step_all(
                    state,
                    &mut StepCx {
                        params: &params,
                        grads: &grads,
                        loss: cx.loss,
                        lr: self.fallback.lr() * schedule_factor(cx.lr, self.lr),
                        t: cx.t,
                        oracle: &mut NoOracle,
                    },
                )
                .unwrap_or_else(|| {
                    Err(candle_core::Error::Msg(
                        "muon's fallback state is not its fallback's".into(),
                    ))
                })?;
            for (i, p) in at.into_iter().zip(stepped) {
                new[i] = p;
            }
        }
        s.params = new.clone();
        Ok(new)
    }

    fn eval_params(&self, s: &MuonState) -> Option<Vec<Tensor>> {
        let theirs = self.fallback.eval_params_of(s.fallback.as_deref()?)?;
        let mut all = s.params.clone();
        for (i, p) in fallback_positions(&s.params).into_iter().zip(theirs) {
            all[i] = p;
        }
        Some(all)
    }
}

impl Muon {
    /// torch's `_single_tensor_muon` for one 2-D param.
    fn update_matrix(
        &self,
        buf: &mut Option<Tensor>,
        p: &Tensor,
        g: &Tensor,
        lr: f64,
    ) -> Result<Tensor> {
        let momentum = self.momentum;
        let b = match buf.as_ref() {
            None => g.affine(1.0 - momentum, 0.0)?,
            Some(b) => lerp(b, g, 1.0 - momentum)?,
        };
        let u = if self.nesterov {
            lerp(g, &b, momentum)?
        } else {
            b.clone()
        };
        *buf = Some(b);
        let o = newton_schulz(
            &u,
            [self.ns_a, self.ns_b, self.ns_c],
            self.ns_steps,
            Scaling::ClampedFrobenius(self.eps),
        )?;
        let (rows, cols) = p.dims2()?;
        let (rows, cols) = (rows as f64, cols as f64);
        let ratio = match self.adjust_lr_fn {
            AdjustLrFn::Original => (rows / cols).max(1.0).sqrt(),
            AdjustLrFn::MatchRmsAdamw => 0.2 * rows.max(cols).sqrt(),
            AdjustLrFn::SpectralUnclamped => (rows / cols).sqrt(),
        };
        let p = p.affine(1.0 - lr * self.weight_decay, 0.0)?;
        add_scaled(&p, &o, -lr * ratio)
    }
}

/// optax's Muon state for one param: the momentum of a 2-D param, or the first and second
/// moments of the AdamW a param of another shape goes to.
#[derive(Debug, Clone, Default)]
pub struct OptaxMuonState {
    /// The first moment (Muon's momentum for a 2-D param).
    pub mu: Option<Tensor>,
    /// AdamW's second moment (params that are not 2-D).
    pub nu: Option<Tensor>,
}

/// optax's `update_moment`: `(1 - decay) g + decay m`, from zeros.
fn moment(m: Option<&Tensor>, g: &Tensor, decay: f64) -> Result<Tensor> {
    let fresh = g.affine(1.0 - decay, 0.0)?;
    match m {
        None => Ok(fresh),
        Some(m) => fresh + m.affine(decay, 0.0)?,
    }
}

/// optax's bias-corrected first moment, Nesterov's (`decay m / (1 - decay^(t+1)) + (1 - decay)
/// g / (1 - decay^t)`) or plain (`m / (1 - decay^t)`).
fn corrected(m: &Tensor, g: &Tensor, decay: f64, t: u64, nesterov: bool) -> Result<Tensor> {
    let bc = |k: u64| 1.0 - decay.powf(k as f64);
    if nesterov {
        (m / bc(t + 1))?.affine(decay, 0.0)? + (g / bc(t))?.affine(1.0 - decay, 0.0)?
    } else {
        m / bc(t)
    }
}

impl UpdateRule for OptaxMuon {
    type State = OptaxMuonState;

    fn step(
        &self,
        s: &mut OptaxMuonState,
        p: &Tensor,
        g: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor> {
        if !is_matrix(p) {
            let adam_lr = match self.adam_lr {
                Some(a) => a * schedule_factor(lr, self.lr),
                None => lr,
            };
            return self.adamw(s, p, g, adam_lr, t);
        }
        let mu = moment(s.mu.as_ref(), g, self.momentum)?;
        let m = corrected(&mu, g, self.momentum, t, self.nesterov)?;
        s.mu = Some(mu);
        let scaling = match self.preconditioning {
            Preconditioning::Frobenius => Scaling::Frobenius(self.eps),
            Preconditioning::Spectral => Scaling::Spectral(self.eps),
            Preconditioning::Aol => Scaling::Aol,
            Preconditioning::Schatten => Scaling::Schatten,
        };
        let mut x = newton_schulz(
            &m,
            [self.ns_a, self.ns_b, self.ns_c],
            self.ns_steps,
            scaling,
        )?;
        if self.adaptive {
            x = x.broadcast_mul(&(&m * &x)?.sum_all()?)?;
        }
        // optax's rows are fan-in, so the width rule is torch's transposed.
        let (rows, cols) = p.dims2()?;
        let (rows, cols) = (rows as f64, cols as f64);
        let scale = match self.consistent_rms {
            Some(c) => rows.max(cols).sqrt() * c,
            None => (cols / rows).max(1.0).sqrt(),
        };
        let u = (x.affine(scale, 0.0)? + p.affine(self.weight_decay, 0.0)?)?;
        add_scaled(p, &u, -lr)
    }
}

impl OptaxMuon {
    /// `optax.adamw(adam_lr, adam_beta1, adam_beta2, eps, adam_eps_root, adam_weight_decay,
    /// nesterov=nesterov)` for a param that is not 2-D.
    fn adamw(
        &self,
        s: &mut OptaxMuonState,
        p: &Tensor,
        g: &Tensor,
        lr: f64,
        t: u64,
    ) -> Result<Tensor> {
        let (b1, b2) = (self.adam_beta1, self.adam_beta2);
        let mu = moment(s.mu.as_ref(), g, b1)?;
        let nu = moment(s.nu.as_ref(), &g.sqr()?, b2)?;
        let m = corrected(&mu, g, b1, t, self.nesterov)?;
        let v = (&nu / (1.0 - b2.powf(t as f64)))?;
        let denom = v
            .affine(1.0, self.adam_eps_root)?
            .sqrt()?
            .affine(1.0, self.eps)?;
        s.mu = Some(mu);
        s.nu = Some(nu);
        let u = (m.div(&denom)? + p.affine(self.adam_weight_decay, 0.0)?)?;
        add_scaled(p, &u, -lr)
    }
}

/// How Newton–Schulz brings the matrix's spectral norm to about 1 before iterating.
#[derive(Debug, Clone, Copy)]
enum Scaling {
    /// torch: divide by `max(||X||_F, eps)`.
    ClampedFrobenius(f64),
    /// optax: divide by `||X||_F + eps`.
    Frobenius(f64),
    /// optax: divide by `||X||_2 + eps`.
    Spectral(f64),
    /// optax: the first iteration scales X by `max(||X X^T||_F, 1e-8)^(-1/2)`.
    Schatten,
    /// optax: the first iteration scales row i of X by `max(sum_j |(X X^T)_ij|, 1e-8)^(-1/2)`.
    Aol,
}

/// The floor optax's Schatten and AOL rescalings divide by.
const RESCALE_FLOOR: f64 = 1e-8;

/// `steps` iterations of `X <- a X + (b A + c A A) X` with `A = X X^T`, on the matrix or its
/// transpose, whichever is wide, scaled first as `scaling` says; in the matrix's dtype.
fn newton_schulz(m: &Tensor, [a, b, c]: [f64; 3], steps: u64, scaling: Scaling) -> Result<Tensor> {
    let (rows, cols) = m.dims2()?;
    let tall = rows > cols;
    let mut x = if tall {
        m.t()?.contiguous()?
    } else {
        m.clone()
    };
    x = match scaling {
        Scaling::ClampedFrobenius(eps) => x.broadcast_div(&frobenius(&x)?.maximum(eps)?)?,
        Scaling::Frobenius(eps) => x.broadcast_div(&frobenius(&x)?.affine(1.0, eps)?)?,
        Scaling::Spectral(eps) => (&x / (spectral_norm(&x)? + eps))?,
        Scaling::Schatten | Scaling::Aol => x,
    };
    for i in 0..steps {
        let mut gram = x.matmul(&x.t()?)?;
        if i == 0 {
            match scaling {
                Scaling::Schatten => {
                    let s = frobenius(&gram)?.maximum(RESCALE_FLOOR)?.sqrt()?.recip()?;
                    x = x.broadcast_mul(&s)?;
                    gram = gram.broadcast_mul(&s.sqr()?)?;
                }
                Scaling::Aol => {
                    let s = gram
                        .abs()?
                        .sum_keepdim(1)?
                        .maximum(RESCALE_FLOOR)?
                        .sqrt()?
                        .recip()?;
                    x = x.broadcast_mul(&s)?;
                    gram = gram.broadcast_mul(&s)?.broadcast_mul(&s.t()?)?;
                }
                _ => {}
            }
        }
        let poly = (gram.affine(b, 0.0)? + gram.matmul(&gram)?.affine(c, 0.0)?)?;
        x = (x.affine(a, 0.0)? + poly.matmul(&x)?)?;
    }
    if tall { x.t()?.contiguous() } else { Ok(x) }
}

/// The Frobenius norm, as a 0-d tensor in the matrix's dtype.
fn frobenius(x: &Tensor) -> Result<Tensor> {
    x.sqr()?.sum_all()?.sqrt()
}

/// The largest singular value of a matrix: the root of the largest eigenvalue of `X X^T`,
/// computed on the host in f64.
fn spectral_norm(x: &Tensor) -> Result<f64> {
    let rows: Vec<Vec<f64>> = x.to_dtype(candle_core::DType::F64)?.to_vec2()?;
    let gram: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            rows.iter()
                .map(|s| r.iter().zip(s).map(|(a, b)| a * b).sum())
                .collect()
        })
        .collect();
    let largest = symmetric_eigenvalues(gram)
        .into_iter()
        .fold(0.0f64, f64::max);
    Ok(largest.sqrt())
}

/// The eigenvalues of a symmetric matrix, by cyclic Jacobi rotations (each zeroes one
/// off-diagonal pair; sweeps until the off-diagonal part vanishes against the diagonal).
fn symmetric_eigenvalues(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        let diag: f64 = (0..n).map(|i| a[i][i] * a[i][i]).sum();
        if off <= f64::EPSILON * f64::EPSILON * diag {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if a[p][q] == 0.0 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for row in a.iter_mut() {
                    let (kp, kq) = (row[p], row[q]);
                    row[p] = c * kp - s * kq;
                    row[q] = s * kp + c * kq;
                }
                for k in 0..n {
                    let (pk, qk) = (a[p][k], a[q][k]);
                    a[p][k] = c * pk - s * qk;
                    a[q][k] = s * pk + c * qk;
                }
            }
        }
    }
    (0..n).map(|i| a[i][i]).collect()
}
