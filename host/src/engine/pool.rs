//! Worker threads that live as long as their owner: [`Pool::run`] runs one job on every thread at
//! once (the caller's included) and returns when all are done, like a `std::thread::scope` that
//! spawns its threads once rather than per call.
//!
//! Why: the tiled engine's batch runs its threads in lockstep (a barrier after every phase), and
//! spawning the second thread for each batch cost the first about 70 µs and started the second
//! about 140 µs late on session 23's Zen 4 VM: some 2–3 % of a 1 %-input batch of W's shape.
//! Between jobs a worker spins for 2 ms (a training loop's next batch is usually ready by
//! then) and then sleeps until the next job.
//!
//! ```
//! use spiketile::engine::pool::Pool;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! let pool = Pool::new(3);
//! let sum = AtomicUsize::new(0);
//! pool.run(&|tid| {
//!     sum.fetch_add(tid + 1, Ordering::Relaxed);
//! });
//! assert_eq!(sum.into_inner(), 1 + 2 + 3);
//! ```

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// The job of the moment: called on every thread with its index, 0 the caller's.
type Job = dyn Fn(usize) + Sync;

/// `threads` threads: the caller's and `threads - 1` workers.
pub struct Pool {
    threads: usize,
    shared: Arc<State>,
    workers: Vec<JoinHandle<()>>,
}

/// What the caller and the workers share.
struct State {
    /// The job: a pointer to the caller's closure, valid while [`Pool::run`] runs; `None`
    /// between jobs.
    job: Mutex<Option<JobPtr>>,
    /// Jobs posted so far: a worker runs each once.
    posted: AtomicU64,
    /// Workers done with the current job.
    done: AtomicUsize,
    /// A worker's panic, passed on by [`Pool::run`].
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Set when the pool is dropped.
    stop: AtomicBool,
    /// Sleeping workers wait here for the next job.
    wake: Condvar,
    sleep: Mutex<()>,
}

/// A job's address, sent to the workers.
#[derive(Clone, Copy)]
struct JobPtr(*const Job);

// SAFETY: the pointer is only dereferenced while `Pool::run` keeps the job alive, and the job is
// `Sync` (called from several threads at once).
#[allow(unsafe_code)]
unsafe impl Send for JobPtr {}

impl Pool {
    /// A pool of `threads` threads (at least 1: the caller's alone spawns none).
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(State {
            job: Mutex::new(None),
            posted: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            sleep: Mutex::new(()),
        });
        let workers = (1..threads)
            .map(|tid| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("spiketile-{tid}"))
                    .spawn(move || worker(&shared, tid))
                    .expect("spawning a worker thread")
            })
            .collect();
        Pool { threads, shared, workers }
    }

    /// How many threads run each job.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(tid)` on every thread at once, `tid` 0 on the caller, and returns when all
    /// have returned. A panic on any thread is passed on here, after every thread is done.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        if self.threads > 1 {
            // SAFETY (of the workers' calls): this function returns only after every worker has
            // counted itself done with this job, and no worker touches it after that; the
            // pointer's lifetime is widened only to cross the threads.
            #[allow(unsafe_code)]
            let ptr: *const Job =
                unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(job) };
            *s.job.lock().expect("pool state") = Some(JobPtr(ptr));
            s.done.store(0, Ordering::SeqCst);
            s.posted.fetch_add(1, Ordering::SeqCst);
            let _guard = s.sleep.lock().expect("pool state");
            s.wake.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0)));
        let workers = self.threads - 1;
        // The workers leave the job's last barrier about when this thread does: a short spin,
        // then yielding (with more threads than cores, a waiting thread's spin would hold back
        // the workers it waits for).
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < workers {
            spins += 1;
            if spins < 1 << 10 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *s.job.lock().expect("pool state") = None;
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        // Taken out first: unwinding while holding the lock would poison it.
        let theirs = s.panic.lock().expect("pool state").take();
        if let Some(p) = theirs {
            std::panic::resume_unwind(p);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.sleep.lock();
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A worker's loop: waits for each posted job (spinning for [`SPIN`], then sleeping), runs it
/// with its index, counts itself done.
fn worker(s: &State, tid: usize) {
    let mut seen = 0u64;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        while s.posted.load(Ordering::Acquire) == seen && !s.stop.load(Ordering::Acquire) {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
                continue;
            }
            if started.elapsed() < SPIN {
                // Lets another thread of this core run meanwhile, if any (more threads than
                // cores): the caller's work between jobs, say.
                std::thread::yield_now();
                continue;
            }
            let guard = s.sleep.lock().expect("pool state");
            if s.posted.load(Ordering::Acquire) == seen && !s.stop.load(Ordering::Acquire) {
                drop(s.wake.wait_timeout(guard, Duration::from_millis(50)).expect("pool state"));
            }
        }
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        seen = s.posted.load(Ordering::Acquire);
        let job = *s.job.lock().expect("pool state");
        if let Some(JobPtr(ptr)) = job {
            // SAFETY: `Pool::run` keeps the job alive until this worker counts itself done.
            #[allow(unsafe_code)]
            let job = unsafe { &*ptr };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(tid)));
            if let Err(p) = r {
                s.panic.lock().expect("pool state").get_or_insert(p);
            }
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every thread runs every job exactly once, with its own index, many jobs in a row (some
    /// after the workers went to sleep).
    #[test]
    fn every_thread_runs_every_job_once() {
        for threads in 1..=4 {
            let pool = Pool::new(threads);
            let counts: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            for job in 0..200 {
                if job == 100 {
                    std::thread::sleep(SPIN * 3);
                }
                pool.run(&|tid| {
                    counts[tid].fetch_add(1, Ordering::Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == job + 1), "job {job}");
            }
        }
    }

    /// The threads run at once: a job that waits for all of them finishes.
    #[test]
    fn threads_run_together() {
        let pool = Pool::new(3);
        let arrived = AtomicUsize::new(0);
        pool.run(&|_| {
            arrived.fetch_add(1, Ordering::SeqCst);
            while arrived.load(Ordering::SeqCst) < 3 {
                std::hint::spin_loop();
            }
        });
        assert_eq!(arrived.into_inner(), 3);
    }

    /// A worker's panic reaches the caller after every thread is done, and the pool runs the
    /// next job as before.
    #[test]
    fn a_panic_is_passed_on() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|tid| {
                if tid == 1 {
                    panic!("worker fails");
                }
            })
        }));
        let msg = r.expect_err("the panic").downcast::<&str>().map(|b| *b);
        assert_eq!(msg.ok(), Some("worker fails"));
        let ran = AtomicUsize::new(0);
        pool.run(&|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.into_inner(), 2);
    }
}
