//! Work claims: every thread runs its own units of a phase first, then helps the others.
//!
//! The schedule ([`super::schedule`]) gives each thread a list of units per phase, so that a
//! tile's memory stays in one core's cache from batch to batch. But the two cores of a virtual
//! machine often run at different speeds, and a unit's cost in the last batch is only an
//! estimate: with static lists alone, the faster thread waits at the barrier. So each thread
//! claims its own units from the front of its list, and when its list is done, takes units from
//! the back of the other threads' lists, one at a time, until none is left. A unit runs exactly
//! once either way, and units of one phase write disjoint memory, so which thread runs it changes
//! no result.
//!
//! A claim is one compare-and-swap on a word per thread holding `(front, back)` of its list.
//! The phase barrier orders the units' memory; the claims only decide who runs what.
//!
//! ```
//! use spiketile::engine::claims::Claims;
//! let claims = Claims::new(2);
//! claims.open(0, 3); // thread 0 has 3 units, thread 1 none
//! assert_eq!(claims.own(0), Some(0));
//! assert_eq!(claims.steal(0), Some(2)); // thread 1 helps from the back
//! assert_eq!(claims.own(0), Some(1));
//! assert_eq!((claims.own(0), claims.steal(0)), (None, None));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// One thread's claim word, alone on its cache line.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Word(AtomicU64);

/// The claim words of all threads.
#[derive(Debug)]
pub struct Claims {
    words: Box<[Word]>,
}

fn pack(front: u32, back: u32) -> u64 {
    (u64::from(front) << 32) | u64::from(back)
}

fn unpack(w: u64) -> (u32, u32) {
    ((w >> 32) as u32, w as u32)
}

impl Claims {
    /// Claims for `threads` threads, every list empty.
    pub fn new(threads: usize) -> Self {
        Claims { words: (0..threads.max(1)).map(|_| Word::default()).collect() }
    }

    /// Thread `tid` starts a phase with a list of `len` units. Call it after the barrier that
    /// ends the phase before: until then, the others see the last phase's list, which is done.
    pub fn open(&self, tid: usize, len: usize) {
        let len = u32::try_from(len).expect("fewer than 2^32 units per thread");
        self.words[tid].0.store(pack(0, len), Ordering::Relaxed);
    }

    /// The next unit of thread `tid`'s own list (its position in the list), if any is left.
    pub fn own(&self, tid: usize) -> Option<usize> {
        self.claim(tid, |f, b| (f + 1, b, f))
    }

    /// A unit from the back of thread `victim`'s list (its position in that list), if any is
    /// left.
    pub fn steal(&self, victim: usize) -> Option<usize> {
        self.claim(victim, |f, b| (f, b - 1, b - 1))
    }

    fn claim(&self, tid: usize, take: impl Fn(u32, u32) -> (u32, u32, u32)) -> Option<usize> {
        let word = &self.words[tid].0;
        let mut w = word.load(Ordering::Relaxed);
        loop {
            let (f, b) = unpack(w);
            if f >= b {
                return None;
            }
            let (f2, b2, got) = take(f, b);
            match word.compare_exchange_weak(w, pack(f2, b2), Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(got as usize),
                Err(now) => w = now,
            }
        }
    }

    /// How many threads the claims are for.
    pub fn threads(&self) -> usize {
        self.words.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Under contention every unit is claimed exactly once, by its owner or by a helper.
    #[test]
    fn every_unit_runs_exactly_once() {
        let threads = 4;
        let lens = [1000usize, 10, 0, 400];
        let claims = Claims::new(threads);
        for round in 0..20 {
            let runs: Vec<Vec<AtomicU32>> =
                lens.iter().map(|&n| (0..n).map(|_| AtomicU32::new(0)).collect()).collect();
            for (tid, &n) in lens.iter().enumerate() {
                claims.open(tid, n);
            }
            std::thread::scope(|s| {
                for tid in 0..threads {
                    let (claims, runs) = (&claims, &runs);
                    s.spawn(move || {
                        while let Some(i) = claims.own(tid) {
                            runs[tid][i].fetch_add(1, Ordering::Relaxed);
                        }
                        for k in 1..threads {
                            let v = (tid + k) % threads;
                            while let Some(i) = claims.steal(v) {
                                runs[v][i].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            for (tid, r) in runs.iter().enumerate() {
                for (i, c) in r.iter().enumerate() {
                    assert_eq!(c.load(Ordering::Relaxed), 1, "round {round}: unit {i} of {tid}");
                }
            }
        }
    }
}
