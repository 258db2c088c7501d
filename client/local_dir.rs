//! A local folder that a download writes into, held open: every file and
//! folder below it is created, opened, renamed and checked by one plain
//! name relative to the open folder (`*at` calls), never by a path string.
//!
//! So a name the server sent can only ever land directly in the folder
//! it was meant for, and a symlink placed inside the target is never
//! followed: files are created with `O_EXCL` (which refuses an existing
//! link), existing ones opened with `O_NOFOLLOW`, folders entered with
//! `O_NOFOLLOW | O_DIRECTORY`.
//!
//! Each folder remembers the files and folders this run wrote into it, by
//! inode: on a file system that folds case or Unicode forms, a second name
//! that the file system takes for the first would overwrite it, and that is
//! refused instead.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// Mode of created files and folders (before the umask).
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// An inode: what two names that are one file share.
type Inode = (u64, u64);

/// An open local folder.
pub struct LocalDir {
    fd: OwnedFd,
    /// Where it is, for messages only.
    path: PathBuf,
    /// Files and folders this run put here.
    written: RefCell<HashSet<Inode>>,
}

impl LocalDir {
    /// Opens (creating it and its parents if needed) the folder the user
    /// named; as the user's own choice, it may be reached through links.
    pub fn open_top(path: &Path) -> io::Result<LocalDir> {
        std::fs::create_dir_all(path)?;
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(LocalDir {
            fd,
            path: path.to_owned(),
            written: RefCell::default(),
        })
    }

    /// The folder `name` in this one, created if missing; an existing
    /// symlink or file there is refused, never followed.
    pub fn subdir(&self, name: &str) -> io::Result<LocalDir> {
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(DIR_MODE)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => io::Error::other(format!(
                "{} exists and is not a folder (links are never followed)",
                self.show(name).display()
            )),
            e => e.into(),
        })?;
        let st = rustix::fs::fstat(&fd)?;
        self.claim(&st, name)?;
        Ok(LocalDir {
            fd,
            path: self.path.join(name),
            written: RefCell::default(),
        })
    }

    /// lstat of `name`, `None` if there is nothing by that name.
    pub fn lstat(&self, name: &str) -> io::Result<Option<Stat>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the existing regular file `name` for reading, not through a link.
    pub fn open_existing(&self, name: &str) -> io::Result<File> {
        self.open_regular(name, OFlags::RDONLY)
    }

    /// Opens the existing regular file `name` for reading and writing
    /// (resuming a `.part`), not through a link.
    pub fn open_part(&self, name: &str) -> io::Result<File> {
        self.open_regular(name, OFlags::RDWR)
    }

    fn open_regular(&self, name: &str, flags: OFlags) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(self.not_regular(name));
        }
        Ok(File::from(fd))
    }

    /// Creates the new file `name`, failing if anything is there already
    /// (a link included).
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )?;
        Ok(File::from(fd))
    }

    /// Removes the file (or link) `name`; nothing there is fine.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames `from` to `to` within this folder, replacing a file at `to`.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Renames `from` to `to` only if nothing is at `to`: `Ok(false)` if
    /// something is (or the file system cannot tell), and nothing moved.
    pub fn rename_new(&self, from: &str, to: &str) -> io::Result<bool> {
        let flags = rustix::fs::RenameFlags::NOREPLACE;
        match rustix::fs::renameat_with(&self.fd, from, &self.fd, to, flags) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST | Errno::INVAL | Errno::NOSYS) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Notes that this run wrote the file or folder `st` under `name`;
    /// refuses it if this run had already written it under another name.
    pub fn claim(&self, st: &Stat, name: &str) -> io::Result<()> {
        if !self.written.borrow_mut().insert(inode(st)) {
            return Err(self.collision(name));
        }
        Ok(())
    }

    /// Whether this run wrote the file or folder `st` here already.
    pub fn written(&self, st: &Stat) -> bool {
        self.written.borrow().contains(&inode(st))
    }

    /// The error for a name that the local file system takes for one
    /// written earlier in this run.
    pub fn collision(&self, name: &str) -> io::Error {
        io::Error::other(format!(
            "{} is the same local file as another name the server sent (they differ \
             only in case or Unicode form, or are repeated); not overwritten",
            self.show(name).display()
        ))
    }

    /// The error for something in the way that is not a regular file.
    pub fn not_regular(&self, name: &str) -> io::Error {
        io::Error::other(format!(
            "{} exists and is not a regular file (links are never followed)",
            self.show(name).display()
        ))
    }

    /// The local path of `name` here, for messages.
    pub fn show(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether `st` is a regular file.
    pub fn is_regular(st: &Stat) -> bool {
        FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
    }
}

impl Drop for LocalDir {
    /// Syncs the folder once nothing more is written to it, so the renames
    /// into it survive a crash. Best effort, as some file systems cannot.
    fn drop(&mut self) {
        let _ = rustix::fs::fsync(self.fd.as_fd());
    }
}

fn inode(st: &Stat) -> Inode {
    // `st_dev` and `st_ino` are u64 or c_ulong depending on the target.
    #[allow(clippy::unnecessary_cast)]
    (st.st_dev as u64, st.st_ino as u64)
}

/// The name a download is written under until it is complete and verified.
pub fn part_name(name: &str) -> String {
    format!("{name}.part")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_inside_are_never_followed() {
        let top = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), top.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), top.path().join("f.part")).unwrap();
        let dir = LocalDir::open_top(top.path()).unwrap();
        assert!(dir.subdir("sub").is_err());
        assert!(dir.create_new("f.part").is_err());
        assert!(dir.open_part("f.part").is_err());
        assert!(!outside.path().join("f").exists());
    }

    #[test]
    fn a_second_name_for_one_file_is_a_collision() {
        let top = tempfile::tempdir().unwrap();
        let dir = LocalDir::open_top(top.path()).unwrap();
        let file = dir.create_new("a").unwrap();
        let st = rustix::fs::fstat(&file).unwrap();
        dir.claim(&st, "a").unwrap();
        assert!(dir.written(&st));
        assert!(dir.claim(&st, "A").is_err());
    }
}
