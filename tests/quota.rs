//! Quotas no user can overshoot: the three attacks of issue 11, each
//! against the real server. The physical criterion: what the home really
//! occupies (allocated blocks, as `du -s -B1` counts them) never exceeds
//! the quota by more than one chunk, and the figure the server shows
//! equals a recount.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ftpd::proto::{CHUNK_SIZE, QuotaInfo, Reply, Request};
use ftpd::usage::disk_usage;

use crate::util::{DataDir, Raw, TestServer};

const PW: &str = "pw";

/// `du -s -B1`: the blocks allocated under `dir`, `dir` itself included.
fn du(dir: &Path) -> u64 {
    let meta = std::fs::symlink_metadata(dir).expect("lstat");
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            total += du(&entry.expect("entry").path());
        }
    }
    total
}

struct Site {
    data: DataDir,
    server: TestServer,
}

impl Site {
    fn new(quota: &str) -> Site {
        let data = DataDir::new();
        data.add_user("alice", PW, Some(quota));
        std::fs::create_dir_all(data.home("alice")).expect("home");
        let server = TestServer::start(&data, &[]);
        Site { data, server }
    }

    fn session(&self) -> Raw {
        let mut c = self.server.raw();
        c.hello();
        match c.login("alice", PW) {
            Reply::LoginOk { .. } => c,
            other => panic!("login: {other:?}"),
        }
    }

    fn quota(&self) -> QuotaInfo {
        match self.session().call(&Request::Quota) {
            Reply::Quota(q) => q,
            other => panic!("{other:?}"),
        }
    }

    /// With every session settled: the figure equals a recount and the
    /// disk holds no more than the quota and a chunk.
    fn assert_exact(&self, what: &str) {
        let home = self.data.home("alice");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let q = self.quota();
            let recount = disk_usage(&home).expect("recount");
            if (q.used, q.reserved) == (recount, 0) {
                let on_disk = du(&home);
                assert!(
                    on_disk <= q.limit + CHUNK_SIZE as u64,
                    "{what}: {on_disk} bytes on disk under a quota of {}",
                    q.limit
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: server says {q:?}, recount {recount}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn put_ok(c: &mut Raw, path: &str, bytes: &[u8]) {
    match c.upload(path, bytes) {
        Reply::PutDone { .. } => {}
        other => panic!("put {path}: {other:?}"),
    }
}

/// Fills the home with 1 MiB files until the server refuses one; returns
/// how many it took.
fn fill(site: &Site) -> usize {
    let mut c = site.session();
    let block = vec![7u8; 1 << 20];
    for i in 0..10_000 {
        match c.upload(&format!("/fill{i}"), &block) {
            Reply::PutDone { .. } => {}
            Reply::Error {
                code: ftpd::proto::ErrorCode::QuotaExceeded,
                ..
            } => return i,
            other => panic!("fill {i}: {other:?}"),
        }
    }
    panic!("the quota never ran out");
}

#[test]
fn concurrent_removes_and_renames_keep_the_figure_exact() {
    const PAIRS: usize = 30;
    const ROUNDS: usize = 6;
    let site = Site::new("30M");
    let big = vec![1u8; 256 * 1024];
    let mut setup = site.session();
    let barrier = Arc::new(Barrier::new(PAIRS + 1));
    let mut workers = Vec::new();
    for j in 0..PAIRS {
        // One thread per pair sends both requests back to back, so the
        // server gets them together and its helpers run them side by side.
        let (mut remover, mut mover) = (site.session(), site.session());
        let barrier = Arc::clone(&barrier);
        workers.push(std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                barrier.wait(); // files in place
                remover.send(&Request::Remove {
                    path: format!("/t{j}"),
                });
                mover.send(&Request::Rename {
                    from: format!("/e{j}"),
                    to: format!("/t{j}"),
                });
                // Either may lose the race; what matters is the figure.
                let _ = (remover.recv(), mover.recv());
                barrier.wait(); // round over
            }
        }));
    }
    for round in 0..ROUNDS {
        for j in 0..PAIRS {
            put_ok(&mut setup, &format!("/t{j}"), &big);
            put_ok(&mut setup, &format!("/e{j}"), b"");
        }
        barrier.wait();
        barrier.wait();
        site.assert_exact(&format!("after round {round}"));
    }
    for w in workers {
        w.join().expect("worker");
    }
    drop(setup);
    let n = fill(&site);
    assert!(n <= 30, "{n} MiB stored under a 30 MiB quota");
    site.assert_exact("filled up");
}

#[test]
fn a_deleted_file_still_being_downloaded_stays_charged() {
    let site = Site::new("10M");
    let file = vec![3u8; 9 << 20];
    let mut owner = site.session();
    put_ok(&mut owner, "/big", &file);
    // A reader that starts the download and then reads nothing more: the
    // server holds the file open.
    let mut reader = Raw::connect_tiny_window(site.server.addr);
    reader.hello();
    assert!(matches!(reader.login("alice", PW), Reply::LoginOk { .. }));
    reader.send(&Request::GetStart {
        path: "/big".into(),
        offset: 0,
        prefix_crc: 0,
    });
    assert!(matches!(reader.recv(), Some(Reply::GetReady { .. })));
    assert!(matches!(
        owner.call(&Request::Remove {
            path: "/big".into()
        }),
        Reply::Ok
    ));
    let q = site.quota();
    assert!(
        q.used >= 9 << 20,
        "a file still being read is free after its delete: {q:?}"
    );
    // So the space it still takes cannot be handed out again.
    match owner.upload("/more", &vec![4u8; 2 << 20]) {
        Reply::Error { code, message } => {
            assert_eq!(code, ftpd::proto::ErrorCode::QuotaExceeded, "{message}")
        }
        other => panic!("a 2 MiB upload next to a pinned 9 MiB file: {other:?}"),
    }
    // Once the download ends, the blocks are free, and so is the quota.
    // (A reset, so the server hears of it at once rather than at its next
    // zero-window probe.)
    rustix::net::sockopt::set_socket_linger(&reader.stream, Some(Duration::ZERO)).expect("linger");
    drop(reader);
    site.assert_exact("after the download ended");
    assert!(site.quota().used < 1 << 20, "{:?}", site.quota());
    put_ok(&mut owner, "/again", &file);
    site.assert_exact("after a new upload");
}

#[test]
fn empty_files_and_folders_are_not_free() {
    let tiny = Site::new("1");
    let mut c = tiny.session();
    match c.call(&Request::Mkdir { path: "/d".into() }) {
        Reply::Error { code, .. } => assert_eq!(code, ftpd::proto::ErrorCode::QuotaExceeded),
        other => panic!("mkdir under a 1-byte quota: {other:?}"),
    }
    match c.upload("/empty", b"") {
        Reply::Error { code, .. } => assert_eq!(code, ftpd::proto::ErrorCode::QuotaExceeded),
        other => panic!("an empty upload under a 1-byte quota: {other:?}"),
    }
    tiny.assert_exact("1-byte quota");

    // Folders with the longest names, until the quota says no.
    let site = Site::new("256K");
    let mut c = site.session();
    let mut made = 0;
    for i in 0..1000 {
        let name = format!("/{i:0>250}");
        match c.call(&Request::Mkdir { path: name }) {
            Reply::Ok => made += 1,
            Reply::Error {
                code: ftpd::proto::ErrorCode::QuotaExceeded,
                ..
            } => break,
            other => panic!("mkdir {i}: {other:?}"),
        }
    }
    assert!(made < 64, "{made} folders under a 256 KiB quota");
    for i in 0..200 {
        if let Reply::Error { code, .. } = c.upload(&format!("/e{i}"), b"") {
            assert_eq!(code, ftpd::proto::ErrorCode::QuotaExceeded);
            break;
        }
        assert!(i < 64, "empty files keep coming under a 256 KiB quota");
    }
    site.assert_exact("folders and empty files");
}

#[test]
fn a_limit_on_files_and_folders_holds_and_shows() {
    let data = DataDir::new();
    data.add_user("alice", PW, Some("10M"));
    let out = data
        .admin(&["user", "quota", "alice", "--max-files", "3"])
        .output()
        .unwrap();
    crate::util::assert_success(&out, "ftpd user quota --max-files");
    let server = TestServer::start(&data, &[]);
    let site = Site { data, server };
    let mut c = site.session();
    assert!(matches!(
        c.call(&Request::Mkdir { path: "/a".into() }),
        Reply::Ok
    ));
    put_ok(&mut c, "/a/f", b"x");
    // The partial-uploads folder is an entry too: three are used now.
    match c.call(&Request::Mkdir { path: "/b".into() }) {
        Reply::Error { code, message } => {
            assert_eq!(code, ftpd::proto::ErrorCode::QuotaExceeded);
            assert!(message.contains("3 files and folders"), "{message}");
        }
        other => panic!("a fourth entry under a limit of 3: {other:?}"),
    }
    match c.upload("/g", b"y") {
        Reply::Error { code, .. } => assert_eq!(code, ftpd::proto::ErrorCode::QuotaExceeded),
        other => panic!("a new file past the limit: {other:?}"),
    }
    // An upload's partial is an entry while it runs, even one that will
    // replace a file: at the limit, that is refused too.
    assert!(matches!(c.upload("/a/f", b"xyz"), Reply::Error { .. }));
    let q = site.quota();
    assert_eq!((q.files, q.max_files), (3, Some(3)), "{q:?}");
    let shown = site.server.ok("alice", PW, &["quota"]);
    assert!(shown.contains("files      3 of 3"), "{shown}");
    let listed = site.data.admin(&["user", "list"]).output().unwrap();
    assert!(crate::util::stdout(&listed).contains("3/3"), "{listed:?}");
    site.assert_exact("at the files limit");
    // Room again once something goes.
    assert!(matches!(
        c.call(&Request::Rmdir { path: "/a".into() }),
        Reply::Error { .. }
    ));
    assert!(matches!(
        c.call(&Request::Remove {
            path: "/a/f".into()
        }),
        Reply::Ok
    ));
    put_ok(&mut c, "/a/f", b"xyz");
    site.assert_exact("after making room");
}
