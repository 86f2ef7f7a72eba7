//! A spinning barrier for the bulk-synchronous supersteps.
//!
//! Supersteps are short (tens of microseconds), so waiting threads spin instead of sleeping on a
//! lock; after a while they yield, so that more threads than cores still make progress.
//!
//! Memory ordering: every thread's writes before [`SpinBarrier::wait`] happen-before every
//! thread's reads after it. The last arriving thread resets the count and then bumps the
//! generation with `Release`; waiters read the generation with `Acquire`; arrivals use `AcqRel`
//! so the last arriver also acquires the others' writes.
//!
//! A thread that panics between barriers would leave the others spinning forever; its driver
//! [`SpinBarrier::poison`]s the barrier instead, and every thread waiting at it, or arriving
//! later, panics too, so that the panic reaches whoever joins the threads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A reusable barrier for `n` threads.
#[derive(Debug)]
pub struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl SpinBarrier {
    /// A barrier for `n >= 1` threads.
    pub fn new(n: usize) -> Self {
        SpinBarrier {
            n: n.max(1),
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Marks the barrier broken: a thread of the `n` will not arrive (it panicked).
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    /// Blocks until all `n` threads have called `wait` for this generation.
    ///
    /// # Panics
    /// If the barrier is [poisoned](Self::poison), before or while waiting.
    pub fn wait(&self) {
        if self.n == 1 {
            return;
        }
        self.check();
        let gen = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == gen {
            if spins < 20_000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                self.check();
                std::thread::yield_now();
            }
        }
    }

    fn check(&self) {
        if self.poisoned.load(Ordering::Acquire) {
            panic!("another thread at this barrier panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn no_thread_passes_before_all_arrive() {
        let barrier = SpinBarrier::new(3);
        let counter = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for round in 1..=200u64 {
                        counter.fetch_add(1, Ordering::Relaxed);
                        barrier.wait();
                        assert!(counter.load(Ordering::Relaxed) >= round * 3);
                        barrier.wait();
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 600);
    }

    /// A poisoned barrier releases the threads waiting at it, and those arriving later, with a
    /// panic, instead of leaving them to wait for a thread that never comes.
    #[test]
    fn poisoned_barrier_panics_its_waiters() {
        let barrier = SpinBarrier::new(3);
        let released = AtomicU64::new(0);
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let r = std::panic::catch_unwind(|| barrier.wait());
                        released.fetch_add(1, Ordering::Relaxed);
                        r.is_err()
                    })
                })
                .collect();
            std::thread::sleep(std::time::Duration::from_millis(20));
            barrier.poison();
            assert!(waiters.into_iter().all(|w| w.join().unwrap()), "both waiters panicked");
        });
        assert_eq!(released.load(Ordering::Relaxed), 2);
        assert!(std::panic::catch_unwind(|| barrier.wait()).is_err(), "late arrivals panic too");
    }
}
