//! The reactor: one thread, one `mio::Poll`, a slab of sessions.
//!
//! A scenario adds groups of sessions (each group runs one [`Script`]) and
//! calls [`Engine::run_until`] with a condition. Each turn: start sessions
//! that are due (all at once, or paced by `--connect-rate` and
//! `--max-connecting`), wait for readiness, drive every session that is
//! ready, wake the sessions whose think time is over, drive those that
//! used up their budget last turn, and every [`TICK`] check deadlines,
//! release held sessions, sample the server's memory and redraw the
//! progress bar.
//!
//! Timeouts are a scan of all sessions per tick rather than a timer heap:
//! at 10 ticks a second, 10,000 sessions cost 100,000 comparisons a second,
//! which is noise next to the socket calls. Think times (`--think`) need
//! millisecond precision, so they do use a heap ([`Ctx::timers`]): the
//! poll's timeout runs to the earliest wake-up at the latest, and the
//! thread never sleeps other than in the poll.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ftpd::proto::KdfParams;
use ftpd::scram::ClientKeys;
use ftpd::tls::link::Link;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::procfs::{self, Mem};
use crate::progress::Progress;
use crate::session::{Flow, Script, Session};
use crate::stats::{Fail, FailKind, GroupStats};
use crate::users::User;

/// How often deadlines are checked and figures sampled.
pub const TICK: Duration = Duration::from_millis(100);

/// Events taken per poll.
const EVENTS: usize = 1024;

/// Sessions use their slab key as token; this one is above any key.
const SIGNALS: Token = Token(usize::MAX);

/// A user's keys, derived once from the password and reused by every
/// session of that user (see `scenario::prime`).
pub struct UserKeys {
    pub salt: Vec<u8>,
    pub kdf: KdfParams,
    pub keys: ClientKeys,
}

/// Sessions that run the same script.
pub struct Group {
    pub name: &'static str,
    pub script: Script,
    pub count: usize,
    /// Index of the next session to start.
    pub next: usize,
    pub stats: GroupStats,
}

impl Group {
    /// Every session has ended, well or not.
    pub fn settled(&self) -> bool {
        self.stats.settled() == self.count as u64
    }

    /// Every session is holding or has ended.
    pub fn parked(&self) -> bool {
        self.stats.settled() + self.stats.holding == self.count as u64
    }
}

/// What sessions share: users, keys, scripts, counters, the clock.
pub struct Ctx {
    /// The time of the current turn (one clock read per turn).
    pub now: Instant,
    pub users: Vec<User>,
    /// Per user: keys derived from the password.
    pub keys: Vec<Option<UserKeys>>,
    /// Per user: salt and scrypt settings seen by a probe.
    pub probed: Vec<Option<(Vec<u8>, KdfParams)>>,
    pub groups: Vec<Group>,
    /// Our process id, in remote file names.
    pub pid: u32,
    /// Folded into every file's content, so runs differ.
    pub nonce: u64,
    /// postcard's variant index of `Request::Chunk`.
    pub chunk_tag: u8,
    /// While open, scripts repeat their `repeat` part.
    pub loop_until: Option<Instant>,
    /// Held sessions go on from this moment.
    pub release_at: Option<Instant>,
    /// Reused encoding space for requests.
    pub scratch: Vec<u8>,
    /// Sessions thinking, by wake-up time: (when, slab key, generation).
    /// An entry whose session has ended (its generation no longer in the
    /// slab at that key) or is not thinking any more is skipped.
    pub timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// State of the jitter's random numbers (splitmix64).
    pub rng: u64,
    /// TLS for every session; `None` with `--plaintext`.
    pub tls: Option<TlsClient>,
}

/// What every TLS session of a run shares.
pub struct TlsClient {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl Ctx {
    /// `mean` scaled by a uniformly random factor in [0.5, 1.5), so that
    /// sessions with the same think time do not move in step.
    pub fn jitter(&mut self, mean: Duration) -> Duration {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits as a fraction in [0, 1).
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        mean.mul_f64(0.5 + unit)
    }
}

/// How sessions are started.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// Sessions started per second (`None`: no limit).
    pub rate: Option<f64>,
    /// Most sessions whose TCP handshake is in flight.
    pub max_connecting: Option<usize>,
}

/// Why [`Engine::run_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Reached,
    /// `--timeout` passed; every session left was failed.
    Deadline,
    /// SIGINT or SIGTERM; every session left was failed.
    Interrupted,
}

/// The server process being watched (`--server-pid`).
pub struct Monitor {
    pub pid: u32,
    /// Largest `VmRSS` seen by sampling.
    pub peak_rss_kib: u64,
}

impl Monitor {
    pub fn sample(&mut self) -> Option<Mem> {
        let mem = procfs::mem(self.pid).ok()?;
        self.peak_rss_kib = self.peak_rss_kib.max(mem.rss_kib);
        Some(mem)
    }
}

pub struct Engine {
    poll: Poll,
    signals: Signals,
    sessions: Slab<Session>,
    /// Sessions that used up their budget: (key, generation).
    ready: VecDeque<(usize, u64)>,
    /// Groups with sessions not started yet, in order.
    pending: VecDeque<usize>,
    pub cx: Ctx,
    addr: SocketAddr,
    pacing: Pacing,
    /// While pacing: when it began and how many sessions it started.
    paced: Option<(Instant, u64)>,
    connecting: usize,
    next_generation: u64,
    deadline: Instant,
    step_timeout: Duration,
    next_tick: Instant,
    pub monitor: Option<Monitor>,
    pub progress: Progress,
    interrupted: bool,
}

impl Engine {
    pub fn new(
        addr: SocketAddr,
        cx: Ctx,
        pacing: Pacing,
        deadline: Instant,
        step_timeout: Duration,
        progress: Progress,
    ) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        // A second Ctrl-C ends the process at once, in case the first one
        // is slow to act on (it is only seen between turns).
        let again = Arc::new(AtomicBool::new(false));
        for signal in [SIGINT, SIGTERM] {
            signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&again))?;
            signal_hook::flag::register(signal, Arc::clone(&again))?;
        }
        Ok(Engine {
            poll,
            signals,
            sessions: Slab::new(),
            ready: VecDeque::new(),
            pending: VecDeque::new(),
            cx,
            addr,
            pacing,
            paced: None,
            connecting: 0,
            next_generation: 0,
            deadline,
            step_timeout,
            next_tick: Instant::now(),
            monitor: None,
            progress,
            interrupted: false,
        })
    }

    /// Adds `count` sessions running `script`; they start at the next turn.
    /// Session `i` logs in as user `i % users`.
    pub fn add_group(&mut self, name: &'static str, script: Script, count: usize) -> usize {
        let id = self.cx.groups.len();
        self.cx.groups.push(Group {
            name,
            script,
            count,
            next: 0,
            stats: GroupStats::default(),
        });
        if count > 0 {
            self.pending.push_back(id);
        }
        id
    }

    pub fn group(&self, id: usize) -> &Group {
        &self.cx.groups[id]
    }

    /// Runs the reactor until `done` holds, the deadline passes or a
    /// signal arrives.
    pub fn run_until(&mut self, mut done: impl FnMut(&Engine) -> bool) -> Outcome {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            self.cx.now = Instant::now();
            if done(self) {
                self.update_progress();
                return Outcome::Reached;
            }
            if self.interrupted {
                self.abort_all(FailKind::Interrupted, "interrupted");
                return Outcome::Interrupted;
            }
            if self.cx.now >= self.deadline {
                self.abort_all(FailKind::Timeout, "the run's --timeout passed");
                return Outcome::Deadline;
            }
            self.start_pending();
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.progress.println(&format!("ftpload: poll failed: {e}"));
                    self.interrupted = true;
                }
                continue;
            }
            self.cx.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    SIGNALS => {
                        if self.signals.pending().next().is_some() {
                            self.interrupted = true;
                        }
                    }
                    Token(key) => {
                        if let Some(s) = self.sessions.get_mut(key) {
                            s.st.can_read |=
                                event.is_readable() || event.is_read_closed() || event.is_error();
                            s.st.can_write |=
                                event.is_writable() || event.is_write_closed() || event.is_error();
                            self.drive(key, None);
                        }
                    }
                }
            }
            self.wake_due();
            for _ in 0..self.ready.len() {
                if let Some((key, generation)) = self.ready.pop_front() {
                    self.drive(key, Some(generation));
                }
            }
            if self.cx.now >= self.next_tick {
                self.tick();
            }
        }
    }

    fn poll_timeout(&self) -> Duration {
        if !self.ready.is_empty() {
            return Duration::ZERO;
        }
        let now = self.cx.now;
        let mut until = self.next_tick.min(self.deadline);
        if let Some(at) = self.next_start() {
            until = until.min(at);
        }
        if let Some(Reverse((at, _, _))) = self.cx.timers.peek() {
            until = until.min(*at);
        }
        until.saturating_duration_since(now)
    }

    /// When the rate limit lets the next session start, if one waits on it.
    fn next_start(&self) -> Option<Instant> {
        let rate = self.pacing.rate?;
        let (since, started) = self.paced?;
        if self.pending.is_empty() {
            return None;
        }
        Some(since + Duration::from_secs_f64(started as f64 / rate))
    }

    fn may_start(&mut self) -> bool {
        if self
            .pacing
            .max_connecting
            .is_some_and(|max| self.connecting >= max)
        {
            return false;
        }
        let Some(rate) = self.pacing.rate else {
            return true;
        };
        let now = self.cx.now;
        let (since, started) = *self.paced.get_or_insert((now, 0));
        let allowed = (now.duration_since(since).as_secs_f64() * rate) as u64 + 1;
        started < allowed
    }

    fn start_pending(&mut self) {
        while let Some(&g) = self.pending.front() {
            if !self.may_start() {
                return;
            }
            let group = &mut self.cx.groups[g];
            let index = group.next;
            group.next += 1;
            if group.next == group.count {
                self.pending.pop_front();
            }
            if let Some((_, started)) = &mut self.paced {
                *started += 1;
            }
            self.spawn(g, index as u64);
        }
        // Everything pending has started: the next group paces afresh.
        self.paced = None;
    }

    fn spawn(&mut self, g: usize, index: u64) {
        let user = (index % self.cx.users.len() as u64) as usize;
        let now = Instant::now();
        {
            let stats = &mut self.cx.groups[g].stats;
            stats.started += 1;
            stats.first_start.get_or_insert(now);
        }
        self.next_generation += 1;
        let entry = self.sessions.vacant_entry();
        let key = entry.key();
        let link = match &self.cx.tls {
            None => Ok(Link::Plain),
            Some(tls) => rustls::ClientConnection::new(Arc::clone(&tls.config), tls.name.clone())
                .map(Link::client)
                .map_err(io::Error::other),
        };
        let generation = self.next_generation;
        let started = link
            .and_then(|link| {
                Session::connect(self.addr, link, (key, generation), g, index, user, now)
            })
            .and_then(|mut s| {
                self.poll.registry().register(
                    s.stream_mut(),
                    Token(key),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(s)
            });
        match started {
            Ok(s) => {
                entry.insert(s);
                self.connecting += 1;
            }
            Err(e) => {
                let name = &self.cx.users[user].name;
                let group = &mut self.cx.groups[g];
                let message = format!(
                    "{} #{index} ({name}): connect to {}: {e}",
                    group.name, self.addr
                );
                group.stats.fail(Fail::new(FailKind::Connect, message));
                group.stats.last_end = Some(now);
            }
        }
    }

    fn drive(&mut self, key: usize, generation: Option<u64>) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if generation.is_some_and(|g| g != s.st.generation) {
            return; // the session it was queued for has ended
        }
        let was_connecting = s.st.is_connecting();
        let result = s.drive(&mut self.cx);
        if was_connecting && !s.st.is_connecting() {
            self.connecting -= 1;
        }
        match result {
            Ok(Flow::Idle) => {}
            Ok(Flow::Again) => self.ready.push_back((key, s.st.generation)),
            Ok(Flow::Done) => self.finish(key, None),
            Err(fail) => self.finish(key, Some(fail)),
        }
    }

    /// Resumes the sessions whose think time is over: each starts its next
    /// op and is driven at once, so the request goes out this turn.
    fn wake_due(&mut self) {
        let now = self.cx.now;
        while let Some(&Reverse((at, key, generation))) = self.cx.timers.peek() {
            if at > now {
                break;
            }
            self.cx.timers.pop();
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            if s.st.generation != generation {
                continue; // the session it was set for has ended
            }
            match s.st.wake(&mut self.cx) {
                Ok(true) => self.drive(key, Some(generation)),
                Ok(false) => {}
                Err(fail) => self.finish(key, Some(fail)),
            }
        }
    }

    /// Ends a session and counts it. Dropping the socket closes it, which
    /// also takes it out of the poll set.
    fn finish(&mut self, key: usize, fail: Option<Fail>) {
        let Some(s) = self.sessions.try_remove(key) else {
            return;
        };
        if s.st.is_connecting() {
            self.connecting -= 1;
        }
        let now = Instant::now();
        let stats = &mut self.cx.groups[s.st.group].stats;
        if s.st.is_holding() {
            stats.holding -= 1;
        }
        stats.last_end = Some(now);
        match fail {
            None => {
                stats.done += 1;
                stats.session.record(now.duration_since(s.st.started));
            }
            Some(fail) => stats.fail(fail),
        }
    }

    /// Fails every session still running and every one not started.
    fn abort_all(&mut self, kind: FailKind, why: &str) {
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            let fail = self.sessions[key].st.stopped(&self.cx, kind, why);
            self.finish(key, Some(fail));
        }
        while let Some(g) = self.pending.pop_front() {
            let group = &mut self.cx.groups[g];
            while group.next < group.count {
                group.next += 1;
                let message = format!("{}: {why} before the session started", group.name);
                group.stats.fail(Fail::new(kind, message));
            }
        }
        self.ready.clear();
        self.cx.timers.clear();
        self.update_progress();
    }

    /// Deadlines, releases, samples, progress.
    fn tick(&mut self) {
        let now = self.cx.now;
        self.next_tick = now + TICK;
        let release = self.cx.release_at.is_some_and(|at| now >= at);
        let mut expired = Vec::new();
        let mut released = Vec::new();
        for (key, s) in &self.sessions {
            if s.st.is_holding() {
                if release {
                    released.push(key);
                }
            } else if !s.st.is_thinking()
                && now.saturating_duration_since(s.st.last_progress) > self.step_timeout
            {
                expired.push(key);
            }
        }
        for key in expired {
            let fail = self.sessions[key].st.timed_out(&self.cx, self.step_timeout);
            self.finish(key, Some(fail));
        }
        for key in released {
            let s = &mut self.sessions[key];
            match s.st.release(&mut self.cx) {
                Ok(()) => self.ready.push_back((key, s.st.generation)),
                Err(fail) => self.finish(key, Some(fail)),
            }
        }
        if let Some(m) = &mut self.monitor {
            m.sample();
        }
        self.update_progress();
    }

    fn update_progress(&self) {
        self.progress.update(&self.cx.groups, self.connecting);
    }
}
