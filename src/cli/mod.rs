//! Command-line interface: one [`Command`] enum, dispatched in one place (`lib::run`).

/// `eprint!` that lets a closed stderr go (`gradscope run ... 2>&1 | head`): `eprint!` panics
/// when its reader has left, and a report is not worth a panic.
macro_rules! err_print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// [`err_print!`] with a newline, as `eprintln!`.
macro_rules! err_println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod bench;
pub mod check;
pub mod grad;
pub mod hessian;
pub mod inspect;
pub mod lrfind;
pub mod optimizers;
pub mod pictures;
pub mod run;
pub mod sweep;

use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Parser, Subcommand, ValueEnum};

use crate::lang::file::DType;
use crate::optim::settings::{GradSource, NonFinitePolicy};

/// See what your custom loss functions, their gradients and optimizers actually do.
#[derive(Debug, Parser)]
#[command(name = "gradscope", version, about)]
pub struct Cli {
    /// Threads for tensor ops (also RAYON_NUM_THREADS). Default: chosen once the files are
    /// loaded, one per task the largest op of any run can fill (a matmul of 2M multiply-adds;
    /// 32k elements of tanh or bias addition), at most the cores: 1 for a small loss.
    #[arg(long, global = true, value_parser = |t: &str| run::positive("threads", t).map(|n| n as usize))]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a command: open the TUI on this directory of loss files or one file.
    #[arg(default_value = None)]
    pub path: Option<PathBuf>,
    /// Without a command: where the TUI's `w` and `p` write, made if missing (default: next to each loss file).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// The subcommands, dispatched in one place (`lib::run`).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One row per loss file: name, params with shapes, variants, and ok or the first error.
    List {
        /// Directory of loss files (searched recursively).
        #[arg(default_value = "losses")]
        dir: PathBuf,
        /// One JSON object per file per line.
        #[arg(long)]
        json: bool,
    },
    /// Load, compile every variant, and take one forward and backward pass at the initial params.
    Check {
        /// Loss files or directories (searched recursively).
        #[arg(default_value = "losses")]
        paths: Vec<PathBuf>,
        /// One JSON object per file per line.
        #[arg(long)]
        json: bool,
    },
    /// Step one or more runs of a loss file headless and report them.
    Run(run::RunArgs),
    /// The learning-rate range test on a copy of a run: the lr grows exponentially over the
    /// steps; prints the smoothed loss against the lr, why it stopped and two suggested lrs.
    Lrfind(lrfind::LrFindArgs),
    /// Step a grid of runs (value lists in -o and --const, variants, dtypes, seeds) and rank
    /// them, with the window of good values of each swept axis.
    Sweep(sweep::SweepArgs),
    /// Step runs, then draw their loss landscape with the paths in the terminal.
    Landscape(pictures::LandscapeArgs),
    /// Step runs, then write their curves (and landscape, for two-param losses) to an SVG or PNG.
    Plot(pictures::PlotArgs),
    /// Autograd against central finite differences in f64, per param (every variant by default).
    Gradcheck(inspect::PointArgs),
    /// Each run's gradient as a program in the loss-file language (`--check`: against autograd).
    Grad(grad::GradArgs),
    /// The Hessian's top eigenvalue at a point of a run, and the largest stable lr (2/λ).
    Curvature(inspect::PointArgs),
    /// The whole Hessian at a point of a run (up to 2,000 param values; Lanczos on the ends of
    /// the spectrum past that): eigenvalues, condition number, negative directions, 2/λmax.
    Hessian(hessian::HessianArgs),
    /// Per op, how many values overflowed, flushed to zero or went subnormal in the run's dtype
    /// (against the same evaluation in f64).
    Precision(inspect::PointArgs),
    /// Every optimizer -o and [optimizer] take, grouped (torch.optim, modern, optax), then every
    /// trick a chain takes after it, with their parameters, defaults and one-line docs.
    Optimizers {
        /// A loss file whose own optimizers (its `[optimizers.*]` and those of the
        /// `optimizers/` folders above it) are listed too, as "written for this file".
        file: Option<std::path::PathBuf>,
        /// Plain text, or the Markdown tables the READMEs hold.
        #[arg(long, value_enum, default_value = "text")]
        format: optimizers::ListFormat,
        /// One line an optimizer or trick: its name and every default.
        #[arg(long)]
        brief: bool,
    },
    /// Print a shell completion script (e.g. `gradscope completions bash > ~/.local/share/bash-completion/completions/gradscope`).
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Step the benchmark workloads and report steps/s and peak memory.
    Bench {
        /// Directory of workloads.
        #[arg(default_value = "losses/bench")]
        dir: PathBuf,
        /// Repetitions per workload; the median is reported.
        #[arg(long, default_value_t = 3, value_parser = |t: &str| run::positive("repeat", t).map(|n| n as usize))]
        repeat: usize,
        /// Also write every figure to this file as one JSON object, for tracking.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// The large-param workload, measured first (while the process holds nothing else)
        /// when the file exists: steps/s and peak memory against the params' size. It lives
        /// outside `losses/` so the TUI and `check losses` never load its 64 MB param.
        #[arg(long, default_value = "benches/large.toml")]
        large: PathBuf,
        /// Only the TUI under load, printed as JSON: what `bench` runs in a process of its
        /// own, as the TUI is.
        #[arg(long, hide = true)]
        tui_only: bool,
    },
}

/// Lets clap parse a library enum by its words (`ALL` and `name()`), so the library needs no
/// clap.
macro_rules! value_enum {
    ($($Type:ty),*) => {$(
        impl ValueEnum for $Type {
            fn value_variants<'a>() -> &'a [Self] {
                &<$Type>::ALL
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(PossibleValue::new(self.name()))
            }
        }
    )*};
}

value_enum!(DType, NonFinitePolicy, GradSource);

/// Refuses an output file (`flag` names its option) that cannot be written, before any run
/// steps: found after them, the error cost the whole run. Its folder must exist and take a
/// new file (tried with an empty one, removed at once), and it must not be a folder itself.
pub fn check_out_folder(flag: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        anyhow::bail!("{flag} {}: no folder {}", out.display(), dir.display());
    }
    if out.is_dir() {
        anyhow::bail!("{flag} {}: is a folder; name a file in it", out.display());
    }
    let probe = dir.join(format!(".gradscope-{}.probe", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => Ok(std::fs::remove_file(&probe)?),
        Err(e) => anyhow::bail!(
            "{flag} {}: cannot write in {}: {e}",
            out.display(),
            dir.display()
        ),
    }
}
