//! The tensor thread pool: how many threads, when it is built, and which work goes to it.
//!
//! Only gradscope's own kernels run on the pool (`fused`: every 2-D matmul of a plan and its
//! backward, dense layers, tanh, bias addition; `dense`: a chain's weight gradients beside the
//! rest of its backward pass), each in large chunks, and only when the tensor is large enough
//! to repay the hand-off; everything else runs on the thread that asks. candle's own
//! threading stays off (`lib::init_process`): its elementwise pool spin-waits for helpers that
//! a busy machine has descheduled.
//!
//! The pool is per process, so its size is chosen once, after the front end has loaded its
//! files: as many threads as the largest op of any loaded plan can keep busy, at most the
//! cores (a 2-scalar loss gets one, and pays for no pool); `--threads` or `RAYON_NUM_THREADS`
//! wins when given.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::CompiledFile;
use super::plan::{Op, Plan, Unary};

/// Multiply-adds of one gemm task: a matmul with fewer runs on one thread (~10 µs of work,
/// about what handing it to another thread and back costs).
pub const MATMUL_TASK: usize = 1 << 21;

/// Elements of one elementwise task (same reasoning: ~10-30 µs a chunk).
pub const ELEMENT_TASK: usize = 1 << 15;

/// Threads of the pool (1 until [`start`] built one with more).
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// The count given on the command line or in `RAYON_NUM_THREADS` (set by [`init`]).
static EXPLICIT: OnceLock<Option<usize>> = OnceLock::new();

thread_local! {
    /// Set on threads whose tensor work must not take the pool's threads (the landscape's).
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// Records the thread count the user asked for, if any; [`start`] uses it instead of the rule.
pub fn init(explicit: Option<usize>) {
    let _ = EXPLICIT.set(explicit.filter(|&n| n > 0));
}

/// Threads of the pool.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// Keeps the calling thread's tensor work off the pool: the landscape thread runs at a lower
/// priority, which the pool's threads would not inherit, so its grids would slow the runs.
pub fn serial_here() {
    SERIAL.with(|s| s.set(true));
}

/// Runs `f` with a scope it may spawn side tasks in, which the pool's threads run beside it;
/// without a pool to run them (not built yet, one thread, or a [`serial_here`] thread) `f` gets
/// none and runs them itself, and rayon is not touched.
pub fn side_tasks<'scope, R: Send>(f: impl FnOnce(Option<&rayon::Scope<'scope>>) -> R + Send) -> R {
    match pooled() {
        true => rayon::scope(|s| f(Some(s))),
        false => f(None),
    }
}

/// Runs `f` with this thread's tensor work kept off the pool: `f` is itself one of several
/// tasks the pool runs side by side (a weight gradient next to the rest of a backward pass).
pub fn serially<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the flag however `f` ends.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

/// How many tasks of `task` units `work` units split into on this thread: 1 (run it here)
/// unless the pool has threads to spare and the work fills at least two tasks.
pub fn tasks(work: usize, task: usize) -> usize {
    match pooled() {
        true => work / task.max(1),
        false => 1,
    }
}

/// Whether this thread's tensor work may go to the pool: there is one, and the thread is not
/// kept off it.
fn pooled() -> bool {
    count() > 1 && !SERIAL.with(Cell::get)
}

/// The default thread count: one thread per task the largest op can fill, at least 1 and at
/// most `cores`.
pub fn default_count(largest_tasks: usize, cores: usize) -> usize {
    largest_tasks.clamp(1, cores.max(1))
}

/// Tasks the largest op of `plan` that runs on the pool splits into (0: none does).
pub fn plan_tasks(plan: &Plan) -> usize {
    let shape = |r: usize| &plan.instrs[r].shape;
    plan.instrs
        .iter()
        .map(|i| {
            let elements = i.shape.elements().unwrap_or(usize::MAX);
            match i.op {
                Op::MatMul { .. } => {
                    let inner = shape(i.args[0]).dims().last().copied().unwrap_or(1);
                    elements.saturating_mul(inner) / MATMUL_TASK
                }
                Op::BiasAdd | Op::Unary(Unary::Tanh) => elements / ELEMENT_TASK,
                _ => 0,
            }
        })
        .max()
        .unwrap_or(0)
}

/// The thread count for `files`: the explicit one, else [`default_count`] from their largest op.
pub fn chosen_count<'a>(files: impl IntoIterator<Item = &'a CompiledFile>) -> usize {
    if let Some(Some(n)) = EXPLICIT.get() {
        return *n;
    }
    let largest = files
        .into_iter()
        .flat_map(|f| f.runs.iter().map(|r| plan_tasks(&r.plan)))
        .max()
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    default_count(largest, cores)
}

/// Builds the pool for `files` (see [`chosen_count`]) unless one was built: the first call of
/// the process decides. Nothing may use rayon before (it would build a default pool), and it is
/// called from the command's thread (the main one, see the library's `run`): built by the
/// landscape thread, which lowers its own priority, the pool's threads would inherit that
/// priority and slow the runs. Its threads lower their priority by `nice`: the TUI's do the
/// work of its runs' threads, which make way for the UI thread (at the caller's priority, the
/// pool took a core from a frame being drawn: 4-9 frames in 10 s with 30 files playing).
pub fn start<'a>(files: impl IntoIterator<Item = &'a CompiledFile>, nice: i32) {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let n = chosen_count(files);
        if n > 1
            && rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("tensor-{i}"))
                .start_handler(move |_| crate::lower_thread_priority(nice))
                .build_global()
                .is_ok()
        {
            COUNT.store(n, Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The largest op's tasks over the runs of a bench workload.
    fn bench_tasks(name: &str) -> usize {
        let path = Path::new("losses/bench").join(format!("{name}.toml"));
        let loaded = crate::lang::file::load_bytes(&path, std::fs::read(&path).unwrap());
        let compiled = super::super::compile(loaded.file.unwrap()).0.unwrap();
        compiled
            .runs
            .iter()
            .map(|r| plan_tasks(&r.plan))
            .max()
            .unwrap()
    }

    #[test]
    fn small_workloads_get_one_thread_and_the_mlp_every_core() {
        for name in ["rosenbrock", "logreg", "robust_log_mse"] {
            for cores in [1, 2, 64] {
                assert_eq!(
                    default_count(bench_tasks(name), cores),
                    1,
                    "{name}, {cores} cores"
                );
            }
        }
        // 4096 x 256 x 256 multiply-adds: 128 tasks.
        assert_eq!(bench_tasks("mlp"), 4096 * 256 * 256 / MATMUL_TASK);
        for cores in [1, 2, 8] {
            assert_eq!(default_count(bench_tasks("mlp"), cores), cores);
        }
    }

    #[test]
    fn the_default_count_is_one_thread_per_task_up_to_the_cores() {
        // (largest op's tasks, cores) -> threads
        for (tasks, cores, want) in [
            (0, 2, 1),
            (1, 2, 1),
            (2, 2, 2),
            (128, 2, 2),
            (3, 8, 3),
            (5, 0, 1),
        ] {
            assert_eq!(
                default_count(tasks, cores),
                want,
                "{tasks} tasks, {cores} cores"
            );
        }
    }
}
