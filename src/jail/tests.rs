//! The jail-escape suite's first line: every operation against symlinks,
//! special files and races, checking that nothing outside a home is ever
//! read, listed or created.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

use super::*;
use crate::usage::{self, BLOCK, file_charge};

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

/// The names in a server folder in the folder's own order, as `readdir`
/// gives them (read with std, not the jail), without the partials folder.
fn folder_order(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != PARTIAL_DIR)
        .collect()
}

/// The first `n` of `names`, sorted.
fn first_sorted(names: &[String], n: usize) -> Vec<String> {
    let mut first = names[..n].to_vec();
    first.sort();
    first
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
const DAY: Duration = Duration::from_secs(86_400);

/// [`code`] for a publish.
fn publish_code(r: Result<Published, PublishError>) -> ErrorCode {
    code(r.map_err(|e| e.0))
}

/// Publishes `target`, which must succeed and sync.
fn publish(jail: &Jail, target: &VPath) -> Change {
    let published = jail.publish_partial(target).unwrap();
    published.synced.unwrap();
    published.change
}

/// Opens the partial for `target` afresh and writes `data` into it.
fn put_partial(jail: &Jail, target: &VPath, data: &[u8]) -> Change {
    let mut opened = jail.open_partial(target, None).unwrap();
    assert_eq!(opened.existing, 0);
    opened.file.write_all(data).unwrap();
    opened.change
}

/// Asserts that `c` removed one regular file that cost `charge`.
fn assert_removed_file(c: &Change, charge: u64) {
    assert_eq!(c.entries, -1, "{c:?}");
    assert_eq!(c.gone.map(|g| g.charge), Some(charge), "{c:?}");
    assert!(-c.bytes >= i64::try_from(charge).unwrap(), "{c:?}");
}

/// Asserts that `c` removed one partial upload that cost `charge`.
fn assert_removed_partial(c: &Change, charge: u64) {
    assert_eq!(c.entries, -1, "{c:?}");
    assert!(-c.bytes >= i64::try_from(charge).unwrap(), "{c:?}");
}

/// Asserts that `c` added or removed no file or folder.
fn assert_no_entry_change(c: &Change) {
    assert_eq!((c.entries, c.gone), (0, None), "{c:?}");
}

/// The home's cost as the server keeps it: a recount to start from, plus
/// every [`Change`] since, plus what uploads wrote. The server relies on it
/// matching a recount at any time.
struct Books {
    home: PathBuf,
    bytes: i64,
    entries: i64,
}

impl Books {
    fn new(home: &Path) -> Books {
        let start = usage::tally(home).unwrap();
        Books {
            home: home.to_owned(),
            bytes: i64::try_from(start.bytes).unwrap(),
            entries: i64::try_from(start.entries).unwrap(),
        }
    }

    /// Adds a change.
    fn add(&mut self, c: Change) {
        self.bytes += c.bytes;
        self.entries += c.entries;
    }

    /// Adds a change and passes it on, to be looked at.
    fn counted(&mut self, c: Change) -> Change {
        self.add(c);
        c
    }

    /// Adds what writing a partial from `from` bytes to `to` bytes cost:
    /// the server counts an upload's writes itself.
    fn wrote(&mut self, from: u64, to: u64) {
        self.bytes += i64::try_from(file_charge(to)).unwrap();
        self.bytes -= i64::try_from(file_charge(from)).unwrap();
    }

    /// Adds a change and checks the books against a recount.
    fn step(&mut self, after: &str, c: Change) {
        self.add(c);
        self.check(after);
    }

    /// Fails unless the books match a recount of the home.
    fn check(&self, after: &str) {
        let now = usage::tally(&self.home).unwrap();
        let recount = (
            i64::try_from(now.bytes).unwrap(),
            i64::try_from(now.entries).unwrap(),
        );
        assert_eq!((self.bytes, self.entries), recount, "after {after}");
    }
}

/// Makes the file at `path` look `age` old to the sweep of stale partials.
fn age(path: &Path, age: Duration) {
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

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
    let mut books = Books::new(&fx.home);

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
        books.add(put_partial(&fx.jail, &up, b"upload"));
        books.wrote(0, 6);
        assert_eq!(publish_code(fx.jail.publish_partial(&up)), DENIED, "{link}");
        let removed = books.counted(fx.jail.remove_partial(&up).unwrap());
        assert_removed_partial(&removed, file_charge(6));
        books.check(&format!("an upload below {link}"));
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

    // Removing or renaming a link acts on the link, never on its target,
    // and costs nothing.
    assert_no_entry_change(&books.counted(fx.jail.remove_file(&vp("/out")).unwrap()));
    assert_no_entry_change(&books.counted(fx.jail.rename(&vp("/bob"), &vp("/docs/bob")).unwrap()));
    books.check("removing and moving links");
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
        let _ = tx.send(j.open_read(&vp("/pipe")).map(|(_, size, _)| size));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("open_read on a FIFO blocked");
    assert_eq!(code(result), DENIED);

    assert_eq!(jail.stat(&vp("/pipe")).unwrap().kind, EntryKind::Other);
    let (entries, _, _) = jail.list(&VPath::root(), MAX_LIST).unwrap();
    assert_eq!(entries[0].kind, EntryKind::Other);
    assert_eq!(code(jail.check_dir(&vp("/pipe"))), ErrorCode::NotADirectory);
    assert_no_entry_change(&jail.remove_file(&vp("/pipe")).unwrap());
    assert!(!fx.home.join("pipe").exists());
}

#[test]
fn a_fifo_planted_as_a_partial_is_refused() {
    let fx = Fixture::new();
    let target = vp("/up.txt");
    fs::create_dir(fx.home.join(PARTIAL_DIR)).unwrap();
    let planted = fx.home.join(PARTIAL_DIR).join(Jail::partial_name(&target));
    rustix::fs::mkfifoat(rustix::fs::CWD, &planted, Mode::from_raw_mode(0o600)).unwrap();
    assert_eq!(code(fx.jail.open_partial(&target, None)), DENIED);
    assert_eq!(code(fx.jail.open_partial(&target, Some(u64::MAX))), DENIED);
}

#[test]
fn a_partial_dir_that_is_a_symlink_is_refused() {
    let fx = Fixture::new();
    symlink(&fx.outside, fx.home.join(PARTIAL_DIR)).unwrap();
    let target = vp("/up.txt");
    assert_eq!(code(fx.jail.open_partial(&target, None)), DENIED);
    assert_eq!(code(fx.jail.remove_partial(&target)), DENIED);
    assert_eq!(publish_code(fx.jail.publish_partial(&target)), DENIED);
    assert!(
        fx.jail
            .clean_stale_partials(Duration::ZERO, &HashSet::new())
            .is_err()
    );
    fx.assert_outside_untouched();
}

#[test]
fn open_read_reads_regular_files_only() {
    let fx = Fixture::new();
    fs::create_dir(fx.home.join("docs")).unwrap();
    fs::write(fx.home.join("docs").join("a.txt"), "hello").unwrap();
    let (f, size, id) = fx.jail.open_read(&vp("/docs/a.txt")).unwrap();
    assert_eq!(size, 5);
    assert_eq!(read_all(f), b"hello");
    // The identity is the file's, whatever name it is read by.
    fs::hard_link(fx.home.join("docs/a.txt"), fx.home.join("b.txt")).unwrap();
    fs::write(fx.home.join("c.txt"), "hello").unwrap();
    assert_eq!(fx.jail.open_read(&vp("/b.txt")).unwrap().2, id);
    assert_ne!(fx.jail.open_read(&vp("/c.txt")).unwrap().2, id);
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
    fx.jail.open_partial(&vp("/a"), None).unwrap();
    assert!(fx.home.join(PARTIAL_DIR).is_dir());

    let (entries, total, truncated) = fx.jail.list(&VPath::root(), 100).unwrap();
    let got: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(got, ["B", "a", "b", "c", "d", "é"]);
    assert_eq!((total, truncated), (6, false));
    assert_eq!(entries[1].kind, EntryKind::File);
    assert_eq!(entries[1].size, 1);
    assert_eq!(entries[4].kind, EntryKind::Dir);

    // Truncated: the first two the folder holds, sorted.
    let (entries, total, truncated) = fx.jail.list(&VPath::root(), 2).unwrap();
    assert_eq!((entries.len(), total, truncated), (2, 6, true));
    let got: Vec<String> = entries.into_iter().map(|e| e.name).collect();
    assert_eq!(got, first_sorted(&folder_order(&fx.home), 2));

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

/// A truncated listing holds the first entries in the folder's own order
/// (it never reads the whole folder to pick), sorted, and counts the rest.
#[test]
fn list_of_a_big_folder_keeps_the_first_names_in_folder_order() {
    let fx = Fixture::new();
    for i in (0..500).rev() {
        fs::write(fx.home.join(format!("f{i:04}")), "").unwrap();
    }
    let (entries, total, truncated) = fx.jail.list(&VPath::root(), 10).unwrap();
    let got: Vec<String> = entries.into_iter().map(|e| e.name).collect();
    assert_eq!(got, first_sorted(&folder_order(&fx.home), 10));
    assert_eq!((total, truncated), (500, true));
}

/// A listing read in batches of two: every name once, the partials folder
/// hidden at the root only, and the counts right, truncated or not.
#[test]
fn listing_in_batches_yields_every_name_once() {
    let fx = Fixture::new();
    for name in ["e", "a", "c", "b"] {
        fs::write(fx.home.join(name), name).unwrap();
    }
    fs::create_dir(fx.home.join("d")).unwrap();
    fs::create_dir(fx.home.join("d").join(PARTIAL_DIR)).unwrap();
    fs::write(fx.home.join("d").join("x"), "").unwrap();
    fx.jail.open_partial(&vp("/a"), None).unwrap();
    assert!(fx.home.join(PARTIAL_DIR).is_dir());

    // All the names of `p` in batches of two, listing at most `max`.
    let batches = |p: &str, max: usize| {
        let mut listing = fx.jail.open_listing(&vp(p), max).unwrap();
        let mut names = Vec::new();
        for _ in 0..100 {
            if listing.finished() {
                break;
            }
            let batch = listing.next_batch(2).unwrap();
            assert!(batch.len() <= 2, "{batch:?}");
            names.extend(batch.into_iter().map(|e| e.name));
        }
        assert!(listing.finished());
        (names, listing.total(), listing.truncated())
    };

    let (names, total, truncated) = batches("/", 100);
    // In the folder's own order, each name once.
    assert_eq!(names, folder_order(&fx.home));
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b", "c", "d", "e"]);
    assert_eq!((total, truncated), (5, false));

    let (names, total, truncated) = batches("/", 3);
    assert_eq!(names, folder_order(&fx.home)[..3]);
    assert_eq!((total, truncated), (5, true));

    let (names, total, truncated) = batches("/", 0);
    assert!(names.is_empty());
    assert_eq!((total, truncated), (5, true));

    // Below the root the name is an ordinary one.
    let (mut names, total, truncated) = batches("/d", 100);
    names.sort();
    assert_eq!(names, [PARTIAL_DIR, "x"]);
    assert_eq!((total, truncated), (2, false));

    assert_eq!(
        code(fx.jail.open_listing(&vp("/a"), 10).map(|_| ())),
        ErrorCode::NotADirectory
    );
}

#[test]
fn mkdir_and_rmdir() {
    let fx = Fixture::new();
    fs::write(fx.home.join("f"), "").unwrap();
    let mut books = Books::new(&fx.home);
    for p in ["/d", "/d/e"] {
        // A new folder: one entry, at least a block.
        let made = books.counted(fx.jail.mkdir(&vp(p)).unwrap());
        assert_eq!((made.entries, made.gone), (1, None), "{made:?}");
        assert!(made.bytes >= i64::try_from(BLOCK).unwrap(), "{made:?}");
        books.check(p);
    }
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
    books.check("refused changes");
    for p in ["/d/e", "/d"] {
        let removed = books.counted(fx.jail.rmdir(&vp(p)).unwrap());
        assert_eq!((removed.entries, removed.gone), (-1, None), "{removed:?}");
        assert!(
            -removed.bytes >= i64::try_from(BLOCK).unwrap(),
            "{removed:?}"
        );
        books.check(p);
    }
    assert!(!fx.home.join("d").exists());
}

#[test]
fn remove_file_returns_the_bytes_freed() {
    let fx = Fixture::new();
    fs::write(fx.home.join("f"), "12345").unwrap();
    fs::write(fx.home.join("big"), vec![b'x'; 10_000]).unwrap();
    fs::create_dir(fx.home.join("d")).unwrap();
    let mut books = Books::new(&fx.home);
    let (_, _, id) = fx.jail.open_read(&vp("/f")).unwrap();
    let removed = books.counted(fx.jail.remove_file(&vp("/f")).unwrap());
    assert_removed_file(&removed, file_charge(5));
    // It names the file that lost its name, as a download knows it.
    assert_eq!(removed.gone.unwrap().id, id);
    assert!(!fx.home.join("f").exists());
    let removed = books.counted(fx.jail.remove_file(&vp("/big")).unwrap());
    assert_removed_file(&removed, 3 * BLOCK);
    books.check("removing files");
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
    books.check("refused removals");
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
    let mut books = Books::new(h);

    // A file over a file names the one replaced.
    let (_, _, old_id) = fx.jail.open_read(&vp("/old")).unwrap();
    let replaced = books.counted(fx.jail.rename(&vp("/new"), &vp("/old")).unwrap());
    assert_removed_file(&replaced, file_charge(8));
    assert_eq!(replaced.gone.unwrap().id, old_id);
    assert_eq!(fs::read(h.join("old")).unwrap(), b"new!");
    assert!(!h.join("new").exists());
    books.check("a file over a file");
    // Across folders, and onto itself.
    let moved = books.counted(fx.jail.rename(&vp("/old"), &vp("/a/sub/moved")).unwrap());
    assert_no_entry_change(&moved);
    assert_eq!(fs::read(h.join("a/sub/moved")).unwrap(), b"new!");
    assert_eq!(
        fx.jail
            .rename(&vp("/a/sub/moved"), &vp("/a/sub/moved"))
            .unwrap(),
        Change::default()
    );
    assert!(h.join("a/sub/moved").exists());
    books.check("moves of a file");
    // Hard links to one file: the kernel does nothing, nothing is freed.
    fs::hard_link(h.join("a/sub/moved"), h.join("hard")).unwrap();
    let mut books = Books::new(h);
    assert_eq!(
        fx.jail.rename(&vp("/hard"), &vp("/a/sub/moved")).unwrap(),
        Change::default()
    );
    assert!(h.join("hard").exists());

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
    books.check("refused moves");
    // A folder onto an empty folder replaces it: one folder fewer.
    let replaced = books.counted(fx.jail.rename(&vp("/a"), &vp("/empty")).unwrap());
    assert_eq!(
        (replaced.entries, replaced.gone),
        (-1, None),
        "{replaced:?}"
    );
    assert!(
        -replaced.bytes >= i64::try_from(BLOCK).unwrap(),
        "{replaced:?}"
    );
    assert!(h.join("empty/sub/moved").exists() && !h.join("a").exists());
    // A folder to a new name in another folder.
    let moved = books.counted(fx.jail.rename(&vp("/empty"), &vp("/full/e")).unwrap());
    assert_no_entry_change(&moved);
    assert!(h.join("full/e/sub/moved").exists());
    books.check("moves of folders");
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
    let mut books = Books::new(&fx.home);

    // No partial yet: nothing to measure, remove or publish.
    assert_eq!(fx.jail.partial_len(&target).unwrap(), None);
    assert_eq!(fx.jail.remove_partial(&target).unwrap(), Change::default());
    assert_eq!(
        publish_code(fx.jail.publish_partial(&target)),
        ErrorCode::NotFound
    );

    let opened = fx.jail.open_partial(&target, None).unwrap();
    assert_eq!(opened.existing, 0);
    // The partials folder and the partial: two entries, a block each.
    let made = books.counted(opened.change);
    assert_eq!((made.entries, made.gone), (2, None), "{made:?}");
    assert!(made.bytes >= 2 * i64::try_from(BLOCK).unwrap(), "{made:?}");
    books.check("the first open of a partial");
    let dir_mode = fs::metadata(fx.home.join(PARTIAL_DIR))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let mut f = opened.file;
    f.write_all(b"hel").unwrap();
    books.wrote(0, 3);
    drop(f);
    assert_eq!(fx.jail.partial_len(&target).unwrap(), Some(3));
    // Reopening to resume keeps the data, and adds nothing.
    let opened = fx.jail.open_partial(&target, Some(3)).unwrap();
    assert_eq!(opened.existing, 3);
    assert_eq!(books.counted(opened.change), Change::default());
    let mut f = opened.file;
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b"lo").unwrap();
    books.wrote(3, 5);
    f.sync_all().unwrap();
    assert_eq!(fs::read(fx.home.join("docs/a.txt")).unwrap(), b"old");
    books.check("a resumed upload");

    let (_, _, old_id) = fx.jail.open_read(&target).unwrap();
    let replaced = books.counted(publish(&fx.jail, &target));
    assert_removed_file(&replaced, file_charge(3));
    assert_eq!(replaced.gone.unwrap().id, old_id);
    assert_eq!(fs::read(fx.home.join("docs/a.txt")).unwrap(), b"hello");
    books.check("a publish over a file");
    // The partial is gone.
    assert!(names(&fx.home.join(PARTIAL_DIR)).is_empty());
    assert_eq!(fx.jail.partial_len(&target).unwrap(), None);
    assert_eq!(fx.jail.remove_partial(&target).unwrap(), Change::default());
    assert_eq!(
        publish_code(fx.jail.publish_partial(&target)),
        ErrorCode::NotFound
    );
    // Publishing to a new name replaces nothing.
    let fresh = vp("/docs/new.txt");
    books.add(put_partial(&fx.jail, &fresh, b""));
    assert_no_entry_change(&books.counted(publish(&fx.jail, &fresh)));
    assert!(fx.home.join("docs/new.txt").is_file());
    books.check("a publish to a new name");
}

/// A partial is kept for a resume only if it holds no more than the client
/// has; otherwise, or when no resume is asked, it starts empty.
#[test]
fn open_partial_keeps_or_empties_and_truncate_empties() {
    let fx = Fixture::new();
    let target = vp("/big");
    let data = vec![b'x'; 10_000];
    let mut books = Books::new(&fx.home);
    books.add(put_partial(&fx.jail, &target, &data));
    books.wrote(0, 10_000);
    books.check("a partial of three blocks");

    // Kept: the partial holds no more than the client allows.
    for keep in [10_000, u64::MAX] {
        let opened = fx.jail.open_partial(&target, Some(keep)).unwrap();
        assert_eq!(opened.existing, 10_000);
        assert_eq!(opened.file.metadata().unwrap().len(), 10_000);
        assert_eq!(opened.change, Change::default());
    }
    // Emptied: it holds more, or no resume is asked.
    for keep in [Some(9_999), None] {
        let opened = fx.jail.open_partial(&target, keep).unwrap();
        assert_eq!(opened.existing, 0, "{keep:?}");
        assert_eq!(opened.file.metadata().unwrap().len(), 0, "{keep:?}");
        // Three blocks down to one.
        let freed = books.counted(opened.change);
        assert_eq!(freed, Change::new(-2 * i64::try_from(BLOCK).unwrap(), 0));
        books.check("emptying on open");
        let mut f = opened.file;
        f.write_all(&data).unwrap();
        books.wrote(0, 10_000);
    }
    books.check("rewriting");

    // A resume the client declined, after opening.
    let opened = fx.jail.open_partial(&target, Some(u64::MAX)).unwrap();
    assert_eq!(opened.existing, 10_000);
    let freed = books.counted(fx.jail.truncate_partial(&opened.file, &target).unwrap());
    assert_eq!(freed, Change::new(-2 * i64::try_from(BLOCK).unwrap(), 0));
    assert_eq!(opened.file.metadata().unwrap().len(), 0);
    books.check("truncate_partial");
    // Truncating an empty partial frees nothing.
    assert_eq!(
        fx.jail.truncate_partial(&opened.file, &target).unwrap(),
        Change::default()
    );
}

#[test]
fn publish_refuses_folders_and_replaces_symlinks_themselves() {
    let fx = Fixture::new();
    fs::create_dir(fx.home.join("d")).unwrap();
    symlink(fx.outside.join("secret.txt"), fx.home.join("link")).unwrap();
    let mut books = Books::new(&fx.home);

    let d = vp("/d");
    books.add(put_partial(&fx.jail, &d, b"x"));
    books.wrote(0, 1);
    assert_eq!(
        publish_code(fx.jail.publish_partial(&d)),
        ErrorCode::IsADirectory
    );
    // The partial survives a refused publish.
    assert!(partial_path(&fx, &d).is_file());
    assert_removed_partial(
        &books.counted(fx.jail.remove_partial(&d).unwrap()),
        file_charge(1),
    );
    assert_eq!(
        publish_code(fx.jail.publish_partial(&VPath::root())),
        ErrorCode::IsADirectory
    );
    books.check("refused publishes");

    let link = vp("/link");
    books.add(put_partial(&fx.jail, &link, b"mine"));
    books.wrote(0, 4);
    // A symlink costs nothing and is no file a download could hold.
    assert_no_entry_change(&books.counted(publish(&fx.jail, &link)));
    let meta = fs::symlink_metadata(fx.home.join("link")).unwrap();
    assert!(meta.is_file());
    assert_eq!(fs::read(fx.home.join("link")).unwrap(), b"mine");
    books.check("a publish over a symlink");
    fx.assert_outside_untouched();
}

/// Where the partial for `target` lives on the server.
fn partial_path(fx: &Fixture, target: &VPath) -> PathBuf {
    fx.home.join(PARTIAL_DIR).join(Jail::partial_name(target))
}

/// A publish that fails keeps the partial, so the verified data can still
/// be published once the folder is back.
#[test]
fn a_failed_publish_keeps_the_partial() {
    let fx = Fixture::new();
    let mut books = Books::new(&fx.home);
    // A folder that never existed.
    let missing = vp("/nope/x");
    books.add(put_partial(&fx.jail, &missing, b"data"));
    books.wrote(0, 4);
    let e = fx.jail.publish_partial(&missing).unwrap_err().0;
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("/nope"), "{}", e.message);
    assert!(partial_path(&fx, &missing).is_file());

    // A folder removed, then replaced by a file, during the upload.
    let target = vp("/up/f.txt");
    books.add(fx.jail.mkdir(&vp("/up")).unwrap());
    books.add(put_partial(&fx.jail, &target, b"verified"));
    books.wrote(0, 8);
    books.add(fx.jail.rmdir(&vp("/up")).unwrap());
    let e = fx.jail.publish_partial(&target).unwrap_err().0;
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(e.message, "the folder /up was moved away during the upload");
    assert!(partial_path(&fx, &target).is_file());
    fs::write(fx.home.join("up"), "").unwrap();
    let e = fx.jail.publish_partial(&target).unwrap_err().0;
    assert_eq!(e.code, ErrorCode::NotADirectory);
    assert!(e.message.contains("moved away"), "{}", e.message);
    assert_eq!(fs::read(partial_path(&fx, &target)).unwrap(), b"verified");
    fs::remove_file(fx.home.join("up")).unwrap();
    books.check("failed publishes");

    // The folder is back: the kept partial publishes.
    books.add(fx.jail.mkdir(&vp("/up")).unwrap());
    assert_no_entry_change(&books.counted(publish(&fx.jail, &target)));
    assert_eq!(fs::read(fx.home.join("up/f.txt")).unwrap(), b"verified");
    assert!(!partial_path(&fx, &target).exists());
    books.check("the publish once the folder is back");
}

#[test]
fn remove_and_clean_partials_free_bytes() {
    let fx = Fixture::new();
    let none = HashSet::new();
    assert_eq!(
        fx.jail.clean_stale_partials(Duration::ZERO, &none).unwrap(),
        Change::default()
    );

    let mut books = Books::new(&fx.home);
    books.add(put_partial(&fx.jail, &vp("/a"), &[b'x'; 10_000]));
    books.wrote(0, 10_000);
    assert_removed_partial(
        &books.counted(fx.jail.remove_partial(&vp("/a")).unwrap()),
        3 * BLOCK,
    );

    for (name, data) in [("/b", &b"12"[..]), ("/c", b"345"), ("/d", b"6789")] {
        books.add(put_partial(&fx.jail, &vp(name), data));
        books.wrote(0, data.len() as u64);
    }
    books.check("three partials");
    assert_eq!(
        fx.jail.clean_stale_partials(DAY, &none).unwrap(),
        Change::default()
    );
    assert_eq!(names(&fx.home.join(PARTIAL_DIR)).len(), 3);

    // Old, but in use: kept.
    let (b, c, d) = (vp("/b"), vp("/c"), vp("/d"));
    for p in [&b, &c, &d] {
        age(&partial_path(&fx, p), 2 * DAY);
    }
    let in_use = HashSet::from([Jail::partial_name(&b)]);
    // Old, but opened again (a resume): fresh.
    let opened = fx.jail.open_partial(&c, Some(u64::MAX)).unwrap();
    assert_eq!(opened.existing, 3);
    drop(opened);
    let swept = books.counted(fx.jail.clean_stale_partials(DAY, &in_use).unwrap());
    // Only `d` was left behind.
    assert_eq!((swept.entries, swept.gone), (-1, None), "{swept:?}");
    assert!(-swept.bytes >= i64::try_from(BLOCK).unwrap(), "{swept:?}");
    assert!(partial_path(&fx, &b).is_file() && partial_path(&fx, &c).is_file());
    assert!(!partial_path(&fx, &d).exists());
    books.check("a sweep");

    let swept = books.counted(fx.jail.clean_stale_partials(Duration::ZERO, &none).unwrap());
    assert_eq!((swept.entries, swept.gone), (-2, None), "{swept:?}");
    assert!(
        -swept.bytes >= 2 * i64::try_from(BLOCK).unwrap(),
        "{swept:?}"
    );
    assert!(names(&fx.home.join(PARTIAL_DIR)).is_empty());
    books.check("sweeping all");
}

/// The server keeps each home's cost as a recount at login plus every
/// change since: after any sequence of changes, that must equal a recount.
#[test]
fn changes_add_up_to_a_recount() {
    let fx = Fixture::new();
    let mut books = Books::new(&fx.home);
    books.step("mkdir /d", fx.jail.mkdir(&vp("/d")).unwrap());
    books.step("mkdir /d/e", fx.jail.mkdir(&vp("/d/e")).unwrap());
    // Enough long names to make /d grow beyond one block.
    for i in 0..40 {
        let p = vp(&format!("/d/{i:0>200}"));
        books.step("mkdir of a long name", fx.jail.mkdir(&p).unwrap());
    }
    assert!(fs::metadata(fx.home.join("d")).unwrap().len() > BLOCK);

    // An upload of a new file, then one over it.
    let old = vp("/d/old");
    let big = vec![b'x'; 10_000];
    books.wrote(0, 10_000);
    books.step("open_partial", put_partial(&fx.jail, &old, &big));
    books.step("publish to a new name", publish(&fx.jail, &old));
    books.wrote(0, 3);
    books.step("open_partial", put_partial(&fx.jail, &old, b"new"));
    let replaced = publish(&fx.jail, &old);
    assert_removed_file(&replaced, file_charge(10_000));
    books.step("publish over a file", replaced);

    // A file renamed onto an existing one, across folders.
    books.wrote(0, 10_000);
    books.step("open_partial", put_partial(&fx.jail, &vp("/a"), &big));
    books.step("publish", publish(&fx.jail, &vp("/a")));
    let replaced = fx.jail.rename(&vp("/a"), &old).unwrap();
    assert_removed_file(&replaced, file_charge(3));
    books.step("rename onto a file", replaced);
    books.step(
        "rename to a new name",
        fx.jail.rename(&old, &vp("/d/e/moved")).unwrap(),
    );

    // An upload abandoned half way, one truncated, one swept.
    let p = vp("/p");
    books.wrote(0, 10_000);
    books.step("open_partial", put_partial(&fx.jail, &p, &big));
    let opened = fx.jail.open_partial(&p, Some(u64::MAX)).unwrap();
    books.step("resume", opened.change);
    books.step(
        "truncate_partial",
        fx.jail.truncate_partial(&opened.file, &p).unwrap(),
    );
    books.step("remove_partial", fx.jail.remove_partial(&p).unwrap());
    books.wrote(0, 10_000);
    books.step("open_partial", put_partial(&fx.jail, &p, &big));
    books.step(
        "clean_stale_partials",
        fx.jail
            .clean_stale_partials(Duration::ZERO, &HashSet::new())
            .unwrap(),
    );

    // Everything removed again.
    books.step("remove", fx.jail.remove_file(&vp("/d/e/moved")).unwrap());
    books.step("rmdir /d/e", fx.jail.rmdir(&vp("/d/e")).unwrap());
    for i in 0..40 {
        let p = vp(&format!("/d/{i:0>200}"));
        books.step("rmdir of a long name", fx.jail.rmdir(&p).unwrap());
    }
    books.step("rmdir /d", fx.jail.rmdir(&vp("/d")).unwrap());
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
            let (f, _, _) = r.unwrap();
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
        if let Ok(mut opened) = fx.jail.open_partial(&up, None) {
            assert_eq!(opened.existing, 0);
            opened.file.write_all(b"upload").unwrap();
        }
        ok(&fx.jail.publish_partial(&up).map_err(|e| e.0));
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

/// Any sequence of changes, successful or refused, adds up to a recount:
/// the property the server's quota figures rest on.
mod accounting {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Mkdir(u8),
        Rmdir(u8),
        /// Upload (dir, name, size) and publish it.
        Put(u8, u8, u32),
        /// Upload without publishing: a partial left for resume.
        Partial(u8, u8, u32),
        DropPartial(u8, u8),
        Rename((u8, u8), (u8, u8)),
        RenameDir(u8, u8),
        Remove(u8, u8),
    }

    fn dir(d: u8) -> VPath {
        VPath::resolve(&VPath::root(), &format!("/d{}", d % 3)).unwrap()
    }

    /// A file in the root (d = 0) or in /d1, /d2.
    fn file(d: u8, n: u8) -> VPath {
        let parent = if d.is_multiple_of(3) {
            VPath::root()
        } else {
            dir(d)
        };
        parent.join(&format!("f{}", n % 4)).unwrap()
    }

    fn op() -> impl Strategy<Value = Op> {
        let size = prop_oneof![Just(0u32), 1u32..5000, 4096u32..4097, 8000u32..20_000];
        prop_oneof![
            any::<u8>().prop_map(Op::Mkdir),
            any::<u8>().prop_map(Op::Rmdir),
            (any::<u8>(), any::<u8>(), size.clone()).prop_map(|(d, n, s)| Op::Put(d, n, s)),
            (any::<u8>(), any::<u8>(), size).prop_map(|(d, n, s)| Op::Partial(d, n, s)),
            (any::<u8>(), any::<u8>()).prop_map(|(d, n)| Op::DropPartial(d, n)),
            (any::<(u8, u8)>(), any::<(u8, u8)>()).prop_map(|(a, b)| Op::Rename(a, b)),
            (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::RenameDir(a, b)),
            (any::<u8>(), any::<u8>()).prop_map(|(d, n)| Op::Remove(d, n)),
        ]
    }

    fn upload(jail: &Jail, books: &mut Books, target: &VPath, size: u32) -> bool {
        let Ok(mut opened) = jail.open_partial(target, None) else {
            return false;
        };
        books.add(opened.change);
        opened.file.write_all(&vec![9u8; size as usize]).unwrap();
        books.wrote(0, u64::from(size));
        true
    }

    fn apply(jail: &Jail, books: &mut Books, op: &Op) {
        let change = match op {
            Op::Mkdir(d) => jail.mkdir(&dir(*d)),
            Op::Rmdir(d) => jail.rmdir(&dir(*d)),
            Op::Put(d, n, size) => {
                let target = file(*d, *n);
                if !upload(jail, books, &target, *size) {
                    return;
                }
                jail.publish_partial(&target)
                    .map(|p| p.change)
                    .map_err(|e| e.0)
            }
            Op::Partial(d, n, size) => {
                upload(jail, books, &file(*d, *n), *size);
                return;
            }
            Op::DropPartial(d, n) => jail.remove_partial(&file(*d, *n)),
            Op::Rename((a, b), (c, e)) => jail.rename(&file(*a, *b), &file(*c, *e)),
            Op::RenameDir(a, b) => jail.rename(&dir(*a), &dir(*b)),
            Op::Remove(d, n) => jail.remove_file(&file(*d, *n)),
        };
        if let Ok(change) = change {
            books.add(change);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn every_sequence_of_changes_adds_up_to_a_recount(ops in vec(op(), 1..40)) {
            let fx = Fixture::new();
            let mut books = Books::new(&fx.home);
            for (i, op) in ops.iter().enumerate() {
                apply(&fx.jail, &mut books, op);
                books.check(&format!("step {i}: {op:?}"));
            }
        }
    }
}

/// Runs a tree removal to its end in pieces of `budget`, adding each
/// piece's change to `books` and checking them against a recount after
/// every piece; returns how many pieces it took.
fn remove_tree_in_pieces(fx: &Fixture, books: &mut Books, p: &str, budget: usize) -> usize {
    let mut removal = fx.jail.start_tree_removal(&vp(p)).unwrap();
    let mut pieces = 0;
    loop {
        let piece = removal.next_piece(&fx.jail, budget);
        pieces += 1;
        books.step(&format!("piece {pieces} of removing {p}"), piece.change);
        if piece.result.unwrap() {
            return pieces;
        }
    }
}

#[test]
fn a_tree_is_removed_in_pieces_that_add_up_to_a_recount() {
    let fx = Fixture::new();
    let top = fx.home.join("t");
    fs::create_dir_all(top.join("a/b/c")).unwrap();
    fs::create_dir(top.join("empty")).unwrap();
    for i in 0..300 {
        fs::write(top.join("a").join(format!("f{i}")), vec![b'x'; i * 37]).unwrap();
    }
    fs::write(top.join("a/b/c/deep"), "deep").unwrap();
    // Links inside are removed themselves, never followed.
    symlink(&fx.outside, top.join("to_outside")).unwrap();
    symlink(fx.outside.join("secret.txt"), top.join("a/b/secret")).unwrap();
    fs::write(fx.home.join("kept.txt"), "kept").unwrap();
    let mut books = Books::new(&fx.home);
    let pieces = remove_tree_in_pieces(&fx, &mut books, "/t", 64);
    assert!(pieces > 4, "{pieces} pieces");
    assert!(!top.exists());
    assert_eq!(names(&fx.home), ["kept.txt"]);
    fx.assert_outside_untouched();
}

#[test]
fn rm_r_of_a_file_or_link_removes_just_it_and_the_home_is_refused() {
    let fx = Fixture::new();
    fs::write(fx.home.join("f"), "x").unwrap();
    symlink(&fx.outside, fx.home.join("l")).unwrap();
    let mut books = Books::new(&fx.home);
    assert_eq!(remove_tree_in_pieces(&fx, &mut books, "/f", 8), 1);
    assert_eq!(remove_tree_in_pieces(&fx, &mut books, "/l", 8), 1);
    assert!(names(&fx.home).is_empty());
    let err = fx.jail.start_tree_removal(&vp("/")).err().unwrap();
    assert_eq!(err.code, ErrorCode::PermissionDenied);
    assert!(err.message.contains("whole home"), "{}", err.message);
    fx.assert_outside_untouched();
}

#[test]
fn pages_of_a_folder_yield_every_name_once() {
    let fx = Fixture::new();
    fs::create_dir(fx.home.join("big")).unwrap();
    let all: HashSet<String> = (0..1000).map(|i| format!("n{i:04}")).collect();
    for name in &all {
        fs::write(fx.home.join("big").join(name), "").unwrap();
    }
    let mut seen = Vec::new();
    let mut from = 0;
    let mut pages = 0;
    loop {
        let mut page = fx.jail.open_listing_page(&vp("/big"), 300, from).unwrap();
        while !page.finished() {
            seen.extend(page.next_batch(64).unwrap().into_iter().map(|e| e.name));
        }
        pages += 1;
        match page.next_page() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 1000);
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), all);
}
