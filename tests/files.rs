//! The home jail, directories and quotas: every path resolves inside the
//! user's home, which appears as `/`; symlinks and special files are shown
//! but never followed or opened; commands answer in the user's terms and
//! never name a server path; quota figures stay equal to a recount of the
//! disk in whole blocks.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ftpd::jail::{Jail, PARTIAL_DIR, VPath};
use ftpd::proto::{Entry, EntryKind, ErrorCode, LIST_BATCH, QuotaInfo, Reply, Request};
use ftpd::size::format_size;
use ftpd::usage::{BLOCK, file_charge};

use crate::util::{self, DataDir, Raw, TestServer};

/// A modification time that `ls` and `stat` must show exactly:
/// 2023-11-14 22:13:20 UTC.
const MTIME: u64 = 1_700_000_000;

fn password(user: &str) -> String {
    format!("{user}-pw")
}

/// A server, its data folder, and a separate working folder for `ftpc`
/// (so downloads land there, and no client path looks like a server path).
struct Site {
    data: DataDir,
    server: TestServer,
    local: tempfile::TempDir,
}

impl Site {
    /// Users are `(name, quota)`; each one's password is `NAME-pw`.
    fn new(users: &[(&str, Option<&str>)]) -> Site {
        let data = DataDir::new();
        for (name, quota) in users {
            data.add_user(name, &password(name), *quota);
        }
        let server = TestServer::start(&data, &[]);
        Site {
            data,
            server,
            local: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn home(&self, user: &str) -> PathBuf {
        self.data.home(user)
    }

    /// Crashes the server and starts it again on the same data.
    fn restart(&mut self) {
        self.server.kill();
        self.server = TestServer::start(&self.data, &[]);
    }

    /// A file in the client's working folder; returns its path as text.
    fn local_file(&self, name: &str, content: &[u8]) -> String {
        let path = self.local.path().join(name);
        fs::write(&path, content).expect("write local file");
        path.to_str().expect("utf-8 path").to_owned()
    }

    fn local(&self, name: &str) -> PathBuf {
        self.local.path().join(name)
    }

    fn ftpc(&self, user: &str, args: &[&str]) -> Output {
        self.server
            .ftpc_cmd(user, &password(user), args)
            .current_dir(self.local.path())
            .output()
            .expect("run ftpc")
    }

    /// Runs ftpc, asserts success, returns stdout.
    fn ok(&self, user: &str, args: &[&str]) -> String {
        let out = self.ftpc(user, args);
        util::assert_success(&out, &format!("ftpc {}", args.join(" ")));
        self.assert_no_leak(&util::stderr(&out));
        util::stdout(&out)
    }

    /// Runs ftpc, asserts it exits with `code` and says `needle` on stderr
    /// without naming a server path; returns stderr.
    fn refused(&self, user: &str, args: &[&str], code: i32, needle: &str) -> String {
        let out = self.ftpc(user, args);
        let err = util::stderr(&out);
        let shown: Vec<String> = args.iter().map(|a| short(a)).collect();
        assert_eq!(
            out.status.code(),
            Some(code),
            "ftpc {shown:?}\nstdout: {}\nstderr: {}",
            short(&util::stdout(&out)),
            short(&err)
        );
        assert!(
            err.contains(needle),
            "ftpc {shown:?}: stderr lacks {needle:?}: {}",
            short(&err)
        );
        self.assert_no_leak(&err);
        self.assert_no_leak(&util::stdout(&out));
        err
    }

    /// Runs `ftpc shell` on a script: one session for many commands.
    /// Each line comes with the error it must report, or `None` to
    /// succeed. Checks the errors in order and the summary, and that
    /// nothing names a server path; returns the output.
    fn script(&self, user: &str, lines: &[(String, Option<&str>)]) -> Output {
        let text: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
        let mut cmd = self.server.ftpc_cmd(user, &password(user), &["shell"]);
        cmd.current_dir(self.local.path());
        let out = util::run_with_stdin(cmd, &text);
        let err = util::stderr(&out);
        self.assert_no_leak(&err);
        self.assert_no_leak(&util::stdout(&out));
        let mut reported = err.lines();
        let mut failed = 0;
        for (line, needle) in lines {
            let Some(needle) = needle else { continue };
            failed += 1;
            let got = reported.next().unwrap_or_else(|| {
                panic!("no error reported for {}: {}", short(line), short(&err))
            });
            assert!(
                got.starts_with("ftpc: ") && got.contains(needle),
                "{}: expected {needle:?}, got {}\nall errors: {}",
                short(line),
                short(got),
                short(&err)
            );
        }
        if failed == 0 {
            util::assert_success(&out, "ftpc shell");
        } else {
            let summary = format!("ftpc: {failed} of {} commands failed", lines.len());
            assert_eq!(reported.next(), Some(summary.as_str()), "{}", short(&err));
            assert!(!out.status.success());
        }
        assert_eq!(reported.next(), None, "unexpected errors: {}", short(&err));
        out
    }

    /// A logged-in raw session.
    fn raw(&self, user: &str) -> Raw {
        let mut c = self.server.raw();
        c.hello();
        match c.login(user, &password(user)) {
            Reply::LoginOk { .. } => c,
            other => panic!("login of {user} failed: {other:?}"),
        }
    }

    /// Panics if `text` names the server's data folder or its layout.
    fn assert_no_leak(&self, text: &str) {
        let root = self.data.path().to_str().expect("utf-8 path");
        assert!(!text.contains(root), "server path revealed: {text}");
        let real = fs::canonicalize(self.data.path()).expect("canonicalize");
        let real = real.to_str().expect("utf-8 path");
        assert!(!text.contains(real), "server path revealed: {text}");
        let tmp = std::env::temp_dir();
        let tmp = tmp.to_str().expect("utf-8 path").trim_end_matches('/');
        assert!(
            tmp.is_empty() || !text.contains(&format!("{tmp}/")),
            "a temporary (server) path revealed: {text}"
        );
    }
}

/// `s` as one word of a shell line.
fn q(s: &str) -> String {
    assert!(!s.contains('\''), "cannot quote {s:?}");
    format!("'{s}'")
}

/// A shell line that must succeed.
fn ok_line(line: impl Into<String>) -> (String, Option<&'static str>) {
    (line.into(), None)
}

/// `s`, cut to a readable length for a failure message.
fn short(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...({} bytes)", &s[..cut], s.len()),
        None => s.to_owned(),
    }
}

/// Sends `req`, expects an error with `code` whose message contains
/// `needle`; returns the message.
fn raw_refused(c: &mut Raw, req: &Request, code: ErrorCode, needle: &str) -> String {
    match c.call(req) {
        Reply::Error { code: got, message } => {
            assert_eq!(got, code, "{req:?}: {message}");
            assert!(message.contains(needle), "{req:?}: {message:?}");
            message
        }
        other => panic!("{req:?} was not refused: {other:?}"),
    }
}

/// `Cd` that must succeed; returns the new cwd.
fn raw_cd(c: &mut Raw, path: &str) -> String {
    match c.call(&Request::Cd { path: path.into() }) {
        Reply::Cwd(cwd) => cwd,
        other => panic!("cd {path:?}: {other:?}"),
    }
}

fn raw_pwd(c: &mut Raw) -> String {
    match c.call(&Request::Pwd) {
        Reply::Cwd(cwd) => cwd,
        other => panic!("pwd: {other:?}"),
    }
}

fn raw_stat(c: &mut Raw, path: &str) -> Entry {
    match c.call(&Request::Stat { path: path.into() }) {
        Reply::Entry(e) => e,
        other => panic!("stat {path:?}: {other:?}"),
    }
}

fn raw_quota(c: &mut Raw) -> QuotaInfo {
    match c.call(&Request::Quota) {
        Reply::Quota(q) => q,
        other => panic!("quota: {other:?}"),
    }
}

/// A whole listing: entries, the number of `Entries` frames, and `ListEnd`.
#[derive(Debug)]
struct Listing {
    entries: Vec<Entry>,
    frames: usize,
    total: u64,
    truncated: bool,
}

fn raw_list(c: &mut Raw, path: &str) -> Result<Listing, (ErrorCode, String)> {
    c.send(&Request::List { path: path.into() });
    let mut entries = Vec::new();
    let mut frames = 0;
    loop {
        match c.recv().expect("listing reply") {
            Reply::Entries(batch) => {
                assert!(
                    !batch.is_empty() && batch.len() <= LIST_BATCH,
                    "a frame of {} entries",
                    batch.len()
                );
                frames += 1;
                entries.extend(batch);
            }
            Reply::ListEnd { total, truncated } => {
                // The server sends the folder's own order; clients sort.
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                return Ok(Listing {
                    entries,
                    frames,
                    total,
                    truncated,
                });
            }
            Reply::Error { code, message } => {
                assert_eq!(frames, 0, "an error in the middle of a listing");
                return Err((code, message));
            }
            other => panic!("unexpected reply in a listing: {other:?}"),
        }
    }
}

fn names(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.name.as_str()).collect()
}

/// The server answers at once on an existing session.
fn assert_alive(c: &mut Raw) {
    assert_eq!(c.call(&Request::Ping), Reply::Pong);
}

/// What the tree under `dir` costs (hidden entries too), without following
/// symlinks: what a quota should count.
fn disk_bytes(dir: &Path) -> u64 {
    // The server's own rule for what a tree costs (whole blocks, at least
    // one per file and folder): the figure it reports must equal it.
    ftpd::usage::disk_usage(dir).expect("recount")
}

/// What the top folder of `home` costs: what it grew beyond its first block.
fn home_growth(home: &Path) -> u64 {
    ftpd::usage::home_charge(&rustix::fs::stat(home).expect("stat home"))
}

/// What a folder holds, recursively: to prove that nothing changed.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
    Other,
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for item in fs::read_dir(dir).expect("read_dir") {
            let path = item.expect("dir entry").path();
            let rel = path.strip_prefix(base).expect("below base").to_path_buf();
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let node = if meta.file_type().is_symlink() {
                Node::Link(fs::read_link(&path).expect("readlink"))
            } else if meta.is_dir() {
                walk(base, &path, out);
                Node::Dir
            } else if meta.is_file() {
                Node::File(fs::read(&path).expect("read"))
            } else {
                Node::Other
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Names directly in `dir`, sorted.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    names
}

fn set_mtime(path: &Path, secs: u64) {
    // Read-only is enough for the owner, and works on folders too.
    let file = fs::File::open(path).expect("open to set mtime");
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .expect("set mtime");
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
}

/// One `ls` line split into (type letter, size, "month day time-or-year", name).
fn ls_fields(line: &str) -> (char, u64, String, String) {
    let mut rest = line;
    let mut field = || {
        rest = rest.trim_start();
        let end = rest.find(' ').unwrap_or(rest.len());
        let (word, tail) = rest.split_at(end);
        rest = tail;
        word.to_owned()
    };
    let kind = field().chars().next().expect("type letter");
    let size = field().parse().expect("size");
    // `ls -l`'s time: month, day, and the time of day or the year.
    let (month, day, time) = (field(), field(), field());
    (
        kind,
        size,
        format!("{month} {day} {time}"),
        rest[1..].to_owned(),
    )
}

/// The `ls` lines of a listing, by name.
fn ls_map(stdout: &str) -> BTreeMap<String, (char, u64, String)> {
    stdout
        .lines()
        .map(ls_fields)
        .map(|(k, s, t, n)| (n, (k, s, t)))
        .collect()
}

/// Runs `cmd` and fails the test if it has not exited within `limit`.
fn output_within(mut cmd: std::process::Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// Uploads `len` bytes of `path` but ends after `sent`, leaving a partial.
fn raw_unfinished_put(c: &mut Raw, path: &str, len: u64, sent: usize) {
    match c.call(&Request::PutStart {
        path: path.into(),
        size: len,
        resume: true,
        mtime: None,
        crc32: None,
    }) {
        Reply::PutReady { offset: 0, .. } => {}
        other => panic!("PutStart {path}: {other:?}"),
    }
    c.send(&Request::PutFrom { offset: 0 });
    c.send(&Request::Chunk(&vec![b'p'; sent]));
    raw_refused(
        c,
        &Request::PutEnd { crc32: 0 },
        ErrorCode::TransferFailed,
        "ended early",
    );
}

#[test]
fn paths_resolve_against_the_cwd_and_never_climb_above_the_root() {
    let site = Site::new(&[("alice", None)]);
    let home = site.home("alice");
    fs::create_dir_all(home.join("docs/sub")).unwrap();
    fs::write(home.join("docs/a.txt"), b"alpha").unwrap();
    fs::write(home.join("top.txt"), b"top").unwrap();
    let mut c = site.raw("alice");

    assert_eq!(raw_pwd(&mut c), "/");
    assert_eq!(raw_cd(&mut c, "docs"), "/docs");
    assert_eq!(raw_cd(&mut c, "sub"), "/docs/sub");
    assert_eq!(raw_cd(&mut c, ".."), "/docs");
    assert_eq!(raw_cd(&mut c, "./sub/../sub/."), "/docs/sub");
    assert_eq!(raw_cd(&mut c, "//docs///sub//"), "/docs/sub");
    // Relative paths start at the cwd, absolute ones at the home.
    assert_eq!(raw_stat(&mut c, "../a.txt").size, 5);
    assert_eq!(raw_stat(&mut c, "/docs/a.txt").size, 5);
    assert_eq!(raw_stat(&mut c, "../../../../../top.txt").size, 3);
    assert_eq!(raw_stat(&mut c, "").name, "sub");
    assert_eq!(raw_stat(&mut c, ".").kind, EntryKind::Dir);
    // Past the top, `..` stays at `/`, as in a chroot.
    assert_eq!(raw_cd(&mut c, "/../.."), "/");
    assert_eq!(raw_cd(&mut c, "docs/sub"), "/docs/sub");
    assert_eq!(raw_cd(&mut c, "../../../../.."), "/");
    assert_eq!(raw_cd(&mut c, "docs/../../.."), "/");
    assert_eq!(raw_cd(&mut c, "../../../../docs"), "/docs");
    for _ in 0..10 {
        assert_eq!(raw_cd(&mut c, ".."), "/");
    }
    assert_eq!(raw_pwd(&mut c), "/");
    assert_eq!(raw_stat(&mut c, "..").name, "/");
    let root = raw_list(&mut c, "../../..").unwrap();
    assert_eq!(names(&root.entries), ["docs", "top.txt"]);
    // The classic escape lands inside the home, where there is no /etc.
    let message = raw_refused(
        &mut c,
        &Request::Stat {
            path: "../../etc/passwd".into(),
        },
        ErrorCode::NotFound,
        "",
    );
    // (The folder that is missing is the one named.)
    assert_eq!(message, "no such file or directory: /etc");
    assert_eq!(raw_cd(&mut c, "docs"), "/docs");
    let message = raw_refused(
        &mut c,
        &Request::GetStart {
            path: "../../../etc/shadow".into(),
            offset: 0,
            prefix_crc: 0,
        },
        ErrorCode::NotFound,
        "",
    );
    assert_eq!(message, "no such file or directory: /etc/shadow");
    // A failed cd leaves the cwd alone.
    raw_refused(
        &mut c,
        &Request::Cd {
            path: "nowhere".into(),
        },
        ErrorCode::NotFound,
        "no such file or directory: /docs/nowhere",
    );
    raw_refused(
        &mut c,
        &Request::Cd {
            path: "a.txt".into(),
        },
        ErrorCode::NotADirectory,
        "not a directory: /docs/a.txt",
    );
    assert_eq!(raw_pwd(&mut c), "/docs");
    // A new session starts at the root again.
    let mut other = site.raw("alice");
    assert_eq!(raw_pwd(&mut other), "/");
}

#[test]
fn path_tricks_are_refused_or_stay_inside_the_home() {
    let site = Site::new(&[("alice", None), ("bob", None)]);
    let home = site.home("alice");
    fs::create_dir(home.join("docs")).unwrap();
    fs::write(home.join("docs/a.txt"), b"alpha").unwrap();
    fs::write(site.home("bob").join("bob.txt"), b"bob's").unwrap();
    let data_top = dir_names(site.data.path());
    let bob_before = snapshot(&site.home("bob"));
    let mut canary = site.raw("alice");

    // One-shot commands: refused (exit 5), in the user's terms.
    // `..` beyond the top resolves inside the home: not found, not /etc.
    let err = site.refused(
        "alice",
        &["get", "../../etc/passwd"],
        5,
        "no such file or directory: /etc/passwd",
    );
    assert!(!err.contains("root:"), "{err}");
    site.refused(
        "alice",
        &["get", "../bob/bob.txt"],
        5,
        "no such file or directory: /bob/bob.txt",
    );
    // The real layout (DATA/homes/NAME) is out of reach too.
    let out = site.ftpc("alice", &["ls", "../../../homes/bob"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        util::stderr(&out),
        "ftpc: no such file or directory: /homes/bob\n"
    );
    site.refused(
        "alice",
        &["stat", r"a\..\b"],
        5,
        "path contains a backslash",
    );
    let long = "n".repeat(5000);
    site.refused("alice", &["mkdir", &long], 5, "path too long");
    // Control characters never make it into a name (a newline cannot
    // even be typed into the shell).
    site.refused(
        "alice",
        &["mkdir", "a\nb"],
        5,
        "path contains a control character",
    );
    assert_alive(&mut canary);

    // The rest in one shell session, which must survive every line.
    let local = site.local_file("up.txt", b"up");
    let mut lines = Vec::new();
    for path in [
        "/../..",
        "docs/../../..",
        "/./docs/./..",
        "../../../../../..",
    ] {
        lines.push(ok_line(format!("ls {}", q(path))));
    }
    lines.push(ok_line("stat docs/../../../docs/a.txt"));
    lines.push((
        "rm ../../../bob/bob.txt".into(),
        Some("no such file or directory: /bob"),
    ));
    lines.push(("cd ../bob".into(), Some("no such file or directory: /bob")));
    // Backslashes are no separators and are refused outright.
    for path in [
        r"a\..\b",
        r"..\..\etc\passwd",
        r"docs\a.txt",
        r"\",
        r"x\..\..\evil",
    ] {
        lines.push((
            format!("stat {}", q(path)),
            Some("path contains a backslash"),
        ));
        lines.push((
            format!("mkdir {}", q(path)),
            Some("path contains a backslash"),
        ));
    }
    // A 5000-byte name, a 300-byte one, a path 65 levels deep.
    for cmd in ["mkdir", "stat", "ls", "rm", "rmdir", "cd"] {
        lines.push((format!("{cmd} {long}"), Some("path too long")));
    }
    lines.push((format!("get {long} got.txt"), Some("path too long")));
    lines.push((format!("mv docs/a.txt {long}"), Some("path too long")));
    lines.push((format!("mv {long} x"), Some("path too long")));
    lines.push((format!("put {} {long}", q(&local)), Some("path too long")));
    lines.push((format!("mkdir {}", "m".repeat(300)), Some("name too long")));
    lines.push((format!("mkdir {}", "d/".repeat(65)), Some("path too deep")));
    // 64 levels of `..` cancel 64 names: that one is fine, and stays home.
    let cancelled = format!("{}{}", "d/".repeat(64), "../".repeat(64));
    lines.push(ok_line(format!("ls {cancelled}")));
    for name in [
        "\x1b[31mred",
        "tab\there",
        "bell\x07",
        "c1\u{9b}x",
        "del\x7f",
    ] {
        lines.push((
            format!("mkdir {}", q(name)),
            Some("path contains a control character"),
        ));
    }
    lines.push(ok_line("pwd"));
    let out = site.script("alice", &lines);
    assert_eq!(out.status.code(), Some(5));
    let stdout = util::stdout(&out);
    // Five listings of the home (four `ls` and the cancelled path), the
    // stat of /docs/a.txt, and `pwd`.
    let docs_lines = stdout.lines().filter(|l| l.starts_with("d ")).count();
    assert_eq!(docs_lines, 5, "{stdout}");
    assert!(stdout.contains("size:     5 bytes"), "{stdout}");
    assert!(stdout.ends_with("\n/\n"), "{stdout}");
    assert!(!site.local("got.txt").exists());

    // Through the raw protocol: NUL bytes, and a path as big as a frame.
    let mut c = site.raw("alice");
    for path in ["a\0b", "\0", "docs/\0/../..", "/etc/passwd\0.txt"] {
        for req in [
            Request::Stat { path: path.into() },
            Request::Cd { path: path.into() },
            Request::Mkdir { path: path.into() },
            Request::Remove { path: path.into() },
            Request::List { path: path.into() },
            Request::GetStart {
                path: path.into(),
                offset: 0,
                prefix_crc: 0,
            },
            Request::PutStart {
                path: path.into(),
                size: 1,
                resume: false,
                mtime: None,
                crc32: None,
            },
            Request::Rename {
                from: "docs/a.txt".into(),
                to: path.into(),
            },
        ] {
            let message = raw_refused(&mut c, &req, ErrorCode::BadRequest, "NUL");
            site.assert_no_leak(&message);
            // The session goes on.
            assert_eq!(raw_pwd(&mut c), "/");
        }
    }
    let huge = "h".repeat(100_000);
    raw_refused(
        &mut c,
        &Request::Stat { path: huge },
        ErrorCode::BadRequest,
        "path too long",
    );
    let message = raw_refused(
        &mut c,
        &Request::Mkdir {
            path: "z".repeat(5000),
        },
        ErrorCode::BadRequest,
        "path too long",
    );
    assert!(message.len() < 200, "the error repeats the path: {message}");
    assert_alive(&mut c);
    assert_eq!(raw_stat(&mut c, "docs/a.txt").size, 5);

    // A path that is not UTF-8 cannot even be decoded: only that
    // connection closes.
    let mut bytes = ftpd::frame::encode(&Request::Stat {
        path: "abcd".into(),
    })
    .unwrap();
    let at = bytes.len() - 4;
    bytes[at..].copy_from_slice(&[0xff, 0xfe, b'/', b'x']);
    let mut bad = site.raw("alice");
    bad.send_raw(&bytes).unwrap();
    assert!(matches!(
        bad.recv(),
        Some(Reply::Error {
            code: ErrorCode::BadRequest,
            ..
        })
    ));
    assert_eq!(bad.recv(), None);
    assert_alive(&mut canary);
    assert_alive(&mut c);

    // Nothing was created anywhere: not in the data folder, not in bob's
    // home, and alice's home holds only what it held.
    assert_eq!(dir_names(site.data.path()), data_top);
    assert_eq!(dir_names(&site.data.path().join("homes")), ["alice", "bob"]);
    assert_eq!(snapshot(&site.home("bob")), bob_before);
    let mine: Vec<String> = dir_names(&home)
        .into_iter()
        .filter(|n| n != PARTIAL_DIR)
        .collect();
    assert_eq!(mine, ["docs"]);
    assert_eq!(dir_names(&home.join("docs")), ["a.txt"]);
    assert_eq!(site.ok("alice", &["pwd"]), "/\n");
}

#[test]
fn odd_unicode_names_are_plain_names_inside_the_home() {
    let site = Site::new(&[("alice", None)]);
    let home = site.home("alice");
    let local = site.local_file("payload.txt", b"payload");
    // Right-to-left override, combining marks, look-alikes of `.`, `/` and
    // `\`, zero-width and non-BMP characters: all plain names.
    let odd = [
        "evil\u{202e}txt.exe",
        "e\u{301}te\u{301}",
        "\u{2024}\u{2024}",
        "\u{ff0e}\u{ff0e}",
        "a\u{2215}b",
        "a\u{ff0f}..\u{ff0f}b",
        "c\u{ff3c}d",
        "zero\u{200b}width",
        "\u{1f4c1}\u{fe0f}",
        "\u{65e5}\u{672c}\u{8a9e}",
        "...",
        " ",
        "-rf",
    ];
    let mut lines = Vec::new();
    for name in odd {
        let file = format!("{name}/f.txt");
        lines.push(ok_line(format!("mkdir -- {}", q(name))));
        lines.push(ok_line(format!("put -- {} {}", q(&local), q(&file))));
        lines.push(ok_line(format!("stat -- {}", q(&file))));
    }
    // The precomposed é is another name than e + combining acute.
    lines.push((
        "stat '\u{e9}t\u{e9}'".into(),
        Some("no such file or directory: /\u{e9}t\u{e9}"),
    ));
    let out = site.script("alice", &lines);
    let stdout = util::stdout(&out);
    assert_eq!(
        stdout.matches("size:     7 bytes").count(),
        odd.len(),
        "{stdout}"
    );
    for name in odd {
        assert!(
            home.join(name).is_dir(),
            "{name:?} is not a folder in the home"
        );
        assert_eq!(fs::read(home.join(name).join("f.txt")).unwrap(), b"payload");
    }
    // They stay names in the home: nothing appeared next to it.
    assert_eq!(dir_names(&site.data.path().join("homes")), ["alice"]);
    let on_disk: Vec<String> = dir_names(&home)
        .into_iter()
        .filter(|n| n != PARTIAL_DIR)
        .collect();
    let mut expected: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(on_disk, expected);

    // The raw listing carries the names exactly; `ls` neutralises the
    // bidi override so it cannot disguise a name on a terminal.
    let mut c = site.raw("alice");
    let listing = raw_list(&mut c, "/").unwrap();
    assert_eq!(names(&listing.entries), expected);
    let out = site.ok("alice", &["ls"]);
    assert!(!out.contains('\u{202e}'), "{out}");
    assert!(out.contains("evil?txt.exe"), "{out}");
    assert!(out.contains("e\u{301}te\u{301}"), "{out}");
    // cd into a look-alike of `..` goes down, not up.
    assert_eq!(raw_cd(&mut c, "\u{2024}\u{2024}"), "/\u{2024}\u{2024}");
    assert_eq!(names(&raw_list(&mut c, "").unwrap().entries), ["f.txt"]);
    assert_eq!(
        raw_cd(&mut c, "/a\u{ff0f}..\u{ff0f}b"),
        "/a\u{ff0f}..\u{ff0f}b"
    );
    assert_eq!(raw_cd(&mut c, ".."), "/");
}

#[test]
fn the_partial_folder_is_hidden_and_cannot_be_named() {
    let mut site = Site::new(&[("alice", None)]);
    let home = site.home("alice");
    fs::create_dir(home.join("docs")).unwrap();
    // Usage is counted from disk at start: docs costs a block.
    site.restart();
    let mut c = site.raw("alice");
    raw_unfinished_put(&mut c, "docs/big.bin", 1000, 300);
    let parts = dir_names(&home.join(PARTIAL_DIR));
    assert_eq!(parts.len(), 1, "{parts:?}");
    let part = format!("{PARTIAL_DIR}/{}", parts[0]);
    let before = snapshot(&home);

    let out = site.ok("alice", &["ls"]);
    assert!(!out.contains(PARTIAL_DIR), "{out}");
    let listing = raw_list(&mut c, "/").unwrap();
    assert_eq!(names(&listing.entries), ["docs"]);
    assert_eq!((listing.total, listing.truncated), (1, false));

    let local = site.local_file("x.txt", b"x");
    site.refused("alice", &["get", &part], 5, "reserved name: .ftpd-partial");
    let reserved = Some("reserved name: .ftpd-partial");
    let local = q(&local);
    let lines: Vec<(String, Option<&str>)> = [
        format!("ls {PARTIAL_DIR}"),
        format!("ls /{PARTIAL_DIR}"),
        format!("ls {PARTIAL_DIR}/"),
        format!("ls {PARTIAL_DIR}/.."),
        format!("ls docs/../{PARTIAL_DIR}"),
        format!("cd {PARTIAL_DIR}"),
        format!("cd ./{PARTIAL_DIR}/../docs"),
        format!("stat {PARTIAL_DIR}"),
        format!("stat {part}"),
        format!("get {part} stolen.part"),
        format!("rm {part}"),
        format!("rmdir {PARTIAL_DIR}"),
        format!("mkdir {PARTIAL_DIR}"),
        format!("mkdir docs/{PARTIAL_DIR}"),
        format!("put {local} {part}"),
        format!("put {local} {PARTIAL_DIR}/"),
        format!("put {local} {PARTIAL_DIR}"),
        format!("put {local} docs/{PARTIAL_DIR}/x.txt"),
        format!("mv {part} stolen.part"),
        format!("mv docs {PARTIAL_DIR}"),
        format!("mv docs docs/{PARTIAL_DIR}"),
    ]
    .into_iter()
    .map(|line| (line, reserved))
    .chain([ok_line("pwd")])
    .collect();
    let out = site.script("alice", &lines);
    assert_eq!(util::stdout(&out), "/\n");
    assert_eq!(dir_names(site.local.path()), ["x.txt"]);
    for path in [PARTIAL_DIR, "/.ftpd-partial/..", "./.ftpd-partial"] {
        raw_refused(
            &mut c,
            &Request::Cd { path: path.into() },
            ErrorCode::BadRequest,
            "reserved name",
        );
        assert_eq!(raw_pwd(&mut c), "/");
    }
    assert_eq!(snapshot(&home), before, "the partial folder was touched");
    // The unfinished upload still counts against the quota.
    let q = raw_quota(&mut c);
    assert_eq!((q.used, q.reserved), (disk_bytes(&home), 0));
    // docs, the partial folder and the 300 bytes received so far.
    assert_eq!(q.used, 2 * BLOCK + file_charge(300) + home_growth(&home));
}

#[test]
fn a_symlink_to_etc_is_listed_but_never_followed() {
    let site = Site::new(&[("alice", None)]);
    let home = site.home("alice");
    symlink("/etc", home.join("etc")).unwrap();
    symlink("/etc/passwd", home.join("passwd")).unwrap();
    fs::write(home.join("mine.txt"), b"mine").unwrap();
    let before = snapshot(&home);
    let unique = format!("ftpd-jail-test-{}", std::process::id());
    let local = site.local_file("evil.txt", b"evil");
    let mut canary = site.raw("alice");

    let out = site.ok("alice", &["ls"]);
    let listed = ls_map(&out);
    assert_eq!(listed["etc"].0, 'l', "{out}");
    assert_eq!(listed["passwd"].0, 'l', "{out}");
    assert_eq!(listed["passwd"].1, 0, "a link's size is not its target's");
    assert_eq!(listed["mine.txt"].0, '-', "{out}");
    assert!(!out.contains("/etc") && !out.contains("->"), "{out}");
    let out = site.ok("alice", &["stat", "etc"]);
    assert!(out.contains("type:     symbolic link"), "{out}");
    assert!(!out.contains("/etc"), "the link target was revealed: {out}");

    // One-shot: refused with exit code 5.
    site.refused(
        "alice",
        &["get", "etc/passwd"],
        5,
        "permission denied: /etc",
    );
    site.refused("alice", &["get", "passwd"], 5, "/passwd");
    let in_etc = format!("etc/{unique}");
    site.refused("alice", &["mkdir", &in_etc], 5, "permission denied: /etc");
    // The rest in one session.
    let denied = Some("permission denied: /etc");
    let lines = vec![
        ("ls etc".into(), denied),
        ("ls etc/".into(), denied),
        ("ls /etc/.".into(), denied),
        ("ls etc/ssl".into(), denied),
        ("cd etc".into(), denied),
        ("cd /etc/ssl".into(), denied),
        ok_line("pwd"),
        ("get /etc/hostname".into(), denied),
        ("get etc/passwd stolen".into(), denied),
        ("get passwd stolen".into(), Some("/passwd")),
        ("stat etc/passwd".into(), denied),
        (format!("put {} {in_etc}", q(&local)), denied),
        (format!("put {} etc/", q(&local)), denied),
        (
            format!("put {} passwd", q(&local)),
            Some("permission denied"),
        ),
        ("rm etc/hostname".into(), denied),
        ("rmdir etc/ssl".into(), denied),
        ("mv etc/hostname h".into(), denied),
        ("mv mine.txt etc/mine.txt".into(), denied),
        ("rmdir etc".into(), Some("not a directory: /etc")),
        ok_line("pwd"),
    ];
    let out = site.script("alice", &lines);
    assert_eq!(util::stdout(&out), "/\n/\n");
    assert!(!util::stderr(&out).contains("root:"));
    assert_alive(&mut canary);
    for path in ["etc", "/etc/", "etc/ssl", "./etc/../etc"] {
        raw_refused(
            &mut canary,
            &Request::Cd { path: path.into() },
            ErrorCode::PermissionDenied,
            "permission denied: /etc",
        );
        assert_eq!(raw_pwd(&mut canary), "/");
    }
    // `..` is resolved on the path's text, so it never goes through a link.
    assert_eq!(raw_cd(&mut canary, "etc/.."), "/");
    raw_refused(
        &mut canary,
        &Request::GetStart {
            path: "passwd".into(),
            offset: 0,
            prefix_crc: 0,
        },
        ErrorCode::PermissionDenied,
        "/passwd",
    );
    assert_alive(&mut canary);

    // Nothing was read into the client's folder, nothing written to /etc,
    // and the home is as it was.
    assert_eq!(dir_names(site.local.path()), ["evil.txt"]);
    assert!(!Path::new("/etc").join(&unique).exists());
    assert_eq!(snapshot(&home), before);
    // A folder swapped for a link while a session is inside it: that
    // session's paths now meet the link, and are refused.
    fs::create_dir(home.join("swap")).unwrap();
    let mut inside = site.raw("alice");
    assert_eq!(raw_cd(&mut inside, "swap"), "/swap");
    fs::remove_dir(home.join("swap")).unwrap();
    symlink("/etc", home.join("swap")).unwrap();
    let (code, message) = raw_list(&mut inside, "").unwrap_err();
    assert_eq!(
        (code, message.as_str()),
        (ErrorCode::PermissionDenied, "permission denied: /swap")
    );
    for req in [
        Request::GetStart {
            path: "passwd".into(),
            offset: 0,
            prefix_crc: 0,
        },
        Request::Stat {
            path: "hostname".into(),
        },
        Request::Mkdir {
            path: unique.clone(),
        },
        Request::PutStart {
            path: unique.clone(),
            size: 1,
            resume: false,
            mtime: None,
            crc32: None,
        },
        Request::Cd { path: ".".into() },
    ] {
        raw_refused(&mut inside, &req, ErrorCode::PermissionDenied, "/swap");
    }
    assert!(!Path::new("/etc").join(&unique).exists());
    assert_eq!(raw_pwd(&mut inside), "/swap");
    assert_eq!(raw_cd(&mut inside, ".."), "/");
    // Removing the link removes the link, never its target.
    site.ok("alice", &["rm", "etc"]);
    assert!(fs::symlink_metadata(home.join("etc")).is_err());
    assert!(Path::new("/etc").is_dir());
}

#[test]
fn a_symlink_into_another_home_or_outside_is_not_a_way_in() {
    let mut site = Site::new(&[("alice", None), ("bob", None)]);
    let alice = site.home("alice");
    let bob = site.home("bob");
    fs::write(bob.join("secret.txt"), b"bob's secret").unwrap();
    fs::create_dir(bob.join("private")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("victim.txt"), b"untouched").unwrap();
    fs::create_dir(outside.path().join("private")).unwrap();
    symlink("../bob", alice.join("bob")).unwrap();
    symlink(outside.path(), alice.join("out")).unwrap();
    symlink(outside.path().join("victim.txt"), alice.join("victim")).unwrap();
    fs::write(alice.join("mine.txt"), b"mine").unwrap();
    // Usage is counted from disk at start.
    site.restart();
    let alice_before = snapshot(&alice);
    let bob_before = snapshot(&bob);
    let outside_before = snapshot(outside.path());
    let local = site.local_file("evil.txt", b"evil");
    let mut canary = site.raw("alice");

    let out = site.ok("alice", &["ls"]);
    let listed = ls_map(&out);
    for link in ["bob", "out", "victim"] {
        assert_eq!(listed[link].0, 'l', "{out}");
        assert_eq!(listed[link].1, 0, "{out}");
    }
    assert_eq!(listed["mine.txt"], ('-', 4, listed["mine.txt"].2.clone()));
    let outside_text = outside.path().to_str().unwrap();
    assert!(
        !out.contains(outside_text) && !out.contains("../bob"),
        "{out}"
    );

    for link in ["bob", "out"] {
        let denied = format!("permission denied: /{link}");
        let p = |rest: &str| format!("{link}/{rest}");
        let (secret, evil, new, private, mine) = (
            p("secret.txt"),
            p("evil.txt"),
            p("new"),
            p("private"),
            p("mine.txt"),
        );
        let victim = p("victim.txt");
        let with_slash = p("");
        site.refused("alice", &["get", &secret], 5, &denied);
        site.refused("alice", &["put", &local, &evil], 5, &denied);
        let fail = Some(denied.as_str());
        let local = q(&local);
        let lines = vec![
            (format!("ls {link}"), fail),
            (format!("ls {with_slash}"), fail),
            (format!("ls {private}"), fail),
            (format!("cd {link}"), fail),
            (format!("cd {private}"), fail),
            (format!("get {victim}"), fail),
            (format!("stat {secret}"), fail),
            (format!("stat {victim}"), fail),
            (format!("put {local} {with_slash}"), fail),
            (format!("mkdir {new}"), fail),
            (format!("rmdir {private}"), fail),
            (format!("rm {secret}"), fail),
            (format!("rm {victim}"), fail),
            (format!("mv {secret} stolen.txt"), fail),
            (format!("mv {victim} stolen.txt"), fail),
            (format!("mv mine.txt {mine}"), fail),
            ok_line("pwd"),
        ];
        let out = site.script("alice", &lines);
        assert_eq!(util::stdout(&out), "/\n");
        assert_alive(&mut canary);
        assert_eq!(raw_cd(&mut canary, &format!("/{link}/..")), "/");
        for path in [link.to_owned(), private.clone(), format!("/{link}/./")] {
            raw_refused(
                &mut canary,
                &Request::Cd { path },
                ErrorCode::PermissionDenied,
                &denied,
            );
        }
        let (code, message) = raw_list(&mut canary, &private).unwrap_err();
        assert_eq!(code, ErrorCode::PermissionDenied);
        assert!(message.starts_with(&denied), "{message}");
    }
    // A link to a file is neither read nor written through.
    site.refused("alice", &["get", "victim"], 5, "/victim");
    site.refused("alice", &["put", &local, "victim"], 5, "permission denied");
    site.refused("alice", &["put", &local, "bob"], 5, "permission denied");
    assert_eq!(raw_pwd(&mut canary), "/");

    assert_eq!(snapshot(&bob), bob_before, "bob's home changed");
    assert_eq!(snapshot(outside.path()), outside_before, "outside changed");
    assert_eq!(snapshot(&alice), alice_before, "alice's home changed");
    assert_eq!(dir_names(site.local.path()), ["evil.txt"]);
    // Links count nothing against the quota: only mine.txt does.
    let q = raw_quota(&mut canary);
    assert_eq!(q.used, disk_bytes(&alice));
    assert_eq!(q.used, file_charge(4) + home_growth(&alice));
    // `rm` of a link removes the link only.
    site.ok("alice", &["rm", "victim"]);
    site.ok("alice", &["rm", "bob"]);
    assert_eq!(snapshot(outside.path()), outside_before);
    assert_eq!(snapshot(&bob), bob_before);
    assert!(fs::symlink_metadata(alice.join("victim")).is_err());
    let used = raw_quota(&mut canary).used;
    assert_eq!(used, disk_bytes(&alice));
    assert_eq!(used, file_charge(4) + home_growth(&alice));
}

#[test]
fn special_files_are_listed_but_never_opened() {
    let site = Site::new(&[("alice", None), ("bob", None)]);
    let home = site.home("alice");
    mkfifo(&home.join("pipe"));
    let local = site.local_file("up.txt", b"upload");
    let mut canary = site.raw("alice");

    let listed = ls_map(&site.ok("alice", &["ls"]));
    assert_eq!(listed["pipe"].0, '?');
    assert_eq!(listed["pipe"].1, 0);
    let out = site.ok("alice", &["stat", "pipe"]);
    assert!(out.contains("type:     special file"), "{out}");

    // Reading a FIFO would wait for a writer forever; it is refused at once.
    let started = Instant::now();
    let mut cmd = site
        .server
        .ftpc_cmd("alice", &password("alice"), &["get", "pipe"]);
    cmd.current_dir(site.local.path());
    let out = output_within(cmd, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(5), "{}", util::stderr(&out));
    assert!(
        util::stderr(&out).contains("not a regular file: /pipe"),
        "{}",
        util::stderr(&out)
    );
    site.assert_no_leak(&util::stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!site.local("pipe").exists());
    assert_alive(&mut canary);
    raw_refused(
        &mut canary,
        &Request::GetStart {
            path: "/pipe".into(),
            offset: 0,
            prefix_crc: 0,
        },
        ErrorCode::PermissionDenied,
        "not a regular file: /pipe",
    );
    raw_refused(
        &mut canary,
        &Request::GetStart {
            path: "/pipe".into(),
            offset: 10,
            prefix_crc: 1234,
        },
        ErrorCode::PermissionDenied,
        "not a regular file: /pipe",
    );
    raw_refused(
        &mut canary,
        &Request::Cd {
            path: "pipe".into(),
        },
        ErrorCode::NotADirectory,
        "not a directory: /pipe",
    );
    site.refused("alice", &["put", &local, "pipe"], 5, "permission denied");
    let listed = ls_map(&site.ok("alice", &["ls", "pipe"]));
    assert_eq!(listed["pipe"].0, '?');

    // A FIFO or a link planted where an upload's partial file goes is
    // refused, not opened or followed.
    let partials = home.join(PARTIAL_DIR);
    fs::create_dir_all(&partials).unwrap();
    let partial_of = |p: &str| Jail::partial_name(&VPath::resolve(&VPath::root(), p).unwrap());
    mkfifo(&partials.join(partial_of("/up.txt")));
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("victim.txt"), b"untouched").unwrap();
    symlink(
        outside.path().join("victim.txt"),
        partials.join(partial_of("/up2.txt")),
    )
    .unwrap();
    let outside_before = snapshot(outside.path());
    let mut cmd = site
        .server
        .ftpc_cmd("alice", &password("alice"), &["put", &local, "up.txt"]);
    cmd.current_dir(site.local.path());
    let out = output_within(cmd, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(5), "{}", util::stderr(&out));
    assert!(
        util::stderr(&out).contains("/up.txt"),
        "{}",
        util::stderr(&out)
    );
    site.assert_no_leak(&util::stderr(&out));
    site.refused("alice", &["put", &local, "up2.txt"], 5, "permission denied");
    assert_eq!(snapshot(outside.path()), outside_before);
    assert!(!home.join("up.txt").exists() && !home.join("up2.txt").exists());

    // The partial folder itself replaced by a link to somewhere else.
    symlink(outside.path(), site.home("bob").join(PARTIAL_DIR)).unwrap();
    site.refused("bob", &["put", &local, "up.txt"], 5, "permission denied");
    assert_eq!(snapshot(outside.path()), outside_before);
    assert!(!site.home("bob").join("up.txt").exists());

    // Figures still agree with the disk, and everyone is still served.
    assert_alive(&mut canary);
    let q = raw_quota(&mut canary);
    // The partial folder was planted behind the server's back (it counts
    // its usage from disk at start), so its block is not in the figure;
    // the refused uploads added nothing.
    let planted = fs::metadata(&partials).unwrap().len();
    assert_eq!(
        (q.used, q.reserved),
        (disk_bytes(&home) - ftpd::usage::dir_charge(planted), 0)
    );
    let mut bob = site.raw("bob");
    let q = raw_quota(&mut bob);
    assert_eq!((q.used, q.reserved), (0, 0));
    // Once the admin removes the planted link, uploads work again.
    fs::remove_file(site.home("bob").join(PARTIAL_DIR)).unwrap();
    site.ok("bob", &["put", &local, "/docs.txt"]);
    assert_eq!(
        fs::read(site.home("bob").join("docs.txt")).unwrap(),
        b"upload"
    );
}

#[test]
fn directory_commands_work_and_answer_in_user_terms() {
    let site = Site::new(&[("alice", Some("1M"))]);
    let home = site.home("alice");
    let hello = q(&site.local_file("a.txt", b"hello"));
    let zz = q(&site.local_file("zz.txt", b"zzzz"));
    let big = q(&site.local_file("B.txt", &[b'b'; 1234]));
    let lines = vec![
        ok_line("pwd"),
        ok_line("mkdir docs"),
        ok_line("mkdir /docs/sub"),
        ok_line(format!("put {hello} docs/")),
        ok_line(format!("put {zz} docs/zz.txt")),
        ok_line(format!("put {big} /docs")),
        ok_line("mkdir docs/sub/inner"),
    ];
    let out = site.script("alice", &lines);
    assert_eq!(util::stdout(&out), "/\n");
    assert_eq!(fs::read(home.join("docs/a.txt")).unwrap(), b"hello");
    assert!(home.join("docs/sub/inner").is_dir());
    for p in [
        "docs/a.txt",
        "docs/B.txt",
        "docs/zz.txt",
        "docs/sub",
        "docs",
    ] {
        set_mtime(&home.join(p), MTIME);
    }

    // ls: type, size, time (as `ls -l`: the year for a file this old; UTC
    // with --utc), name; sorted by name (bytes: B < a).
    assert_eq!(
        site.ok("alice", &["--utc", "ls", "docs"]),
        "- 1234 Nov 14  2023 B.txt\n\
         -    5 Nov 14  2023 a.txt\n\
         d    0 Nov 14  2023 sub\n\
         -    4 Nov 14  2023 zz.txt\n"
    );
    assert_eq!(
        site.ok("alice", &["--utc", "ls"]),
        "d 0 Nov 14  2023 docs\n"
    );
    assert_eq!(
        site.ok("alice", &["--utc", "ls", "/docs/a.txt"]),
        "- 5 Nov 14  2023 a.txt\n"
    );
    assert_eq!(
        site.ok("alice", &["--utc", "stat", "docs/a.txt"]),
        "name:     a.txt\ntype:     file\nsize:     5 bytes (5 B)\n\
         modified: 2023-11-14 22:13:20 UTC\n"
    );
    let out = site.ok("alice", &["stat", "/docs/B.txt"]);
    assert!(out.contains("size:     1234 bytes (1.2 KiB)"), "{out}");
    let out = site.ok("alice", &["stat", "docs"]);
    assert!(
        out.starts_with("name:     docs\ntype:     directory\n"),
        "{out}"
    );
    let out = site.ok("alice", &["stat", "/"]);
    assert!(
        out.starts_with("name:     /\ntype:     directory\n"),
        "{out}"
    );

    // Failures, each in the user's terms, in one session that goes on.
    let lines = vec![
        ("mkdir docs".into(), Some("already exists: /docs")),
        (
            "mkdir nope/x".into(),
            Some("no such file or directory: /nope"),
        ),
        (
            "mkdir docs/a.txt/x".into(),
            Some("not a directory: /docs/a.txt"),
        ),
        ("rmdir docs".into(), Some("directory not empty: /docs")),
        (
            "rmdir docs/a.txt".into(),
            Some("not a directory: /docs/a.txt"),
        ),
        (
            "rmdir nope".into(),
            Some("no such file or directory: /nope"),
        ),
        ("rm docs".into(), Some("is a directory: /docs")),
        (
            "rm docs/nope".into(),
            Some("no such file or directory: /docs/nope"),
        ),
        (
            "get /docs/nope.txt".into(),
            Some("no such file or directory: /docs/nope.txt"),
        ),
        ("get docs got".into(), Some("is a directory: /docs")),
        ("ls nope".into(), Some("no such file or directory: /nope")),
        (
            "stat docs/nope".into(),
            Some("no such file or directory: /docs/nope"),
        ),
        (
            "cd docs/zz.txt".into(),
            Some("not a directory: /docs/zz.txt"),
        ),
        ("mv nope x".into(), Some("no such file or directory: /nope")),
        (
            "mv docs docs/sub".into(),
            Some("cannot move /docs into itself"),
        ),
        (
            "mv docs/a.txt nope/x".into(),
            Some("no such file or directory: /nope"),
        ),
        (
            "mv docs/sub docs/zz.txt".into(),
            Some("not a directory: /docs/zz.txt"),
        ),
        ok_line("pwd"),
    ];
    let out = site.script("alice", &lines);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(util::stdout(&out), "/\n");
    assert!(!site.local("nope.txt").exists() && !site.local("got").exists());

    // mv: onto a folder means into it; onto a file replaces it.
    let lines = vec![
        ok_line("mv docs/a.txt docs/sub"),
        ok_line("mv docs/sub/a.txt /renamed.txt"),
        ok_line("mv renamed.txt docs/zz.txt"),
        ok_line("mv docs /archive"),
        ok_line("mv archive/sub /"),
        ok_line("rm archive/B.txt"),
        ok_line("rmdir sub/inner"),
        ok_line("rmdir sub"),
        ok_line("quota"),
    ];
    let out = site.script("alice", &lines);
    // What is left: archive/ holding the 5-byte zz.txt, and the partial
    // folder if an upload made it.
    let partial = if home.join(PARTIAL_DIR).exists() {
        BLOCK
    } else {
        0
    };
    let used = disk_bytes(&home);
    assert_eq!(used, BLOCK + file_charge(5) + partial + home_growth(&home));
    assert_eq!(
        util::stdout(&out),
        format!(
            "used       {}\nlimit      1.0 MiB\navailable  {}\nfiles      {}\n",
            format_size(used),
            format_size((1 << 20) - used),
            ftpd::usage::tally(&home).unwrap().entries
        )
    );
    assert_eq!(
        dir_names(&home).len(),
        1 + usize::from(home.join(PARTIAL_DIR).exists())
    );
    assert_eq!(dir_names(&home.join("archive")), ["zz.txt"]);
    assert_eq!(fs::read(home.join("archive/zz.txt")).unwrap(), b"hello");
    let mut c = site.raw("alice");
    let q = raw_quota(&mut c);
    assert_eq!((q.used, q.reserved, q.limit), (used, 0, 1 << 20));
    assert_eq!(q.used, disk_bytes(&home));
}

#[test]
fn the_root_cannot_be_removed_moved_or_replaced() {
    let site = Site::new(&[("alice", None)]);
    let home = site.home("alice");
    let lines = vec![
        ok_line("mkdir d"),
        ("rmdir /".into(), Some("cannot remove /")),
        ("rmdir /../..".into(), Some("cannot remove /")),
        ("rmdir .".into(), Some("cannot remove /")),
        ("rm /".into(), Some("is a directory: /")),
        ("mv / x".into(), Some("cannot move /")),
        ("mv .. d".into(), Some("cannot move /")),
        ("mkdir /".into(), Some("already exists: /")),
        ("get / root.bin".into(), Some("is a directory: /")),
        // Moving d onto / means into /, where it already is: nothing to do.
        ok_line("mv d /"),
        ok_line("ls"),
    ];
    let out = site.script("alice", &lines);
    assert!(
        util::stdout(&out).ends_with(" d\n"),
        "{}",
        util::stdout(&out)
    );
    let mut c = site.raw("alice");
    for path in ["/", "..", "", "d/.."] {
        raw_refused(
            &mut c,
            &Request::PutStart {
                path: path.into(),
                size: 1,
                resume: false,
                mtime: None,
                crc32: None,
            },
            ErrorCode::IsADirectory,
            "is a directory: /",
        );
    }
    // `..` at the top is `/`: d moves into /, where it is already.
    assert_eq!(
        c.call(&Request::Rename {
            from: "d".into(),
            to: "..".into(),
        }),
        Reply::Ok
    );
    raw_refused(
        &mut c,
        &Request::Rename {
            from: "../..".into(),
            to: "d".into(),
        },
        ErrorCode::PermissionDenied,
        "cannot move /",
    );
    assert_alive(&mut c);
    assert!(home.is_dir() && home.join("d").is_dir());
    assert_eq!(dir_names(&site.data.path().join("homes")), ["alice"]);
}

#[test]
fn two_users_at_once_never_see_each_others_files() {
    let site = Site::new(&[("alice", None), ("bob", None)]);
    let mut a = site.raw("alice");
    let mut b = site.raw("bob");
    // Both sessions are open together and use the same names.
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.call(&Request::Mkdir {
                path: "shared".into()
            }),
            Reply::Ok
        );
        assert_eq!(raw_cd(c, "shared"), "/shared");
    }
    // Two shells upload and fetch a file of the same name at the same time.
    let mut cmds = Vec::new();
    for (user, byte, len) in [("alice", b'a', 300_000), ("bob", b'b', 200_000)] {
        let local = site.local_file(&format!("{user}.bin"), &vec![byte; len]);
        let back = site.local(&format!("{user}-back.bin"));
        let script = format!(
            "cd shared\nput {} same.bin\nget same.bin {}\nls\nquota\n",
            q(&local),
            q(back.to_str().unwrap())
        );
        let mut cmd = site.server.ftpc_cmd(user, &password(user), &["shell"]);
        cmd.current_dir(site.local.path());
        cmds.push((cmd, script));
    }
    let outs: Vec<Output> = cmds
        .into_iter()
        .map(|(cmd, script)| std::thread::spawn(move || util::run_with_stdin(cmd, &script)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("shell thread"))
        .collect();
    for (user, byte, len, out) in [
        ("alice", b'a', 300_000u64, &outs[0]),
        ("bob", b'b', 200_000, &outs[1]),
    ] {
        util::assert_success(out, &format!("{user}'s shell"));
        let stdout = util::stdout(out);
        let listing: String = stdout
            .lines()
            .filter(|l| l.starts_with("- "))
            .map(|l| format!("{l}\n"))
            .collect();
        let listed = ls_map(&listing);
        assert_eq!(listed.len(), 1, "{user}: {}", util::stdout(out));
        assert_eq!(listed["same.bin"].1, len);
        let back = fs::read(site.local(&format!("{user}-back.bin"))).unwrap();
        assert!(back.len() as u64 == len && back.iter().all(|&x| x == byte));
        let stored = fs::read(site.home(user).join("shared/same.bin")).unwrap();
        assert!(stored.len() as u64 == len && stored.iter().all(|&x| x == byte));
    }

    // Each sees only their own file, and no path reaches the other home.
    let la = raw_list(&mut a, "").unwrap();
    let lb = raw_list(&mut b, "").unwrap();
    assert_eq!(
        (names(&la.entries), la.entries[0].size),
        (vec!["same.bin"], 300_000)
    );
    assert_eq!(
        (names(&lb.entries), lb.entries[0].size),
        (vec!["same.bin"], 200_000)
    );
    for path in [
        "/../alice/shared/same.bin",
        "../../alice/shared/same.bin",
        "../../../homes/alice/shared/same.bin",
    ] {
        raw_refused(
            &mut b,
            &Request::Stat { path: path.into() },
            ErrorCode::NotFound,
            "no such file or directory: /",
        );
        raw_refused(
            &mut b,
            &Request::GetStart {
                path: path.into(),
                offset: 0,
                prefix_crc: 0,
            },
            ErrorCode::NotFound,
            "no such file or directory: /",
        );
    }
    raw_refused(
        &mut a,
        &Request::Cd {
            path: "../../bob".into(),
        },
        ErrorCode::NotFound,
        "no such file or directory: /bob",
    );
    // What one does, the other does not see.
    assert_eq!(
        b.call(&Request::Remove {
            path: "same.bin".into()
        }),
        Reply::Ok
    );
    assert_eq!(raw_stat(&mut a, "same.bin").size, 300_000);
    assert_eq!(raw_pwd(&mut a), "/shared");
    assert_eq!(raw_pwd(&mut b), "/shared");
    let (qa, qb) = (raw_quota(&mut a), raw_quota(&mut b));
    assert_eq!(qa.used, disk_bytes(&site.home("alice")));
    assert_eq!(qb.used, disk_bytes(&site.home("bob")));
    // Each pays for shared/ and the partial folder; only alice for a file.
    let (ga, gb) = (
        home_growth(&site.home("alice")),
        home_growth(&site.home("bob")),
    );
    assert_eq!(qa.used, 2 * BLOCK + file_charge(300_000) + ga);
    assert_eq!(qb.used, 2 * BLOCK + gb);
    assert_eq!(dir_names(&site.data.path().join("homes")), ["alice", "bob"]);
}

/// Checks a session's quota figures against the bytes in `home`;
/// returns them.
fn check_quota(c: &mut Raw, home: &Path, limit: u64, what: &str) -> u64 {
    let q = raw_quota(c);
    let disk = disk_bytes(home);
    assert_eq!(
        (q.used, q.reserved, q.limit),
        (disk, 0, limit),
        "quota after {what}"
    );
    disk
}

/// `ftpc quota` shows these figures, and the count of files and folders
/// a recount finds.
fn check_quota_text(site: &Site, user: &str, used: u64, limit: u64) {
    let expected = format!(
        "used       {}\nlimit      {}\navailable  {}\nfiles      {}\n",
        format_size(used),
        format_size(limit),
        format_size(limit - used),
        ftpd::usage::tally(&site.home(user)).unwrap().entries
    );
    assert_eq!(site.ok(user, &["quota"]), expected);
}

#[test]
fn quota_figures_match_the_disk_through_changes_and_restarts() {
    const LIMIT: u64 = 64 * 1024;
    let mut site = Site::new(&[("alice", Some("64K")), ("bob", Some("64K"))]);
    let home = site.home("alice");
    let file = |name: &str, len: usize| {
        let path = site.local.path().join(name);
        util::make_file(&path, len, len as u64);
        path.to_str().unwrap().to_owned()
    };
    let (a10k, b3k, a4k, c500, x200, x300) = (
        file("a10k", 10_000),
        file("b3k", 3_000),
        file("a4k", 4_000),
        file("c500", 500),
        file("x200", 200),
        file("x300", 300),
    );
    // One session watches the figures that all of alice's sessions share.
    // Each file and folder costs whole blocks (`file_charge`); the first
    // upload also makes the partial folder, which costs a block from then
    // on; the home itself only what it grows beyond its first block.
    let fc = file_charge;
    let costs = |sum: u64| sum + home_growth(&home);
    let partial = BLOCK;
    let mut w = site.raw("alice");
    assert_eq!(check_quota(&mut w, &home, LIMIT, "nothing"), 0);
    site.ok("alice", &["put", &a10k, "a.bin"]);
    site.ok("alice", &["put", &b3k, "b.bin"]);
    assert_eq!(
        check_quota(&mut w, &home, LIMIT, "two uploads"),
        costs(partial + fc(10_000) + fc(3_000))
    );
    // An upload over a file replaces it.
    site.ok("alice", &["put", &a4k, "a.bin"]);
    assert_eq!(
        check_quota(&mut w, &home, LIMIT, "replacing upload"),
        costs(partial + fc(4_000) + fc(3_000))
    );
    let lines = vec![
        ok_line("mkdir d"),
        ok_line("mv b.bin d"),
        ok_line(format!("put {} c.bin", q(&c500))),
        // Onto an existing file: replaces it, freeing its 3000 bytes.
        ok_line("mv c.bin d/b.bin"),
        ok_line(format!("put {} x.bin", q(&x200))),
        ok_line(format!("put {} d/x.bin", q(&x300))),
        // Onto a folder: into it, replacing d/x.bin (300 bytes).
        ok_line("mv x.bin d"),
    ];
    site.script("alice", &lines);
    assert_eq!(fs::metadata(home.join("d/b.bin")).unwrap().len(), 500);
    assert_eq!(fs::metadata(home.join("d/x.bin")).unwrap().len(), 200);
    let folder_d = BLOCK;
    assert_eq!(
        check_quota(&mut w, &home, LIMIT, "moves"),
        costs(partial + folder_d + fc(4_000) + fc(500) + fc(200))
    );
    site.ok("alice", &["rm", "a.bin"]);
    let after_rm = costs(partial + folder_d + fc(500) + fc(200));
    assert_eq!(check_quota(&mut w, &home, LIMIT, "rm"), after_rm);
    check_quota_text(&site, "alice", after_rm, LIMIT);

    // An unfinished upload's bytes count; a running one's are reserved.
    let mut c = site.raw("alice");
    raw_unfinished_put(&mut c, "d/partial.bin", 2_000, 600);
    let unfinished = costs(partial + folder_d + fc(500) + fc(200) + fc(600));
    assert_eq!(
        check_quota(&mut w, &home, LIMIT, "an unfinished upload"),
        unfinished
    );
    let data = vec![9u8; 1_000];
    assert!(matches!(
        c.call(&Request::PutStart {
            path: "r.bin".into(),
            size: 1_000,
            resume: false,
            mtime: None,
            crc32: None,
        }),
        Reply::PutReady { offset: 0, .. }
    ));
    let q = raw_quota(&mut w);
    // The open partial is on disk (and counts); the rest of the file and
    // the block its folder may grow by are reserved, not used.
    assert_eq!(q.used, disk_bytes(&home));
    assert!(q.used >= unfinished, "{q:?}");
    assert!(
        q.reserved >= BLOCK && q.reserved <= fc(1_000) + 3 * BLOCK,
        "{q:?}"
    );
    assert_eq!(q.available(), LIMIT - q.used - q.reserved);
    c.send(&Request::PutFrom { offset: 0 });
    c.send(&Request::Chunk(&data));
    assert_eq!(
        c.call(&Request::PutEnd {
            crc32: crc32fast::hash(&data)
        }),
        Reply::PutDone {
            size: 1_000,
            crc32: crc32fast::hash(&data)
        }
    );
    let finished = costs(partial + folder_d + fc(500) + fc(200) + fc(600) + fc(1_000));
    assert_eq!(
        check_quota(&mut w, &home, LIMIT, "a finished upload"),
        finished
    );
    // Over the quota: refused with exit code 6, nothing changes.
    let too_big = file("too-big", 70_000);
    site.refused("alice", &["put", &too_big, "big.bin"], 6, "quota exceeded");
    assert!(!home.join("big.bin").exists());
    assert_eq!(
        check_quota(&mut w, &home, LIMIT, "a refused upload"),
        finished
    );

    // A crash and a restart: usage is counted again from disk, which now
    // also holds a file put there behind the server's back, and a link to
    // a big file elsewhere, which counts nothing.
    site.server.kill();
    fs::write(home.join("d/offline.bin"), vec![1u8; 1_234]).unwrap();
    let outside = tempfile::tempdir().unwrap();
    util::make_file(&outside.path().join("huge"), 100_000, 1);
    symlink(outside.path().join("huge"), home.join("huge-link")).unwrap();
    site.server = TestServer::start(&site.data, &[]);
    let mut w = site.raw("alice");
    let kept = partial + folder_d + fc(600) + fc(1_000);
    assert_eq!(
        check_quota(&mut w, &home, LIMIT, "a restart"),
        costs(kept + fc(500) + fc(200) + fc(1_234))
    );
    site.ok("alice", &["rm", "d/b.bin"]);
    site.ok("alice", &["mv", "d/offline.bin", "d/x.bin"]);
    // d/b.bin (500) removed, d/x.bin (200) replaced.
    let changed = costs(kept + fc(1_234));
    assert_eq!(
        check_quota(&mut w, &home, LIMIT, "changes after restart"),
        changed
    );
    site.restart();
    let mut w = site.raw("alice");
    assert_eq!(
        check_quota(&mut w, &home, LIMIT, "a second restart"),
        changed
    );
    check_quota_text(&site, "alice", changed, LIMIT);
    // Bob's figures never moved.
    let mut b = site.raw("bob");
    assert_eq!(
        check_quota(&mut b, &site.home("bob"), LIMIT, "alice's changes"),
        0
    );
}

#[test]
fn a_large_directory_is_listed_in_pieces_whole_and_sorted() {
    const N: usize = 3_000;
    let site = Site::new(&[("alice", None)]);
    let big = site.home("alice").join("big");
    fs::create_dir(&big).unwrap();
    // Created in a scrambled order, with a few names that sort by bytes.
    let mut expected: Vec<String> = (0..N)
        .map(|i| format!("f{:04}", (i * 1_777) % N))
        .chain(["A", "_z", "a", "\u{e9}t\u{e9}"].map(String::from))
        .collect();
    for (i, name) in expected.iter().enumerate() {
        let mut f = fs::File::create(big.join(name)).unwrap();
        if i % 500 == 0 {
            std::io::Write::write_all(&mut f, &vec![b'x'; i / 500 + 1]).unwrap();
        }
    }
    expected.sort();

    let mut c = site.raw("alice");
    assert_eq!(raw_cd(&mut c, "big"), "/big");
    // Every name exactly once (`raw_list` sorts what the server streams).
    let listing = raw_list(&mut c, "").unwrap();
    assert_eq!(names(&listing.entries), expected);
    assert_eq!(
        (listing.total, listing.truncated),
        (expected.len() as u64, false)
    );
    assert!(
        listing.frames >= 2,
        "one frame for {} entries",
        expected.len()
    );
    assert_eq!(listing.frames, expected.len().div_ceil(LIST_BATCH));
    for e in &listing.entries {
        let len = fs::metadata(big.join(&e.name)).unwrap().len();
        assert_eq!((e.kind, e.size), (EntryKind::File, len), "{}", e.name);
    }
    // The session is in step after the stream.
    assert_eq!(raw_pwd(&mut c), "/big");

    let out = site.ok("alice", &["ls", "/big"]);
    let shown: Vec<String> = out.lines().map(|l| ls_fields(l).3).collect();
    assert_eq!(shown, expected);
}

#[test]
fn the_shell_runs_a_script_keeping_the_cwd_and_reporting_failures() {
    let site = Site::new(&[("alice", None)]);
    let local = site.local_file("a.txt", b"shell upload");
    let back = site.local("back.txt");
    let script = format!(
        "# a comment, and a blank line: no commands\n\
         \n\
         mkdir docs\n\
         cd docs\n\
         pwd\n\
         put {local}\n\
         ls\n\
         frobnicate\n\
         cd nosuch\n\
         pwd\n\
         get a.txt {back}\n\
         mkdir sub\n\
         cd sub\n\
         {ups}\
         pwd\n\
         rm nothere\n\
         cd /docs/sub\n\
         cd ../..\n\
         pwd\n\
         ls docs\n\
         exit\n\
         pwd\n",
        local = q(&local),
        back = q(back.to_str().unwrap()),
        ups = "cd ..\n".repeat(10),
    );
    let mut cmd = site
        .server
        .ftpc_cmd("alice", &password("alice"), &["shell"]);
    cmd.current_dir(site.local.path());
    let out = util::run_with_stdin(cmd, &script);
    let (stdout, stderr) = (util::stdout(&out), util::stderr(&out));
    site.assert_no_leak(&stderr);
    // The last failing line (rm: refused) gives the exit code.
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    assert_eq!(lines[0], "/docs");
    assert_eq!(ls_fields(lines[1]).3, "a.txt");
    assert_eq!(ls_fields(lines[1]).1, 12);
    // The failed cd left the cwd alone; ten `cd ..` stop at the top.
    assert_eq!(&lines[2..5], ["/docs", "/", "/"]);
    let docs: Vec<(char, String)> = lines[5..]
        .iter()
        .map(|l| {
            let f = ls_fields(l);
            (f.0, f.3)
        })
        .collect();
    assert_eq!(docs, [('-', "a.txt".into()), ('d', "sub".into())]);
    let errors: Vec<&str> = stderr.lines().collect();
    assert_eq!(errors.len(), 4, "{stderr}");
    assert!(errors[0].contains("frobnicate"), "{stderr}");
    assert_eq!(errors[1], "ftpc: no such file or directory: /docs/nosuch");
    assert_eq!(errors[2], "ftpc: no such file or directory: /nothere");
    assert_eq!(errors[3], "ftpc: 3 of 27 commands failed");
    assert_eq!(fs::read(&back).unwrap(), b"shell upload");
    assert_eq!(
        fs::read(site.home("alice").join("docs/a.txt")).unwrap(),
        b"shell upload"
    );
    assert!(site.home("alice").join("docs/sub").is_dir());
    // A clean script exits 0; a one-shot command starts at / again.
    let mut cmd = site
        .server
        .ftpc_cmd("alice", &password("alice"), &["shell"]);
    cmd.current_dir(site.local.path());
    let out = util::run_with_stdin(cmd, "cd docs/sub\npwd\ncd ..\nls sub\n");
    util::assert_success(&out, "clean script");
    assert_eq!(util::stdout(&out), "/docs/sub\n");
    assert_eq!(site.ok("alice", &["pwd"]), "/\n");
}

#[test]
fn error_messages_never_name_a_server_path() {
    // Room for the folder and rename reservations (8 KiB and 4 KiB) that
    // come before their errors, but not for the 1 MiB upload.
    let mut site = Site::new(&[("alice", Some("64K"))]);
    let home = site.home("alice");
    fs::create_dir(home.join("docs")).unwrap();
    fs::write(home.join("docs/a.txt"), b"alpha").unwrap();
    symlink("/etc", home.join("link")).unwrap();
    symlink(site.data.path(), home.join("data")).unwrap();
    mkfifo(&home.join("pipe"));
    site.restart();
    let mut c = site.raw("alice");
    let s = |p: &str| p.to_owned();
    let cases = [
        (Request::Stat { path: s("nope") }, ErrorCode::NotFound),
        (
            Request::Stat {
                path: s("nope/deeper"),
            },
            ErrorCode::NotFound,
        ),
        (
            Request::Cd {
                path: s("docs/a.txt"),
            },
            ErrorCode::NotADirectory,
        ),
        (Request::Remove { path: s("docs") }, ErrorCode::IsADirectory),
        (Request::Mkdir { path: s("docs") }, ErrorCode::AlreadyExists),
        (Request::Rmdir { path: s("docs") }, ErrorCode::NotEmpty),
        (Request::Cd { path: s("link") }, ErrorCode::PermissionDenied),
        (
            Request::Cd {
                path: s("data/homes"),
            },
            ErrorCode::PermissionDenied,
        ),
        (
            Request::Stat {
                path: s("data/users.json"),
            },
            ErrorCode::PermissionDenied,
        ),
        (
            Request::GetStart {
                path: s("data/users.json"),
                offset: 0,
                prefix_crc: 0,
            },
            ErrorCode::PermissionDenied,
        ),
        (
            Request::GetStart {
                path: s("pipe"),
                offset: 0,
                prefix_crc: 0,
            },
            ErrorCode::PermissionDenied,
        ),
        (
            Request::GetStart {
                path: s("docs"),
                offset: 0,
                prefix_crc: 0,
            },
            ErrorCode::IsADirectory,
        ),
        (
            Request::PutStart {
                path: s("big.bin"),
                size: 1 << 20,
                resume: false,
                mtime: None,
                crc32: None,
            },
            ErrorCode::QuotaExceeded,
        ),
        (
            Request::PutStart {
                path: s("link/x"),
                size: 1,
                resume: false,
                mtime: None,
                crc32: None,
            },
            ErrorCode::PermissionDenied,
        ),
        (
            Request::Stat {
                path: s(PARTIAL_DIR),
            },
            ErrorCode::BadRequest,
        ),
        (Request::Stat { path: s("a\\b") }, ErrorCode::BadRequest),
        (
            Request::Stat {
                path: "x".repeat(300),
            },
            ErrorCode::BadRequest,
        ),
        (
            Request::Rename {
                from: s("docs"),
                to: s("docs/inner"),
            },
            ErrorCode::BadRequest,
        ),
        (
            Request::Rename {
                from: s("nope"),
                to: s("x"),
            },
            ErrorCode::NotFound,
        ),
        (Request::Rmdir { path: s("/") }, ErrorCode::PermissionDenied),
    ];
    for (req, code) in &cases {
        let message = raw_refused(&mut c, req, *code, "");
        assert!(!message.is_empty(), "{req:?}");
        site.assert_no_leak(&message);
        assert!(
            !message.contains("users.json")
                || matches!(req, Request::Stat { .. } | Request::GetStart { .. })
        );
        assert_alive(&mut c);
    }
    let (code, message) = raw_list(&mut c, "data").unwrap_err();
    assert_eq!(code, ErrorCode::PermissionDenied);
    site.assert_no_leak(&message);
    // The same through ftpc, with the symlink into the data folder.
    site.refused(
        "alice",
        &["get", "data/users.json"],
        5,
        "permission denied: /data",
    );
    site.refused(
        "alice",
        &["ls", "data/homes"],
        5,
        "permission denied: /data",
    );
    assert_eq!(dir_names(site.local.path()), Vec::<String>::new());
}

#[test]
fn a_deep_tree_does_not_lock_its_owner_out_after_a_restart() {
    let mut site = Site::new(&[("alice", None)]);
    // Through the protocol a path is capped at 1024 bytes, so users cannot
    // build this; someone with a shell on the server can. Twenty 255-byte
    // folders, one inside the other (over PATH_MAX as a joined path), then
    // a file in the last, made with descriptors as a shell user's tools do.
    use rustix::fs::{Mode, OFlags, mkdirat, openat};
    let name = "x".repeat(255);
    let mut dir = openat(
        rustix::fs::CWD,
        site.home("alice").as_path(),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .expect("open home");
    for _ in 0..20 {
        mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).expect("mkdir");
        dir = openat(
            &dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .expect("open deeper");
    }
    let file = openat(
        &dir,
        "deep.txt",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o644),
    )
    .expect("create");
    rustix::io::write(&file, b"0123456789").expect("write");
    drop(file);
    site.restart();
    let mut c = site.raw("alice");
    // Twenty folders and a 10-byte file, a block each at least.
    let used = raw_quota(&mut c).used;
    assert_eq!(used, disk_bytes(&site.home("alice")));
    assert!(used >= 20 * BLOCK + file_charge(10), "{used}");
    drop(c);

    // After a restart the user must still be able to log in, with the
    // same figures.
    site.restart();
    let mut c = site.server.raw();
    c.hello();
    let reply = c.login("alice", &password("alice"));
    assert!(
        matches!(reply, Reply::LoginOk { .. }),
        "alice cannot log in after a restart: {reply:?}"
    );
    assert_eq!(raw_quota(&mut c).used, used);
}
