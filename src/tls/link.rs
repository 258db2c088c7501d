//! The transport seam for nonblocking sockets: a connection's bytes go
//! through a [`Link`], which is either the socket itself or a rustls
//! connection over it. [`Link::on`] gives a `Read + Write` view whose
//! reads return plaintext and whose writes take plaintext, so the buffers
//! and state machines above never see TLS.
//!
//! Reads: drain rustls's decrypted bytes; when there are none, feed it
//! from the link's inbox and `process_new_packets`, refilling the inbox
//! from the socket when it is empty, until the socket would block. The
//! inbox is there because rustls reads at most 4 KiB per call on its own:
//! one large read into the inbox saves most of the system calls of a
//! stream. Handshake answers that processing produced are sent at once. Writes:
//! rustls takes plaintext only up to [`super::SEND_BUFFER_LIMIT`] of
//! unsent records, so a peer that stops reading holds a bounded amount,
//! and what rustls cannot take stays in the caller's buffer, where its
//! backpressure sees it. [`Link::has_output`] says whether records are
//! still waiting for the socket, and [`Link::flush`] sends them.
//!
//! The same adapter serves the server (mio sockets), `ftpload` and the
//! blocking `ftpc`. The server also writes download chunks through
//! [`Link::bypass`], past its send buffer, straight into rustls.

use std::io::{self, IoSlice, Read, Write};

use rustls::{ClientConnection, Connection, ServerConnection};

use super::{ChannelBinding, SEND_BUFFER_LIMIT};
use crate::buf::{Buffer, Bypass};

/// Largest socket read the inbox takes by default (a few records).
pub const INBOX_CAP: usize = 64 * 1024;

/// The first byte of every TLS handshake record.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why a TLS link failed, for the log and for the peer's message.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer spoke in clear to a TLS endpoint.
    #[error("the peer does not speak TLS (its first byte was {0:#04x})")]
    NotTls(u8),
    /// The TLS layer refused what arrived.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// One connection's transport.
pub enum Link {
    /// Bytes go to the socket as they are (`--plaintext`).
    Plain,
    /// Bytes go through TLS.
    Tls(Box<Tls>),
}

/// A TLS connection and what the link remembers about it.
pub struct Tls {
    conn: Connection,
    /// Bytes read from the socket that rustls has not taken yet; empty
    /// (and then holding no memory) whenever the peer is quiet.
    inbox: Buffer,
    /// The socket's end of file was read into the inbox.
    peer_closed: bool,
    /// The first byte the peer sent, once it has sent one: tells a peer
    /// that speaks in clear from one that speaks TLS badly.
    first_byte: Option<u8>,
}

impl Link {
    /// A server's end of a new connection.
    pub fn server(mut conn: ServerConnection) -> Link {
        conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        Link::tls(Connection::Server(conn))
    }

    /// A client's end of a new connection.
    pub fn client(mut conn: ClientConnection) -> Link {
        conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        Link::tls(Connection::Client(conn))
    }

    fn tls(conn: Connection) -> Link {
        Link::Tls(Box::new(Tls {
            conn,
            inbox: Buffer::with_cap(INBOX_CAP),
            peer_closed: false,
            first_byte: None,
        }))
    }

    /// A `Read + Write` view of the link over `sock`.
    pub fn on<'a, S: Read + Write>(&'a mut self, sock: &'a mut S) -> LinkIo<'a, S> {
        LinkIo { link: self, sock }
    }

    /// How many bytes of unsent records rustls may hold before it takes no
    /// more plaintext (a few KiB before login, more for a stream).
    pub fn set_send_limit(&mut self, limit: usize) {
        if let Link::Tls(tls) = self {
            tls.conn.set_buffer_limit(Some(limit));
        }
    }

    /// The most the inbox reads from the socket at once (small before
    /// login, where nothing needs speed).
    pub fn set_inbox_cap(&mut self, cap: usize) {
        if let Link::Tls(tls) = self {
            tls.inbox.set_cap(cap);
        }
    }

    /// Whether the inbox keeps its memory while empty (during a transfer,
    /// where it refills at once).
    pub fn set_inbox_keep(&mut self, keep: bool) {
        if let Link::Tls(tls) = self {
            tls.inbox.set_keep(keep);
        }
    }

    /// Whether input waits that a peek at the socket would not show:
    /// decrypted bytes, records not yet decrypted, or the peer's close.
    pub fn holds_input(&mut self) -> bool {
        match self {
            Link::Plain => false,
            Link::Tls(tls) => {
                !tls.inbox.is_empty()
                    || tls.peer_closed
                    || tls
                        .conn
                        .process_new_packets()
                        .map(|io| io.plaintext_bytes_to_read() > 0 || io.peer_has_closed())
                        .unwrap_or(true)
            }
        }
    }

    /// Whether encrypted bytes wait to be written to the socket.
    pub fn has_output(&self) -> bool {
        match self {
            Link::Plain => false,
            Link::Tls(tls) => tls.conn.wants_write(),
        }
    }

    /// Writes waiting records until done or the socket would block; returns
    /// the bytes written.
    pub fn flush<S: Write>(&mut self, sock: &mut S) -> io::Result<usize> {
        match self {
            Link::Plain => Ok(0),
            Link::Tls(tls) => flush_records(&mut tls.conn, sock),
        }
    }

    /// Whether the TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        match self {
            Link::Plain => false,
            Link::Tls(tls) => tls.conn.is_handshaking(),
        }
    }

    /// The connection's channel binding, once the handshake is done; `None`
    /// in clear.
    pub fn channel_binding(&self) -> Option<Result<ChannelBinding, rustls::Error>> {
        match self {
            Link::Plain => None,
            Link::Tls(tls) => Some(match &tls.conn {
                Connection::Client(c) => super::channel_binding(&**c),
                Connection::Server(s) => super::channel_binding(&**s),
            }),
        }
    }

    /// What the handshake negotiated, or "plaintext".
    pub fn describe(&self) -> String {
        match self {
            Link::Plain => "plaintext".to_owned(),
            Link::Tls(tls) => super::describe(&tls.conn),
        }
    }

    /// The peer's certificate chain (a client's view of the server).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        match self {
            Link::Plain => None,
            Link::Tls(tls) => tls.conn.peer_certificates(),
        }
    }

    /// Queues a `close_notify` alert, so the peer can tell our end of the
    /// stream from a cut; [`Link::flush`] sends it.
    pub fn close_notify(&mut self) {
        if let Link::Tls(tls) = self {
            tls.conn.send_close_notify();
        }
    }

    /// A way past the caller's send buffer for bulk plaintext: rustls, which
    /// seals what it takes up to its send limit; `None` in clear.
    pub fn bypass(&mut self) -> Option<&mut dyn Bypass> {
        match self {
            Link::Plain => None,
            Link::Tls(tls) => Some(&mut **tls),
        }
    }

    /// Whether the peer has sent anything yet (the server's check that a
    /// client speaking in clear gets told why it is refused).
    pub fn heard_from_peer(&self) -> bool {
        match self {
            Link::Plain => true,
            Link::Tls(tls) => tls.first_byte.is_some(),
        }
    }
}

impl Bypass for Tls {
    fn take(&mut self, head: &[u8], body: &[u8]) -> io::Result<usize> {
        self.conn
            .writer()
            .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
    }
}

/// A link borrowed together with its socket; see [`Link::on`].
pub struct LinkIo<'a, S> {
    link: &'a mut Link,
    sock: &'a mut S,
}

impl<S: Read + Write> Read for LinkIo<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let tls = match self.link {
            Link::Plain => return self.sock.read(buf),
            Link::Tls(tls) => tls,
        };
        loop {
            match tls.conn.reader().read(buf) {
                // Ok(0) is the peer's close_notify: a clean end.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.inbox.is_empty() {
                if tls.peer_closed {
                    // The socket's end of file, with or without close_notify.
                    return Ok(0);
                }
                // One read per refill: a blocking socket must not wait for
                // more than the peer has sent.
                let room = tls.inbox.room();
                let space = tls.inbox.spare(room);
                let len = space.len().min(room);
                match self.sock.read(&mut space[..len]) {
                    Ok(0) => tls.peer_closed = true,
                    Ok(n) => tls.inbox.commit(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
                if tls.first_byte.is_none() {
                    tls.first_byte = tls.inbox.data().first().copied();
                }
                continue;
            }
            let mut pending = tls.inbox.data();
            let taken = tls.conn.read_tls(&mut pending)?;
            tls.inbox.consume(taken);
            if let Err(e) = tls.conn.process_new_packets() {
                let why = match tls.first_byte {
                    // A peer in clear could not read an alert; the caller
                    // answers it in clear instead.
                    Some(b) if b != TLS_HANDSHAKE_RECORD => LinkError::NotTls(b),
                    _ => {
                        // Tell the peer why (rustls queued an alert), best effort.
                        let _ = flush_records(&mut tls.conn, self.sock);
                        LinkError::Tls(e)
                    }
                };
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            }
            // The handshake may owe the peer an answer now.
            match flush_records(&mut tls.conn, self.sock) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }
}

impl<S: Read + Write> Write for LinkIo<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let tls = match self.link {
            Link::Plain => return self.sock.write(buf),
            Link::Tls(tls) => tls,
        };
        if buf.is_empty() {
            return Ok(0);
        }
        let sent = |r: io::Result<usize>| match r {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        };
        sent(flush_records(&mut tls.conn, self.sock))?;
        let taken = tls.conn.writer().write(buf)?;
        sent(flush_records(&mut tls.conn, self.sock))?;
        if taken == 0 {
            // rustls's buffer is at its limit and the socket is full.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.link.flush(self.sock).map(drop)
    }
}

/// Writes TLS records until none wait or the socket would block. Returns
/// `WouldBlock` only when records are left and nothing could be written.
fn flush_records<S: Write>(conn: &mut Connection, sock: &mut S) -> io::Result<usize> {
    let mut total = 0;
    while conn.wants_write() {
        match conn.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && total > 0 => return Ok(total),
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}
