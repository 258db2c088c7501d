//! A hostile server: the real `ftpc` against a scripted fake server that
//! speaks the protocol and lies in it. Each test checks what `ftpc` refuses,
//! what it prints, what it writes to disk, and what it sent before giving up.
//!
//! The fake runs the real login (the server side of SCRAM with
//! `ftpd::scram`), so `ftpc` proceeds to its command, unless the test is
//! about the login itself.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ftpd::frame;
use ftpd::proto::{
    CHUNK_SIZE, Entry, EntryKind, ErrorCode, KdfParams, MAX_FRAME, MAX_LIST_ENTRIES, MAX_PATH_LEN,
    NONCE_LEN, PROTOCOL_VERSION, Reply, Request,
};
use ftpd::scram::{self, StoredKeys, Transcript};

use crate::util::FTPC;

const PASSWORD: &str = "alice-pw";

/// The cheapest settings `ftpc` accepts, so the fake's logins are quick.
const FAST_KDF: KdfParams = KdfParams {
    log_n: 14,
    r: 8,
    p: 1,
};

/// Bound on each blocking read or write of the fake server.
const FAKE_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the fake waits for `ftpc` to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest an `ftpc` run may take before the test calls it hung. Every
/// case here should end in well under a second.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Most bytes a fake sends in an endless stream before giving up itself.
const ENDLESS_CAP: u64 = 64 * 1024 * 1024;

/// The user's keys as a real server would store them (derived once).
fn keys() -> &'static StoredKeys {
    static KEYS: OnceLock<StoredKeys> = OnceLock::new();
    KEYS.get_or_init(|| scram::stored_keys(PASSWORD.as_bytes(), FAST_KDF).expect("stored keys"))
}

/// Copies a request's borrowed payload out, so it can be kept.
fn own_request(req: Request) -> Request<'static> {
    match req {
        Request::Chunk(bytes) => Request::Chunk(Vec::leak(bytes.to_vec())),
        Request::Hello { magic, version } => Request::Hello { magic, version },
        Request::LoginStart { user, client_nonce } => Request::LoginStart { user, client_nonce },
        Request::LoginProof { proof } => Request::LoginProof { proof },
        Request::Ping => Request::Ping,
        Request::Pwd => Request::Pwd,
        Request::Cd { path } => Request::Cd { path },
        Request::List { path } => Request::List { path },
        Request::Stat { path } => Request::Stat { path },
        Request::Mkdir { path } => Request::Mkdir { path },
        Request::Rmdir { path } => Request::Rmdir { path },
        Request::Remove { path } => Request::Remove { path },
        Request::Rename { from, to } => Request::Rename { from, to },
        Request::Quota => Request::Quota,
        Request::PutStart { path, size, resume } => Request::PutStart { path, size, resume },
        Request::PutFrom { offset } => Request::PutFrom { offset },
        Request::PutEnd { crc32 } => Request::PutEnd { crc32 },
        Request::GetStart {
            path,
            offset,
            prefix_crc,
        } => Request::GetStart {
            path,
            offset,
            prefix_crc,
        },
        Request::Bye => Request::Bye,
        Request::ListFrom { path, from } => Request::ListFrom { path, from },
        Request::RemoveTree { path } => Request::RemoveTree { path },
    }
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    scram::fill_random(&mut bytes).expect("random");
    bytes
}

/// The fake server's side of one connection; records every request.
struct Peer {
    stream: TcpStream,
    rx: Vec<u8>,
    seen: Vec<Request<'static>>,
    /// Bytes sent so far.
    sent: u64,
}

impl Peer {
    /// The next request; `None` once the client hung up (or went silent
    /// for [`FAKE_IO_TIMEOUT`]).
    fn recv(&mut self) -> Option<Request<'static>> {
        loop {
            match frame::decode::<Request>(&self.rx) {
                Ok(Some((req, n))) => {
                    let req = own_request(req);
                    self.rx.drain(..n);
                    self.seen.push(req.clone());
                    return Some(req);
                }
                Ok(None) => {}
                Err(e) => panic!("ftpc sent a bad frame: {e}"),
            }
            let mut buf = [0u8; 64 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    fn send(&mut self, reply: &Reply) -> io::Result<()> {
        let bytes = frame::encode(reply).expect("encode");
        self.send_raw(&bytes)
    }

    fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.sent += bytes.len() as u64;
        Ok(())
    }

    /// Answers the client's `Hello`, presenting itself as `server`.
    fn hello_as(&mut self, server: &str) {
        match self.recv() {
            Some(Request::Hello { version, .. }) => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("expected Hello, got {other:?}"),
        }
        self.send(&Reply::Hello {
            version: PROTOCOL_VERSION,
            server: server.into(),
        })
        .expect("send Hello");
    }

    fn hello(&mut self) {
        self.hello_as("fake 0.0");
    }

    /// Takes `LoginStart` and sends a challenge with these settings;
    /// returns the auth message both sides would sign.
    fn challenge(&mut self, salt: &[u8], kdf: KdfParams) -> Vec<u8> {
        let (user, client_nonce) = match self.recv() {
            Some(Request::LoginStart { user, client_nonce }) => (user, client_nonce),
            other => panic!("expected LoginStart, got {other:?}"),
        };
        assert_eq!(user, "alice");
        let server_nonce = random_bytes(NONCE_LEN);
        self.send(&Reply::Challenge {
            server_nonce: server_nonce.clone(),
            salt: salt.to_vec(),
            kdf,
        })
        .expect("send Challenge");
        Transcript {
            user: &user,
            client_nonce: &client_nonce,
            server_nonce: &server_nonce,
            salt,
            kdf,
            // This fake server speaks in clear (ftpc runs --plaintext).
            channel_binding: None,
        }
        .auth_message()
    }

    /// Runs the whole login as a real server would, checking the client's
    /// proof; `signature` replaces the real server signature when given.
    fn login_signing_with(&mut self, signature: Option<Vec<u8>>) {
        self.hello();
        let keys = keys();
        let auth = self.challenge(&keys.salt, keys.kdf);
        match self.recv() {
            Some(Request::LoginProof { proof }) => {
                assert!(
                    scram::verify_client_proof(&keys.stored_key, &auth, &proof),
                    "ftpc's proof does not verify"
                );
            }
            other => panic!("expected LoginProof, got {other:?}"),
        }
        let server_signature =
            signature.unwrap_or_else(|| scram::server_signature(&keys.server_key, &auth).to_vec());
        self.send(&Reply::LoginOk { server_signature })
            .expect("send LoginOk");
    }

    fn login(&mut self) {
        self.login_signing_with(None);
    }

    /// Expects `GetStart` and returns its path.
    fn get_start(&mut self) -> String {
        match self.recv() {
            Some(Request::GetStart { path, .. }) => path,
            other => panic!("expected GetStart, got {other:?}"),
        }
    }

    /// Expects `List`.
    fn list(&mut self) {
        match self.recv() {
            Some(Request::List { .. }) => {}
            other => panic!("expected List, got {other:?}"),
        }
    }
}

/// A scripted fake server for one `ftpc` connection.
struct Fake {
    addr: SocketAddr,
    thread: JoinHandle<(Vec<Request<'static>>, u64)>,
}

/// What the fake saw: every request, and the bytes it sent.
struct Seen {
    requests: Vec<Request<'static>>,
    sent: u64,
}

impl Seen {
    fn got(&self, pred: impl Fn(&Request) -> bool) -> bool {
        self.requests.iter().any(pred)
    }
}

impl Fake {
    /// Listens on 127.0.0.1:0 and runs `script` on the first connection;
    /// afterwards it reads (and records) until the client hangs up.
    fn start(script: impl FnOnce(&mut Peer) + Send + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + ACCEPT_TIMEOUT;
            let stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return (Vec::new(), 0);
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            stream.set_nonblocking(false).expect("blocking");
            stream.set_read_timeout(Some(FAKE_IO_TIMEOUT)).expect("rto");
            stream
                .set_write_timeout(Some(FAKE_IO_TIMEOUT))
                .expect("wto");
            let mut peer = Peer {
                stream,
                rx: Vec::new(),
                seen: Vec::new(),
                sent: 0,
            };
            script(&mut peer);
            while peer.recv().is_some() {}
            (peer.seen, peer.sent)
        });
        Fake { addr, thread }
    }

    /// Waits for the script to end (re-raising its panic) and returns what
    /// it saw.
    fn finish(self) -> Seen {
        match self.thread.join() {
            Ok((requests, sent)) => Seen { requests, sent },
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// One finished `ftpc` run.
struct Run {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
    /// Highest `VmHWM` seen while it ran, in KiB (sampled).
    peak_kib: u64,
    elapsed: Duration,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "status {}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout(),
            self.stderr
        )
    }
}

fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs `ftpc --server ADDR --user alice --quiet ARGS` in `cwd`, killing it
/// (and failing the test) if it runs longer than [`RUN_LIMIT`].
fn ftpc(addr: SocketAddr, cwd: &Path, args: &[&str]) -> Run {
    let started = Instant::now();
    // The fake servers here speak in clear: what they test (hostile
    // replies) sits above the transport, and is the same under TLS.
    let mut child = Command::new(FTPC)
        .args(["--server", &addr.to_string(), "--user", "alice", "--quiet"])
        .arg("--plaintext")
        .args(args)
        .env("FTPC_PASSWORD", PASSWORD)
        .env_remove("FTPC_SERVER")
        .env_remove("FTPC_USER")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ftpc");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let mut peak_kib = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        peak_kib = peak_kib.max(hwm_kib(child.id()));
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            let stderr =
                String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
            panic!("ftpc {args:?} still running after {RUN_LIMIT:?}; stderr: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let run = Run {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned(),
        peak_kib,
        elapsed: started.elapsed(),
    };
    eprintln!(
        "ftpc {args:?}: {} in {:?}, peak {} KiB; stderr: {}",
        run.status,
        run.elapsed,
        run.peak_kib,
        run.stderr.trim()
    );
    run
}

/// Names of the entries in a local folder, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Bytes that must never reach a terminal: C0 controls other than the
/// line feed, DEL, C1 controls (as UTF-8), and bidi overrides.
fn unsafe_bytes(text: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, &b) in text.iter().enumerate() {
        if (b < 0x20 && b != b'\n') || b == 0x7f {
            found.push(format!("{b:#04x} at {i}"));
        }
    }
    for (i, w) in text.windows(2).enumerate() {
        if w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1]) {
            found.push(format!("C1 {:#04x} at {i}", w[1]));
        }
    }
    for (i, w) in text.windows(3).enumerate() {
        // U+202A..U+202E and U+2066..U+2069: embeddings, overrides, isolates.
        if w[0] == 0xe2
            && ((w[1] == 0x80 && (0xaa..=0xae).contains(&w[2]))
                || (w[1] == 0x81 && (0xa6..=0xa9).contains(&w[2])))
        {
            found.push(format!("bidi control at {i}"));
        }
    }
    found
}

fn file_entry(name: &str, size: u64) -> Entry {
    Entry {
        name: name.into(),
        kind: EntryKind::File,
        size,
        mtime: 1_700_000_000,
    }
}

fn is_proof(r: &Request) -> bool {
    matches!(r, Request::LoginProof { .. })
}

fn is_command(r: &Request) -> bool {
    !matches!(
        r,
        Request::Hello { .. } | Request::LoginStart { .. } | Request::LoginProof { .. }
    )
}

/// A challenge with scrypt settings `ftpc` must refuse; returns the run and
/// what the fake saw.
/// Offers `kdf` and checks that ftpc refused it as a login or connection
/// failure whose message holds every one of `words`, without sending a proof.
fn assert_kdf_refused(kdf: KdfParams, words: &[&str]) -> (Run, Seen) {
    let (run, seen) = offer_kdf(kdf);
    assert!(
        matches!(run.code(), Some(3 | 4)),
        "{kdf:?}: {}",
        run.describe()
    );
    assert!(
        words.iter().all(|w| run.stderr.contains(w)),
        "{kdf:?}: {}",
        run.describe()
    );
    assert!(
        !seen.got(is_proof),
        "{kdf:?}: ftpc sent a proof: {:?}",
        seen.requests
    );
    (run, seen)
}

fn offer_kdf(kdf: KdfParams) -> (Run, Seen) {
    let fake = Fake::start(move |peer| {
        peer.hello();
        peer.challenge(&random_bytes(16), kdf);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["ls"]);
    (run, fake.finish())
}

#[test]
fn weak_scrypt_settings_are_refused_before_any_proof() {
    for kdf in [
        KdfParams {
            log_n: 10,
            r: 8,
            p: 1,
        },
        KdfParams {
            log_n: 14,
            r: 1,
            p: 1,
        },
        KdfParams {
            log_n: 0,
            r: 0,
            p: 0,
        },
    ] {
        let (_, seen) = assert_kdf_refused(kdf, &["weak key derivation", "refusing"]);
        assert!(!seen.got(is_command), "{:?}", seen.requests);
    }
}

#[test]
fn huge_scrypt_settings_are_refused_before_computing() {
    for kdf in [
        // 2^30 blocks: 128 GiB and hours of work.
        KdfParams {
            log_n: 30,
            r: 8,
            p: 1,
        },
        // Each within its own range, together 2 GiB.
        KdfParams {
            log_n: 20,
            r: 16,
            p: 1,
        },
        // 4 GiB through r and p.
        KdfParams {
            log_n: 18,
            r: 32,
            p: 4,
        },
        // Values that overflow a careless product.
        KdfParams {
            log_n: 255,
            r: u32::MAX,
            p: u32::MAX,
        },
        KdfParams {
            log_n: 63,
            r: 8,
            p: 1,
        },
    ] {
        let (run, _) = assert_kdf_refused(kdf, &["too expensive key derivation"]);
        // Not a timing assertion (see RUN_LIMIT); a run that derived a key
        // of this size would not have finished at all.
        assert!(run.peak_kib < 256 * 1024, "{kdf:?}: peak {}", run.peak_kib);
    }
}

#[test]
fn a_server_that_cannot_prove_itself_is_refused_before_any_command() {
    let keys = keys();
    let other = scram::stored_keys(b"another password", FAST_KDF).expect("keys");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random signature", random_bytes(32)),
        ("empty signature", Vec::new()),
        // Signed with a key that is not the user's.
        (
            "signature by another key",
            scram::server_signature(&other.server_key, b"anything").to_vec(),
        ),
        // The real signature made over a different transcript (a replay).
        (
            "replayed signature",
            scram::server_signature(&keys.server_key, b"an old transcript").to_vec(),
        ),
        ("overlong signature", random_bytes(4096)),
    ];
    for (what, signature) in cases {
        let fake = Fake::start(move |peer| {
            peer.login_signing_with(Some(signature));
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let run = ftpc(fake.addr, dir.path(), &["mkdir", "should-not-happen"]);
        let seen = fake.finish();
        assert_ne!(run.code(), Some(0), "{what}: {}", run.describe());
        assert_eq!(run.code(), Some(4), "{what}: {}", run.describe());
        assert!(
            run.stderr.contains("could not prove"),
            "{what}: {}",
            run.describe()
        );
        assert!(
            !seen.got(is_command),
            "{what}: ftpc went on after a bad signature: {:?}",
            seen.requests
        );
        assert!(names_in(dir.path()).is_empty());
    }
}

#[test]
fn login_shortcuts_by_the_server_are_refused() {
    type Script = Box<dyn FnOnce(&mut Peer) + Send>;
    let cases: Vec<(&str, Script, &str)> = vec![
        (
            "a short server nonce",
            Box::new(|peer: &mut Peer| {
                peer.hello();
                let _ = peer.recv();
                let keys = keys();
                peer.send(&Reply::Challenge {
                    server_nonce: vec![1, 2, 3, 4],
                    salt: keys.salt.clone(),
                    kdf: keys.kdf,
                })
                .expect("send");
            }),
            "nonce has only 4 bytes",
        ),
        (
            "LoginOk without a challenge",
            Box::new(|peer: &mut Peer| {
                peer.hello();
                let _ = peer.recv();
                peer.send(&Reply::LoginOk {
                    server_signature: random_bytes(32),
                })
                .expect("send");
            }),
            "expected Challenge",
        ),
        (
            "Ok instead of LoginOk",
            Box::new(|peer: &mut Peer| {
                peer.hello();
                let keys = keys();
                peer.challenge(&keys.salt, keys.kdf);
                let _ = peer.recv();
                peer.send(&Reply::Ok).expect("send");
            }),
            "expected LoginOk",
        ),
    ];
    for (what, script, message) in cases {
        let fake = Fake::start(script);
        let dir = tempfile::tempdir().expect("tempdir");
        let run = ftpc(fake.addr, dir.path(), &["mkdir", "should-not-happen"]);
        let seen = fake.finish();
        assert_eq!(run.code(), Some(3), "{what}: {}", run.describe());
        assert!(run.stderr.contains(message), "{what}: {}", run.describe());
        assert!(
            !seen.got(is_command),
            "{what}: ftpc went on: {:?}",
            seen.requests
        );
        if what != "Ok instead of LoginOk" {
            assert!(!seen.got(is_proof), "{what}: {:?}", seen.requests);
        }
    }
}

#[test]
fn the_fake_server_itself_logs_ftpc_in() {
    // Control for the tests above: with the right signature, the same fake
    // gets the command.
    let fake = Fake::start(|peer| {
        peer.login();
        match peer.recv() {
            Some(Request::Mkdir { path }) => assert_eq!(path, "new"),
            other => panic!("expected Mkdir, got {other:?}"),
        }
        peer.send(&Reply::Ok).expect("send");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["mkdir", "new"]);
    let seen = fake.finish();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(seen.got(|r| matches!(r, Request::Bye)));
}

#[test]
fn hostile_names_in_a_listing_are_printed_safely() {
    let names = [
        "../../etc/passwd",
        "a/b/c",
        "/absolute",
        "nul\0byte",
        "\x1b[2Jclear",
        "\x1b]0;pwned\x07title",
        "csi\u{9b}31mred",
        "two\nlines\r",
        "bidi\u{202e}gpj.exe",
        "del\x7fete",
        "tab\there",
        "bell\x07",
    ];
    let entries: Vec<Entry> = names.iter().map(|n| file_entry(n, 7)).collect();
    let count = entries.len() as u64;
    let fake = Fake::start(move |peer| {
        peer.login();
        peer.list();
        peer.send(&Reply::Entries(entries)).expect("send");
        peer.send(&Reply::ListEnd {
            total: count,
            truncated: false,
        })
        .expect("send");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["ls"]);
    fake.finish();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let bad = unsafe_bytes(&run.stdout);
    assert!(bad.is_empty(), "unsafe bytes {bad:?} in {:?}", run.stdout());
    let text = run.stdout();
    assert_eq!(
        text.lines().count(),
        names.len(),
        "one line per entry: {text}"
    );
    for shown in [
        "../../etc/passwd",
        "?[2Jclear",
        "?]0;pwned?title",
        "nul?byte",
    ] {
        assert!(text.contains(shown), "{shown:?} missing from {text}");
    }
    assert!(unsafe_bytes(run.stderr.as_bytes()).is_empty());
    // Nothing was created locally from those names.
    assert!(names_in(dir.path()).is_empty());
}

#[test]
fn hostile_server_name_entry_and_error_message_are_printed_safely() {
    let evil = "\x1b]0;pwned\x07\x1b[2J\u{9b}1m\r\nfake prompt$ ";

    // `ping` prints the server's self-description.
    let fake = Fake::start(move |peer| {
        peer.hello_as(evil);
        match peer.recv() {
            Some(Request::Ping) => peer.send(&Reply::Pong).expect("send"),
            other => panic!("expected Ping, got {other:?}"),
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["ping"]);
    fake.finish();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(unsafe_bytes(&run.stdout).is_empty(), "{:?}", run.stdout());
    // The server's line, then the transport's ("plaintext" here).
    assert_eq!(run.stdout().lines().count(), 2, "{:?}", run.stdout());

    // `stat` prints one entry's name.
    let fake = Fake::start(move |peer| {
        peer.login();
        match peer.recv() {
            Some(Request::Stat { .. }) => {
                peer.send(&Reply::Entry(file_entry(evil, 1))).expect("send")
            }
            other => panic!("expected Stat, got {other:?}"),
        }
    });
    let run = ftpc(fake.addr, dir.path(), &["stat", "x"]);
    fake.finish();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(unsafe_bytes(&run.stdout).is_empty(), "{:?}", run.stdout());

    // An error message goes to stderr, also cleaned.
    let fake = Fake::start(move |peer| {
        peer.login();
        peer.list();
        peer.send(&Reply::Error {
            code: ErrorCode::NotFound,
            message: format!("no such thing{evil}"),
        })
        .expect("send");
    });
    let run = ftpc(fake.addr, dir.path(), &["ls", "x"]);
    fake.finish();
    assert_eq!(run.code(), Some(5), "{}", run.describe());
    assert!(
        unsafe_bytes(run.stderr.as_bytes()).is_empty(),
        "{:?}",
        run.stderr
    );
    assert!(run.stderr.contains("no such thing"), "{}", run.stderr);
}

/// Serves `ftpc get f.bin`: logs in, takes `GetStart`, then runs `body`.
fn serve_get(body: impl FnOnce(&mut Peer) + Send + 'static) -> Fake {
    Fake::start(move |peer| {
        peer.login();
        assert_eq!(peer.get_start(), "f.bin");
        body(peer);
    })
}

/// A local file's length, or `None` if it does not exist.
fn len_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

#[test]
fn a_download_with_more_bytes_than_announced_is_refused() {
    let fake = serve_get(|peer| {
        peer.send(&Reply::GetReady {
            size: 1000,
            offset: 0,
        })
        .expect("send");
        peer.send(&Reply::Chunk(&[b'a'; 600])).expect("send");
        // Over the announced size: the last 200 must never be written.
        peer.send(&Reply::Chunk(&[b'b'; 600])).expect("send");
        let mut all = vec![b'a'; 600];
        all.extend([b'b'; 600]);
        let _ = peer.send(&Reply::GetDone {
            crc32: crc32fast::hash(&all),
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["get", "f.bin"]);
    fake.finish();
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(
        run.stderr.contains("more than the 1000 bytes"),
        "{}",
        run.describe()
    );
    assert_eq!(len_of(&dir.path().join("f.bin")), None, "final file exists");
    let part = len_of(&dir.path().join("f.bin.part")).unwrap_or(0);
    assert!(part <= 1000, "the .part grew to {part} bytes");
    assert_eq!(part, 600, "the chunk that fits is kept for resume");
    assert!(names_in(dir.path()).iter().all(|n| n == "f.bin.part"));
}

#[test]
fn a_download_that_ends_early_leaves_no_final_file() {
    let fake = serve_get(|peer| {
        peer.send(&Reply::GetReady {
            size: 5000,
            offset: 0,
        })
        .expect("send");
        let data = [b'x'; 1000];
        peer.send(&Reply::Chunk(&data)).expect("send");
        // GetDone with a CRC32 that even matches what was sent.
        peer.send(&Reply::GetDone {
            crc32: crc32fast::hash(&data),
        })
        .expect("send");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["get", "f.bin"]);
    fake.finish();
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(
        run.stderr.contains("ended after 1000 of 5000 bytes"),
        "{}",
        run.describe()
    );
    assert_eq!(len_of(&dir.path().join("f.bin")), None, "final file exists");
    assert!(len_of(&dir.path().join("f.bin.part")).unwrap_or(0) <= 1000);
}

#[test]
fn a_resume_offset_the_client_did_not_ask_for_is_refused() {
    for (size, offset) in [(100, 50), (100, 101), (u64::MAX, u64::MAX)] {
        let fake = serve_get(move |peer| {
            peer.send(&Reply::GetReady { size, offset }).expect("send");
            let _ = peer.send(&Reply::Chunk(&[b'x'; 50]));
            let _ = peer.send(&Reply::GetDone { crc32: 0 });
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let run = ftpc(fake.addr, dir.path(), &["get", "f.bin"]);
        fake.finish();
        assert_eq!(run.code(), Some(3), "{offset}/{size}: {}", run.describe());
        assert!(
            run.stderr.contains("offered to resume"),
            "{offset}/{size}: {}",
            run.describe()
        );
        assert_eq!(len_of(&dir.path().join("f.bin")), None);
        assert_eq!(len_of(&dir.path().join("f.bin.part")).unwrap_or(0), 0);
    }
}

/// Sends full chunks until the client hangs up or `cap` bytes went out;
/// returns the payload bytes sent.
fn send_chunks_until_hangup(peer: &mut Peer, cap: u64) -> u64 {
    let chunk = frame::encode(&Reply::Chunk(&[0x5a; CHUNK_SIZE])).expect("encode");
    let mut payload = 0u64;
    while payload < cap {
        if peer.send_raw(&chunk).is_err() {
            break;
        }
        payload += CHUNK_SIZE as u64;
    }
    payload
}

#[test]
fn an_endless_download_is_cut_at_the_announced_size() {
    const ANNOUNCED: u64 = 4 * 1024 * 1024;
    let fake = serve_get(|peer| {
        peer.send(&Reply::GetReady {
            size: ANNOUNCED,
            offset: 0,
        })
        .expect("send");
        send_chunks_until_hangup(peer, ENDLESS_CAP);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["get", "f.bin"]);
    let seen = fake.finish();
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(run.stderr.contains("more than the"), "{}", run.describe());
    assert_eq!(len_of(&dir.path().join("f.bin")), None, "final file exists");
    let part = len_of(&dir.path().join("f.bin.part")).unwrap_or(0);
    assert!(part <= ANNOUNCED, "the .part grew to {part} bytes");
    assert!(
        seen.sent < ENDLESS_CAP,
        "ftpc kept reading all {} bytes",
        seen.sent
    );
}

#[test]
fn a_huge_announced_size_is_not_preallocated() {
    const SENT: u64 = 8 * 1024 * 1024;
    let fake = serve_get(|peer| {
        peer.send(&Reply::GetReady {
            size: u64::MAX / 2,
            offset: 0,
        })
        .expect("send");
        assert_eq!(send_chunks_until_hangup(peer, SENT), SENT);
        // Then hang up without GetDone.
        let _ = peer.stream.shutdown(std::net::Shutdown::Both);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["get", "f.bin"]);
    fake.finish();
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(
        run.stderr.contains("closed the connection"),
        "{}",
        run.describe()
    );
    assert_eq!(len_of(&dir.path().join("f.bin")), None, "final file exists");
    let part = std::fs::metadata(dir.path().join("f.bin.part")).expect("part");
    assert!(part.len() <= SENT, ".part is {} bytes", part.len());
    assert!(
        part.blocks() * 512 <= SENT + 1024 * 1024,
        ".part allocates {} bytes",
        part.blocks() * 512
    );
    assert!(run.peak_kib < 128 * 1024, "ftpc used {} KiB", run.peak_kib);
}

#[test]
fn remote_paths_never_choose_where_a_download_lands() {
    let root = tempfile::tempdir().expect("tempdir");
    let cwd = root.path().join("a/b/work");
    std::fs::create_dir_all(&cwd).expect("mkdir");

    let fake = Fake::start(|peer| {
        peer.login();
        assert_eq!(peer.get_start(), "../../evil");
        peer.send(&Reply::GetReady { size: 5, offset: 0 })
            .expect("send");
        peer.send(&Reply::Chunk(b"hello")).expect("send");
        peer.send(&Reply::GetDone {
            crc32: crc32fast::hash(b"hello"),
        })
        .expect("send");
    });
    let run = ftpc(fake.addr, &cwd, &["get", "../../evil"]);
    fake.finish();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert_eq!(std::fs::read(cwd.join("evil")).expect("evil"), b"hello");
    assert_eq!(names_in(&cwd), ["evil"]);
    assert_eq!(names_in(&root.path().join("a/b")), ["work"]);
    assert_eq!(names_in(&root.path().join("a")), ["b"]);
    assert_eq!(names_in(root.path()), ["a"]);

    // Paths with no usable last name: ftpc asks for a local name and
    // never asks the server for the file.
    for remote in ["..", "../..", "/", "x/..", "x/", "."] {
        let fake = Fake::start(|peer| peer.login());
        let run = ftpc(fake.addr, &cwd, &["get", remote]);
        let seen = fake.finish();
        assert_eq!(run.code(), Some(2), "{remote}: {}", run.describe());
        assert!(
            run.stderr.contains("cannot choose a local name"),
            "{remote}: {}",
            run.describe()
        );
        assert!(!seen.got(|r| matches!(r, Request::GetStart { .. })));
        assert_eq!(names_in(&cwd), ["evil"], "{remote}");
        assert_eq!(names_in(&root.path().join("a/b")), ["work"], "{remote}");
    }
}

#[test]
fn a_listing_that_claims_huge_counts_is_reported_not_trusted() {
    let fake = Fake::start(|peer| {
        peer.login();
        peer.list();
        peer.send(&Reply::Entries(vec![
            file_entry("one", 1),
            file_entry("two", 2),
        ]))
        .expect("send");
        peer.send(&Reply::ListEnd {
            total: u64::MAX,
            truncated: true,
        })
        .expect("send");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["ls"]);
    fake.finish();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert_eq!(run.stdout().lines().count(), 2, "{}", run.describe());
    assert!(
        run.stderr.contains("truncated") && run.stderr.contains(&u64::MAX.to_string()),
        "{}",
        run.describe()
    );
}

#[test]
fn an_endless_listing_is_cut_off() {
    /// The fake stops by itself after this many entries.
    const FAKE_CAP: usize = 100_000;
    const BATCH: usize = 256;
    let fake = Fake::start(|peer| {
        peer.login();
        peer.list();
        let long = "n".repeat(200);
        let mut sent = 0;
        while sent < FAKE_CAP {
            let batch: Vec<Entry> = (sent..sent + BATCH)
                .map(|i| file_entry(&format!("{long}{i:08}"), i as u64))
                .collect();
            if peer.send(&Reply::Entries(batch)).is_err() {
                break;
            }
            sent += BATCH;
        }
        let _ = peer.send(&Reply::ListEnd {
            total: sent as u64,
            truncated: false,
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["ls"]);
    fake.finish();
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(
        run.stderr
            .contains(&format!("more than {MAX_LIST_ENTRIES} entries")),
        "{}",
        run.describe()
    );
    assert!(run.stdout.is_empty(), "printed a partial listing");
    assert!(run.peak_kib < 128 * 1024, "ftpc used {} KiB", run.peak_kib);
}

#[test]
fn an_oversized_frame_from_the_server_is_a_protocol_error() {
    // In answer to Hello, with no body following: ftpc must not wait for it.
    let fake = Fake::start(|peer| {
        let _ = peer.recv();
        peer.send_raw(&((MAX_FRAME + 1) as u32).to_be_bytes())
            .expect("send");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["ping"]);
    fake.finish();
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(
        run.stderr.contains(&format!(
            "protocol error: the server sent a frame of {}",
            MAX_FRAME + 1
        )),
        "{}",
        run.describe()
    );

    // After login, in answer to a command, the largest prefix there is.
    let fake = Fake::start(|peer| {
        peer.login();
        peer.list();
        peer.send_raw(&u32::MAX.to_be_bytes()).expect("send");
        let _ = peer.send_raw(&[0xff; 1024]);
    });
    let run = ftpc(fake.addr, dir.path(), &["ls"]);
    fake.finish();
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(
        run.stderr.contains("protocol error") && run.stderr.contains("frame of"),
        "{}",
        run.describe()
    );

    // A frame of legal size whose body is garbage.
    let fake = Fake::start(|peer| {
        peer.login();
        peer.list();
        let mut bytes = 6u32.to_be_bytes().to_vec();
        bytes.extend([0xff; 6]);
        peer.send_raw(&bytes).expect("send");
    });
    let run = ftpc(fake.addr, dir.path(), &["ls"]);
    fake.finish();
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(
        run.stderr.contains("protocol error: malformed frame"),
        "{}",
        run.describe()
    );
    assert!(names_in(dir.path()).is_empty());
}

// ---------------------------------------------------------------------
// A server that never ends a reply, or ends it too slowly: ftpc refuses
// what a correct server never sends, and gives up on a reply that makes
// too little progress (the rule is in README, "Time-outs").

/// How long the fakes below keep misbehaving before they stop by
/// themselves: past [`RUN_LIMIT`], so a client that does not give up on its
/// own fails the test instead of outlasting the fake.
const MISBEHAVE_FOR: Duration = Duration::from_secs(90);

/// The `--timeout` the trickle cases give ftpc, in seconds: short, so the
/// cases end quickly, while the trickles below stay far under the rule.
const SHORT_TIMEOUT: &str = "2";

/// Bound on how long a trickle case may take: many times the rule's
/// two seconds, far under [`RUN_LIMIT`]; not a timing assertion.
const TRICKLE_LIMIT: Duration = Duration::from_secs(30);

/// Pause between the pieces of a trickle.
const TRICKLE_GAP: Duration = Duration::from_millis(200);

/// Runs `send` every [`TRICKLE_GAP`] until it fails (the client hung up)
/// or [`MISBEHAVE_FOR`] passed.
fn trickle(peer: &mut Peer, mut send: impl FnMut(&mut Peer) -> io::Result<()>) {
    let started = Instant::now();
    while started.elapsed() < MISBEHAVE_FOR {
        if send(peer).is_err() {
            return;
        }
        std::thread::sleep(TRICKLE_GAP);
    }
}

/// Sends `reply` back to back until the client hangs up or
/// [`MISBEHAVE_FOR`] passed; returns how many went out.
fn flood(peer: &mut Peer, reply: &Reply) -> u64 {
    let bytes = frame::encode(reply).expect("encode");
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < MISBEHAVE_FOR && peer.send_raw(&bytes).is_ok() {
        sent += 1;
    }
    sent
}

fn assert_protocol_error(run: &Run, words: &str) {
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(
        run.stderr.contains("protocol error") && run.stderr.contains(words),
        "{}",
        run.describe()
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.describe());
}

fn assert_timed_out(run: &Run, words: &str) {
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(
        run.stderr.contains("timed out") && run.stderr.contains(words),
        "{}",
        run.describe()
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.describe());
    assert!(
        run.elapsed < TRICKLE_LIMIT,
        "took {:?}: {}",
        run.elapsed,
        run.describe()
    );
}

#[test]
fn an_endless_stream_of_empty_listing_batches_is_refused() {
    let fake = Fake::start(|peer| {
        peer.login();
        peer.list();
        flood(peer, &Reply::Entries(Vec::new()));
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["ls"]);
    fake.finish();
    assert_protocol_error(&run, "empty listing batch");
    assert!(run.stdout.is_empty(), "{}", run.describe());
}

#[test]
fn an_endless_stream_of_empty_chunks_is_refused() {
    let fake = serve_get(|peer| {
        peer.send(&Reply::GetReady {
            size: 10,
            offset: 0,
        })
        .expect("send");
        flood(peer, &Reply::Chunk(&[]));
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["get", "f.bin"]);
    fake.finish();
    assert_protocol_error(&run, "empty data chunk");
    assert_eq!(len_of(&dir.path().join("f.bin")), None, "final file exists");
    assert_eq!(len_of(&dir.path().join("f.bin.part")).unwrap_or(0), 0);
}

#[test]
fn a_listing_trickled_one_entry_at_a_time_times_out() {
    let fake = Fake::start(|peer| {
        peer.login();
        peer.list();
        let mut i = 0u64;
        trickle(peer, |peer| {
            i += 1;
            peer.send(&Reply::Entries(vec![file_entry(&format!("e{i}"), i)]))
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["--timeout", SHORT_TIMEOUT, "ls"]);
    fake.finish();
    assert_timed_out(&run, "listing");
    assert!(run.stdout.is_empty(), "printed a partial listing");
}

#[test]
fn a_download_trickled_one_byte_at_a_time_times_out() {
    let fake = serve_get(|peer| {
        peer.send(&Reply::GetReady {
            size: 1 << 30,
            offset: 0,
        })
        .expect("send");
        trickle(peer, |peer| peer.send(&Reply::Chunk(b"x")));
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(
        fake.addr,
        dir.path(),
        &["--timeout", SHORT_TIMEOUT, "get", "f.bin"],
    );
    fake.finish();
    assert_timed_out(&run, "of the file");
    assert_eq!(len_of(&dir.path().join("f.bin")), None, "final file exists");
}

#[test]
fn a_reply_trickled_one_byte_at_a_time_times_out() {
    // A legal Stat reply, sent a byte at a time: whole, it would take
    // minutes, every byte well within the time-out of the one before.
    let bytes = frame::encode(&Reply::Entry(file_entry(&"n".repeat(1000), 1))).expect("encode");
    let fake = Fake::start(move |peer| {
        peer.login();
        match peer.recv() {
            Some(Request::Stat { .. }) => {}
            other => panic!("expected Stat, got {other:?}"),
        }
        let mut left = bytes.iter();
        trickle(peer, |peer| match left.next() {
            Some(&b) => peer.send_raw(&[b]),
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(
        fake.addr,
        dir.path(),
        &["--timeout", SHORT_TIMEOUT, "stat", "x"],
    );
    fake.finish();
    assert_timed_out(&run, "no reply");
}

#[test]
fn an_upload_the_server_takes_in_a_trickle_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Far more than the socket buffers on both sides hold.
    let local = dir.path().join("big.bin");
    std::fs::write(&local, vec![0x42u8; 64 * 1024 * 1024]).expect("write");
    let fake = Fake::start(|peer| {
        // A small receive buffer makes the kernel open the window a little
        // at a time, so the upload moves on every read below.
        rustix::net::sockopt::set_socket_recv_buffer_size(&peer.stream, 4096).expect("SO_RCVBUF");
        peer.login();
        match peer.recv() {
            Some(Request::PutStart { .. }) => {}
            other => panic!("expected PutStart, got {other:?}"),
        }
        peer.send(&Reply::PutReady {
            offset: 0,
            prefix_crc: 0,
        })
        .expect("send");
        // Then read 1 KiB at a time: about 5 KiB/s, a little every 200 ms.
        let mut buf = [0u8; 1024];
        trickle(peer, |peer| match peer.stream.read(&mut buf) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        });
        // What is left unread would only be recorded as garbage.
        let _ = peer.stream.shutdown(std::net::Shutdown::Both);
    });
    let run = ftpc(
        fake.addr,
        dir.path(),
        &["--timeout", SHORT_TIMEOUT, "put", "big.bin"],
    );
    drop(fake);
    assert_timed_out(&run, "of the file");
}

#[test]
fn names_longer_than_the_server_allows_are_refused_within_bounded_memory() {
    // Control: the largest listing a correct server sends (the entry cap,
    // each name at the length limit) is shown, in bounded memory.
    let fake = Fake::start(|peer| {
        peer.login();
        peer.list();
        let mut sent = 0;
        while sent < MAX_LIST_ENTRIES {
            // Frames hold about 128 entries of this size.
            let batch: Vec<Entry> = (sent..(sent + 100).min(MAX_LIST_ENTRIES))
                .map(|i| {
                    let tag = format!("{i:06}");
                    file_entry(&format!("{tag}{}", "n".repeat(MAX_PATH_LEN - tag.len())), 1)
                })
                .collect();
            sent += batch.len();
            peer.send(&Reply::Entries(batch)).expect("send");
        }
        peer.send(&Reply::ListEnd {
            total: sent as u64,
            truncated: false,
        })
        .expect("send");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = ftpc(fake.addr, dir.path(), &["ls"]);
    fake.finish();
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert_eq!(run.stdout().lines().count(), MAX_LIST_ENTRIES);
    // About 21 MiB of entries at most; the login's scrypt (16 MiB) is
    // freed before.
    assert!(run.peak_kib < 64 * 1024, "ftpc used {} KiB", run.peak_kib);

    // One byte over the limit, in a listing and in a stat.
    let over = "n".repeat(MAX_PATH_LEN + 1);
    let name = over.clone();
    let fake = Fake::start(move |peer| {
        peer.login();
        peer.list();
        peer.send(&Reply::Entries(vec![file_entry(&name, 1)]))
            .expect("send");
        let _ = peer.send(&Reply::ListEnd {
            total: 1,
            truncated: false,
        });
    });
    let run = ftpc(fake.addr, dir.path(), &["ls"]);
    fake.finish();
    assert_protocol_error(&run, &format!("name of {} bytes", MAX_PATH_LEN + 1));
    assert!(run.stdout.is_empty(), "{}", run.describe());
    let fake = Fake::start(move |peer| {
        peer.login();
        let _ = peer.recv();
        peer.send(&Reply::Entry(file_entry(&over, 1)))
            .expect("send");
    });
    let run = ftpc(fake.addr, dir.path(), &["stat", "x"]);
    fake.finish();
    assert_protocol_error(&run, &format!("name of {} bytes", MAX_PATH_LEN + 1));

    // Thousands of names of 64 KiB each (one per frame) would be 256 MiB.
    let fake = Fake::start(|peer| {
        peer.login();
        peer.list();
        let huge = file_entry(&"h".repeat(64 * 1024), 1);
        for _ in 0..4096 {
            if peer.send(&Reply::Entries(vec![huge.clone()])).is_err() {
                return;
            }
        }
        let _ = peer.send(&Reply::ListEnd {
            total: 4096,
            truncated: false,
        });
    });
    let run = ftpc(fake.addr, dir.path(), &["ls"]);
    fake.finish();
    assert_protocol_error(&run, &format!("name of {} bytes", 64 * 1024));
    assert!(run.peak_kib < 64 * 1024, "ftpc used {} KiB", run.peak_kib);
}
