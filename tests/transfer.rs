//! Transfers: byte-identical round trips, quotas, concurrent and broken
//! uploads, atomic replacement, resume after faults on either side, and
//! where downloads land.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftpd::jail::{Jail, VPath};
use ftpd::proto::{CHUNK_SIZE, ErrorCode, QuotaInfo, Reply, Request};
use ftpd::size::format_size;
use ftpd::usage::{BLOCK, file_charge};

use crate::util::{
    DataDir, FTPC, Raw, TestServer, assert_success, make_file, run_with_stdin, stderr,
};

const USER: &str = "alice";
const PW: &str = "alice-pw";
const MIB: u64 = 1024 * 1024;
/// Longest any polling loop here waits.
const WAIT: Duration = Duration::from_secs(20);

/// A server with one user, and an empty local folder for `ftpc` to run in.
struct Env {
    data: DataDir,
    server: TestServer,
    cwd: tempfile::TempDir,
}

impl Env {
    fn new(quota: Option<&str>) -> Env {
        Env::with_args(quota, &[])
    }

    fn with_args(quota: Option<&str>, extra: &[&str]) -> Env {
        let data = DataDir::new();
        data.add_user(USER, PW, quota);
        let server = TestServer::start(&data, extra);
        Env {
            data,
            server,
            cwd: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn home(&self) -> PathBuf {
        self.data.home(USER)
    }

    /// A path in the client's working folder.
    fn local(&self, name: &str) -> PathBuf {
        self.cwd.path().join(name)
    }

    /// Writes a local test file and returns its content.
    fn local_file(&self, name: &str, len: usize, seed: u64) -> Vec<u8> {
        let path = self.local(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("mkdir");
        }
        make_file(&path, len, seed);
        fs::read(&path).expect("read test file")
    }

    /// `ftpc` against `addr`, run in `dir`.
    fn cmd_in(&self, dir: &Path, addr: SocketAddr, quiet: bool, args: &[&str]) -> Command {
        let mut cmd = Command::new(FTPC);
        cmd.current_dir(dir)
            .args(["--server", &addr.to_string(), "--user", USER]);
        if self.server.tls() {
            cmd.args(crate::util::TRUST_FIRST_CONTACT);
        } else {
            cmd.arg("--plaintext");
        }
        if quiet {
            cmd.arg("--quiet");
        }
        cmd.args(args)
            .env("FTPC_PASSWORD", PW)
            .env_remove("FTPC_SERVER")
            .env_remove("FTPC_USER")
            .stdin(Stdio::null());
        cmd
    }

    fn ftpc_in(&self, dir: &Path, args: &[&str]) -> Output {
        self.cmd_in(dir, self.server.addr, true, args)
            .output()
            .expect("run ftpc")
    }

    /// Quiet `ftpc` in the working folder.
    fn ftpc(&self, args: &[&str]) -> Output {
        self.ftpc_in(self.cwd.path(), args)
    }

    /// `ftpc` without `--quiet`, so its notes ("resuming at ...") show.
    fn loud(&self, args: &[&str]) -> Output {
        self.cmd_in(self.cwd.path(), self.server.addr, false, args)
            .output()
            .expect("run ftpc")
    }

    /// Runs `ftpc put big.bin` again and checks that it says it resumed at
    /// `offset`, that the result equals `data`, and that nothing is left over.
    fn put_resumes(&self, offset: u64, data: &[u8]) {
        let out = self.loud(&["put", "big.bin"]);
        assert_success(&out, "ftpc put (resume)");
        let note = format!("resuming at {}", format_size(offset));
        assert!(stderr(&out).contains(&note), "{}", stderr(&out));
        assert_content(&self.home().join("big.bin"), data);
        self.assert_no_partials();
        self.assert_quota_exact();
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.ftpc(args);
        assert_success(&out, &format!("ftpc {}", args.join(" ")));
        out
    }

    /// A raw session, logged in.
    fn raw(&self) -> Raw {
        let mut c = self.server.raw();
        c.hello();
        match c.login(USER, PW) {
            Reply::LoginOk { .. } => c,
            other => panic!("login failed: {other:?}"),
        }
    }

    fn quota(&self) -> QuotaInfo {
        match self.raw().call(&Request::Quota) {
            Reply::Quota(q) => q,
            other => panic!("expected Quota, got {other:?}"),
        }
    }

    /// With no upload running: the server's figure is exactly what the
    /// home holds on disk, partial uploads included, and nothing is reserved.
    fn assert_quota_exact(&self) {
        let q = self.quota();
        let disk = disk_bytes(&self.home());
        assert_eq!(
            (q.used, q.reserved),
            (disk, 0),
            "quota (used, reserved) vs bytes on disk under the home"
        );
        assert!(q.used <= q.limit, "{q:?}");
    }

    /// Partial uploads on the server's disk, with their sizes.
    fn partials(&self) -> Vec<(PathBuf, u64)> {
        let dir = self.home().join(".ftpd-partial");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut found: Vec<(PathBuf, u64)> = entries
            .map(|e| {
                let path = e.expect("read partial dir").path();
                let len = fs::symlink_metadata(&path).expect("stat partial").len();
                (path, len)
            })
            .collect();
        found.sort();
        found
    }

    /// Where the server keeps the partial upload to `remote` (from `/`).
    fn partial_of(&self, remote: &str) -> PathBuf {
        let path = VPath::resolve(&VPath::root(), remote).expect("remote path");
        self.home()
            .join(".ftpd-partial")
            .join(Jail::partial_name(&path))
    }

    /// Bytes in the partial upload to `remote` (0 while there is none).
    fn partial_len(&self, remote: &str) -> u64 {
        fs::metadata(self.partial_of(remote)).map_or(0, |m| m.len())
    }

    /// After an upload whose data was bad: its partial is deleted on a
    /// helper thread right after the error reply, and the figures return
    /// to `before`; waits for both.
    fn wait_bad_partial_gone(&self, before: QuotaInfo) {
        wait_for("the bad partial to be deleted", || {
            self.partials().is_empty()
        });
        wait_for("the figures to drop the bad partial", || {
            self.quota() == before
        });
    }

    fn assert_no_partials(&self) {
        let partials = self.partials();
        assert!(partials.is_empty(), "partial files left: {partials:?}");
    }
}

/// Bytes in the regular files under `dir`, at any depth, hidden ones included.
fn disk_bytes(dir: &Path) -> u64 {
    // The server's own rule for what a tree costs (whole blocks, at least
    // one per file and folder): the figure it reports must equal it.
    ftpd::usage::disk_usage(dir).expect("recount")
}

/// What `.ftpd-partial/` costs once the first upload has created it.
const PARTIAL_DIR: u64 = BLOCK;
/// The slack an upload reserves beyond its file for the target folder growing.
const SLACK: u64 = BLOCK;
/// Reserved while the partial is being opened (its first block and the
/// folders that may grow to hold it).
const OPEN_SLACK: u64 = 3 * BLOCK;

/// What `PutStart` for a new file of `size` bytes needs available.
fn need_at_start(size: u64) -> u64 {
    file_charge(size) + OPEN_SLACK
}

/// What an open upload of `size` bytes still reserves once `written` are in.
fn still_reserved(size: u64, written: u64) -> u64 {
    file_charge(size) - file_charge(written) + SLACK
}

/// The refusal text for an upload needing `need` with `available` left.
fn quota_refusal(need: u64, available: u64) -> String {
    format!(
        "quota exceeded: need {}, {} available",
        format_size(need),
        format_size(available)
    )
}

/// Polls `cond` until it holds; panics after [`WAIT`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Panics unless the two files have the same bytes; names the first
/// difference rather than printing the contents.
fn assert_same_file(a: &Path, b: &Path) {
    let len = |p: &Path| {
        fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .len()
    };
    let (la, lb) = (len(a), len(b));
    assert_eq!(la, lb, "{} and {} differ in size", a.display(), b.display());
    let (mut fa, mut fb) = (File::open(a).expect("open"), File::open(b).expect("open"));
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    let mut pos = 0u64;
    while pos < la {
        let n = (la - pos).min(MIB) as usize;
        fa.read_exact(&mut ba[..n]).expect("read");
        fb.read_exact(&mut bb[..n]).expect("read");
        if ba[..n] != bb[..n] {
            let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap_or(0);
            panic!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                pos + i as u64
            );
        }
        pos += n as u64;
    }
}

/// Panics unless `path` holds exactly `want`.
fn assert_content(path: &Path, want: &[u8]) {
    let got = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{}: {} bytes, expected {}; first difference at {first:?}",
            path.display(),
            got.len(),
            want.len()
        );
    }
}

/// Inverts one byte of a file in place.
fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open to corrupt");
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0xff;
    file.write_all_at(&b, offset).expect("write byte");
}

fn crc(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

fn err_code(reply: &Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Error { code, .. } => Some(*code),
        _ => None,
    }
}

fn put_start(c: &mut Raw, path: &str, size: u64) -> Reply<'static> {
    c.call(&Request::PutStart {
        path: path.into(),
        size,
        resume: true,
    })
}

/// Announces an upload that must be accepted from the start.
fn begin_put(c: &mut Raw, path: &str, size: u64) {
    match put_start(c, path, size) {
        Reply::PutReady { offset: 0, .. } => {}
        other => panic!("expected PutReady at 0 for {path}, got {other:?}"),
    }
    c.send(&Request::PutFrom { offset: 0 });
}

fn send_chunks(c: &mut Raw, data: &[u8]) {
    for piece in data.chunks(CHUNK_SIZE) {
        c.send(&Request::Chunk(piece));
    }
}

/// A whole upload on a raw session; returns the final reply.
fn raw_put(c: &mut Raw, path: &str, data: &[u8]) -> Reply<'static> {
    begin_put(c, path, data.len() as u64);
    send_chunks(c, data);
    c.call(&Request::PutEnd { crc32: crc(data) })
}

fn assert_put_done(reply: Reply, data: &[u8]) {
    assert_eq!(
        reply,
        Reply::PutDone {
            size: data.len() as u64,
            crc32: crc(data)
        }
    );
}

/// Names and sizes in a listing; `.ftpd-partial` must never be among them.
fn list(c: &mut Raw, path: &str) -> Vec<(String, u64)> {
    c.send(&Request::List { path: path.into() });
    let mut names = Vec::new();
    loop {
        match c.recv().expect("listing") {
            Reply::Entries(batch) => names.extend(batch.into_iter().map(|e| (e.name, e.size))),
            Reply::ListEnd { .. } => break,
            other => panic!("expected a listing, got {other:?}"),
        }
    }
    assert!(
        !names.iter().any(|(n, _)| n == ".ftpd-partial"),
        "the partial folder is listed: {names:?}"
    );
    names
}

/// Names in a local folder, sorted.
fn local_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What a [`Relay`] does to one direction of the traffic.
#[derive(Clone, Copy)]
struct Leg {
    /// Bytes forwarded before it stops reading (the sender then blocks).
    budget: u64,
    /// The byte at this offset of the stream goes through inverted.
    flip_at: Option<u64>,
}

impl Leg {
    const OPEN: Leg = Leg {
        budget: u64::MAX,
        flip_at: None,
    };

    fn stop_after(budget: u64) -> Leg {
        Leg {
            budget,
            flip_at: None,
        }
    }

    fn flip(offset: u64) -> Leg {
        Leg {
            budget: u64::MAX,
            flip_at: Some(offset),
        }
    }
}

/// A TCP relay for one `ftpc` connection: it can stop forwarding in a
/// direction after a byte budget, so that the client blocks at a known
/// point of its transfer where a test can kill it, or damage one byte.
struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(server: SocketAddr, up_leg: Leg, down_leg: Leg) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let up = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicU64::new(0));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (u, d, s) = (Arc::clone(&up), Arc::clone(&down), Arc::clone(&sockets));
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let upstream = TcpStream::connect(server).expect("relay connect");
            let dup = |s: &TcpStream| s.try_clone().expect("clone socket");
            s.lock().unwrap().extend([dup(&client), dup(&upstream)]);
            let (c2, u2) = (dup(&client), dup(&upstream));
            std::thread::spawn(move || pump(c2, u2, up_leg, &u));
            pump(upstream, client, down_leg, &d);
        });
        Relay {
            addr,
            up,
            down,
            sockets,
        }
    }

    fn wait_up(&self, n: u64) {
        wait_for("the relay to forward the upload budget", || {
            self.up.load(Ordering::SeqCst) >= n
        });
    }

    fn wait_down(&self, n: u64) {
        wait_for("the relay to forward the download budget", || {
            self.down.load(Ordering::SeqCst) >= n
        });
    }

    /// Closes both connections, as a network failure would.
    fn cut(&self) {
        for s in self.sockets.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` to `to` as `leg` says; past the budget it stops reading
/// (the sockets stay open: the relay holds other handles).
fn pump(mut from: TcpStream, mut to: TcpStream, leg: Leg, done: &AtomicU64) {
    use std::io::Write;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let at = done.load(Ordering::SeqCst);
        let left = leg.budget - at;
        if left == 0 {
            return;
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        if let Some(flip) = leg.flip_at
            && (at..at + n as u64).contains(&flip)
        {
            buf[(flip - at) as usize] ^= 0xff;
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
        done.fetch_add(n as u64, Ordering::SeqCst);
    }
}

/// An upload from a raw session that breaks off after `cut` bytes (the
/// connection closes); waits until the server has kept the partial.
fn interrupted_put(env: &Env, path: &str, data: &[u8], cut: usize) {
    let mut c = env.raw();
    begin_put(&mut c, path, data.len() as u64);
    send_chunks(&mut c, &data[..cut]);
    drop(c);
    assert!(
        env.server.wait_log("kept for resume", WAIT).is_some(),
        "the server did not keep the partial upload"
    );
    assert_eq!(
        env.partial_len(path),
        cut as u64,
        "every byte that arrived is in the partial"
    );
}

// ---------------------------------------------------------------------------
// Round trips and names

#[test]
fn round_trips_are_byte_identical() {
    let env = Env::new(None);
    let sizes = [0usize, 1, 1000, 131_071, 131_072, 131_073, 1_234_567];
    let mut total = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let name = format!("f{len}.bin");
        env.local_file(&name, len, i as u64 + 1);
        env.ok(&["put", &name]);
        assert_same_file(&env.local(&name), &env.home().join(&name));
        let back = format!("back-{name}");
        env.ok(&["get", &name, &back]);
        assert_same_file(&env.local(&name), &env.local(&back));
        assert!(!env.local(&format!("{back}.part")).exists());
        total += file_charge(len as u64);
    }
    env.assert_no_partials();
    env.assert_quota_exact();
    // Every file in whole blocks, and the (empty) partial folder's block.
    assert_eq!(env.quota().used, total + PARTIAL_DIR);
}

#[test]
fn large_file_round_trip() {
    const LEN: usize = 300 * 1024 * 1024;
    let env = Env::new(None);
    let t = Instant::now();
    make_file(&env.local("big.bin"), LEN, 42);
    let made = t.elapsed();
    let t = Instant::now();
    env.ok(&["put", "big.bin"]);
    let put = t.elapsed();
    let t = Instant::now();
    env.ok(&["get", "big.bin", "back.bin"]);
    let get = t.elapsed();
    eprintln!("300 MiB: made in {made:?}, put in {put:?}, get in {get:?}");
    assert_same_file(&env.local("big.bin"), &env.home().join("big.bin"));
    assert_same_file(&env.local("big.bin"), &env.local("back.bin"));
    env.assert_no_partials();
    env.assert_quota_exact();
    assert_eq!(env.quota().used, file_charge(LEN as u64) + PARTIAL_DIR);
}

#[test]
fn remote_names_default_to_the_local_name_and_directories_mean_inside() {
    let env = Env::new(None);
    env.ok(&["mkdir", "docs"]);
    let report = env.local_file("in/report.bin", 70_001, 1);
    let other = env.local_file("in/other.bin", 5_000, 2);
    // No REMOTE: the file's own name, in the remote current folder.
    env.ok(&["put", "in/report.bin"]);
    // A REMOTE naming a folder (with or without the slash): inside it.
    env.ok(&["put", "in/report.bin", "docs"]);
    env.ok(&["put", "in/other.bin", "docs/"]);
    // Any other REMOTE: that name.
    env.ok(&["put", "in/report.bin", "docs/renamed.bin"]);
    let home = env.home();
    assert_content(&home.join("report.bin"), &report);
    assert_content(&home.join("docs/report.bin"), &report);
    assert_content(&home.join("docs/other.bin"), &other);
    assert_content(&home.join("docs/renamed.bin"), &report);
    assert!(!home.join("in").exists());
    // The remote current folder is where a bare name goes, in the shell too.
    let script = "cd docs\nput in/other.bin copy.bin\nput in/other.bin\nget report.bin got.bin\n";
    let mut shell = env.cmd_in(env.cwd.path(), env.server.addr, true, &["shell"]);
    shell.stdin(Stdio::piped());
    let out = run_with_stdin(shell, script);
    assert_success(&out, "ftpc shell");
    assert_content(&home.join("docs/copy.bin"), &other);
    assert!(!home.join("copy.bin").exists());
    assert!(!home.join("other.bin").exists());
    assert_content(&env.local("got.bin"), &report);

    // get: the remote name here, an explicit local name, or inside a folder.
    env.ok(&["get", "docs/renamed.bin"]);
    assert_content(&env.local("renamed.bin"), &report);
    env.ok(&["get", "/docs/other.bin", "out.bin"]);
    assert_content(&env.local("out.bin"), &other);
    fs::create_dir(env.local("dl")).unwrap();
    env.ok(&["get", "docs/report.bin", "dl"]);
    assert_content(&env.local("dl/report.bin"), &report);
    assert_eq!(
        local_names(env.cwd.path()),
        ["dl", "got.bin", "in", "out.bin", "renamed.bin"]
    );
    env.assert_quota_exact();
}

#[test]
fn get_never_uses_a_server_path_as_a_local_path() {
    let env = Env::new(None);
    let a = env.local_file("src/a.txt", 100, 1);
    let b = env.local_file("src/b.txt", 200, 2);
    let pw = env.local_file("src/passwd", 300, 3);
    env.ok(&["mkdir", "docs"]);
    env.ok(&["mkdir", "etc"]);
    env.ok(&["put", "src/a.txt"]);
    env.ok(&["put", "src/b.txt", "docs"]);
    env.ok(&["put", "src/passwd", "etc"]);

    let work = env.local("top/work");
    fs::create_dir_all(&work).unwrap();
    let get = |args: &[&str]| {
        let out = env.ftpc_in(&work, args);
        assert_success(&out, &format!("ftpc {}", args.join(" ")));
    };
    // Only the last component of the remote path names the local file.
    get(&["get", "docs/../a.txt"]);
    assert_content(&work.join("a.txt"), &a);
    // `..` stays at the server's top, and never climbs out locally.
    get(&["get", "../../etc/passwd"]);
    assert_content(&work.join("passwd"), &pw);
    get(&["get", "/docs/b.txt"]);
    assert_content(&work.join("b.txt"), &b);
    // An explicit LOCAL is used as given.
    get(&["get", "docs/../a.txt", "mine.txt"]);
    assert_content(&work.join("mine.txt"), &a);
    // No usable name: a usage error, nothing written.
    let out = env.ftpc_in(&work, &["get", "docs/.."]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("give one"), "{}", stderr(&out));

    assert_eq!(local_names(&work), ["a.txt", "b.txt", "mine.txt", "passwd"]);
    assert_eq!(local_names(&env.local("top")), ["work"]);
    assert_eq!(local_names(env.cwd.path()), ["src", "top"]);
}

// ---------------------------------------------------------------------------
// Quota, busy paths, broken uploads, replacement

#[test]
fn an_upload_over_the_quota_is_refused_before_any_data_moves() {
    let env = Env::new(Some("1.1M"));
    let limit = env.quota().limit;
    assert_eq!(limit, 1_153_433);
    env.local_file("big.bin", 2 * MIB as usize, 1);
    let out = env.ftpc(&["put", "big.bin"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("quota exceeded: need 2.0 MiB, 1.1 MiB available"),
        "{}",
        stderr(&out)
    );
    assert!(!env.home().join("big.bin").exists());
    assert!(
        env.partials().iter().all(|(_, len)| *len == 0),
        "{:?}",
        env.partials()
    );
    env.assert_quota_exact();
    assert_eq!(env.quota().used, 0);

    // On the wire: the refusal answers PutStart itself, and the session goes on.
    let mut c = env.raw();
    let reply = put_start(&mut c, "big.bin", 2 * MIB);
    assert_eq!(
        err_code(&reply),
        Some(ErrorCode::QuotaExceeded),
        "{reply:?}"
    );
    assert_eq!(c.call(&Request::Ping), Reply::Pong);
    // Its disconnection is logged after anything about its refused upload.
    let me = c.stream.local_addr().expect("local addr");
    drop(c);
    let log = env
        .server
        .log_until(&format!("{me}: disconnected"), Duration::from_secs(10))
        .expect("the session's end was not logged");
    assert!(
        !log.iter().any(|l| l.contains("dir=put")),
        "a refused upload was logged as a transfer: {log:#?}"
    );

    // The largest file whose blocks and opening slack fit does; one byte
    // more does not.
    let fit = limit / BLOCK * BLOCK - OPEN_SLACK;
    assert!(need_at_start(fit) <= limit && need_at_start(fit + 1) > limit);
    env.local_file("over.bin", fit as usize + 1, 5);
    let out = env.ftpc(&["put", "over.bin"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&quota_refusal(need_at_start(fit + 1), limit)),
        "{}",
        stderr(&out)
    );
    assert!(!env.home().join("over.bin").exists());
    env.local_file("fit.bin", fit as usize, 2);
    env.ok(&["put", "fit.bin"]);
    let used = env.quota().used;
    assert_eq!(used, file_charge(fit) + PARTIAL_DIR);
    assert_eq!(used, disk_bytes(&env.home()));
    // Then no room for one byte, nor for an empty file: it costs a block too.
    for (name, len) in [("one.bin", 1), ("empty.bin", 0)] {
        let want = quota_refusal(need_at_start(len as u64), limit - used);
        // A fresh upload and one that asks to resume (as ftpc does) but
        // has no partial are refused in the same figures.
        let mut c = env.raw();
        for resume in [false, true] {
            match c.call(&Request::PutStart {
                path: name.into(),
                size: len as u64,
                resume,
            }) {
                Reply::Error {
                    code: ErrorCode::QuotaExceeded,
                    message,
                } => assert!(message.contains(&want), "resume={resume}: {message}"),
                other => panic!("expected QuotaExceeded, got {other:?}"),
            }
        }
        drop(c);
        env.local_file(name, len, 3);
        let out = env.ftpc(&["put", name]);
        assert_eq!(out.status.code(), Some(6), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(&want), "{}", stderr(&out));
        assert!(!env.home().join(name).exists());
    }
    env.assert_quota_exact();
}

#[test]
fn an_upload_refused_for_quota_leaves_no_partial_file() {
    let env = Env::new(Some("1M"));
    env.local_file("big.bin", 2 * MIB as usize, 1);
    let out = env.ftpc(&["put", "big.bin"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    // Each refused name would leave one more file: unbounded, at no cost
    // to the quota.
    let mut c = env.raw();
    for i in 0..5 {
        let reply = put_start(&mut c, &format!("f{i}.bin"), 2 * MIB);
        assert_eq!(
            err_code(&reply),
            Some(ErrorCode::QuotaExceeded),
            "{reply:?}"
        );
    }
    env.assert_no_partials();
}

#[test]
fn concurrent_uploads_that_fit_alone_but_not_together() {
    let env = Env::new(Some("3M"));
    let limit = 3 * MIB;
    let a_data = env.local_file("a.bin", 2 * MIB as usize, 1);
    let b_data = env.local_file("b.bin", 2 * MIB as usize, 2);
    let mut a = env.raw();
    let mut b = env.raw();
    begin_put(&mut a, "a.bin", a_data.len() as u64);
    // Used: the partial folder and the empty partial's block.
    let q = env.quota();
    let used = PARTIAL_DIR + file_charge(0);
    assert_eq!((q.used, q.reserved), (used, still_reserved(2 * MIB, 0)));
    assert_eq!(q.used, disk_bytes(&env.home()));
    let available = limit - q.used - q.reserved;

    // The second does not fit beside the first's reservation.
    match put_start(&mut b, "b.bin", b_data.len() as u64) {
        Reply::Error {
            code: ErrorCode::QuotaExceeded,
            message,
        } => assert!(
            message.contains(&quota_refusal(need_at_start(2 * MIB), available)),
            "{message}"
        ),
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }

    // Halfway, written bytes moved from reserved to used; never over the limit.
    send_chunks(&mut a, &a_data[..MIB as usize]);
    wait_for("half of a.bin on disk", || env.partial_len("a.bin") == MIB);
    let q = env.quota();
    assert_eq!(
        (q.used, q.reserved),
        (PARTIAL_DIR + file_charge(MIB), still_reserved(2 * MIB, MIB))
    );
    assert!(q.used + q.reserved <= limit);
    assert_eq!(q.used, disk_bytes(&env.home()));

    send_chunks(&mut a, &a_data[MIB as usize..]);
    let done = a.call(&Request::PutEnd {
        crc32: crc(&a_data),
    });
    assert_put_done(done, &a_data);

    // Still no room for b, nor for one byte more than what is left; the
    // largest that fits does.
    let used = env.quota().used;
    assert_eq!(used, file_charge(2 * MIB) + PARTIAL_DIR);
    let small_len = (limit - used) / BLOCK * BLOCK - OPEN_SLACK;
    assert_eq!(used + need_at_start(small_len), limit);
    for len in [b_data.len() as u64, small_len + 1] {
        let reply = put_start(&mut b, "b.bin", len);
        assert_eq!(
            err_code(&reply),
            Some(ErrorCode::QuotaExceeded),
            "{len}: {reply:?}"
        );
    }
    let small = &b_data[..small_len as usize];
    assert_put_done(raw_put(&mut b, "b.bin", small), small);

    assert_content(&env.home().join("a.bin"), &a_data);
    assert_content(&env.home().join("b.bin"), small);
    env.assert_no_partials();
    env.assert_quota_exact();
    assert_eq!(
        env.quota().used,
        file_charge(2 * MIB) + file_charge(small_len) + PARTIAL_DIR
    );
}

#[test]
fn a_second_upload_to_the_same_path_is_busy() {
    let env = Env::new(None);
    let data = env.local_file("x.bin", 600_000, 1);
    let mut a = env.raw();
    begin_put(&mut a, "x.bin", data.len() as u64);
    send_chunks(&mut a, &data[..300_000]);

    let mut b = env.raw();
    for spelling in ["x.bin", "/./x.bin", "/nope/../x.bin"] {
        match put_start(&mut b, spelling, 10) {
            Reply::Error {
                code: ErrorCode::Busy,
                message,
            } => assert!(message.contains("busy"), "{message}"),
            other => panic!("expected Busy for {spelling}, got {other:?}"),
        }
    }
    assert_eq!(b.call(&Request::Ping), Reply::Pong);
    let out = env.ftpc(&["put", "x.bin"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("busy"), "{}", stderr(&out));
    // The refused attempts did not disturb the first upload.
    send_chunks(&mut a, &data[300_000..]);
    let done = a.call(&Request::PutEnd { crc32: crc(&data) });
    assert_put_done(done, &data);
    assert_content(&env.home().join("x.bin"), &data);

    // Once it is done, the path is free again.
    let other = vec![7u8; 1000];
    assert_put_done(raw_put(&mut b, "x.bin", &other), &other);
    assert_content(&env.home().join("x.bin"), &other);
    env.assert_no_partials();
    env.assert_quota_exact();
}

#[test]
fn more_bytes_than_announced_fail_and_leave_the_target_alone() {
    let env = Env::new(None);
    let old = env.local_file("t.bin", 5000, 1);
    env.ok(&["put", "t.bin"]);
    let before = env.quota();

    let mut c = env.raw();
    begin_put(&mut c, "t.bin", 1000);
    c.send(&Request::Chunk(&[1; 600]));
    c.send(&Request::Chunk(&[2; 600]));
    match c.recv().expect("reply") {
        Reply::Error {
            code: ErrorCode::TransferFailed,
            message,
        } => assert!(message.contains("more bytes than"), "{message}"),
        other => panic!("expected TransferFailed, got {other:?}"),
    }
    // The rest of the upload is skipped up to PutEnd, which gets no answer.
    c.send(&Request::Chunk(&[3; 10]));
    c.send(&Request::PutEnd { crc32: 0 });
    assert_eq!(c.call(&Request::Ping), Reply::Pong);

    assert_content(&env.home().join("t.bin"), &old);
    env.wait_bad_partial_gone(before);
    env.assert_no_partials();
    assert_eq!(env.quota(), before);
    env.assert_quota_exact();
}

#[test]
fn a_crc_mismatch_discards_the_upload() {
    let env = Env::new(None);
    let old = env.local_file("t.bin", 5000, 1);
    env.ok(&["put", "t.bin"]);
    let before = env.quota();

    let new = env.local_file("new.bin", 300_001, 2);
    let mut c = env.raw();
    begin_put(&mut c, "t.bin", new.len() as u64);
    send_chunks(&mut c, &new);
    wait_for("the upload on disk", || {
        env.partial_len("t.bin") == new.len() as u64
    });
    match c.call(&Request::PutEnd {
        crc32: crc(&new) ^ 1,
    }) {
        Reply::Error {
            code: ErrorCode::CrcMismatch,
            message,
        } => assert!(message.contains("checksum mismatch"), "{message}"),
        other => panic!("expected CrcMismatch, got {other:?}"),
    }
    assert_eq!(c.call(&Request::Ping), Reply::Pong);

    assert_content(&env.home().join("t.bin"), &old);
    env.wait_bad_partial_gone(before);
    env.assert_no_partials();
    assert_eq!(env.quota(), before);
    env.assert_quota_exact();
}

#[test]
fn an_overwrite_keeps_the_old_file_until_the_new_one_is_complete() {
    let env = Env::new(None);
    let old = env.local_file("doc.bin", MIB as usize + 3, 1);
    env.ok(&["put", "doc.bin"]);
    let new = env.local_file("new.bin", 3 * MIB as usize + 5, 2);
    let final_path = env.home().join("doc.bin");
    let old_inode = fs::metadata(&final_path).unwrap().ino();
    let held = File::open(&final_path).unwrap();

    let mut c = env.raw();
    begin_put(&mut c, "doc.bin", new.len() as u64);
    send_chunks(&mut c, &new[..2 * MIB as usize]);
    wait_for("2 MiB of the new doc.bin on disk", || {
        env.partial_len("doc.bin") == 2 * MIB
    });

    // Mid-upload: the final name still holds the old file, whole.
    assert_content(&final_path, &old);
    env.ok(&["get", "doc.bin", "mid.bin"]);
    assert_content(&env.local("mid.bin"), &old);
    let mut other = env.raw();
    assert_eq!(
        list(&mut other, "/"),
        [("doc.bin".to_string(), old.len() as u64)]
    );
    match other.call(&Request::Stat {
        path: "doc.bin".into(),
    }) {
        Reply::Entry(e) => assert_eq!(e.size, old.len() as u64),
        r => panic!("{r:?}"),
    }
    let q = env.quota();
    assert_eq!(
        (q.used, q.reserved),
        (
            file_charge(old.len() as u64) + file_charge(2 * MIB) + PARTIAL_DIR,
            still_reserved(new.len() as u64, 2 * MIB)
        )
    );
    assert_eq!(q.used, disk_bytes(&env.home()));

    send_chunks(&mut c, &new[2 * MIB as usize..]);
    let done = c.call(&Request::PutEnd { crc32: crc(&new) });
    assert_put_done(done, &new);

    // Replaced in one step: a new file under the name, the old one
    // untouched for whoever still had it open.
    assert_content(&final_path, &new);
    assert_ne!(fs::metadata(&final_path).unwrap().ino(), old_inode);
    let mut was = Vec::new();
    (&held).read_to_end(&mut was).unwrap();
    assert!(was == old, "the old file was rewritten in place");
    env.ok(&["get", "doc.bin", "after.bin"]);
    assert_content(&env.local("after.bin"), &new);
    env.assert_no_partials();
    env.assert_quota_exact();
    assert_eq!(
        env.quota().used,
        file_charge(new.len() as u64) + PARTIAL_DIR
    );
}

// ---------------------------------------------------------------------------
// Faults and resume

#[test]
fn a_put_cut_off_by_the_client_resumes() {
    let env = Env::new(None);
    let data = env.local_file("big.bin", 5 * MIB as usize + 777, 1);
    let cut = 2 * MIB as usize + 1234;
    interrupted_put(&env, "big.bin", &data, cut);

    // The unfinished upload is invisible under its name, but counted.
    let mut c = env.raw();
    assert!(list(&mut c, "/").is_empty());
    let reply = c.call(&Request::Stat {
        path: "big.bin".into(),
    });
    assert_eq!(err_code(&reply), Some(ErrorCode::NotFound), "{reply:?}");
    let shown = crate::util::stdout(&env.ok(&["ls"]));
    assert!(
        !shown.contains("big.bin") && !shown.contains(".ftpd-partial"),
        "{shown}"
    );
    // Nor can the partial be reached by its own name.
    let name = env.partial_of("big.bin");
    let name = name.file_name().unwrap().to_str().unwrap();
    let reply = c.call(&Request::GetStart {
        path: format!(".ftpd-partial/{name}"),
        offset: 0,
        prefix_crc: 0,
    });
    assert_eq!(err_code(&reply), Some(ErrorCode::BadRequest), "{reply:?}");
    let out = env.ftpc(&["ls", ".ftpd-partial"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    env.assert_quota_exact();
    assert_eq!(env.quota().used, file_charge(cut as u64) + PARTIAL_DIR);

    let out = env.loud(&["put", "big.bin"]);
    assert_success(&out, "ftpc put (resume)");
    let note = format!("resuming at {}", format_size(cut as u64));
    assert!(stderr(&out).contains(&note), "{}", stderr(&out));
    assert!(
        env.server
            .wait_log("put \"/big.bin\": resuming at", WAIT)
            .is_some()
    );
    assert_content(&env.home().join("big.bin"), &data);
    env.assert_no_partials();
    env.assert_quota_exact();
}

#[test]
fn a_killed_ftpc_put_resumes() {
    let env = Env::new(None);
    env.local_file("big.bin", 64 * MIB as usize + 99, 1);
    let budget = 8 * MIB;
    let relay = Relay::start(env.server.addr, Leg::stop_after(budget), Leg::OPEN);
    let mut child = env
        .cmd_in(env.cwd.path(), relay.addr, true, &["put", "big.bin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ftpc");
    relay.wait_up(budget);
    wait_for("7 MiB in the partial", || {
        env.partial_len("big.bin") >= 7 * MIB
    });
    child.kill().expect("kill ftpc");
    child.wait().expect("wait ftpc");
    relay.cut();
    assert!(env.server.wait_log("kept for resume", WAIT).is_some());

    let kept = env.partial_len("big.bin");
    assert!(
        (7 * MIB..budget).contains(&kept) && kept.is_multiple_of(CHUNK_SIZE as u64),
        "{kept}"
    );
    let mut c = env.raw();
    assert!(list(&mut c, "/").is_empty());
    env.assert_quota_exact();

    let out = env.loud(&["put", "big.bin"]);
    assert_success(&out, "ftpc put (resume)");
    let note = format!("resuming at {}", format_size(kept));
    assert!(stderr(&out).contains(&note), "{}", stderr(&out));
    assert_same_file(&env.local("big.bin"), &env.home().join("big.bin"));
    env.assert_no_partials();
    env.assert_quota_exact();
}

#[test]
fn a_killed_ftpc_get_resumes_from_its_part_file() {
    let env = Env::new(None);
    env.local_file("src.bin", 48 * MIB as usize + 5, 1);
    env.ok(&["put", "src.bin", "big.bin"]);
    let budget = 8 * MIB;
    let relay = Relay::start(env.server.addr, Leg::OPEN, Leg::stop_after(budget));
    let mut child = env
        .cmd_in(env.cwd.path(), relay.addr, true, &["get", "big.bin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ftpc");
    let part = env.local("big.bin.part");
    relay.wait_down(budget);
    wait_for("7 MiB in big.bin.part", || {
        fs::metadata(&part).is_ok_and(|m| m.len() >= 7 * MIB)
    });
    child.kill().expect("kill ftpc");
    child.wait().expect("wait ftpc");
    relay.cut();
    let have = fs::metadata(&part).unwrap().len();
    assert!(have < budget, "{have}");
    assert!(!env.local("big.bin").exists());

    let out = env.loud(&["get", "big.bin"]);
    assert_success(&out, "ftpc get (resume)");
    let note = format!("resuming at {}", format_size(have));
    assert!(stderr(&out).contains(&note), "{}", stderr(&out));
    assert!(
        env.server
            .wait_log("get \"/big.bin\": resuming at", WAIT)
            .is_some()
    );
    assert_same_file(&env.local("src.bin"), &env.local("big.bin"));
    assert!(!part.exists());
    env.assert_quota_exact();
}

#[test]
fn a_get_cut_off_part_way_resumes_from_local_part() {
    let env = Env::new(None);
    let data = env.local_file("src/f.bin", 1_234_567, 1);
    env.ok(&["put", "src/f.bin"]);

    // A raw session reads a few chunks, saves them as ftpc would, and hangs up.
    let mut c = env.raw();
    c.send(&Request::GetStart {
        path: "f.bin".into(),
        offset: 0,
        prefix_crc: 0,
    });
    assert_eq!(
        c.recv(),
        Some(Reply::GetReady {
            size: data.len() as u64,
            offset: 0
        })
    );
    let mut got = Vec::new();
    while got.len() < 3 * CHUNK_SIZE {
        match c.recv() {
            Some(Reply::Chunk(bytes)) => got.extend_from_slice(bytes),
            other => panic!("expected a chunk, got {other:?}"),
        }
    }
    drop(c);
    assert_eq!(got, data[..got.len()]);
    fs::write(env.local("f.bin.part"), &got).unwrap();

    let out = env.loud(&["get", "f.bin"]);
    assert_success(&out, "ftpc get (resume)");
    let note = format!("resuming at {}", format_size(got.len() as u64));
    assert!(stderr(&out).contains(&note), "{}", stderr(&out));
    assert_content(&env.local("f.bin"), &data);
    assert!(!env.local("f.bin.part").exists());

    // A .part that already holds the whole file just gets its name.
    fs::write(env.local("g.bin.part"), &data).unwrap();
    let out = env.loud(&["get", "f.bin", "g.bin"]);
    assert_success(&out, "ftpc get (complete part)");
    assert!(stderr(&out).contains("resuming at"), "{}", stderr(&out));
    assert_content(&env.local("g.bin"), &data);
    assert!(!env.local("g.bin.part").exists());
}

#[test]
fn an_upload_survives_a_server_crash_and_resumes_after_restart() {
    let mut env = Env::new(None);
    let data = env.local_file("big.bin", 20 * MIB as usize + 17, 1);
    let cut = 7 * MIB as usize + 4321;
    let mut c = env.raw();
    begin_put(&mut c, "big.bin", data.len() as u64);
    send_chunks(&mut c, &data[..cut]);
    wait_for("the first part on disk", || {
        env.partial_len("big.bin") == cut as u64
    });

    env.server.kill();
    drop(c);
    env.server = TestServer::start(&env.data, &[]);

    assert_eq!(env.partial_len("big.bin"), cut as u64);
    let mut c = env.raw();
    assert!(list(&mut c, "/").is_empty());
    env.assert_quota_exact();
    assert_eq!(env.quota().used, file_charge(cut as u64) + PARTIAL_DIR);

    env.put_resumes(cut as u64, &data);
}

#[test]
fn a_corrupted_server_partial_is_detected_and_the_upload_starts_over() {
    let env = Env::new(None);
    let data = env.local_file("big.bin", 5 * MIB as usize + 1, 1);
    let cut = 3 * MIB as usize + 1;
    interrupted_put(&env, "big.bin", &data, cut);
    flip_byte(&env.partial_of("big.bin"), 1_000_000);

    let out = env.loud(&["put", "big.bin"]);
    assert_success(&out, "ftpc put over a corrupted partial");
    let text = stderr(&out);
    assert!(text.contains("starting over"), "{text}");
    assert!(!text.contains("resuming at"), "{text}");
    assert_content(&env.home().join("big.bin"), &data);
    env.assert_no_partials();
    env.assert_quota_exact();
    assert_eq!(
        env.quota().used,
        file_charge(data.len() as u64) + PARTIAL_DIR
    );
}

#[test]
fn a_corrupted_local_part_is_detected_and_the_download_starts_over() {
    let env = Env::new(None);
    let data = env.local_file("src/f.bin", 3 * MIB as usize + 9, 1);
    env.ok(&["put", "src/f.bin"]);
    let part = env.local("f.bin.part");
    fs::write(&part, &data[..2 * MIB as usize]).unwrap();
    flip_byte(&part, 12_345);

    let out = env.loud(&["get", "f.bin"]);
    assert_success(&out, "ftpc get over a corrupted part");
    let text = stderr(&out);
    assert!(text.contains("starting over"), "{text}");
    assert!(!text.contains("resuming at"), "{text}");
    assert_content(&env.local("f.bin"), &data);
    assert!(!part.exists());
    env.assert_quota_exact();
}

#[test]
fn a_file_changed_on_the_server_is_not_stitched_onto_an_old_part() {
    let env = Env::new(None);
    let part = env.local("f.bin.part");
    let fetch = |expect: &[u8], note: &str| {
        let out = env.loud(&["get", "f.bin"]);
        assert_success(&out, "ftpc get");
        assert!(stderr(&out).contains(note), "{}", stderr(&out));
        assert_content(&env.local("f.bin"), expect);
        assert!(!part.exists());
        fs::remove_file(env.local("f.bin")).unwrap();
    };

    // Same size, other content.
    let v1 = env.local_file("src/v1/f.bin", 2 * MIB as usize + 11, 1);
    let v2 = env.local_file("src/v2/f.bin", v1.len(), 2);
    env.ok(&["put", "src/v1/f.bin"]);
    fs::write(&part, &v1[..MIB as usize]).unwrap();
    env.ok(&["put", "src/v2/f.bin"]);
    fetch(&v2, "starting over");

    // Now shorter than the part.
    let v3 = env.local_file("src/v3/f.bin", 1000, 3);
    fs::write(&part, &v2[..MIB as usize + 500]).unwrap();
    env.ok(&["put", "src/v3/f.bin"]);
    fetch(&v3, "starting over");

    // Grown at the end, the prefix unchanged: resuming is right here.
    let mut v4 = v3.clone();
    v4.extend_from_slice(&env.local_file("src/tail", 777_777, 4));
    fs::create_dir_all(env.local("src/v4")).unwrap();
    fs::write(env.local("src/v4/f.bin"), &v4).unwrap();
    fs::write(&part, &v3[..500]).unwrap();
    env.ok(&["put", "src/v4/f.bin"]);
    fetch(&v4, "resuming at 500 B");
    env.assert_quota_exact();
}

#[test]
fn no_resume_starts_over() {
    let env = Env::new(None);
    let data = env.local_file("big.bin", 3 * MIB as usize, 1);
    interrupted_put(&env, "big.bin", &data, MIB as usize + 5);
    let out = env.loud(&["put", "--no-resume", "big.bin"]);
    assert_success(&out, "ftpc put --no-resume");
    assert!(!stderr(&out).contains("resuming"), "{}", stderr(&out));
    let line = env
        .server
        .wait_log("dir=put path=\"/big.bin\"", WAIT)
        .expect("upload logged");
    assert!(
        line.contains(&format!("bytes={} ", data.len())) && line.contains("outcome=\"ok\""),
        "{line}"
    );
    assert_content(&env.home().join("big.bin"), &data);
    env.assert_no_partials();
    env.assert_quota_exact();

    // A matching .part is ignored, too.
    fs::write(env.local("back.bin.part"), &data[..MIB as usize]).unwrap();
    let out = env.loud(&["get", "--no-resume", "big.bin", "back.bin"]);
    assert_success(&out, "ftpc get --no-resume");
    assert!(!stderr(&out).contains("resuming"), "{}", stderr(&out));
    let line = env
        .server
        .wait_log("dir=get path=\"/big.bin\"", WAIT)
        .expect("download logged");
    assert!(line.contains(&format!("bytes={} ", data.len())), "{line}");
    assert_content(&env.local("back.bin"), &data);
    assert!(!env.local("back.bin.part").exists());
}

#[test]
fn an_upload_ended_early_is_kept_for_resume() {
    let env = Env::new(None);
    let data = env.local_file("big.bin", 2 * MIB as usize + 3, 1);
    let cut = 700_001;
    let mut c = env.raw();
    begin_put(&mut c, "big.bin", data.len() as u64);
    send_chunks(&mut c, &data[..cut]);
    match c.call(&Request::PutEnd {
        crc32: crc(&data[..cut]),
    }) {
        Reply::Error {
            code: ErrorCode::TransferFailed,
            message,
        } => assert!(
            message.contains("ended early") && message.contains("resume"),
            "{message}"
        ),
        other => panic!("expected TransferFailed, got {other:?}"),
    }
    assert_eq!(c.call(&Request::Ping), Reply::Pong);
    assert!(!env.home().join("big.bin").exists());
    assert_eq!(env.partial_len("big.bin"), cut as u64);
    env.assert_quota_exact();

    env.put_resumes(cut as u64, &data);
}

#[test]
fn a_stalled_upload_is_dropped_and_kept_for_resume() {
    let env = Env::with_args(None, &["--stall-timeout", "1"]);
    let data = env.local_file("big.bin", 3 * MIB as usize + 3, 1);
    let cut = MIB as usize + 1;
    let mut c = env.raw();
    begin_put(&mut c, "big.bin", data.len() as u64);
    send_chunks(&mut c, &data[..cut]);
    // Then nothing more: after a second the server gives up on it.
    match c.recv() {
        Some(Reply::Error {
            code: ErrorCode::Timeout,
            message,
        }) => assert!(message.contains("stalled"), "{message}"),
        other => panic!("expected a stall time-out, got {other:?}"),
    }
    assert!(env.server.wait_log("kept for resume", WAIT).is_some());
    assert_eq!(env.partial_len("big.bin"), cut as u64);
    env.assert_quota_exact();

    env.put_resumes(cut as u64, &data);
}

#[test]
fn data_damaged_in_transit_is_caught_with_exit_code_7() {
    // In clear: under TLS a changed byte breaks its record's MAC and the
    // connection (see the test below); the CRC32 is the end-to-end check
    // that catches what no transport does, and this shows it.
    let env = Env::with_args(None, &["--plaintext"]);
    let old = env.local_file("f.bin", 1000, 1);
    env.ok(&["put", "f.bin"]);
    let new = env.local_file("new/f.bin", 3 * MIB as usize + 7, 2);
    let before = env.quota();
    // One byte well inside the file data (past login and a few chunks).
    let flip = MIB + 100;

    // Upload: the server's CRC32 does not match the client's.
    let relay = Relay::start(env.server.addr, Leg::flip(flip), Leg::OPEN);
    let out = env
        .cmd_in(env.cwd.path(), relay.addr, true, &["put", "new/f.bin"])
        .output()
        .expect("run ftpc");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );
    assert_content(&env.home().join("f.bin"), &old);
    env.wait_bad_partial_gone(before);
    env.assert_no_partials();
    assert_eq!(env.quota(), before);
    env.assert_quota_exact();

    // Download: the client's CRC32 does not match the server's.
    env.ok(&["put", "new/f.bin", "big.bin"]);
    let relay = Relay::start(env.server.addr, Leg::OPEN, Leg::flip(flip));
    let out = env
        .cmd_in(
            env.cwd.path(),
            relay.addr,
            true,
            &["get", "big.bin", "got.bin"],
        )
        .output()
        .expect("run ftpc");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("crc32"), "{}", stderr(&out));
    assert!(!env.local("got.bin").exists());
    assert!(
        !env.local("got.bin.part").exists(),
        "a part known to be bad is deleted"
    );
    env.ok(&["get", "big.bin", "got.bin"]);
    assert_content(&env.local("got.bin"), &new);
}

#[test]
fn a_file_truncated_while_being_sent_ends_in_an_error() {
    let env = Env::new(None);
    let len = 64 * MIB;
    let path = env.home().join("shrink.bin");
    make_file(&path, len as usize, 1);

    let mut c = env.raw();
    c.send(&Request::GetStart {
        path: "shrink.bin".into(),
        offset: 0,
        prefix_crc: 0,
    });
    assert_eq!(
        c.recv(),
        Some(Reply::GetReady {
            size: len,
            offset: 0
        })
    );
    // The server reads the file only as the socket drains, and nothing has
    // been read past GetReady: most of the file is still to be read.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut got = 0u64;
    loop {
        match c.recv() {
            Some(Reply::Chunk(bytes)) => got += bytes.len() as u64,
            Some(Reply::Error {
                code: ErrorCode::TransferFailed,
                message,
            }) => {
                assert!(message.contains("shrank"), "{message}");
                break;
            }
            Some(Reply::GetDone { crc32 }) => {
                panic!("false success after {got} bytes (crc32 {crc32:08x})")
            }
            other => panic!("after {got} bytes: {other:?}"),
        }
    }
    assert!(got < len, "{got}");
    assert_eq!(c.call(&Request::Ping), Reply::Pong);
}
