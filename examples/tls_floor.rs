//! The least CPU that TLS adds on this machine, measured in memory with no
//! sockets: ftpd's own TLS configuration (its provider, suites, groups and a
//! generated ECDSA P-256 identity), client and server driven by one thread.
//!
//! - A full handshake: the server's and the client's time each (median of
//!   `HANDSHAKES`), which a `transfer` session pays on top of plaintext.
//! - A 1 GiB stream: the server's time to seal it (`writer()`, in the
//!   pieces a download uses) and the client's time to open it (records in, `process_new_packets`,
//!   `reader()`), which a 1 GiB get pays on top of plaintext, on each side.
//!   Copying the records to and from a socket is left out: plaintext pays
//!   the same copies.
//!
//! Usage: `cargo run --release --example tls_floor [MIB]` (default 1024).
//! Times are wall-clock of one busy thread: run it on a quiet machine.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftpd::tls::identity::Source;
use ftpd::tls::trust::{Policy, Verifier};
use ftpd::tls::{self, Fingerprint};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

const HANDSHAKES: usize = 400;
/// Bounds one handshake's round trips (TLS 1.3 needs two).
const MAX_FLIGHTS: usize = 8;
/// Plaintext handed to the server per write, as a download chunk is.
const PIECE: usize = 128 * 1024;

/// A connected pair after its handshake.
type Pair = (ServerConnection, ClientConnection);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    // The copies and allocations measured must behave as in the server.
    ftpd::glibc_tunables::apply(&[
        ftpd::glibc_tunables::MEMCPY_VECTOR,
        ftpd::glibc_tunables::MALLOC_TRIM_THRESHOLD,
    ]);
    let mib: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|e| format!("{arg}: {e}"))?,
        None => 1024,
    };
    let dir = tempfile::tempdir()?;
    let identity = Source::Generated {
        root: dir.path().to_owned(),
    }
    .load()?;
    let client = client_config(identity.fingerprint.clone(), dir.path())?;

    let mut server_times = Vec::with_capacity(HANDSHAKES);
    let mut client_times = Vec::with_capacity(HANDSHAKES);
    let mut last = None;
    for _ in 0..HANDSHAKES {
        let (pair, server, client) = handshake(&identity.config, &client)?;
        server_times.push(server);
        client_times.push(client);
        last = Some(pair);
    }
    let (mut server, mut client) = last.ok_or("no handshake ran")?;
    println!("negotiated: {}", tls::describe(&server));
    println!(
        "handshake, median of {HANDSHAKES}: server {} us, client {} us",
        median(&mut server_times).as_micros(),
        median(&mut client_times).as_micros()
    );

    let bytes = mib * 1024 * 1024;
    let (seal, open) = stream(&mut server, &mut client, bytes)?;
    let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    println!(
        "stream of {mib} MiB: server seals in {:.3} s ({:.1} GB/s), client opens in {:.3} s ({:.1} GB/s)",
        seal.as_secs_f64(),
        rate(seal),
        open.as_secs_f64(),
        rate(open)
    );
    Ok(())
}

/// A client that trusts exactly the generated key.
fn client_config(fingerprint: Fingerprint, dir: &std::path::Path) -> Result<Arc<ClientConfig>> {
    let policy = Policy::new(
        "localhost:0",
        Some(fingerprint),
        Some(dir.join("known_hosts")),
        false,
    )?;
    let verifier = Verifier::new(policy, &tls::provider());
    Ok(Arc::new(tls::client_config(Arc::new(verifier))?))
}

/// One full handshake; returns the pair and the time each side spent.
fn handshake(
    server_config: &Arc<ServerConfig>,
    client_config: &Arc<ClientConfig>,
) -> Result<(Pair, Duration, Duration)> {
    let mut server_time = Duration::ZERO;
    let start = Instant::now();
    let mut client =
        ClientConnection::new(client_config.clone(), ServerName::try_from("localhost")?)?;
    let mut client_time = start.elapsed();
    let start = Instant::now();
    let mut server = ServerConnection::new(server_config.clone())?;
    server_time += start.elapsed();
    let mut wire = Vec::new();
    for _ in 0..MAX_FLIGHTS {
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return Ok(((server, client), server_time, client_time));
        }
        let start = Instant::now();
        records_out(&mut client, &mut wire)?;
        client_time += start.elapsed();
        let start = Instant::now();
        feed(&mut server, &wire)?;
        records_out(&mut server, &mut wire)?;
        server_time += start.elapsed();
        let start = Instant::now();
        feed(&mut client, &wire)?;
        client_time += start.elapsed();
    }
    Err("the handshake did not finish".into())
}

/// Replaces `wire` with every record `conn` has to send.
fn records_out<D>(conn: &mut rustls::ConnectionCommon<D>, wire: &mut Vec<u8>) -> Result<()> {
    wire.clear();
    while conn.wants_write() {
        conn.write_tls(wire)?;
    }
    Ok(())
}

/// Hands `wire` to `conn` and processes it.
fn feed<D>(conn: &mut rustls::ConnectionCommon<D>, mut wire: &[u8]) -> Result<()> {
    while !wire.is_empty() {
        conn.read_tls(&mut wire)?;
        conn.process_new_packets()?;
    }
    Ok(())
}

/// Streams `bytes` from server to client the way the server streams a
/// download: rustls holds at most `STREAM_SEND_LIMIT` of records, which go
/// out before it takes more. Returns the sealing and the opening time.
fn stream(
    server: &mut ServerConnection,
    client: &mut ClientConnection,
    bytes: usize,
) -> Result<(Duration, Duration)> {
    server.set_buffer_limit(Some(tls::STREAM_SEND_LIMIT));
    let piece = vec![0x5au8; PIECE];
    let mut out = vec![0u8; PIECE];
    let mut wire = Vec::with_capacity(2 * tls::STREAM_SEND_LIMIT);
    let (mut seal, mut open) = (Duration::ZERO, Duration::ZERO);
    let mut sent = 0;
    let mut received = 0;
    while sent < bytes {
        // Pieces go in until rustls holds all it may, as in `pump_download`.
        let start = Instant::now();
        let mut taken = 0;
        while sent < bytes {
            let n = (bytes - sent).min(PIECE);
            taken = server.writer().write(&piece[..n])?;
            sent += taken;
            if taken < n {
                break;
            }
        }
        seal += start.elapsed();
        if taken == 0 && sent < bytes && !server.wants_write() {
            return Err("rustls took nothing with its records all sent".into());
        }
        records_out(server, &mut wire)?;
        let start = Instant::now();
        let mut records = &wire[..];
        while !records.is_empty() {
            client.read_tls(&mut records)?;
            client.process_new_packets()?;
            received += drain(client, &mut out)?;
        }
        open += start.elapsed();
    }
    if received != bytes {
        return Err(format!("sent {bytes} bytes, received {received}").into());
    }
    Ok((seal, open))
}

/// Reads all decrypted bytes into `out` (overwriting), as a client's
/// receive buffer takes them.
fn drain(client: &mut ClientConnection, out: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    loop {
        match client.reader().read(out) {
            Ok(0) => return Ok(got),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
            Err(e) => return Err(e.into()),
        }
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}
