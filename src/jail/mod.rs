//! The home jail: each user's home folder appears to them as `/`, and
//! nothing outside it is reachable.
//!
//! # How the jail holds
//!
//! A user's path is first checked and normalized into a [`VPath`] (no `..`,
//! no separators or control characters inside a name). It is never joined
//! onto a server path as a string. Instead the kernel walks it, below an open
//! descriptor of the home:
//!
//! - Every open goes through `openat2` with `RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`: a path
//!   that would leave the home, meet a symlink (in any component, the last
//!   one included) or cross a mount point fails with `EXDEV`/`ELOOP`, which
//!   the user sees as `PermissionDenied`.
//! - Every other operation (lstat, mkdir, unlink, rename) opens the *parent*
//!   folder that way and then acts on one plain name with an `*at` syscall;
//!   none of those follow a symlink in the last component.
//!
//! The check and the use are the same kernel path walk, so a process that
//! swaps a folder for a symlink between two requests (or during one) can
//! make a request fail, never make it leave the home. Symlinks and special
//! files found in a home are listed, never followed or opened.
//!
//! Unfinished uploads live in the hidden folder [`PARTIAL_DIR`] at the top of
//! each home (see `partial.rs`); no [`VPath`] can name it.

mod change;
mod error;
mod listing;
mod partial;
mod small;
pub mod stamp;
mod tree;
mod vpath;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::proto::{Entry, EntryKind, ErrorCode};
use crate::usage;
use change::{FolderWatch, signed};

pub use change::{Change, FileId, Gone};
pub use error::FsError;
pub use listing::Listing;
pub use partial::{OpenedPartial, PublishError, Published};
pub use small::{Creating, Publishing, Target};
pub use tree::{Piece, TreeRemoval};
pub use vpath::VPath;

/// Name of the hidden folder in each home where unfinished uploads live;
/// users can never name it.
pub const PARTIAL_DIR: &str = ".ftpd-partial";

/// How every path below a home is resolved: stay beneath the starting
/// folder, follow no symlink of any kind, cross no mount point.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Tries of `openat2` that fail with `EAGAIN` (the kernel saw a concurrent
/// rename during the walk) or `EINTR` before giving up.
const OPEN_TRIES: usize = 8;

/// Mode of folders users create (before the umask).
const DIR_MODE: u32 = 0o755;

/// One user's home, held open. Cheap to share: wrap in `Arc`.
#[derive(Debug)]
pub struct Jail {
    /// The home, opened `O_DIRECTORY` (readable, so it can be listed and
    /// fsynced).
    home: OwnedFd,
    /// The partial-uploads folder, once opened (see `partial_dir`).
    partials: Mutex<Option<Arc<OwnedFd>>>,
    /// Held by every change to the tree, so that each measures exactly
    /// what it did (see `change.rs`). Only helper threads take it.
    tree: Mutex<()>,
}

impl Jail {
    /// Opens the home folder at `home` (a server path from the config; it
    /// may itself be reached through symlinks, nothing below it may).
    ///
    /// Fails with `Unsupported` on a kernel without `openat2` (before Linux
    /// 5.6, or filtered by seccomp): there is no safe fallback.
    pub fn open(home: &Path) -> std::io::Result<Jail> {
        let home = rustix::fs::open(
            home,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        match open_beneath(home.as_fd(), ".", OFlags::PATH, Mode::empty()) {
            Ok(_) => Ok(Jail {
                home,
                partials: Mutex::new(None),
                tree: Mutex::new(()),
            }),
            Err(Errno::NOSYS) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "openat2 is not available (Linux 5.6 or later is needed)",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Type, size and mtime of `p`, without following a symlink: a symlink
    /// is reported as [`EntryKind::Symlink`]. The root's name is "/".
    pub fn stat(&self, p: &VPath) -> Result<Entry, FsError> {
        let Some(name) = p.file_name() else {
            let st = rustix::fs::fstat(&self.home).map_err(|e| FsError::from_errno(e, p))?;
            return Ok(entry("/".to_owned(), &st));
        };
        let dir = self.open_parent(p, OFlags::PATH)?;
        let st = lstat_at(&dir, name).map_err(|e| FsError::from_errno(e, p))?;
        Ok(entry(name.to_owned(), &st))
    }

    /// Like [`Jail::stat`], but a missing `p` in an existing folder is
    /// `Ok(None)`; a missing or non-folder parent is still an error. One
    /// lookup serves "may a file be created here, and is one there".
    pub fn lookup(&self, p: &VPath) -> Result<Option<Entry>, FsError> {
        let Some(name) = p.file_name() else {
            return self.stat(p).map(Some);
        };
        let dir = self.open_parent(p, OFlags::PATH)?;
        match lstat_at(&dir, name) {
            Ok(st) => Ok(Some(entry(name.to_owned(), &st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(FsError::from_errno(e, p)),
        }
    }

    /// Checks that `p` exists and is a real folder (not a symlink to one),
    /// as `cd` needs.
    pub fn check_dir(&self, p: &VPath) -> Result<(), FsError> {
        // No O_NOFOLLOW: with O_PATH it would open a final symlink itself,
        // while without it RESOLVE_NO_SYMLINKS refuses it with ELOOP.
        self.open_beneath(p, OFlags::PATH | OFlags::DIRECTORY)
            .map(drop)
            .map_err(|e| FsError::from_errno(e, p))
    }

    /// Serialises changes to this home: a change holds this while it looks,
    /// acts and measures. Never taken on the reactor thread.
    fn lock_tree(&self) -> MutexGuard<'_, ()> {
        // Nothing is guarded but the order of changes: a panic elsewhere
        // leaves nothing half-done here.
        self.tree.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the folder `p` (mode 0755 before the umask).
    pub fn mkdir(&self, p: &VPath) -> Result<Change, FsError> {
        let _tree = self.lock_tree();
        self.mkdir_locked(p)
    }

    /// [`Jail::mkdir`] for a caller that holds the tree lock.
    fn mkdir_locked(&self, p: &VPath) -> Result<Change, FsError> {
        let Some(name) = p.file_name() else {
            return Err(FsError::new(ErrorCode::AlreadyExists, "already exists: /"));
        };
        let dir = self.open_parent(p, OFlags::PATH)?;
        let watch = FolderWatch::new(&[&dir]);
        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(DIR_MODE))
            .map_err(|e| FsError::from_errno(e, p))?;
        let own = lstat_at(&dir, name).map_or(usage::BLOCK, |st| usage::charge(&st));
        Ok(Change::new(signed(own), 1).and_folders(watch))
    }

    /// Removes the empty folder `p`.
    pub fn rmdir(&self, p: &VPath) -> Result<Change, FsError> {
        let Some(name) = p.file_name() else {
            return Err(FsError::new(ErrorCode::PermissionDenied, "cannot remove /"));
        };
        let err = |e| FsError::from_errno(e, p);
        let _tree = self.lock_tree();
        let dir = self.open_parent(p, OFlags::PATH)?;
        let st = lstat_at(&dir, name).map_err(err)?;
        if file_type(&st) != FileType::Directory {
            return Err(err(Errno::NOTDIR));
        }
        let watch = FolderWatch::new(&[&dir]);
        rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(err)?;
        Ok(Change::new(-signed(usage::charge(&st)), -1).and_folders(watch))
    }

    /// Removes a file, or a symlink or special file itself (never its
    /// target). A folder is refused with `IsADirectory`.
    pub fn remove_file(&self, p: &VPath) -> Result<Change, FsError> {
        let Some(name) = p.file_name() else {
            return Err(FsError::new(ErrorCode::IsADirectory, "is a directory: /"));
        };
        let err = |e| FsError::from_errno(e, p);
        let _tree = self.lock_tree();
        let dir = self.open_parent(p, OFlags::PATH)?;
        let st = lstat_at(&dir, name).map_err(err)?;
        if file_type(&st) == FileType::Directory {
            return Err(err(Errno::ISDIR));
        }
        let watch = FolderWatch::new(&[&dir]);
        rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(err)?;
        Ok(removed(&st).and_folders(watch))
    }

    /// Moves `from` to `to` (renameat between the two opened parents),
    /// replacing a file or an empty folder at `to`.
    ///
    /// Moving `/` or onto `/` is refused, as is moving a folder into itself
    /// (`BadRequest`). A file onto a folder is `IsADirectory`, a folder onto
    /// a file `NotADirectory`, a folder onto a non-empty one `NotEmpty`.
    pub fn rename(&self, from: &VPath, to: &VPath) -> Result<Change, FsError> {
        let (Some(from_name), Some(to_name)) = (from.file_name(), to.file_name()) else {
            let what = if from.is_root() {
                "cannot move /"
            } else {
                "cannot replace /"
            };
            return Err(FsError::new(ErrorCode::PermissionDenied, what));
        };
        let into_itself = || {
            FsError::new(
                ErrorCode::BadRequest,
                format!("cannot move {from} into itself"),
            )
        };
        if to != from && to.starts_with(from) {
            return Err(into_itself());
        }
        let _tree = self.lock_tree();
        let from_dir = self.open_parent(from, OFlags::PATH)?;
        let to_dir = self.open_parent(to, OFlags::PATH)?;
        let src = lstat_at(&from_dir, from_name).map_err(|e| FsError::from_errno(e, from))?;
        let src_is_dir = file_type(&src) == FileType::Directory;
        let replaced = match lstat_at(&to_dir, to_name) {
            // The same file under both names (or `from == to`): the kernel
            // does nothing, so nothing is replaced.
            Ok(dst) if (dst.st_dev, dst.st_ino) == (src.st_dev, src.st_ino) => {
                return Ok(Change::default());
            }
            Ok(dst) => {
                let dst_is_dir = file_type(&dst) == FileType::Directory;
                if dst_is_dir && !src_is_dir {
                    return Err(FsError::from_errno(Errno::ISDIR, to));
                }
                if src_is_dir && !dst_is_dir {
                    return Err(FsError::from_errno(Errno::NOTDIR, to));
                }
                removed(&dst)
            }
            Err(Errno::NOENT) => Change::default(),
            Err(e) => return Err(FsError::from_errno(e, to)),
        };
        let watch = FolderWatch::new(&[&from_dir, &to_dir]);
        rustix::fs::renameat(&from_dir, from_name, &to_dir, to_name).map_err(|e| match e {
            // The kernel's own loop check, should the tree have changed
            // since the check above.
            Errno::INVAL => into_itself(),
            Errno::NOENT => FsError::from_errno(e, from),
            // Some filesystems say EEXIST for a non-empty target folder.
            Errno::EXIST if src_is_dir => FsError::from_errno(Errno::NOTEMPTY, to),
            _ => FsError::from_errno(e, to),
        })?;
        Ok(replaced.and_folders(watch))
    }

    /// Opens the regular file `p` for reading and returns it with its size.
    ///
    /// Anything else is refused before a byte is read: a symlink, FIFO,
    /// socket or device with `PermissionDenied`, a folder with
    /// `IsADirectory`.
    pub fn open_read(&self, p: &VPath) -> Result<(File, u64, FileId), FsError> {
        let err = |e| FsError::from_errno(e, p);
        // O_PATH first: it looks the file up without opening it, so a
        // device is never opened (some act on open) and a FIFO cannot make
        // the single-threaded server wait for a writer.
        let path_fd = self
            .open_beneath(p, OFlags::PATH | OFlags::NOFOLLOW)
            .map_err(err)?;
        let st = rustix::fs::fstat(&path_fd).map_err(err)?;
        check_regular(&st, p)?;
        // Reopen that very inode for reading: no second lookup, so nothing
        // swapped in meanwhile can be opened instead.
        let fd = reopen_for_reading(&path_fd).map_err(err)?;
        Ok((File::from(fd), regular_size(&st), FileId::of(&st)))
    }

    /// Opens `p` below the home with [`RESOLVE`].
    fn open_beneath(&self, p: &VPath, flags: OFlags) -> Result<OwnedFd, Errno> {
        open_beneath(self.home.as_fd(), &p.relative(), flags, Mode::empty())
    }

    /// Opens the folder holding `p` (`O_PATH` for `*at` calls, `O_RDONLY`
    /// to fsync it too). Errors name the parent, which is what failed.
    fn open_parent(&self, p: &VPath, flags: OFlags) -> Result<OwnedFd, FsError> {
        let Some(parent) = p.parent() else {
            return Err(FsError::new(
                ErrorCode::PermissionDenied,
                "permission denied: /",
            ));
        };
        self.open_beneath(&parent, flags | OFlags::DIRECTORY)
            .map_err(|e| FsError::from_errno(e, &parent))
    }
}

/// `openat2(dir, rel, flags | O_CLOEXEC, mode, RESOLVE)`, retrying the
/// transient failures.
fn open_beneath<P: rustix::path::Arg + Copy>(
    dir: BorrowedFd<'_>,
    rel: P,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, rel, flags | OFlags::CLOEXEC, mode, RESOLVE) {
            Err(Errno::AGAIN | Errno::INTR) if tries + 1 < OPEN_TRIES => tries += 1,
            result => return result,
        }
    }
}

/// What unlinking the entry `st` did: its cost freed, and for a regular
/// file, which file lost its name.
fn removed(st: &Stat) -> Change {
    let charge = usage::charge(st);
    let gone = (file_type(st) == FileType::RegularFile).then(|| Gone {
        id: FileId::of(st),
        charge,
    });
    let entries = match file_type(st) {
        FileType::RegularFile | FileType::Directory => -1,
        _ => 0,
    };
    Change {
        bytes: -signed(charge),
        entries,
        gone,
    }
}

/// lstat of one plain name in an opened folder.
fn lstat_at(dir: &OwnedFd, name: &str) -> Result<Stat, Errno> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// A regular file's size; 0 for anything else (nothing a quota counts).
fn regular_size(st: &Stat) -> u64 {
    if file_type(st) == FileType::RegularFile {
        u64::try_from(st.st_size).unwrap_or(0)
    } else {
        0
    }
}

/// Refuses what is not a regular file: a folder as `IsADirectory`, the rest
/// (symlink, FIFO, socket, device) as `PermissionDenied`.
fn check_regular(st: &Stat, p: &VPath) -> Result<(), FsError> {
    match file_type(st) {
        FileType::RegularFile => Ok(()),
        FileType::Directory => Err(FsError::from_errno(Errno::ISDIR, p)),
        _ => Err(FsError::new(
            ErrorCode::PermissionDenied,
            format!("not a regular file: {p}"),
        )),
    }
}

/// Opens an `O_PATH` descriptor's file for reading through
/// `/proc/self/fd`, the kernel's way to upgrade such a descriptor.
fn reopen_for_reading(path_fd: &OwnedFd) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    let link = format!("/proc/self/fd/{}", path_fd.as_raw_fd());
    rustix::fs::open(
        link.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The wire form of an lstat result.
fn entry(name: String, st: &Stat) -> Entry {
    let kind = match file_type(st) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::Other,
    };
    Entry {
        name,
        kind,
        size: regular_size(st),
        // `st_mtime` is `i64` or `c_long` depending on the target.
        #[allow(clippy::unnecessary_cast)]
        mtime: st.st_mtime as i64,
    }
}
