//! A small thread pool for the many short parallel steps of a decode step.
//!
//! A decode step runs about 150 matrix–vector products of a few hundred microseconds each.
//! A pool whose workers sleep between jobs pays a wake-up (tens of microseconds on a
//! virtual machine) at every one of them; here the workers spin on the job counter for a
//! while (see [`SPIN`]) before they sleep, so back-to-back jobs start at once, and the
//! calling thread takes tasks too. Tasks are claimed one at a time from a shared counter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

thread_local! {
    /// Whether this thread is running a task of a job: a [`Pool::run`] from inside one runs
    /// its tasks right there (the pool is busy with the job that called it).
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The job being run: a task function and how many tasks it has.
struct Job {
    /// `&(dyn Fn(usize) + Sync)` with its lifetime erased; valid until every worker has
    /// left the job (see [`Pool::run`]).
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
}

struct Shared {
    /// Incremented for every new job.
    generation: AtomicUsize,
    /// The next task index to claim.
    next: AtomicUsize,
    /// Workers still inside the current job.
    busy: AtomicUsize,
    job: Mutex<Option<JobPtr>>,
    wake: Condvar,
    /// Workers that may be sleeping on `wake`.
    sleepers: AtomicUsize,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);

// SAFETY: the pointer is only dereferenced while `Pool::run` keeps the job alive (it waits
// for `busy` to reach zero before returning), and the job's function is `Sync`.
unsafe impl Send for JobPtr {}

/// The pool.
pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    /// One job at a time: callers from several threads take turns.
    turn: Mutex<()>,
}

impl Pool {
    /// The process's pool: one worker per core but one (`SIEVE_THREADS` overrides the core
    /// count), the caller being the last.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let threads = std::env::var("SIEVE_THREADS")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            Pool::new(threads - 1)
        })
    }

    fn new(workers: usize) -> Self {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
        });
        for i in 0..workers {
            let s = shared.clone();
            // A pool without its workers still runs every job on the caller's thread, so
            // a failed spawn only costs speed.
            let _ = std::thread::Builder::new().name(format!("sieve-cpu-{i}")).spawn(move || worker(&s));
        }
        Self { shared, workers, turn: Mutex::new(()) }
    }

    /// Threads that run a job: the workers and the caller.
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(0)`, ..., `f(tasks - 1)` across the pool and the calling thread; returns when
    /// all have run. Called from inside a task, it runs them on the calling thread.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        if self.workers == 0 || tasks == 1 || IN_TASK.get() {
            (0..tasks).for_each(f);
            return;
        }
        let _turn = self.turn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased; `job` outlives every use of the pointer,
        // because this function waits below until no worker is inside the job.
        let f: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let job = Job { f, tasks };
        s.next.store(0, Ordering::SeqCst);
        s.busy.store(self.workers, Ordering::SeqCst);
        *s.job.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(JobPtr(&job));
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.job.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            s.wake.notify_all();
        }
        take_tasks(s, &job);
        let mut spins = 0u32;
        while s.busy.load(Ordering::Acquire) != 0 {
            spins = spin(spins);
        }
        *s.job.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// Spins between yields of the core: a waiting thread gives its core to any other thread
/// that wants it (another process's, or a second pool's), and takes it back at once when
/// none does.
const SPINS_PER_YIELD: u32 = 256;

/// One round of waiting, the `spins`-th; returns the count with this one.
#[inline]
fn spin(spins: u32) -> u32 {
    std::hint::spin_loop();
    let spins = spins.wrapping_add(1);
    if spins.is_multiple_of(SPINS_PER_YIELD) {
        std::thread::yield_now();
    }
    spins
}

/// Claims and runs tasks of `job` until none is left.
fn take_tasks(s: &Shared, job: &Job) {
    IN_TASK.set(true);
    loop {
        let i = s.next.fetch_add(1, Ordering::AcqRel);
        if i >= job.tasks {
            break;
        }
        // SAFETY: `Pool::run` keeps the function alive until every worker has left the job.
        unsafe { (*job.f)(i) };
    }
    IN_TASK.set(false);
}

fn worker(s: &Shared) {
    // The generation the pool was made with: a job that starts before this thread does
    // must still count as new to it.
    let mut seen = 0;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while s.generation.load(Ordering::Acquire) == seen {
            spins = spin(spins);
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let guard = s.job.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                if s.generation.load(Ordering::SeqCst) == seen {
                    drop(s.wake.wait(guard).unwrap_or_else(std::sync::PoisonError::into_inner));
                } else {
                    drop(guard);
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        seen = s.generation.load(Ordering::Acquire);
        let job = *s.job.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(JobPtr(job)) = job {
            // SAFETY: the job stays alive until `busy` reaches zero, which this worker's
            // decrement below is part of.
            take_tasks(s, unsafe { &*job });
        }
        s.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        let pool = Pool::new(2);
        for tasks in [1, 2, 3, 17, 100] {
            for _ in 0..50 {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(tasks, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
        // After a pause long enough for the workers to sleep, jobs still run.
        std::thread::sleep(SPIN * 3);
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }

    /// A job whose tasks run jobs of their own finishes, each inner task once.
    #[test]
    fn a_job_started_inside_a_task_runs_there() {
        let pool = Pool::new(2);
        let hits: Vec<AtomicUsize> = (0..6 * 5).map(|_| AtomicUsize::new(0)).collect();
        pool.run(6, &|i| {
            pool.run(5, &|j| {
                hits[5 * i + j].fetch_add(1, Ordering::Relaxed);
            });
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::cpu::matvec::matmul_t;
    use crate::cpu::weights::Matrix;

    #[test]
    #[ignore]
    fn overhead() {
        let pool = Pool::global();
        let n = 20000;
        let t = Instant::now();
        for _ in 0..n {
            pool.run(8, &|i| {
                std::hint::black_box(i);
            });
        }
        eprintln!("pool: {:.2} us per job, {} threads", t.elapsed().as_secs_f64() * 1e6 / n as f64, pool.threads());
        // 30 layers of a decoder's matrices: more than the caches hold.
        let shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
        let layers: Vec<Vec<Matrix>> = (0..30)
            .map(|l| shapes.iter().map(|&(r, c)| Matrix::f32(vec![(l as f32) * 1e-3; r * c], r, c)).collect())
            .collect();
        let bytes: usize = layers.iter().flatten().map(Matrix::bytes).sum();
        let x = vec![1.0f32; 1536];
        for _ in 0..2 {
            let t = Instant::now();
            for _ in 0..10 {
                for l in &layers {
                    for m in l {
                        let mut y = vec![0f32; m.rows()];
                        matmul_t(m, &x[..m.cols()], &mut y);
                        std::hint::black_box(&y);
                    }
                }
            }
            eprintln!("matvec: {:.2} GB/s", 10.0 * bytes as f64 / 1e9 / t.elapsed().as_secs_f64());
        }
    }
}
