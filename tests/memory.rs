//! What one connection can make the server hold: floods of requests from
//! peers that never read their replies, before and after login, must not
//! grow the server's memory past the README's limits table.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

use ftpd::frame;
use ftpd::proto::{MAGIC, PROTOCOL_VERSION, Reply, Request};

use crate::util::{DataDir, Raw, TestServer, rss_kib};

/// A socket from `source` to `server` with a tiny receive window, so the
/// server's replies back up at once.
pub fn tiny_window_stream(source: IpAddr, server: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let fd: OwnedFd =
        rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
    sockopt::set_socket_recv_buffer_size(&fd, 1024).expect("SO_RCVBUF");
    rustix::net::bind(&fd, &SocketAddr::new(source, 0)).expect("bind source");
    rustix::net::connect(&fd, &server).expect("connect");
    TcpStream::from(fd)
}

/// RSS once it has stopped moving (the server took what it will).
pub fn settled_rss_kib(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = rss_kib(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// The server still answers a newcomer.
pub fn still_serves(server: &TestServer) {
    let mut raw = server.raw();
    raw.hello();
    assert!(matches!(raw.call(&Request::Ping), Reply::Pong));
}

/// Peers that send `Hello` and then MiBs of `Ping` without reading the
/// replies, 100 from each of three addresses; returns the server's RSS
/// growth per connection, in KiB.
fn pre_login_flood(extra: &[&str]) -> u64 {
    const PER_ADDR: usize = 100;
    let data = DataDir::new();
    let mut args = vec!["--max-conns-per-ip", "256"];
    args.extend_from_slice(extra);
    let server = TestServer::start(&data, &args);
    let pid = server.child.id();
    still_serves(&server);
    let before = settled_rss_kib(pid);
    let ping = frame::encode(&Request::Ping).unwrap();
    let mut peers = Vec::new();
    let mut sent = 0;
    for last in 2..=4u8 {
        let source = IpAddr::from([127, 0, 0, last]);
        for _ in 0..PER_ADDR {
            let stream = tiny_window_stream(source, server.addr);
            let mut peer = if server.tls() {
                Raw::from_stream(stream)
            } else {
                Raw::from_stream_plain(stream)
            };
            peer.send(&Request::Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
            });
            sent += peer.flood(&ping, 4 << 20);
            peers.push(peer);
        }
    }
    let after = settled_rss_kib(pid);
    let conns = peers.len() as u64;
    let per_conn = after.saturating_sub(before) / conns;
    eprintln!(
        "{}: {conns} flooding connections ({} MiB sent): RSS {before} -> {after} KiB, {per_conn} KiB each",
        if server.tls() { "TLS" } else { "plaintext" },
        sent >> 20
    );
    still_serves(&server);
    per_conn
}

#[test]
fn pings_before_login_from_peers_that_never_read_stay_small() {
    // In clear a connection holds at most a 516-byte receive buffer and a
    // 2.5 KiB reply buffer (README, limits table), plus its state.
    let plain = pre_login_flood(&["--plaintext"]);
    assert!(
        plain <= 8,
        "{plain} KiB per connection before login, in clear"
    );
    // TLS adds rustls's buffers: a record being received, one decrypted
    // record, and a few KiB of records to send, plus its state.
    let tls = pre_login_flood(&[]);
    assert!(tls <= 64, "{tls} KiB per TLS connection before login");
}

#[test]
fn pings_after_login_from_sessions_that_never_read_stay_bounded() {
    const SESSIONS: usize = 60;
    let data = DataDir::new();
    data.add_user("alice", "pw", None);
    let server = TestServer::start(&data, &[]);
    let pid = server.child.id();
    still_serves(&server);
    // Log in over ordinary sockets first, then flood from each.
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let mut raw = server.raw();
        raw.hello();
        assert!(matches!(raw.login("alice", "pw"), Reply::LoginOk { .. }));
        sessions.push(raw);
    }
    let before = settled_rss_kib(pid);
    let ping = frame::encode(&Request::Ping).unwrap();
    for raw in &mut sessions {
        rustix::net::sockopt::set_socket_recv_buffer_size(&raw.stream, 1024).expect("SO_RCVBUF");
        raw.flood(&ping, 8 << 20);
    }
    let after = settled_rss_kib(pid);
    let per_conn = after.saturating_sub(before) / SESSIONS as u64;
    eprintln!("{SESSIONS} flooding sessions: RSS {before} -> {after} KiB, {per_conn} KiB each");
    // Logged in: a 145 KiB receive buffer and a reply buffer of 64 KiB
    // plus one frame (README, limits table), and rustls's buffers.
    assert!(per_conn <= 420, "{per_conn} KiB per logged-in connection");
    still_serves(&server);
}

#[test]
fn listings_nobody_reads_hold_a_batch_not_the_folder() {
    const SESSIONS: usize = 60;
    let data = DataDir::new();
    data.add_user("alice", "pw", None);
    // 20,000 of the longest names, made behind the server's back (a
    // listing does not care how they came).
    let big = data.home("alice").join("big");
    std::fs::create_dir_all(&big).unwrap();
    for i in 0..20_000 {
        std::fs::File::create(big.join(format!("{i:0>255}"))).unwrap();
    }
    let server = TestServer::start(&data, &[]);
    let pid = server.child.id();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let mut raw = Raw::connect_tiny_window(server.addr);
        raw.hello();
        assert!(matches!(raw.login("alice", "pw"), Reply::LoginOk { .. }));
        sessions.push(raw);
    }
    let before = settled_rss_kib(pid);
    for raw in &mut sessions {
        raw.send(&Request::List {
            path: "/big".into(),
        });
    }
    let after = settled_rss_kib(pid);
    let per_listing = after.saturating_sub(before) / SESSIONS as u64;
    eprintln!(
        "{SESSIONS} parked listings of 20,000 names: RSS {before} -> {after} KiB, {per_listing} KiB each"
    );
    // A parked listing holds its folder handle, one batch of at most 256
    // entries and a send buffer of 64 KiB plus one frame (README, limits).
    assert!(per_listing <= 400, "{per_listing} KiB per parked listing");
    still_serves(&server);
}
