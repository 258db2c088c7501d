//! The client's transport: TLS 1.3 over TCP by default, TCP alone with
//! `--plaintext`. The handshake checks the server's key with
//! [`ftpd::tls::trust`] and words every way it can fail for a person: an
//! unknown or changed key (exit 8), a server that speaks no TLS, one that
//! turned us away, a time-out.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use ftpd::frame;
use ftpd::proto::{ErrorCode, Reply};
use ftpd::tls::link::Link;
use ftpd::tls::link::TLS_HANDSHAKE_RECORD;
use ftpd::tls::trust::{Outcome, Policy, Refusal, Trusted, Verifier};
use ftpd::tls::{self, ChannelBinding, Fingerprint};
use rustls::ClientConnection;
use rustls::pki_types::ServerName;

use crate::error::Failure;

/// How the client protects the connection (`--plaintext` or not).
#[derive(Debug, Clone)]
pub enum Security {
    /// No TLS: only for links that are already private.
    Plaintext,
    /// TLS, trusting the server's key per the policy.
    Tls(Policy),
}

/// Bytes of the server's first answer kept to explain a failed handshake:
/// enough for a refusal frame sent in clear.
const SNIFF_LEN: usize = 512;

/// An established connection.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<Secured>),
}

/// Most TLS bytes taken from the socket at once: a big read saves system
/// calls on a download.
const INBOX: usize = 256 * 1024;

/// A TLS connection and what its handshake established.
pub struct Secured {
    link: Link,
    tcp: TcpStream,
    pub fingerprint: Fingerprint,
    pub trusted: Trusted,
    pub channel_binding: ChannelBinding,
}

impl Transport {
    /// The TCP socket underneath, for time-outs, peeking and shutdown.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(s) => &s.tcp,
        }
    }

    pub fn secured(&self) -> Option<&Secured> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(s) => Some(s),
        }
    }

    /// The channel binding the login signs; `None` in clear.
    pub fn channel_binding(&self) -> Option<ChannelBinding> {
        self.secured().map(|s| s.channel_binding)
    }

    /// "TLS 1.3, TLS13_AES_128_GCM_SHA256, X25519MLKEM768", or "plaintext".
    pub fn describe(&self) -> String {
        match self {
            Transport::Plain(_) => "plaintext (not encrypted)".to_owned(),
            Transport::Tls(s) => s.link.describe(),
        }
    }

    /// Whether TLS already holds decrypted bytes (or the peer's close)
    /// that a peek at the socket would not show.
    pub fn holds_input(&mut self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(s) => s.link.holds_input(),
        }
    }

    /// Ends our side: a `close_notify` over TLS, then a TCP half-close.
    pub fn close(&mut self) {
        if let Transport::Tls(s) = self {
            s.link.close_notify();
            let _ = s.link.flush(&mut s.tcp);
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buf),
            Transport::Tls(s) => {
                // What we sent must be out before we wait for an answer.
                s.link.flush(&mut s.tcp)?;
                s.link.on(&mut s.tcp).read(buf)
            }
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.write(buf),
            Transport::Tls(s) => s.link.on(&mut s.tcp).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.flush(),
            Transport::Tls(s) => s.link.flush(&mut s.tcp).map(drop),
        }
    }
}

/// Runs the TLS handshake over `tcp` with the server at `addr`.
pub fn handshake(
    mut tcp: TcpStream,
    addr: &str,
    policy: &Policy,
    timeout: Duration,
) -> Result<Transport, Failure> {
    let provider = tls::provider();
    let verifier = Arc::new(Verifier::new(policy.clone(), &provider));
    let config = tls::client_config(verifier.clone())
        .map_err(|e| Failure::Local(format!("cannot set up TLS: {e}")))?;
    let name = server_name(addr)?;
    let mut conn = ClientConnection::new(Arc::new(config), name)
        .map_err(|e| Failure::Local(format!("cannot start TLS: {e}")))?;
    // Only fail for a zero duration, which `timeout` never is.
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let mut sniff = Sniff {
        tcp: &mut tcp,
        seen: Vec::new(),
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sniff) {
            return Err(explain(&e, addr, verifier.outcome(), &sniff.seen));
        }
    }
    let Some(Outcome {
        fingerprint: Some(fingerprint),
        verdict: Ok(trusted),
    }) = verifier.outcome()
    else {
        return Err(Failure::Link(format!(
            "TLS handshake with {addr} ended without a checked server key"
        )));
    };
    let channel_binding = tls::channel_binding(&*conn)
        .map_err(|e| Failure::Link(format!("TLS channel binding failed: {e}")))?;
    let mut link = Link::client(conn);
    link.set_inbox_cap(INBOX);
    link.set_inbox_keep(true);
    Ok(Transport::Tls(Box::new(Secured {
        link,
        tcp,
        fingerprint,
        trusted,
        channel_binding,
    })))
}

/// The name the certificate is checked against: the host part of `addr`.
fn server_name(addr: &str) -> Result<ServerName<'static>, Failure> {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|_| Failure::Usage(format!("not a host name or address: {host:?}")))
}

/// Words for a failed handshake, from what the verifier decided and the
/// first bytes the server sent.
fn explain(e: &io::Error, addr: &str, outcome: Option<Outcome>, seen: &[u8]) -> Failure {
    if let Some(Outcome {
        verdict: Err(refusal),
        ..
    }) = outcome
    {
        return refused(addr, refusal);
    }
    if seen.first().is_some_and(|&b| b != TLS_HANDSHAKE_RECORD) {
        // Not TLS: perhaps one of our frames, sent in clear.
        return match frame::decode::<Reply>(seen) {
            Ok(Some((
                Reply::Error {
                    code: ErrorCode::NoTls,
                    ..
                },
                _,
            ))) => Failure::Link(format!(
                "the server at {addr} does not speak TLS (it runs with --plaintext); \
                 --plaintext is for trusted links only"
            )),
            Ok(Some((Reply::Error { code, message }, _))) => Failure::refused(code, &message),
            _ => Failure::Link(format!(
                "the server at {addr} does not speak TLS: it answered with something else"
            )),
        };
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Failure::Link(format!("TLS handshake with {addr} timed out"))
        }
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => Failure::Link(format!(
            "the server at {addr} closed the connection during the TLS handshake"
        )),
        _ => Failure::Link(format!("TLS handshake with {addr} failed: {e}")),
    }
}

/// Words for a key the policy refused.
fn refused(addr: &str, refusal: Refusal) -> Failure {
    match refusal {
        Refusal::NotExpected { expected, offered } => Failure::Trust(format!(
            "the server at {addr} offered the key {offered}, not the {expected} given with \
             --fingerprint; refusing it"
        )),
        Refusal::Changed {
            host_port,
            pinned,
            offered,
            file,
            line,
        } => Failure::Trust(format!(
            "WARNING: the key of {host_port} has changed!\n\
             Someone could be intercepting your connection, or the server's key was replaced.\n\
             expected: {pinned}\n\
             offered:  {offered}\n\
             If the change is expected, delete line {line} of {} and connect again.",
            file.display()
        )),
        Refusal::Unknown { offered } => Failure::UnknownKey {
            host_port: addr.to_owned(),
            offered,
        },
        Refusal::Unreadable(why) => Failure::Trust(format!(
            "the server at {addr} sent a certificate that cannot be read: {why}"
        )),
    }
}

/// The socket, remembering the first bytes the server sent.
struct Sniff<'a> {
    tcp: &'a mut TcpStream,
    seen: Vec<u8>,
}

impl Read for Sniff<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.read(buf)?;
        let keep = n.min(SNIFF_LEN.saturating_sub(self.seen.len()));
        self.seen.extend_from_slice(&buf[..keep]);
        Ok(n)
    }
}

impl Write for Sniff<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}
