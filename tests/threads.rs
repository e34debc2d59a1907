//! The thread pool changes no number: a run's loss and gradients on the pool's threads equal
//! those computed on one thread, bit for bit (the chunks, row blocks and side tasks split the
//! work, never a sum).

use std::path::Path;

use gradscope::compile::{Evaluator, compile, threads, values_f64};
use gradscope::lang::file::{DType, load_bytes};

#[test]
fn the_mlp_gives_the_same_bits_on_the_pool_as_on_one_thread() {
    let path = Path::new("losses/bench/mlp.toml");
    let loaded = load_bytes(path, std::fs::read(path).unwrap());
    let compiled = compile(loaded.file.unwrap()).0.unwrap();
    // As the TUI starts it: its threads a few steps behind the one that starts it, and batch
    // threads.
    threads::start([&compiled], 3);
    // The pool the rule gives it: every core here (on one core both sides below run on one
    // thread).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tasks = threads::plan_tasks(&compiled.runs[0].plan);
    assert_eq!(threads::count(), threads::default_count(tasks, cores));
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if threads::count() > 1 {
        // SAFETY: reads the calling thread's nice value only.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as u32) };
        let here = nice();
        let pool = rayon::broadcast(|_| nice());
        assert_eq!(pool, vec![(here + 3).min(19); threads::count()]);
        // Batch threads, which do not preempt the UI thread on waking.
        // SAFETY: reads the calling thread's policy only.
        let policy = rayon::broadcast(|_| unsafe { libc::sched_getscheduler(0) });
        assert_eq!(policy, vec![libc::SCHED_BATCH; threads::count()]);
    }
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let evaluate = |serial: bool| {
            let compiled = compiled.clone();
            std::thread::spawn(move || {
                if serial {
                    threads::serial_here();
                }
                let ev = Evaluator::with_dtype(&compiled, 0, dtype).unwrap();
                let e = ev.evaluate().unwrap();
                let grads: Vec<Vec<f64>> = e.grads.iter().map(|g| values_f64(g).unwrap()).collect();
                (e.loss.to_bits(), grads)
            })
            .join()
            .unwrap()
        };
        assert_eq!(evaluate(false), evaluate(true), "{dtype:?}");
    }
}
