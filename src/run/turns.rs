//! Turns at the cores for the run workers: at most one worker a core steps at a time, the others
//! wait in line, first come first served, for a turn of a few milliseconds. Thirty files playing
//! on two cores would otherwise be thirty runnable threads: the UI thread gets a thirtieth of a
//! core, and a worker preempted inside malloc keeps its arena locked until its next time slice
//! comes round, stalling every thread that allocates there (frames took up to a second).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a turn lasts before its worker goes to the back of the line: long enough that
/// handing over costs nothing measurable, short enough that thirty files each step a few times
/// a second.
pub const TURN: Duration = Duration::from_millis(5);

/// A line of threads waiting for one of a few turns.
pub struct Turns {
    line: Mutex<Line>,
}

struct Line {
    /// Turns nobody holds.
    free: usize,
    waiting: VecDeque<Arc<Waiter>>,
}

struct Waiter {
    thread: Thread,
    /// Set by the holder that handed its turn over.
    granted: AtomicBool,
}

/// A turn, handed to the next in line when dropped.
pub struct Turn<'a> {
    turns: &'a Turns,
    since: Instant,
}

impl Turns {
    /// A line for `slots` turns at once (at least one).
    pub fn new(slots: usize) -> Self {
        Self {
            line: Mutex::new(Line {
                free: slots.max(1),
                waiting: VecDeque::new(),
            }),
        }
    }

    /// The process's line: one turn a core.
    pub fn global() -> &'static Turns {
        static TURNS: OnceLock<Turns> = OnceLock::new();
        TURNS
            .get_or_init(|| Turns::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
    }

    /// Waits in line for a turn.
    pub fn take(&self) -> Turn<'_> {
        let waiter = {
            let mut line = self.lock();
            if line.free > 0 {
                line.free -= 1;
                return Turn::new(self);
            }
            let waiter = Arc::new(Waiter {
                thread: std::thread::current(),
                granted: AtomicBool::new(false),
            });
            line.waiting.push_back(Arc::clone(&waiter));
            waiter
        };
        while !waiter.granted.load(Ordering::Acquire) {
            std::thread::park();
        }
        Turn::new(self)
    }

    /// A turn ends: straight to the first in line, else back to the free ones.
    fn hand_over(&self) {
        let mut line = self.lock();
        match line.waiting.pop_front() {
            Some(next) => {
                next.granted.store(true, Ordering::Release);
                next.thread.unpark();
            }
            None => line.free += 1,
        }
    }

    /// The line; a thread that panicked holding the lock left it consistent (each change is one
    /// statement), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<'a> Turn<'a> {
    fn new(turns: &'a Turns) -> Self {
        Self {
            turns,
            since: Instant::now(),
        }
    }

    /// Whether it has lasted [`TURN`].
    pub fn over(&self) -> bool {
        self.since.elapsed() >= TURN
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.hand_over();
    }
}

/// The UI's claim on the cores while it draws a frame: the workers hold off between steps until
/// it is drawn, so the runs it shows do not preempt it (a frame takes about a millisecond every
/// 33 ms; without it the slowest frames waited 1-4 ms for a core).
struct Gate {
    drawing: AtomicBool,
    lock: Mutex<()>,
    done: Condvar,
}

static GATE: Gate = Gate {
    drawing: AtomicBool::new(false),
    lock: Mutex::new(()),
    done: Condvar::new(),
};

/// Held while the UI draws; dropping it lets the workers go on.
pub struct Drawing(());

/// Holds the workers off between steps until the returned guard is dropped.
pub fn drawing() -> Drawing {
    GATE.drawing.store(true, Ordering::Release);
    Drawing(())
}

impl Drop for Drawing {
    fn drop(&mut self) {
        // Under the lock, so a worker between its check and its wait is woken.
        let _held = GATE.lock.lock().unwrap_or_else(PoisonError::into_inner);
        GATE.drawing.store(false, Ordering::Release);
        GATE.done.notify_all();
    }
}

/// Waits while the UI draws a frame: for a worker, between steps. The guard is dropped however
/// the drawing ends, a panic included.
pub fn let_the_ui_draw() {
    if !GATE.drawing.load(Ordering::Acquire) {
        return;
    }
    let held = GATE.lock.lock().unwrap_or_else(PoisonError::into_inner);
    // The lock is let go at once: only the wait needed it.
    drop(
        GATE.done
            .wait_while(held, |_| GATE.drawing.load(Ordering::Acquire))
            .unwrap_or_else(PoisonError::into_inner),
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc::channel;

    use super::*;

    fn waiting(turns: &Turns) -> usize {
        turns.lock().waiting.len()
    }

    /// Waits (without timing anything) until `n` threads are in line.
    fn until_waiting(turns: &Turns, n: usize) {
        while waiting(turns) < n {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_worker_held_off_by_a_frame_goes_on_once_it_is_drawn() {
        let (tx, rx) = channel();
        let frame = drawing();
        let worker = std::thread::spawn(move || {
            let_the_ui_draw();
            tx.send(()).unwrap();
        });
        // Still held off a while later (were it not, it would have sent by now).
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err()
        );
        drop(frame);
        rx.recv().unwrap();
        worker.join().unwrap();
        // With no frame being drawn it does not wait at all.
        let_the_ui_draw();
        assert!(!GATE.drawing.load(Ordering::Acquire));
    }

    #[test]
    fn turns_go_in_the_order_they_were_asked_for() {
        let turns: &'static Turns = Box::leak(Box::new(Turns::new(1)));
        let first = turns.take();
        let (tx, rx) = channel();
        let mut threads = Vec::new();
        for i in 0..4 {
            let tx = tx.clone();
            threads.push(std::thread::spawn(move || {
                let _turn = turns.take();
                tx.send(i).unwrap();
            }));
            until_waiting(turns, i + 1);
        }
        drop(first);
        for t in threads {
            t.join().unwrap();
        }
        let order: Vec<usize> = rx.try_iter().collect();
        assert_eq!(order, [0, 1, 2, 3]);
    }

    #[test]
    fn no_more_than_the_slots_hold_a_turn_at_once() {
        let turns: &'static Turns = Box::leak(Box::new(Turns::new(2)));
        let holding: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let most: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _turn = turns.take();
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        holding.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        // Every turn came back: both can be taken again at once.
        let (_a, _b) = (turns.take(), turns.take());
        assert_eq!(turns.lock().free, 0);
    }
}
