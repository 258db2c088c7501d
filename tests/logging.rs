//! The log cannot kill the server, stall it, grow without bound or lie:
//! a closed or stalled stderr, a flood of log lines from peers that never
//! logged in, and upload names built to forge fields or lines.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ftpd::proto::{ErrorCode, NONCE_LEN, Reply, Request};

use crate::util::{DataDir, FTPC, FTPD, Raw, TestServer, assert_success, rss_kib};

const PASSWORD: &str = "correct horse";

/// An `ftpd` child, killed on drop so a failing test leaves none behind.
struct Ftpd(Child);

impl Drop for Ftpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ftpd` with `stderr` as given; returns it and its address. Its
/// stdout is read for the address and then closed, so the server also
/// runs with nobody reading stdout.
fn start_with_stderr(data: &DataDir, stderr: Stdio, extra: &[&str]) -> (Ftpd, String) {
    let mut child = Command::new(FTPD)
        .arg("--root")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0", "--log-level", "debug"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn ftpd");
    let stdout = child.stdout.take().expect("stdout");
    let child = Ftpd(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read stdout");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    (child, addr)
}

/// `ftpc` against `addr` as alice; stderr is kept for failure messages.
fn ftpc(addr: &str, args: &[&str]) -> std::process::Output {
    Command::new(FTPC)
        .args(["--server", addr, "--user", "alice", "--quiet"])
        .args(crate::util::TRUST_FIRST_CONTACT)
        .args(args)
        .env("FTPC_PASSWORD", PASSWORD)
        .env_remove("FTPC_SERVER")
        .env_remove("FTPC_USER")
        .output()
        .expect("run ftpc")
}

fn sigterm(child: &Ftpd) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.0.id() as i32).expect("pid"),
        rustix::process::Signal::TERM,
    )
    .expect("kill");
}

/// Waits (bounded) for the child to exit; panics if it does not.
fn wait_exit(child: &mut Ftpd, within: Duration) -> std::process::ExitStatus {
    let child = &mut child.0;
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ftpd did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server whose stderr reader has gone (a closed pipe) keeps serving,
/// and still stops cleanly on SIGTERM.
#[test]
fn a_closed_stderr_does_not_kill_the_server() {
    let data = DataDir::new();
    data.add_user("alice", PASSWORD, None);
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader); // every write to stderr now fails with EPIPE
    let (mut child, addr) = start_with_stderr(&data, writer.into(), &[]);

    let local = data.path().join("upload.bin");
    std::fs::write(&local, b"some bytes for the log to talk about").unwrap();
    let local = local.to_str().unwrap();
    for args in [
        &["ping"][..],
        &["put", local, "/a.bin"],
        &["ls", "/"],
        &["rm", "/missing"],
        &["get", "/a.bin", &format!("{local}.back")],
    ] {
        let out = ftpc(&addr, args);
        assert!(
            child.0.try_wait().expect("try_wait").is_none(),
            "ftpd died after `ftpc {}`",
            args.join(" ")
        );
        if args[0] != "rm" {
            assert_success(&out, &format!("ftpc {}", args.join(" ")));
        }
    }
    let mut wrong = Raw::connect(addr.parse().unwrap());
    wrong.hello();
    assert!(matches!(
        wrong.login("alice", "wrong"),
        Reply::Error {
            code: ErrorCode::AuthFailed,
            ..
        }
    ));
    assert_success(&ftpc(&addr, &["ping"]), "ftpc ping after the failures");
    assert!(child.0.try_wait().expect("try_wait").is_none(), "ftpd died");

    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

/// One raw connection that asks to log in as `user` again and again while
/// that name is locked out: each request is refused at once and logged,
/// without the login delay, so a peer that never logged in writes log
/// lines as fast as it likes.
fn flood(addr: std::net::SocketAddr, user: &str, requests: usize) {
    let mut raw = Raw::connect(addr);
    raw.hello();
    let start = ftpd::frame::encode(&Request::LoginStart {
        user: user.into(),
        client_nonce: vec![7; NONCE_LEN],
    })
    .unwrap();
    const BATCH: usize = 200;
    let frames = start.repeat(BATCH);
    for _ in 0..requests / BATCH {
        raw.send_raw(&frames).expect("send");
        for _ in 0..BATCH {
            match raw.recv() {
                Some(Reply::Error {
                    code: ErrorCode::LockedOut,
                    ..
                }) => {}
                other => panic!("expected a lockout, got {other:?}"),
            }
        }
    }
}

/// While nobody reads the log, peers that never logged in make the server
/// log well over a hundred thousand lines: other sessions are still served,
/// memory stays flat (the queue is bounded), the lines that did not fit are
/// counted and reported, and SIGTERM still ends the server promptly.
#[test]
fn a_stalled_log_reader_neither_stalls_the_server_nor_grows_it() {
    let data = DataDir::new();
    data.add_user("alice", PASSWORD, None);
    let (reader, writer) = std::io::pipe().expect("pipe");
    // The pipe is not read until the end: after its 64 KiB the server's
    // stderr is stalled.
    let (mut child, addr) = start_with_stderr(
        &data,
        writer.into(),
        &["--lockout-after", "1", "--login-delay-ms", "1"],
    );
    let addr: std::net::SocketAddr = addr.parse().unwrap();

    // A long name (escaped in the log) makes long lines: 10 x U+202E.
    let user = format!("m{}", "\u{202e}".repeat(10));
    let mut raw = Raw::connect(addr);
    raw.hello();
    assert!(matches!(
        raw.login(&user, "guess"),
        Reply::Error {
            code: ErrorCode::AuthFailed,
            ..
        }
    ));

    // Fill the pipe and the queue, then measure.
    flood(addr, &user, 20_000);
    let pid = child.0.id();
    let before = rss_kib(pid);

    let mut pinger = Raw::connect(addr);
    pinger.hello();
    let flooders: Vec<_> = (0..3)
        .map(|_| {
            let user = user.clone();
            std::thread::spawn(move || flood(addr, &user, 40_000))
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut pings = 0;
    while flooders.iter().any(|f| !f.is_finished()) && pings < 10_000 {
        let sent = Instant::now();
        // Raw's read timeout (20 s) bounds this; a stalled server fails it.
        assert_eq!(pinger.call(&Request::Ping), Reply::Pong);
        slowest = slowest.max(sent.elapsed());
        pings += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    for f in flooders {
        f.join().expect("flood");
    }
    assert!(
        slowest < Duration::from_secs(5),
        "a ping took {slowest:?} while the log was stalled"
    );
    let after = rss_kib(pid);
    eprintln!("stalled log: {pings} pings, slowest {slowest:?}, RSS {before} -> {after} KiB");
    // 140,000 lines of about 130 bytes (18 MB) were logged; the queue holds
    // at most 1 MiB of them.
    assert!(
        after < before + 6 * 1024,
        "RSS grew from {before} KiB to {after} KiB while the log was stalled"
    );
    assert_eq!(pinger.call(&Request::Ping), Reply::Pong);
    drop(pinger);

    // Unstall the reader, and connect until a new line gets through: the
    // line before it says how many lines were dropped.
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let _ = lines_tx.send(line.expect("the log is UTF-8"));
        }
    });
    let mut log = Vec::new();
    let mut through = false;
    for _ in 0..50 {
        let probe = std::net::TcpStream::connect(addr).expect("connect");
        let me = format!("{}: connected", probe.local_addr().unwrap());
        drop(probe);
        let deadline = Instant::now() + Duration::from_millis(500);
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            through |= line.contains(&me);
            log.push(line);
            if through {
                break;
            }
        }
        if through {
            break;
        }
    }
    assert!(
        through,
        "no new line reached the log after it was unstalled"
    );
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    log.extend(lines.iter()); // to the end: the server has exited
    let log = log.join("\n");
    let dropped: u64 = log
        .lines()
        .filter_map(|l| l.split("log: ").nth(1))
        .filter_map(|rest| {
            rest.strip_suffix(" lines dropped here (the log output did not keep up)")
        })
        .map(|n| n.parse::<u64>().expect("count"))
        .sum();
    let refused = log.matches("locked out").count() as u64;
    assert!(dropped > 0, "no drops reported");
    // Every refusal was either written or counted (lines of the first
    // connection are included in both, and there may be a few more).
    assert!(
        refused + dropped >= 140_000,
        "{refused} written + {dropped} dropped < 140000"
    );
    assert!(!log.contains('\u{202e}'), "a raw U+202E reached the log");
    assert!(
        log.contains("shutting down"),
        "the last lines were not flushed"
    );
}

/// SIGTERM ends the server promptly and cleanly even while its log is
/// stalled with lines queued.
#[test]
fn sigterm_ends_the_server_while_the_log_is_stalled() {
    let data = DataDir::new();
    let (_reader, writer) = std::io::pipe().expect("pipe");
    let (mut child, addr) = start_with_stderr(
        &data,
        writer.into(),
        &["--lockout-after", "1", "--login-delay-ms", "1"],
    );
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut raw = Raw::connect(addr);
    raw.hello();
    raw.login("mallory", "guess");
    flood(addr, "mallory", 10_000);
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

/// Splits a `key=value key="quoted \"value\""` line into its fields;
/// panics on anything else, so an unquoted space in a value shows.
fn fields(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .unwrap_or_else(|| panic!("no `=` in {rest:?}"));
        assert!(
            !key.is_empty() && !key.contains(' '),
            "bad key {key:?} in {line:?}"
        );
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = if after.starts_with('"') {
            chars.next();
            loop {
                match chars.next() {
                    Some((i, '"')) => break i + 1,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, 'r')) => value.push('\r'),
                        Some((_, 't')) => value.push('\t'),
                        Some((_, 'u')) => {
                            let hex: String = chars
                                .by_ref()
                                .map(|(_, c)| c)
                                .skip(1)
                                .take_while(|&c| c != '}')
                                .collect();
                            let code = u32::from_str_radix(&hex, 16).expect("hex escape");
                            value.push(char::from_u32(code).expect("code point"));
                        }
                        Some((_, c)) => value.push(c),
                        None => panic!("dangling escape in {line:?}"),
                    },
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated quote in {line:?}"),
                }
            }
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            value.push_str(&after[..end]);
            end
        };
        out.push((key.to_owned(), value));
        rest = after[end..].strip_prefix(' ').unwrap_or(&after[end..]);
        assert!(
            end == after.len() || after[end..].starts_with(' '),
            "no space after a value in {line:?}"
        );
    }
    out
}

/// An upload whose name holds forged fields, a right-to-left override and
/// Unicode line and paragraph separators makes exactly one transfer line,
/// with the name as one quoted field that reads back as the name.
#[test]
fn an_upload_name_cannot_forge_log_fields_or_lines() {
    let data = DataDir::new();
    data.add_user("alice", PASSWORD, None);
    let server = TestServer::start(&data, &[]);
    let name = "/x\" bytes=999 outcome=ok user=root addr=10.0.0.1:1 dir=get path=\"shadow \
                \u{202e}txt.exe\u{2028}INFO  transfer user=root\u{2029}\u{200b}\u{2066}end";
    let local = data.path().join("up.bin");
    let body = b"twenty-seven bytes of data!";
    std::fs::write(&local, body).unwrap();
    server.ok("alice", PASSWORD, &["put", local.to_str().unwrap(), name]);

    let line = server
        .wait_log("dir=put", Duration::from_secs(10))
        .expect("the upload was logged");
    // Give any second, forged line the chance to show.
    assert!(server.ok("alice", PASSWORD, &["ls", "/"]).contains("end"));
    let others: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("transfer") || l.contains("root"))
        .collect();
    assert!(others.is_empty(), "more lines about it: {others:?}");
    for c in ['\u{202e}', '\u{2028}', '\u{2029}', '\u{200b}', '\u{2066}'] {
        assert!(!line.contains(c), "raw {c:?} in {line:?}");
    }

    let body_at = line.find("transfer ").expect("transfer line") + "transfer ".len();
    let fields = fields(&line[body_at..]);
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "user", "addr", "dir", "path", "bytes", "secs", "rate", "crc32", "outcome"
        ],
        "{line}"
    );
    let map: HashMap<_, _> = fields.into_iter().collect();
    assert_eq!(map["path"], name);
    assert_eq!(map["user"], "alice");
    assert_eq!(map["dir"], "put");
    assert_eq!(map["bytes"], body.len().to_string());
    assert_eq!(map["outcome"], "ok");
    assert!(map["addr"].starts_with("127.0.0.1:"), "{line}");
}

/// Admin commands report on stdout; a closed stdout loses the report but
/// neither the change nor the exit status.
#[test]
fn admin_commands_survive_a_closed_stdout() {
    let data = DataDir::new();
    data.add_user("alice", PASSWORD, None);
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = data
        .admin(&["user", "quota", "alice", "5M"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run ftpd user quota");
    assert_success(&out, "ftpd user quota with a closed stdout");
    let list = data.admin(&["user", "list"]).output().expect("user list");
    assert_success(&list, "ftpd user list");
    assert!(String::from_utf8_lossy(&list.stdout).contains("5.0 MiB"));
}
