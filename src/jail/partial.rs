//! Unfinished uploads, one file per target in `<home>/.ftpd-partial/`.
//!
//! An upload is written to its partial and then renamed over its target in
//! one step, so the target is always either the old file or the whole new
//! one. A partial outlives a broken connection so that the upload can
//! resume; [`Jail::clean_stale_partials`] removes those nobody came back for.
//! No [`VPath`] can name [`PARTIAL_DIR`], so users reach partials only
//! through these calls.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::change::{FolderWatch, signed};
use super::{
    Change, FsError, Jail, PARTIAL_DIR, VPath, check_regular, file_type, lstat_at, open_beneath,
    regular_size, removed,
};
use crate::proto::ErrorCode;
use crate::usage;

/// Bytes of the SHA-256 kept in a partial's name: 128 bits make a clash
/// between two targets of one user out of the question.
const NAME_HASH_BYTES: usize = 16;

/// Only the server reads unfinished uploads.
const PARTIAL_DIR_MODE: u32 = 0o700;

/// Mode of a partial, and so of the published file (before the umask).
pub(super) const PARTIAL_MODE: u32 = 0o644;

/// What a publish did once the rename succeeded.
#[derive(Debug)]
pub struct Published {
    /// What publishing did to the home's cost: the file it replaced, if
    /// any, and the folders' growth.
    pub change: Change,
    /// Whether the folder was synced, so the new name survives a crash.
    pub synced: Result<(), FsError>,
}

/// Why a publish did not happen. The partial, if it still exists, is
/// untouched: its data was verified, so it is kept for a later `put`.
#[derive(Debug)]
pub struct PublishError(pub FsError);

/// An opened partial upload.
#[derive(Debug)]
pub struct OpenedPartial {
    pub file: File,
    /// Bytes already in it, to resume from.
    pub existing: u64,
    /// What opening did to the home's cost (a new partial, a truncation).
    pub change: Change,
}

impl Jail {
    /// The partial file's name for an upload to `target`: the hex of the
    /// first 16 bytes of the SHA-256 of the path string, plus ".part".
    pub fn partial_name(target: &VPath) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(target.to_string().as_bytes());
        let mut name = String::with_capacity(NAME_HASH_BYTES * 2 + 5);
        for &b in &digest[..NAME_HASH_BYTES] {
            name.push(char::from(HEX[usize::from(b >> 4)]));
            name.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        name.push_str(".part");
        name
    }

    /// Opens (creating if missing) the partial for `target` for reading and
    /// writing. Its data is kept if it holds at most `keep_up_to` bytes
    /// (a resume), else it is emptied. Opening marks it as fresh, so the
    /// sweep of stale partials leaves it alone.
    pub fn open_partial(
        &self,
        target: &VPath,
        keep_up_to: Option<u64>,
    ) -> Result<OpenedPartial, FsError> {
        let err = |e| FsError::from_errno(e, target);
        let _tree = self.lock_tree();
        let (dir, made) = self.partials_for_writing().map_err(err)?;
        let watch = FolderWatch::new(&[&*dir]);
        let mut opened = open_partial_in(&dir, target, keep_up_to)?;
        opened.change = made.and(opened.change).and_folders(watch);
        // Not fatal: the in-flight list given to the sweep covers it too.
        let _ = opened.file.set_modified(SystemTime::now());
        Ok(opened)
    }

    /// [`PARTIAL_DIR`], created if missing, with what creating it cost
    /// (nothing if it was there). The caller holds the tree lock.
    pub(super) fn partials_for_writing(&self) -> Result<(Arc<OwnedFd>, Change), Errno> {
        if let Some(dir) = self.partial_dir(false)? {
            return Ok((dir, Change::default()));
        }
        let home_watch = FolderWatch::new(&[&self.home]);
        let dir = self.partial_dir(true)?.ok_or(Errno::NOENT)?;
        let own = rustix::fs::fstat(&*dir).map_or(usage::BLOCK, |st| usage::charge(&st));
        Ok((dir, Change::new(signed(own), 1).and_folders(home_watch)))
    }

    /// The length of the partial for `target`, if there is one.
    pub fn partial_len(&self, target: &VPath) -> Result<Option<u64>, FsError> {
        let err = |e| FsError::from_errno(e, target);
        let Some(dir) = self.partial_dir(false).map_err(err)? else {
            return Ok(None);
        };
        match lstat_at(&dir, &Jail::partial_name(target)) {
            Ok(st) => Ok(Some(regular_size(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    /// Empties an open partial (a resume the client declined).
    pub fn truncate_partial(&self, file: &File, target: &VPath) -> Result<Change, FsError> {
        let _tree = self.lock_tree();
        let size = file
            .metadata()
            .map_err(|e| FsError::from_io(&e, target))?
            .len();
        file.set_len(0).map_err(|e| FsError::from_io(&e, target))?;
        let freed = usage::file_charge(size) - usage::file_charge(0);
        Ok(Change::new(-signed(freed), 0))
    }

    /// Deletes the partial for `target` if there is one.
    pub fn remove_partial(&self, target: &VPath) -> Result<Change, FsError> {
        let err = |e| FsError::from_errno(e, target);
        let _tree = self.lock_tree();
        let Some(dir) = self.partial_dir(false).map_err(err)? else {
            return Ok(Change::default());
        };
        let name = Jail::partial_name(target);
        let st = match lstat_at(&dir, &name) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Change::default()),
            Err(e) => return Err(err(e)),
        };
        let watch = FolderWatch::new(&[&*dir]);
        match rustix::fs::unlinkat(&*dir, name.as_str(), AtFlags::empty()) {
            Ok(()) => Ok(removed(&st).and_folders(watch)),
            Err(Errno::NOENT) => Ok(Change::default()),
            Err(e) => Err(err(e)),
        }
    }

    /// Atomically renames the partial over `target`, then fsyncs the
    /// target's folder so the new name survives a crash. The caller syncs
    /// the file's data first.
    ///
    /// Refuses a `target` that is a folder (`IsADirectory`) or lies below a
    /// symlink (`PermissionDenied`); a symlink *at* `target` is replaced
    /// itself, which is safe. On any refusal the partial stays as it was.
    pub fn publish_partial(&self, target: &VPath) -> Result<Published, PublishError> {
        let (change, dir) = self.publish_partial_unsynced(target)?;
        Ok(Published {
            change,
            synced: rustix::fs::fsync(&dir).map_err(|e| FsError::from_errno(e, target)),
        })
    }

    /// Like [`Jail::publish_partial`], but hands back the target's folder
    /// (readable) instead of syncing it, so that a batch of files in one
    /// folder costs one folder sync. The new name survives a crash only
    /// once the caller has synced that folder.
    pub fn publish_partial_unsynced(
        &self,
        target: &VPath,
    ) -> Result<(Change, OwnedFd), PublishError> {
        target_name(target)?;
        let tree = self.lock_tree();
        let partials = self
            .partial_dir(false)
            .map_err(|e| PublishError(FsError::from_errno(e, target)))?
            .ok_or_else(|| no_upload(target))?;
        let dir = self.publish_folder(target)?;
        let watch = FolderWatch::new(&[&*partials, &dir]);
        let change = rename_partial(&partials, &dir, target)?.and_folders(watch);
        drop(tree);
        Ok((change, dir))
    }

    /// The folder a publish renames `target` into, readable (not `O_PATH`)
    /// since fsync needs a real descriptor.
    pub(super) fn publish_folder(&self, target: &VPath) -> Result<OwnedFd, PublishError> {
        self.open_parent(target, OFlags::RDONLY).map_err(|e| {
            let folder = target.parent().unwrap_or_else(VPath::root);
            PublishError(match e.code {
                ErrorCode::NotFound | ErrorCode::NotADirectory => FsError::new(
                    e.code,
                    format!("the folder {folder} was moved away during the upload"),
                ),
                _ => e,
            })
        })
    }

    /// Deletes partials whose mtime is at least `max_age` old, except those
    /// named in `in_use` (uploads in progress); returns what it freed.
    pub fn clean_stale_partials(
        &self,
        max_age: Duration,
        in_use: &HashSet<String>,
    ) -> std::io::Result<Change> {
        let Some(dir) = self.partial_dir(false)? else {
            return Ok(Change::default());
        };
        // Names first, deletions after: removing entries while reading
        // the folder could make the read skip some.
        let mut names = Vec::new();
        for item in rustix::fs::Dir::read_from(&*dir)? {
            let name = item?.file_name().to_owned();
            let bytes = name.to_bytes();
            let busy = std::str::from_utf8(bytes).is_ok_and(|n| in_use.contains(n));
            if bytes != b"." && bytes != b".." && !busy {
                names.push(name);
            }
        }
        let now = SystemTime::now();
        let mut change = Change::default();
        for name in names {
            // One name at a time under the lock: an upload that opens
            // its partial meanwhile refreshes its mtime first.
            let _tree = self.lock_tree();
            let st = match rustix::fs::statat(&*dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            // We only ever create files here; leave anything else alone.
            if file_type(&st) == FileType::Directory {
                continue;
            }
            let mtime = u64::try_from(st.st_mtime)
                .ok()
                .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
                .unwrap_or(UNIX_EPOCH);
            // A clock step back makes mtimes "in the future": age 0.
            let age = now.duration_since(mtime).unwrap_or(Duration::ZERO);
            if age < max_age {
                continue;
            }
            let watch = FolderWatch::new(&[&*dir]);
            match rustix::fs::unlinkat(&*dir, name.as_c_str(), AtFlags::empty()) {
                Ok(()) => change = change.and(removed(&st).and_folders(watch)),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Change {
            gone: None,
            ..change
        })
    }

    /// [`PARTIAL_DIR`] (readable), creating it first if `create`; `None`
    /// if it does not exist and `create` is false.
    ///
    /// The descriptor is kept between uploads (one `fstat` checks it is
    /// still linked, in case someone removed the folder), which saves a
    /// path walk, a `mkdirat` and a `close` per upload.
    pub(super) fn partial_dir(&self, create: bool) -> Result<Option<Arc<OwnedFd>>, Errno> {
        let mut cached = self.partials.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fd) = cached.as_ref() {
            match rustix::fs::fstat(&**fd) {
                Ok(st) if st.st_nlink > 0 => return Ok(Some(Arc::clone(fd))),
                _ => *cached = None,
            }
        }
        let opened = self.open_partial_dir(create)?.map(Arc::new);
        cached.clone_from(&opened);
        Ok(opened)
    }

    fn open_partial_dir(&self, create: bool) -> Result<Option<OwnedFd>, Errno> {
        if create {
            match rustix::fs::mkdirat(
                &self.home,
                PARTIAL_DIR,
                Mode::from_raw_mode(PARTIAL_DIR_MODE),
            ) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
        }
        // Opened beneath the home like any user path, so a symlink planted
        // under this name is refused, never followed.
        match open_beneath(
            self.home.as_fd(),
            PARTIAL_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) if !create => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Opens the partial for `target` in `dir`, the partials folder (created
/// if missing, emptied unless it holds at most `keep_up_to` bytes). The
/// change counts the file, not the folder's growth. The caller holds the
/// tree lock.
pub(super) fn open_partial_in(
    dir: &OwnedFd,
    target: &VPath,
    keep_up_to: Option<u64>,
) -> Result<OpenedPartial, FsError> {
    let err = |e| FsError::from_errno(e, target);
    let name = Jail::partial_name(target);
    let existed = lstat_at(dir, &name).is_ok();
    // O_NONBLOCK so that a FIFO planted under the partial's name cannot
    // stall the server; fstat then refuses it.
    let fd = open_beneath(
        dir.as_fd(),
        &name,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        Mode::from_raw_mode(PARTIAL_MODE),
    )
    .map_err(err)?;
    let st = rustix::fs::fstat(&fd).map_err(err)?;
    check_regular(&st, target)?;
    rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(err)?;
    let file = File::from(fd);
    let mut existing = regular_size(&st);
    let mut change = Change::default();
    if !existed {
        change = Change::new(signed(usage::file_charge(existing)), 1);
    }
    if existing > 0 && keep_up_to.is_none_or(|keep| existing > keep) {
        file.set_len(0).map_err(|e| FsError::from_io(&e, target))?;
        let freed = usage::file_charge(existing) - usage::file_charge(0);
        change = change.and(Change::new(-signed(freed), 0));
        existing = 0;
    }
    Ok(OpenedPartial {
        file,
        existing,
        change,
    })
}

/// Renames the partial for `target` out of `partials` into `dir`, the
/// target's folder; the change is what it replaced. The caller holds the
/// tree lock and measures the folders' growth.
pub(super) fn rename_partial(
    partials: &OwnedFd,
    dir: &OwnedFd,
    target: &VPath,
) -> Result<Change, PublishError> {
    let target_name = target_name(target)?;
    let err = |e| PublishError(FsError::from_errno(e, target));
    let replaced = match lstat_at(dir, target_name) {
        Ok(st) if file_type(&st) == FileType::Directory => return Err(err(Errno::ISDIR)),
        Ok(st) => removed(&st),
        Err(Errno::NOENT) => Change::default(),
        Err(e) => return Err(err(e)),
    };
    let name = Jail::partial_name(target);
    rustix::fs::renameat(partials, name.as_str(), dir, target_name).map_err(|e| match lstat_at(
        partials, &name,
    ) {
        Err(Errno::NOENT) => no_upload(target),
        _ => err(e),
    })?;
    Ok(replaced)
}

/// The name a publish gives its file: `/` is a folder.
fn target_name(target: &VPath) -> Result<&str, PublishError> {
    target
        .file_name()
        .ok_or_else(|| PublishError(FsError::new(ErrorCode::IsADirectory, "is a directory: /")))
}

pub(super) fn no_upload(target: &VPath) -> PublishError {
    PublishError(FsError::new(
        ErrorCode::NotFound,
        format!("no upload in progress for {target}"),
    ))
}
