//! How much of the disk a user's home takes, for quotas: the one rule for
//! what an entry costs, and the recount that applies it to a whole tree.
//!
//! An entry costs what it really occupies, in whole blocks, and never less
//! than one block, as `du` sees it: so empty files and folders are not
//! free, and nobody can fill the inode table or the disk with them. A
//! folder costs its own size (which grows with the names it holds), so
//! long names and many entries are paid for too. The home itself is the
//! administrator's: only what it grows beyond its first block counts.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{self, AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// The unit of allocation charged: the block size of common filesystems
/// (ext4, xfs, btrfs and tmpfs pages).
pub const BLOCK: u64 = 4096;

fn whole_blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// What a regular file of `size` bytes costs.
pub fn file_charge(size: u64) -> u64 {
    whole_blocks(size).max(BLOCK)
}

/// What a folder whose size (as `stat` reports it) is `size` costs.
pub fn dir_charge(size: u64) -> u64 {
    whole_blocks(size).max(BLOCK)
}

/// What an entry costs, from its `lstat`: files and folders as above;
/// symlinks and special files, which users cannot create, cost nothing.
pub fn charge(st: &Stat) -> u64 {
    let size = u64::try_from(st.st_size).unwrap_or(0);
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => file_charge(size),
        FileType::Directory => dir_charge(size),
        _ => 0,
    }
}

/// What the top folder of a home costs: what it grew beyond its first block.
pub fn home_charge(st: &Stat) -> u64 {
    charge(st).saturating_sub(BLOCK)
}

/// A recount of a home.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// What everything below costs ([`charge`]), plus [`home_charge`].
    pub bytes: u64,
    /// Files and folders below the top, at any depth.
    pub entries: u64,
}

/// [`tally`]'s bytes: what the tree under `dir` costs.
pub fn disk_usage(dir: &Path) -> io::Result<u64> {
    tally(dir).map(|u| u.bytes)
}

/// Recounts the tree under `dir` at any depth, hidden entries included
/// (unfinished uploads live in `.ftpd-partial/` and count against the
/// quota).
///
/// Symlinks under `dir` are never followed, so a link to a big file
/// elsewhere costs nothing and a link loop cannot trap the walk; `dir`
/// itself is opened as given. Entries that disappear during the walk (a
/// user deleting files meanwhile) are skipped. Other errors, such as an
/// unreadable folder, fail the walk and name the path.
///
/// Walks with directory descriptors (`openat` relative to the parent), not
/// joined paths: a tree deeper than `PATH_MAX`, which users can build one
/// folder at a time, is counted like any other. The explicit stack holds
/// one descriptor per level being read.
pub fn tally(dir: &Path) -> io::Result<Usage> {
    let root = fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| with_path(e.into(), dir))?;
    let top = fs::fstat(&root).map_err(|e| with_path(e.into(), dir))?;
    let mut usage = Usage {
        bytes: home_charge(&top),
        entries: 0,
    };
    let mut stack: Vec<(OwnedFd, Dir)> = Vec::new();
    let listing = Dir::read_from(&root).map_err(|e| with_path(e.into(), dir))?;
    stack.push((root, listing));
    while let Some((fd, listing)) = stack.last_mut() {
        let entry = match listing.read() {
            None => {
                stack.pop();
                continue;
            }
            Some(Ok(entry)) => entry,
            Some(Err(Errno::NOENT)) => continue,
            Some(Err(e)) => return Err(with_path(e.into(), dir)),
        };
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let st = match fs::statat(&*fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(with_path(e.into(), dir)),
        };
        let kind = FileType::from_raw_mode(st.st_mode);
        if matches!(kind, FileType::RegularFile | FileType::Directory) {
            usage.bytes = usage.bytes.saturating_add(charge(&st));
            usage.entries += 1;
        }
        if kind == FileType::Directory {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let sub = match fs::openat(&*fd, name, flags, Mode::empty()) {
                Ok(sub) => sub,
                // Gone, or swapped for a symlink since the stat: skip it.
                Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue,
                Err(e) => return Err(with_path(e.into(), dir)),
            };
            let listing = Dir::read_from(&sub).map_err(|e| with_path(e.into(), dir))?;
            stack.push((sub, listing));
        }
    }
    Ok(usage)
}

/// Adds the path to an error, keeping its kind for callers that match on it.
fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, len: usize) {
        fs::write(path, vec![b'x'; len]).unwrap();
    }

    #[test]
    fn counts_a_tree_deeper_than_path_max() {
        let home = tempfile::tempdir().unwrap();
        let mut dir = fs::File::open(home.path()).unwrap();
        let name = "x".repeat(255);
        // 20 levels of 256 bytes: over PATH_MAX (4096) as a joined path.
        for _ in 0..20 {
            let fd = std::os::fd::AsFd::as_fd(&dir);
            fs::create_dir_all(format!(
                "/proc/self/fd/{}/{name}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ))
            .unwrap();
            let next = rustix::fs::openat(
                fd,
                name.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .unwrap();
            dir = fs::File::from(next);
        }
        let file = rustix::fs::openat(
            &dir,
            "deep.txt",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&file, b"0123456789").unwrap();
        // 20 folders and one small file, a block each at least.
        assert_eq!(tally(home.path()).unwrap().entries, 21);
    }

    #[test]
    fn counts_regular_files_recursively_including_hidden() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        write(&h.join("a"), 10);
        fs::create_dir_all(h.join("d/e/f")).unwrap();
        write(&h.join("d/b"), 20);
        write(&h.join("d/e/f/c"), 30);
        fs::create_dir(h.join(".ftpd-partial")).unwrap();
        write(&h.join(".ftpd-partial/upload"), 40);
        write(&h.join(".hidden"), 1);
        fs::create_dir(h.join("empty")).unwrap();
        let usage = tally(h).unwrap();
        // a, .hidden, d, d/b, d/e, d/e/f, d/e/f/c, .ftpd-partial, its upload, empty
        assert_eq!(usage.entries, 10);
        assert!(usage.bytes >= 10 * BLOCK, "{usage:?}");
    }

    #[test]
    fn symlinks_are_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("big"), 1 << 20);
        fs::create_dir(outside.path().join("dir")).unwrap();
        write(&outside.path().join("dir/big2"), 1 << 20);

        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        write(&h.join("mine"), 5);
        symlink(outside.path().join("big"), h.join("link")).unwrap();
        symlink(outside.path().join("dir"), h.join("dirlink")).unwrap();
        symlink(h, h.join("loop")).unwrap();
        symlink(h.join("missing"), h.join("dangling")).unwrap();
        // Only `mine` counts: one block.
        assert_eq!(
            tally(h).unwrap(),
            Usage {
                bytes: BLOCK,
                entries: 1
            }
        );
    }

    #[test]
    fn every_entry_costs_at_least_a_block() {
        assert_eq!(file_charge(0), BLOCK);
        assert_eq!(file_charge(1), BLOCK);
        assert_eq!(file_charge(BLOCK), BLOCK);
        assert_eq!(file_charge(BLOCK + 1), 2 * BLOCK);
        assert_eq!(dir_charge(0), BLOCK);
        // Saturates instead of overflowing.
        assert_eq!(file_charge(u64::MAX), u64::MAX);
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        fs::write(h.join("empty"), b"").unwrap();
        fs::create_dir(h.join("folder")).unwrap();
        let usage = tally(h).unwrap();
        assert_eq!(usage.entries, 2);
        assert!(usage.bytes >= 2 * BLOCK, "{usage:?}");
    }

    #[test]
    fn missing_top_folder_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let err = disk_usage(&tmp.path().join("nope")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn deep_tree_does_not_recurse() {
        let tmp = tempfile::tempdir().unwrap();
        let mut path = tmp.path().to_path_buf();
        for _ in 0..200 {
            path.push("d");
        }
        fs::create_dir_all(&path).unwrap();
        write(&path.join("f"), 7);
        assert_eq!(tally(tmp.path()).unwrap().entries, 201);
    }
}
