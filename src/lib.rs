//! gradscope: see what custom loss functions, their gradients and optimizers actually do.
//!
//! The crate is a stack of layers; each imports only the layers below it (`tests/walls.rs`
//! keeps it so), and `main.rs` only parses the command line and calls [`run()`]:
//!
//! ```text
//!  cli/         check · run · lrfind · inspect · grad · pictures · bench: every front end and clap type
//!    │
//!  tui/         app (model + update) ◀ input, keys │ session │ perform (I/O) │ layout │ render/
//!    │
//!  draw/        palette, landscape scene, SVG/PNG plots (no terminal needed)
//!    │
//!  run/         RunRequest → Run (step, rewind) │ worker thread │ history │ summary │ export
//!    │
//!  load         discover, read and compile a file once │ landscape/  planes, grids, its thread
//!    │
//!  compile/     lower/ → plan → candle; custom and fused ops, provenance, gradcheck, curvature,
//!               backward (the gradient as a program)
//!    │
//!  lang/        lexer → parser → AST with spans; the loss-file schema (file/): no tensors
//!    │
//!  optim/       the optimizer registry (typed hyper-parameters), update rules, run settings
//!    │
//!  diagnostic   one diagnostic type │ format: numbers and durations │ alloc: large blocks reused
//! ```

pub mod alloc;
pub mod cli;
pub mod compile;
pub mod diagnostic;
pub mod draw;
pub mod format;
pub mod landscape;
pub mod lang;
pub mod load;
pub mod optim;
pub mod run;
pub mod tui;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use cli::{Cli, Command};

/// The stack of every thread that builds, evaluates or differentiates a loss: candle walks a
/// graph recursively (its backward pass; twice over for a Hessian), and a 10,000-line chain
/// overflowed a default 2 MiB thread. A Hessian of the longest chain taken
/// ([`compile::lower::MAX_CHAIN`]) needs more than 8 MiB and at most 32 in a debug build; this
/// is twice that. Only the pages a walk touches are mapped (all of it counts under `ulimit -v`).
pub const GRAPH_STACK: usize = 64 << 20;

/// Runs `cli`'s command, called from the main thread: on it, once its stack may grow to
/// [`GRAPH_STACK`], else on a thread with such a stack (a panic there goes on as this
/// thread's). The main thread allocates from glibc's main arena: stepped on another thread, a
/// small loss ran 1.5-3% slower. The exit code is 0 when every file is fine and 1 when any has
/// an error.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if main_stack_grows_to(GRAPH_STACK) {
        return dispatch(cli);
    }
    std::thread::Builder::new()
        .name("gradscope".into())
        .stack_size(GRAPH_STACK)
        .spawn(move || dispatch(cli))
        .context("cannot start the command's thread")?
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Lets the main thread's stack grow to `bytes` (Linux grows it on demand up to the soft
/// `RLIMIT_STACK`, 8 MiB by default, and leaves at least 128 MiB below it for that), raising the
/// soft limit where the hard one allows. Whether it may.
fn main_stack_grows_to(bytes: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write only `limit` and this process's limit.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_STACK, &mut limit) != 0 {
                return false;
            }
            let want = bytes as libc::rlim_t;
            if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= want {
                return true;
            }
            if limit.rlim_max != libc::RLIM_INFINITY && limit.rlim_max < want {
                return false;
            }
            limit.rlim_cur = want;
            libc::setrlimit(libc::RLIMIT_STACK, &limit) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = bytes;
        false
    }
}

/// The command of `cli`, on the thread [`run`] gives it.
fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = std::io::stdout().lock();
    let all_ok = match cli.command {
        Some(Command::List { dir, json }) => cli::check::list(&[dir], json, color, &mut out)?,
        Some(Command::Check { paths, json }) => cli::check::check(&paths, json, color, &mut out)?,
        Some(Command::Run(args)) => {
            drop(out);
            return Ok(cli::run::run_command(&args, color)?.exit_code());
        }
        Some(Command::Lrfind(args)) => {
            drop(out);
            return Ok(cli::lrfind::lrfind_command(&args, color)?.exit_code());
        }
        Some(Command::Sweep(args)) => {
            drop(out);
            return Ok(cli::sweep::sweep_command(&args, color)?.exit_code());
        }
        Some(Command::Landscape(args)) => cli::pictures::landscape_command(&args, color, &mut out)?,
        Some(Command::Plot(args)) => {
            drop(out);
            return Ok(exit(cli::pictures::plot_command(&args, color)?));
        }
        Some(Command::Gradcheck(args)) => cli::inspect::gradcheck_command(&args, color, &mut out)?,
        Some(Command::Grad(args)) => cli::grad::grad_command(&args, color, &mut out)?,
        Some(Command::Curvature(args)) => cli::inspect::curvature_command(&args, color, &mut out)?,
        Some(Command::Hessian(args)) => cli::hessian::hessian_command(&args, color, &mut out)?,
        Some(Command::Precision(args)) => cli::inspect::precision_command(&args, color, &mut out)?,
        Some(Command::Optimizers {
            file,
            format,
            brief,
        }) => cli::optimizers::optimizers_command(file.as_deref(), format, brief, color, &mut out)?,
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            // Written whole, so a closed pipe (`| head`) is an error to pass on, not clap's panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "gradscope", &mut script);
            out.write_all(&script)?;
            true
        }
        Some(Command::Bench { tui_only: true, .. }) => cli::bench::tui_only(&mut out)?,
        Some(Command::Bench {
            dir,
            repeat,
            json,
            large,
            tui_only: false,
        }) => cli::bench::bench_command(&dir, &large, repeat, json.as_deref(), &mut out)?,
        None => {
            drop(out);
            let path = cli.path.unwrap_or_else(|| "losses".into());
            tui::run(&path, cli.out_dir.as_deref())?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    out.flush()?;
    Ok(exit(all_ok))
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Process-wide set-up done once at start-up, before any tensor or thread exists: glibc malloc
/// thresholds (with the defaults, glibc returns every multi-MB tensor to the kernel on free and
/// page-faults it back on the next op: a fifth of a logistic-regression step went to page
/// faults; blocks past the largest threshold [`alloc`] keeps instead); candle's own threading
/// off and the thread count asked for (`threads`, else `RAYON_NUM_THREADS`) recorded, for the
/// pool the front end builds once it has loaded its files (`compile::threads`); and the
/// curvature thread, the one thread that keeps gradient graphs for second-order derivatives.
pub fn init_process(threads: Option<usize>) {
    let asked = threads.or_else(|| std::env::var("RAYON_NUM_THREADS").ok()?.parse().ok());
    // More threads than cores only add hand-offs, and a mistyped count (`--threads 100000`)
    // spent minutes starting threads for a 3-value loss.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let asked = asked.map(|n| {
        if n > cores {
            let _ = writeln!(
                std::io::stderr(),
                "note: {n} threads asked for, more than this machine's {cores} cores: using {cores}"
            );
        }
        n.min(cores)
    });
    // SAFETY: called first thing in main, before any other thread exists. With these, candle's
    // matmul never asks rayon for threads (which would build rayon's default pool before ours;
    // and unset, candle reads the core count on every matmul, ~150 µs), and its elementwise
    // pool starts no helper: its join spin-waits for helpers the scheduler has not run, which
    // made 2 threads slower than 1 on a busy machine (half the samples of an MLP run spun there).
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", "1");
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    compile::threads::init(asked);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, alloc::LARGE as i32);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
    // Last: it starts the first thread of ours.
    compile::curvature::start_service();
}

/// CPU time the calling thread has used (Linux; None elsewhere): set against wall time, it
/// tells the work a frame took from the time the thread waited for a core.
pub fn thread_cpu_time() -> Option<std::time::Duration> {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes only `ts`.
        let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
        ok.then(|| std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Lowers the calling thread's priority by `nice` from the one it has (Linux keeps a nice value
/// per thread) and, for a `nice` above 0, makes it a batch thread: the threads that step and draw
/// the runs make way for the UI thread. Niced alone, a worker woken while the UI drew (handed
/// its turn, say) preempted the frame and kept the core up to a 4 ms tick; a batch thread does
/// not preempt on waking (Linux's `SCHED_BATCH`), and runs as a niced one otherwise.
pub fn lower_thread_priority(nice: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: reads and changes only the calling thread's policy and nice value.
    unsafe {
        if nice > 0 {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
        }
        let me = libc::gettid() as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, me);
        libc::setpriority(libc::PRIO_PROCESS, me, (now + nice).min(19));
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = nice;
}
