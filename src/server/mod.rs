//! The reactor: one thread, one `mio::Poll`, a slab of connections.
//!
//! Each turn: wait for readiness (or the next deadline), drive every
//! connection that is ready, hand finished disk jobs back to their
//! sessions, and run due timeouts. Sockets are registered once, READABLE |
//! WRITABLE, edge-triggered; readiness is remembered per connection (see
//! `conn.rs`), so a connection paused by backpressure resumes without a
//! re-registration. A connection that used up its turn's budget goes on a
//! ready queue and the next poll does not wait.

mod accounts;
mod addr;
mod batch;
mod conn;
mod fds;
pub mod guard;
#[doc(hidden)]
pub mod harness;
pub mod log;
mod pacing;
mod session;
mod timers;
mod transfer;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use self::accounts::Accounts;
use self::addr::AddrKey;
use self::conn::{Conn, Drive, Pending};
pub use self::guard::GuardConfig;
use self::guard::LoginGuard;
use self::pacing::{Pacer, Slot, SlotTable};
use self::session::{Ctx, JobResult};
use self::timers::Timers;
use self::worker::{Lane, Step, Worker};
use crate::buf::Buffer;
use crate::log;
use crate::proto::{ErrorCode, Reply};
use crate::tls::identity;
use crate::tls::link::Link;

/// Server settings (from the command line).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub root: PathBuf,
    pub max_conns: usize,
    pub max_conns_per_ip: usize,
    pub max_sessions_per_user: u32,
    pub idle_timeout: Duration,
    pub login_timeout: Duration,
    pub stall_timeout: Duration,
    pub partial_ttl: Duration,
    pub guard: GuardConfig,
    pub disk_threads: usize,
    /// Where the TLS identity comes from; `None` is `--plaintext`.
    pub tls: Option<identity::Source>,
}

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
/// Tokens below this are the server's own; the rest are slab keys + this.
const FIRST_CONN: usize = 3;

fn conn_token(key: usize) -> Token {
    Token(key + FIRST_CONN)
}

fn conn_key(token: Token) -> Option<usize> {
    token.0.checked_sub(FIRST_CONN)
}

/// Pending connections the kernel may queue; the kernel caps this at
/// `net.core.somaxconn`, which is 4096 on current kernels.
const BACKLOG: i32 = 65_535;

/// How often a paused accept loop (out of file descriptors) tries again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How often stale partial uploads are swept while the server runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Slab key of jobs that belong to the server, not to a connection.
pub(crate) const SERVER_JOB: usize = usize::MAX;

/// Events handled per poll.
const EVENTS: usize = 1024;

/// The running server.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    signals: Signals,
    conns: Slab<Conn>,
    ctx: Ctx,
    /// Shared receive space: sockets are read into it and whole frames are
    /// handled in place (see `Conn::read`).
    scratch: Buffer,
    timers: Timers,
    /// Limits the TLS handshakes worked on at once.
    pacer: Pacer,
    ready: VecDeque<(usize, u64)>,
    /// Bytes each user's connections moved in this pass (see
    /// [`conn::USER_PASS_BUDGET`]).
    user_pass: HashMap<String, usize>,
    /// Connections open per client (an IPv4 address or an IPv6 /64).
    per_ip: HashMap<AddrKey, usize>,
    next_generation: u64,
    accept_paused: bool,
    next_sweep: Instant,
    /// The TLS configuration new connections get (reloaded on SIGHUP);
    /// `None` with `--plaintext`.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Server {
    /// Loads users, binds the listener and readies the reactor.
    pub fn bind(cfg: Config) -> anyhow::Result<Server> {
        use anyhow::Context;
        std::fs::create_dir_all(&cfg.root)
            .with_context(|| format!("creating data folder {}", cfg.root.display()))?;
        let accounts = Accounts::load(&cfg.root, cfg.partial_ttl)
            .with_context(|| format!("loading users from {}", cfg.root.display()))?;
        let tls = match &cfg.tls {
            Some(source) => {
                let identity = source.load().context("loading the TLS identity")?;
                log!(Info, "TLS key fingerprint {}", identity.fingerprint);
                Some(identity.config)
            }
            None => {
                log!(
                    Warn,
                    "--plaintext: sessions are NOT encrypted; use only on a trusted link"
                );
                None
            }
        };
        let poll = Poll::new()?;
        let listener =
            listen(cfg.listen).with_context(|| format!("listening on {}", cfg.listen))?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let worker = Worker::start(cfg.disk_threads, waker)?;
        let guard = LoginGuard::new(cfg.guard.clone());
        Ok(Server {
            poll,
            listener,
            signals,
            conns: Slab::new(),
            ctx: Ctx::new(cfg, accounts, guard, worker),
            scratch: shared_scratch(),
            timers: Timers::default(),
            pacer: Pacer::default(),
            ready: VecDeque::new(),
            user_pass: HashMap::new(),
            per_ip: HashMap::new(),
            next_generation: 0,
            accept_paused: false,
            next_sweep: Instant::now() + SWEEP_EVERY,
            tls,
        })
    }

    /// The address the listener is bound to (the real port when asked for 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until SIGINT or SIGTERM.
    pub fn run(mut self) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue; // a signal; the signal pipe tells which
                }
                return Err(e.into());
            }
            self.ctx.now = Instant::now();
            self.user_pass.clear();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    SIGNALS => {
                        if self.on_signals() {
                            self.shutdown();
                            return Ok(());
                        }
                    }
                    WAKER => self.on_jobs(),
                    token => {
                        // Events for a closed key are expected (mio may report
                        // stale readiness); the generation check is in `drive`.
                        if let Some(key) = conn_key(token)
                            && let Some(conn) = self.conns.get_mut(key)
                        {
                            conn.can_read |=
                                event.is_readable() || event.is_read_closed() || event.is_error();
                            conn.can_write |=
                                event.is_writable() || event.is_write_closed() || event.is_error();
                            let generation = conn.st.generation;
                            self.drive(key, generation);
                        }
                    }
                }
            }
            self.on_jobs();
            self.refill_slots();
            self.run_ready();
            self.run_timers();
            self.refill_slots();
            if self.accept_paused && self.conns.len() < self.ctx.cfg.max_conns {
                self.accept();
            }
            if self.ctx.now >= self.next_sweep {
                self.next_sweep = self.ctx.now + SWEEP_EVERY;
                self.sweep_partials();
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut timeout = self
            .timers
            .next()
            .map(|at| at.saturating_duration_since(Instant::now()));
        if self.accept_paused {
            timeout = Some(timeout.map_or(ACCEPT_RETRY, |t| t.min(ACCEPT_RETRY)));
        }
        if let Some(at) = self.pacer.next_expiry() {
            let lease = at.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(lease, |t| t.min(lease)));
        }
        let sweep = self.next_sweep.saturating_duration_since(Instant::now());
        Some(timeout.map_or(sweep, |t| t.min(sweep)))
    }

    /// Deletes partial uploads older than their time to live, on the disk
    /// threads (an upload in progress writes its partial, so it stays young).
    fn sweep_partials(&mut self) {
        let ttl = self.ctx.accounts.partial_ttl();
        for (user, jail, in_use) in self.ctx.accounts.sweep_list() {
            let owner = user.clone();
            let job = move || {
                let freed = jail.clean_stale_partials(ttl, &in_use);
                Step::Done(JobResult::Swept(user, freed))
            };
            self.ctx
                .worker
                .submit(Lane::Sync, &owner, SERVER_JOB, 0, Box::new(job));
        }
    }

    /// Accepts until the backlog is empty or a limit is reached.
    fn accept(&mut self) {
        self.accept_paused = false;
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A client that gave up while queued, or a signal: go on.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // Out of file descriptors (EMFILE/ENFILE) or memory:
                    // leave the rest queued and retry after a close or a
                    // short while, instead of spinning on the same error.
                    log!(Warn, "accept failed: {e}; pausing accepts");
                    self.accept_paused = true;
                    return;
                }
            };
            if self.conns.len() >= self.ctx.cfg.max_conns {
                turn_away(
                    stream,
                    peer,
                    "server full: too many connections; try again later",
                );
                continue;
            }
            let per_ip = self
                .per_ip
                .get(&AddrKey::of(peer.ip()))
                .copied()
                .unwrap_or(0);
            if per_ip >= self.ctx.cfg.max_conns_per_ip {
                turn_away(stream, peer, "too many connections from your address");
                continue;
            }
            self.add(stream, peer);
        }
    }

    fn add(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, conn_token(key), interest)
        {
            log!(Warn, "{peer}: register failed: {e}");
            return;
        }
        let link = match &self.tls {
            None => Link::Plain,
            Some(config) => match rustls::ServerConnection::new(Arc::clone(config)) {
                Ok(conn) => Link::server(conn),
                Err(e) => {
                    log!(Error, "{peer}: cannot start TLS: {e}");
                    let _ = self.poll.registry().deregister(&mut stream);
                    return;
                }
            },
        };
        self.next_generation += 1;
        let generation = self.next_generation;
        entry.insert(Conn::new(stream, link, peer, key, generation, self.ctx.now));
        self.ctx.fds.set_conns(self.conns.len());
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        *self.per_ip.entry(AddrKey::of(peer.ip())).or_insert(0) += 1;
        log!(Info, "{peer}: connected");
        let at = conn.deadline(&self.ctx);
        conn.st.armed = Some(at);
        self.timers.push(at, key, generation);
    }

    /// Drives one connection and acts on the outcome.
    fn drive(&mut self, key: usize, generation: u64) {
        let Some(conn) = self
            .conns
            .get_mut(key)
            .filter(|c| c.st.generation == generation)
        else {
            return;
        };
        if !paced(&mut self.pacer, conn, key, self.ctx.now) {
            return;
        }
        let user = conn.st.login.as_ref().map(|l| l.user.as_str());
        let spent = user
            .and_then(|u| self.user_pass.get(u))
            .copied()
            .unwrap_or(0);
        if spent >= conn::USER_PASS_BUDGET {
            // This user had their share of the pass; the next one serves
            // them again (readiness is remembered, so nothing is lost).
            self.ready.push_back((key, generation));
            return;
        }
        let outcome = conn.drive(&mut self.ctx, &mut self.scratch);
        if conn.slot == Slot::Holding && !conn.is_handshaking() {
            self.pacer.release(&mut conn.slot);
        }
        if let Some(login) = &conn.st.login {
            let moved = conn.moved();
            match self.user_pass.get_mut(&login.user) {
                Some(spent) => *spent += moved,
                None => {
                    self.user_pass.insert(login.user.clone(), moved);
                }
            }
        }
        match outcome {
            Drive::Idle => self.arm(key),
            Drive::Again => {
                self.arm(key);
                self.ready.push_back((key, generation));
            }
            Drive::Close => self.close(key),
        }
    }

    /// Admits waiting handshakes into the slots free now.
    fn refill_slots(&mut self) {
        self.pacer
            .refill(&mut self.conns, self.ctx.now, &mut self.ready);
    }

    /// Makes sure the timer heap holds the connection's current deadline.
    fn arm(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            let at = conn.deadline(&self.ctx);
            if conn.st.armed.is_none_or(|armed| at < armed) {
                conn.st.armed = Some(at);
                self.timers.push(at, key, conn.st.generation);
            }
        }
    }

    fn run_ready(&mut self) {
        for _ in 0..self.ready.len() {
            if let Some((key, generation)) = self.ready.pop_front() {
                self.drive(key, generation);
            }
        }
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        self.ctx.now = now;
        while let Some((at, key, generation)) = self.timers.pop_due(now) {
            let Some(conn) = self
                .conns
                .get_mut(key)
                .filter(|c| c.st.generation == generation)
            else {
                continue; // the connection is gone
            };
            if conn.st.armed != Some(at) {
                continue; // superseded by an earlier entry
            }
            conn.st.armed = None;
            let deadline = conn.deadline(&self.ctx);
            let outcome = if deadline <= now && conn.slot == Slot::Waiting {
                // Nothing was read from it: there is nobody to tell.
                log!(
                    Info,
                    "{}: login timed out waiting to be served",
                    conn.st.peer
                );
                Drive::Close
            } else if deadline <= now {
                conn.on_timeout(&mut self.ctx, &mut self.scratch)
            } else {
                Drive::Idle
            };
            match outcome {
                Drive::Close => self.close(key),
                Drive::Idle => self.arm(key),
                Drive::Again => {
                    self.arm(key);
                    self.ready.push_back((key, generation));
                }
            }
        }
    }

    fn on_jobs(&mut self) {
        let done: Vec<_> = self.ctx.worker.finished().collect();
        for job in done {
            match self
                .conns
                .get_mut(job.key)
                .filter(|c| c.st.generation == job.generation)
            {
                Some(conn) => match conn.on_job(&mut self.ctx, &mut self.scratch, job.result) {
                    Drive::Close => self.close(job.key),
                    Drive::Idle => self.arm(job.key),
                    Drive::Again => {
                        self.arm(job.key);
                        self.ready.push_back((job.key, job.generation));
                    }
                },
                None => session::orphaned(&mut self.ctx, job.result),
            }
        }
    }

    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        let mut conn = self.conns.remove(key);
        self.pacer.release(&mut conn.slot);
        self.ctx.fds.set_conns(self.conns.len());
        let _ = self.poll.registry().deregister(&mut conn.stream);
        session::closed(&mut conn.st, &mut self.ctx);
        let client = AddrKey::of(conn.st.peer.ip());
        if let Some(count) = self.per_ip.get_mut(&client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_ip.remove(&client);
            }
        }
        log!(Info, "{}: disconnected", conn.st.peer);
        if self.accept_paused {
            self.accept();
        }
    }

    /// Loads the TLS identity again for new connections (`--tls-cert` and
    /// `--tls-key` renewed); a broken file keeps the old one.
    fn reload_tls(&mut self) {
        let (Some(source), Some(_)) = (&self.ctx.cfg.tls, &self.tls) else {
            return;
        };
        match source.load() {
            Ok(identity) => {
                log!(
                    Info,
                    "SIGHUP: TLS identity reloaded, key fingerprint {}",
                    identity.fingerprint
                );
                self.tls = Some(identity.config);
            }
            Err(e) => log!(
                Error,
                "SIGHUP: TLS identity not reloaded, keeping the old one: {e}"
            ),
        }
    }

    /// Handles pending signals; returns true when it is time to stop.
    fn on_signals(&mut self) -> bool {
        let mut stop = false;
        for signal in self.signals.pending() {
            match signal {
                SIGHUP => {
                    self.reload_tls();
                    log!(Info, "SIGHUP: reloading the user file");
                    match self.ctx.accounts.reload() {
                        Ok(new) => session::open_homes(&mut self.ctx, new),
                        Err(e) => log!(Error, "user file not reloaded: {e:#}"),
                    }
                }
                _ => stop = true,
            }
        }
        stop
    }

    /// Stops accepting, ends every session (uploads keep their partial
    /// files), and waits for disk jobs in flight.
    fn shutdown(&mut self) {
        log!(
            Info,
            "shutting down: closing {} connections",
            self.conns.len()
        );
        let _ = self.poll.registry().deregister(&mut self.listener);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key);
        }
        self.ctx.worker.shutdown();
        let done: Vec<JobResult> = self.ctx.worker.finished().map(|d| d.result).collect();
        for result in done {
            session::orphaned(&mut self.ctx, result);
        }
    }
}

fn shared_scratch() -> Buffer {
    // Each read is capped at what the reading connection could hold (see
    // `Conn::read`), so the scratch space never needs more than that.
    let mut scratch = Buffer::with_cap(conn::RX_CAP);
    scratch.set_keep(true);
    scratch
}

/// Binds with a large backlog (std's `TcpListener::bind` uses 128).
fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use rustix::net::{AddressFamily, SocketType, ipproto, sockopt};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        Some(ipproto::TCP),
    )?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(std::net::TcpListener::from(fd))
}

/// Tells a client it cannot be served, without waiting on it: one small
/// frame into an empty socket buffer always fits.
fn turn_away(stream: TcpStream, peer: SocketAddr, message: &str) {
    log!(Info, "{peer}: turned away: {message}");
    let reply = Reply::Error {
        code: ErrorCode::TooManySessions,
        message: message.to_string(),
    };
    if let Ok(bytes) = crate::frame::encode(&reply) {
        let _ = io::Write::write(&mut &stream, &bytes);
    }
}

/// Whether the handshake pacer lets connection `key` be driven now: a TLS
/// connection takes a slot once its first bytes are there, or waits for
/// one (see [`pacing`]).
fn paced(pacer: &mut Pacer, conn: &mut Conn, key: usize, now: Instant) -> bool {
    match conn.slot {
        Slot::Holding | Slot::Done => true,
        Slot::Waiting => false,
        Slot::Unasked if !conn.is_handshaking() => {
            conn.slot = Slot::Done;
            true
        }
        Slot::Unasked => match conn.pending() {
            // Its readable event comes when something arrives.
            Pending::Nothing => false,
            // Reading will find the end and close: no slot needed.
            Pending::EndOrError => true,
            Pending::Bytes => pacer.ask(&mut conn.slot, key, conn.st.generation, now),
        },
    }
}

impl SlotTable for Slab<Conn> {
    fn slot(&mut self, key: usize, generation: u64) -> Option<&mut Slot> {
        self.get_mut(key)
            .filter(|c| c.st.generation == generation)
            .map(|c| &mut c.slot)
    }
}
