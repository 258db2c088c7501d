//! One simulated client: a nonblocking socket, two buffers, and a state
//! machine that walks through its group's [`Script`].
//!
//! ```text
//!  Connecting ──► Await(Hello) ──► Await(Challenge) ──► Await(LoginOk) ──► next op ...
//!  Put:    Await(PutReady) ──► Uploading (PutFrom, Chunk*, PutEnd) ──► Await(PutDone)
//!  Get:    Await(GetReady) ──► Downloading (Chunk* GetDone)
//!  Stat / Remove / List:  Await(..)        Hold: Holding until the engine releases it
//!  Bye:    Closing: wait for the server's EOF, then the session is done
//!  Think:  Thinking before an op of the repeated part, until the engine's
//!          timer wakes the session (scripts with a think time)
//! ```
//!
//! Any `Error` reply, unexpected reply, bad frame, broken connection or
//! data mismatch ends the session as failed, with a [`FailKind`].
//!
//! Readiness is kept in user space as the server does: the socket is
//! registered once for READABLE | WRITABLE (edge-triggered), an event sets
//! `can_read` / `can_write`, and only a `WouldBlock` clears them.

use std::cmp::Reverse;
use std::fmt::Display;
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftpd::buf::{Buffer, Io};
use ftpd::frame::{self, CHUNK_HEADER_MAX, HEADER_LEN, chunk_header};
use ftpd::proto::{
    CHUNK_SIZE, EntryKind, ErrorCode, KdfParams, MAGIC, MAX_FRAME, PROTOCOL_VERSION, Reply, Request,
};
use ftpd::scram::{AwaitingOk, ClientLogin};
use ftpd::tls::ChannelBinding;
use ftpd::tls::link::Link;
use mio::net::TcpStream;

use crate::content::{self, Content, Prefix};
use crate::engine::Ctx;
use crate::stats::{Fail, FailKind, OpKind};

/// Receive buffer cap: two whole frames, so one read can take in a lot of a
/// download. The buffer only grows that far while a download streams and
/// gives its memory back when empty, so an idle session holds none.
const RX_CAP: usize = 2 * (MAX_FRAME + HEADER_LEN);

/// Control requests are small; the cap only bounds a bug.
const TX_CAP: usize = 64 * 1024;

/// Bytes one session may move in one turn before the others get theirs.
const TURN_BUDGET: usize = 512 * 1024;

/// Downloads bigger than this keep their receive buffer between reads,
/// instead of giving it back each time it empties; small ones do not, so
/// thousands of concurrent small downloads do not pin a buffer each.
const KEEP_RX_ABOVE: u64 = 1 << 20;

/// Which file an operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRef {
    /// The session's own file, `load-<pid>-<tag><index>.bin`.
    Own,
    /// Its user's small file, `load-<pid>-small.bin` (the `mixed` scenario).
    Small,
}

/// One step of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Hello,
    /// `LoginStart` only: notes the user's salt and scrypt settings.
    Probe,
    /// A full login with the user's cached keys.
    Login,
    Put(FileRef),
    Get(FileRef),
    Stat(FileRef),
    Remove(FileRef),
    List,
    /// Stay logged in and idle until the engine releases the session.
    Hold,
    /// `Bye`, then wait for the server to close.
    Bye,
}

/// What every session of a group does.
pub struct Script {
    pub ops: Vec<Op>,
    /// `ops[start..end]` repeat while the engine's loop window is open.
    pub repeat: Option<(usize, usize)>,
    /// Content of [`FileRef::Own`].
    pub own: Option<Arc<Content>>,
    /// Content of [`FileRef::Small`].
    pub small: Option<Arc<Content>>,
    /// Part of the own file's name, so groups do not collide.
    pub tag: &'static str,
    /// Mean wait before each op of the repeated part (±50 %, uniformly at
    /// random); zero: back to back.
    pub think: Duration,
}

impl Script {
    pub fn new(ops: Vec<Op>) -> Script {
        Script {
            ops,
            repeat: None,
            own: None,
            small: None,
            tag: "",
            think: Duration::ZERO,
        }
    }
}

/// A request is out; the reply it waits for.
enum Wait {
    Hello,
    Probe,
    Challenge(Box<ClientLogin>),
    LoginOk(Box<AwaitingOk>),
    PutReady(FileRef),
    PutDone(FileRef),
    GetReady(FileRef),
    Removed,
    Listing,
    Stat(FileRef),
}

/// An upload's chunks going out, straight from the shared content.
struct Upload {
    file: FileRef,
    size: u64,
    /// File bytes already framed and fully sent.
    pos: u64,
    /// The current chunk frame, if one is part-way out.
    frame: Option<Frame>,
}

struct Frame {
    header: [u8; CHUNK_HEADER_MAX],
    header_len: usize,
    payload: usize,
    /// Bytes of this frame (header included) written so far.
    written: usize,
}

enum Pump {
    /// The socket is full; `n` bytes went out.
    Blocked(usize),
    /// Every chunk is out; `n` bytes went out.
    Finished(usize),
}

impl Upload {
    /// Writes chunk frames until the socket would block or the file is out.
    fn pump(
        &mut self,
        stream: &mut impl Write,
        content: &Content,
        prefix: &Prefix,
        tag: u8,
    ) -> io::Result<Pump> {
        let mut total = 0;
        loop {
            let frame = match &mut self.frame {
                Some(f) => f,
                None if self.pos == self.size => return Ok(Pump::Finished(total)),
                None => {
                    let payload = (self.size - self.pos).min(CHUNK_SIZE as u64) as usize;
                    let mut header = [0; CHUNK_HEADER_MAX];
                    let header_len = chunk_header(tag, payload, &mut header);
                    self.frame.insert(Frame {
                        header,
                        header_len,
                        payload,
                        written: 0,
                    })
                }
            };
            let head = &frame.header[frame.written.min(frame.header_len)..frame.header_len];
            let start = self.pos + frame.written.saturating_sub(frame.header_len) as u64;
            let (a, b) = content.pieces(prefix, start, self.pos + frame.payload as u64);
            let slices = [IoSlice::new(head), IoSlice::new(a), IoSlice::new(b)];
            match stream.write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    total += n;
                    frame.written += n;
                    if frame.written == frame.header_len + frame.payload {
                        self.pos += frame.payload as u64;
                        self.frame = None;
                    }
                }
                // The kernel's send buffer is full; wait for WRITABLE.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Pump::Blocked(total)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A download coming in, compared in place with the expected content.
struct Download {
    file: FileRef,
    size: u64,
    pos: u64,
}

enum Step {
    Connecting,
    Await(Wait),
    Uploading(Upload),
    Downloading(Download),
    Holding,
    /// Waiting out the think time before the op at `pc`; the engine's
    /// timer heap holds the wake-up.
    Thinking,
    Closing,
}

impl Step {
    fn describe(&self) -> &'static str {
        match self {
            Step::Connecting => "connecting",
            Step::Await(w) => match w {
                Wait::Hello => "waiting for Hello",
                Wait::Probe | Wait::Challenge { .. } => "waiting for Challenge",
                Wait::LoginOk { .. } => "waiting for LoginOk",
                Wait::PutReady(_) => "waiting for PutReady",
                Wait::PutDone(_) => "waiting for PutDone",
                Wait::GetReady(_) => "waiting for GetReady",
                Wait::Removed => "waiting for Remove's Ok",
                Wait::Listing => "listing",
                Wait::Stat(_) => "waiting for Entry",
            },
            Step::Uploading(_) => "uploading",
            Step::Downloading(_) => "downloading",
            Step::Holding => "holding",
            Step::Thinking => "thinking between requests",
            Step::Closing => "waiting for the server to close after Bye",
        }
    }

    fn in_login(&self) -> bool {
        matches!(
            self,
            Step::Await(Wait::Probe | Wait::Challenge { .. } | Wait::LoginOk { .. })
        )
    }
}

/// What the engine should do after driving a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Nothing to do until the next event.
    Idle,
    /// The turn's budget ran out with work left.
    Again,
    /// The session ended well.
    Done,
}

/// A session: socket and receive buffer, and the state the replies drive.
pub struct Session {
    stream: TcpStream,
    /// TLS over the stream, or nothing (`--plaintext`).
    link: Link,
    rx: Buffer,
    eof: bool,
    pub st: State,
}

/// Everything of a session but its socket and receive buffer (which a
/// decoded reply borrows while the state handles it).
pub struct State {
    tx: Buffer,
    step: Step,
    pc: usize,
    /// The session's slab key (its token), for the timer heap.
    pub key: usize,
    pub group: usize,
    pub index: u64,
    pub user: usize,
    pub generation: u64,
    pub can_read: bool,
    pub can_write: bool,
    keep_rx: bool,
    /// When the connect began.
    pub started: Instant,
    op_started: Instant,
    /// Last time bytes moved (the engine's clock), for `--step-timeout`.
    pub last_progress: Instant,
    /// The TLS channel binding the login signs; `None` in clear.
    binding: Option<ChannelBinding>,
    /// When the TCP connection was made (the handshake's start).
    connected_at: Option<Instant>,
}

impl Session {
    /// Starts a nonblocking connect to `addr`; `slot` is the session's
    /// slab key and generation.
    pub fn connect(
        addr: SocketAddr,
        link: Link,
        (key, generation): (usize, u64),
        group: usize,
        index: u64,
        user: usize,
        now: Instant,
    ) -> io::Result<Session> {
        let stream = TcpStream::connect(addr)?;
        // Requests are small and answered one by one: do not let Nagle
        // hold one back waiting for an ACK.
        stream.set_nodelay(true)?;
        Ok(Session {
            stream,
            link,
            rx: Buffer::with_cap(RX_CAP),
            eof: false,
            st: State {
                tx: Buffer::with_cap(TX_CAP),
                step: Step::Connecting,
                pc: 0,
                key,
                group,
                index,
                user,
                generation,
                can_read: false,
                can_write: false,
                keep_rx: false,
                started: now,
                op_started: now,
                last_progress: now,
                binding: None,
                connected_at: None,
            },
        })
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Moves bytes and runs the script until nothing more can happen now.
    pub fn drive(&mut self, cx: &mut Ctx) -> Result<Flow, Fail> {
        if self.st.is_connecting() {
            match self.connected() {
                Ok(false) => return Ok(Flow::Idle),
                Ok(true) => {}
                Err(e) => return Err(self.st.fail(cx, FailKind::Connect, format!("connect: {e}"))),
            }
            if self.st.connected_at.is_none() {
                let elapsed = self.st.started.elapsed();
                cx.groups[self.st.group].stats.connect.record(elapsed);
                self.st.connected_at = Some(Instant::now());
                self.st.can_read = true;
                self.st.can_write = true;
            }
            if let Some(flow) = self.handshake(cx)? {
                return Ok(flow);
            }
            if let Some(at) = self.st.connected_at.filter(|_| self.st.encrypted()) {
                cx.groups[self.st.group]
                    .stats
                    .handshake
                    .record(at.elapsed());
            }
            self.st.start_op(cx)?;
        }
        let mut budget = TURN_BUDGET;
        loop {
            let mut moved = 0;
            if self.st.can_read && !self.eof {
                match self.rx.read_from(&mut self.link.on(&mut self.stream)) {
                    Ok(Io::Progress(n)) => {
                        self.st.can_read = false;
                        moved += n;
                    }
                    Ok(Io::Full(n)) => moved += n,
                    Ok(Io::Eof(n)) => {
                        self.eof = true;
                        moved += n;
                    }
                    Err(e) => return Err(self.st.io_error(cx, &e)),
                }
            }
            loop {
                let (reply, n) = match frame::decode::<Reply>(self.rx.data()) {
                    Ok(Some(decoded)) => decoded,
                    Ok(None) => break,
                    Err(e) => {
                        let message = format!("bad frame from the server: {e}");
                        return Err(self.st.fail(cx, FailKind::Protocol, message));
                    }
                };
                if let Err(v) = reply.check() {
                    let message = format!("the server sent {v}");
                    return Err(self.st.fail(cx, FailKind::Protocol, message));
                }
                self.st.on_reply(cx, reply)?;
                self.rx.consume(n);
            }
            self.rx.set_keep(self.st.keep_rx);
            if self.eof {
                if matches!(self.st.step, Step::Closing) && self.rx.is_empty() {
                    return Ok(Flow::Done);
                }
                let message = format!(
                    "the server closed the connection while {}",
                    self.st.step.describe()
                );
                return Err(self.st.fail(cx, FailKind::Io, message));
            }
            if self.st.can_write {
                moved += self.st.flush(&mut self.link.on(&mut self.stream), cx)?;
                match self.link.flush(&mut self.stream) {
                    Ok(n) => moved += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(self.st.io_error(cx, &e)),
                }
                if self.link.has_output() {
                    self.st.can_write = false;
                }
            }
            if moved == 0 {
                return Ok(Flow::Idle);
            }
            self.st.last_progress = cx.now;
            budget = budget.saturating_sub(moved);
            if budget == 0 {
                return Ok(Flow::Again);
            }
        }
    }

    /// Drives the TLS handshake; `Some` while it is not done yet.
    fn handshake(&mut self, cx: &mut Ctx) -> Result<Option<Flow>, Fail> {
        if matches!(self.link, Link::Plain) {
            return Ok(None);
        }
        while self.link.is_handshaking() {
            if self.st.can_write {
                match self.link.flush(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.st.can_write = false,
                    Err(e) => return Err(self.st.io_error(cx, &e)),
                }
                if self.link.has_output() {
                    self.st.can_write = false;
                }
            }
            if !self.st.can_read {
                return Ok(Some(Flow::Idle));
            }
            match self.rx.read_from(&mut self.link.on(&mut self.stream)) {
                Ok(Io::Progress(_)) => self.st.can_read = false,
                Ok(Io::Full(_)) => {}
                Ok(Io::Eof(_)) => {
                    let message = "the server closed the connection during the TLS handshake";
                    return Err(self.st.fail(cx, FailKind::Io, message));
                }
                Err(e) => {
                    let message = format!("TLS handshake: {e}");
                    return Err(self.st.fail(cx, FailKind::Connect, message));
                }
            }
            if self.link.is_handshaking() && !self.st.can_read && !self.st.can_write {
                return Ok(Some(Flow::Idle));
            }
        }
        match self.link.channel_binding() {
            Some(Ok(binding)) => self.st.binding = Some(binding),
            Some(Err(e)) => {
                let message = format!("TLS channel binding: {e}");
                return Err(self.st.fail(cx, FailKind::Connect, message));
            }
            None => {}
        }
        Ok(None)
    }

    /// Whether the nonblocking connect has finished (mio's recipe: an
    /// error, then `peer_addr` says whether we are connected yet).
    fn connected(&mut self) -> io::Result<bool> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(true),
            // A spurious wake-up: the handshake is still going.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl State {
    pub fn is_connecting(&self) -> bool {
        matches!(self.step, Step::Connecting)
    }

    pub fn is_holding(&self) -> bool {
        matches!(self.step, Step::Holding)
    }

    pub fn is_thinking(&self) -> bool {
        matches!(self.step, Step::Thinking)
    }

    /// A failure with who failed and what it was doing.
    fn fail(&self, cx: &Ctx, kind: FailKind, message: impl Display) -> Fail {
        let group = &cx.groups[self.group];
        let user = &cx.users[self.user].name;
        Fail::new(
            kind,
            format!("{} #{} ({user}): {message}", group.name, self.index),
        )
    }

    fn io_error(&self, cx: &Ctx, e: &io::Error) -> Fail {
        let kind = match e.kind() {
            io::ErrorKind::TimedOut => FailKind::Timeout,
            _ => FailKind::Io,
        };
        let message = format!("connection lost while {}: {e}", self.step.describe());
        self.fail(cx, kind, message)
    }

    /// The failure the engine records when no byte moved for `idle`.
    pub fn timed_out(&self, cx: &Ctx, idle: Duration) -> Fail {
        let message = format!(
            "no progress for {:.1} s while {}",
            idle.as_secs_f64(),
            self.step.describe()
        );
        self.fail(cx, FailKind::Timeout, message)
    }

    /// The failure recorded when the run stops under the session.
    pub fn stopped(&self, cx: &Ctx, kind: FailKind, why: &str) -> Fail {
        self.fail(cx, kind, format!("{why} while {}", self.step.describe()))
    }

    /// Leaves `Hold` (the engine's release) and goes on with the script.
    pub fn release(&mut self, cx: &mut Ctx) -> Result<(), Fail> {
        if !self.is_holding() {
            return Ok(());
        }
        cx.groups[self.group].stats.holding -= 1;
        self.advance(cx)
    }

    /// The think time is over (the engine's timer): starts the op it was
    /// waiting before. `false` if the session was not thinking (a stale
    /// timer).
    pub fn wake(&mut self, cx: &mut Ctx) -> Result<bool, Fail> {
        if !self.is_thinking() {
            return Ok(false);
        }
        self.start_op(cx)?;
        Ok(true)
    }

    fn send(&mut self, cx: &mut Ctx, req: &Request) -> Result<(), Fail> {
        cx.scratch.clear();
        if let Err(e) = frame::encode_into(req, &mut cx.scratch) {
            let message = format!("cannot encode a request: {e}");
            return Err(self.fail(cx, FailKind::Protocol, message));
        }
        if self.tx.extend(&cx.scratch).is_err() {
            let message = "request does not fit the send buffer".to_string();
            return Err(self.fail(cx, FailKind::Protocol, message));
        }
        Ok(())
    }

    fn path(&self, cx: &Ctx, file: FileRef) -> String {
        match file {
            FileRef::Own => {
                let tag = cx.groups[self.group].script.tag;
                format!("load-{}-{tag}{}.bin", cx.pid, self.index)
            }
            FileRef::Small => format!("load-{}-small.bin", cx.pid),
        }
    }

    /// The expected content of `file` and this session's prefix for it.
    fn file<'c>(&self, cx: &'c Ctx, file: FileRef) -> Result<(&'c Content, Prefix), Fail> {
        let script = &cx.groups[self.group].script;
        let (content, id) = match file {
            FileRef::Own => (script.own.as_deref(), self.index),
            // Per user, and never equal to a session number.
            FileRef::Small => (script.small.as_deref(), self.user as u64 | 1 << 63),
        };
        match content {
            Some(c) => Ok((c, content::prefix(id, cx.nonce))),
            None => Err(self.fail(cx, FailKind::Protocol, "bug: the script has no content")),
        }
    }

    /// Starts the script's op at `pc`.
    fn start_op(&mut self, cx: &mut Ctx) -> Result<(), Fail> {
        self.op_started = Instant::now();
        self.last_progress = cx.now;
        let Some(&op) = cx.groups[self.group].script.ops.get(self.pc) else {
            return Err(self.fail(cx, FailKind::Protocol, "bug: script ends without Bye"));
        };
        self.step = match op {
            Op::Hello => {
                let hello = Request::Hello {
                    magic: MAGIC,
                    version: PROTOCOL_VERSION,
                };
                self.send(cx, &hello)?;
                Step::Await(Wait::Hello)
            }
            Op::Probe | Op::Login => {
                let login = match ClientLogin::start(&cx.users[self.user].name, self.binding) {
                    Ok(login) => login,
                    Err(e) => {
                        let message = format!("no random bytes for the nonce: {e}");
                        return Err(self.fail(cx, FailKind::Login, message));
                    }
                };
                let start = Request::LoginStart {
                    user: login.user().to_owned(),
                    client_nonce: login.client_nonce().to_vec(),
                };
                self.send(cx, &start)?;
                match op {
                    Op::Probe => Step::Await(Wait::Probe),
                    _ => Step::Await(Wait::Challenge(Box::new(login))),
                }
            }
            Op::Put(file) => {
                let size = self.file(cx, file)?.0.len();
                let path = self.path(cx, file);
                let put = Request::PutStart {
                    path,
                    size,
                    resume: false,
                };
                self.send(cx, &put)?;
                Step::Await(Wait::PutReady(file))
            }
            Op::Get(file) => {
                let path = self.path(cx, file);
                let get = Request::GetStart {
                    path,
                    offset: 0,
                    prefix_crc: 0,
                };
                self.send(cx, &get)?;
                Step::Await(Wait::GetReady(file))
            }
            Op::Stat(file) => {
                let path = self.path(cx, file);
                self.send(cx, &Request::Stat { path })?;
                Step::Await(Wait::Stat(file))
            }
            Op::Remove(file) => {
                let path = self.path(cx, file);
                self.send(cx, &Request::Remove { path })?;
                Step::Await(Wait::Removed)
            }
            Op::List => {
                self.send(
                    cx,
                    &Request::List {
                        path: String::new(),
                    },
                )?;
                Step::Await(Wait::Listing)
            }
            Op::Hold => {
                cx.groups[self.group].stats.holding += 1;
                Step::Holding
            }
            Op::Bye => {
                self.send(cx, &Request::Bye)?;
                Step::Closing
            }
        };
        Ok(())
    }

    /// The current op is complete: record its latency, start the next.
    fn advance(&mut self, cx: &mut Ctx) -> Result<(), Fail> {
        let elapsed = self.op_started.elapsed();
        let group = &mut cx.groups[self.group];
        let kind = match group.script.ops[self.pc] {
            Op::Login => Some(OpKind::Login),
            Op::Put(_) => Some(OpKind::Put),
            Op::Get(_) => Some(OpKind::Get),
            Op::Stat(_) => Some(OpKind::Stat),
            Op::List => Some(OpKind::List),
            Op::Remove(_) => Some(OpKind::Remove),
            _ => None,
        };
        if let Some(kind) = kind {
            group.stats.op(kind).record(elapsed);
            if let Some((start, end)) = group.script.repeat
                && (start..end).contains(&self.pc)
            {
                group.stats.request.record(elapsed);
            }
        }
        self.pc += 1;
        if let Some((start, end)) = group.script.repeat
            && self.pc == end
            && cx.loop_until.is_some_and(|until| cx.now < until)
        {
            self.pc = start;
        }
        let think = group.script.think;
        let repeating = group
            .script
            .repeat
            .is_some_and(|(start, end)| (start..end).contains(&self.pc));
        if repeating && !think.is_zero() {
            // Wait before the next request; the engine wakes the session
            // (and `wake` starts the op) once the timer is due. The op's
            // latency is timed from then, so the think time is not in it.
            let at = Instant::now() + cx.jitter(think);
            cx.timers.push(Reverse((at, self.key, self.generation)));
            self.step = Step::Thinking;
            return Ok(());
        }
        self.start_op(cx)
    }

    /// An `Error` reply: which kind of failure it is.
    fn refused(&self, cx: &Ctx, code: ErrorCode, message: &str) -> Fail {
        let kind = match code {
            ErrorCode::AuthFailed | ErrorCode::LockedOut if self.step.in_login() => FailKind::Login,
            _ => FailKind::Server(code),
        };
        let text = format!(
            "server refused ({code:?}) while {}: {}",
            self.step.describe(),
            message.escape_debug()
        );
        self.fail(cx, kind, text)
    }

    fn on_reply(&mut self, cx: &mut Ctx, reply: Reply<'_>) -> Result<(), Fail> {
        if let Reply::Error { code, message } = &reply {
            if matches!(self.step, Step::Closing) {
                // The work is done and the server closes anyway; count the
                // anomaly (see the report) instead of failing the session.
                let sample = self.refused(cx, *code, message).message;
                let stats = &mut cx.groups[self.group].stats;
                stats.bye_errors += 1;
                stats.bye_error_sample.get_or_insert(sample);
                return Ok(());
            }
            return Err(self.refused(cx, *code, message));
        }
        match (std::mem::replace(&mut self.step, Step::Closing), reply) {
            (Step::Await(Wait::Hello), Reply::Hello { .. }) => self.advance(cx),
            (Step::Await(Wait::Probe), Reply::Challenge { salt, kdf, .. }) => {
                cx.probed[self.user] = Some((salt, kdf));
                self.advance(cx)
            }
            (
                Step::Await(Wait::Challenge(login)),
                Reply::Challenge {
                    server_nonce,
                    salt,
                    kdf,
                },
            ) => self.prove(cx, *login, &server_nonce, &salt, kdf),
            (Step::Await(Wait::LoginOk(waiting)), Reply::LoginOk { server_signature }) => {
                if let Err(e) = waiting.on_success(&server_signature) {
                    return Err(self.fail(cx, FailKind::Login, e));
                }
                self.advance(cx)
            }
            (Step::Await(Wait::PutReady(file)), Reply::PutReady { .. }) => {
                // Not resuming: start at 0 whatever was offered.
                let size = self.file(cx, file)?.0.len();
                self.send(cx, &Request::PutFrom { offset: 0 })?;
                self.step = Step::Uploading(Upload {
                    file,
                    size,
                    pos: 0,
                    frame: None,
                });
                Ok(())
            }
            (Step::Await(Wait::PutDone(file)), Reply::PutDone { size, crc32 }) => {
                let (content, prefix) = self.file(cx, file)?;
                let expected = content.crc(&prefix);
                if size != content.len() {
                    let message = format!("PutDone says {size} bytes, {} were sent", content.len());
                    return Err(self.fail(cx, FailKind::Protocol, message));
                }
                if crc32 != expected {
                    let message =
                        format!("PutDone says crc32 {crc32:08x}, what was sent has {expected:08x}");
                    return Err(self.fail(cx, FailKind::Crc, message));
                }
                let stats = &mut cx.groups[self.group].stats;
                stats.bytes_up += size;
                stats.put_time += self.op_started.elapsed();
                self.advance(cx)
            }
            (Step::Await(Wait::GetReady(file)), Reply::GetReady { size, offset }) => {
                let expected = self.file(cx, file)?.0.len();
                if size != expected {
                    let message = format!("GetReady says {size} bytes, {expected} were uploaded");
                    return Err(self.fail(cx, FailKind::Crc, message));
                }
                if offset != 0 {
                    let message = format!("GetReady offers offset {offset}; 0 was asked for");
                    return Err(self.fail(cx, FailKind::Protocol, message));
                }
                self.keep_rx = size > KEEP_RX_ABOVE;
                self.step = Step::Downloading(Download { file, size, pos: 0 });
                Ok(())
            }
            (Step::Downloading(mut down), Reply::Chunk(bytes)) => {
                let (content, prefix) = self.file(cx, down.file)?;
                let len = bytes.len() as u64;
                if down.pos + len > down.size {
                    let message = format!("more than the {} bytes announced", down.size);
                    return Err(self.fail(cx, FailKind::Protocol, message));
                }
                if !content.matches(&prefix, down.pos, bytes) {
                    let message = format!(
                        "downloaded bytes {}..{} differ from what was uploaded",
                        down.pos,
                        down.pos + len
                    );
                    return Err(self.fail(cx, FailKind::Crc, message));
                }
                down.pos += len;
                self.step = Step::Downloading(down);
                Ok(())
            }
            (Step::Downloading(down), Reply::GetDone { crc32 }) => {
                let (content, prefix) = self.file(cx, down.file)?;
                if down.pos != down.size {
                    let message = format!("GetDone after {} of {} bytes", down.pos, down.size);
                    return Err(self.fail(cx, FailKind::Protocol, message));
                }
                let expected = content.crc(&prefix);
                if crc32 != expected {
                    let message = format!(
                        "GetDone says crc32 {crc32:08x}, the uploaded file has {expected:08x}"
                    );
                    return Err(self.fail(cx, FailKind::Crc, message));
                }
                self.keep_rx = false;
                let stats = &mut cx.groups[self.group].stats;
                stats.bytes_down += down.size;
                stats.get_time += self.op_started.elapsed();
                self.advance(cx)
            }
            (Step::Await(Wait::Removed), Reply::Ok) => self.advance(cx),
            (Step::Await(Wait::Listing), Reply::Entries(_)) => {
                self.step = Step::Await(Wait::Listing);
                Ok(())
            }
            (Step::Await(Wait::Listing), Reply::ListEnd { .. }) => self.advance(cx),
            (Step::Await(Wait::Stat(file)), Reply::Entry(entry)) => {
                let expected = self.file(cx, file)?.0.len();
                if entry.kind != EntryKind::File || entry.size != expected {
                    let message = format!(
                        "stat says {:?} of {} bytes, a file of {expected} was uploaded",
                        entry.kind, entry.size
                    );
                    return Err(self.fail(cx, FailKind::Crc, message));
                }
                self.advance(cx)
            }
            (step, other) => {
                let message = format!(
                    "unexpected {} while {}",
                    reply_name(&other),
                    step.describe()
                );
                self.step = step;
                Err(self.fail(cx, FailKind::Protocol, message))
            }
        }
    }

    /// Answers a challenge with the user's cached keys.
    fn prove(
        &mut self,
        cx: &mut Ctx,
        login: ClientLogin,
        server_nonce: &[u8],
        salt: &[u8],
        kdf: KdfParams,
    ) -> Result<(), Fail> {
        let cached = |salt: &[u8], kdf: &KdfParams| match cx.keys[self.user].as_ref() {
            None => Err("bug: no key was derived for this user"),
            Some(keys) if keys.salt != salt || keys.kdf != *kdf => {
                Err("the user's salt or scrypt settings changed during the run (new password?)")
            }
            Some(keys) => Ok(keys.keys.clone()),
        };
        let (proof, waiting) = match login.on_challenge(server_nonce, salt, kdf, cached) {
            Ok(Ok(answer)) => answer,
            Ok(Err(why)) => return Err(self.fail(cx, FailKind::Login, why)),
            Err(e) => return Err(self.fail(cx, FailKind::Protocol, e)),
        };
        self.send(
            cx,
            &Request::LoginProof {
                proof: proof.to_vec(),
            },
        )?;
        self.step = Step::Await(Wait::LoginOk(Box::new(waiting)));
        Ok(())
    }

    /// Whether the session speaks TLS.
    fn encrypted(&self) -> bool {
        self.binding.is_some()
    }

    /// Writes queued requests and upload chunks until done or blocked.
    fn flush(&mut self, stream: &mut impl Write, cx: &mut Ctx) -> Result<usize, Fail> {
        let mut moved = 0;
        loop {
            if !self.tx.is_empty() {
                match self.tx.write_to(stream) {
                    Ok(n) => moved += n,
                    Err(e) => return Err(self.io_error(cx, &e)),
                }
                if !self.tx.is_empty() {
                    self.can_write = false;
                    return Ok(moved);
                }
            }
            let Step::Uploading(up) = &self.step else {
                return Ok(moved);
            };
            let (content, prefix) = self.file(cx, up.file)?;
            let Step::Uploading(up) = &mut self.step else {
                return Ok(moved);
            };
            let file = up.file;
            match up.pump(stream, content, &prefix, cx.chunk_tag) {
                Ok(Pump::Blocked(n)) => {
                    self.can_write = false;
                    return Ok(moved + n);
                }
                Ok(Pump::Finished(n)) => {
                    moved += n;
                    let crc32 = content.crc(&prefix);
                    self.step = Step::Await(Wait::PutDone(file));
                    self.send(cx, &Request::PutEnd { crc32 })?;
                }
                Err(e) => return Err(self.io_error(cx, &e)),
            }
        }
    }
}

/// A reply's name for messages (never its payload).
fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Error { .. } => "Error",
        Reply::Hello { .. } => "Hello",
        Reply::Challenge { .. } => "Challenge",
        Reply::LoginOk { .. } => "LoginOk",
        Reply::Pong => "Pong",
        Reply::Ok => "Ok",
        Reply::Cwd(_) => "Cwd",
        Reply::Entry(_) => "Entry",
        Reply::Entries(_) => "Entries",
        Reply::ListEnd { .. } => "ListEnd",
        Reply::Quota(_) => "Quota",
        Reply::PutReady { .. } => "PutReady",
        Reply::PutDone { .. } => "PutDone",
        Reply::GetReady { .. } => "GetReady",
        Reply::Chunk(_) => "Chunk",
        Reply::GetDone { .. } => "GetDone",
        Reply::ListPage { .. } => "ListPage",
        Reply::Removing { .. } => "Removing",
    }
}
