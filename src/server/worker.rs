//! Helper threads for disk work that could stall the reactor: changes to a
//! user's tree, syncing a finished upload, hashing a resumed prefix,
//! reading a directory.
//!
//! The reactor hands a job over with its owner (the user it works for) and
//! the key and generation of the connection that asked, parks that
//! connection, and goes on serving everyone else. A helper runs the job,
//! queues the result and wakes the reactor through a `mio::Waker`.
//!
//! Jobs go into one of two lanes with threads of their own, so a quick
//! listing never waits behind a sync that the disk takes tens of
//! milliseconds to finish. Within a lane every owner has a queue of its own
//! and the helpers take the owners in turn, each owner holding at most a
//! share of the lane's threads: one user with a thousand jobs queued delays
//! another user's job by one job, not a thousand. Long work (hashing a big
//! prefix, a big listing) is cut into slices that go to the back of their
//! owner's queue ([`Step::More`]), so no single job holds a thread for long.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

use mio::Waker;

/// Nice value of the helper threads (the reactor keeps the process's).
const HELPER_NICENESS: i32 = 10;

/// Threads of the read lane, and at most one of them per owner: listings
/// and hashing are short slices, so two threads keep one user's slices
/// from delaying everyone else's.
const READ_THREADS: usize = 2;

/// What a job did: finished with a result, or ran one slice of longer work
/// and hands back the rest, which waits its owner's next turn.
pub enum Step<T> {
    Done(T),
    More(Job<T>),
}

/// A unit of blocking work.
pub type Job<T> = Box<dyn FnOnce() -> Step<T> + Send>;

/// Which threads run a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Work that changes a user's tree or waits for the disk to make data
    /// durable or free space: mkdir, rmdir, rm, mv, opening, publishing
    /// and deleting uploads.
    Sync,
    /// Work that only reads: listings, hashing a prefix to resume.
    Read,
}

/// A job with the key and generation of the connection that asked.
struct Ticket<T> {
    key: usize,
    generation: u64,
    job: Job<T>,
}

/// A finished job: who asked (slab key and generation) and the result.
pub struct Done<T> {
    pub key: usize,
    pub generation: u64,
    pub result: T,
}

/// One owner's jobs in a lane.
struct OwnerQueue<T> {
    jobs: VecDeque<Ticket<T>>,
    running: usize,
    /// Whether the owner is in the lane's turn order.
    in_turn: bool,
}

impl<T> Default for OwnerQueue<T> {
    fn default() -> Self {
        OwnerQueue {
            jobs: VecDeque::new(),
            running: 0,
            in_turn: false,
        }
    }
}

struct LaneState<T> {
    owners: HashMap<String, OwnerQueue<T>>,
    /// Owners with jobs waiting and a thread to spare, in turn order.
    turn: VecDeque<String>,
    closed: bool,
}

/// A lane's queues, shared by its threads.
struct Queues<T> {
    state: Mutex<LaneState<T>>,
    wake: Condvar,
    /// Threads one owner may hold at once.
    per_owner: usize,
}

impl<T> Queues<T> {
    fn new(threads: usize) -> Queues<T> {
        Queues {
            state: Mutex::new(LaneState {
                owners: HashMap::new(),
                turn: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            // Half the threads (at least one), so another owner always
            // finds one free when the lane has two or more.
            per_owner: (threads / 2).max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LaneState<T>> {
        // A panicking job cannot leave the queues half-changed: they are
        // only touched between jobs.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, owner: &str, ticket: Ticket<T>) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        let queue = state.owners.entry(owner.to_owned()).or_default();
        queue.jobs.push_back(ticket);
        self.schedule(&mut state, owner);
        drop(state);
        self.wake.notify_one();
    }

    /// Puts `owner` in the turn order if it has work and a thread to spare.
    fn schedule(&self, state: &mut LaneState<T>, owner: &str) {
        let Some(queue) = state.owners.get_mut(owner) else {
            return;
        };
        if !queue.in_turn && !queue.jobs.is_empty() && queue.running < self.per_owner {
            queue.in_turn = true;
            state.turn.push_back(owner.to_owned());
        }
    }

    /// The next job, waiting for one; `None` once closed and drained.
    fn next(&self) -> Option<(String, Ticket<T>)> {
        let mut state = self.lock();
        loop {
            while let Some(owner) = state.turn.pop_front() {
                let Some(queue) = state.owners.get_mut(&owner) else {
                    continue;
                };
                queue.in_turn = false;
                let Some(ticket) = queue.jobs.pop_front() else {
                    continue;
                };
                queue.running += 1;
                self.schedule(&mut state, &owner);
                return Some((owner, ticket));
            }
            if state.closed {
                return None;
            }
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A job of `owner` ended; `rest` is its remaining work, if any.
    fn finished(&self, owner: &str, rest: Option<Ticket<T>>) {
        let mut state = self.lock();
        let closed = state.closed;
        let Some(queue) = state.owners.get_mut(owner) else {
            return;
        };
        queue.running = queue.running.saturating_sub(1);
        if let Some(ticket) = rest.filter(|_| !closed) {
            queue.jobs.push_back(ticket);
        }
        if queue.jobs.is_empty() && queue.running == 0 {
            state.owners.remove(owner);
        } else {
            self.schedule(&mut state, owner);
            drop(state);
            self.wake.notify_one();
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

/// A pool of helper threads.
pub struct Worker<T> {
    sync: Arc<Queues<T>>,
    read: Arc<Queues<T>>,
    done: Receiver<Done<T>>,
    /// Set when a wake-up is on its way and the reactor has not collected
    /// results since, so a burst of finished jobs costs one wake-up.
    wake_pending: Arc<AtomicBool>,
    /// Jobs submitted whose result is not queued yet.
    outstanding: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Starts `count` sync helpers and the read helpers, which wake the
    /// reactor with `waker`.
    pub fn start(count: usize, waker: Arc<Waker>) -> std::io::Result<Worker<T>> {
        let (done_tx, done_rx) = mpsc::channel();
        let wake_pending = Arc::new(AtomicBool::new(false));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let sync = Arc::new(Queues::new(count.max(1)));
        let read = Arc::new(Queues::new(READ_THREADS));
        let mut threads = Vec::new();
        for (name, queues, count) in [("sync", &sync, count.max(1)), ("read", &read, READ_THREADS)]
        {
            for i in 0..count {
                let helper = Helper {
                    queues: Arc::clone(queues),
                    done: done_tx.clone(),
                    waker: Arc::clone(&waker),
                    wake_pending: Arc::clone(&wake_pending),
                    outstanding: Arc::clone(&outstanding),
                };
                let handle = thread::Builder::new()
                    .name(format!("ftpd-{name}-{i}"))
                    .spawn(move || helper.run())?;
                threads.push(handle);
            }
        }
        Ok(Worker {
            sync,
            read,
            done: done_rx,
            wake_pending,
            outstanding,
            threads,
        })
    }

    /// Queues a job of `owner` for connection `key` of `generation`.
    pub fn submit(&self, lane: Lane, owner: &str, key: usize, generation: u64, job: Job<T>) {
        let queues = match lane {
            Lane::Sync => &self.sync,
            Lane::Read => &self.read,
        };
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        queues.push(
            owner,
            Ticket {
                key,
                generation,
                job,
            },
        );
    }

    /// Whether any job is queued or running, or its result not yet queued
    /// (for the fuzzing harness, which runs each input to its end).
    pub fn busy(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) > 0
    }

    /// Results that are ready, without waiting.
    pub fn finished(&self) -> impl Iterator<Item = Done<T>> + '_ {
        // Cleared before draining: a job finishing after this point wakes
        // the reactor again, so no result is left behind unannounced.
        self.wake_pending.store(false, Ordering::Release);
        self.done.try_iter()
    }

    /// Waits for queued jobs to finish (longer work stops at its next
    /// slice) and stops the threads.
    pub fn shutdown(&mut self) {
        self.sync.close();
        self.read.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        self.sync.close();
        self.read.close();
    }
}

/// One helper thread's ends of the queues.
struct Helper<T> {
    queues: Arc<Queues<T>>,
    done: Sender<Done<T>>,
    waker: Arc<Waker>,
    wake_pending: Arc<AtomicBool>,
    outstanding: Arc<AtomicUsize>,
}

impl<T> Helper<T> {
    fn run(self) {
        // Syncing and deleting burn kernel CPU; at a lower priority they
        // never delay the reactor's requests on a machine with few cores.
        // Not fatal if refused.
        let tid = rustix::thread::gettid();
        let _ = rustix::process::setpriority_process(Some(tid), HELPER_NICENESS);
        while let Some((owner, ticket)) = self.queues.next() {
            let Ticket {
                key,
                generation,
                job,
            } = ticket;
            match job() {
                Step::More(job) => {
                    let rest = Ticket {
                        key,
                        generation,
                        job,
                    };
                    self.queues.finished(&owner, Some(rest));
                }
                Step::Done(result) => {
                    self.queues.finished(&owner, None);
                    let done = Done {
                        key,
                        generation,
                        result,
                    };
                    let sent = self.done.send(done);
                    self.outstanding.fetch_sub(1, Ordering::AcqRel);
                    if sent.is_err() {
                        return;
                    }
                    if !self.wake_pending.swap(true, Ordering::AcqRel) {
                        // A failed wake-up only delays the result to the
                        // next event.
                        let _ = self.waker.wake();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn worker(threads: usize) -> (Worker<(String, u32)>, mio::Poll) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        (Worker::start(threads, waker).unwrap(), poll)
    }

    fn collect(w: &Worker<(String, u32)>, n: usize) -> Vec<(String, u32)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            got.extend(w.finished().map(|d| d.result));
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    #[test]
    fn owners_take_turns() {
        let (w, _poll) = worker(1);
        // Hold the only thread until everything is queued.
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let g = Arc::clone(&gate);
        w.submit(
            Lane::Sync,
            "x",
            0,
            0,
            Box::new(move || {
                drop(g.lock());
                Step::Done(("x".into(), 0))
            }),
        );
        std::thread::sleep(Duration::from_millis(20));
        for i in 1..=50 {
            w.submit(
                Lane::Sync,
                "a",
                0,
                0,
                Box::new(move || Step::Done(("a".into(), i))),
            );
        }
        w.submit(
            Lane::Sync,
            "b",
            0,
            0,
            Box::new(|| Step::Done(("b".into(), 1))),
        );
        drop(held);
        let got = collect(&w, 52);
        let b_at = got.iter().position(|(o, _)| o == "b").unwrap();
        assert!(b_at <= 3, "b waited behind {b_at} jobs: {got:?}");
        // One owner's jobs keep their order.
        let a: Vec<u32> = got.iter().filter(|(o, _)| o == "a").map(|r| r.1).collect();
        assert_eq!(a, (1..=50).collect::<Vec<_>>());
    }

    #[test]
    fn long_work_in_slices_lets_others_in() {
        let (w, _poll) = worker(1);
        fn slices(left: u32) -> Job<(String, u32)> {
            Box::new(move || {
                std::thread::sleep(Duration::from_millis(2));
                if left == 0 {
                    Step::Done(("long".into(), 0))
                } else {
                    Step::More(slices(left - 1))
                }
            })
        }
        w.submit(Lane::Sync, "a", 0, 0, slices(100));
        std::thread::sleep(Duration::from_millis(10));
        w.submit(
            Lane::Sync,
            "b",
            0,
            0,
            Box::new(|| Step::Done(("short".into(), 1))),
        );
        let got = collect(&w, 2);
        assert_eq!(got.first().map(|r| r.0.as_str()), Some("short"), "{got:?}");
        assert_eq!(got.len(), 2);
    }
}
