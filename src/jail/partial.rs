//! Unfinished uploads, one file per target in `<home>/.ftpd-partial/`.
//!
//! An upload is written to its partial and then renamed over its target in
//! one step, so the target is always either the old file or the whole new
//! one. A partial outlives a broken connection so that the upload can
//! resume; [`Jail::clean_stale_partials`] removes those nobody came back for.
//! No [`VPath`] can name [`PARTIAL_DIR`], so users reach partials only
//! through these calls.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use super::{
    FsError, Jail, PARTIAL_DIR, VPath, check_regular, file_type, lstat_at, open_beneath,
    regular_size,
};
use crate::proto::ErrorCode;

/// Bytes of the SHA-256 kept in a partial's name: 128 bits make a clash
/// between two targets of one user out of the question.
const NAME_HASH_BYTES: usize = 16;

/// Only the server reads unfinished uploads.
const PARTIAL_DIR_MODE: u32 = 0o700;

/// Mode of a partial, and so of the published file (before the umask).
const PARTIAL_MODE: u32 = 0o644;

/// What a publish did once the rename succeeded.
#[derive(Debug)]
pub struct Published {
    /// Size of the regular file the upload replaced (0 if none).
    pub replaced: u64,
    /// Whether the folder was synced, so the new name survives a crash.
    pub synced: Result<(), FsError>,
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
    /// writing, without truncating it; returns it and its current length.
    pub fn open_partial(&self, target: &VPath) -> Result<(File, u64), FsError> {
        let err = |e| FsError::from_errno(e, target);
        let dir = self
            .partial_dir(true)
            .map_err(err)?
            .ok_or_else(|| err(Errno::NOENT))?;
        // O_NONBLOCK so that a FIFO planted under the partial's name cannot
        // stall the server; fstat then refuses it.
        let fd = open_beneath(
            dir.as_fd(),
            &Jail::partial_name(target),
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::from_raw_mode(PARTIAL_MODE),
        )
        .map_err(err)?;
        let st = rustix::fs::fstat(&fd).map_err(err)?;
        check_regular(&st, target)?;
        rustix::fs::fcntl_setfl(&fd, OFlags::empty()).map_err(err)?;
        Ok((File::from(fd), regular_size(&st)))
    }

    /// Deletes the partial for `target` if there is one; returns the bytes
    /// freed.
    pub fn remove_partial(&self, target: &VPath) -> Result<u64, FsError> {
        let err = |e| FsError::from_errno(e, target);
        let Some(dir) = self.partial_dir(false).map_err(err)? else {
            return Ok(0);
        };
        let name = Jail::partial_name(target);
        let st = match lstat_at(&dir, &name) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(0),
            Err(e) => return Err(err(e)),
        };
        match rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
            Ok(()) => Ok(regular_size(&st)),
            Err(Errno::NOENT) => Ok(0),
            Err(e) => Err(err(e)),
        }
    }

    /// Atomically renames the partial over `target`, then fsyncs the
    /// target's folder so the new name survives a crash. The caller syncs
    /// the file's data first.
    ///
    /// Refuses a `target` that is a folder (`IsADirectory`) or lies below a
    /// symlink (`PermissionDenied`); a symlink *at* `target` is replaced
    /// itself, which is safe. Returns the size of the regular file it
    /// replaced (0 if none).
    pub fn publish_partial(&self, target: &VPath) -> Result<u64, FsError> {
        let done = self.publish_partial_reporting_sync(target)?;
        done.synced.map(|()| done.replaced)
    }

    /// [`Jail::publish_partial`], telling a failed rename (nothing changed)
    /// apart from a failed folder sync after the rename (the target already
    /// holds the new file, but the new name may not survive a crash).
    pub fn publish_partial_reporting_sync(&self, target: &VPath) -> Result<Published, FsError> {
        let Some(target_name) = target.file_name() else {
            return Err(FsError::new(ErrorCode::IsADirectory, "is a directory: /"));
        };
        let err = |e| FsError::from_errno(e, target);
        let no_upload = || {
            FsError::new(
                ErrorCode::NotFound,
                format!("no upload in progress for {target}"),
            )
        };
        let partials = self
            .partial_dir(false)
            .map_err(err)?
            .ok_or_else(no_upload)?;
        // Readable, not O_PATH: fsync needs a real descriptor.
        let dir = self.open_parent(target, OFlags::RDONLY)?;
        let replaced = match lstat_at(&dir, target_name) {
            Ok(st) if file_type(&st) == FileType::Directory => return Err(err(Errno::ISDIR)),
            Ok(st) => regular_size(&st),
            Err(Errno::NOENT) => 0,
            Err(e) => return Err(err(e)),
        };
        let name = Jail::partial_name(target);
        rustix::fs::renameat(&partials, name.as_str(), &dir, target_name).map_err(|e| {
            match lstat_at(&partials, &name) {
                Err(Errno::NOENT) => no_upload(),
                _ => err(e),
            }
        })?;
        Ok(Published {
            replaced,
            synced: rustix::fs::fsync(&dir).map_err(err),
        })
    }

    /// Deletes partials whose mtime is at least `max_age` old; returns the
    /// bytes freed. Uploads in progress must be excluded by the caller
    /// (through `max_age`, or by running this when none are).
    pub fn clean_stale_partials(&self, max_age: Duration) -> std::io::Result<u64> {
        let Some(dir) = self.partial_dir(false)? else {
            return Ok(0);
        };
        // Names first, deletions after: removing entries while reading
        // the folder could make the read skip some.
        let mut names = Vec::new();
        for item in rustix::fs::Dir::read_from(&dir)? {
            let name = item?.file_name().to_owned();
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                names.push(name);
            }
        }
        let now = SystemTime::now();
        let mut freed = 0u64;
        for name in names {
            let st = match rustix::fs::statat(&dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
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
            match rustix::fs::unlinkat(&dir, name.as_c_str(), AtFlags::empty()) {
                Ok(()) => freed = freed.saturating_add(regular_size(&st)),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(freed)
    }

    /// [`PARTIAL_DIR`] (readable), creating it first if `create`; `None`
    /// if it does not exist and `create` is false.
    ///
    /// The descriptor is kept between uploads (one `fstat` checks it is
    /// still linked, in case someone removed the folder), which saves a
    /// path walk, a `mkdirat` and a `close` per upload.
    fn partial_dir(&self, create: bool) -> Result<Option<Arc<OwnedFd>>, Errno> {
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
