//! NumPy and safetensors files both ways. In: every dtype of the fixtures NumPy and safetensors
//! wrote (tests/data/arrays/make_fixtures.py), as loss-file data and params. Out: the params
//! files, byte for byte as safetensors' own writer and as the files NumPy and safetensors were
//! checked to read back exactly, and round trips through gradscope's reader and a loss file.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gradscope::compile::arrays::{ArrayError, read};
use gradscope::compile::{CompiledFile, compile};
use gradscope::lang::file::{ArrayFormat, load_bytes};
use gradscope::run::save::{self, ParamsFormat, SaveError};
use gradscope::run::summary::drive;
use gradscope::run::{Run, RunRequest};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/arrays");

/// The 2x3 tables make_fixtures.py writes in every dtype.
const FLOATS: [f64; 6] = [0.5, -1.5, 2.25, 1e-3, -7.0, 1024.0];
const SIGNED: [f64; 6] = [0.0, 1.0, -2.0, 3.0, -4.0, 5.0];
const UNSIGNED: [f64; 6] = [0.0, 1.0, 2.0, 3.0, 4.0, 250.0];

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn format_of(name: &str) -> ArrayFormat {
    match name.rsplit('.').next() {
        Some("npy") => ArrayFormat::Npy,
        Some("npz") => ArrayFormat::Npz,
        _ => ArrayFormat::Safetensors,
    }
}

fn read_fixture(name: &str, key: Option<&str>) -> Result<Tensor, ArrayError> {
    read(format_of(name), &fixture(name), key, name)
}

fn dims_and_values(t: &Tensor) -> (Vec<usize>, Vec<f64>) {
    assert_eq!(t.dtype(), DType::F64, "arrays are read as f64");
    (
        t.dims().to_vec(),
        t.flatten_all().unwrap().to_vec1().unwrap(),
    )
}

fn rounded<T>(values: &[f64], round: impl Fn(f64) -> T, back: impl Fn(T) -> f64) -> Vec<f64> {
    values.iter().map(|&v| back(round(v))).collect()
}

/// A scratch directory of this test binary's own.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("arrays-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// In
// ---------------------------------------------------------------------------------------------

#[test]
fn every_float_int_and_bool_dtype_reads_as_its_values() {
    let f32s = rounded(&FLOATS, |v| v as f32, f64::from);
    let f16s = rounded(&FLOATS, half::f16::from_f64, half::f16::to_f64);
    // bf16 written by truncation (make_fixtures.py): 1e-3 loses its low mantissa bits.
    let bf16s = rounded(
        &FLOATS,
        |v| (v as f32).to_bits() >> 16 << 16,
        |b| f64::from(f32::from_bits(b)),
    );
    let mask = vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
    let cases: Vec<(&str, Option<&str>, Vec<f64>)> = vec![
        // candle's reader: C order, little-endian, its dtypes.
        ("float64.npy", None, FLOATS.to_vec()),
        ("float32.npy", None, f32s.clone()),
        ("float16.npy", None, f16s.clone()),
        ("int64.npy", None, SIGNED.to_vec()),
        ("int32.npy", None, SIGNED.to_vec()),
        ("int16.npy", None, SIGNED.to_vec()),
        ("uint8.npy", None, UNSIGNED.to_vec()),
        ("uint32.npy", None, UNSIGNED.to_vec()),
        ("bool.npy", None, mask.clone()),
        // Decoded here: what candle refuses.
        ("int8.npy", None, SIGNED.to_vec()),
        ("uint16.npy", None, UNSIGNED.to_vec()),
        ("uint64.npy", None, UNSIGNED.to_vec()),
        ("fortran.npy", None, FLOATS.to_vec()),
        ("big_endian.npy", None, FLOATS.to_vec()),
        ("big_endian_i4.npy", None, SIGNED.to_vec()),
        // npz: stored and deflated, by key, the only array without one, and a readable array
        // beside one that is not.
        ("arrays.npz", Some("x"), FLOATS.to_vec()),
        ("arrays.npz", Some("labels"), SIGNED.to_vec()),
        ("compressed.npz", Some("x"), FLOATS.to_vec()),
        ("compressed.npz", Some("i8"), SIGNED.to_vec()),
        ("single.npz", None, FLOATS.to_vec()),
        ("mixed.npz", Some("x"), FLOATS.to_vec()),
        // safetensors: candle's loader, then I8, U64 and BOOL decoded here.
        ("model.safetensors", Some("fc1.weight"), f32s.clone()),
        ("model.safetensors", Some("embed"), f16s),
        ("model.safetensors", Some("f64"), FLOATS.to_vec()),
        ("model.safetensors", Some("i64"), SIGNED.to_vec()),
        ("model.safetensors", Some("u16"), UNSIGNED.to_vec()),
        ("model.safetensors", Some("i8"), SIGNED.to_vec()),
        ("model.safetensors", Some("u64"), UNSIGNED.to_vec()),
        ("model.safetensors", Some("mask"), mask),
        ("bf16.safetensors", None, bf16s),
    ];
    for (file, key, want) in cases {
        let t = read_fixture(file, key).unwrap_or_else(|e| panic!("{file} {key:?}: {e}"));
        assert_eq!(dims_and_values(&t), (vec![2, 3], want), "{file} {key:?}");
    }
}

#[test]
fn scalars_vectors_and_fortran_order_keep_their_shapes() {
    // (file, key, dims, values)
    type Case = (&'static str, Option<&'static str>, Vec<usize>, Vec<f64>);
    let cases: Vec<Case> = vec![
        ("scalar.npy", None, vec![], vec![2.5]),
        ("labels.npy", None, vec![4], vec![2.0, 0.0, 1.0, 1.0]),
        ("arrays.npz", Some("b"), vec![], vec![0.25]),
        ("model.safetensors", Some("scalar"), vec![], vec![2.5]),
        (
            "model.safetensors",
            Some("fc1.bias"),
            vec![3],
            vec![0.5, -0.25, 1.0],
        ),
        // F8_E4M3 (written by hand): 0x38 is 1, 0xC0 is -2.
        ("f8.safetensors", None, vec![2], vec![1.0, -2.0]),
        // arange(24).reshape(2, 3, 4) stored column by column reads back in row-major order.
        (
            "fortran3.npy",
            None,
            vec![2, 3, 4],
            (0..24).map(f64::from).collect(),
        ),
    ];
    for (file, key, dims, values) in cases {
        let t = read_fixture(file, key).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(dims_and_values(&t), (dims, values), "{file} {key:?}");
    }
}

#[test]
fn what_is_not_plain_numbers_is_refused_by_name() {
    let cases = [
        ("complex.npy", None, "complex128"),
        ("strings.npy", None, "string (`<U2`)"),
        ("records.npy", None, "structured (record)"),
        ("longdouble.npy", None, "float128 (long double)"),
        ("mixed.npz", Some("z"), "complex64"),
    ];
    for (file, key, dtype) in cases {
        let e = read_fixture(file, key).expect_err(file);
        assert_eq!(
            e,
            ArrayError::Dtype {
                file: file.into(),
                key: key.map(str::to_string),
                dtype: dtype.into()
            }
        );
        assert!(e.to_string().contains("which gradscope cannot read"), "{e}");
        assert!(e.help().unwrap().contains("float, int, uint and bool"));
    }
    let complex = read_fixture("complex.npy", None).unwrap_err();
    assert!(complex.help().unwrap().contains("x.real, x.imag"));
}

#[test]
fn keys_are_checked_and_listed() {
    let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        read_fixture("arrays.npz", Some("lables")).unwrap_err(),
        ArrayError::NoKey {
            file: "arrays.npz".into(),
            key: "lables".into(),
            keys: keys(&["x", "labels", "b"]),
        }
    );
    let need = read_fixture("arrays.npz", None).unwrap_err();
    assert_eq!(
        need.to_string(),
        "`arrays.npz` holds 3 arrays: name the one to read with `key`"
    );
    assert_eq!(need.help().unwrap(), "it holds: `x`, `labels`, `b`");
    // An npz of no arrays says so, without asking for a key to pick one.
    let empty = ArrayError::NeedKey {
        file: "empty.npz".into(),
        keys: Vec::new(),
    };
    assert_eq!(empty.to_string(), "`empty.npz` holds no arrays");
    assert!(empty.help().unwrap().contains("np.savez"));
    // safetensors keys are listed sorted.
    let Err(ArrayError::NoKey { keys: found, .. }) =
        read_fixture("model.safetensors", Some("fc2.weight"))
    else {
        panic!("expected a missing key");
    };
    assert_eq!(
        found,
        keys(&[
            "embed",
            "f64",
            "fc1.bias",
            "fc1.weight",
            "i64",
            "i8",
            "mask",
            "scalar",
            "u16",
            "u64"
        ])
    );
}

#[test]
fn a_file_of_another_format_says_which_it_looks_like() {
    let cases = [
        ("arrays.npz", ArrayFormat::Npy, Some(ArrayFormat::Npz)),
        (
            "model.safetensors",
            ArrayFormat::Npz,
            Some(ArrayFormat::Safetensors),
        ),
        (
            "float64.npy",
            ArrayFormat::Safetensors,
            Some(ArrayFormat::Npy),
        ),
        ("make_fixtures.py", ArrayFormat::Npy, None),
    ];
    for (file, format, like) in cases {
        match read(format, &fixture(file), None, file) {
            Err(ArrayError::Invalid { looks_like, .. }) => assert_eq!(looks_like, like, "{file}"),
            other => panic!("{file}: {other:?}"),
        }
    }
    let e = read(ArrayFormat::Npy, &fixture("arrays.npz"), None, "arrays.npz").unwrap_err();
    assert_eq!(
        e.help().unwrap(),
        "it looks like a .npz file: read it with npz = \"...\""
    );
}

#[test]
fn missing_cut_and_oversized_files_are_errors_not_panics() {
    let dir = scratch("broken");
    let io = read(ArrayFormat::Npy, &dir.join("nope.npy"), None, "nope.npy").unwrap_err();
    assert!(matches!(io, ArrayError::Io { .. }), "{io:?}");
    let folder = read(ArrayFormat::Safetensors, &dir, None, "dir").unwrap_err();
    assert_eq!(folder.to_string(), "cannot read `dir`: it is a directory");
    // Each file cut 5 bytes short (of the array read: the last), and inside its header.
    for (file, key) in [
        ("float64.npy", None),
        ("int8.npy", None),
        ("bf16.safetensors", None),
        ("arrays.npz", Some("b")),
    ] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        for cut in [bytes.len() - 5, 12] {
            let path = dir.join(format!("cut-{cut}-{file}"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let e = read(format_of(file), &path, key, file).unwrap_err();
            assert!(
                matches!(e, ArrayError::Invalid { .. }),
                "{file} cut at {cut}: {e:?}"
            );
        }
    }
    // A header promising 10^10 values: refused before anything is allocated.
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    let huge = dir.join("huge.npy");
    std::fs::write(&huge, &npy).unwrap();
    assert_eq!(
        read(ArrayFormat::Npy, &huge, None, "huge.npy").unwrap_err(),
        ArrayError::TooLarge {
            file: "huge.npy".into(),
            key: None,
            elements: "100000 x 100000".into()
        }
    );
    // One promising 10^6 values with none there.
    let header = header.replace("100000, 100000", "1000, 1000");
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    std::fs::write(&huge, &npy).unwrap();
    let e = read(ArrayFormat::Npy, &huge, None, "huge.npy").unwrap_err();
    assert!(
        e.to_string().contains("fewer than the 1000000 values"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Through a loss file
// ---------------------------------------------------------------------------------------------

fn compiled_in(dir: &Path, text: &str) -> CompiledFile {
    let loaded = load_bytes(&dir.join("t.toml"), text.as_bytes().to_vec());
    let file = loaded
        .file
        .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
    let (c, d) = compile(file);
    c.unwrap_or_else(|| panic!("{d:?}"))
}

#[test]
fn data_and_params_come_from_files_relative_to_the_loss_file() {
    let dir = Path::new(FIXTURES);
    let c = compiled_in(
        dir,
        r#"
name = "from files"
loss = "mean((X @ w + b - y[:, 0])^2) + sum(m) * 0"
[data]
X = { npy = "float32.npy" }
y = { npz = "compressed.npz", key = "i8" }
m = { safetensors = "model.safetensors", key = "mask" }
[params]
w = { safetensors = "model.safetensors", key = "fc1.bias" }
b = { npz = "arrays.npz", key = "b" }
"#,
    );
    let data: Vec<(&str, Vec<usize>)> = c
        .data
        .iter()
        .map(|d| (d.name.as_str(), d.value.dims().to_vec()))
        .collect();
    assert_eq!(
        data,
        [("X", vec![2, 3]), ("y", vec![2, 3]), ("m", vec![2, 3])]
    );
    assert_eq!(
        c.params[0].value.to_vec1::<f64>().unwrap(),
        [0.5, -0.25, 1.0]
    );
    assert_eq!(c.params[1].value.to_scalar::<f64>().unwrap(), 0.25);
    assert_eq!(c.data[0].origin.as_deref(), Some("read from float32.npy"));
    assert_eq!(
        c.params[0].origin.as_deref(),
        Some("read from model.safetensors, key `fc1.bias`")
    );
    // The run's dtype is f32 (the default): the f64 values convert as any data does.
    let run = Run::new(&c, RunRequest::of(&c, 0).unwrap()).unwrap();
    assert_eq!(run.params()[0].dtype(), DType::F32);
    // The loss file lists every file it reads, once, for hot reload.
    let reads = c.file.reads();
    let names: Vec<&str> = reads
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "arrays.npz",
            "compressed.npz",
            "float32.npy",
            "model.safetensors"
        ]
    );
}

#[test]
fn entries_computed_from_a_file_name_it_in_shape_reports() {
    let dir = Path::new(FIXTURES);
    let text = r#"
name = "mismatch"
loss = "mean((X @ w - y)^2)"
[data]
X = { npy = "float64.npy" }
y = "X[:, 0]"
[params]
w = "zeros(2)"
"#;
    let message = |text: &str| {
        let loaded = load_bytes(&dir.join("t.toml"), text.as_bytes().to_vec());
        let (c, d) = compile(loaded.file.unwrap());
        assert!(c.is_none());
        assert_eq!(d.len(), 1, "{d:?}");
        d[0].message.clone()
    };
    assert_eq!(
        message(text),
        "shape mismatch: `@` cannot multiply [2, 3] by [2] (`X` [2, 3] is read from float64.npy)"
    );
    assert_eq!(
        message(
            &text
                .replace("(X @ w - y)", "(y - w)")
                .replace("zeros(2)", "zeros(3)")
        ),
        "shape mismatch: `-` cannot broadcast [2] with [3] (`y` [2] is computed from float64.npy)"
    );
}

// ---------------------------------------------------------------------------------------------
// Out
// ---------------------------------------------------------------------------------------------

/// What make_fixtures.py's `written_values()` holds, as gradscope names a single run's params.
fn written_values() -> Vec<(String, Tensor)> {
    let cpu = &Device::Cpu;
    let w: Vec<f32> = (0..6).map(|k| k as f32 * 0.25 - 0.5).collect();
    let w = Tensor::from_vec(w, (2, 3), cpu).unwrap();
    vec![
        ("w".into(), w.clone()),
        ("w.best".into(), (&w * 2.0).unwrap()),
        ("b".into(), Tensor::new(0.125f32, cpu).unwrap()),
        ("b.best".into(), Tensor::new(-3.0f32, cpu).unwrap()),
        (
            "h".into(),
            Tensor::new(&[1.5f64, -2.0, 65504.0], cpu)
                .and_then(|t| t.to_dtype(DType::F16))
                .unwrap(),
        ),
        (
            "d".into(),
            Tensor::new(&[1e-300, std::f64::consts::PI], cpu).unwrap(),
        ),
    ]
}

#[test]
fn safetensors_out_is_byte_for_byte_what_safetensors_writes() {
    let dir = scratch("write-safetensors");
    let path = dir.join("params.safetensors");
    save::write(&path, ParamsFormat::Safetensors, &written_values()).unwrap();
    let ours = std::fs::read(&path).unwrap();
    // expected.safetensors: safetensors' save_file on the same values.
    assert!(ours == std::fs::read(fixture("expected.safetensors")).unwrap());
    // written.safetensors: this output, which make_fixtures.py --check read back with numpy
    // and safetensors and found exact.
    assert!(ours == std::fs::read(fixture("written.safetensors")).unwrap());
}

#[test]
fn npz_out_is_the_file_numpy_read_back_exactly() {
    let dir = scratch("write-npz");
    let path = dir.join("params.npz");
    save::write(&path, ParamsFormat::Npz, &written_values()).unwrap();
    // written.npz: this output, which make_fixtures.py --check read back with numpy exactly.
    assert!(std::fs::read(&path).unwrap() == std::fs::read(fixture("written.npz")).unwrap());
}

#[test]
fn written_files_read_back_to_the_same_bits() {
    let dir = scratch("round-trip");
    let mut values = written_values();
    values.push((
        "bf".into(),
        Tensor::new(&[0.1f32, -3.0], &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::BF16))
            .unwrap(),
    ));
    for (format, name) in [
        (ParamsFormat::Safetensors, "p.safetensors"),
        (ParamsFormat::Npz, "p.npz"),
    ] {
        let path = dir.join(name);
        save::write(&path, format, &values).unwrap();
        for (key, t) in &values {
            let back = read(format_of(name), &path, Some(key), name).unwrap();
            let want = t.to_dtype(DType::F64).unwrap();
            assert_eq!(
                dims_and_values(&back),
                dims_and_values(&want),
                "{name} {key}"
            );
        }
    }
    // NumPy has no bfloat16: in .npz it is float32 (exactly); safetensors keeps BF16.
    let npz = Tensor::read_npz(dir.join("p.npz")).unwrap();
    let bf = npz.iter().find(|(k, _)| k == "bf").unwrap();
    assert_eq!(bf.1.dtype(), DType::F32);
    let st = candle_core::safetensors::load(dir.join("p.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(st["bf"].dtype(), DType::BF16);
    assert_eq!(st["h"].dtype(), DType::F16);
}

/// SGD with heavy momentum on Rosenbrock from (-1.5, 2), in f64, overshoots: its loss falls to
/// its lowest at step 42 and climbs again, so the best params are neither the first nor the last.
const OVERSHOOT: &str = r#"
name = "overshoot"
dtype = "f64"
loss = "(1 - x)^2 + 100 * (y - x^2)^2"
[params]
x = -1.5
y = 2.0
[optimizer]
name = "sgd"
lr = 1e-3
steps = 60
[[variants]]
name = "momentum"
optimizer = { name = "sgd", lr = 1.5e-3, momentum = 0.95 }
"#;

fn stepped(c: &CompiledFile, def: usize, steps: Option<u64>) -> Run {
    let mut request = RunRequest::of(c, def).unwrap();
    if let Some(n) = steps {
        request.settings.steps = n;
    }
    let mut run = Run::new(c, request).unwrap();
    drive(&mut run, |_, _| std::ops::ControlFlow::Continue(())).unwrap();
    run
}

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn best_is_the_params_of_the_best_loss_as_re_stepping_finds_them() {
    let c = compiled_in(&scratch("best"), OVERSHOOT);
    let run = stepped(&c, 1, None);
    let best = run.best().expect("a finite loss");
    let summary_best = run.history().with_current(*run.totals()).best.unwrap();
    assert_eq!(
        (best.step, best.loss),
        summary_best,
        "as the summary counts it"
    );
    assert_eq!((best.step, run.step_count()), (42, 60));
    // A fresh run stepped to the best step is there, bit for bit.
    let again = stepped(&c, 1, Some(best.step));
    for (kept, var) in best.params.iter().zip(again.params()) {
        assert_eq!(bits(kept), bits(var.as_tensor()));
    }
}

#[test]
fn rewinding_forgets_only_the_later_bests() {
    let c = compiled_in(&scratch("best-rewind"), OVERSHOOT);
    let mut run = stepped(&c, 1, None);
    assert_eq!(run.best().unwrap().step, 42);
    run.rewind_to(30).unwrap();
    let fresh = stepped(&c, 1, Some(30));
    let (a, b) = (run.best().unwrap(), fresh.best().unwrap());
    assert_eq!((a.step, a.loss), (b.step, b.loss));
    assert!(a.step <= 30);
    for (x, y) in a.params.iter().zip(&b.params) {
        assert_eq!(bits(x), bits(y));
    }
    // Stepping on to the end finds step 42 again.
    while run.step_count() < 60 {
        run.step().unwrap();
    }
    assert_eq!(run.best().unwrap().step, 42);
}

fn keys_of(path: &Path) -> Vec<String> {
    let mut keys: Vec<String> = candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_keys()
        .collect();
    keys.sort();
    keys
}

#[test]
fn one_run_saves_its_param_names_several_prefix_the_run() {
    let dir = scratch("save-runs");
    let c = compiled_in(&dir, OVERSHOOT);
    let (base, momentum) = (stepped(&c, 0, None), stepped(&c, 1, None));
    let one = dir.join("one.safetensors");
    save::save_runs(&one, &[&base]).unwrap();
    assert_eq!(keys_of(&one), ["x", "x.best", "y", "y.best"]);
    let saved = candle_core::safetensors::load(&one, &Device::Cpu).unwrap();
    for (name, var) in base.param_names().iter().zip(base.params()) {
        assert_eq!(bits(&saved[name.as_str()]), bits(var.as_tensor()), "{name}");
    }
    let both = dir.join("both.npz");
    save::save_runs(&both, &[&base, &momentum]).unwrap();
    let mut keys: Vec<String> = Tensor::read_npz(&both)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "base.x",
            "base.x.best",
            "base.y",
            "base.y.best",
            "momentum.x",
            "momentum.x.best",
            "momentum.y",
            "momentum.y.best"
        ]
    );
}

#[test]
fn a_directory_gets_one_file_per_run_named_after_it() {
    let dir = scratch("save-dir");
    let c = compiled_in(
        &dir,
        &OVERSHOOT.replace("\"momentum\"", "\"sgd, momentum 0.9\""),
    );
    let runs = [
        stepped(&c, 0, None),
        stepped(&c, 1, None),
        stepped(&c, 0, None),
    ];
    let target = dir.join("out/");
    let written = save::save_runs(&target, &runs.iter().collect::<Vec<_>>()).unwrap();
    let names: Vec<&str> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "base.safetensors",
            "sgd_momentum_0.9.safetensors",
            "base-2.safetensors"
        ]
    );
    assert_eq!(keys_of(&written[1]), ["x", "x.best", "y", "y.best"]);
}

#[test]
fn eval_params_are_saved_beside_the_params() {
    let dir = scratch("save-eval");
    let text = OVERSHOOT.replace(
        "optimizer = { name = \"sgd\", lr = 1.5e-3, momentum = 0.95 }",
        "optimizer = { name = \"schedulefree_sgd\", lr = 1e-3 }",
    );
    let c = compiled_in(&dir, &text);
    let run = stepped(&c, 1, None);
    let path = dir.join("eval.safetensors");
    save::save_runs(&path, &[&run]).unwrap();
    assert_eq!(
        keys_of(&path),
        ["x", "x.best", "x.eval", "y", "y.best", "y.eval"]
    );
    let saved = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let eval = run.eval_param_values().unwrap();
    assert_eq!(saved["x.eval"].to_scalar::<f64>().unwrap(), eval[0][0]);
    assert_ne!(eval[0][0], run.param_values()[0][0], "x is not y");
}

#[test]
fn targets_and_keys_that_cannot_be_saved_are_errors() {
    let dir = scratch("save-errors");
    assert!(matches!(
        save::check_target(&dir.join("params.txt")),
        Err(SaveError::Format(_))
    ));
    save::check_target(&dir.join("params.npz")).unwrap();
    save::check_target(&dir.join("new/")).unwrap();
    // A run `base.x` with a param `best` and the run `base` with `x`: both `base.x.best`.
    let text = r#"
name = "clash"
dtype = "f64"
loss = "x^2 + best^2"
[params]
x = 1.0
best = 2.0
[[variants]]
name = "base.x"
"#;
    let c = compiled_in(&dir, text);
    let runs = [stepped(&c, 0, Some(2)), stepped(&c, 1, Some(2))];
    let e = save::save_runs(
        &dir.join("clash.safetensors"),
        &runs.iter().collect::<Vec<_>>(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "two params would both be saved as `base.x.best`: rename a run or a param"
    );
}

#[test]
fn a_saved_file_starts_the_next_loss_bit_for_bit() {
    let dir = scratch("resume");
    let c = compiled_in(
        &dir,
        &OVERSHOOT.replace("dtype = \"f64\"", "dtype = \"f32\""),
    );
    let run = stepped(&c, 0, None);
    save::save_runs(&dir.join("fit.safetensors"), &[&run]).unwrap();
    save::save_runs(&dir.join("fit.npz"), &[&run]).unwrap();
    for (format, file) in [("safetensors", "fit.safetensors"), ("npz", "fit.npz")] {
        let text = OVERSHOOT
            .replace("dtype = \"f64\"", "dtype = \"f32\"")
            .replace(
                "x = -1.5\ny = 2.0",
                &format!(
                    "x = {{ {format} = \"{file}\", key = \"x\" }}\ny = {{ {format} = \"{file}\", key = \"y.best\" }}"
                ),
            );
        let resumed = compiled_in(&dir, &text);
        let next = Run::new(&resumed, RunRequest::of(&resumed, 0).unwrap()).unwrap();
        assert_eq!(
            bits(next.params()[0].as_tensor()),
            bits(run.params()[0].as_tensor())
        );
        assert_eq!(
            bits(next.params()[1].as_tensor()),
            bits(&run.best().unwrap().params[1])
        );
    }
}

#[test]
fn run_save_params_writes_the_file_and_refuses_a_bad_target_before_running() {
    let dir = scratch("cli");
    let loss = dir.join("t.toml");
    std::fs::write(&loss, OVERSHOOT).unwrap();
    let out = dir.join("fit.npz");
    let o = common::gradscope(&[
        "run",
        loss.to_str().unwrap(),
        "--variant",
        "all",
        "--save-params",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("saved the params to {}", out.display())),
        "{stderr}"
    );
    assert_eq!(Tensor::read_npz(&out).unwrap().len(), 8);
    let o = common::gradscope(&[
        "run",
        loss.to_str().unwrap(),
        "--save-params",
        dir.join("fit.txt").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "nothing ran");
    assert!(String::from_utf8_lossy(&o.stderr).contains("name a .safetensors or .npz file"));
}
