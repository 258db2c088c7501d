//! Foundation: framing, limits, backpressure, timeouts, bad input.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ftpd::frame;
use ftpd::proto::{ErrorCode, MAGIC, PROTOCOL_VERSION, Reply, Request};

use crate::util::{DataDir, Raw, TestServer, rss_kib};

/// A fresh client can still do the whole first exchange.
fn assert_serving(server: &TestServer) {
    let mut c = server.raw();
    c.hello();
    assert_eq!(c.call(&Request::Ping), Reply::Pong);
}

#[test]
fn ping_round_trip_with_ftpc() {
    let data = DataDir::new();
    let server = TestServer::start(&data, &[]);
    let out = std::process::Command::new(crate::util::FTPC)
        .args(["--server", &server.addr.to_string()])
        .args(server.trust_args())
        .arg("ping")
        .output()
        .expect("ftpc");
    crate::util::assert_success(&out, "ftpc ping");
    let text = crate::util::stdout(&out);
    assert!(
        text.contains(&format!("protocol {}", ftpd::proto::PROTOCOL_VERSION)),
        "{text}"
    );
}

#[test]
fn many_concurrent_connections_are_all_served() {
    let data = DataDir::new();
    let server = TestServer::start(&data, &["--max-conns-per-ip", "1000"]);
    let mut clients: Vec<Raw> = (0..300).map(|_| server.raw()).collect();
    let hello = frame::encode(&Request::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
    })
    .unwrap();
    let ping = frame::encode(&Request::Ping).unwrap();
    for c in &mut clients {
        c.send_raw(&hello).unwrap();
        c.send_raw(&ping).unwrap();
    }
    for c in &mut clients {
        assert!(matches!(c.recv(), Some(Reply::Hello { .. })));
        assert_eq!(c.recv(), Some(Reply::Pong));
    }
}

#[test]
fn frames_glued_together_and_split_byte_by_byte() {
    let data = DataDir::new();
    let server = TestServer::start(&data, &[]);
    let mut c = server.raw();
    let mut bytes = frame::encode(&Request::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
    })
    .unwrap();
    for _ in 0..3 {
        bytes.extend(frame::encode(&Request::Ping).unwrap());
    }
    c.stream.set_nodelay(true).unwrap();
    for b in &bytes {
        c.send_raw(std::slice::from_ref(b)).unwrap();
    }
    assert!(matches!(c.recv(), Some(Reply::Hello { .. })));
    for _ in 0..3 {
        assert_eq!(c.recv(), Some(Reply::Pong));
    }
}

#[test]
fn garbage_closes_only_that_connection() {
    let data = DataDir::new();
    let server = TestServer::start(&data, &[]);
    let mut bystander = server.raw();
    bystander.hello();
    let mut c = server.raw();
    c.send_raw(&[0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])
        .unwrap();
    match c.recv() {
        Some(Reply::Error { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(c.recv(), None, "connection should close after garbage");
    assert_eq!(bystander.call(&Request::Ping), Reply::Pong);
    assert_serving(&server);
}

#[test]
fn oversized_length_prefix_is_refused_without_allocating() {
    let data = DataDir::new();
    let server = TestServer::start(&data, &[]);
    let before = rss_kib(server.child.id());
    let mut c = server.raw();
    c.send_raw(&u32::MAX.to_be_bytes()).unwrap();
    match c.recv() {
        Some(Reply::Error { code, message }) => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.contains("over the limit"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(c.recv(), None);
    assert!(rss_kib(server.child.id()) < before + 10 * 1024);
    assert_serving(&server);
}

#[test]
fn version_mismatch_is_a_clear_error() {
    let data = DataDir::new();
    let server = TestServer::start(&data, &[]);
    let mut c = server.raw();
    let reply = c.call(&Request::Hello {
        magic: MAGIC,
        version: 999,
    });
    match reply {
        Reply::Error { code, message } => {
            assert_eq!(code, ErrorCode::VersionMismatch);
            assert!(message.contains("999"), "{message}");
        }
        other => panic!("expected a version error, got {other:?}"),
    }
    assert_eq!(c.recv(), None);
}

#[test]
fn requests_out_of_order_are_refused_and_close() {
    let data = DataDir::new();
    let server = TestServer::start(&data, &[]);
    let mut c = server.raw();
    match c.call(&Request::Ping) {
        Reply::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(c.recv(), None);
    let mut c = server.raw();
    c.hello();
    for req in [
        Request::Pwd,
        Request::List { path: "/".into() },
        Request::GetStart {
            path: "x".into(),
            offset: 0,
            prefix_crc: 0,
        },
    ] {
        let mut c = server.raw();
        c.hello();
        match c.call(&req) {
            Reply::Error { code, .. } => assert_eq!(code, ErrorCode::NotLoggedIn),
            other => panic!("expected NotLoggedIn, got {other:?}"),
        }
        assert_eq!(c.recv(), None);
    }
    assert_serving(&server);
}

#[test]
fn silent_connection_is_dropped_at_the_login_timeout() {
    let data = DataDir::new();
    let server = TestServer::start(&data, &["--login-timeout", "1"]);
    let mut silent = server.raw();
    let started = Instant::now();
    match silent.recv() {
        Some(Reply::Error { code, .. }) => assert_eq!(code, ErrorCode::Timeout),
        other => panic!("expected a timeout error, got {other:?}"),
    }
    assert_eq!(silent.recv(), None);
    // Generous bound: only proves the timer fired rather than the test's
    // 20 s read timeout.
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_serving(&server);
}

#[test]
fn client_that_never_reads_is_throttled_not_buffered() {
    // In clear: the test writes and reads the socket itself, byte by byte;
    // `memory.rs` floods over TLS.
    let data = DataDir::new();
    let server = TestServer::start(&data, &["--plaintext"]);
    let mut c = server.raw();
    c.hello();
    let ping = frame::encode(&Request::Ping).unwrap();
    let batch: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 10_000)
        .collect();
    c.stream.set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut blocked_since: Option<Instant> = None;
    // Send pings without reading replies until the server stops taking them.
    while Instant::now() < deadline && sent < 200 * 1024 * 1024 {
        match c.stream.write(&batch[sent % batch.len()..]) {
            Ok(n) => {
                sent += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(
        blocked_since.is_some(),
        "server kept reading {sent} bytes of pings"
    );
    let rss = rss_kib(server.child.id());
    assert!(
        rss < 64 * 1024,
        "server RSS {rss} KiB after a non-reading client"
    );
    assert_serving(&server);
    // The stuck client still gets its replies once it reads.
    c.stream.set_nonblocking(false).unwrap();
    let mut buf = [0u8; 4096];
    assert!(c.stream.read(&mut buf).unwrap() > 0);
}

#[test]
fn per_address_connection_limit_turns_clients_away() {
    let data = DataDir::new();
    let server = TestServer::start(&data, &["--max-conns-per-ip", "3"]);
    let mut held: Vec<Raw> = (0..3).map(|_| server.raw()).collect();
    for c in &mut held {
        c.hello();
    }
    let mut extra = server.raw();
    match extra.recv() {
        Some(Reply::Error { code, message }) => {
            assert_eq!(code, ErrorCode::TooManySessions);
            assert!(message.contains("too many connections"), "{message}");
        }
        other => panic!("expected to be turned away, got {other:?}"),
    }
    drop(held);
    // Slots free up once the held connections close.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = server.raw();
        c.send(&Request::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
        });
        if let Some(Reply::Hello { .. }) = c.recv() {
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_stops_cleanly() {
    let data = DataDir::new();
    let mut server = TestServer::start(&data, &[]);
    let mut c = server.raw();
    c.hello();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.child.id() as i32).expect("pid"),
        rustix::process::Signal::TERM,
    )
    .expect("kill");
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
    let _ = TcpStream::connect_timeout(&server.addr, Duration::from_secs(1))
        .expect_err("still listening after SIGTERM");
}
