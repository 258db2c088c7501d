//! A blocking, framed connection to `ftpd`: connect, `Hello`, login, and
//! request/reply exchange.
//!
//! Replies are decoded in place from one receive buffer (`frame::decode`
//! borrows from it), so a downloaded chunk goes from the socket buffer to the
//! file without another copy. The buffer is bounded: a frame never exceeds
//! `MAX_FRAME`, and the length is checked before waiting for the body.
//!
//! Every read and write waits under a [`Pace`], whose deadline the socket's
//! time-out is set to before each call, so no wait outlasts the rule in
//! `pace.rs` however the server spaces its bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use ftpd::frame::{self, HEADER_LEN};
use ftpd::proto::{ErrorCode, MAGIC, MAX_FRAME, PROTOCOL_VERSION, Reply, Request};
use ftpd::scram::{self, ClientLogin, ClientLoginError};

use crate::display::sanitize;
use crate::error::Failure;
use crate::pace::{Awaiting, Pace};
use crate::transport::{self, Security, Transport};

/// How long to wait for the TCP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive buffer size: several whole frames, so one `read` can take in a
/// lot of a download at once, and a partial frame rarely has to be moved.
const RX_CAP: usize = 4 * (MAX_FRAME + HEADER_LEN);

/// Read at least this much per `read` call while streaming; below it the
/// unread rest is moved to the front of the buffer first.
const MIN_READ: usize = 64 * 1024;

/// One session with the server.
pub struct Conn {
    stream: Transport,
    /// The server's address as given, the key of its pin.
    addr: String,
    security: Security,
    /// Received bytes; `rx[start..end]` are not yet consumed.
    rx: Box<[u8]>,
    start: usize,
    end: usize,
    /// Length of the frame handed out by the last [`Conn::recv`]; it is
    /// consumed on the next call, once the caller no longer borrows it.
    lent: usize,
    /// Encoded requests, reused.
    tx: Vec<u8>,
    /// Pipelined requests not written yet: they go out together, when
    /// ftpc next waits for the server or sends anything else.
    queued: Vec<u8>,
    /// The server's self-description from `Hello` ("ftpd 0.1.0").
    server: String,
    /// The protocol version the server speaks.
    version: u32,
    /// How long a reply may take, and a stream may go without a step of
    /// progress (`--timeout`).
    timeout: Duration,
    timeouts: Timeouts,
}

/// Queued requests are written once they hold this much: a stream of small
/// files (`put -r`) goes out in writes of about this size while the
/// server works on the earlier ones, instead of one write per file.
const QUEUE_WRITE_AT: usize = 64 * 1024;

/// The socket's time-outs as last set. Setting one is a system call, and a
/// download sets one before every read of a TLS record: 65,811 calls for
/// 1 GiB, where the value changes only near a deadline.
#[derive(Debug, Default)]
struct Timeouts {
    read: Option<Duration>,
    write: Option<Duration>,
}

impl Timeouts {
    fn set_read(&mut self, tcp: &TcpStream, limit: Duration) {
        if self.read != Some(limit) && tcp.set_read_timeout(Some(limit)).is_ok() {
            self.read = Some(limit);
        }
    }

    fn set_write(&mut self, tcp: &TcpStream, limit: Duration) {
        if self.write != Some(limit) && tcp.set_write_timeout(Some(limit)).is_ok() {
            self.write = Some(limit);
        }
    }
}

impl Conn {
    /// Connects to `addr` ("host:port"), secures the connection as
    /// `security` says, and exchanges `Hello`.
    pub fn connect(addr: &str, timeout: Duration, security: &Security) -> Result<Conn, Failure> {
        let cannot =
            |e: &dyn std::fmt::Display| Failure::Link(format!("cannot connect to {addr}: {e}"));
        let addrs = addr.to_socket_addrs().map_err(|e| cannot(&e))?;
        let mut last = None;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(cannot(&e)),
            (None, None) => return Err(cannot(&"no address found")),
        };
        // Requests are small and answered one by one: do not let Nagle
        // hold them back waiting for an ACK.
        stream.set_nodelay(true).map_err(|e| cannot(&e))?;
        let stream = match security {
            Security::Plaintext => Transport::Plain(stream),
            Security::Tls(policy) => transport::handshake(stream, addr, policy, timeout)?,
        };
        let mut conn = Conn {
            stream,
            addr: addr.to_owned(),
            security: security.clone(),
            rx: vec![0; RX_CAP].into_boxed_slice(),
            start: 0,
            end: 0,
            lent: 0,
            tx: Vec::with_capacity(1024),
            queued: Vec::new(),
            server: String::new(),
            version: 0,
            timeout,
            timeouts: Timeouts::default(),
        };
        conn.hello()?;
        Ok(conn)
    }

    fn hello(&mut self) -> Result<(), Failure> {
        self.send(&Request::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
        })?;
        match self.recv() {
            Ok(Reply::Hello { version, .. }) if version != PROTOCOL_VERSION => {
                Err(Failure::Link(format!(
                    "version mismatch: this ftpc speaks protocol {PROTOCOL_VERSION}, the server {version}"
                )))
            }
            Ok(Reply::Hello { version, server }) => {
                self.server = sanitize(&server).into_owned();
                self.version = version;
                Ok(())
            }
            Ok(other) => Err(Failure::unexpected("Hello", &other)),
            Err(Failure::Refused {
                code: ErrorCode::VersionMismatch,
                message,
            }) => Err(Failure::Link(format!(
                "version mismatch: this ftpc speaks protocol {PROTOCOL_VERSION}; the server says: {message}"
            ))),
            Err(Failure::Refused {
                code: ErrorCode::TlsRequired,
                ..
            }) => Err(Failure::Link(format!(
                "the server at {} requires TLS; connect without --plaintext",
                self.addr
            ))),
            Err(e) => Err(e),
        }
    }

    /// The server's name and version, as it said in `Hello`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The protocol version the server speaks.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Logs in as `user` with SCRAM: proves we know the password without
    /// sending it, and makes the server prove it knows the password's key.
    /// Returns a note for the user when it pinned the server's key.
    pub fn login(&mut self, user: &str, password: &[u8]) -> Result<Option<String>, Failure> {
        let failed = |m: &str| Failure::Login(format!("login failed for {}: {m}", sanitize(user)));
        let login_error = |e: Failure| match e {
            Failure::Refused { code, message } => match code {
                // The server never says which of the two was wrong.
                ErrorCode::AuthFailed => failed("wrong user name or password"),
                ErrorCode::LockedOut | ErrorCode::TooManySessions => failed(&message),
                _ => Failure::Refused { code, message },
            },
            other => other,
        };

        let login = ClientLogin::start(user, self.stream.channel_binding())
            .map_err(|e| Failure::Local(format!("cannot get random bytes: {e}")))?;
        self.send(&Request::LoginStart {
            user: user.to_owned(),
            client_nonce: login.client_nonce().to_vec(),
        })?;
        let (server_nonce, salt, kdf) = match self.recv().map_err(login_error)? {
            Reply::Challenge {
                server_nonce,
                salt,
                kdf,
            } => (server_nonce, salt, kdf),
            other => return Err(Failure::unexpected("Challenge", &other)),
        };
        let (proof, waiting) = login
            .on_challenge(&server_nonce, &salt, kdf, |salt, kdf| {
                scram::client_keys(password, salt, kdf)
            })
            .map_err(client_login_failure)?
            .map_err(|e| Failure::Local(format!("cannot derive the login key: {e}")))?;
        self.send(&Request::LoginProof {
            proof: proof.to_vec(),
        })?;
        match self.recv().map_err(login_error)? {
            Reply::LoginOk { server_signature } => {
                waiting
                    .on_success(&server_signature)
                    .map_err(client_login_failure)?;
                Ok(self.pin_if_new())
            }
            other => Err(Failure::unexpected("LoginOk", &other)),
        }
    }

    /// Pins a key accepted on first contact, now that the server proved
    /// over this very channel that it holds the user's `ServerKey`. Says
    /// what it did, as a note for the user; a pin that cannot be written
    /// costs only a question next time.
    fn pin_if_new(&mut self) -> Option<String> {
        let (Security::Tls(policy), Some(secured)) = (&self.security, self.stream.secured()) else {
            return None;
        };
        if !secured.trusted.to_pin() {
            return None;
        }
        let file = policy.known_hosts.path.display();
        if let Ok(Some((pinned, _))) = policy.known_hosts.lookup(&policy.host_port)
            && pinned == secured.fingerprint
        {
            return None;
        }
        Some(
            match policy
                .known_hosts
                .pin(&policy.host_port, &secured.fingerprint)
            {
                Ok(()) => format!(
                    "pinned the key {} for {} in {file}",
                    secured.fingerprint, policy.host_port
                ),
                Err(e) => format!("warning: cannot pin the server's key in {file}: {e}"),
            },
        )
    }

    /// What protects the connection, for `ping`: the TLS version, cipher
    /// suite, key exchange and the server's key fingerprint.
    pub fn security_summary(&self) -> Vec<(&'static str, String)> {
        let mut lines = vec![("transport", self.stream.describe())];
        if let Some(s) = self.stream.secured() {
            lines.push(("server key", s.fingerprint.to_string()));
            lines.push(("trusted because", s.trusted.describe().to_owned()));
        }
        lines
    }

    /// How long a reply may take (`--timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Starts waiting for a stream of `awaiting`, under `--timeout`.
    pub fn pace(&self, awaiting: Awaiting) -> Pace {
        Pace::start(awaiting, self.timeout)
    }

    /// Queues a pipelined request: it is written with the others queued
    /// before ftpc next waits for a reply, or once they reach
    /// [`QUEUE_WRITE_AT`] (one write, and full TLS records, for many
    /// requests).
    pub fn queue(&mut self, req: &Request) -> Result<(), Failure> {
        frame::encode_into(req, &mut self.queued)
            .map_err(|e| Failure::Local(format!("cannot encode a request: {e}")))?;
        if self.queued.len() >= QUEUE_WRITE_AT {
            self.flush_queued()?;
        }
        Ok(())
    }

    /// Writes the queued requests.
    fn flush_queued(&mut self) -> Result<(), Failure> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let mut pace = self.pace(Awaiting::Request);
        let Conn {
            stream,
            queued,
            timeouts,
            ..
        } = self;
        let written = write_paced(stream, timeouts, queued, &mut pace);
        queued.clear();
        written
    }

    /// Sends one request (after any queued ones).
    pub fn send(&mut self, req: &Request) -> Result<(), Failure> {
        self.flush_queued()?;
        self.tx.clear();
        frame::encode_into(req, &mut self.tx)
            .map_err(|e| Failure::Local(format!("cannot encode a request: {e}")))?;
        let mut pace = self.pace(Awaiting::Request);
        let Conn {
            stream,
            tx,
            timeouts,
            ..
        } = self;
        write_paced(stream, timeouts, tx, &mut pace)
    }

    /// Sends bytes that are already framed (upload chunks), counting them
    /// as progress of `pace`.
    pub fn send_paced(&mut self, bytes: &[u8], pace: &mut Pace) -> Result<(), Failure> {
        self.flush_queued()?;
        write_paced(&mut self.stream, &mut self.timeouts, bytes, pace)
    }

    /// Receives the next reply, which must arrive whole within `--timeout`.
    /// An `Error` reply becomes [`Failure::Refused`]; the reply borrows the
    /// receive buffer until the next call.
    pub fn recv(&mut self) -> Result<Reply<'_>, Failure> {
        self.recv_within(self.timeout)
    }

    /// Like [`Conn::recv`], with a time-out of its own (a `PutDone` may
    /// follow a long `fsync`).
    pub fn recv_within(&mut self, timeout: Duration) -> Result<Reply<'_>, Failure> {
        self.recv_paced(&Pace::start(Awaiting::Reply, timeout))
    }

    /// Receives the next frame of a stream before `pace`'s deadline; the
    /// caller counts the progress it brings.
    pub fn recv_paced(&mut self, pace: &Pace) -> Result<Reply<'_>, Failure> {
        self.start += std::mem::take(&mut self.lent);
        let len = loop {
            let data = &self.rx[self.start..self.end];
            if let Some(header) = data.first_chunk::<HEADER_LEN>() {
                let body = u32::from_be_bytes(*header) as usize;
                if body > MAX_FRAME {
                    return Err(Failure::Link(format!(
                        "protocol error: the server sent a frame of {body} bytes"
                    )));
                }
                if data.len() >= HEADER_LEN + body {
                    break HEADER_LEN + body;
                }
            }
            self.fill(pace)?;
        };
        self.lent = len;
        let frame = &self.rx[self.start..self.start + len];
        let reply = match frame::decode::<Reply>(frame) {
            Ok(Some((reply, _))) => reply,
            // Cannot happen: the whole frame was checked to be present.
            Ok(None) => return Err(Failure::Link("protocol error: incomplete frame".into())),
            Err(e) => return Err(Failure::Link(format!("protocol error: {e}"))),
        };
        if let Err(v) = reply.check() {
            return Err(Failure::Link(format!(
                "protocol error: the server sent {v}"
            )));
        }
        match reply {
            Reply::Error { code, message } => Err(Failure::refused(code, &message)),
            reply => Ok(reply),
        }
    }

    /// Sends `req` and receives its reply.
    pub fn call(&mut self, req: &Request) -> Result<Reply<'_>, Failure> {
        self.send(req)?;
        self.recv()
    }

    /// Sends `req` and expects a plain `Ok`.
    pub fn call_ok(&mut self, req: &Request) -> Result<(), Failure> {
        match self.call(req)? {
            Reply::Ok => Ok(()),
            other => Err(Failure::unexpected("Ok", &other)),
        }
    }

    /// Reads more bytes into the receive buffer before `pace`'s deadline.
    fn fill(&mut self, pace: &Pace) -> Result<(), Failure> {
        // What we wait for may answer a queued request.
        self.flush_queued()?;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.rx.len() - self.end < MIN_READ {
            self.rx.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        loop {
            // Only fails for a zero duration, which `left` never is.
            // In short slices, so a Ctrl-C in the shell is seen while we
            // wait (the signal may land on another thread, such as the
            // progress bar's, and interrupt nothing here).
            let slice = pace.left()?.min(crate::cancel::POLL);
            self.timeouts.set_read(self.stream.tcp(), slice);
            match self.stream.read(&mut self.rx[self.end..]) {
                Ok(0) => return Err(Failure::Link("the server closed the connection".into())),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                // A signal arrived, or the slice ran out: Ctrl-C in the
                // shell ends the wait, and `left` says whether the
                // deadline has passed.
                Err(e) if is_retry(&e) => crate::cancel::check()?,
                Err(e) => return Err(lost(&e, "waiting for the server")),
            }
        }
    }

    /// Whether the server has sent something (or closed) without our
    /// asking; lets an upload notice an early `Error` without blocking.
    pub fn reply_waiting(&mut self) -> bool {
        if self.start + self.lent < self.end || self.stream.holds_input() {
            return true;
        }
        let tcp = self.stream.tcp();
        if tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let waiting = match tcp.peek(&mut byte) {
            // Data, or EOF: either way the next `recv` has something to say.
            Ok(_) => true,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
        };
        // If this fails the next blocking read fails too and reports it.
        let _ = tcp.set_nonblocking(false);
        waiting
    }

    /// Ends the session politely. Errors are ignored: the session is over
    /// either way.
    pub fn bye(mut self) {
        if self.send(&Request::Bye).is_ok() {
            self.stream.close();
        }
    }
}

/// Writes all of `bytes` before `pace`'s deadline, counting what the
/// server takes as progress.
fn write_paced(
    stream: &mut Transport,
    timeouts: &mut Timeouts,
    bytes: &[u8],
    pace: &mut Pace,
) -> Result<(), Failure> {
    let mut rest = bytes;
    while !rest.is_empty() {
        // Only fails for a zero duration, which `left` never is.
        let slice = pace.left()?.min(crate::cancel::POLL);
        timeouts.set_write(stream.tcp(), slice);
        match stream.write(rest) {
            Ok(0) => {
                let e = std::io::Error::from(ErrorKind::WriteZero);
                return Err(lost(&e, "sending to the server"));
            }
            Ok(n) => {
                rest = &rest[n..];
                pace.advance(n as u64);
            }
            // As in `fill`: a cancel ends the wait, `left` decides whether
            // time is up.
            Err(e) if is_retry(&e) => crate::cancel::check()?,
            Err(e) => return Err(lost(&e, "sending to the server")),
        }
    }
    Ok(())
}

/// Whether a socket call ended without failing: a signal, or the socket's
/// time-out (which shows up as either kind, depending on the platform).
fn is_retry(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
    )
}

/// Words for a socket error.
fn lost(e: &std::io::Error, doing: &str) -> Failure {
    Failure::Link(format!("connection lost while {doing}: {e}"))
}

/// A login the client's side refused.
fn client_login_failure(e: ClientLoginError) -> Failure {
    match e {
        ClientLoginError::ShortNonce(_) | ClientLoginError::Kdf(_) => Failure::Link(e.to_string()),
        ClientLoginError::ServerUnproven => Failure::Login(e.to_string()),
    }
}
