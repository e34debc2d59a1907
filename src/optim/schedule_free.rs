//! The authors' schedule-free AdamW and SGD (schedulefree 1.4.1, its default foreach path), op by
//! op. Three sequences: gradients are taken at y (the run's params), z takes plain steps, and
//! the model is evaluated at x, a weighted average of the z's that y interpolates towards:
//! x = lerp(y, z, 1 - 1/beta) (the package's `.eval()`), the run's eval params.

use candle_core::{Result, Tensor};

use super::lanes::Coef;
use super::spec::{ScheduleFreeAdamW, ScheduleFreeSgd};
use super::step::{Rule, StateValue, StepCx, add_scaled, lerp};

/// Schedule-free state: the package's per-group counters and per-param tensors.
#[derive(Debug, Clone)]
pub struct ScheduleFreeState {
    /// The largest scheduled lr so far (the package starts it at -1).
    lr_max: f64,
    /// The sum of every step's weight in the average.
    weight_sum: f64,
    /// The z sequence, per param (the initial params before the first step).
    pub z: Vec<Tensor>,
    /// AdamW's second moment, per param (empty for SGD).
    pub exp_avg_sq: Vec<Tensor>,
    /// The eval params x, per param (the run evaluates them after every step).
    x: Vec<Tensor>,
}

/// What AdamW and SGD share: the interpolation, the average's weights and the warmup; AdamW
/// adds `adam = Some((beta2, eps))` to normalize the gradient.
struct ScheduleFree {
    beta: f64,
    weight_decay: f64,
    warmup_steps: u64,
    r: f64,
    weight_lr_power: f64,
    adam: Option<(f64, f64)>,
}

impl ScheduleFree {
    /// State before the first step: z and x are copies of the params (the run's own tensors
    /// change in place), the second moment zeros.
    fn init(&self, params: &[Tensor]) -> Result<ScheduleFreeState> {
        let copies = params
            .iter()
            .map(Tensor::copy)
            .collect::<Result<Vec<_>>>()?;
        let exp_avg_sq = match self.adam {
            Some(_) => params
                .iter()
                .map(Tensor::zeros_like)
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        Ok(ScheduleFreeState {
            lr_max: -1.0,
            weight_sum: 0.0,
            z: copies.clone(),
            exp_avg_sq,
            x: copies,
        })
    }

    fn step(&self, s: &mut ScheduleFreeState, cx: &StepCx) -> Result<Vec<Tensor>> {
        let k = cx.t - 1;
        let sched = if k < self.warmup_steps {
            (k + 1) as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        let lr = cx.lr * sched;
        s.lr_max = lr.max(s.lr_max);
        let weight = ((k + 1) as f64).powf(self.r) * s.lr_max.powf(self.weight_lr_power);
        s.weight_sum += weight;
        // The package catches the ZeroDivisionError of an all-zero weight sum (lr 0).
        let ckp1 = if s.weight_sum == 0.0 {
            0.0
        } else {
            weight / s.weight_sum
        };
        let (mut ys, mut xs) = (Vec::new(), Vec::new());
        for (i, (y, g)) in cx.params.iter().zip(cx.grads).enumerate() {
            let g = match self.adam {
                Some((beta2, eps)) => {
                    let v = (s.exp_avg_sq[i].affine(beta2, 0.0)?
                        + Coef::All(1.0 - beta2).scaled_square(g)?)?;
                    let bias_correction2 = 1.0 - beta2.powf(cx.t as f64);
                    let denom = v
                        .affine(1.0 / bias_correction2, 0.0)?
                        .sqrt()?
                        .affine(1.0, eps)?;
                    s.exp_avg_sq[i] = v;
                    g.div(&denom)?
                }
                None => g.clone(),
            };
            // Weight decay is taken at y.
            let g = add_scaled(&g, y, self.weight_decay)?;
            let y = lerp(y, &s.z[i], ckp1)?;
            let y = add_scaled(&y, &g, lr * (self.beta * (1.0 - ckp1) - 1.0))?;
            s.z[i] = add_scaled(&s.z[i], &g, -lr)?;
            // x = lerp(y, z, 1 - 1/beta): what the package's `.eval()` sets the params to.
            xs.push(lerp(&y, &s.z[i], 1.0 - 1.0 / self.beta)?);
            ys.push(y);
        }
        s.x = xs;
        Ok(ys)
    }
}

/// The named state both show: z, and AdamW's second moment.
fn state_values(s: &ScheduleFreeState) -> Vec<(&'static str, StateValue)> {
    let mut out = vec![("z", StateValue::PerParam(s.z.clone()))];
    if !s.exp_avg_sq.is_empty() {
        out.push(("exp_avg_sq", StateValue::PerParam(s.exp_avg_sq.clone())));
    }
    out
}

impl ScheduleFreeAdamW {
    fn rule(&self) -> ScheduleFree {
        ScheduleFree {
            beta: self.beta1,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            r: self.r,
            weight_lr_power: self.weight_lr_power,
            adam: Some((self.beta2, self.eps)),
        }
    }
}

impl Rule for ScheduleFreeAdamW {
    type State = ScheduleFreeState;

    fn init(&self, params: &[Tensor]) -> Result<ScheduleFreeState> {
        self.rule().init(params)
    }

    fn step(&self, s: &mut ScheduleFreeState, cx: &mut StepCx) -> Result<Vec<Tensor>> {
        self.rule().step(s, cx)
    }

    fn eval_params(&self, s: &ScheduleFreeState) -> Option<Vec<Tensor>> {
        Some(s.x.clone())
    }

    fn state_values(&self, s: &ScheduleFreeState) -> Vec<(&'static str, StateValue)> {
        state_values(s)
    }
}

impl ScheduleFreeSgd {
    fn rule(&self) -> ScheduleFree {
        ScheduleFree {
            beta: self.momentum,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            r: self.r,
            weight_lr_power: self.weight_lr_power,
            adam: None,
        }
    }
}

impl Rule for ScheduleFreeSgd {
    type State = ScheduleFreeState;

    fn init(&self, params: &[Tensor]) -> Result<ScheduleFreeState> {
        self.rule().init(params)
    }

    fn step(&self, s: &mut ScheduleFreeState, cx: &mut StepCx) -> Result<Vec<Tensor>> {
        self.rule().step(s, cx)
    }

    fn eval_params(&self, s: &ScheduleFreeState) -> Option<Vec<Tensor>> {
        Some(s.x.clone())
    }

    fn state_values(&self, s: &ScheduleFreeState) -> Vec<(&'static str, StateValue)> {
        state_values(s)
    }
}

#[cfg(test)]
mod tests {
    use crate::optim::spec::refused_at;
    use candle_core::{Device, Tensor};

    use super::super::spec::{HyperValue, OptimizerSpec};
    use super::super::step::{NoOracle, OptimizerState, StepCx, update};

    fn values(t: &[Tensor]) -> Vec<f64> {
        t.iter()
            .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap())
            .collect()
    }

    /// `steps` updates of `spec` from `p0` with the constant gradient `g`: the params (y) and
    /// the eval params (x) after them.
    fn run(spec: &str, p0: &[f64], g: &[f64], steps: usize) -> (Vec<f64>, Vec<f64>) {
        let spec = OptimizerSpec::parse(spec).unwrap();
        let mut p = vec![Tensor::new(p0, &Device::Cpu).unwrap()];
        let g = vec![Tensor::new(g, &Device::Cpu).unwrap()];
        let mut state = OptimizerState::single(&spec, &p).unwrap();
        for _ in 0..steps {
            let cx = &mut StepCx {
                params: &p,
                grads: &g,
                loss: 0.0,
                lr: spec.lr(),
                t: 0,
                oracle: &mut NoOracle,
            };
            p = update(&mut state, cx).unwrap();
        }
        (values(&p), values(&state.eval_params(&p).unwrap()))
    }

    #[test]
    fn defaults_are_the_packages() {
        use HyperValue::Number as N;
        let adamw = OptimizerSpec::parse("schedulefree_adamw").unwrap();
        let want = [
            ("lr", N(0.0025)),
            ("beta1", N(0.9)),
            ("beta2", N(0.999)),
            ("eps", N(1e-8)),
            ("weight_decay", N(0.0)),
            ("warmup_steps", N(0.0)),
            ("r", N(0.0)),
            ("weight_lr_power", N(2.0)),
        ];
        assert_eq!(adamw.values(), want.to_vec());
        let sgd = OptimizerSpec::parse("schedulefree_sgd").unwrap();
        let want = [
            ("lr", N(1.0)),
            ("momentum", N(0.9)),
            ("weight_decay", N(0.0)),
            ("warmup_steps", N(0.0)),
            ("r", N(0.0)),
            ("weight_lr_power", N(2.0)),
        ];
        assert_eq!(sgd.values(), want.to_vec());
    }

    #[test]
    fn values_the_package_refuses_are_refused() {
        // SGDScheduleFree's checks; AdamW takes the same, with beta1 as its momentum (its
        // `.eval()` divides by it) and torch's Adam range for beta2.
        let refused = [
            ("schedulefree_sgd(lr=-0.1)", "lr"),
            ("schedulefree_sgd(weight_decay=-0.1)", "weight_decay"),
            ("schedulefree_sgd(momentum=0)", "momentum"),
            ("schedulefree_sgd(momentum=1)", "momentum"),
            ("schedulefree_sgd(warmup_steps=2.5)", "warmup_steps"),
            ("schedulefree_adamw(beta1=0)", "beta1"),
            ("schedulefree_adamw(beta2=1)", "beta2"),
            ("schedulefree_adamw(eps=-1e-8)", "eps"),
        ];
        for (spec, key) in refused {
            refused_at(spec, key);
        }
        for spec in [
            "schedulefree_sgd(lr=0, momentum=0.99)",
            "schedulefree_adamw(r=-1)",
        ] {
            assert!(OptimizerSpec::parse(spec).is_ok(), "{spec}");
        }
    }

    #[test]
    fn the_eval_params_are_the_params_before_the_first_step() {
        let (y, x) = run("schedulefree_adamw", &[1.5, -2.0], &[0.3, 0.1], 0);
        assert_eq!((y, x), (vec![1.5, -2.0], vec![1.5, -2.0]));
    }

    #[test]
    fn x_is_the_average_of_the_z_sequence() {
        // A constant gradient g with equal weights: z_t = p0 - t lr g, so y_1 = z_1 and
        // x_2 = (z_1 + z_2) / 2 = p0 - 1.5 lr g; y_2 = (1 - beta) z_2 + beta x_2.
        let (p0, g, lr, beta) = (2.0, 0.5, 0.1, 0.8);
        let spec = format!("schedulefree_sgd(lr={lr}, momentum={beta})");
        let (y1, x1) = run(&spec, &[p0], &[g], 1);
        assert!((y1[0] - (p0 - lr * g)).abs() < 1e-15 && (x1[0] - y1[0]).abs() < 1e-15);
        let (y2, x2) = run(&spec, &[p0], &[g], 2);
        let z2 = p0 - 2.0 * lr * g;
        assert!((x2[0] - (p0 - 1.5 * lr * g)).abs() < 1e-15, "{x2:?}");
        assert!(
            (y2[0] - ((1.0 - beta) * z2 + beta * x2[0])).abs() < 1e-15,
            "{y2:?}"
        );
    }

    #[test]
    fn a_zero_lr_weighs_nothing_and_moves_nothing() {
        // Every weight is lr_max^2 = 0: the package catches the division by the zero sum.
        let (y, x) = run("schedulefree_adamw(lr=0)", &[1.0, 2.0], &[0.5, -0.5], 3);
        assert_eq!((y, x), (vec![1.0, 2.0], vec![1.0, 2.0]));
    }
}
