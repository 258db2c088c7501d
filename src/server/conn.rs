//! One connection: its socket, its two buffers, and the session state
//! machine, driven by readiness.
//!
//! Readiness is tracked in user space: the socket is registered once for
//! READABLE | WRITABLE (edge-triggered), an event sets `can_read` /
//! `can_write`, and only a `WouldBlock` clears them. So interest never has
//! to be re-registered, and pausing reads (backpressure, a job in flight) is
//! just not reading: when the pause ends, the flag says whether data may be
//! waiting.
//!
//! The seam for encryption: socket bytes enter only in [`Conn::read`] and
//! leave only in `Conn::write`, both through the connection's
//! [`Link`](crate::tls::link::Link), which decrypts into and encrypts out
//! of the two buffers; the session state machine sees plaintext frames
//! and nothing else. rustls's own buffers come on top of ours and are
//! bounded too (see the README's limits table).

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;

use super::pacing::Slot;
use super::session::{self, Ctx, Phase, State};
use crate::buf::{Buffer, Io};
use crate::frame;
use crate::proto::{ErrorCode, MAX_FRAME, Reply, Request};
use crate::tls::STREAM_SEND_LIMIT;
use crate::tls::link::{INBOX_CAP, Link, LinkError, TLS_HANDSHAKE_RECORD};

/// Receive buffer cap once logged in: one whole frame plus room to read the
/// next header, so a maximal frame never deadlocks and nothing grows beyond
/// this.
pub const RX_CAP: usize = MAX_FRAME + 16 * 1024;

/// Largest frame accepted before login. The messages of that phase (Hello,
/// LoginStart, LoginProof, Ping) take well under 200 bytes, so a peer that
/// has proved nothing cannot make the server hold more than this.
const PRE_LOGIN_FRAME: usize = 512;

/// Receive buffer cap before login: one frame and its header.
const PRE_LOGIN_RX: usize = PRE_LOGIN_FRAME + frame::HEADER_LEN;

/// Above this many unsent bytes no further request is read: a client that
/// does not read its replies is throttled, not buffered without limit.
const TX_HIGH: usize = 64 * 1024;

/// The same before login, where every reply is a few hundred bytes.
const PRE_LOGIN_TX_HIGH: usize = 2 * 1024;

/// Most TLS bytes read at once before login: a ClientHello with its
/// post-quantum key share takes under 2 KiB.
const PRE_LOGIN_INBOX: usize = 4 * 1024;

/// Send buffer cap while a download streams; pumping stops below it.
pub const TX_XFER: usize = 1024 * 1024;

/// Bytes one connection may move in one turn before others get theirs.
const TURN_BUDGET: usize = 1024 * 1024;

/// Bytes all the connections of one user may move in one pass of the
/// reactor over the ready connections: a user with many connections gets
/// the share of a user with one, so others wait one short pass, not one
/// turn per connection of the busiest user.
pub const USER_PASS_BUDGET: usize = TURN_BUDGET;

/// Requests one connection may have handled in one turn before others get
/// theirs: bytes alone do not bound a turn, since a flood of tiny requests
/// is mostly work, not bytes.
const TURN_REQUESTS: usize = 64;

/// What a connection may hold in its current phase.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Largest frame body accepted.
    frame: usize,
    /// Receive buffer cap (also bounds a single read, so what is left
    /// over after handling always fits).
    rx: usize,
    /// Requests are read only while fewer unsent bytes wait.
    tx_high: usize,
    /// Send buffer cap: `tx_high` plus one reply, or the streaming cap.
    tx_cap: usize,
    /// Most bytes of sealed TLS records held on top of `tx`.
    records: usize,
    /// Most TLS bytes read from the socket at once.
    inbox: usize,
}

impl Limits {
    fn of(st: &State) -> Limits {
        if st.login.is_none() {
            Limits {
                frame: PRE_LOGIN_FRAME,
                rx: PRE_LOGIN_RX,
                tx_high: PRE_LOGIN_TX_HIGH,
                // Replies before login are short messages; one frame of
                // slack is generous.
                tx_cap: PRE_LOGIN_TX_HIGH + PRE_LOGIN_RX,
                records: PRE_LOGIN_TX_HIGH,
                inbox: PRE_LOGIN_INBOX,
            }
        } else {
            // A download: over TLS its chunks go straight into rustls (see
            // `pump_download`), and out in large writes. Otherwise records
            // come on top of `tx`, which is where the backpressure looks:
            // keep them to the reply mark.
            let streaming = st.phase.is_streaming();
            Limits {
                frame: MAX_FRAME,
                rx: RX_CAP,
                tx_high: TX_HIGH,
                tx_cap: if streaming {
                    TX_XFER
                } else {
                    TX_HIGH + MAX_FRAME + frame::HEADER_LEN
                },
                records: if streaming {
                    STREAM_SEND_LIMIT
                } else {
                    TX_HIGH
                },
                inbox: INBOX_CAP,
            }
        }
    }
}

/// Decodes and handles every complete frame in `src`, within the phase's
/// limits and the turn's request budget; returns the bytes used.
fn handle_frames(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    src: &mut Buffer,
    requests: &mut usize,
) -> usize {
    let mut used = 0;
    loop {
        let limits = Limits::of(st);
        if !st.phase.wants_input() || tx.len() >= limits.tx_high || *requests == 0 {
            break;
        }
        if matches!(st.phase, Phase::Closing { .. }) {
            // Lingering: input is read only so the peer sees our last
            // reply instead of a reset.
            used += src.len();
            src.clear();
            break;
        }
        if !st.encrypted
            && matches!(st.phase, Phase::Hello)
            && src.data().first() == Some(&TLS_HANDSHAKE_RECORD)
        {
            crate::log!(
                Info,
                "{}: a TLS client, but this server runs with --plaintext",
                st.peer
            );
            let message = "this server does not speak TLS (it runs with --plaintext); \
                           --plaintext is for trusted links only";
            st.phase = session::refuse(st, tx, ctx, ErrorCode::NoTls, message);
            src.clear();
            break;
        }
        let too_large = frame::declared_len(src.data()).filter(|&len| len > limits.frame);
        let decoded = match too_large {
            Some(len) => Err(format!(
                "frame of {len} bytes is over the limit of {} bytes{}",
                limits.frame,
                if st.login.is_none() {
                    " before login"
                } else {
                    ""
                }
            )),
            None => frame::decode::<Request>(src.data()).map_err(|e| e.to_string()),
        };
        match decoded {
            // Left unread until the session can take it (see `accepts`).
            Ok(Some((req, _))) if !session::accepts(&st.phase, &req) => break,
            Ok(Some((req, n))) => {
                session::handle(st, tx, ctx, req);
                src.consume(n);
                used += n;
                *requests -= 1;
            }
            Ok(None) => break,
            Err(e) => {
                crate::log!(Info, "{}: bad frame: {e}", st.peer);
                let message = format!("bad request: {e}");
                st.phase = session::refuse(st, tx, ctx, ErrorCode::BadRequest, &message);
                src.clear();
                break;
            }
        }
    }
    used
}

/// What the reactor should do after driving a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// Nothing more to do until the next event, timer or job result.
    Idle,
    /// The turn's budget ran out with work left: drive again soon.
    Again,
    /// Close the connection.
    Close,
}

/// A connection and its session.
pub struct Conn {
    pub stream: TcpStream,
    /// TLS over the stream, or the stream as it is (`--plaintext`).
    link: Link,
    /// A `close_notify` has been queued for a lingering close.
    close_notified: bool,
    rx: Buffer,
    tx: Buffer,
    pub can_read: bool,
    pub can_write: bool,
    peer_eof: bool,
    write_shut: bool,
    /// Bytes moved by the last call of [`Conn::drive`].
    moved: usize,
    /// Its place with the handshake pacer.
    pub slot: Slot,
    pub st: State,
}

/// What a look at a socket shows without reading from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Nothing has arrived.
    Nothing,
    /// Bytes wait to be read.
    Bytes,
    /// The peer closed, or the socket failed: reading will tell.
    EndOrError,
}

impl Conn {
    /// A new connection from `peer`.
    pub fn new(
        stream: TcpStream,
        link: Link,
        peer: SocketAddr,
        key: usize,
        generation: u64,
        now: Instant,
    ) -> Conn {
        let encrypted = !matches!(link, Link::Plain);
        Conn {
            stream,
            link,
            close_notified: false,
            rx: Buffer::with_cap(PRE_LOGIN_RX),
            tx: Buffer::with_cap(PRE_LOGIN_TX_HIGH + PRE_LOGIN_RX),
            can_read: true,
            can_write: true,
            peer_eof: false,
            write_shut: false,
            moved: 0,
            slot: Slot::default(),
            st: State::new(peer, key, generation, now, encrypted),
        }
    }

    /// Moves bytes and runs the session until nothing more can happen now,
    /// or the turn's budget is spent. `scratch` is the reactor's shared
    /// read buffer (see [`Conn::read`]).
    pub fn drive(&mut self, ctx: &mut Ctx, scratch: &mut Buffer) -> Drive {
        let mut budget = TURN_BUDGET;
        let mut requests = TURN_REQUESTS;
        self.moved = 0;
        loop {
            let mut moved = 0;
            self.fit_buffers();
            match self.read(ctx, scratch, &mut requests) {
                Ok(n) => moved += n,
                Err(e) => return self.read_failed(&e),
            }
            moved += handle_frames(&mut self.st, &mut self.tx, ctx, &mut self.rx, &mut requests);
            let tx_high = Limits::of(&self.st).tx_high;
            let bypass = self.link.bypass();
            moved += session::pump(&mut self.st, &mut self.tx, ctx, tx_high, bypass);
            match self.write() {
                Ok(n) => moved += n,
                Err(e) => return self.io_failed("write", &e),
            }
            self.fit_buffers();
            if moved > 0 {
                self.st.active = ctx.now;
            }
            self.moved += moved;
            if let Some(done) = self.finish_if_done() {
                return done;
            }
            if moved == 0 {
                return Drive::Idle;
            }
            budget = budget.saturating_sub(moved);
            if budget == 0 || requests == 0 {
                return Drive::Again;
            }
        }
    }

    /// Reads while the session wants input and replies are not piling up.
    ///
    /// With nothing carried over, bytes land in the reactor's shared
    /// scratch buffer and whole frames are handled straight from it; only
    /// an unfinished frame is copied into the connection's own buffer. So
    /// a connection holds receive memory only while a frame is split across
    /// reads. A read never takes more than the connection's own buffer could
    /// hold, so whatever handling leaves over (it may stop early: replies
    /// piling up, a job started, the turn's budget spent) always fits there.
    fn read(
        &mut self,
        ctx: &mut Ctx,
        scratch: &mut Buffer,
        requests: &mut usize,
    ) -> io::Result<usize> {
        if !self.can_read || self.peer_eof || !self.st.phase.wants_input() {
            return Ok(0);
        }
        let limits = Limits::of(&self.st);
        if self.tx.len() >= limits.tx_high || *requests == 0 || self.rx.is_full() {
            return Ok(0);
        }
        let direct = self.rx.is_empty();
        let into = if direct {
            scratch.set_cap(self.rx.room());
            &mut *scratch
        } else {
            &mut self.rx
        };
        let n = match into.read_from(&mut self.link.on(&mut self.stream))? {
            Io::Progress(n) => {
                self.can_read = false;
                n
            }
            Io::Full(n) => n,
            Io::Eof(n) => {
                self.peer_eof = true;
                n
            }
        };
        if self.st.encrypted && self.st.channel_binding.is_none() && !self.link.is_handshaking() {
            self.bind_channel()?;
        }
        if direct {
            handle_frames(&mut self.st, &mut self.tx, ctx, scratch, requests);
            if !scratch.is_empty() {
                if self.rx.extend(scratch.data()).is_err() {
                    // Cannot happen: the read was capped at the room left.
                    crate::log!(Error, "{}: receive buffer overflow", self.st.peer);
                    scratch.clear();
                    return Err(io::ErrorKind::OutOfMemory.into());
                }
                scratch.clear();
            }
        }
        Ok(n)
    }

    /// Sizes the buffers for what the session does now: before login both
    /// are small; a streaming reply may queue more; a transfer keeps its
    /// buffers' memory between pieces.
    fn fit_buffers(&mut self) {
        let limits = Limits::of(&self.st);
        self.tx.set_cap(limits.tx_cap);
        self.rx.set_cap(limits.rx);
        self.link.set_send_limit(limits.records);
        self.link.set_inbox_cap(limits.inbox);
        let transferring = self.st.phase.is_transfer();
        self.tx.set_keep(transferring);
        self.rx.set_keep(transferring);
        self.link.set_inbox_keep(transferring);
    }

    /// Takes the channel binding once the handshake is done, for the login.
    fn bind_channel(&mut self) -> io::Result<()> {
        match self.link.channel_binding() {
            Some(Ok(binding)) => {
                self.st.channel_binding = Some(binding);
                crate::log!(Debug, "{}: {}", self.st.peer, self.link.describe());
                Ok(())
            }
            Some(Err(e)) => Err(io::Error::other(LinkError::Tls(e))),
            None => Ok(()),
        }
    }

    /// Writes what is queued until the socket would block.
    fn write(&mut self) -> io::Result<usize> {
        if !self.can_write || (self.tx.is_empty() && !self.link.has_output()) {
            return Ok(0);
        }
        let mut n = self.tx.write_to(&mut self.link.on(&mut self.stream))?;
        match self.link.flush(&mut self.stream) {
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if !self.tx.is_empty() || self.link.has_output() {
            self.can_write = false;
        }
        Ok(n)
    }

    /// Whether everything queued, ours and TLS's, is out.
    fn all_sent(&self) -> bool {
        self.tx.is_empty() && !self.link.has_output()
    }

    /// Handles the end states: a lingering close and a peer that left.
    fn finish_if_done(&mut self) -> Option<Drive> {
        if let Phase::Done = self.st.phase {
            // A client that said goodbye needs no lingering close.
            return self.all_sent().then_some(Drive::Close);
        }
        if let Phase::Closing { .. } = self.st.phase {
            if self.tx.is_empty() && !self.close_notified {
                self.close_notified = true;
                self.link.close_notify();
                let _ = self.write();
            }
            if self.all_sent() && !self.write_shut {
                self.write_shut = true;
                // Our last reply is out; tell the peer, keep reading until
                // it closes too (or the linger timer ends it).
                let _ = self.stream.shutdown(Shutdown::Write);
            }
            if self.peer_eof {
                return Some(Drive::Close);
            }
        } else if self.peer_eof && self.rx.is_empty() {
            return Some(Drive::Close);
        } else if self.peer_eof
            && frame::decode::<Request>(self.rx.data())
                .ok()
                .flatten()
                .is_none()
        {
            // What is left can never become a whole frame.
            return Some(Drive::Close);
        }
        None
    }

    /// Bytes the last turn moved.
    pub fn moved(&self) -> usize {
        self.moved
    }

    /// A failed read: a TLS failure is logged as such, and a client that
    /// speaks in clear to this TLS server is told so, in clear (it could
    /// not read anything else, and the message holds no secret).
    fn read_failed(&mut self, e: &io::Error) -> Drive {
        let link_error = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<LinkError>());
        match link_error {
            Some(LinkError::NotTls(_)) => {
                crate::log!(
                    Info,
                    "{}: a client without TLS; told it TLS is required",
                    self.st.peer
                );
                let reply = Reply::Error {
                    code: ErrorCode::TlsRequired,
                    message: "this server speaks only TLS; connect without --plaintext".into(),
                };
                if let Ok(bytes) = frame::encode(&reply) {
                    let _ = io::Write::write(&mut self.stream, &bytes);
                }
                Drive::Close
            }
            Some(LinkError::Tls(tls)) => {
                crate::log!(Info, "{}: TLS failed: {tls}", self.st.peer);
                Drive::Close
            }
            None => self.io_failed("read", e),
        }
    }

    fn io_failed(&mut self, what: &str, e: &io::Error) -> Drive {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                crate::log!(Debug, "{}: {what}: {e}", self.st.peer)
            }
            _ => crate::log!(Info, "{}: {what} failed: {e}", self.st.peer),
        }
        Drive::Close
    }

    /// Whether the TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.link.is_handshaking()
    }

    /// Whether input waits in the socket, without taking it.
    pub fn pending(&self) -> Pending {
        match self.stream.peek(&mut [0u8; 1]) {
            Ok(0) => Pending::EndOrError,
            Ok(_) => Pending::Bytes,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Pending::Nothing,
            Err(_) => Pending::EndOrError,
        }
    }

    /// The session's deadline: when a timeout (or a delayed reply) is due.
    pub fn deadline(&self, ctx: &Ctx) -> Instant {
        self.st.deadline(&ctx.cfg)
    }

    /// Runs a due timeout; returns whether to close.
    pub fn on_timeout(&mut self, ctx: &mut Ctx, scratch: &mut Buffer) -> Drive {
        if session::timeout(&mut self.st, &mut self.tx, ctx) {
            return Drive::Close;
        }
        self.drive(ctx, scratch)
    }

    /// Hands a finished disk job back to the session.
    pub fn on_job(
        &mut self,
        ctx: &mut Ctx,
        scratch: &mut Buffer,
        result: session::JobResult,
    ) -> Drive {
        session::job_done(&mut self.st, &mut self.tx, ctx, result);
        self.drive(ctx, scratch)
    }
}
