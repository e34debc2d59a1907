//! Muon, momentum orthogonalized by Newton–Schulz: torch.optim.Muon (2-D params; every other
//! param goes to a fallback optimizer named in the spec) and optax.contrib.muon (the others go to
//! its built-in AdamW). Newton–Schulz runs in the run's dtype, where torch casts to bfloat16.

use candle_core::{Result, Tensor};

use super::spec::{Conflict, Muon, OptaxMuon, OptimizerKind, RuleState, SettingError};
use super::step::{NoOracle, Rule, StepCx, UpdateRule, add_scaled, lerp};

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

/// torch refuses 100 or more Newton–Schulz steps; a fallback that is Muon again would step
/// none of the params it gets, and one that evaluates the loss elsewhere (LBFGS) would see only
/// part of the model.
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
    let why = match o.fallback.kind() {
        Some(OptimizerKind::Muon) => {
            "the fallback gets only the params that are not 2-D, and muon steps none of those"
        }
        Some(k) if k.needs_oracle() => {
            "it evaluates the loss at params of its own, and it sees only the params muon leaves to it"
        }
        _ => return Ok(()),
    };
    Err(Conflict {
        key: "fallback",
        error: SettingError {
            message: format!("`{}` cannot be muon's fallback: {why}", o.fallback.name()),
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
                let (row_p, row_q) = (a[p].clone(), a[q].clone());
                for (k, (pk, qk)) in row_p.into_iter().zip(row_q).enumerate() {
                    a[p][k] = c * pk - s * qk;
                    a[q][k] = s * pk + c * qk;
                }
            }
        }
    }
    (0..n).map(|i| a[i][i]).collect()
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::optim::spec::{HyperValue, OptimizerSpec};

    fn matrix(rows: &[&[f64]]) -> Tensor {
        Tensor::new(
            rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
            &Device::Cpu,
        )
        .unwrap()
    }

    fn values(t: &Tensor) -> Vec<Vec<f64>> {
        t.to_vec2().unwrap()
    }

    fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], tol: f64) {
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() <= tol, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn defaults_are_torchs_and_optaxs() {
        use HyperValue::{Bool as B, Number as N, Word as W};
        let muon = OptimizerSpec::parse("muon").unwrap();
        assert_eq!(
            muon.values(),
            vec![
                ("lr", N(1e-3)),
                ("weight_decay", N(0.1)),
                ("momentum", N(0.95)),
                ("nesterov", B(true)),
                ("ns_a", N(3.4445)),
                ("ns_b", N(-4.7750)),
                ("ns_c", N(2.0315)),
                ("eps", N(1e-7)),
                ("ns_steps", N(5.0)),
                ("adjust_lr_fn", W("original")),
                (
                    "fallback",
                    HyperValue::Spec(Box::new(OptimizerSpec::parse("adamw").unwrap()))
                ),
            ]
        );
        let optax = OptimizerSpec::parse("optax_muon").unwrap();
        assert_eq!(
            optax.values(),
            vec![
                ("lr", N(0.02)),
                ("ns_a", N(3.4445)),
                ("ns_b", N(-4.7750)),
                ("ns_c", N(2.0315)),
                ("ns_steps", N(5.0)),
                ("momentum", N(0.95)),
                ("eps", N(1e-8)),
                ("weight_decay", N(0.0)),
                ("nesterov", B(true)),
                ("adaptive", B(false)),
                ("preconditioning", W("frobenius")),
                ("adam_beta1", N(0.9)),
                ("adam_beta2", N(0.999)),
                ("adam_eps_root", N(0.0)),
                ("adam_weight_decay", N(0.0)),
                ("adam_lr", W("none")),
                ("consistent_rms", W("none")),
            ]
        );
    }

    #[test]
    fn a_fallback_is_a_nested_spec_that_prints_and_parses_back() {
        let spec = OptimizerSpec::parse("muon(lr=0.02, fallback=adamw(lr=3e-4))").unwrap();
        let OptimizerSpec::Muon(m) = &spec else {
            panic!("{spec:?} is not muon")
        };
        assert_eq!(m.fallback.to_string(), "adamw(lr=0.0003)");
        assert_eq!(spec.to_string(), "muon(lr=0.02, fallback=adamw(lr=0.0003))");
        assert_eq!(OptimizerSpec::parse(&spec.to_string()).unwrap(), spec);
        let sgd = "muon(fallback=sgd(lr=0.1, momentum=0.9, nesterov=true), ns_steps=99)";
        assert!(OptimizerSpec::parse(sgd).is_ok());
    }

    #[test]
    fn values_torch_refuses_are_refused() {
        // (spec, the start of the message): torch.optim.Muon's checks, then the fallback's.
        let refused = [
            ("muon(lr=-0.1)", "`lr` must be at least 0"),
            ("muon(momentum=-0.5)", "`momentum` must be at least 0"),
            ("muon(weight_decay=-1)", "`weight_decay` must be at least 0"),
            ("muon(ns_steps=100)", "ns_steps must be below 100"),
            ("muon(ns_steps=2.5)", "`ns_steps` must be a whole number"),
            (
                "muon(adjust_lr_fn=spectral)",
                "`adjust_lr_fn` must be one of original",
            ),
            ("muon(fallback=muon)", "`muon` cannot be muon's fallback"),
            ("muon(fallback=lbfgs)", "`lbfgs` cannot be muon's fallback"),
            (
                "muon(fallback=adamw(beta1=1.5))",
                "`fallback` is not a valid optimizer",
            ),
            (
                "muon(fallback=sgd(nesterov=true))",
                "`fallback` is not a valid optimizer: nesterov needs momentum > 0",
            ),
            (
                "optax_muon(preconditioning=polar)",
                "`preconditioning` must be one of",
            ),
        ];
        for (spec, message) in refused {
            let e = OptimizerSpec::parse(spec).unwrap_err();
            assert!(e.message.starts_with(message), "{spec}: {e}");
        }
    }

    /// Newton–Schulz with the cubic coefficients (1.5, -0.5, 0) converges to the polar factor
    /// U V^T of M = U S V^T: here M = diag(2, -0.5) padded, whose polar factor is diag(1, -1)
    /// padded.
    #[test]
    fn newton_schulz_converges_to_the_polar_factor() {
        let wide = matrix(&[&[2.0, 0.0, 0.0], &[0.0, -0.5, 0.0]]);
        let polar = vec![vec![1.0, 0.0, 0.0], vec![0.0, -1.0, 0.0]];
        let cubic = [1.5, -0.5, 0.0];
        for scaling in [
            Scaling::ClampedFrobenius(1e-7),
            Scaling::Frobenius(1e-8),
            Scaling::Spectral(1e-8),
        ] {
            let x = newton_schulz(&wide, cubic, 30, scaling).unwrap();
            assert_close(&values(&x), &polar, 1e-12);
            // A tall matrix is orthogonalized through its transpose.
            let tall = newton_schulz(&wide.t().unwrap(), cubic, 30, scaling).unwrap();
            assert_close(&values(&tall.t().unwrap()), &polar, 1e-12);
        }
    }

    #[test]
    fn the_scalings_before_the_iterations() {
        let x = matrix(&[&[3.0, 0.0, 4.0], &[0.0, 1.0, 0.0]]);
        let none = [1.0, 0.0, 0.0];
        let at = |scaling| values(&newton_schulz(&x, none, 1, scaling).unwrap());
        // ||X||_F = sqrt(26); torch clamps it from below, optax adds eps.
        let f = 26f64.sqrt();
        assert_close(
            &at(Scaling::ClampedFrobenius(1e-7)),
            &values(&(&x / f).unwrap()),
            1e-15,
        );
        assert_close(
            &at(Scaling::ClampedFrobenius(30.0)),
            &values(&(&x / 30.0).unwrap()),
            1e-15,
        );
        assert_close(
            &at(Scaling::Frobenius(1.0)),
            &values(&(&x / (f + 1.0)).unwrap()),
            1e-15,
        );
        // The rows are orthogonal with norms 5 and 1: the spectral norm is 5.
        assert_close(
            &at(Scaling::Spectral(1.0)),
            &values(&(&x / 6.0).unwrap()),
            1e-15,
        );
        // A zero matrix stays zero under torch's clamp.
        let zero = Tensor::zeros((2, 3), candle_core::DType::F64, &Device::Cpu).unwrap();
        let z = newton_schulz(
            &zero,
            [3.4445, -4.775, 2.0315],
            5,
            Scaling::ClampedFrobenius(1e-7),
        );
        assert_close(&values(&z.unwrap()), &[vec![0.0; 3], vec![0.0; 3]], 0.0);
    }

    /// optax's first-iteration rescalings on X = [[1, 1], [0, 2]], A = X X^T = [[2, 2], [2, 4]]:
    /// AOL scales row i by s_i = (sum_j |A_ij|)^(-1/2) = (1/2, 1/sqrt(6)) and A to diag(s) A
    /// diag(s); Schatten scales X by s = ||A||_F^(-1/2) = 28^(-1/4) and A by s^2.
    #[test]
    fn aol_and_schatten_rescale_inside_the_first_iteration() {
        let x = matrix(&[&[1.0, 1.0], &[0.0, 2.0]]);
        let mul = |a: &[Vec<f64>], b: &[Vec<f64>]| -> Vec<Vec<f64>> {
            (0..2)
                .map(|i| {
                    (0..2)
                        .map(|j| a[i][0] * b[0][j] + a[i][1] * b[1][j])
                        .collect()
                })
                .collect()
        };
        let r6 = 6f64.sqrt();
        let xs = vec![vec![0.5, 0.5], vec![0.0, 2.0 / r6]];
        let a_s = vec![vec![0.5, 1.0 / r6], vec![1.0 / r6, 4.0 / 6.0]];
        // (a, b, c) = (1, 0, 0) gives the scaled X; (0, 1, 0) the scaled A times it.
        let aol = |c| values(&newton_schulz(&x, c, 1, Scaling::Aol).unwrap());
        assert_close(&aol([1.0, 0.0, 0.0]), &xs, 1e-15);
        assert_close(&aol([0.0, 1.0, 0.0]), &mul(&a_s, &xs), 1e-15);
        let s = 28f64.powf(-0.25);
        let a = [vec![2.0, 2.0], vec![2.0, 4.0]];
        let ax = mul(&a, &values(&x));
        let schatten = values(&newton_schulz(&x, [0.0, 1.0, 0.0], 1, Scaling::Schatten).unwrap());
        let want: Vec<Vec<f64>> = ax
            .iter()
            .map(|r| r.iter().map(|v| v * s.powi(3)).collect())
            .collect();
        assert_close(&schatten, &want, 1e-15);
        // Later iterations do not rescale: a second step with (0, 1, 0) is X X^T X.
        let twice = values(&newton_schulz(&x, [0.0, 1.0, 0.0], 2, Scaling::Schatten).unwrap());
        let wt = vec![vec![want[0][0], want[1][0]], vec![want[0][1], want[1][1]]];
        assert_close(&twice, &mul(&mul(&want, &wt), &want), 1e-15);
    }

    /// The eigenvalues of [[a, b], [b, d]] are (a + d)/2 ± sqrt(((a - d)/2)^2 + b^2).
    #[test]
    fn jacobi_finds_the_eigenvalues_of_a_symmetric_matrix() {
        let (a, b, d) = (2.0, 1.5, -1.0);
        let r = (((a - d) / 2.0f64).powi(2) + b * b).sqrt();
        let mut got = symmetric_eigenvalues(vec![vec![a, b], vec![b, d]]);
        got.sort_by(f64::total_cmp);
        assert!((got[0] - ((a + d) / 2.0 - r)).abs() < 1e-15, "{got:?}");
        assert!((got[1] - ((a + d) / 2.0 + r)).abs() < 1e-15, "{got:?}");
        // Q diag(1, 2, 3) Q^T with Q a rotation by 30 degrees in the first two axes.
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let m = vec![
            vec![c * c + 2.0 * s * s, c * s - 2.0 * s * c, 0.0],
            vec![c * s - 2.0 * s * c, s * s + 2.0 * c * c, 0.0],
            vec![0.0, 0.0, 3.0],
        ];
        let mut got = symmetric_eigenvalues(m);
        got.sort_by(f64::total_cmp);
        for (g, w) in got.iter().zip([1.0, 2.0, 3.0]) {
            assert!((g - w).abs() < 1e-14, "{got:?}");
        }
    }

    /// One torch Muon step without momentum or decay: p - lr ratio NS(g), with ratio
    /// sqrt(max(1, A/B)) (original), 0.2 sqrt(max(A, B)) (match_rms_adamw), sqrt(A/B)
    /// (spectral_unclamped), A x B the param's shape.
    #[test]
    fn the_lr_adjustments_scale_the_orthogonalized_step() {
        let ratio = |shape: (usize, usize), adjust: &str| -> f64 {
            let spec = format!(
                "muon(lr=0.1, weight_decay=0, momentum=0, nesterov=false, adjust_lr_fn={adjust})"
            );
            let OptimizerSpec::Muon(m) = OptimizerSpec::parse(&spec).unwrap() else {
                unreachable!()
            };
            let n = shape.0 * shape.1;
            let g = Tensor::arange(1.0, n as f64 + 1.0, &Device::Cpu)
                .unwrap()
                .reshape(shape)
                .unwrap();
            let p = g.zeros_like().unwrap();
            let mut state = m.init(std::slice::from_ref(&p)).unwrap();
            let new = m
                .step(
                    &mut state,
                    &mut StepCx {
                        params: &[p],
                        grads: std::slice::from_ref(&g),
                        loss: 0.0,
                        lr: 0.1,
                        t: 1,
                        oracle: &mut NoOracle,
                    },
                )
                .unwrap();
            let ns = newton_schulz(
                &g,
                [3.4445, -4.775, 2.0315],
                5,
                Scaling::ClampedFrobenius(1e-7),
            );
            let ratio = (&new[0] / -0.1).unwrap().div(&ns.unwrap()).unwrap();
            let ratio = ratio.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            assert!(
                ratio.iter().all(|r| (r - ratio[0]).abs() < 1e-12),
                "{ratio:?}"
            );
            ratio[0]
        };
        for (shape, adjust, want) in [
            ((2, 8), "original", 1.0),
            ((8, 2), "original", 2.0),
            ((2, 8), "match_rms_adamw", 0.2 * 8f64.sqrt()),
            ((8, 2), "match_rms_adamw", 0.2 * 8f64.sqrt()),
            ((2, 8), "spectral_unclamped", 0.5),
            ((8, 2), "spectral_unclamped", 2.0),
        ] {
            let got = ratio(shape, adjust);
            assert!(
                (got - want).abs() < 1e-12,
                "{shape:?} {adjust}: {got} vs {want}"
            );
        }
    }
}
