//! The jail-escape suite's first line: every operation against symlinks,
//! special files and races, checking that nothing outside a home is ever
//! read, listed or created.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

use super::*;

/// A home, a folder beside it with a secret, and a sibling user's home.
struct Fixture {
    _tmp: TempDir,
    home: PathBuf,
    outside: PathBuf,
    bob: PathBuf,
    jail: Jail,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("alice");
        let outside = tmp.path().join("outside");
        let bob = tmp.path().join("bob");
        for d in [&home, &outside, &bob] {
            fs::create_dir(d).unwrap();
        }
        fs::write(outside.join("secret.txt"), "SECRET").unwrap();
        fs::write(outside.join("outside_only.txt"), "x").unwrap();
        fs::create_dir(outside.join("b")).unwrap();
        fs::write(outside.join("b").join("deep.txt"), "SECRET").unwrap();
        fs::write(bob.join("secret.txt"), "BOB").unwrap();
        let jail = Jail::open(&home).unwrap();
        Fixture {
            _tmp: tmp,
            home,
            outside,
            bob,
            jail,
        }
    }

    /// Fails the test if anything outside the home changed.
    fn assert_outside_untouched(&self) {
        assert_eq!(
            names(&self.outside),
            ["b", "outside_only.txt", "secret.txt"]
        );
        assert_eq!(names(&self.outside.join("b")), ["deep.txt"]);
        assert_eq!(names(&self.bob), ["secret.txt"]);
        assert_eq!(
            fs::read(self.outside.join("secret.txt")).unwrap(),
            b"SECRET"
        );
        assert_eq!(fs::read(self.bob.join("secret.txt")).unwrap(), b"BOB");
        assert_eq!(
            names(self.home.parent().unwrap()),
            ["alice", "bob", "outside"]
        );
    }
}

/// The sorted names in a server folder, read with std (not the jail).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn vp(s: &str) -> VPath {
    VPath::resolve(&VPath::root(), s).unwrap()
}

fn code<T: std::fmt::Debug>(r: Result<T, FsError>) -> ErrorCode {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            // Whatever fails, the message never shows a server path.
            assert!(!e.message.contains("/tmp"), "{}", e.message);
            e.code
        }
    }
}

fn read_all(mut f: File) -> Vec<u8> {
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    buf
}

fn listed(jail: &Jail, p: &str) -> Vec<String> {
    let (entries, _, _) = jail.list(&vp(p), MAX_LIST).unwrap();
    entries.into_iter().map(|e| e.name).collect()
}

const MAX_LIST: usize = crate::proto::MAX_LIST_ENTRIES;
const DENIED: ErrorCode = ErrorCode::PermissionDenied;

#[test]
fn jail_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Jail>();
    shareable::<Arc<Jail>>();
}

#[test]
fn open_refuses_a_missing_home_or_a_file() {
    let fx = Fixture::new();
    assert!(Jail::open(&fx.home.join("nope")).is_err());
    assert!(Jail::open(&fx.outside.join("secret.txt")).is_err());
}

#[test]
fn stat_reports_kind_size_and_name() {
    let fx = Fixture::new();
    fs::write(fx.home.join("a.txt"), "hello").unwrap();
    fs::create_dir(fx.home.join("docs")).unwrap();

    let root = fx.jail.stat(&VPath::root()).unwrap();
    assert_eq!((root.name.as_str(), root.kind), ("/", EntryKind::Dir));

    let a = fx.jail.stat(&vp("/a.txt")).unwrap();
    assert_eq!(
        (a.name.as_str(), a.kind, a.size),
        ("a.txt", EntryKind::File, 5)
    );
    assert!(a.mtime > 1_600_000_000);

    let docs = fx.jail.stat(&vp("/docs")).unwrap();
    assert_eq!((docs.kind, docs.size), (EntryKind::Dir, 0));

    assert_eq!(code(fx.jail.stat(&vp("/nope"))), ErrorCode::NotFound);
    assert_eq!(code(fx.jail.stat(&vp("/nope/x"))), ErrorCode::NotFound);
    assert_eq!(
        code(fx.jail.stat(&vp("/a.txt/x"))),
        ErrorCode::NotADirectory
    );
}

#[test]
fn dotdot_in_user_input_cannot_leave_the_home() {
    let fx = Fixture::new();
    let p = VPath::resolve(&vp("/docs"), "../../outside/secret.txt").unwrap();
    assert_eq!(p.to_string(), "/outside/secret.txt");
    assert_eq!(code(fx.jail.open_read(&p)), ErrorCode::NotFound);
    assert_eq!(
        code(
            fx.jail
                .mkdir(&VPath::resolve(&VPath::root(), "../../x/y").unwrap())
        ),
        ErrorCode::NotFound
    );
    fx.assert_outside_untouched();
}

/// Every operation through a symlink is refused, whatever it points at.
#[test]
fn symlinks_are_listed_but_never_followed() {
    let fx = Fixture::new();
    fs::write(fx.home.join("f.txt"), "mine").unwrap();
    fs::create_dir(fx.home.join("docs")).unwrap();
    symlink("/etc", fx.home.join("etc")).unwrap();
    symlink("../bob", fx.home.join("bob")).unwrap();
    symlink(&fx.outside, fx.home.join("out")).unwrap();
    // Even a symlink that stays inside the home is not followed.
    symlink("docs", fx.home.join("docs_link")).unwrap();
    symlink("f.txt", fx.home.join("f_link")).unwrap();

    for link in ["etc", "bob", "out", "docs_link"] {
        let l = vp(link);
        assert_eq!(fx.jail.stat(&l).unwrap().kind, EntryKind::Symlink, "{link}");
        assert_eq!(code(fx.jail.check_dir(&l)), DENIED, "{link}");
        assert_eq!(code(fx.jail.open_read(&l)), DENIED, "{link}");
        for inner in ["secret.txt", "passwd", "b/deep.txt"] {
            let p = l.join(inner.split('/').next().unwrap()).unwrap();
            assert_eq!(code(fx.jail.open_read(&p)), DENIED, "{p}");
            assert_eq!(code(fx.jail.stat(&p)), DENIED, "{p}");
            assert_eq!(code(fx.jail.remove_file(&p)), DENIED, "{p}");
            assert_eq!(code(fx.jail.rename(&p, &vp("/stolen"))), DENIED, "{p}");
        }
        // "link/" resolves to the link itself, and listing it is refused.
        let slash = VPath::resolve(&VPath::root(), &format!("{link}/")).unwrap();
        assert_eq!(code(fx.jail.list(&slash, MAX_LIST)), DENIED, "{link}");
        assert_eq!(code(fx.jail.check_dir(&slash)), DENIED, "{link}");
        assert_eq!(code(fx.jail.mkdir(&l.join("x").unwrap())), DENIED, "{link}");
        assert_eq!(code(fx.jail.rmdir(&l.join("b").unwrap())), DENIED, "{link}");
        assert_eq!(
            code(fx.jail.rename(&vp("/f.txt"), &l.join("f.txt").unwrap())),
            DENIED
        );
        assert_eq!(
            code(fx.jail.rename(&vp("/docs"), &l.join("docs").unwrap())),
            DENIED
        );
        assert_eq!(code(fx.jail.list(&l.join("b").unwrap(), MAX_LIST)), DENIED);

        let up = l.join("up.txt").unwrap();
        let (mut part, _) = fx.jail.open_partial(&up).unwrap();
        part.write_all(b"upload").unwrap();
        assert_eq!(code(fx.jail.publish_partial(&up)), DENIED, "{link}");
        assert_eq!(fx.jail.remove_partial(&up).unwrap(), 6);
        assert!(fx.home.join("f.txt").exists() && fx.home.join("docs").is_dir());
    }
    assert_eq!(code(fx.jail.open_read(&vp("/f_link"))), DENIED);
    assert_eq!(fs::read(fx.home.join("f.txt")).unwrap(), b"mine");
    assert!(!fx.home.join("docs").join("x").exists());
    fx.assert_outside_untouched();

    // The listing shows the links as links.
    let (entries, _, _) = fx.jail.list(&VPath::root(), MAX_LIST).unwrap();
    let links: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Symlink)
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(links, ["bob", "docs_link", "etc", "f_link", "out"]);

    // Removing or renaming a link acts on the link, never on its target.
    assert_eq!(fx.jail.remove_file(&vp("/out")).unwrap(), 0);
    assert_eq!(fx.jail.rename(&vp("/bob"), &vp("/docs/bob")).unwrap(), 0);
    assert_eq!(
        fx.jail.stat(&vp("/docs/bob")).unwrap().kind,
        EntryKind::Symlink
    );
    assert_eq!(code(fx.jail.rmdir(&vp("/etc"))), ErrorCode::NotADirectory);
    assert!(Path::new("/etc").is_dir());
    fx.assert_outside_untouched();
}

#[test]
fn a_symlink_in_a_middle_component_is_refused() {
    let fx = Fixture::new();
    symlink(&fx.outside, fx.home.join("a")).unwrap();
    let ab = vp("/a/b");
    assert_eq!(code(fx.jail.stat(&ab)), DENIED);
    assert_eq!(code(fx.jail.check_dir(&ab)), DENIED);
    assert_eq!(code(fx.jail.list(&ab, MAX_LIST)), DENIED);
    assert_eq!(code(fx.jail.open_read(&vp("/a/b/deep.txt"))), DENIED);
    assert_eq!(code(fx.jail.stat(&vp("/a/b/deep.txt"))), DENIED);
    assert_eq!(code(fx.jail.mkdir(&vp("/a/b/new"))), DENIED);
    assert_eq!(code(fx.jail.remove_file(&vp("/a/b/deep.txt"))), DENIED);
    assert_eq!(code(fx.jail.rmdir(&ab)), DENIED);
    fx.assert_outside_untouched();
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let fx = Fixture::new();
    rustix::fs::mkfifoat(&fx.jail.home, "pipe", Mode::from_raw_mode(0o600)).unwrap();
    let jail = Arc::new(fx.jail);
    let (tx, rx) = mpsc::channel();
    let j = Arc::clone(&jail);
    // In a thread, so that a regression hangs only that thread.
    std::thread::spawn(move || {
        let _ = tx.send(j.open_read(&vp("/pipe")).map(|(_, size)| size));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("open_read on a FIFO blocked");
    assert_eq!(code(result), DENIED);

    assert_eq!(jail.stat(&vp("/pipe")).unwrap().kind, EntryKind::Other);
    let (entries, _, _) = jail.list(&VPath::root(), MAX_LIST).unwrap();
    assert_eq!(entries[0].kind, EntryKind::Other);
    assert_eq!(code(jail.check_dir(&vp("/pipe"))), ErrorCode::NotADirectory);
    assert_eq!(jail.remove_file(&vp("/pipe")).unwrap(), 0);
    assert!(!fx.home.join("pipe").exists());
}

#[test]
fn a_fifo_planted_as_a_partial_is_refused() {
    let fx = Fixture::new();
    let target = vp("/up.txt");
    fs::create_dir(fx.home.join(PARTIAL_DIR)).unwrap();
    let planted = fx.home.join(PARTIAL_DIR).join(Jail::partial_name(&target));
    rustix::fs::mkfifoat(rustix::fs::CWD, &planted, Mode::from_raw_mode(0o600)).unwrap();
    assert_eq!(code(fx.jail.open_partial(&target)), DENIED);
}

#[test]
fn a_partial_dir_that_is_a_symlink_is_refused() {
    let fx = Fixture::new();
    symlink(&fx.outside, fx.home.join(PARTIAL_DIR)).unwrap();
    let target = vp("/up.txt");
    assert_eq!(code(fx.jail.open_partial(&target)), DENIED);
    assert_eq!(code(fx.jail.remove_partial(&target)), DENIED);
    assert_eq!(code(fx.jail.publish_partial(&target)), DENIED);
    assert!(fx.jail.clean_stale_partials(Duration::ZERO).is_err());
    fx.assert_outside_untouched();
}

#[test]
fn open_read_reads_regular_files_only() {
    let fx = Fixture::new();
    fs::create_dir(fx.home.join("docs")).unwrap();
    fs::write(fx.home.join("docs").join("a.txt"), "hello").unwrap();
    let (f, size) = fx.jail.open_read(&vp("/docs/a.txt")).unwrap();
    assert_eq!(size, 5);
    assert_eq!(read_all(f), b"hello");
    assert_eq!(
        code(fx.jail.open_read(&vp("/docs"))),
        ErrorCode::IsADirectory
    );
    assert_eq!(
        code(fx.jail.open_read(&VPath::root())),
        ErrorCode::IsADirectory
    );
    assert_eq!(code(fx.jail.open_read(&vp("/nope"))), ErrorCode::NotFound);
    assert_eq!(
        code(fx.jail.open_read(&vp("/docs/a.txt/x"))),
        ErrorCode::NotADirectory
    );
}

#[test]
fn check_dir_accepts_real_folders_only() {
    let fx = Fixture::new();
    fs::create_dir_all(fx.home.join("a").join("b")).unwrap();
    fs::write(fx.home.join("f"), "").unwrap();
    fx.jail.check_dir(&VPath::root()).unwrap();
    fx.jail.check_dir(&vp("/a/b")).unwrap();
    assert_eq!(code(fx.jail.check_dir(&vp("/f"))), ErrorCode::NotADirectory);
    assert_eq!(code(fx.jail.check_dir(&vp("/nope"))), ErrorCode::NotFound);
}

#[test]
fn list_sorts_truncates_and_hides_partials() {
    let fx = Fixture::new();
    for name in ["b", "a", "c", "B", "é"] {
        fs::write(fx.home.join(name), name).unwrap();
    }
    fs::create_dir(fx.home.join("d")).unwrap();
    // Creates the partial folder at the root.
    fx.jail.open_partial(&vp("/a")).unwrap();
    assert!(fx.home.join(PARTIAL_DIR).is_dir());

    let (entries, total, truncated) = fx.jail.list(&VPath::root(), 100).unwrap();
    let got: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(got, ["B", "a", "b", "c", "d", "é"]);
    assert_eq!((total, truncated), (6, false));
    assert_eq!(entries[1].kind, EntryKind::File);
    assert_eq!(entries[1].size, 1);
    assert_eq!(entries[4].kind, EntryKind::Dir);

    let (entries, total, truncated) = fx.jail.list(&VPath::root(), 2).unwrap();
    assert_eq!((entries.len(), total, truncated), (2, 6, true));

    let (entries, total, truncated) = fx.jail.list(&VPath::root(), 6).unwrap();
    assert_eq!((entries.len(), total, truncated), (6, 6, false));
    let (entries, total, truncated) = fx.jail.list(&VPath::root(), 0).unwrap();
    assert_eq!((entries.len(), total, truncated), (0, 6, true));

    // Only the root's partial folder is hidden; elsewhere it is a name.
    fs::create_dir(fx.home.join("d").join(PARTIAL_DIR)).unwrap();
    assert_eq!(listed(&fx.jail, "/d"), [PARTIAL_DIR]);

    assert_eq!(code(fx.jail.list(&vp("/a"), 10)), ErrorCode::NotADirectory);
    assert_eq!(code(fx.jail.list(&vp("/nope"), 10)), ErrorCode::NotFound);
}

#[test]
fn list_shows_non_utf8_names_lossily() {
    let fx = Fixture::new();
    let name = std::ffi::OsStr::from_bytes(b"x\xffy");
    fs::write(fx.home.join(name), "").unwrap();
    assert_eq!(listed(&fx.jail, "/"), ["x\u{fffd}y"]);
}

#[test]
fn list_of_a_big_folder_keeps_the_smallest_names() {
    let fx = Fixture::new();
    for i in (0..500).rev() {
        fs::write(fx.home.join(format!("f{i:04}")), "").unwrap();
    }
    let (entries, total, truncated) = fx.jail.list(&VPath::root(), 10).unwrap();
    let want: Vec<String> = (0..10).map(|i| format!("f{i:04}")).collect();
    let got: Vec<String> = entries.into_iter().map(|e| e.name).collect();
    assert_eq!(got, want);
    assert_eq!((total, truncated), (500, true));
}

#[test]
fn mkdir_and_rmdir() {
    let fx = Fixture::new();
    fs::write(fx.home.join("f"), "").unwrap();
    fx.jail.mkdir(&vp("/d")).unwrap();
    fx.jail.mkdir(&vp("/d/e")).unwrap();
    assert!(fx.home.join("d").join("e").is_dir());
    let mode = fs::metadata(fx.home.join("d"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o700, 0o700);

    assert_eq!(code(fx.jail.mkdir(&vp("/d"))), ErrorCode::AlreadyExists);
    assert_eq!(code(fx.jail.mkdir(&vp("/f"))), ErrorCode::AlreadyExists);
    assert_eq!(
        code(fx.jail.mkdir(&VPath::root())),
        ErrorCode::AlreadyExists
    );
    assert_eq!(code(fx.jail.mkdir(&vp("/nope/x"))), ErrorCode::NotFound);
    assert_eq!(code(fx.jail.mkdir(&vp("/f/x"))), ErrorCode::NotADirectory);

    assert_eq!(code(fx.jail.rmdir(&vp("/d"))), ErrorCode::NotEmpty);
    assert_eq!(code(fx.jail.rmdir(&vp("/f"))), ErrorCode::NotADirectory);
    assert_eq!(code(fx.jail.rmdir(&vp("/nope"))), ErrorCode::NotFound);
    let e = fx.jail.rmdir(&VPath::root()).unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (DENIED, "cannot remove /"));
    fx.jail.rmdir(&vp("/d/e")).unwrap();
    fx.jail.rmdir(&vp("/d")).unwrap();
    assert!(!fx.home.join("d").exists());
}

#[test]
fn remove_file_returns_the_bytes_freed() {
    let fx = Fixture::new();
    fs::write(fx.home.join("f"), "12345").unwrap();
    fs::create_dir(fx.home.join("d")).unwrap();
    assert_eq!(fx.jail.remove_file(&vp("/f")).unwrap(), 5);
    assert!(!fx.home.join("f").exists());
    assert_eq!(code(fx.jail.remove_file(&vp("/f"))), ErrorCode::NotFound);
    assert_eq!(
        code(fx.jail.remove_file(&vp("/d"))),
        ErrorCode::IsADirectory
    );
    assert_eq!(
        code(fx.jail.remove_file(&VPath::root())),
        ErrorCode::IsADirectory
    );
    assert!(fx.home.join("d").is_dir());
}

#[test]
fn rename_files_and_folders() {
    let fx = Fixture::new();
    let h = &fx.home;
    fs::write(h.join("new"), "new!").unwrap();
    fs::write(h.join("old"), "old file").unwrap();
    fs::create_dir_all(h.join("a").join("sub")).unwrap();
    fs::create_dir(h.join("empty")).unwrap();
    fs::create_dir(h.join("full")).unwrap();
    fs::write(h.join("full").join("x"), "").unwrap();

    // A file over a file returns the replaced size.
    assert_eq!(fx.jail.rename(&vp("/new"), &vp("/old")).unwrap(), 8);
    assert_eq!(fs::read(h.join("old")).unwrap(), b"new!");
    assert!(!h.join("new").exists());
    // Across folders, and onto itself.
    assert_eq!(fx.jail.rename(&vp("/old"), &vp("/a/sub/moved")).unwrap(), 0);
    assert_eq!(fs::read(h.join("a/sub/moved")).unwrap(), b"new!");
    assert_eq!(
        fx.jail
            .rename(&vp("/a/sub/moved"), &vp("/a/sub/moved"))
            .unwrap(),
        0
    );
    assert!(h.join("a/sub/moved").exists());
    // Hard links to one file: the kernel does nothing, nothing is freed.
    fs::hard_link(h.join("a/sub/moved"), h.join("hard")).unwrap();
    assert_eq!(
        fx.jail.rename(&vp("/hard"), &vp("/a/sub/moved")).unwrap(),
        0
    );

    // A folder into itself or below itself.
    let e = fx.jail.rename(&vp("/a"), &vp("/a/sub/a")).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::BadRequest, "cannot move /a into itself")
    );
    assert_eq!(
        code(fx.jail.rename(&vp("/a"), &vp("/a/b"))),
        ErrorCode::BadRequest
    );
    // Kinds that do not fit.
    assert_eq!(
        code(fx.jail.rename(&vp("/hard"), &vp("/a"))),
        ErrorCode::IsADirectory
    );
    assert_eq!(
        code(fx.jail.rename(&vp("/a"), &vp("/hard"))),
        ErrorCode::NotADirectory
    );
    assert_eq!(
        code(fx.jail.rename(&vp("/a"), &vp("/full"))),
        ErrorCode::NotEmpty
    );
    assert_eq!(
        code(fx.jail.rename(&vp("/nope"), &vp("/x"))),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(fx.jail.rename(&vp("/hard"), &vp("/nope/x"))),
        ErrorCode::NotFound
    );
    // The root, either way.
    assert_eq!(code(fx.jail.rename(&VPath::root(), &vp("/x"))), DENIED);
    assert_eq!(code(fx.jail.rename(&vp("/hard"), &VPath::root())), DENIED);
    // A folder onto an empty folder replaces it.
    assert_eq!(fx.jail.rename(&vp("/a"), &vp("/empty")).unwrap(), 0);
    assert!(h.join("empty/sub/moved").exists() && !h.join("a").exists());
    // A folder to a new name in another folder.
    assert_eq!(fx.jail.rename(&vp("/empty"), &vp("/full/e")).unwrap(), 0);
    assert!(h.join("full/e/sub/moved").exists());
}

#[test]
fn partial_names_are_stable_hashes() {
    let name = Jail::partial_name(&vp("/docs/a.txt"));
    // First 16 bytes of SHA-256("/docs/a.txt").
    assert_eq!(name, "f238fe284c35edf8147efd7e6f091691.part");
    assert_ne!(name, Jail::partial_name(&vp("/docs/b.txt")));
    assert_eq!(name, Jail::partial_name(&vp("docs/./x/../a.txt")));
}

#[test]
fn partial_upload_publishes_atomically() {
    let fx = Fixture::new();
    let target = vp("/docs/a.txt");
    fs::create_dir(fx.home.join("docs")).unwrap();
    fs::write(fx.home.join("docs/a.txt"), "old").unwrap();

    // No partial yet: nothing to remove or publish.
    assert_eq!(fx.jail.remove_partial(&target).unwrap(), 0);
    assert_eq!(code(fx.jail.publish_partial(&target)), ErrorCode::NotFound);

    let (mut f, len) = fx.jail.open_partial(&target).unwrap();
    assert_eq!(len, 0);
    let dir_mode = fs::metadata(fx.home.join(PARTIAL_DIR))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    f.write_all(b"hel").unwrap();
    drop(f);
    // Reopening resumes: no truncation.
    let (mut f, len) = fx.jail.open_partial(&target).unwrap();
    assert_eq!(len, 3);
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"lo").unwrap();
    f.sync_all().unwrap();
    assert_eq!(fs::read(fx.home.join("docs/a.txt")).unwrap(), b"old");

    assert_eq!(fx.jail.publish_partial(&target).unwrap(), 3);
    assert_eq!(fs::read(fx.home.join("docs/a.txt")).unwrap(), b"hello");
    // The partial is gone.
    assert!(names(&fx.home.join(PARTIAL_DIR)).is_empty());
    assert_eq!(fx.jail.remove_partial(&target).unwrap(), 0);
    assert_eq!(code(fx.jail.publish_partial(&target)), ErrorCode::NotFound);
    // Publishing to a new name replaces nothing.
    let fresh = vp("/docs/new.txt");
    fx.jail.open_partial(&fresh).unwrap();
    assert_eq!(fx.jail.publish_partial(&fresh).unwrap(), 0);
    assert!(fx.home.join("docs/new.txt").is_file());
}

#[test]
fn publish_refuses_folders_and_replaces_symlinks_themselves() {
    let fx = Fixture::new();
    fs::create_dir(fx.home.join("d")).unwrap();
    symlink(fx.outside.join("secret.txt"), fx.home.join("link")).unwrap();

    let d = vp("/d");
    fx.jail.open_partial(&d).unwrap().0.write_all(b"x").unwrap();
    assert_eq!(code(fx.jail.publish_partial(&d)), ErrorCode::IsADirectory);
    // The partial survives a refused publish.
    assert_eq!(fx.jail.remove_partial(&d).unwrap(), 1);
    assert_eq!(
        code(fx.jail.publish_partial(&VPath::root())),
        ErrorCode::IsADirectory
    );

    let missing = vp("/nope/x");
    fx.jail.open_partial(&missing).unwrap();
    assert_eq!(code(fx.jail.publish_partial(&missing)), ErrorCode::NotFound);

    let link = vp("/link");
    fx.jail
        .open_partial(&link)
        .unwrap()
        .0
        .write_all(b"mine")
        .unwrap();
    assert_eq!(fx.jail.publish_partial(&link).unwrap(), 0);
    let meta = fs::symlink_metadata(fx.home.join("link")).unwrap();
    assert!(meta.is_file());
    assert_eq!(fs::read(fx.home.join("link")).unwrap(), b"mine");
    fx.assert_outside_untouched();
}

#[test]
fn remove_and_clean_partials_free_bytes() {
    let fx = Fixture::new();
    assert_eq!(fx.jail.clean_stale_partials(Duration::ZERO).unwrap(), 0);

    let (mut f, _) = fx.jail.open_partial(&vp("/a")).unwrap();
    f.write_all(b"1234567").unwrap();
    assert_eq!(fx.jail.remove_partial(&vp("/a")).unwrap(), 7);

    fx.jail
        .open_partial(&vp("/b"))
        .unwrap()
        .0
        .write_all(b"12")
        .unwrap();
    fx.jail
        .open_partial(&vp("/c"))
        .unwrap()
        .0
        .write_all(b"345")
        .unwrap();
    let day = Duration::from_secs(86_400);
    assert_eq!(fx.jail.clean_stale_partials(day).unwrap(), 0);
    assert_eq!(names(&fx.home.join(PARTIAL_DIR)).len(), 2);
    assert_eq!(fx.jail.clean_stale_partials(Duration::ZERO).unwrap(), 5);
    assert!(names(&fx.home.join(PARTIAL_DIR)).is_empty());
}

/// A helper thread flips `/sw` between a real folder and a symlink to
/// outside while this thread keeps going through it: whatever the timing,
/// nothing outside is ever read, listed or created.
#[test]
fn racing_symlink_swaps_never_escape() {
    const ROUNDS: u32 = 2000;
    // Bounds the swapper should this thread die early.
    const MAX_SWAPS: u32 = 2_000_000;
    let fx = Fixture::new();
    fs::create_dir(fx.home.join("sw")).unwrap();
    // Not the length of the outside secret, so a stat through the link
    // would show.
    fs::write(fx.home.join("sw/secret.txt"), "in").unwrap();
    fs::write(fx.home.join("f.txt"), "mover").unwrap();
    symlink(&fx.outside, fx.home.join("stash")).unwrap();

    let home =
        rustix::fs::open(&fx.home, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            use rustix::fs::{RenameFlags, renameat, renameat_with};
            let mut swaps = 0;
            while !stop.load(Ordering::Relaxed) && swaps < MAX_SWAPS {
                // One atomic swap where the filesystem can; else three
                // renames, with moments where `sw` is missing.
                if renameat_with(&home, "sw", &home, "stash", RenameFlags::EXCHANGE).is_err() {
                    renameat(&home, "sw", &home, "parked").unwrap();
                    renameat(&home, "stash", &home, "sw").unwrap();
                    renameat(&home, "parked", &home, "stash").unwrap();
                }
                swaps += 1;
                std::thread::yield_now();
            }
            swaps
        })
    };

    let (mut opened, mut refused) = (0u32, 0u32);
    for i in 0..ROUNDS {
        let r = fx.jail.open_read(&vp("/sw/secret.txt"));
        if ok(&r) {
            opened += 1;
            let (f, _) = r.unwrap();
            assert_eq!(read_all(f), b"in");
        } else {
            refused += 1;
        }
        if let Ok(e) = fx.jail.stat(&vp("/sw/secret.txt")) {
            assert_eq!(e.size, 2);
        }
        let r = fx.jail.list(&vp("/sw"), MAX_LIST);
        if ok(&r) {
            let (entries, _, _) = r.unwrap();
            assert!(entries.iter().all(|e| e.name != "outside_only.txt"));
        }
        ok(&fx.jail.mkdir(&vp(&format!("/sw/m{i}"))));
        ok(&fx.jail.check_dir(&vp("/sw")));
        if ok(&fx.jail.rename(&vp("/f.txt"), &vp("/sw/f.txt"))) {
            ok(&fx.jail.rename(&vp("/sw/f.txt"), &vp("/f.txt")));
        }
        ok(&fx.jail.remove_file(&vp("/sw/gone.txt")));
        let up = vp("/sw/up.txt");
        if let Ok((mut f, 0)) = fx.jail.open_partial(&up) {
            f.write_all(b"upload").unwrap();
        }
        ok(&fx.jail.publish_partial(&up));
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    eprintln!("race: {swaps} swaps, {opened} reads through the folder, {refused} refused");
    fx.assert_outside_untouched();
    // The race really ran: both shapes of `/sw` were met.
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused"
    );
}

/// Whether a raced operation went through; a failure must be a refusal
/// (the swap showed a symlink) or a miss (the swap was half done).
fn ok<T>(r: &Result<T, FsError>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => {
            assert!(
                matches!(e.code, DENIED | ErrorCode::NotFound),
                "unexpected {e:?}"
            );
            false
        }
    }
}
