//! The home jail, directories and quotas: every path resolves inside the
//! user's home, which appears as `/`; symlinks and special files are shown
//! but never followed or opened; commands answer in the user's terms and
//! never name a server path; quota figures stay equal to the bytes on disk.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ftpd::jail::{Jail, PARTIAL_DIR, VPath};
use ftpd::proto::{
    Entry, EntryKind, ErrorCode, LIST_BATCH, MAX_LIST_ENTRIES, QuotaInfo, Reply, Request,
};
use ftpd::size::format_size;

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
        assert_eq!(
            out.status.code(),
            Some(code),
            "ftpc {args:?}\nstdout: {}\nstderr: {err}",
            util::stdout(&out)
        );
        assert!(
            err.contains(needle),
            "ftpc {args:?}: stderr lacks {needle:?}: {err}"
        );
        self.assert_no_leak(&err);
        self.assert_no_leak(&util::stdout(&out));
        err
    }

    /// A logged-in raw session.
    fn raw(&self, user: &str) -> Raw {
        let mut c = Raw::connect(self.server.addr);
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
        assert!(!text.contains("homes/"), "server layout revealed: {text}");
        let tmp = std::env::temp_dir();
        let tmp = tmp.to_str().expect("utf-8 path").trim_end_matches('/');
        assert!(
            !text.contains(&format!("{tmp}/")),
            "a temporary (server) path revealed: {text}"
        );
    }
}

/// Sends `req`, expects an error with `code` whose message contains
/// `needle`; returns the message.
fn raw_refused(c: &mut Raw, req: &Request, code: ErrorCode, needle: &str) -> String {
    match c.call(req) {
        Reply::Error {
            code: got,
            message,
        } => {
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

/// Bytes in regular files under `dir` (hidden ones too), without following
/// symlinks: what a quota should count.
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for item in fs::read_dir(dir).expect("read_dir") {
        let item = item.expect("dir entry");
        let meta = fs::symlink_metadata(item.path()).expect("lstat");
        if meta.is_dir() {
            total += disk_bytes(&item.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
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
    let file = fs::File::options()
        .write(true)
        .open(path)
        .expect("open to set mtime");
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

/// One `ls` line split into (type letter, size, "date time", name).
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
    let date = field();
    let time = field();
    (kind, size, format!("{date} {time}"), rest[1..].to_owned())
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
    assert_eq!(message, "no such file or directory: /etc/passwd");
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

    // `..` beyond the top resolves inside the home: not found, not /etc.
    let err = site.refused(
        "alice",
        &["get", "../../etc/passwd"],
        5,
        "no such file or directory: /etc/passwd",
    );
    assert!(!err.contains("root:"), "{err}");
    assert!(!site.local("passwd").exists());
    assert!(!site.local("passwd.part").exists());
    site.refused(
        "alice",
        &["get", "../bob/bob.txt"],
        5,
        "no such file or directory: /bob/bob.txt",
    );
    site.refused(
        "alice",
        &["ls", "../../../homes/bob"],
        5,
        "no such file or directory: /homes/bob",
    );
    assert_alive(&mut canary);
    for path in ["/../..", "docs/../../..", "/./docs/./..", "../../../../../.."] {
        let out = site.ok("alice", &["ls", path]);
        let listed = ls_map(&out);
        assert_eq!(
            listed.keys().collect::<Vec<_>>(),
            ["docs"],
            "ls {path}: {out}"
        );
    }
    let out = site.ok("alice", &["stat", "docs/../../../docs/a.txt"]);
    assert!(out.contains("size:     5 bytes"), "{out}");

    // Backslashes are no separators and are refused outright.
    for path in [r"a\..\b", r"..\..\etc\passwd", r"docs\a.txt", r"\"] {
        site.refused("alice", &["stat", path], 5, "path contains a backslash");
        assert_alive(&mut canary);
    }
    site.refused(
        "alice",
        &["mkdir", r"x\..\..\evil"],
        5,
        "path contains a backslash",
    );

    // A 5000-byte name, a 300-byte one, a path 65 levels deep.
    let long = "n".repeat(5000);
    for cmd in ["mkdir", "stat", "ls", "rm", "rmdir", "get"] {
        site.refused("alice", &[cmd, &long], 5, "path too long");
    }
    site.refused("alice", &["mv", "docs/a.txt", &long], 5, "path too long");
    let local = site.local_file("up.txt", b"up");
    site.refused("alice", &["put", &local, &long], 5, "path too long");
    let name300 = "m".repeat(300);
    site.refused("alice", &["mkdir", &name300], 5, "name too long");
    let deep = "d/".repeat(65);
    site.refused("alice", &["mkdir", &deep], 5, "path too deep");
    // 64 levels of `..` cancel 64 names: that one is fine, and stays home.
    let cancelled = format!("{}{}", "d/".repeat(64), "../".repeat(64));
    assert_eq!(site.ok("alice", &["ls", &cancelled]), site.ok("alice", &["ls"]));
    assert_alive(&mut canary);

    // Control characters never make it into a name.
    for name in ["a\nb", "\x1b[31mred", "tab\there", "bell\x07", "c1\u{9b}x"] {
        site.refused(
            "alice",
            &["mkdir", name],
            5,
            "path contains a control character",
        );
    }

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
    for name in odd {
        site.ok("alice", &["mkdir", "--", name]);
        site.ok("alice", &["put", &local, &format!("{name}/f.txt")]);
        assert!(
            home.join(name).is_dir(),
            "{name:?} is not a folder in the home"
        );
        assert_eq!(fs::read(home.join(name).join("f.txt")).unwrap(), b"payload");
        let out = site.ok("alice", &["stat", "--", &format!("{name}/f.txt")]);
        assert!(out.contains("size:     7 bytes"), "{name:?}: {out}");
    }
    // The precomposed é is another name than e + combining acute.
    site.refused(
        "alice",
        &["stat", "\u{e9}t\u{e9}"],
        5,
        "no such file or directory",
    );
    // They stay names in the home: nothing appeared next to it.
    assert_eq!(dir_names(&site.data.path().join("homes")), ["alice"]);
    let mut on_disk: Vec<String> = dir_names(&home)
        .into_iter()
        .filter(|n| n != PARTIAL_DIR)
        .collect();
    let mut expected: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
    on_disk.sort();
    expected.sort();
    assert_eq!(on_disk, expected);

    // The raw listing carries the names exactly; `ls` neutralises the
    // bidi override so it cannot disguise a name on a terminal.
    let mut c = site.raw("alice");
    let listing = raw_list(&mut c, "/").unwrap();
    let mut listed: Vec<String> = names(&listing.entries)
        .into_iter()
        .map(String::from)
        .collect();
    listed.sort();
    assert_eq!(listed, expected);
    let out = site.ok("alice", &["ls"]);
    assert!(!out.contains('\u{202e}'), "{out}");
    assert!(out.contains("evil?txt.exe"), "{out}");
    assert!(out.contains("e\u{301}te\u{301}"), "{out}");
    // cd into a look-alike of `..` goes down, not up.
    assert_eq!(raw_cd(&mut c, "\u{2024}\u{2024}"), "/\u{2024}\u{2024}");
    assert_eq!(
        names(&raw_list(&mut c, "").unwrap().entries),
        ["f.txt"],
        "listing of the look-alike folder"
    );
    assert_eq!(
        raw_cd(&mut c, "/a\u{ff0f}..\u{ff0f}b"),
        "/a\u{ff0f}..\u{ff0f}b"
    );
    assert_eq!(raw_cd(&mut c, ".."), "/");
}
