//! Drives one session's state machine without a socket or a reactor, for
//! fuzzing and property tests: requests in, encoded reply frames out.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Poll, Token, Waker};

use super::accounts::Accounts;
use super::guard::LoginGuard;
use super::session::{self, Ctx, Phase, State};
use super::worker::Worker;
use super::{Config, GuardConfig};
use crate::buf::{Buffer, Bypass};
use crate::proto::Request;

/// A session with its own users, disk helpers and send buffer.
pub struct Harness {
    ctx: Ctx,
    st: State,
    tx: Buffer,
    bypass: Option<Scripted>,
    // The worker's waker is registered here; it must outlive the worker.
    _poll: Poll,
}

impl Harness {
    /// A session served from the data folder `root` (users already added).
    pub fn new(root: &Path) -> anyhow::Result<Harness> {
        let cfg = Config {
            listen: "127.0.0.1:0".parse()?,
            root: root.to_path_buf(),
            max_conns: 16,
            max_conns_per_ip: 16,
            max_sessions_per_user: 0,
            idle_timeout: Duration::from_secs(300),
            login_timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(60),
            partial_ttl: Duration::from_secs(3600),
            guard: GuardConfig {
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(1),
                pair_limit: 1_000_000,
                addr_limit: 1_000_000,
                lockout: Duration::from_secs(1),
            },
            disk_threads: 1,
            tls: None,
        };
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), Token(0))?);
        let accounts = Accounts::load(root, cfg.partial_ttl)?;
        let guard = LoginGuard::new(cfg.guard.clone());
        let worker = Worker::start(1, waker)?;
        let peer = "127.0.0.1:40000".parse()?;
        Ok(Harness {
            ctx: Ctx::new(cfg, accounts, guard, worker),
            st: State::new(peer, 0, 1, Instant::now(), false),
            tx: Buffer::with_cap(crate::server::conn::TX_XFER),
            bypass: None,
            _poll: poll,
        })
    }

    /// Like [`Harness::new`], with a stand-in for the TLS layer's way past
    /// the send buffer that takes, call after call, as many bytes as
    /// `takes` says in turn (0: none; more than offered: all).
    pub fn with_bypass(root: &Path, takes: Vec<usize>) -> anyhow::Result<Harness> {
        let mut harness = Harness::new(root)?;
        harness.bypass = Some(Scripted {
            takes,
            turn: 0,
            taken: Vec::new(),
        });
        Ok(harness)
    }

    /// True once the session decided to close.
    pub fn closing(&self) -> bool {
        matches!(self.st.phase, Phase::Closing { .. })
    }

    /// True once a login succeeded.
    pub fn logged_in(&self) -> bool {
        self.st.login.is_some()
    }

    /// Handles one request (ignored once closing, as the server discards
    /// input then) and returns the bytes of every reply it caused.
    pub fn feed(&mut self, req: Request) -> Vec<u8> {
        if !self.closing() && self.st.phase.wants_input() {
            self.ctx.now = Instant::now();
            session::handle(&mut self.st, &mut self.tx, &mut self.ctx, req);
        }
        let mut out = Vec::new();
        self.settle(&mut out);
        out.extend_from_slice(self.tx.data());
        self.tx.clear();
        out
    }

    /// Runs what the reactor would: streaming replies, disk jobs, a failed
    /// login's delayed answer.
    fn settle(&mut self, out: &mut Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            loop {
                let bypass = self.bypass.as_mut().map(|b| b as &mut dyn Bypass);
                let queued =
                    session::pump(&mut self.st, &mut self.tx, &mut self.ctx, 64 * 1024, bypass);
                // What the bypass took left before what waits in `tx`.
                if let Some(bypass) = &mut self.bypass {
                    out.append(&mut bypass.taken);
                }
                if queued == 0 {
                    break;
                }
                out.extend_from_slice(self.tx.data());
                self.tx.clear();
            }
            // Drain as a reading client would, so streaming can go on.
            out.extend_from_slice(self.tx.data());
            self.tx.clear();
            match self.st.phase {
                Phase::Waiting => {
                    let done: Vec<_> = self.ctx.worker.finished().collect();
                    if done.is_empty() {
                        if Instant::now() > deadline {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    for d in done {
                        session::job_done(&mut self.st, &mut self.tx, &mut self.ctx, d.result);
                    }
                }
                Phase::Penalty { .. } => {
                    session::timeout(&mut self.st, &mut self.tx, &mut self.ctx);
                }
                Phase::Listing(_) | Phase::Sending(_) => {}
                _ => return self.finish_server_jobs(),
            }
        }
    }

    /// Waits (bounded) until no disk job is left, handing the server's own
    /// jobs (deleting a partial, closing a file) their results, so each
    /// input ends with nothing still running.
    fn finish_server_jobs(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ctx.worker.busy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let done: Vec<_> = self.ctx.worker.finished().collect();
        for d in done {
            session::orphaned(&mut self.ctx, d.result);
        }
    }
}

/// The harness's bypass: takes what its script says, keeps it for the output.
struct Scripted {
    takes: Vec<usize>,
    turn: usize,
    taken: Vec<u8>,
}

impl Bypass for Scripted {
    fn take(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<usize> {
        let want = match self.takes.get(self.turn % self.takes.len().max(1)) {
            Some(&n) => n,
            None => usize::MAX,
        };
        self.turn += 1;
        let head_part = want.min(head.len());
        let body_part = (want - head_part).min(body.len());
        self.taken.extend_from_slice(&head[..head_part]);
        self.taken.extend_from_slice(&body[..body_part]);
        Ok(head_part + body_part)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        session::closed(&mut self.st, &mut self.ctx);
        self.finish_server_jobs();
        // Joined, so a fuzzing run's leak check never sees a helper thread
        // still on its way out.
        self.ctx.worker.shutdown();
    }
}
