//! Sessions of one user racing each other over the same names. Whatever
//! the design decides for each race, some things must hold: a download
//! either completes byte-exact with a matching CRC32 or fails cleanly; an
//! upload either publishes the complete, verified file or fails with a
//! clear error; and once every session is over, the quota figures equal a
//! recount of the home (`ftpd::usage::disk_usage`).

use std::path::Path;
use std::time::Duration;

use ftpd::jail::{Jail, PARTIAL_DIR, VPath};
use ftpd::proto::{CHUNK_SIZE, ErrorCode, Reply, Request};
use ftpd::size::format_size;
use ftpd::usage::disk_usage;

use crate::util::{self, DataDir, Raw, TestServer};

const PW: &str = "alice-pw";

struct Site {
    data: DataDir,
    server: TestServer,
}

impl Site {
    fn new() -> Site {
        let data = DataDir::new();
        data.add_user("alice", PW, None);
        std::fs::create_dir_all(data.home("alice")).expect("home");
        let server = TestServer::start(&data, &[]);
        Site { data, server }
    }

    fn home(&self) -> std::path::PathBuf {
        self.data.home("alice")
    }

    fn session(&self) -> Raw {
        let mut c = self.server.raw();
        c.hello();
        match c.login("alice", PW) {
            Reply::LoginOk { .. } => c,
            other => panic!("login: {other:?}"),
        }
    }

    /// Stores `bytes` as `name` through the server (a file written behind
    /// its back would not be in its figures).
    fn put(&self, name: &str, bytes: &[u8]) {
        let mut c = self.session();
        assert!(upload_racing(&mut c, &self.home(), name, bytes, || {}));
    }

    /// Removes `name` through the server, if it is there.
    fn rm(&self, name: &str) {
        let _ = ok(&mut self.session(), &Request::Remove { path: name.into() });
    }

    /// Once every session is over: the figures (exact, and as `ftpc quota`
    /// prints them) equal a recount of the home, nothing reserved.
    fn assert_quota_recounted(&self, what: &str) {
        let home = self.home();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let q = match self.session().call(&Request::Quota) {
                Reply::Quota(q) => q,
                other => panic!("{other:?}"),
            };
            let disk = disk_usage(&home).expect("recount");
            if (q.used, q.reserved) == (disk, 0) {
                break;
            }
            // Sessions just closed may still be settling on the server.
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: quota {q:?} vs {disk} recounted"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let shown = self.server.ok("alice", PW, &["quota"]);
        let used = shown
            .lines()
            .find_map(|l| l.strip_prefix("used"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no used line: {shown}"));
        assert_eq!(
            used,
            format_size(disk_usage(&home).expect("recount")),
            "{what}: ftpc quota says {shown}"
        );
    }
}

fn content(len: usize, seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    util::make_file(&dir.path().join("f"), len, seed);
    std::fs::read(dir.path().join("f")).expect("read")
}

/// A download started with `GetStart`: how it ended (the error's code and
/// message are there for the failure messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Got {
    Whole,
    Failed(ErrorCode, String),
    Refused(ErrorCode, String),
}

/// Starts a download of `path`, reads `first` bytes, runs `meanwhile`, then
/// reads to the end and checks it: byte-exact against `want` with a
/// matching CRC32, or a clean error reply (and the session still works).
fn download_racing(c: &mut Raw, path: &str, want: &[u8], meanwhile: impl FnOnce()) -> Got {
    let size = match c.call(&Request::GetStart {
        path: path.into(),
        offset: 0,
        prefix_crc: 0,
    }) {
        Reply::GetReady { size, offset: 0 } => size,
        Reply::Error { code, message } => return Got::Refused(code, message),
        other => panic!("{other:?}"),
    };
    assert_eq!(size, want.len() as u64);
    let mut got = Vec::new();
    let mut meanwhile = Some(meanwhile);
    let outcome = loop {
        match c.recv().expect("download reply") {
            Reply::Chunk(bytes) => {
                got.extend_from_slice(bytes);
                if got.len() >= CHUNK_SIZE
                    && let Some(f) = meanwhile.take()
                {
                    f();
                }
            }
            Reply::GetDone { crc32 } => {
                assert_eq!(got.len(), want.len(), "download ended short or long");
                assert_eq!(
                    crc32,
                    crc32fast::hash(&got),
                    "CRC32 does not match the bytes"
                );
                assert!(got == want, "the download is not the file's bytes");
                break Got::Whole;
            }
            Reply::Error { code, message } => {
                assert!(!message.is_empty());
                break Got::Failed(code, message);
            }
            other => panic!("during a download: {other:?}"),
        }
    };
    assert!(meanwhile.is_none(), "the race never ran");
    assert_eq!(c.call(&Request::Ping), Reply::Pong, "session lost");
    outcome
}

/// An upload of `data` to `path`, with `meanwhile` run after the first
/// half; checks that it either published exactly `data` or failed with a
/// message. Returns whether it published.
fn upload_racing(
    c: &mut Raw,
    home: &Path,
    path: &str,
    data: &[u8],
    meanwhile: impl FnOnce(),
) -> bool {
    match c.call(&Request::PutStart {
        path: path.into(),
        size: data.len() as u64,
        resume: false,
    }) {
        Reply::PutReady { .. } => {}
        Reply::Error { message, .. } => {
            assert!(!message.is_empty());
            return false;
        }
        other => panic!("{other:?}"),
    }
    c.send(&Request::PutFrom { offset: 0 });
    let half = data.len() / 2;
    for chunk in data[..half].chunks(CHUNK_SIZE) {
        c.send(&Request::Chunk(chunk));
    }
    // The first half is on the server's disk before the race.
    let target = VPath::resolve(&VPath::root(), path).expect("path");
    let partial = home.join(PARTIAL_DIR).join(Jail::partial_name(&target));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::fs::metadata(&partial).map(|m| m.len()).ok() != Some(half as u64) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first half never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    meanwhile();
    for chunk in data[half..].chunks(CHUNK_SIZE) {
        c.send(&Request::Chunk(chunk));
    }
    let published = match c.call(&Request::PutEnd {
        crc32: crc32fast::hash(data),
    }) {
        Reply::PutDone { size, crc32 } => {
            assert_eq!((size, crc32), (data.len() as u64, crc32fast::hash(data)));
            true
        }
        Reply::Error { message, .. } => {
            assert!(!message.is_empty());
            false
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(c.call(&Request::Ping), Reply::Pong, "session lost");
    if published {
        let on_disk = std::fs::read(home.join(path.trim_start_matches('/')));
        assert!(
            on_disk.as_deref().ok() == Some(data),
            "PutDone for {path}, but the file there is not the upload"
        );
    }
    published
}

fn ok(c: &mut Raw, req: &Request) -> Result<(), String> {
    match c.call(req) {
        Reply::Ok => Ok(()),
        Reply::Error { message, .. } => Err(message),
        other => panic!("{req:?}: {other:?}"),
    }
}

#[test]
fn a_file_removed_or_moved_during_its_download() {
    let site = Site::new();
    let body = content(2 * 1024 * 1024 + 3, 1);
    for race in ["rm", "mv"] {
        site.put("f.bin", &body);
        let mut reader = site.session();
        let mut other = site.session();
        let got = download_racing(&mut reader, "f.bin", &body, || {
            let done = match race {
                "rm" => ok(
                    &mut other,
                    &Request::Remove {
                        path: "f.bin".into(),
                    },
                ),
                _ => ok(
                    &mut other,
                    &Request::Rename {
                        from: "f.bin".into(),
                        to: "g.bin".into(),
                    },
                ),
            };
            done.unwrap_or_else(|e| panic!("{race} during a download: {e}"));
        });
        eprintln!("{race} during a download: {got:?}");
        assert!(!matches!(got, Got::Refused(..)), "{got:?}");
        drop((reader, other));
        site.rm("g.bin");
        site.assert_quota_recounted(race);
    }
}

/// Uploads a new `f.bin` over an old one while another session runs
/// `race` (rm or mv of `f.bin`).
fn replace_racing(race: &str) {
    let site = Site::new();
    let old = content(300 * 1024, 2);
    let new = content(1024 * 1024 + 9, 3);
    site.put("f.bin", &old);
    let mut writer = site.session();
    let mut other = site.session();
    let published = upload_racing(&mut writer, &site.home(), "f.bin", &new, || {
        let done = match race {
            "rm" => ok(
                &mut other,
                &Request::Remove {
                    path: "f.bin".into(),
                },
            ),
            _ => ok(
                &mut other,
                &Request::Rename {
                    from: "f.bin".into(),
                    to: "g.bin".into(),
                },
            ),
        };
        eprintln!("{race} during an upload over it: {done:?}");
    });
    eprintln!("{race}: upload published {published}");
    if site.home().join("g.bin").exists() {
        assert!(
            std::fs::read(site.home().join("g.bin")).expect("g.bin") == old,
            "the moved file is not the old one"
        );
    }
    drop((writer, other));
    site.assert_quota_recounted(race);
}

#[test]
fn a_file_removed_while_an_upload_replaces_it() {
    replace_racing("rm");
}

#[test]
fn a_file_moved_away_while_an_upload_replaces_it() {
    replace_racing("mv");
}

#[test]
fn the_folder_of_a_running_upload_removed_under_it() {
    let site = Site::new();
    ok(&mut site.session(), &Request::Mkdir { path: "d".into() }).expect("mkdir");
    let new = content(1024 * 1024, 4);
    let mut writer = site.session();
    let mut other = site.session();
    let published = upload_racing(&mut writer, &site.home(), "d/f.bin", &new, || {
        let done = ok(&mut other, &Request::Rmdir { path: "d".into() });
        eprintln!("rmdir during an upload into it: {done:?}");
    });
    eprintln!("upload into a removed folder published: {published}");
    if !published {
        assert!(!site.home().join("d/f.bin").exists());
    }
    drop((writer, other));
    site.assert_quota_recounted("rmdir");
}

#[test]
fn concurrent_rm_and_put_of_one_name() {
    let site = Site::new();
    let local = tempfile::tempdir().expect("tempdir");
    let up = local.path().join("x.bin");
    util::make_file(&up, 400 * 1024, 5);
    let body = std::fs::read(&up).expect("read");
    let up = up.to_str().expect("utf-8").to_string();
    for round in 0..8 {
        std::thread::scope(|s| {
            let mut put = site.server.ftpc_cmd("alice", PW, &["put", &up, "x.bin"]);
            let mut rm = site.server.ftpc_cmd("alice", PW, &["rm", "x.bin"]);
            let put = s.spawn(move || put.output().expect("ftpc put"));
            let rm = s.spawn(move || rm.output().expect("ftpc rm"));
            let (put, rm) = (put.join().expect("put"), rm.join().expect("rm"));
            for (what, out) in [("put", &put), ("rm", &rm)] {
                // Success, or a refusal in words (exit 5); never a lost
                // session, an integrity error or a crash.
                assert!(
                    matches!(out.status.code(), Some(0 | 5)),
                    "round {round}: {what}: {}\n{}",
                    out.status,
                    util::stderr(out)
                );
                if !out.status.success() {
                    assert!(!util::stderr(out).trim().is_empty(), "{what}: no message");
                }
            }
        });
        if let Ok(now) = std::fs::read(site.home().join("x.bin")) {
            assert!(now == body, "round {round}: x.bin is not the uploaded file");
        }
        site.assert_quota_recounted(&format!("round {round}"));
    }
}

/// A move refused because its source is being uploaded names that source.
#[test]
fn a_move_refused_as_busy_names_the_busy_file() {
    let site = Site::new();
    let new = content(512 * 1024, 6);
    let mut writer = site.session();
    let mut other = site.session();
    upload_racing(&mut writer, &site.home(), "f.bin", &new, || {
        let refused = ok(
            &mut other,
            &Request::Rename {
                from: "f.bin".into(),
                to: "g.bin".into(),
            },
        )
        .expect_err("a move of a file being uploaded went through");
        assert!(refused.contains("/f.bin"), "{refused}");
    });
}
