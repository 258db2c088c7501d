//! Small files stored as a batch (the server's `PutSmall`): the steps of
//! an upload, with the tree lock taken, the partials folder checked and
//! each folder opened once per batch rather than once per file.
//!
//! A batch is created under one hold of the tree lock
//! ([`Jail::create_small`]: look at each target, make each partial),
//! written and synced without it ([`Jail::write_small`]), and published
//! under a second hold ([`Jail::publish_small`]). Each hold measures its
//! folders' growth once, from when it first meets a folder to its end, so
//! the figures stay exact (see `change.rs`): nothing else changes the
//! tree meanwhile.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, MutexGuard};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use super::change::{FileId, folder_cost, grown_since, signed};
use super::partial::{PARTIAL_MODE, no_upload, open_partial_in, rename_partial};
use super::{
    Change, FsError, Jail, PublishError, VPath, check_regular, file_type, lstat_at, open_beneath,
    regular_size, stamp,
};
use crate::proto::ErrorCode;
use crate::usage;

/// What is at the target of a small upload ([`Creating::target`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The same bytes are there already.
    Same,
    /// Nothing, or another file: a new one may replace it.
    Other,
}

/// The first hold of a batch: targets looked at, partials made.
#[must_use = "finish() reports what the batch did to the partials folder"]
pub struct Creating<'a> {
    jail: &'a Jail,
    _tree: MutexGuard<'a, ()>,
    /// The partials folder, once a partial was made, and its cost then.
    partials: Option<(Arc<OwnedFd>, Option<u64>)>,
    /// What making the partials folder cost, if this batch made it.
    made: Change,
    /// The folder of the last target looked at (`O_PATH`): a tree's files
    /// come folder by folder.
    parent: Option<(VPath, OwnedFd)>,
}

/// The second hold of a batch: partials renamed over their targets.
#[must_use = "finish() reports what the batch did to its folders"]
pub struct Publishing<'a> {
    jail: &'a Jail,
    _tree: MutexGuard<'a, ()>,
    partials: Option<(Arc<OwnedFd>, Option<u64>)>,
    /// The target folders met so far (readable, to be synced), with their
    /// cost when first met.
    folders: Vec<(VPath, OwnedFd, Option<u64>)>,
}

impl Jail {
    /// Begins a batch of small files: holds the tree lock until
    /// [`Creating::finish`].
    pub fn create_small(&self) -> Creating<'_> {
        Creating {
            jail: self,
            _tree: self.lock_tree(),
            partials: None,
            made: Change::default(),
            parent: None,
        }
    }

    /// Writes a whole small file into `file`, its partial (made by
    /// [`Creating::create`]), sets its modification time and remembers its
    /// CRC32 ([`stamp`]). Not synced: the caller syncs the batch together.
    /// Needs no lock: only this upload writes its partial. On failure the
    /// partial is removed. Either way the change is what it did to the
    /// home's cost.
    pub fn write_small(
        &self,
        target: &VPath,
        file: &File,
        data: &[u8],
        mtime: Option<i64>,
        crc: u32,
    ) -> (Change, Result<(), FsError>) {
        let grown_to =
            |len: u64| Change::new(signed(usage::file_charge(len) - usage::file_charge(0)), 0);
        let written = file
            .write_all_at(data, 0)
            .and_then(|()| mtime.map_or(Ok(()), |ns| stamp::set_mtime(file, ns)));
        match written {
            Ok(()) => {
                stamp::write_stamp(file, crc);
                (grown_to(data.len() as u64), Ok(()))
            }
            Err(e) => {
                // What really landed is what the removal frees.
                let landed = file.metadata().map_or(0, |m| m.len());
                let removed = self.remove_partial(target).unwrap_or_default();
                (
                    grown_to(landed).and(removed),
                    Err(FsError::from_io(&e, target)),
                )
            }
        }
    }

    /// Begins publishing a batch: holds the tree lock until
    /// [`Publishing::finish`].
    pub fn publish_small(&self) -> Publishing<'_> {
        Publishing {
            jail: self,
            _tree: self.lock_tree(),
            partials: None,
            folders: Vec::new(),
        }
    }
}

impl Creating<'_> {
    /// [`Jail::mkdir`], in its turn among the files.
    pub fn mkdir(&mut self, p: &VPath) -> Result<Change, FsError> {
        self.jail.mkdir_locked(p)
    }

    /// What is at `p`, the target of a small upload of `size` bytes with
    /// CRC32 `crc`: the same file already (a regular file of that size and
    /// CRC32, from its stamp or read and stamped afresh), or something a
    /// new file may replace. A folder (`IsADirectory`) or a special file
    /// (`PermissionDenied`) there is refused, as for any upload. An
    /// identical file whose modification time differs from `mtime` gets it
    /// (and a new stamp), as a fresh upload would have.
    pub fn target(
        &mut self,
        p: &VPath,
        size: u64,
        crc: u32,
        mtime: Option<i64>,
    ) -> Result<Target, FsError> {
        let Some(name) = p.file_name() else {
            return Err(FsError::new(ErrorCode::IsADirectory, "is a directory: /"));
        };
        let parent = p.parent().unwrap_or_else(VPath::root);
        let dir = match self.parent.take() {
            Some((path, fd)) if path == parent => fd,
            _ => self.jail.open_parent(p, OFlags::PATH)?,
        };
        let dir = &self.parent.insert((parent, dir)).1;
        let st = match lstat_at(dir, name) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Target::Other),
            Err(e) => return Err(FsError::from_errno(e, p)),
        };
        check_regular(&st, p)?;
        if regular_size(&st) != size {
            return Ok(Target::Other);
        }
        // The file itself, now: O_NOFOLLOW and O_NONBLOCK, so nothing
        // swapped in since the lstat is followed or waited on; its fstat
        // must show the same regular file.
        let fd = open_beneath(
            dir.as_fd(),
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
        );
        let Ok(fd) = fd else {
            return Ok(Target::Other);
        };
        let file = File::from(fd);
        let Ok(now) = rustix::fs::fstat(&file) else {
            return Ok(Target::Other);
        };
        if FileId::of(&now) != FileId::of(&st) || file_type(&now) != FileType::RegularFile {
            return Ok(Target::Other);
        }
        if !stamp::crc_of_small(&file, &now).is_ok_and(|c| c == crc) {
            return Ok(Target::Other);
        }
        if let Some(ns) = mtime
            && ns != stamp::mtime_ns(&now)
            && stamp::set_mtime(&file, ns).is_ok()
        {
            stamp::write_stamp(&file, crc);
        }
        Ok(Target::Same)
    }

    /// Makes the partial for `p`, empty (a partial left by an earlier
    /// attempt is emptied), with what the file costs.
    pub fn create(&mut self, p: &VPath) -> Result<(File, Change), FsError> {
        let err = |e| FsError::from_errno(e, p);
        let dir = match &self.partials {
            Some((dir, _)) => Arc::clone(dir),
            None => {
                let (dir, made) = self.jail.partials_for_writing().map_err(err)?;
                self.made = made;
                self.partials = Some((Arc::clone(&dir), folder_cost(&*dir)));
                dir
            }
        };
        // Most partials are new: O_EXCL makes one without looking first,
        // and never opens anything already under the name.
        match open_beneath(
            dir.as_fd(),
            &Jail::partial_name(p),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
            Mode::from_raw_mode(PARTIAL_MODE),
        ) {
            Ok(fd) => Ok((
                File::from(fd),
                Change::new(signed(usage::file_charge(0)), 1),
            )),
            Err(Errno::EXIST) => {
                let opened = open_partial_in(&dir, p, None)?;
                Ok((opened.file, opened.change))
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Ends the hold, with what the batch's partials did to their folder
    /// (and making it, if this batch did).
    pub fn finish(self) -> Change {
        let grown = match &self.partials {
            Some((dir, before)) => grown_since(&**dir, *before),
            None => 0,
        };
        self.made.and(Change::new(grown, 0))
    }
}

impl Publishing<'_> {
    /// Renames the partial for `target` over it, as
    /// [`Jail::publish_partial_unsynced`] does. Returns what it replaced
    /// and the index of the target's folder among those
    /// [`Publishing::finish`] hands back.
    pub fn publish(&mut self, target: &VPath) -> Result<(Change, usize), PublishError> {
        let partials = match &self.partials {
            Some((dir, _)) => Arc::clone(dir),
            None => {
                let dir = self
                    .jail
                    .partial_dir(false)
                    .map_err(|e| PublishError(FsError::from_errno(e, target)))?
                    .ok_or_else(|| no_upload(target))?;
                self.partials = Some((Arc::clone(&dir), folder_cost(&*dir)));
                dir
            }
        };
        let parent = target.parent().unwrap_or_else(VPath::root);
        let i = match self.folders.iter().position(|(path, _, _)| *path == parent) {
            Some(i) => i,
            None => {
                let dir = self.jail.publish_folder(target)?;
                let before = folder_cost(&dir);
                self.folders.push((parent, dir, before));
                self.folders.len() - 1
            }
        };
        let replaced = rename_partial(&partials, &self.folders[i].1, target)?;
        Ok((replaced, i))
    }

    /// Ends the hold, with what the renames did to the folders, and the
    /// target folders (readable) for the caller to sync, in index order.
    pub fn finish(self) -> (Change, Vec<OwnedFd>) {
        let mut grown = match &self.partials {
            Some((dir, before)) => grown_since(&**dir, *before),
            None => 0,
        };
        let mut folders = Vec::with_capacity(self.folders.len());
        for (_, dir, before) in self.folders {
            grown = grown.saturating_add(grown_since(&dir, before));
            folders.push(dir);
        }
        (Change::new(grown, 0), folders)
    }
}
