//! Helper threads for disk work that could stall the reactor: syncing a
//! finished upload, hashing a resumed prefix, reading a large directory.
//!
//! The reactor hands a job over with the connection's key and generation,
//! parks that connection, and goes on serving everyone else. A helper runs
//! the job, queues the result and wakes the reactor through a `mio::Waker`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use mio::Waker;

/// Nice value of the helper threads (the reactor keeps the process's).
const HELPER_NICENESS: i32 = 10;

/// A unit of blocking work; returns its result for the reactor.
pub type Job<T> = Box<dyn FnOnce() -> T + Send>;

/// A finished job: who asked (slab key and generation) and the result.
pub struct Done<T> {
    pub key: usize,
    pub generation: u64,
    pub result: T,
}

/// A pool of helper threads.
pub struct Worker<T> {
    jobs: Option<Sender<(usize, u64, Job<T>)>>,
    done: Receiver<Done<T>>,
    /// Set when a wake-up is on its way and the reactor has not collected
    /// results since, so a burst of finished jobs costs one wake-up.
    wake_pending: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Starts `count` helper threads that wake the reactor with `waker`.
    pub fn start(count: usize, waker: Arc<Waker>) -> std::io::Result<Worker<T>> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<(usize, u64, Job<T>)>();
        let (done_tx, done_rx) = mpsc::channel();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let wake_pending = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let jobs_rx = Arc::clone(&jobs_rx);
            let done_tx = done_tx.clone();
            let waker = Arc::clone(&waker);
            let wake_pending = Arc::clone(&wake_pending);
            let handle = thread::Builder::new()
                .name(format!("ftpd-disk-{i}"))
                .spawn(move || {
                    // Syncing and deleting burn kernel CPU; at a lower
                    // priority they never delay the reactor's requests on
                    // a machine with few cores. Not fatal if refused.
                    let tid = rustix::thread::gettid();
                    let _ = rustix::process::setpriority_process(Some(tid), HELPER_NICENESS);
                    loop {
                        // The lock is held only while waiting for the next job.
                        let next = match jobs_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok((key, generation, job)) = next else {
                            return; // the reactor has shut down
                        };
                        let result = job();
                        if done_tx
                            .send(Done {
                                key,
                                generation,
                                result,
                            })
                            .is_err()
                        {
                            return;
                        }
                        if !wake_pending.swap(true, Ordering::AcqRel) {
                            // A failed wake-up only delays the result to the next event.
                            let _ = waker.wake();
                        }
                    }
                })?;
            threads.push(handle);
        }
        Ok(Worker {
            jobs: Some(jobs_tx),
            done: done_rx,
            wake_pending,
            threads,
        })
    }

    /// Queues a job for connection `key` of `generation`.
    pub fn submit(&self, key: usize, generation: u64, job: Job<T>) {
        if let Some(jobs) = &self.jobs {
            // Fails only if every helper died; the connection then waits
            // for its timeout, which is logged.
            let _ = jobs.send((key, generation, job));
        }
    }

    /// Results that are ready, without waiting.
    pub fn finished(&self) -> impl Iterator<Item = Done<T>> + '_ {
        // Cleared before draining: a job finishing after this point wakes
        // the reactor again, so no result is left behind unannounced.
        self.wake_pending.store(false, Ordering::Release);
        self.done.try_iter()
    }

    /// Waits for queued jobs to finish and stops the threads.
    pub fn shutdown(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        self.jobs = None;
    }
}
