//! Helper threads for disk work that could stall the reactor: syncing a
//! finished upload, hashing a resumed prefix, reading a large directory.
//!
//! The reactor hands a job over with the connection's key and generation,
//! parks that connection, and goes on serving everyone else. A helper runs
//! the job, queues the result and wakes the reactor through a `mio::Waker`.
//!
//! Jobs go into one of two lanes with threads of their own, so a quick
//! listing never waits behind a sync that the disk takes tens of
//! milliseconds to finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use mio::Waker;

/// Nice value of the helper threads (the reactor keeps the process's).
const HELPER_NICENESS: i32 = 10;

/// A unit of blocking work; returns its result for the reactor.
pub type Job<T> = Box<dyn FnOnce() -> T + Send>;

/// Which threads run a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Work that waits for the disk to make data durable or free space:
    /// fsync and rename of uploads, deleting and replacing files.
    Sync,
    /// Work that only reads: listings, hashing a prefix to resume.
    Read,
}

/// A job with the key and generation of the connection that asked.
type Ticket<T> = (usize, u64, Job<T>);
type Queue<T> = Sender<Ticket<T>>;

/// A finished job: who asked (slab key and generation) and the result.
pub struct Done<T> {
    pub key: usize,
    pub generation: u64,
    pub result: T,
}

/// A pool of helper threads.
pub struct Worker<T> {
    /// The queues of the sync and read lanes.
    lanes: Option<(Queue<T>, Queue<T>)>,
    done: Receiver<Done<T>>,
    /// Set when a wake-up is on its way and the reactor has not collected
    /// results since, so a burst of finished jobs costs one wake-up.
    wake_pending: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Starts `count` sync helpers and one read helper that wake the
    /// reactor with `waker`. Reads are short; syncs may wait on the disk
    /// side by side.
    pub fn start(count: usize, waker: Arc<Waker>) -> std::io::Result<Worker<T>> {
        let (done_tx, done_rx) = mpsc::channel();
        let wake_pending = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut lane = |name: &str, count: usize| -> std::io::Result<Queue<T>> {
            let (jobs_tx, jobs_rx) = mpsc::channel::<Ticket<T>>();
            let jobs_rx = Arc::new(Mutex::new(jobs_rx));
            for i in 0..count.max(1) {
                let helper = Helper {
                    jobs: Arc::clone(&jobs_rx),
                    done: done_tx.clone(),
                    waker: Arc::clone(&waker),
                    wake_pending: Arc::clone(&wake_pending),
                };
                let handle = thread::Builder::new()
                    .name(format!("ftpd-{name}-{i}"))
                    .spawn(move || helper.run())?;
                threads.push(handle);
            }
            Ok(jobs_tx)
        };
        let lanes = (lane("sync", count)?, lane("read", 1)?);
        Ok(Worker {
            lanes: Some(lanes),
            done: done_rx,
            wake_pending,
            threads,
        })
    }

    /// Queues a job for connection `key` of `generation`.
    pub fn submit(&self, lane: Lane, key: usize, generation: u64, job: Job<T>) {
        let queue = self.lanes.as_ref().map(|(sync, read)| match lane {
            Lane::Sync => sync,
            Lane::Read => read,
        });
        if let Some(jobs) = queue {
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
        self.lanes = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        self.lanes = None;
    }
}

/// One helper thread's ends of the channels.
struct Helper<T> {
    jobs: Arc<Mutex<Receiver<Ticket<T>>>>,
    done: Sender<Done<T>>,
    waker: Arc<Waker>,
    wake_pending: Arc<AtomicBool>,
}

impl<T> Helper<T> {
    fn run(self) {
        // Syncing and deleting burn kernel CPU; at a lower priority they
        // never delay the reactor's requests on a machine with few cores.
        // Not fatal if refused.
        let tid = rustix::thread::gettid();
        let _ = rustix::process::setpriority_process(Some(tid), HELPER_NICENESS);
        loop {
            // The lock is held only while waiting for the next job.
            let next = match self.jobs.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok((key, generation, job)) = next else {
                return; // the reactor has shut down
            };
            let result = job();
            let done = Done {
                key,
                generation,
                result,
            };
            if self.done.send(done).is_err() {
                return;
            }
            if !self.wake_pending.swap(true, Ordering::AcqRel) {
                // A failed wake-up only delays the result to the next event.
                let _ = self.waker.wake();
            }
        }
    }
}
