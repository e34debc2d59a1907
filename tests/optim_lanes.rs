//! Several runs' optimizers stepped as one ([`LaneState`]): every lane must get, bit for bit,
//! the params its run gets stepping alone with its own [`OptimizerState`], over 100 steps of
//! random gradients and per-lane learning rates (some 0), also after it leaves the batch
//! (`lane`) or the batch keeps only some lanes (`select`).

use candle_core::{DType, Device, Tensor};
use gradscope::optim::lanes::LaneState;
use gradscope::optim::spec::OptimizerSpec;
use gradscope::optim::step::{NoOracle, OptimizerState, StepCx, update};

/// The shapes of one lane's params: a scalar, a vector, a matrix.
const SHAPES: [&[usize]; 3] = [&[], &[5], &[3, 4]];

/// Random numbers in [-1, 1) (splitmix64), with exact zeros of both signs now and then.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        match z % 23 {
            0 => 0.0,
            1 => -0.0,
            _ => (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0,
        }
    }

    /// One lane's tensors, one per shape, in `dtype`, scaled by `scale`.
    fn tensors(&mut self, dtype: DType, scale: f64) -> Vec<Tensor> {
        SHAPES
            .iter()
            .map(|&shape| {
                let n = shape.iter().product();
                let v: Vec<f64> = (0..n).map(|_| self.next() * scale).collect();
                Tensor::from_vec(v, shape, &Device::Cpu)
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap()
            })
            .collect()
    }
}

/// Each param of the lanes stacked on a leading lane axis.
fn stack(lanes: &[Vec<Tensor>]) -> Vec<Tensor> {
    (0..lanes[0].len())
        .map(|i| {
            let column: Vec<&Tensor> = lanes.iter().map(|l| &l[i]).collect();
            Tensor::stack(&column, 0).unwrap()
        })
        .collect()
}

/// The bits of a tensor's values (exact: every float dtype widens to f64 without rounding).
fn bits(t: &Tensor) -> Vec<u64> {
    let v: Vec<f64> = t
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

/// One update of a run alone.
fn step_alone(
    state: &mut OptimizerState,
    params: &[Tensor],
    grads: &[Tensor],
    lr: f64,
) -> Vec<Tensor> {
    update(
        state,
        &mut StepCx {
            params,
            grads,
            loss: 0.0,
            lr,
            t: 0,
            oracle: &mut NoOracle,
        },
    )
    .unwrap()
}

/// Lane r's lr at step k (1-based): 0 at the first step in every other lane (a warmup), and
/// a different schedule in each lane.
fn lr_at(base: f64, r: usize, k: usize) -> f64 {
    if k == 1 && r.is_multiple_of(2) {
        0.0
    } else {
        base * (1.0 + 0.5 * ((k + 3 * r) as f64).sin())
    }
}

/// Runs stepped alone beside their lanes stepped as one: the batch's state, the runs' states,
/// and everyone's params.
struct Race {
    lanes: LaneState,
    batch: Vec<Tensor>,
    alone: Vec<(OptimizerState, Vec<Tensor>)>,
    lrs: Vec<f64>,
    noise: Noise,
    dtype: DType,
}

impl Race {
    fn new(specs: &[OptimizerSpec], dtype: DType, seed: u64) -> Self {
        let mut noise = Noise(seed);
        let starts: Vec<Vec<Tensor>> = specs.iter().map(|_| noise.tensors(dtype, 1.0)).collect();
        let batch = stack(&starts);
        let lanes = LaneState::new(specs, &batch).expect("these specs step as one");
        let alone = specs
            .iter()
            .zip(starts)
            .map(|(spec, p)| (OptimizerState::single(spec, &p).unwrap(), p))
            .collect();
        let lrs = specs.iter().map(OptimizerSpec::lr).collect();
        Self {
            lanes,
            batch,
            alone,
            lrs,
            noise,
            dtype,
        }
    }

    /// `steps` more steps of the batch and of every run alone, from the same random gradients.
    fn run(&mut self, steps: usize, what: &str) {
        for _ in 0..steps {
            let k = self.lanes.updates() as usize + 1;
            let grads: Vec<Vec<Tensor>> = self
                .alone
                .iter()
                .map(|_| self.noise.tensors(self.dtype, 3.0))
                .collect();
            let lrs: Vec<f64> = (0..self.alone.len())
                .map(|r| lr_at(self.lrs[r], r, k))
                .collect();
            self.batch = self.lanes.step(&self.batch, &stack(&grads), &lrs).unwrap();
            for (((state, params), g), &lr) in self.alone.iter_mut().zip(&grads).zip(&lrs) {
                *params = step_alone(state, params, g, lr);
            }
            self.check(&format!("{what}, step {k}"));
        }
    }

    /// Every lane's params are its run's, bit for bit.
    fn check(&self, what: &str) {
        for (r, (_, params)) in self.alone.iter().enumerate() {
            for (i, p) in params.iter().enumerate() {
                let lane = self.batch[i].get(r).unwrap();
                assert_eq!(bits(&lane), bits(p), "{what}: lane {r}, param {i}");
            }
        }
    }
}

/// `template` with `{}` replaced by each of `values`: one spec per lane.
fn lanes_of(template: &str, values: &[&str]) -> Vec<OptimizerSpec> {
    values
        .iter()
        .map(|v| OptimizerSpec::parse(&template.replace("{}", v)).unwrap())
        .collect()
}

/// Lanes of every batchable optimizer, their numbers different in every lane (weight decay 0
/// in some), their flags alike; 3 to 8 lanes.
fn cases() -> Vec<Vec<OptimizerSpec>> {
    vec![
        lanes_of(
            "sgd({})",
            &[
                "lr=0.1",
                "lr=0.05, weight_decay=0.1",
                "lr=0.2, weight_decay=0.01",
            ],
        ),
        lanes_of(
            "sgd(momentum={})",
            &[
                "0.9, lr=0.1",
                "0.5, dampening=0.3, lr=0.05",
                "0.99, weight_decay=0.1, lr=0.01",
                "0.8, dampening=0.9, weight_decay=0.001, lr=0.1",
            ],
        ),
        lanes_of(
            "sgd(nesterov=true, momentum={})",
            &[
                "0.9, lr=0.1",
                "0.5, lr=0.05, weight_decay=0.1",
                "0.7, lr=0.02",
            ],
        ),
        lanes_of(
            "adam({})",
            &[
                "lr=0.01",
                "lr=0.02, beta1=0.5, beta2=0.9",
                "lr=0.005, eps=1e-3, weight_decay=0.1",
                "lr=0.01, beta1=0.95, beta2=0.99, eps=1e-6",
                "lr=0.03, beta1=0.0, weight_decay=0.01",
            ],
        ),
        lanes_of(
            "adam(amsgrad=true, {})",
            &[
                "lr=0.01",
                "lr=0.02, beta2=0.9, weight_decay=0.1",
                "lr=0.05, eps=1e-4",
            ],
        ),
        lanes_of(
            "adamw({})",
            &[
                "lr=0.01",
                "lr=0.02, weight_decay=0.0",
                "lr=0.01, weight_decay=0.3, beta1=0.8",
                "lr=0.001, beta2=0.95",
                "lr=0.01, eps=1e-5",
                "lr=0.02, weight_decay=0.1",
            ],
        ),
        lanes_of(
            "rmsprop({})",
            &[
                "lr=0.01",
                "lr=0.02, alpha=0.9",
                "lr=0.005, eps=1e-4, weight_decay=0.1",
            ],
        ),
        lanes_of(
            "rmsprop(centered=true, momentum={})",
            &[
                "0.9, lr=0.01",
                "0.5, lr=0.02, alpha=0.8",
                "0.1, weight_decay=0.1",
                "0.99",
            ],
        ),
        lanes_of(
            "adagrad({})",
            &[
                "lr=0.1",
                "lr=0.05, lr_decay=0.01",
                "lr=0.2, initial_accumulator_value=0.5, eps=1e-3",
                "lr=0.1, weight_decay=0.1",
            ],
        ),
        lanes_of(
            "lion({})",
            &[
                "lr=0.001",
                "lr=0.002, beta1=0.5, beta2=0.8",
                "lr=0.001, weight_decay=0.3",
                "lr=0.0005, beta1=0.95",
                "lr=0.003, beta2=0.999, weight_decay=0.1",
                "lr=0.001, beta1=0.8",
                "lr=0.002",
            ],
        ),
        lanes_of(
            "adadelta({})",
            &[
                "lr=1.0",
                "lr=0.5, rho=0.5",
                "lr=1.0, eps=1e-4, weight_decay=0.1",
            ],
        ),
        lanes_of(
            "adamax({})",
            &[
                "lr=0.002",
                "lr=0.01, beta1=0.5, beta2=0.9",
                "lr=0.002, eps=1e-3, weight_decay=0.1",
            ],
        ),
        lanes_of(
            "nadam({})",
            &[
                "lr=0.002",
                "lr=0.01, beta1=0.5, momentum_decay=0.01",
                "lr=0.002, weight_decay=0.1, beta2=0.9",
                "lr=0.005, eps=1e-4",
            ],
        ),
        lanes_of(
            "nadam(decoupled_weight_decay=true, {})",
            &[
                "lr=0.002, weight_decay=0.1",
                "lr=0.01",
                "lr=0.002, weight_decay=0.3",
            ],
        ),
        // beta2 = 0.5 never makes the adaptive step tractable, 0.9 from step 7, 0.999 from
        // step 6: the lanes take different branches.
        lanes_of(
            "radam({})",
            &[
                "lr=0.01",
                "lr=0.02, beta2=0.9",
                "lr=0.01, beta2=0.5, weight_decay=0.1",
                "lr=0.005, eps=1e-4, beta1=0.5",
            ],
        ),
        lanes_of(
            "radam(decoupled_weight_decay=true, {})",
            &["lr=0.01, weight_decay=0.1", "lr=0.02, beta2=0.9", "lr=0.01"],
        ),
        lanes_of(
            "rprop({})",
            &[
                "lr=0.01",
                "lr=0.02, etaminus=0.3, etaplus=1.5",
                "lr=0.01, step_size_min=0.001, step_size_max=0.05",
                "lr=0.001, etaplus=1.1",
                "lr=0.01, step_size_max=0.02",
                "lr=0.005",
                "lr=0.01, etaminus=0.7",
                "lr=0.02, step_size_min=0.005",
            ],
        ),
    ]
}

#[test]
fn lanes_step_exactly_as_their_runs_alone() {
    for (i, specs) in cases().iter().enumerate() {
        for dtype in [DType::F64, DType::F32] {
            let mut race = Race::new(specs, dtype, 100 + i as u64);
            race.run(
                100,
                &format!("{} lanes of {} in {dtype:?}", specs.len(), specs[0].name()),
            );
        }
    }
}

#[test]
fn half_precision_lanes_step_exactly_as_their_runs_alone() {
    // Not Adam: in f16/bf16 it steps op by op as torch (and refuses lanes).
    for (i, specs) in cases().iter().enumerate() {
        if matches!(specs[0], OptimizerSpec::Adam(_) | OptimizerSpec::AdamW(_)) {
            continue;
        }
        for dtype in [DType::BF16, DType::F16] {
            let mut race = Race::new(specs, dtype, 200 + i as u64);
            race.run(30, &format!("{} in {dtype:?}", specs[0].name()));
        }
    }
}

#[test]
fn a_lane_that_leaves_continues_exactly_as_its_run_alone() {
    for (i, specs) in cases().iter().enumerate() {
        let mut race = Race::new(specs, DType::F64, 300 + i as u64);
        race.run(40, "together");
        for r in [0, specs.len() - 1] {
            let (_, alone) = &race.alone[r];
            let mut state = race.lanes.lane(r).unwrap();
            assert_eq!(state.updates, 40);
            let mut params: Vec<Tensor> = race.batch.iter().map(|p| p.get(r).unwrap()).collect();
            let mut reference = race.alone[r].0.clone();
            let mut theirs = alone.clone();
            let mut noise = Noise(400 + r as u64);
            for k in 41..=100 {
                let grads = noise.tensors(DType::F64, 3.0);
                let lr = lr_at(specs[r].lr(), r, k);
                params = step_alone(&mut state, &params, &grads, lr);
                theirs = step_alone(&mut reference, &theirs, &grads, lr);
                for (a, b) in params.iter().zip(&theirs) {
                    assert_eq!(
                        bits(a),
                        bits(b),
                        "{}: lane {r} alone, step {k}",
                        specs[0].name()
                    );
                }
            }
        }
    }
}

#[test]
fn selected_lanes_continue_exactly_as_their_runs() {
    for (i, specs) in cases().iter().enumerate() {
        let mut race = Race::new(specs, DType::F64, 500 + i as u64);
        race.run(30, "all lanes");
        // The last, the first and one between, in that order.
        let keep = [specs.len() - 1, 0, 1];
        let ids = Tensor::new(&[keep[0] as u32, 0, 1], &Device::Cpu).unwrap();
        race.lanes = race.lanes.select(&keep).unwrap();
        assert_eq!(race.lanes.lanes(), 3);
        race.batch = race
            .batch
            .iter()
            .map(|p| p.index_select(&ids, 0).unwrap())
            .collect();
        race.alone = keep.iter().map(|&r| race.alone[r].clone()).collect();
        race.lrs = keep.iter().map(|&r| race.lrs[r]).collect();
        race.run(30, &format!("{} lanes {keep:?}", specs[0].name()));
    }
}

#[test]
fn a_zero_step_still_makes_new_params() {
    let specs = lanes_of("sgd(lr={})", &["0.1", "0.2", "0.3"]);
    let params = stack(&[
        Noise(1).tensors(DType::F64, 1.0),
        Noise(2).tensors(DType::F64, 1.0),
        Noise(3).tensors(DType::F64, 1.0),
    ]);
    let mut lanes = LaneState::new(&specs, &params).unwrap();
    let grads: Vec<Tensor> = params.iter().map(|p| p.ones_like().unwrap()).collect();
    let new = lanes.step(&params, &grads, &[0.0; 3]).unwrap();
    for (n, p) in new.iter().zip(&params) {
        assert_ne!(n.id(), p.id());
        assert_eq!(bits(n), bits(p));
    }
}

#[test]
fn lanes_refuse_what_one_program_cannot_step() {
    let params = stack(&[
        Noise(1).tensors(DType::F64, 1.0),
        Noise(2).tensors(DType::F64, 1.0),
    ]);
    let refused: &[(&str, &[&str])] = &[
        ("different optimizers", &["adam", "sgd"]),
        ("Adam and AdamW", &["adam", "adamw"]),
        ("amsgrad on and off", &["adam(amsgrad=true)", "adam"]),
        ("momentum on and off", &["sgd(momentum=0.9)", "sgd"]),
        (
            "nesterov on and off",
            &["sgd(momentum=0.9, nesterov=true)", "sgd(momentum=0.9)"],
        ),
        (
            "centered on and off",
            &["rmsprop(centered=true)", "rmsprop"],
        ),
        (
            "rmsprop momentum on and off",
            &["rmsprop(momentum=0.5)", "rmsprop"],
        ),
        (
            "decoupled decay on and off",
            &["nadam(decoupled_weight_decay=true)", "nadam"],
        ),
        ("not elementwise", &["lbfgs", "lbfgs"]),
        ("whole-model eval params", &["asgd", "asgd"]),
        ("per-tensor norms", &["lamb", "lamb"]),
        ("matrices", &["muon", "muon"]),
        (
            "schedule-free",
            &["schedulefree_adamw", "schedulefree_adamw"],
        ),
        ("a step size of the whole model", &["prodigy", "prodigy"]),
    ];
    for (why, specs) in refused {
        let specs: Vec<OptimizerSpec> = specs
            .iter()
            .map(|s| OptimizerSpec::parse(s).unwrap())
            .collect();
        assert!(LaneState::new(&specs, &params).is_none(), "{why}");
    }
    let two = lanes_of("adam(lr={})", &["0.1", "0.2"]);
    assert!(LaneState::new(&two, &params).is_some());
    let three = lanes_of("adam(lr={})", &["0.1", "0.2", "0.3"]);
    assert!(LaneState::new(&three, &params).is_none(), "3 lanes of 2");
    assert!(LaneState::new(&[], &params).is_none(), "no lanes");
    let half: Vec<Tensor> = params
        .iter()
        .map(|p| p.to_dtype(DType::BF16).unwrap())
        .collect();
    assert!(LaneState::new(&two, &half).is_none(), "Adam in bf16");
    let sgd = lanes_of("sgd(lr={})", &["0.1", "0.2"]);
    assert!(LaneState::new(&sgd, &half).is_some(), "SGD in bf16");
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let specs = lanes_of("adam(lr={})", &["0.1", "0.2"]);
    let params = stack(&[
        Noise(1).tensors(DType::F64, 1.0),
        Noise(2).tensors(DType::F64, 1.0),
    ]);
    let mut lanes = LaneState::new(&specs, &params).unwrap();
    assert!(
        lanes.step(&params, &params, &[0.1]).is_err(),
        "one lr for two lanes"
    );
    assert!(
        lanes.step(&params[..2], &params[..2], &[0.1, 0.2]).is_err(),
        "a param short"
    );
    assert_eq!(lanes.updates(), 0);
    assert!(lanes.lane(2).is_err());
    assert!(lanes.select(&[]).is_err());
    assert!(lanes.select(&[0, 2]).is_err());
}
