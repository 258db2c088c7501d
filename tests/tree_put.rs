//! `put -r`, several sources and `mkdir -p` against the real server: the
//! tree arrives whole and exact, links are never followed, a rerun skips
//! what is identical and resends what changed, an interrupted job resumes,
//! the quota is checked up front, and an answered file survives a crash.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use ftpd::proto::{Reply, Request};

use crate::util::{DataDir, TestServer, assert_success, make_file, stderr};

const USER: &str = "tree";
const PW: &str = "tree-password";
const WAIT: Duration = Duration::from_secs(60);
const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-TREE-0123456789";

struct Site {
    data: DataDir,
    server: TestServer,
    /// The client's working folder.
    cwd: tempfile::TempDir,
}

impl Site {
    fn new(quota: Option<&str>) -> Site {
        let data = DataDir::new();
        data.add_user(USER, PW, quota);
        let server = TestServer::start(&data, &[]);
        Site {
            data,
            server,
            cwd: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn home(&self) -> PathBuf {
        self.data.home(USER)
    }

    fn local(&self, rel: &str) -> PathBuf {
        self.cwd.path().join(rel)
    }

    /// ftpc in the client's folder, with notes and the summary line.
    fn run(&self, args: &[&str]) -> Output {
        self.server
            .ftpc_cmd_loud(USER, PW, args)
            .current_dir(self.cwd.path())
            .stdin(Stdio::null())
            .output()
            .expect("run ftpc")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_success(&out, &format!("ftpc {}", args.join(" ")));
        stderr(&out)
    }
}

/// A day in the past, to the nanosecond, so a kept mtime is told from a
/// fresh one.
fn old_time(n: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000 + n, 123_456_789)
}

fn set_mtime(path: &Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .expect("set mtime");
}

/// The tree of the issue: nested and empty folders, empty files, spaces
/// and non-ASCII names, a file too big for one frame, hundreds of small
/// ones, and links pointing outside it (to a file and to a folder).
fn make_tree(root: &Path, outside: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty folder")).unwrap();
    fs::create_dir_all(root.join("many")).unwrap();
    fs::write(root.join("empty.txt"), b"").unwrap();
    fs::write(root.join("a/b/c/deep.txt"), b"deep").unwrap();
    fs::write(root.join("name with spaces.txt"), b"spaces").unwrap();
    fs::write(root.join("a/Ünïcödé ñame €.txt"), "non-ascii".as_bytes()).unwrap();
    make_file(&root.join("a/big.bin"), 3 * 1024 * 1024 + 17, 7);
    for i in 0..300u64 {
        make_file(
            &root.join(format!("many/f{i:03}.dat")),
            (i * 61 % 9000) as usize,
            i,
        );
    }
    fs::write(outside.join("secret.txt"), SECRET).unwrap();
    symlink(outside.join("secret.txt"), root.join("link-to-secret")).unwrap();
    symlink(outside, root.join("a/link-to-outside-folder")).unwrap();
    for (i, rel) in ["empty.txt", "a/b/c/deep.txt", "a/big.bin", "many/f007.dat"]
        .iter()
        .enumerate()
    {
        set_mtime(&root.join(rel), old_time(i as u64));
    }
}

/// Every regular file and folder below `root`, relative, sorted; links
/// are left out (they are never sent).
fn entries(root: &Path) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            if ft.is_dir() {
                stack.push(e.path());
                out.push((rel, true));
            } else if ft.is_file() {
                out.push((rel, false));
            }
        }
    }
    out.sort();
    out
}

/// Panics unless `remote` holds exactly `local`'s files and folders, with
/// the same bytes and modification times, and no links.
fn assert_same_tree(local: &Path, remote: &Path) {
    let (l, r) = (entries(local), entries(remote));
    assert_eq!(l, r, "the trees differ");
    for (rel, is_dir) in &l {
        let (a, b) = (local.join(rel), remote.join(rel));
        assert!(
            !fs::symlink_metadata(&b).unwrap().file_type().is_symlink(),
            "{rel} is a link on the server"
        );
        if *is_dir {
            continue;
        }
        assert!(
            fs::read(&a).unwrap() == fs::read(&b).unwrap(),
            "{rel} differs"
        );
        let (ta, tb) = (
            fs::metadata(&a).unwrap().modified().unwrap(),
            fs::metadata(&b).unwrap().modified().unwrap(),
        );
        assert_eq!(ta, tb, "{rel}: the modification time was not kept");
    }
}

/// Whether any file below `root` contains `needle`.
fn any_file_contains(root: &Path, needle: &[u8]) -> bool {
    entries(root).iter().any(|(rel, is_dir)| {
        !is_dir
            && fs::read(root.join(rel))
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
    })
}

#[test]
fn put_r_sends_the_whole_tree_and_never_follows_links() {
    let site = Site::new(None);
    let outside = tempfile::tempdir().unwrap();
    make_tree(&site.local("album"), outside.path());
    let err = site.ok(&["put", "-r", "album"]);
    assert!(
        err.contains("skipped 2 local symbolic links (never followed)"),
        "{err}"
    );
    assert!(err.contains("sent 305 files"), "{err}");
    assert!(err.contains("0 failed, crc32 ok"), "{err}");
    assert_same_tree(&site.local("album"), &site.home().join("album"));
    assert!(
        !any_file_contains(&site.home(), SECRET),
        "a link's target was sent"
    );
    assert!(!site.home().join("album/link-to-secret").exists());
    // Nothing unfinished is left behind.
    let partials = site.home().join(".ftpd-partial");
    assert!(
        fs::read_dir(&partials).map_or(true, |mut d| d.next().is_none()),
        "partials left"
    );
}

#[test]
fn a_rerun_skips_what_is_identical_and_resends_a_same_size_change() {
    let site = Site::new(None);
    let outside = tempfile::tempdir().unwrap();
    let album = site.local("album");
    make_tree(&album, outside.path());
    site.ok(&["put", "-r", "album", "backup/2026"]);
    let remote = site.home().join("backup/2026");
    assert_same_tree(&album, &remote);

    let err = site.ok(&["put", "-r", "album", "backup/2026"]);
    assert!(
        err.contains("sent 0 files (0 B)") && err.contains("305 skipped (unchanged)"),
        "{err}"
    );

    // Changed in place: same size, same modification time, other bytes.
    // Size and mtime alone would call these unchanged.
    for rel in ["many/f007.dat", "a/big.bin"] {
        let path = album.join(rel);
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[1] ^= 0x5a;
        fs::write(&path, &bytes).unwrap();
        set_mtime(&path, before);
    }
    let err = site.ok(&["put", "-r", "album", "backup/2026"]);
    assert!(
        err.contains("sent 2 files") && err.contains("303 skipped (unchanged)"),
        "{err}"
    );
    assert_same_tree(&album, &remote);
}

#[test]
fn a_put_r_killed_part_way_resumes_to_an_identical_tree() {
    let site = Site::new(None);
    let outside = tempfile::tempdir().unwrap();
    let album = site.local("album");
    make_tree(&album, outside.path());
    // A file big enough that the job is surely still running when killed.
    make_file(&album.join("a/huge.bin"), 96 * 1024 * 1024 + 5, 9);
    let mut child = site
        .server
        .ftpc_cmd(USER, PW, &["put", "-r", "album"])
        .current_dir(site.cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ftpc");
    let partials = site.home().join(".ftpd-partial");
    let deadline = Instant::now() + WAIT;
    let started = || {
        fs::read_dir(&partials).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 1024 * 1024))
        })
    };
    while !started() {
        assert!(Instant::now() < deadline, "the big upload never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "ftpc ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        site.server.wait_log("kept for resume", WAIT).is_some(),
        "the partial was not kept"
    );

    let err = site.ok(&["put", "-r", "album"]);
    assert!(err.contains("resuming at"), "{err}");
    assert_same_tree(&album, &site.home().join("album"));
}

#[test]
fn the_quota_is_checked_for_the_whole_tree_before_anything_is_sent() {
    let site = Site::new(Some("1M"));
    let tree = site.local("tree");
    fs::create_dir(&tree).unwrap();
    for i in 0..10 {
        make_file(&tree.join(format!("f{i}")), 200 * 1024, i);
    }
    let out = site.run(&["put", "-r", "tree"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("quota exceeded: the tree needs 2.0 MiB, ") && err.contains("available"),
        "{err}"
    );
    assert!(!site.home().join("tree").exists(), "something was created");
}

#[test]
fn mkdir_p_creates_missing_parents_and_accepts_an_existing_folder() {
    let site = Site::new(None);
    site.ok(&["mkdir", "-p", "x/y/z"]);
    assert!(site.home().join("x/y/z").is_dir());
    site.ok(&["mkdir", "-p", "x/y/z"]);
    site.ok(&["mkdir", "--parents", "/x/y/w"]);
    assert!(site.home().join("x/y/w").is_dir());
    fs::write(site.local("f"), b"file").unwrap();
    site.ok(&["put", "f", "x/file"]);
    let out = site.run(&["mkdir", "-p", "x/file"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("not a folder"), "{}", stderr(&out));
    let out = site.run(&["mkdir", "-p", "x/file/sub"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    // Without -p an existing folder is still an error.
    let out = site.run(&["mkdir", "x"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn several_sources_each_land_inside_the_target_under_their_own_name() {
    let site = Site::new(None);
    fs::write(site.local("one.txt"), b"one").unwrap();
    fs::write(site.local("two.txt"), b"two").unwrap();
    fs::create_dir_all(site.local("dir/sub")).unwrap();
    fs::write(site.local("dir/sub/three.txt"), b"three").unwrap();
    let err = site.ok(&["put", "-r", "one.txt", "two.txt", "dir", "target"]);
    assert!(err.contains("sent 3 files"), "{err}");
    let home = site.home();
    assert_eq!(fs::read(home.join("target/one.txt")).unwrap(), b"one");
    assert_eq!(fs::read(home.join("target/two.txt")).unwrap(), b"two");
    assert_eq!(
        fs::read(home.join("target/dir/sub/three.txt")).unwrap(),
        b"three"
    );
    // A folder needs -r.
    let out = site.run(&["put", "one.txt", "dir", "target"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("use put -r"), "{}", stderr(&out));
}

#[test]
fn one_failed_file_does_not_stop_the_others() {
    let site = Site::new(None);
    let tree = site.local("tree");
    fs::create_dir(&tree).unwrap();
    for i in 0..5 {
        fs::write(tree.join(format!("ok{i}")), format!("ok {i}")).unwrap();
    }
    fs::write(tree.join("blocked"), b"x").unwrap();
    // The target of one file is a folder on the server: refused.
    fs::create_dir_all(site.home().join("tree/blocked")).unwrap();
    let out = site.run(&["put", "-r", "tree"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("ftpc: failed: ") && err.contains("blocked"),
        "{err}"
    );
    assert!(
        err.contains("sent 5 files") && err.contains("1 failed"),
        "{err}"
    );
    for i in 0..5 {
        assert!(site.home().join(format!("tree/ok{i}")).is_file());
    }
}

#[test]
fn put_r_works_in_the_shell() {
    let site = Site::new(None);
    fs::create_dir_all(site.local("t/u")).unwrap();
    fs::write(site.local("t/u/f.txt"), b"shell").unwrap();
    let mut child = site
        .server
        .ftpc_cmd(USER, PW, &["shell"])
        .current_dir(site.cwd.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ftpc shell");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"mkdir -p in/the/shell\nput -r t in/the/shell/t\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_success(&out, "ftpc shell");
    assert_eq!(
        fs::read(site.home().join("in/the/shell/t/u/f.txt")).unwrap(),
        b"shell"
    );
}

/// One `PutSmall` over a raw session, answered; then the server is killed
/// at once: after a restart the file is there, whole.
#[test]
fn an_answered_small_file_survives_a_server_kill() {
    let data = DataDir::new();
    data.add_user(USER, PW, None);
    let mut server = TestServer::start(&data, &[]);
    let mut c = server.raw();
    c.hello();
    assert!(matches!(c.login(USER, PW), Reply::LoginOk { .. }));
    let bytes = b"acknowledged means on disk".repeat(100);
    let crc32 = crc32fast::hash(&bytes);
    for i in 0..20 {
        c.send(&Request::PutSmall {
            path: format!("f{i}"),
            mtime: Some(1_600_000_000_000_000_000),
            crc32,
            data: &bytes,
        });
    }
    for _ in 0..20 {
        match c.recv() {
            Some(Reply::PutDone { size, crc32: got }) => {
                assert_eq!((size, got), (bytes.len() as u64, crc32));
            }
            other => panic!("expected PutDone, got {other:?}"),
        }
    }
    server.kill();
    let _server = TestServer::start(&data, &[]);
    for i in 0..20 {
        let path = data.home(USER).join(format!("f{i}"));
        assert_eq!(fs::read(&path).unwrap(), bytes, "f{i}");
        let t = fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(
            t,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)
        );
    }
}

/// Replies keep the order of requests: a `Stat` sent behind a window of
/// small files is answered after all of them.
#[test]
fn a_request_behind_small_files_is_answered_after_them() {
    let data = DataDir::new();
    data.add_user(USER, PW, None);
    let server = TestServer::start(&data, &[]);
    let mut c = server.raw();
    c.hello();
    assert!(matches!(c.login(USER, PW), Reply::LoginOk { .. }));
    // Each of its own size, so the answers' order shows.
    for i in 0..150 {
        let body = "x".repeat(i + 1);
        c.send(&Request::PutSmall {
            path: format!("s{i}"),
            mtime: None,
            crc32: crc32fast::hash(body.as_bytes()),
            data: body.as_bytes(),
        });
    }
    // One damaged in transit: refused alone, in its turn.
    c.send(&Request::PutSmall {
        path: "bad".into(),
        mtime: None,
        crc32: 1,
        data: b"x",
    });
    c.send(&Request::Stat {
        path: "s149".into(),
    });
    for i in 0..150 {
        match c.recv() {
            Some(Reply::PutDone { size, .. }) => assert_eq!(size, i + 1, "answers out of order"),
            other => panic!("file {i}: expected PutDone, got {other:?}"),
        }
    }
    match c.recv() {
        Some(Reply::Error { code, .. }) => assert_eq!(code, ftpd::proto::ErrorCode::CrcMismatch),
        other => panic!("expected the CRC error, got {other:?}"),
    }
    match c.recv() {
        Some(Reply::Entry(e)) => assert_eq!(e.size, 150),
        other => panic!("expected the Stat's Entry, got {other:?}"),
    }
    assert!(!data.home(USER).join("bad").exists());
}
