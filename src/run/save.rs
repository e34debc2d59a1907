//! Trained params out, as safetensors or NumPy `.npz`, named as the loss file names them:
//! `<param>` (a single run) or `<run>.<param>` (several), with `<param>.best` (the params at the
//! best loss, see [`super::Best`]) and, for optimizers with evaluation params (schedule-free's
//! x, ASGD's average), `<param>.eval`. Each tensor is in its run's dtype, except bf16 in `.npz`:
//! NumPy has no bfloat16, so those are widened to float32 (exactly).

use std::path::{Path, PathBuf};

use candle_core::{DType as CDType, Device, Tensor};

use super::Run;

/// A file format params can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamsFormat {
    Safetensors,
    Npz,
}

impl ParamsFormat {
    /// The format a file's extension names (`.safetensors` or `.npz`).
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "safetensors" => Some(ParamsFormat::Safetensors),
            "npz" => Some(ParamsFormat::Npz),
            _ => None,
        }
    }
}

/// Why params could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The target is neither a `.safetensors` nor an `.npz` file, nor a directory.
    #[error(
        "cannot save params to `{0}`: name a .safetensors or .npz file, or a directory ending in `/` (one .safetensors file per run)"
    )]
    Format(String),
    /// Two entries would have the same key (a run and a param whose names meet at a dot).
    #[error("two params would both be saved as `{0}`: rename a run or a param")]
    DuplicateKey(String),
    /// The file could not be written.
    #[error("cannot write `{path}`: {why}")]
    Write { path: String, why: String },
    /// A tensor could not be read out of the run.
    #[error("cannot save the params of run `{run}`: {why}")]
    Tensor { run: String, why: String },
}

/// The entries of `run`: each param, then each param's `.best`, then `.eval` when the optimizer
/// has evaluation params; every key after `prefix.` when a prefix is given.
pub fn run_entries(run: &Run, prefix: Option<&str>) -> Result<Vec<(String, Tensor)>, SaveError> {
    let failed = |e: candle_core::Error| SaveError::Tensor {
        run: run.name.clone(),
        why: e.to_string(),
    };
    let key = |name: &str, suffix: &str| match prefix {
        Some(p) => format!("{p}.{name}{suffix}"),
        None => format!("{name}{suffix}"),
    };
    let names = run.param_names();
    let mut out = Vec::new();
    for (name, var) in names.iter().zip(run.params()) {
        out.push((key(name, ""), var.as_tensor().copy().map_err(failed)?));
    }
    if let Some(best) = run.best() {
        for (name, t) in names.iter().zip(&best.params) {
            out.push((key(name, ".best"), t.clone()));
        }
    }
    if let Some(eval) = run.eval_param_values() {
        for ((name, values), var) in names.iter().zip(eval).zip(run.params()) {
            let t = Tensor::from_vec(values, var.dims(), &Device::Cpu)
                .and_then(|t| t.to_dtype(var.dtype()))
                .map_err(failed)?;
            out.push((key(name, ".eval"), t));
        }
    }
    Ok(out)
}

/// Writes `entries` to `path` in `format`.
pub fn write(
    path: &Path,
    format: ParamsFormat,
    entries: &[(String, Tensor)],
) -> Result<(), SaveError> {
    let failed = |e: candle_core::Error| SaveError::Write {
        path: path.display().to_string(),
        why: match e {
            candle_core::Error::Io(io) => io.to_string(),
            candle_core::Error::SafeTensor(st) => st.to_string(),
            e => e.to_string(),
        },
    };
    let mut seen = std::collections::HashSet::new();
    if let Some((k, _)) = entries.iter().find(|(k, _)| !seen.insert(k)) {
        return Err(SaveError::DuplicateKey(k.clone()));
    }
    match format {
        ParamsFormat::Safetensors => {
            let map: std::collections::HashMap<&str, Tensor> = entries
                .iter()
                .map(|(k, t)| (k.as_str(), t.clone()))
                .collect();
            // Written as any other file is (safetensors' own writer makes it readable by its
            // owner alone).
            let bytes = safetensors::serialize(&map, None)
                .map_err(|e| failed(candle_core::Error::Msg(e.to_string())))?;
            std::fs::write(path, bytes).map_err(|e| failed(e.into()))
        }
        ParamsFormat::Npz => {
            let widened = entries
                .iter()
                .map(|(k, t)| match t.dtype() {
                    CDType::BF16 => t.to_dtype(CDType::F32).map(|t| (k.as_str(), t)),
                    _ => Ok((k.as_str(), t.clone())),
                })
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(failed)?;
            Tensor::write_npz(&widened, path).map_err(failed)
        }
    }
}

/// Whether `target` names a directory: it ends with a path separator or is one.
pub fn is_directory(target: &Path) -> bool {
    target
        .as_os_str()
        .to_string_lossy()
        .ends_with(std::path::MAIN_SEPARATOR)
        || target.is_dir()
}

/// Checks before any run steps that `target` is a file params can be written as, or a directory.
pub fn check_target(target: &Path) -> Result<(), SaveError> {
    match is_directory(target) || ParamsFormat::of(target).is_some() {
        true => Ok(()),
        false => Err(SaveError::Format(target.display().to_string())),
    }
}

/// `--save-params TARGET`: every run's params to one file (keys `<param>` for a single run,
/// `<run>.<param>` for several, a repeated run name numbered from `-2`) or, for a directory, one `.safetensors` file per run named after
/// it. Returns the files written.
pub fn save_runs(target: &Path, runs: &[&Run]) -> Result<Vec<PathBuf>, SaveError> {
    if is_directory(target) {
        std::fs::create_dir_all(target).map_err(|e| SaveError::Write {
            path: target.display().to_string(),
            why: e.to_string(),
        })?;
        let mut written = Vec::new();
        for run in runs {
            let stem = file_stem(&run.name);
            let mut path = target.join(format!("{stem}.safetensors"));
            let mut n = 2;
            while written.contains(&path) {
                path = target.join(format!("{stem}-{n}.safetensors"));
                n += 1;
            }
            write(&path, ParamsFormat::Safetensors, &run_entries(run, None)?)?;
            written.push(path);
        }
        return Ok(written);
    }
    let format =
        ParamsFormat::of(target).ok_or_else(|| SaveError::Format(target.display().to_string()))?;
    let mut entries = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    for run in runs {
        // Two runs of one name (`-o adam -o adam`) get `-2`, `-3`, ... as files in a directory do.
        let mut prefix = run.name.clone();
        let mut n = 2;
        while prefixes.contains(&prefix) {
            prefix = format!("{}-{n}", run.name);
            n += 1;
        }
        entries.extend(run_entries(
            run,
            (runs.len() > 1).then_some(prefix.as_str()),
        )?);
        prefixes.push(prefix);
    }
    write(target, format, &entries)?;
    Ok(vec![target.to_path_buf()])
}

/// A run's name as a file name: letters, digits, `.`, `-` and `_` kept, runs of anything else
/// one `_` (`sgd, lr 1e-3` → `sgd_lr_1e-3`).
pub fn file_stem(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_matches('_').trim_start_matches('.');
    match out {
        "" => "run".into(),
        s => s.to_string(),
    }
}
