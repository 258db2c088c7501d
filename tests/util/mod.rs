//! Test helpers: start the real `ftpd` on port 0, run the real `ftpc`, and
//! talk the protocol over raw sockets.

#![allow(dead_code)]

pub mod fake;
pub mod relay;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ftpd::frame;
use ftpd::proto::{MAGIC, NONCE_LEN, PROTOCOL_VERSION, Reply, Request};
use ftpd::scram;

pub mod tls;

pub const FTPD: &str = env!("CARGO_BIN_EXE_ftpd");
pub const FTPC: &str = env!("CARGO_BIN_EXE_ftpc");

/// scrypt cost for test users: the client's floor, so logins are quick.
pub const TEST_KDF_LOG_N: &str = "14";

/// A data folder with users, kept apart from the server so a test can
/// restart the server on the same data.
pub struct DataDir {
    pub dir: tempfile::TempDir,
}

impl DataDir {
    pub fn new() -> DataDir {
        DataDir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a user with `ftpd user add ... --password-stdin`.
    pub fn add_user(&self, name: &str, password: &str, quota: Option<&str>) {
        let mut args = vec![
            "user",
            "add",
            name,
            "--password-stdin",
            "--kdf-log-n",
            TEST_KDF_LOG_N,
        ];
        if let Some(q) = quota {
            args.extend(["--quota", q]);
        }
        let out = run_with_stdin(self.admin(&args), &format!("{password}\n"));
        assert_success(&out, "ftpd user add");
    }

    /// An `ftpd --root DIR ...` admin command.
    pub fn admin(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(FTPD);
        cmd.arg("--root").arg(self.path()).args(args);
        cmd
    }

    /// A user's home folder on the server's disk.
    pub fn home(&self, user: &str) -> PathBuf {
        self.path().join("homes").join(user)
    }
}

/// Runs a command with `input` on stdin and returns its output.
pub fn run_with_stdin(mut cmd: Command, input: &str) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// Panics with the command's whole output unless it succeeded.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Set to `1` to make every [`skip`] a failure (CI sets it where the
/// machine offers root and `strace`).
pub const REQUIRE_ENV: &str = "FTPD_REQUIRE_FAULT_TESTS";

/// A file that every [`skip`] appends a line to, so a skip shows in CI even
/// though the test harness swallows a passing test's stderr.
pub const SKIP_LOG_ENV: &str = "FTPD_SKIP_LOG";

/// The one way a test skips because the machine lacks something (root,
/// `unshare`, `strace`, `prlimit`, an IPv6 loopback): says so on stderr and
/// in the `FTPD_SKIP_LOG` file, and fails instead under
/// `FTPD_REQUIRE_FAULT_TESTS=1`. The caller returns right after.
pub fn skip(reason: &str) {
    let current = std::thread::current();
    let test = current.name().unwrap_or("?");
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{test} would be skipped ({reason}), but {REQUIRE_ENV}=1");
    }
    eprintln!("skipped: {reason}");
    if let Some(file) = std::env::var_os(SKIP_LOG_ENV) {
        let line = format!("{test}: {reason}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            panic!("cannot record the skip in {}: {e}", file.to_string_lossy());
        }
    }
}

/// A running `ftpd`, killed on drop.
pub struct TestServer {
    pub child: Child,
    pub addr: SocketAddr,
    log: mpsc::Receiver<String>,
    /// The server's TLS key fingerprint; `None` when it runs `--plaintext`.
    pub fingerprint: Option<String>,
    /// The clients' own folder (their known-hosts file), per server.
    pub client_dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts `ftpd --root DATA --listen 127.0.0.1:0 EXTRA...` and waits for
    /// its `listening on ADDR` line.
    pub fn start(data: &DataDir, extra: &[&str]) -> TestServer {
        TestServer::start_on(data, "127.0.0.1:0", extra)
    }

    /// As [`TestServer::start`], listening on `listen` instead.
    pub fn start_on(data: &DataDir, listen: &str, extra: &[&str]) -> TestServer {
        TestServer::spawn(data, listen, extra, &[])
    }

    /// As [`TestServer::start`], with these environment variables set.
    pub fn start_with_env(data: &DataDir, env: &[(&str, &str)]) -> TestServer {
        TestServer::spawn(data, "127.0.0.1:0", &[], env)
    }

    fn spawn(data: &DataDir, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        let mut child = Command::new(FTPD)
            .arg("--root")
            .arg(data.path())
            .args(["--listen", listen, "--log-level", "debug"])
            .args(if extra.contains(&"--login-delay-ms") {
                &[][..]
            } else {
                &["--login-delay-ms", "20"][..]
            })
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ftpd");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (first_tx, first_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = first_tx.send(line);
            }
            for _ in lines {} // keep draining so the pipe never fills
        });
        let (log_tx, log_rx) = mpsc::channel();
        let (fp_tx, fp_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[ftpd] {line}");
                if let Some((_, fp)) = line.split_once("TLS key fingerprint ") {
                    let _ = fp_tx.send(fp.trim().to_owned());
                }
                let _ = log_tx.send(line);
            }
        });
        let line = first_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("ftpd did not print its address");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .parse()
            .expect("address");
        let fingerprint = (!extra.contains(&"--plaintext")).then(|| {
            fp_rx
                .recv_timeout(Duration::from_secs(20))
                .expect("ftpd did not log its TLS key fingerprint")
        });
        let client_dir = tempfile::tempdir().expect("tempdir");
        if let Some(fp) = &fingerprint {
            // Clients trust the server by a pin, as after a first contact.
            std::fs::write(
                client_dir.path().join("known_hosts"),
                format!("{addr} {fp}\n"),
            )
            .expect("write the pin");
        }
        TestServer {
            child,
            addr,
            log: log_rx,
            fingerprint,
            client_dir,
        }
    }

    /// Whether the server speaks TLS (it does unless started `--plaintext`).
    pub fn tls(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// The flags that make ftpc trust this server: a known-hosts file of
    /// the test's own that pins its key, or `--plaintext`.
    pub fn trust_args(&self) -> Vec<String> {
        match &self.fingerprint {
            Some(_) => vec![
                "--known-hosts".into(),
                self.known_hosts().display().to_string(),
            ],
            None => vec!["--plaintext".into()],
        }
    }

    /// The known-hosts file the test's clients use, pinning this server.
    pub fn known_hosts(&self) -> PathBuf {
        self.client_dir.path().join("known_hosts")
    }

    /// A raw protocol session, over TLS unless the server runs plaintext.
    pub fn raw(&self) -> Raw {
        if self.tls() {
            Raw::connect(self.addr)
        } else {
            Raw::connect_plain(self.addr)
        }
    }

    /// Log lines printed so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// Every log line not read yet, up to and including the first that
    /// contains `needle` (waiting up to `timeout` for it); `None` if it
    /// never came. The log is one ordered stream, so a line about anything
    /// that happened before `needle`'s event is in the result.
    pub fn log_until(&self, needle: &str, timeout: Duration) -> Option<Vec<String>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.log.recv_timeout(left).ok()?;
            let last = line.contains(needle);
            lines.push(line);
            if last {
                return Some(lines);
            }
        }
    }

    /// Waits up to `timeout` for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// `ftpc --server ADDR --user USER ARGS...` with the password in the
    /// environment.
    pub fn ftpc(&self, user: &str, password: &str, args: &[&str]) -> Output {
        self.ftpc_cmd(user, password, args)
            .output()
            .expect("run ftpc")
    }

    /// The `ftpc` command, to adjust before running.
    pub fn ftpc_cmd(&self, user: &str, password: &str, args: &[&str]) -> Command {
        let trust = self.trust_args();
        let trust: Vec<&str> = trust.iter().map(String::as_str).collect();
        ftpc_base(self.addr, &trust, user, password, true, args)
    }

    /// The `ftpc` command without `--quiet`, so it prints its summary lines
    /// (and, on a terminal, its notes and progress bar): also what a
    /// pseudo-terminal spawner runs (`rexpect::session::spawn_command`).
    pub fn ftpc_cmd_loud(&self, user: &str, password: &str, args: &[&str]) -> Command {
        let trust = self.trust_args();
        let trust: Vec<&str> = trust.iter().map(String::as_str).collect();
        ftpc_base(self.addr, &trust, user, password, false, args)
    }
}

/// `ftpc --server ADDR --user USER --quiet TRUST... ARGS...` for any server
/// (a relay, a fake), with the password in the environment. `trust` says
/// how ftpc trusts it: [`TRUST_FIRST_CONTACT`] through a relay to a TLS
/// server, `--plaintext` for a fake that speaks in clear.
pub fn ftpc_cmd_to(
    addr: SocketAddr,
    trust: &[&str],
    user: &str,
    password: &str,
    args: &[&str],
) -> Command {
    ftpc_base(addr, trust, user, password, true, args)
}

fn ftpc_base(
    addr: SocketAddr,
    trust: &[&str],
    user: &str,
    password: &str,
    quiet: bool,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new(FTPC);
    cmd.args(["--server", &addr.to_string(), "--user", user])
        .args(if quiet { &["--quiet"][..] } else { &[][..] })
        .args(trust)
        .args(args)
        .env("FTPC_PASSWORD", password);
    clean_client_env(&mut cmd);
    cmd
}

impl TestServer {
    /// Runs ftpc and asserts success; returns stdout.
    pub fn ok(&self, user: &str, password: &str, args: &[&str]) -> String {
        let out = self.ftpc(user, password, args);
        assert_success(&out, &format!("ftpc {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server with SIGKILL (a crash) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// ftpc flags for a client that reaches a TLS server through an address the
/// helpers do not know (a relay, a server started by hand): trust the key
/// on first contact and remember nothing. Tests of trust itself are in
/// `tls.rs`.
pub const TRUST_FIRST_CONTACT: [&str; 3] = ["--accept-new", "--known-hosts", "/dev/null"];

/// Removes the environment that would change how ftpc connects.
pub fn clean_client_env(cmd: &mut Command) {
    for var in [
        "FTPC_SERVER",
        "FTPC_USER",
        "FTPC_FINGERPRINT",
        "FTPC_KNOWN_HOSTS",
        "FTPC_ACCEPT_NEW",
        "FTPC_PLAINTEXT",
    ] {
        cmd.env_remove(var);
    }
}

/// A protocol client on a blocking socket, over TLS (trusting any server
/// key: these tests are about the server) or in clear.
pub struct Raw {
    /// The TCP socket, for socket options; bytes go through `send_raw`.
    pub stream: TcpStream,
    tls: Option<Box<rustls::ClientConnection>>,
    /// The server answered the handshake in clear (turned away): what it
    /// said is in `rx`, and whatever is sent now goes nowhere.
    refused_in_clear: bool,
    rx: Vec<u8>,
}

impl Raw {
    /// A session over a socket with a tiny receive window, so whatever
    /// the server sends backs up at once (a client that stops reading).
    pub fn connect_tiny_window(addr: SocketAddr) -> Raw {
        use rustix::net::{AddressFamily, SocketType, sockopt};
        let family = if addr.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        let fd = rustix::net::socket(family, SocketType::STREAM, None).expect("socket");
        sockopt::set_socket_recv_buffer_size(&fd, 1024).expect("SO_RCVBUF");
        rustix::net::connect(&fd, &addr).expect("connect");
        Raw::from_stream(TcpStream::from(fd))
    }

    /// A TLS session with the server at `addr`.
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    /// A session in clear, for a `--plaintext` server.
    pub fn connect_plain(addr: SocketAddr) -> Raw {
        Raw::from_stream_plain(TcpStream::connect(addr).expect("connect"))
    }

    /// A TLS session on a stream connected some other way. A server that
    /// turns the connection away answers in clear instead of with a
    /// handshake; then the session holds that answer for `recv`, as ftpc
    /// reads it.
    pub fn from_stream(stream: TcpStream) -> Raw {
        let mut raw = Raw::from_stream_plain(stream);
        let mut conn = tls::client().expect("TLS client");
        let mut sniff = tls::Sniff::new(&mut raw.stream);
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sniff) {
                let seen = sniff.seen;
                assert!(
                    seen.first().is_some_and(|&b| b != 0x16),
                    "TLS handshake failed: {e}"
                );
                raw.rx = seen;
                raw.refused_in_clear = true;
                return raw;
            }
        }
        raw.tls = Some(Box::new(conn));
        raw
    }

    /// A session in clear on a stream connected some other way.
    pub fn from_stream_plain(stream: TcpStream) -> Raw {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Raw {
            stream,
            tls: None,
            refused_in_clear: false,
            rx: Vec::new(),
        }
    }

    /// The channel binding the login signs; `None` in clear.
    pub fn channel_binding(&self) -> Option<ftpd::tls::ChannelBinding> {
        self.tls
            .as_ref()
            .map(|c| ftpd::tls::channel_binding(&***c).expect("channel binding"))
    }

    pub fn send(&mut self, req: &Request) {
        let bytes = frame::encode(req).expect("encode");
        self.send_raw(&bytes).expect("send");
    }

    /// Sends bytes as they are (inside TLS when the session has it).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.tls {
            None if self.refused_in_clear => Ok(()),
            None => self.stream.write_all(bytes),
            Some(conn) => {
                let mut io = rustls::Stream::new(&mut **conn, &mut self.stream);
                io.write_all(bytes)?;
                io.flush()
            }
        }
    }

    /// Writes `frame` over and over, without blocking, until the server
    /// stops taking bytes or `limit` bytes of frames went out; returns the
    /// bytes of frames sent. Over TLS each piece is encrypted as it goes,
    /// so the server decrypts all it reads.
    pub fn flood(&mut self, frame: &[u8], limit: usize) -> usize {
        let burst: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * (16 * 1024 / frame.len()))
            .collect();
        self.stream.set_nonblocking(true).expect("nonblocking");
        let mut sent = 0;
        let mut wire: Vec<u8> = Vec::new();
        let mut at = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sent < limit && std::time::Instant::now() < deadline {
            if at == wire.len() {
                wire.clear();
                at = 0;
                match &mut self.tls {
                    None => wire.extend_from_slice(&burst),
                    Some(conn) => {
                        conn.writer().write_all(&burst).expect("encrypt");
                        while conn.wants_write() {
                            conn.write_tls(&mut wire).expect("records");
                        }
                    }
                }
                sent += burst.len();
            }
            match self.stream.write(&wire[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Let the server take what it will, then try once more.
                    std::thread::sleep(Duration::from_millis(2));
                    match self.stream.write(&wire[at..]) {
                        Ok(n) => at += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("flood write: {e}"),
                    }
                }
                Err(e) => panic!("flood write: {e}"),
            }
        }
        sent
    }

    /// Reads what arrives (decrypted when the session has TLS).
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.tls {
            None => self.stream.read(buf),
            Some(conn) => rustls::Stream::new(&mut **conn, &mut self.stream).read(buf),
        }
    }

    /// The next reply, owned; None when the server closed the connection.
    pub fn recv(&mut self) -> Option<Reply<'static>> {
        loop {
            match frame::decode::<Reply>(&self.rx) {
                Ok(Some((reply, n))) => {
                    let owned = own(reply);
                    self.rx.drain(..n);
                    return Some(owned);
                }
                Ok(None) => {}
                Err(e) => panic!("bad frame from server: {e}"),
            }
            let mut buf = [0u8; 64 * 1024];
            match self.read_some(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                // The server ended TLS without close_notify: closed, too.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The replies that have already arrived, read without waiting.
    pub fn recv_now(&mut self) -> Vec<Reply<'static>> {
        self.stream.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.read_some(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break, // WouldBlock, or the connection is gone
            }
        }
        self.stream.set_nonblocking(false).expect("blocking");
        let mut replies = Vec::new();
        while let Ok(Some((reply, n))) = frame::decode::<Reply>(&self.rx) {
            let owned = own(reply);
            self.rx.drain(..n);
            replies.push(owned);
        }
        replies
    }

    /// Every reply until the server closes the connection.
    pub fn recv_to_end(&mut self) -> Vec<Reply<'static>> {
        std::iter::from_fn(|| self.recv()).take(10_000).collect()
    }

    pub fn hello(&mut self) {
        self.send(&Request::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
        });
        match self.recv() {
            Some(Reply::Hello { version, .. }) => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    /// Runs the login exchange; returns the final reply.
    pub fn login(&mut self, user: &str, password: &str) -> Reply<'static> {
        let (reply, _, _) = self.login_capture(user, password);
        reply
    }

    /// Login that also returns the challenge and the proof sent.
    pub fn login_capture(
        &mut self,
        user: &str,
        password: &str,
    ) -> (Reply<'static>, Reply<'static>, Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        scram::fill_random(&mut nonce).expect("random");
        self.send(&Request::LoginStart {
            user: user.into(),
            client_nonce: nonce.to_vec(),
        });
        let challenge = self.recv().expect("challenge");
        let Reply::Challenge {
            server_nonce,
            salt,
            kdf,
        } = &challenge
        else {
            return (challenge.clone(), challenge, Vec::new());
        };
        let keys = scram::client_keys(password.as_bytes(), salt, kdf).expect("kdf");
        let binding = self.channel_binding();
        let auth = scram::Transcript {
            user,
            client_nonce: &nonce,
            server_nonce,
            salt,
            kdf: *kdf,
            channel_binding: binding.as_ref(),
        }
        .auth_message();
        let proof = scram::client_proof(&keys, &auth).to_vec();
        self.send(&Request::LoginProof {
            proof: proof.clone(),
        });
        let reply = self.recv().expect("login reply");
        if let Reply::LoginOk { server_signature } = &reply {
            assert!(scram::verify_server_signature(
                &keys,
                &auth,
                server_signature
            ));
        }
        (reply, challenge, proof)
    }

    /// Uploads `bytes` to `path` from scratch (no resume), in chunks;
    /// returns the final reply (`PutDone`, or the error that ended it).
    pub fn upload(&mut self, path: &str, bytes: &[u8]) -> Reply<'static> {
        match self.call(&Request::PutStart {
            path: path.into(),
            size: bytes.len() as u64,
            resume: false,
            mtime: None,
            crc32: None,
        }) {
            Reply::PutReady { .. } => {}
            other => return other,
        }
        self.send(&Request::PutFrom { offset: 0 });
        for chunk in bytes.chunks(ftpd::proto::CHUNK_SIZE) {
            self.send(&Request::Chunk(chunk));
        }
        self.call(&Request::PutEnd {
            crc32: crc32fast::hash(bytes),
        })
    }

    /// Sends a request and returns its single reply.
    pub fn call(&mut self, req: &Request) -> Reply<'static> {
        self.send(req);
        self.recv().expect("reply")
    }
}

/// Copies borrowed payloads out so a reply can outlive the receive buffer.
pub fn own(reply: Reply) -> Reply<'static> {
    match reply {
        Reply::Chunk(bytes) => Reply::Chunk(Vec::leak(bytes.to_vec())),
        Reply::Error { code, message } => Reply::Error { code, message },
        Reply::Hello { version, server } => Reply::Hello { version, server },
        Reply::Challenge {
            server_nonce,
            salt,
            kdf,
        } => Reply::Challenge {
            server_nonce,
            salt,
            kdf,
        },
        Reply::LoginOk { server_signature } => Reply::LoginOk { server_signature },
        Reply::Pong => Reply::Pong,
        Reply::Ok => Reply::Ok,
        Reply::Cwd(c) => Reply::Cwd(c),
        Reply::Entry(e) => Reply::Entry(e),
        Reply::Entries(e) => Reply::Entries(e),
        Reply::ListEnd { total, truncated } => Reply::ListEnd { total, truncated },
        Reply::Quota(q) => Reply::Quota(q),
        Reply::PutReady { offset, prefix_crc } => Reply::PutReady { offset, prefix_crc },
        Reply::PutDone { size, crc32 } => Reply::PutDone { size, crc32 },
        Reply::GetReady { size, offset } => Reply::GetReady { size, offset },
        Reply::GetDone { crc32 } => Reply::GetDone { crc32 },
        Reply::ListPage { next } => Reply::ListPage { next },
        Reply::Removing { entries } => Reply::Removing { entries },
        Reply::Unchanged => Reply::Unchanged,
    }
}

/// Writes `len` bytes of deterministic, non-repeating-looking content.
pub fn make_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, data).expect("write test file");
}

/// stderr of an output, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout of an output, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}
