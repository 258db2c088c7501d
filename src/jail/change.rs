//! What a change to a user's tree did to its cost, measured while the
//! change held the tree lock (see [`Jail::lock_tree`](super::Jail)).
//!
//! Every change that adds, removes, renames or resizes an entry outside
//! an upload's own partial file takes the lock, so "stat, change, stat"
//! cannot interleave with another session's change of the same home: the
//! figures it reports are exactly what it did, and a tally of every
//! [`Change`] equals a recount ([`crate::usage::tally`]).

use std::os::fd::AsFd;

use rustix::fs::Stat;

use crate::usage;

/// The identity of a file on the server: what a download holds open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity in an `fstat` or `lstat` result.
    pub fn of(st: &Stat) -> FileId {
        // `st_dev` and `st_ino` are u64 or c_ulong depending on the target.
        #[allow(clippy::unnecessary_cast)]
        FileId {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        }
    }
}

/// A regular file whose last name a change removed (deleted, or replaced
/// by a rename or a publish). Its blocks are free only once nobody holds it
/// open, so a download of it keeps it charged (see the server's accounts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    pub id: FileId,
    /// What the file cost (already subtracted in [`Change::bytes`]).
    pub charge: u64,
}

/// What a change did to the home's cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use = "a change's cost must reach the user's quota figures"]
pub struct Change {
    /// Bytes of cost added (+) or freed (-).
    pub bytes: i64,
    /// Files and folders added (+) or removed (-).
    pub entries: i64,
    /// The file the change unlinked, if any.
    pub gone: Option<Gone>,
}

impl Change {
    /// A change of `bytes` and `entries`.
    pub fn new(bytes: i64, entries: i64) -> Change {
        Change {
            bytes,
            entries,
            gone: None,
        }
    }

    /// Both changes together (`gone` from whichever has one).
    pub fn and(self, other: Change) -> Change {
        Change {
            bytes: self.bytes.saturating_add(other.bytes),
            entries: self.entries.saturating_add(other.entries),
            gone: self.gone.or(other.gone),
        }
    }

    /// Adds what the watched folders grew or shrank by.
    pub fn and_folders(self, watch: FolderWatch) -> Change {
        self.and(Change::new(watch.delta(), 0))
    }
}

/// Bytes as a signed delta (saturating: no real file is that big).
pub fn signed(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The cost of some folders before a change, to compare with after: a
/// folder's size grows with the names it holds.
pub struct FolderWatch<'a> {
    folders: Vec<(&'a dyn AsFd, FileId, u64)>,
}

impl<'a> FolderWatch<'a> {
    /// Notes the cost of each folder (a folder given twice counts once).
    pub fn new(folders: &[&'a dyn AsFd]) -> FolderWatch<'a> {
        let mut watched: Vec<(&'a dyn AsFd, FileId, u64)> = Vec::new();
        for &fd in folders {
            if let Ok(st) = rustix::fs::fstat(fd) {
                let id = FileId::of(&st);
                if watched.iter().all(|w| w.1 != id) {
                    watched.push((fd, id, usage::charge(&st)));
                }
            }
        }
        FolderWatch { folders: watched }
    }

    /// How much the folders' cost changed since [`FolderWatch::new`].
    fn delta(&self) -> i64 {
        self.folders
            .iter()
            .map(|&(fd, _, before)| grown_since(fd, Some(before)))
            .fold(0i64, i64::saturating_add)
    }
}

/// A folder's cost now; `None` if it cannot be read (it then counts no
/// growth). For changes that meet their folders as they go, where a
/// [`FolderWatch`] made up front cannot serve.
pub fn folder_cost(fd: impl AsFd) -> Option<u64> {
    rustix::fs::fstat(fd).ok().map(|st| usage::charge(&st))
}

/// How much a folder's cost grew since it was `before` (from
/// [`folder_cost`]); 0 if either could not be read.
pub fn grown_since(fd: impl AsFd, before: Option<u64>) -> i64 {
    match (before, folder_cost(fd)) {
        (Some(before), Some(now)) => signed(now).saturating_sub(signed(before)),
        _ => 0,
    }
}
