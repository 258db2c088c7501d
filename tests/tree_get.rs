//! Whole trees: `get -r`, several sources, remote patterns and `rm -r`,
//! against the real server (trees built directly in the user's home on
//! disk) and against a fake server that sends hostile names.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ftpd::proto::EntryKind;

use crate::util::fake::{FakeServer, FakeTree, entry};
use crate::util::relay::CutRelay;
use crate::util::{self, DataDir, TestServer, assert_success, make_file, run_with_stdin};

const PW: &str = "pw-tree";

struct Env {
    data: DataDir,
    server: TestServer,
    /// Where ftpc runs and downloads go (tmpfs when there is one: a
    /// download syncs every file, which an ext4 test disk makes slow).
    local: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let data = DataDir::new();
        data.add_user("alice", PW, Some("1G"));
        let server = TestServer::start(&data, &[]);
        Env {
            data,
            server,
            local: local_tempdir(),
        }
    }

    fn home(&self) -> PathBuf {
        self.data.home("alice")
    }

    fn ftpc(&self, args: &[&str]) -> Output {
        self.server
            .ftpc_cmd("alice", PW, args)
            .current_dir(self.local.path())
            .output()
            .expect("run ftpc")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.ftpc(args);
        assert_success(&out, &format!("ftpc {}", args.join(" ")));
        out
    }

    /// The summary line of a run without `--quiet`.
    fn summary(&self, args: &[&str]) -> String {
        let out = self
            .server
            .ftpc_cmd_loud("alice", PW, args)
            .current_dir(self.local.path())
            .output()
            .expect("run ftpc");
        assert_success(&out, &format!("ftpc {}", args.join(" ")));
        let err = util::stderr(&out);
        err.lines()
            .find(|l| l.starts_with("received "))
            .unwrap_or_else(|| panic!("no summary line in: {err}"))
            .to_owned()
    }

    fn local(&self, rel: &str) -> PathBuf {
        self.local.path().join(rel)
    }

    fn quota_used(&self) -> (String, String) {
        let text = util::stdout(&self.ok(&["quota"]));
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        (field("used"), field("files"))
    }
}

fn local_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("tempdir")
}

/// Every file, folder and link below `top`: relative path to what it is
/// ("dir", "link", or the file's bytes).
fn snapshot(top: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![top.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let path = e.path();
            let rel = path
                .strip_prefix(top)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let kind = e.file_type().expect("file type");
            if kind.is_symlink() {
                all.insert(rel, b"link".to_vec());
            } else if kind.is_dir() {
                all.insert(rel, b"dir".to_vec());
                stack.push(path);
            } else {
                all.insert(rel, fs::read(&path).expect("read"));
            }
        }
    }
    all
}

fn set_mtime(path: &Path, secs: u64) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

/// A tree with nested and empty folders, empty files, names with spaces
/// and non-ASCII letters, a bigger file, hundreds of small ones and a
/// symlink to a secret outside the home. Returns the secret's path.
fn build_tree(top: &Path, outside: &Path) -> PathBuf {
    fs::create_dir_all(top.join("a/b/c")).unwrap();
    fs::create_dir_all(top.join("empty folder")).unwrap();
    fs::create_dir_all(top.join("många filer")).unwrap();
    fs::write(top.join("a/b/c/empty"), "").unwrap();
    fs::write(top.join("a/with space.txt"), "spaced").unwrap();
    fs::write(top.join("a/b/Ünïcödé ✓.txt"), "unicode").unwrap();
    make_file(&top.join("a/big.bin"), 3 * 1024 * 1024 + 17, 7);
    for i in 0..300 {
        make_file(
            &top.join(format!("många filer/f{i:03}")),
            100 + i * 13,
            i as u64,
        );
    }
    let secret = outside.join("secret.txt");
    fs::write(&secret, "SECRET").unwrap();
    symlink(&secret, top.join("a/link to secret")).unwrap();
    secret
}

#[test]
fn a_tree_comes_down_whole_exact_and_with_the_servers_times() {
    let env = Env::new();
    let outside = tempfile::tempdir().unwrap();
    let top = env.home().join("tree");
    build_tree(&top, outside.path());
    set_mtime(&top.join("a/with space.txt"), 1_600_000_000);

    let summary = env.summary(&["get", "-r", "tree"]);
    let mut want = snapshot(&top);
    assert_eq!(want.remove("a/link to secret"), Some(b"link".to_vec()));
    assert_eq!(snapshot(&env.local("tree")), want, "the tree differs");
    assert!(summary.starts_with("received 304 files ("), "{summary}");
    assert!(
        summary.contains(" 0 skipped (unchanged), 0 failed, crc32 ok"),
        "{summary}"
    );
    assert_eq!(
        mtime(&env.local("tree/a/with space.txt")),
        UNIX_EPOCH + Duration::from_secs(1_600_000_000)
    );
    // The wire carries whole seconds.
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        secs(mtime(&env.local("tree/a/big.bin"))),
        secs(mtime(&top.join("a/big.bin")))
    );

    // `get -r SRC DEST`: DEST holds SRC's contents.
    env.ok(&["get", "-r", "/tree/a", "copy of a"]);
    assert_eq!(
        fs::read(env.local("copy of a/b/Ünïcödé ✓.txt")).unwrap(),
        b"unicode"
    );
    assert!(env.local("copy of a/b/c/empty").is_file());
}

#[test]
fn a_rerun_skips_what_is_identical_and_fetches_a_same_size_same_time_change() {
    let env = Env::new();
    let outside = tempfile::tempdir().unwrap();
    let top = env.home().join("tree");
    build_tree(&top, outside.path());
    env.ok(&["get", "-r", "tree"]);
    let inode = |rel: &str| fs::metadata(env.local(rel)).unwrap().ino();
    let before = inode("tree/a/big.bin");

    let summary = env.summary(&["get", "-r", "tree"]);
    assert!(
        summary.starts_with("received 0 files (0 B) in "),
        "{summary}"
    );
    assert!(
        summary.contains(" 304 skipped (unchanged), 0 failed"),
        "{summary}"
    );
    assert_eq!(
        inode("tree/a/big.bin"),
        before,
        "a skipped file was rewritten"
    );

    // Changed in place: same size, same modification time.
    let changed = top.join("många filer/f007");
    let old = fs::metadata(&changed).unwrap();
    let mut bytes = fs::read(&changed).unwrap();
    bytes[3] ^= 0x55;
    fs::write(&changed, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&changed)
        .unwrap()
        .set_modified(old.modified().unwrap())
        .unwrap();
    assert_eq!(fs::metadata(&changed).unwrap().len(), old.len());

    let summary = env.summary(&["get", "-r", "tree"]);
    assert!(summary.starts_with("received 1 file ("), "{summary}");
    assert!(summary.contains(" 303 skipped (unchanged)"), "{summary}");
    assert_eq!(fs::read(env.local("tree/många filer/f007")).unwrap(), bytes);
}

#[test]
fn a_tree_cut_off_part_way_resumes_to_identical() {
    let env = Env::new();
    let top = env.home().join("tree");
    fs::create_dir_all(top.join("small")).unwrap();
    make_file(&top.join("big.bin"), 8 * 1024 * 1024, 3);
    for i in 0..60 {
        make_file(&top.join(format!("small/s{i}")), 5000 + i, i as u64);
    }
    let relay = CutRelay::start(env.server.addr, 3 * 1024 * 1024);
    let trust = env.server.trust_args();
    let mut trust: Vec<&str> = trust.iter().map(String::as_str).collect();
    if env.server.tls() {
        // The relay's address is not the one the pinned key belongs to.
        trust = util::TRUST_FIRST_CONTACT.to_vec();
    }
    let out = util::ftpc_cmd_to(relay.addr, &trust, "alice", PW, &["get", "-r", "tree"])
        .current_dir(env.local.path())
        .output()
        .expect("run ftpc");
    assert_eq!(out.status.code(), Some(3), "{}", util::stderr(&out));
    assert_ne!(
        snapshot(&env.local("tree")),
        snapshot(&top),
        "the cut came too late to test anything"
    );

    env.ok(&["get", "-r", "tree"]);
    assert_eq!(snapshot(&env.local("tree")), snapshot(&top));
}

#[test]
fn rm_r_removes_a_tree_its_links_not_their_targets_and_frees_the_quota() {
    let env = Env::new();
    let outside = tempfile::tempdir().unwrap();
    let top = env.home().join("tree");
    let secret = build_tree(&top, outside.path());
    symlink(outside.path(), top.join("a/b/to outside")).unwrap();
    fs::write(env.home().join("kept.txt"), "kept").unwrap();
    // Counted at the start: built on disk, the tree must be recounted.
    let mut env = env;
    env.server.kill();
    env.server = TestServer::start(&env.data, &[]);
    let (used_before, files_before) = env.quota_used();
    assert_ne!(files_before, "1");

    let out = env.ftpc(&["rm", "-r", "/"]);
    assert_eq!(out.status.code(), Some(5), "{}", util::stderr(&out));
    assert!(
        util::stderr(&out).contains("whole home"),
        "{}",
        util::stderr(&out)
    );
    assert!(top.is_dir());

    env.ok(&["rm", "-r", "tree"]);
    assert!(!top.exists());
    assert_eq!(fs::read(&secret).unwrap(), b"SECRET");
    let (used_after, files_after) = env.quota_used();
    assert_eq!(files_after, "1", "only kept.txt is left");
    assert_ne!(used_after, used_before);

    // The figures the removal kept equal a recount at the next start.
    env.server.kill();
    env.server = TestServer::start(&env.data, &[]);
    assert_eq!(env.quota_used(), (used_after, files_after));
}

#[test]
fn a_folder_over_the_listing_cap_comes_down_whole() {
    let env = Env::new();
    let big = env.home().join("big");
    fs::create_dir(&big).unwrap();
    let count = ftpd::proto::MAX_LIST_ENTRIES + 700;
    for i in 0..count {
        fs::File::create(big.join(format!("{i:05}"))).unwrap();
    }
    env.ok(&["get", "-r", "big"]);
    assert_eq!(fs::read_dir(env.local("big")).unwrap().count(), count);
}

#[test]
fn several_sources_and_patterns() {
    let env = Env::new();
    let home = env.home();
    fs::create_dir_all(home.join("docs/sub")).unwrap();
    fs::write(home.join("docs/a.txt"), "A").unwrap();
    fs::write(home.join("docs/b.txt"), "B").unwrap();
    fs::write(home.join("docs/c.log"), "C").unwrap();
    fs::write(home.join("docs/.hidden.txt"), "H").unwrap();
    fs::write(home.join("docs/sub/d.txt"), "D").unwrap();

    env.ok(&["get", "docs/a.txt", "docs/c.log", "out"]);
    assert_eq!(snapshot(&env.local("out")).len(), 2);
    assert_eq!(fs::read(env.local("out/c.log")).unwrap(), b"C");

    env.ok(&["get", "-r", "docs/*.txt", "docs/sub", "out2"]);
    let got: Vec<String> = snapshot(&env.local("out2")).into_keys().collect();
    assert_eq!(got, ["a.txt", "b.txt", "sub", "sub/d.txt"]);

    let listed = util::stdout(&env.ok(&["ls", "docs/?.txt"]));
    assert!(
        listed.contains("a.txt") && listed.contains("b.txt"),
        "{listed}"
    );
    assert!(!listed.contains("c.log"), "{listed}");

    let out = env.ftpc(&["get", "docs/*.pdf", "none"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        util::stderr(&out).contains("no match for \"docs/*.pdf\""),
        "{}",
        util::stderr(&out)
    );
    assert!(!env.local("none").exists());

    // A folder among several sources without -r fails alone.
    let out = env.ftpc(&["get", "docs/a.txt", "docs/sub", "out3"]);
    assert_eq!(out.status.code(), Some(1), "{}", util::stderr(&out));
    assert!(
        util::stderr(&out).contains("use get -r"),
        "{}",
        util::stderr(&out)
    );
    assert_eq!(fs::read(env.local("out3/a.txt")).unwrap(), b"A");

    env.ok(&["rm", "docs/*.log"]);
    assert!(!home.join("docs/c.log").exists());
    assert!(home.join("docs/a.txt").exists());
}

#[test]
fn the_shell_runs_get_r_and_rm_r() {
    let env = Env::new();
    fs::create_dir_all(env.home().join("t/u")).unwrap();
    fs::write(env.home().join("t/u/f"), "F").unwrap();
    let cmd = env.server.ftpc_cmd("alice", PW, &["shell"]);
    let mut cmd = cmd;
    cmd.current_dir(env.local.path());
    let out = run_with_stdin(cmd, "get -r t local\nrm -r t\nls\n");
    assert_success(&out, "ftpc shell");
    assert_eq!(fs::read(env.local("local/u/f")).unwrap(), b"F");
    assert!(!env.home().join("t").exists());
}

/// What a hostile server's names did: the local target's contents, and
/// the whole folder around it (nothing may land beside the target).
#[test]
fn hostile_names_never_write_outside_the_target() {
    let mut entries = vec![];
    for bad in [
        "../escaped",
        "/etc/absolute",
        "a/b",
        "..",
        ".",
        "",
        "nul\0byte",
    ] {
        entries.push(entry(bad, EntryKind::File, 3));
    }
    entries.push(entry("../up", EntryKind::Dir, 0));
    entries.push(entry("ok.txt", EntryKind::File, 2));
    entries.push(entry("dup", EntryKind::File, 3));
    entries.push(entry("dup", EntryKind::File, 4));
    entries.push(entry("Case", EntryKind::File, 1));
    entries.push(entry("case", EntryKind::File, 1));
    entries.push(entry("linked", EntryKind::Dir, 0));
    entries.push(entry("planted", EntryKind::File, 4));
    let mut tree = FakeTree::default()
        .folder("t", entries)
        .folder("t/linked", vec![entry("inside", EntryKind::File, 4)])
        .file("t/ok.txt", b"ok")
        .file("t/dup", b"one")
        .file("t/Case", b"C")
        .file("t/case", b"c")
        .file("t/linked/inside", b"EVIL")
        .file("t/planted", b"EVIL");
    for bad in ["t/../escaped", "t//etc/absolute", "t/a/b", "t/..", "t/."] {
        tree = tree.file(bad, b"bad");
    }
    let fake = FakeServer::serving(tree.clone());

    let work = local_tempdir();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("victim"), "SAFE").unwrap();
    let target = work.path().join("t");
    fs::create_dir(&target).unwrap();
    // Links planted inside the target beforehand are never followed.
    symlink(outside.path(), target.join("linked")).unwrap();
    symlink(outside.path().join("victim"), target.join("planted")).unwrap();

    let out = fake.ftpc(work.path(), &["get", "-r", "t"]);
    let err = util::stderr(&out);
    let seen = fake.finish();
    // A hostile name is a protocol error (exit 3), the most serious here.
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("the server sent a name with \"/\""), "{err}");
    assert!(err.contains("more failed"), "{err}");

    let names: Vec<String> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["t"], "something landed beside the target");
    let got = snapshot(&target);
    assert_eq!(got.get("ok.txt").map(Vec::as_slice), Some(&b"ok"[..]));
    assert_eq!(got.get("dup").map(Vec::as_slice), Some(&b"one"[..]));
    assert_eq!(got.get("Case").map(Vec::as_slice), Some(&b"C"[..]));
    assert_eq!(got.get("case").map(Vec::as_slice), Some(&b"c"[..]));
    assert_eq!(got.get("linked").map(Vec::as_slice), Some(&b"link"[..]));
    assert_eq!(got.get("planted").map(Vec::as_slice), Some(&b"link"[..]));
    assert_eq!(got.len(), 6, "{:?}", got.keys());
    assert_eq!(snapshot(outside.path()).len(), 1);
    assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"SAFE");
    // The bad names were never even asked for.
    assert!(
        !seen.iter().any(|r| matches!(r,
            ftpd::proto::Request::GetStart { path, .. } if path.contains("..") || path.contains("//"))),
        "{seen:?}"
    );
}

#[test]
fn get_starts_pipelined_behind_a_streaming_download_are_answered_in_order() {
    let env = Env::new();
    let home = env.home();
    make_file(&home.join("big"), 4 * 1024 * 1024 + 3, 1);
    let mut names = vec!["big".to_owned()];
    for i in 0..20 {
        make_file(&home.join(format!("s{i}")), 1000 + i, i as u64);
        names.push(format!("s{i}"));
    }
    let mut raw = env.server.raw();
    raw.hello();
    assert!(matches!(
        raw.login("alice", PW),
        ftpd::proto::Reply::LoginOk { .. }
    ));
    // Every request in one write: all but the first arrive while the big
    // file streams.
    let mut bytes = Vec::new();
    for name in &names {
        let req = ftpd::proto::Request::GetStart {
            path: name.clone(),
            offset: 0,
            prefix_crc: 0,
        };
        bytes.extend(ftpd::frame::encode(&req).unwrap());
    }
    raw.send_raw(&bytes).unwrap();
    for name in &names {
        let want = fs::read(home.join(name)).unwrap();
        match raw.recv() {
            Some(ftpd::proto::Reply::GetReady { size, offset: 0 }) => {
                assert_eq!(size, want.len() as u64, "{name}")
            }
            other => panic!("{name}: expected GetReady, got {other:?}"),
        }
        let mut got = Vec::new();
        loop {
            match raw.recv() {
                Some(ftpd::proto::Reply::Chunk(data)) => got.extend_from_slice(data),
                Some(ftpd::proto::Reply::GetDone { crc32 }) => {
                    assert_eq!(crc32, crc32fast::hash(&want), "{name}");
                    break;
                }
                other => panic!("{name}: expected Chunk or GetDone, got {other:?}"),
            }
        }
        assert!(got == want, "{name}: the bytes differ");
    }
}

#[test]
fn a_long_removal_reports_progress_then_ok() {
    let env = Env::new();
    let top = env.home().join("many");
    fs::create_dir(&top).unwrap();
    for i in 0..2000 {
        fs::File::create(top.join(format!("f{i}"))).unwrap();
    }
    let mut raw = env.server.raw();
    raw.hello();
    raw.login("alice", PW);
    raw.send(&ftpd::proto::Request::RemoveTree {
        path: "/many".into(),
    });
    let mut progress = Vec::new();
    loop {
        match raw.recv() {
            Some(ftpd::proto::Reply::Removing { entries }) => progress.push(entries),
            Some(ftpd::proto::Reply::Ok) => break,
            other => panic!("expected Removing or Ok, got {other:?}"),
        }
    }
    assert!(!progress.is_empty(), "no progress for 2001 entries");
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert!(!top.exists());
    // The session goes on.
    assert!(matches!(
        raw.call(&ftpd::proto::Request::Ping),
        ftpd::proto::Reply::Pong
    ));
}
