//! Removing a whole tree (`rm -r`) in bounded pieces.
//!
//! Each piece holds the home's tree lock for at most [`TreeRemoval::next_piece`]'s
//! budget of removals and reports exactly what it removed, so the user's
//! figures follow the removal as it goes and other changes (and other
//! users' jobs) run between pieces. The walk holds the open folders from
//! the tree's top down to where it is: every name it acts on is one plain
//! name read from one of those folders, removed with `unlinkat` (which
//! never follows a symlink) or opened with `openat2` beneath that folder
//! with the jail's [`RESOLVE`](super::RESOLVE) flags, so a symlink inside
//! is removed itself, never followed, and no mount point is crossed.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::change::{FolderWatch, signed};
use super::{Change, FsError, Gone, Jail, VPath, file_type, open_beneath, removed};
use crate::proto::ErrorCode;
use crate::usage;

/// Folders deeper than this below the tree's top are refused: each level
/// holds an open folder until the walk comes back up.
pub const MAX_TREE_DEPTH: usize = 128;

/// Times a folder is read again when it is still not empty at the end
/// (something was added meanwhile) before the removal gives up.
const RESCANS: u8 = 3;

/// One open folder of the walk and its name in the folder above.
struct Level {
    dir: Dir,
    name: CString,
    rescans: u8,
}

/// A tree being removed, between pieces.
pub struct TreeRemoval {
    /// The tree's top, as the user named it (for messages).
    path: VPath,
    /// The folder holding the top.
    parent: OwnedFd,
    name: CString,
    /// Open folders from the top down; empty before the first piece.
    stack: Vec<Level>,
    started: bool,
    removed: u64,
}

/// What one piece did: its cost (without `gone`), the files that lost
/// their last name, and whether the tree is gone, or why it stopped.
#[must_use = "a piece's cost must reach the user's quota figures"]
pub struct Piece {
    pub change: Change,
    pub gone: Vec<Gone>,
    pub result: Result<bool, FsError>,
}

impl Jail {
    /// Prepares removing `p` and all below it; the home itself is refused.
    /// Nothing is removed until [`TreeRemoval::next_piece`].
    pub fn start_tree_removal(&self, p: &VPath) -> Result<TreeRemoval, FsError> {
        let Some(name) = p.file_name() else {
            return Err(FsError::new(
                ErrorCode::PermissionDenied,
                "refusing to remove / (your whole home); remove what is inside it by name",
            ));
        };
        let name = CString::new(name).map_err(|_| FsError::from_errno(Errno::INVAL, p))?;
        let parent = self.open_parent(p, OFlags::PATH)?;
        Ok(TreeRemoval {
            path: p.clone(),
            parent,
            name,
            stack: Vec::new(),
            started: false,
            removed: 0,
        })
    }
}

impl TreeRemoval {
    /// Entries (files, folders, links) removed so far.
    pub fn removed(&self) -> u64 {
        self.removed
    }

    /// Removes up to `budget` entries under the home's tree lock.
    pub fn next_piece(&mut self, jail: &Jail, budget: usize) -> Piece {
        let _tree = jail.lock_tree();
        let mut piece = Piece {
            change: Change::default(),
            gone: Vec::new(),
            result: Ok(false),
        };
        piece.result = self.run(&mut piece, budget).map_err(|e| self.error(e));
        if piece.result.is_err() {
            // Nothing more will be done: let go of the open folders.
            self.stack.clear();
        }
        piece
    }

    fn error(&self, e: Errno) -> FsError {
        match e {
            Errno::NOTEMPTY => FsError::new(
                ErrorCode::NotEmpty,
                format!("{}: files keep being added to it; not removed", self.path),
            ),
            Errno::NFILE | Errno::MFILE => FsError::new(
                ErrorCode::Unavailable,
                "the server is out of resources right now; try again later",
            ),
            e => FsError::from_errno(e, &self.path),
        }
    }

    fn run(&mut self, piece: &mut Piece, budget: usize) -> Result<bool, Errno> {
        if !self.started {
            self.started = true;
            let st = rustix::fs::statat(
                &self.parent,
                self.name.as_c_str(),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
            if file_type(&st) != FileType::Directory {
                // `rm -r FILE` removes the file (or the link itself).
                let watch = FolderWatch::new(&[&self.parent]);
                rustix::fs::unlinkat(&self.parent, self.name.as_c_str(), AtFlags::empty())?;
                self.account(piece, removed(&st).and_folders(watch));
                return Ok(true);
            }
            let dir = open_dir(self.parent.as_fd(), &self.name)?;
            self.stack.push(Level {
                dir,
                name: self.name.clone(),
                rescans: 0,
            });
        }
        let mut done = 0;
        while done < budget {
            let depth = self.stack.len();
            let Some(level) = self.stack.last_mut() else {
                return Ok(true);
            };
            let Some(item) = level.dir.read() else {
                // Read to its end: it should be empty now.
                if self.rmdir_top(piece)? && self.stack.is_empty() {
                    return Ok(true);
                }
                done += 1;
                continue;
            };
            let item = item?;
            let name = item.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let here = level.dir.fd()?;
            let st = match rustix::fs::statat(here, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed meanwhile by someone else.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e),
            };
            if file_type(&st) == FileType::Directory {
                if depth >= MAX_TREE_DEPTH {
                    return Err(Errno::NAMETOOLONG);
                }
                let dir = open_dir(here, name)?;
                let name = name.to_owned();
                self.stack.push(Level {
                    dir,
                    name,
                    rescans: 0,
                });
                continue;
            }
            let watch = FolderWatch::new(&[&here]);
            match rustix::fs::unlinkat(here, name, AtFlags::empty()) {
                Ok(()) => {}
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e),
            }
            let change = removed(&st).and_folders(watch);
            self.account(piece, change);
            done += 1;
        }
        Ok(false)
    }

    /// Removes the folder at the top of the stack, now read to its end.
    /// Returns false when it was not empty after all (something was added
    /// meanwhile) and is being read again.
    fn rmdir_top(&mut self, piece: &mut Piece) -> Result<bool, Errno> {
        let Some(mut level) = self.stack.pop() else {
            return Ok(true);
        };
        let parent: BorrowedFd<'_> = match self.stack.last() {
            Some(up) => up.dir.fd()?,
            None => self.parent.as_fd(),
        };
        let st = rustix::fs::statat(parent, level.name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        let watch = FolderWatch::new(&[&parent]);
        match rustix::fs::unlinkat(parent, level.name.as_c_str(), AtFlags::REMOVEDIR) {
            Ok(()) => {
                let change = Change::new(-signed(usage::charge(&st)), -1).and_folders(watch);
                self.account(piece, change);
                Ok(true)
            }
            Err(Errno::NOTEMPTY) if level.rescans < RESCANS => {
                level.rescans += 1;
                level.dir.rewind();
                self.stack.push(level);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn account(&mut self, piece: &mut Piece, mut change: Change) {
        if let Some(gone) = change.gone.take() {
            piece.gone.push(gone);
        }
        piece.change = piece.change.and(change);
        self.removed += 1;
    }
}

/// Opens the folder `name` in `dir` for reading, beneath it, following no
/// symlink and crossing no mount point.
fn open_dir(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<Dir, Errno> {
    let fd = open_beneath(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    Dir::new(fd)
}
