//! A spinning barrier for the bulk-synchronous supersteps.
//!
//! Supersteps are short (tens of microseconds), so waiting threads spin instead of sleeping on a
//! lock; after a while they yield, so that more threads than cores still make progress.
//!
//! Memory ordering: every thread's writes before [`SpinBarrier::wait`] happen-before every
//! thread's reads after it. The last arriving thread resets the count and then bumps the
//! generation with `Release`; waiters read the generation with `Acquire`; arrivals use `AcqRel`
//! so the last arriver also acquires the others' writes.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A reusable barrier for `n` threads.
#[derive(Debug)]
pub struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    /// A barrier for `n >= 1` threads.
    pub fn new(n: usize) -> Self {
        SpinBarrier { n: n.max(1), count: AtomicUsize::new(0), generation: AtomicUsize::new(0) }
    }

    /// Blocks until all `n` threads have called `wait` for this generation.
    pub fn wait(&self) {
        if self.n == 1 {
            return;
        }
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
                std::thread::yield_now();
            }
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
}
