//! What the README promises about running the server, checked end to end:
//! pipelined requests, the listing cap, many users, IPv6 and other
//! loopback addresses, SIGHUP, the idle timeout, the partial-upload sweep,
//! SIGTERM during an upload, and a deleted user's running session.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use ftpd::frame;
use ftpd::jail::{Jail, PARTIAL_DIR, VPath};
use ftpd::proto::{ErrorCode, KdfParams, MAX_LIST_ENTRIES, Reply, Request};
use ftpd::usage::disk_usage;
use ftpd::users::{User, UserDb};

use crate::util::{self, DataDir, Raw, TestServer};

const FTPLOAD: &str = env!("CARGO_BIN_EXE_ftpload");

fn session(server: &TestServer, user: &str, password: &str) -> Raw {
    session_at(server.addr, user, password)
}

fn session_at(addr: SocketAddr, user: &str, password: &str) -> Raw {
    let mut c = Raw::connect(addr);
    c.hello();
    match c.login(user, password) {
        Reply::LoginOk { .. } => c,
        other => panic!("login as {user}: {other:?}"),
    }
}

fn partial_path(home: &Path, name: &str) -> std::path::PathBuf {
    let target = VPath::resolve(&VPath::root(), name).expect("path");
    home.join(PARTIAL_DIR).join(Jail::partial_name(&target))
}

/// Starts an upload of `data` to `path` and sends the first `sent` bytes.
fn begin_upload(c: &mut Raw, path: &str, data: &[u8], sent: usize) {
    match c.call(&Request::PutStart {
        path: path.into(),
        size: data.len() as u64,
        resume: true,
        mtime: None,
        crc32: None,
    }) {
        Reply::PutReady { offset: 0, .. } => {}
        other => panic!("expected PutReady at 0, got {other:?}"),
    }
    c.send(&Request::PutFrom { offset: 0 });
    for chunk in data[..sent].chunks(ftpd::proto::CHUNK_SIZE) {
        c.send(&Request::Chunk(chunk));
    }
}

fn wait_for_len(path: &Path, len: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::metadata(path).map(|m| m.len()).ok() != Some(len) {
        assert!(
            Instant::now() < deadline,
            "{} never reached {len} bytes",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(server: &TestServer, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(server.child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("kill");
}

fn content(len: usize, seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    util::make_file(&dir.path().join("f"), len, seed);
    std::fs::read(dir.path().join("f")).expect("read")
}

#[test]
fn requests_pipelined_after_login_are_answered_in_order() {
    let data = DataDir::new();
    data.add_user("alice", "alice-pw", None);
    let home = data.home("alice");
    std::fs::create_dir_all(home.join("d")).expect("home");
    let body = content(300 * 1024, 1);
    std::fs::write(home.join("f.bin"), &body).expect("f.bin");
    for i in 0..300 {
        std::fs::write(home.join("d").join(format!("e{i:03}")), b"x").expect("entry");
    }
    let server = TestServer::start(&data, &[]);
    let mut c = session(&server, "alice", "alice-pw");
    // One write: a listing and a download (both disk-thread jobs) around
    // two answers the reactor gives at once.
    let mut bytes = Vec::new();
    for req in [
        Request::List { path: "d".into() },
        Request::Stat {
            path: "f.bin".into(),
        },
        Request::Pwd,
        Request::GetStart {
            path: "f.bin".into(),
            offset: 0,
            prefix_crc: 0,
        },
        Request::Ping,
    ] {
        bytes.extend(frame::encode(&req).expect("encode"));
    }
    c.send_raw(&bytes).expect("send");

    let mut names = Vec::new();
    let total = loop {
        match c.recv().expect("listing") {
            Reply::Entries(batch) => names.extend(batch.into_iter().map(|e| e.name)),
            Reply::ListEnd {
                total,
                truncated: false,
            } => break total,
            other => panic!("expected the listing first, got {other:?}"),
        }
    };
    assert_eq!((names.len(), total), (300, 300));
    match c.recv().expect("stat") {
        Reply::Entry(e) => assert_eq!((e.name.as_str(), e.size), ("f.bin", body.len() as u64)),
        other => panic!("expected the Stat reply second, got {other:?}"),
    }
    assert_eq!(c.recv(), Some(Reply::Cwd("/".into())), "Pwd third");
    match c.recv().expect("get") {
        Reply::GetReady { size, offset: 0 } => assert_eq!(size, body.len() as u64),
        other => panic!("expected GetReady fourth, got {other:?}"),
    }
    let mut got = Vec::new();
    loop {
        match c.recv().expect("download") {
            Reply::Chunk(b) => got.extend_from_slice(b),
            Reply::GetDone { crc32 } => {
                assert_eq!(crc32, crc32fast::hash(&body));
                break;
            }
            other => panic!("during the download: {other:?}"),
        }
    }
    assert!(got == body, "downloaded bytes differ");
    assert_eq!(c.recv(), Some(Reply::Pong), "Ping last");
}

#[test]
fn a_folder_past_the_listing_cap_is_cut_and_says_so() {
    const EXTRA: usize = 7;
    let data = DataDir::new();
    data.add_user("alice", "alice-pw", None);
    let big = data.home("alice").join("big");
    std::fs::create_dir_all(&big).expect("big");
    for i in 0..MAX_LIST_ENTRIES + EXTRA {
        std::fs::File::create(big.join(format!("f{i:05}"))).expect("create");
    }
    let server = TestServer::start(&data, &[]);

    let mut c = session(&server, "alice", "alice-pw");
    c.send(&Request::List { path: "big".into() });
    let mut shown = 0;
    let (total, truncated) = loop {
        match c.recv().expect("listing") {
            Reply::Entries(batch) => shown += batch.len(),
            Reply::ListEnd { total, truncated } => break (total, truncated),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(shown, MAX_LIST_ENTRIES);
    assert!(
        truncated,
        "a listing of {total} entries not marked truncated"
    );
    assert!(total >= MAX_LIST_ENTRIES as u64, "total {total}");
    assert_eq!(c.call(&Request::Ping), Reply::Pong);

    let out = server.ftpc("alice", "alice-pw", &["ls", "big"]);
    util::assert_success(&out, "ftpc ls big");
    assert_eq!(util::stdout(&out).lines().count(), MAX_LIST_ENTRIES);
    let err = util::stderr(&out);
    assert!(
        err.contains(&format!(
            "the server truncated this listing: {MAX_LIST_ENTRIES} of {total} entries shown"
        )),
        "{err}"
    );
}

/// Writes `count` users named `userNNN`, all with password `pw`, into a
/// fresh data folder (one key derivation, shared: the server does not care).
fn data_with_many_users(count: usize) -> (DataDir, Vec<String>) {
    let data = DataDir::new();
    let kdf = KdfParams {
        log_n: util::TEST_KDF_LOG_N.parse().expect("log n"),
        r: 8,
        p: 1,
    };
    let keys = ftpd::scram::stored_keys(b"pw", kdf).expect("keys");
    let mut db = UserDb::default();
    let names: Vec<String> = (0..count).map(|i| format!("user{i:03}")).collect();
    for name in &names {
        db.insert(User {
            name: name.clone(),
            quota: 1 << 30,
            max_files: None,
            keys: keys.clone(),
        });
    }
    db.save(data.path()).expect("save users");
    (data, names)
}

fn ftpload(server: &TestServer, users: &Path, args: &[&str]) -> std::process::Child {
    Command::new(FTPLOAD)
        .args([
            "--addr",
            &server.addr.to_string(),
            "--json",
            "--timeout",
            "120",
        ])
        .arg("--users")
        .arg(users)
        .args(server.trust_args())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ftpload")
}

fn clean_report(child: std::process::Child, sessions: u64) {
    let out = child.wait_with_output().expect("ftpload");
    util::assert_success(&out, "ftpload");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["done"], sessions, "{report}");
}

#[test]
fn hundreds_of_users_log_in_and_a_re_read_under_load_loses_nobody() {
    const USERS: usize = 300;
    let (data, names) = data_with_many_users(USERS);
    let server = TestServer::start(&data, &["--max-conns-per-ip", "2000"]);
    let list = data.path().join("load-users.txt");
    let lines: String = names.iter().map(|n| format!("{n}:pw\n")).collect();
    std::fs::write(&list, lines).expect("users list");

    // Every user once, round-robin.
    clean_report(
        ftpload(&server, &list, &["login", "-n", &USERS.to_string()]),
        USERS as u64,
    );

    // While a transfer load runs, users.json changes twice: one user is
    // added, and SIGHUP re-reads it; the running sessions go on.
    let load = ftpload(&server, &list, &["transfer", "-n", "150", "--size", "16K"]);
    data.add_user("newcomer", "new-pw", None);
    signal(&server, rustix::process::Signal::HUP);
    assert!(
        server
            .wait_log("SIGHUP: reloading the user file", Duration::from_secs(10))
            .is_some()
    );
    let out = server.ftpc("newcomer", "new-pw", &["pwd"]);
    util::assert_success(&out, "the new user logs in under load");
    let out = server.ftpc(&names[USERS - 1], "pw", &["quota"]);
    util::assert_success(&out, "the last of the old users still logs in");
    clean_report(load, 150);
}

/// Whether this machine has an IPv6 loopback to listen on.
fn has_v6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

#[test]
fn a_session_over_ipv6_loopback_works() {
    if !has_v6_loopback() {
        return util::skip("no IPv6 loopback (::1)");
    }
    let data = DataDir::new();
    data.add_user("alice", "alice-pw", None);
    let server = TestServer::start_on(&data, "[::1]:0", &[]);
    assert!(server.addr.is_ipv6(), "{}", server.addr);
    let local = tempfile::tempdir().expect("tempdir");
    let up = local.path().join("up.bin");
    util::make_file(&up, 200_000, 3);
    server.ok(
        "alice",
        "alice-pw",
        &["put", up.to_str().expect("utf-8"), "f.bin"],
    );
    let back = local.path().join("back.bin");
    server.ok(
        "alice",
        "alice-pw",
        &["get", "f.bin", back.to_str().expect("utf-8")],
    );
    assert!(std::fs::read(&up).expect("up") == std::fs::read(&back).expect("back"));
    let listing = server.ok("alice", "alice-pw", &["ls"]);
    assert!(listing.contains("f.bin"), "{listing}");
    // The log names the client by its v6 address.
    assert!(
        server
            .wait_log("[::1]:", Duration::from_secs(5))
            .is_some_and(|l| l.contains("login alice") || l.contains("connected"))
    );
}

/// A connection from `source` (a loopback address other than 127.0.0.1).
fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, ipproto, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, Some(ipproto::TCP)).expect("socket");
    let from = SocketAddr::from((source, 0));
    bind(&fd, &from).expect("bind to the source address");
    connect(&fd, &to).expect("connect");
    let stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
}

fn raw_from(source: [u8; 4], to: SocketAddr) -> Raw {
    Raw::from_stream(connect_from(source, to))
}

#[test]
fn the_per_address_cap_counts_each_loopback_address_apart() {
    let data = DataDir::new();
    data.add_user("alice", "alice-pw", None);
    let server = TestServer::start(&data, &["--max-conns-per-ip", "2"]);
    let mut held: Vec<Raw> = (0..2)
        .map(|_| {
            let mut c = raw_from([127, 0, 0, 2], server.addr);
            c.hello();
            c
        })
        .collect();
    // A third from 127.0.0.2 is turned away...
    let mut third = raw_from([127, 0, 0, 2], server.addr);
    third.send(&Request::Hello {
        magic: ftpd::proto::MAGIC,
        version: ftpd::proto::PROTOCOL_VERSION,
    });
    match third.recv() {
        Some(Reply::Error { code, message }) => {
            assert_eq!(code, ErrorCode::TooManySessions, "{message}");
        }
        other => panic!("a third connection from 127.0.0.2: {other:?}"),
    }
    // ... while 127.0.0.3 and 127.0.0.1 are served, and log in.
    for source in [[127, 0, 0, 3], [127, 0, 0, 1]] {
        let mut c = raw_from(source, server.addr);
        c.hello();
        assert!(matches!(
            c.login("alice", "alice-pw"),
            Reply::LoginOk { .. }
        ));
        assert_eq!(c.call(&Request::Ping), Reply::Pong);
    }
    for c in &mut held {
        assert_eq!(c.call(&Request::Ping), Reply::Pong);
    }
    // A slot freed on 127.0.0.2 can be taken again.
    let me = held[0].stream.local_addr().expect("addr");
    drop(held.remove(0));
    server
        .wait_log(&format!("{me}: disconnected"), Duration::from_secs(10))
        .expect("the closed connection was not noticed");
    let mut again = raw_from([127, 0, 0, 2], server.addr);
    again.hello();
}

#[test]
fn sighup_re_reads_the_user_file_at_once() {
    let data = DataDir::new();
    data.add_user("alice", "alice-pw", Some("10M"));
    let server = TestServer::start(&data, &[]);
    let mut c = session(&server, "alice", "alice-pw");
    let limit = |c: &mut Raw| match c.call(&Request::Quota) {
        Reply::Quota(q) => q.limit,
        other => panic!("{other:?}"),
    };
    assert_eq!(limit(&mut c), 10 << 20);
    let out = data
        .admin(&["user", "quota", "alice", "20M"])
        .output()
        .expect("admin");
    util::assert_success(&out, "ftpd user quota");
    // No login happens, so only the signal makes the server look.
    signal(&server, rustix::process::Signal::HUP);
    server
        .wait_log("SIGHUP: reloading the user file", Duration::from_secs(10))
        .expect("SIGHUP not handled");
    let deadline = Instant::now() + Duration::from_secs(10);
    while limit(&mut c) != 20 << 20 {
        assert!(Instant::now() < deadline, "the new quota never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_idle_session_is_closed_and_a_busy_one_is_not() {
    let data = DataDir::new();
    data.add_user("alice", "alice-pw", None);
    let server = TestServer::start(&data, &["--idle-timeout", "2"]);
    let mut busy = session(&server, "alice", "alice-pw");
    let mut idle = session(&server, "alice", "alice-pw");
    let started = Instant::now();
    // The busy one pings every 200 ms for 3 s, past the timeout.
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(busy.call(&Request::Ping), Reply::Pong);
        std::thread::sleep(Duration::from_millis(200));
    }
    match idle.recv() {
        Some(Reply::Error { code, message }) => {
            assert_eq!(code, ErrorCode::Timeout);
            assert!(message.contains("idle for 2 s"), "{message}");
        }
        other => panic!("expected the idle session to be told, got {other:?}"),
    }
    assert_eq!(idle.recv(), None, "the idle session was not closed");
    assert_eq!(busy.call(&Request::Ping), Reply::Pong);
}

#[test]
fn partials_older_than_the_ttl_are_swept_at_start() {
    let data = DataDir::new();
    data.add_user("alice", "alice-pw", None);
    let home = data.home("alice");
    std::fs::create_dir_all(home.join(PARTIAL_DIR)).expect("partial folder");
    let stale = partial_path(&home, "/stale.bin");
    let young = partial_path(&home, "/young.bin");
    std::fs::write(&stale, vec![1u8; 70_000]).expect("stale");
    std::fs::write(&young, vec![2u8; 30_000]).expect("young");
    // Two hours old against a one-hour TTL (set the way `touch -d` does).
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(2 * 3600)))
        .expect("set mtime");
    let server = TestServer::start(&data, &["--partial-ttl-hours", "1"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while stale.exists() {
        assert!(
            Instant::now() < deadline,
            "the stale partial was never swept"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(young.exists(), "a young partial was swept");
    // The figures lose the swept bytes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = match session(&server, "alice", "alice-pw").call(&Request::Quota) {
            Reply::Quota(q) => q,
            other => panic!("{other:?}"),
        };
        let disk = disk_usage(&home).expect("usage");
        if (q.used, q.reserved) == (disk, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "quota {q:?} vs {disk} on disk after the sweep"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_during_an_upload_keeps_the_partial_for_resume() {
    let data = DataDir::new();
    data.add_user("alice", "alice-pw", None);
    let home = data.home("alice");
    let body = content(1024 * 1024 + 5, 4);
    let mut server = TestServer::start(&data, &[]);
    let mut c = session(&server, "alice", "alice-pw");
    let half = 512 * 1024;
    begin_upload(&mut c, "f.bin", &body, half);
    let partial = partial_path(&home, "/f.bin");
    wait_for_len(&partial, half as u64);
    signal(&server, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "ftpd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert_eq!(
        std::fs::read(&partial).expect("partial kept"),
        body[..half],
        "the partial upload was not kept as it was"
    );
    assert!(!home.join("f.bin").exists());
    server.kill();

    // After a restart the same upload resumes from there.
    let server = TestServer::start(&data, &[]);
    let mut c = session(&server, "alice", "alice-pw");
    match c.call(&Request::PutStart {
        path: "f.bin".into(),
        size: body.len() as u64,
        resume: true,
        mtime: None,
        crc32: None,
    }) {
        Reply::PutReady { offset, prefix_crc } => {
            assert_eq!(offset, half as u64);
            assert_eq!(prefix_crc, crc32fast::hash(&body[..half]));
        }
        other => panic!("{other:?}"),
    }
    c.send(&Request::PutFrom {
        offset: half as u64,
    });
    for chunk in body[half..].chunks(ftpd::proto::CHUNK_SIZE) {
        c.send(&Request::Chunk(chunk));
    }
    match c.call(&Request::PutEnd {
        crc32: crc32fast::hash(&body),
    }) {
        Reply::PutDone { size, .. } => assert_eq!(size, body.len() as u64),
        other => panic!("{other:?}"),
    }
    assert!(std::fs::read(home.join("f.bin")).expect("f.bin") == body);
}

#[test]
fn a_deleted_users_running_session_finishes() {
    let data = DataDir::new();
    data.add_user("alice", "alice-pw", None);
    data.add_user("carol", "carol-pw", None);
    let home = data.home("carol");
    let body = content(600 * 1024, 5);
    let server = TestServer::start(&data, &[]);
    let mut c = session(&server, "carol", "carol-pw");
    begin_upload(&mut c, "f.bin", &body, 256 * 1024);
    wait_for_len(&partial_path(&home, "/f.bin"), 256 * 1024);

    let out = data
        .admin(&["user", "del", "carol"])
        .output()
        .expect("admin");
    util::assert_success(&out, "ftpd user del");
    signal(&server, rustix::process::Signal::HUP);
    server
        .wait_log("SIGHUP: reloading the user file", Duration::from_secs(10))
        .expect("SIGHUP not handled");
    // A new login is refused at once...
    let mut other = server.raw();
    other.hello();
    assert!(matches!(
        other.login("carol", "carol-pw"),
        Reply::Error {
            code: ErrorCode::AuthFailed,
            ..
        }
    ));
    // ... while the running session finishes its upload and goes on.
    for chunk in body[256 * 1024..].chunks(ftpd::proto::CHUNK_SIZE) {
        c.send(&Request::Chunk(chunk));
    }
    match c.call(&Request::PutEnd {
        crc32: crc32fast::hash(&body),
    }) {
        Reply::PutDone { size, .. } => assert_eq!(size, body.len() as u64),
        other => panic!("the deleted user's upload: {other:?}"),
    }
    assert!(std::fs::read(home.join("f.bin")).expect("f.bin") == body);
    match c.call(&Request::Stat {
        path: "f.bin".into(),
    }) {
        Reply::Entry(e) => assert_eq!(e.size, body.len() as u64),
        other => panic!("{other:?}"),
    }
    c.send(&Request::Bye);
    let _ = c.stream.flush();
}

/// The server runs with glibc's `rep movsb` threshold raised (see
/// `ftpd::glibc_tunables`), and keeps the tunables it was started with.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
#[test]
fn the_server_runs_with_memcpy_tuned_under_its_own_name_and_keeps_given_tunables() {
    use ftpd::glibc_tunables::MEMCPY_VECTOR;
    // glibc splits the variable at ':' in place, so look at the raw bytes.
    let environ = |server: &TestServer| {
        let raw = std::fs::read(format!("/proc/{}/environ", server.child.id())).unwrap();
        String::from_utf8_lossy(&raw).replace('\0', "\n")
    };
    let data = DataDir::new();
    let server = TestServer::start(&data, &[]);
    let env = environ(&server);
    assert!(env.contains(MEMCPY_VECTOR), "{env}");
    // Re-executed through /proc/self/exe, it still goes by its own name
    // for ps, top and pkill.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", server.child.id())).unwrap();
    assert_eq!(comm.trim_end(), "ftpd");
    drop(server);

    let server = TestServer::start_with_env(&data, &[("GLIBC_TUNABLES", "glibc.malloc.perturb=7")]);
    let env = environ(&server);
    assert!(
        env.contains(&format!(
            "GLIBC_TUNABLES=glibc.malloc.perturb=7\n{MEMCPY_VECTOR}\n"
        )),
        "{env}"
    );
}
