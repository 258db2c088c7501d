//! Uploads and downloads: quota reservation, partial files, CRC32 checks,
//! atomic publish, resume, and streaming through the send buffer.
//!
//! Upload bookkeeping: `PutStart` reserves a little for opening the
//! partial, then what the rest of the file will cost ([`usage::file_charge`])
//! plus a block for the folder it lands in. Each chunk written moves the
//! cost it adds from "reserved" to "used" (a partial counts as stored).
//! Every way an upload ends goes through [`end_upload`], which does the
//! file work and hands back what is still reserved.
//!
//! Everything that changes the tree (opening, emptying, publishing or
//! deleting a partial) runs on a helper thread under the home's tree lock;
//! the reactor only writes chunks into the open partial and reads chunks
//! out of an open file.
//!
//! What happens to the partial file: kept for resume when the client goes
//! away, stalls, or ends early, or when publishing is refused (the target
//! folder moved away meanwhile); deleted when its data is known bad (CRC32
//! mismatch, more bytes than announced, a failed write or sync).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crc32fast::Hasher;

use super::SERVER_JOB;
use super::fds::FileSlot;
use super::log::quoted;
use super::session::{Ctx, Deferred, DeferredOp, JobResult, Phase, State, defer, resolve};
use super::worker::{Job, Lane, Step};
use crate::buf::{Buffer, Bypass};
use crate::frame::{CHUNK_HEADER_MAX, chunk_header};
use crate::jail::{
    Change, FileId, FsError, Jail, OpenedPartial, PublishError, Published, VPath, stamp,
};
use crate::log;
use crate::proto::{CHUNK_SIZE, ErrorCode, REPLY_CHUNK_TAG, Reply};
use crate::size::format_size;
use crate::usage::{self, BLOCK};

/// Reserved while a partial is opened: its first block, and a block each
/// for the folders that may grow to hold it.
pub(super) const OPEN_SLACK: u64 = 3 * BLOCK;

/// Reserved beyond the file's own cost: the target folder may grow a block
/// to hold the new name.
const PUBLISH_SLACK: u64 = BLOCK;

/// An upload whose partial is being opened.
pub struct Opening {
    user: String,
    path: VPath,
    jail: Arc<Jail>,
    slot: FileSlot,
    size: u64,
    resume: bool,
    mtime: Option<i64>,
    /// What `put_start` reserved (0 if a new file would not fit).
    reserved: u64,
}

/// What a `PutStart` asks for, besides the path.
#[derive(Debug, Clone, Copy)]
pub struct PutArgs {
    pub size: u64,
    pub resume: bool,
    /// The modification time to give the file (ns since the epoch).
    pub mtime: Option<i64>,
    /// The client's CRC32 of the whole file: an identical target is
    /// answered `Unchanged`.
    pub crc32: Option<u32>,
}

impl Upload {
    /// Whose upload this is.
    pub fn user_name(&self) -> &str {
        &self.user
    }
}

/// An upload in progress.
pub struct Upload {
    user: String,
    path: VPath,
    jail: Arc<Jail>,
    file: File,
    _slot: FileSlot,
    size: u64,
    /// Where this session's bytes began (after a resumed prefix).
    start: u64,
    /// Bytes in the partial file.
    written: u64,
    /// CRC32 of the partial file's first `written` bytes.
    hasher: Hasher,
    /// Bytes reserved and not used yet.
    reserved: u64,
    /// The modification time to give the file (ns since the epoch).
    mtime: Option<i64>,
    began: Instant,
}

/// A download in progress.
pub struct Download {
    user: String,
    path: VPath,
    file: File,
    id: FileId,
    _slot: FileSlot,
    size: u64,
    start: u64,
    sent: u64,
    hasher: Hasher,
    began: Instant,
    /// Where the client asked to resume, and its CRC32 of that prefix.
    asked: u64,
    client_crc: u32,
}

/// How an upload ends.
pub enum UploadEnd {
    /// The partial stays for a resume (removed if empty: nothing to resume).
    Keep,
    /// The partial's data is bad: delete it.
    Delete,
    /// The partial became the file; what that did to the tree.
    Published(Change),
}

fn fail(tx: &mut Buffer, ctx: &mut Ctx, e: &FsError) -> Phase {
    ctx.send_error(tx, e.code, &e.message);
    Phase::Ready
}

/// Bytes hashed per slice while checking a resumed prefix: a few
/// milliseconds of work, after which others' jobs get their turn.
const HASH_SLICE: u64 = 32 * 1024 * 1024;

/// Bytes read per call while hashing.
const HASH_PIECE: usize = 1024 * 1024;

/// A download's prefix up to this size is hashed on the reactor: it is one
/// chunk's read, as `pump_download` does for every chunk, and far cheaper
/// than a helper thread's round trip. It makes a tree's rerun (`get -r`
/// offering each small file whole) cost no thread hop per file.
const INLINE_HASH: u64 = CHUNK_SIZE as u64;

/// The CRC32 of `file[..len]`, read now; for `len <= INLINE_HASH` only.
fn hash_now(file: &File, len: u64) -> io::Result<u32> {
    let mut buf = vec![0u8; usize::try_from(len.min(INLINE_HASH)).unwrap_or(0)];
    file.read_exact_at(&mut buf, 0)?;
    Ok(crc32fast::hash(&buf))
}

/// Hashes `file[pos..len]` in slices (on a helper thread), then hands the
/// CRC32 of `file[..len]` to `finish`.
fn hash_prefix<X: Send + 'static>(
    item: Box<X>,
    file: fn(&X) -> &File,
    mut hasher: Hasher,
    pos: u64,
    len: u64,
    finish: fn(Box<X>, io::Result<u32>) -> JobResult,
) -> Job<JobResult> {
    Box::new(move || {
        let end = len.min(pos.saturating_add(HASH_SLICE));
        match hash_range(file(&item), &mut hasher, pos, end) {
            Ok(()) if end < len => Step::More(hash_prefix(item, file, hasher, end, len, finish)),
            Ok(()) => Step::Done(finish(item, Ok(hasher.finalize()))),
            Err(e) => Step::Done(finish(item, Err(e))),
        }
    })
}

fn hash_range(file: &File, hasher: &mut Hasher, mut pos: u64, end: u64) -> io::Result<()> {
    let mut buf = vec![0u8; HASH_PIECE];
    while pos < end {
        let want = (end - pos).min(HASH_PIECE as u64) as usize;
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}

/// `PutStart`: check the target and open the partial off the reactor.
pub fn put_start(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    path: &str,
    put: PutArgs,
    deferred: Option<&Deferred>,
) -> Phase {
    let PutArgs {
        size,
        resume,
        mtime,
        crc32,
    } = put;
    let Some(login) = st.login.as_ref() else {
        return Phase::Ready;
    };
    let user = login.user.clone();
    let jail = Arc::clone(&login.jail);
    let path = match resolve(login, path) {
        Ok(p) => p,
        Err(e) => return fail(tx, ctx, &e),
    };
    if path.is_root() {
        return fail(
            tx,
            ctx,
            &FsError::new(ErrorCode::IsADirectory, "is a directory: /"),
        );
    }
    if let Err((code, message)) = ctx.accounts.check_not_uploading(&user, &path) {
        ctx.send_error(tx, code, &message);
        return Phase::Ready;
    }
    let Some(slot) = ctx.fds.take() else {
        let op = DeferredOp::Put {
            path: path.to_string(),
            put,
        };
        return defer(st, tx, ctx, op, deferred);
    };
    // Reserve as for a new file. If that does not fit, only a resume can
    // go on (it may need less), and only if a partial is there: nothing
    // is created for an upload the quota cannot take.
    let full = still_needed(size, 0).saturating_add(OPEN_SLACK);
    let reserved = match ctx.accounts.reserve_creation(&user, full, 1) {
        Ok(()) => full,
        // An identical file needs no room (`Unchanged`): the check decides.
        Err((code, message)) if !resume && crc32.is_none() => {
            log!(
                Info,
                "{} {} put {}: {message}",
                st.peer,
                quoted(&user),
                quoted(&path)
            );
            ctx.send_error(tx, code, &message);
            return Phase::Ready;
        }
        Err(_) => 0,
    };
    if let Some(acc) = ctx.accounts.get_mut(&user) {
        acc.uploads.insert(path.clone());
    }
    let opening = Opening {
        user: user.clone(),
        path,
        jail,
        slot,
        size,
        resume,
        mtime,
        reserved,
    };
    if let Some(want) = crc32 {
        let user = opening.user.clone();
        let job = check_target_crc(opening, want);
        ctx.worker
            .submit(Lane::Read, &user, st.key, st.generation, job);
        return Phase::Waiting;
    }
    open_upload(st, ctx, opening)
}

/// Opens an upload's partial on a helper thread.
fn open_upload(st: &State, ctx: &mut Ctx, opening: Opening) -> Phase {
    let user = opening.user.clone();
    let job = move || {
        let opened = check_target(&opening.jail, &opening.path).and_then(|()| {
            if opening.reserved == 0 && opening.jail.partial_len(&opening.path)?.is_none() {
                return Err(FsError::new(ErrorCode::QuotaExceeded, "no partial"));
            }
            let keep_up_to = opening.resume.then_some(opening.size);
            opening.jail.open_partial(&opening.path, keep_up_to)
        });
        Step::Done(JobResult::UploadOpened(Box::new(opening), opened))
    };
    ctx.worker
        .submit(Lane::Sync, &user, st.key, st.generation, Box::new(job));
    Phase::Waiting
}

/// A target being compared with the client's CRC32.
struct TargetCheck {
    opening: Opening,
    file: File,
    /// The target's state when the hashing began.
    before: rustix::fs::Stat,
    want: u32,
}

/// Whether the target already holds a file of the upload's size with CRC32
/// `want`: from its stamp, or by hashing it in slices (and stamping it).
fn check_target_crc(opening: Opening, want: u32) -> Job<JobResult> {
    Box::new(move || {
        let opened = opening.jail.open_read(&opening.path);
        let Ok((file, len, _)) = opened.as_ref().map(|(f, l, i)| (f, *l, i)) else {
            return Step::Done(JobResult::TargetChecked(Box::new(opening), false));
        };
        let Ok(before) = rustix::fs::fstat(file) else {
            return Step::Done(JobResult::TargetChecked(Box::new(opening), false));
        };
        if len != opening.size {
            return Step::Done(JobResult::TargetChecked(Box::new(opening), false));
        }
        if let Some(crc) = stamp::read_stamp(file, &before) {
            let same = crc == want;
            if same {
                renew_mtime(file, opening.mtime, crc);
            }
            return Step::Done(JobResult::TargetChecked(Box::new(opening), same));
        }
        let Ok((file, _, _)) = opened else {
            return Step::Done(JobResult::TargetChecked(Box::new(opening), false));
        };
        let check = Box::new(TargetCheck {
            opening,
            file,
            before,
            want,
        });
        hash_prefix(check, |c| &c.file, Hasher::new(), 0, len, target_hashed)()
    })
}

fn target_hashed(check: Box<TargetCheck>, crc: io::Result<u32>) -> JobResult {
    let TargetCheck {
        opening,
        file,
        before,
        want,
    } = *check;
    let same = match crc {
        Ok(crc) => {
            stamp::write_stamp_if_unchanged(&file, crc, &before);
            if crc == want {
                renew_mtime(&file, opening.mtime, crc);
            }
            crc == want
        }
        Err(_) => false,
    };
    JobResult::TargetChecked(Box::new(opening), same)
}

/// An identical target gets the client's modification time, as a fresh
/// upload would have.
fn renew_mtime(file: &File, mtime: Option<i64>, crc: u32) {
    let Some(ns) = mtime else {
        return;
    };
    let current = rustix::fs::fstat(file).map(|st| stamp::mtime_ns(&st));
    if current.is_ok_and(|c| c != ns) && stamp::set_mtime(file, ns).is_ok() {
        stamp::write_stamp(file, crc);
    }
}

/// The target was compared: answer `Unchanged`, or go on with the upload.
pub fn target_checked(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    opening: Opening,
    unchanged: bool,
) -> Phase {
    if !unchanged {
        return open_upload(st, ctx, opening);
    }
    orphan_check(ctx, opening);
    ctx.send(tx, &Reply::Unchanged);
    Phase::Ready
}

/// A compared target whose upload will not go on: hand back what was
/// reserved and free the path.
pub fn orphan_check(ctx: &mut Ctx, opening: Opening) {
    opening.release(ctx);
    not_busy(ctx, &opening.user, &opening.path);
}

/// The target of an upload must be a file name in an existing directory.
pub(super) fn check_target(jail: &Jail, path: &VPath) -> Result<(), FsError> {
    match jail.lookup(path)? {
        Some(e) if e.kind == crate::proto::EntryKind::Dir => Err(FsError::new(
            ErrorCode::IsADirectory,
            format!("is a directory: {path}"),
        )),
        Some(e) if e.kind != crate::proto::EntryKind::File => Err(FsError::new(
            ErrorCode::PermissionDenied,
            format!("permission denied: {path} is not a regular file"),
        )),
        _ => Ok(()),
    }
}

/// What the rest of an upload of `size` bytes costs once `written` are in.
pub(super) fn still_needed(size: u64, written: u64) -> u64 {
    usage::file_charge(size)
        .saturating_sub(usage::file_charge(written))
        .saturating_add(PUBLISH_SLACK)
}

impl Opening {
    /// Hands back what `put_start` reserved for opening.
    fn release(&self, ctx: &mut Ctx) {
        let entries = u64::from(self.reserved > 0);
        ctx.accounts
            .release_creation(&self.user, self.reserved, entries);
    }

    /// The upload, its partial open (with nothing reserved yet).
    fn into_upload(self, opened: OpenedPartial, now: Instant) -> Upload {
        Upload {
            user: self.user,
            path: self.path,
            jail: self.jail,
            file: opened.file,
            _slot: self.slot,
            size: self.size,
            start: opened.existing,
            written: opened.existing,
            hasher: Hasher::new(),
            reserved: 0,
            mtime: self.mtime,
            began: now,
        }
    }
}

/// The partial was opened for a session that closed meanwhile.
pub fn orphan_opening(ctx: &mut Ctx, opening: Opening, opened: Result<OpenedPartial, FsError>) {
    opening.release(ctx);
    match opened {
        Ok(opened) => {
            ctx.accounts.apply(&opening.user, opened.change);
            let up = opening.into_upload(opened, ctx.now);
            end_upload(ctx, up, UploadEnd::Keep, "connection closed");
        }
        Err(_) => not_busy(ctx, &opening.user, &opening.path),
    }
}

/// The partial is open: reserve the rest, then offer a resume.
pub fn upload_opened(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    opening: Opening,
    opened: Result<OpenedPartial, FsError>,
) -> Phase {
    opening.release(ctx);
    let (user, path, size, resume, mtime) = (
        opening.user.clone(),
        opening.path.clone(),
        opening.size,
        opening.resume,
        opening.mtime,
    );
    let opened = match opened {
        Ok(opened) => opened,
        Err(e) => {
            if let Some(acc) = ctx.accounts.get_mut(&user) {
                acc.uploads.remove(&path);
            }
            if e.code == ErrorCode::QuotaExceeded {
                // Nothing to resume, and a new file does not fit: say so
                // as for a new file.
                let full = still_needed(size, 0).saturating_add(OPEN_SLACK);
                let message = match ctx.accounts.reserve_creation(&user, full, 1) {
                    Err((_, message)) => message,
                    Ok(()) => {
                        ctx.accounts.release_creation(&user, full, 1);
                        "quota exceeded; try again".to_owned()
                    }
                };
                log!(
                    Info,
                    "{} {} put {}: {message}",
                    st.peer,
                    quoted(&user),
                    quoted(&path)
                );
                ctx.send_error(tx, ErrorCode::QuotaExceeded, &message);
                return Phase::Ready;
            }
            if e.code == ErrorCode::Unavailable {
                drop(opening);
                let op = DeferredOp::Put {
                    path: path.to_string(),
                    put: PutArgs {
                        size,
                        resume,
                        mtime,
                        crc32: None,
                    },
                };
                return defer(st, tx, ctx, op, None);
            }
            return fail(tx, ctx, &e);
        }
    };
    ctx.accounts.apply(&user, opened.change);
    let need = still_needed(size, opened.existing);
    let mut up = Box::new(opening.into_upload(opened, ctx.now));
    if let Err((code, message)) = ctx.accounts.reserve(&up.user, need) {
        log!(
            Info,
            "{} {} put {}: {message}",
            st.peer,
            quoted(&up.user),
            quoted(&up.path)
        );
        ctx.send_error(tx, code, &message);
        end_upload(ctx, *up, UploadEnd::Keep, "quota exceeded");
        return Phase::Ready;
    }
    up.reserved = need;
    if up.written == 0 {
        return offer_upload(st, tx, ctx, up, Ok(0));
    }
    let len = up.written;
    let job = hash_prefix(
        up,
        |u| &u.file,
        Hasher::new(),
        0,
        len,
        JobResult::UploadPrefix,
    );
    let user = st.user().to_owned();
    ctx.worker
        .submit(Lane::Read, &user, st.key, st.generation, job);
    Phase::Waiting
}

/// Sends `PutReady` once the partial's prefix CRC is known.
pub fn offer_upload(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    mut up: Box<Upload>,
    crc: io::Result<u32>,
) -> Phase {
    let crc = match crc {
        Ok(crc) => crc,
        Err(e) => {
            // An unreadable partial is useless: start over.
            log!(
                Warn,
                "{} {} partial of {} unreadable ({e}); starting over",
                st.peer,
                quoted(&up.user),
                quoted(&up.path)
            );
            return restart(st, ctx, up, Restarted::Offer);
        }
    };
    up.hasher = Hasher::new_with_initial(crc);
    ctx.send(
        tx,
        &Reply::PutReady {
            offset: up.written,
            prefix_crc: crc,
        },
    );
    Phase::PutOffered(up)
}

/// What comes after emptying a partial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restarted {
    /// Offer the upload from 0 (the old prefix was unreadable).
    Offer,
    /// The client chose to start over: receive from 0.
    Receive,
}

/// Empties the partial on a helper thread (freeing a big file's blocks
/// takes milliseconds).
fn restart(st: &State, ctx: &mut Ctx, up: Box<Upload>, then: Restarted) -> Phase {
    let user = up.user.clone();
    let job = move || {
        let result = up.jail.truncate_partial(&up.file, &up.path);
        Step::Done(JobResult::UploadRestarted(up, result, then))
    };
    ctx.worker
        .submit(Lane::Sync, &user, st.key, st.generation, Box::new(job));
    Phase::Waiting
}

/// The partial is empty again: its bytes go back into the reservation.
pub fn restarted(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    mut up: Box<Upload>,
    result: Result<Change, FsError>,
    then: Restarted,
) -> Phase {
    let change = match result {
        Ok(change) => change,
        Err(e) => {
            let message = format!("upload of {} failed: {}", up.path, e.message);
            ctx.send_error(tx, e.code, &message);
            end_upload(ctx, *up, UploadEnd::Delete, "partial unusable");
            return Phase::Ready;
        }
    };
    ctx.accounts.apply(&up.user, change);
    up.written = 0;
    up.start = 0;
    up.hasher = Hasher::new();
    let need = still_needed(up.size, 0).saturating_sub(up.reserved);
    if let Err((code, message)) = ctx.accounts.reserve(&up.user, need) {
        ctx.send_error(tx, code, &message);
        end_upload(ctx, *up, UploadEnd::Keep, "quota exceeded");
        return Phase::Ready;
    }
    up.reserved += need;
    match then {
        Restarted::Offer => offer_upload(st, tx, ctx, up, Ok(0)),
        Restarted::Receive => match up.file.seek(SeekFrom::Start(0)) {
            Ok(_) => Phase::Receiving(up),
            Err(e) => {
                let err = FsError::from_io(&e, &up.path);
                end_upload(ctx, *up, UploadEnd::Keep, "seek failed");
                fail(tx, ctx, &err)
            }
        },
    }
}

/// `PutFrom`: the client resumes at the offered offset, or starts over.
pub fn put_from(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    mut up: Box<Upload>,
    offset: u64,
) -> Phase {
    if offset != up.written && offset != 0 {
        end_upload(ctx, *up, UploadEnd::Keep, "bad PutFrom");
        let message = "bad request: PutFrom must be 0 or the offered offset";
        return super::session::refuse(st, tx, ctx, ErrorCode::BadRequest, message);
    }
    if offset == 0 && up.written > 0 {
        return restart(st, ctx, up, Restarted::Receive);
    }
    if let Err(e) = up.file.seek(SeekFrom::Start(offset)) {
        let err = FsError::from_io(&e, &up.path);
        end_upload(ctx, *up, UploadEnd::Keep, "seek failed");
        return fail(tx, ctx, &err);
    }
    if offset > 0 {
        log!(
            Info,
            "{} {} put {}: resuming at {}",
            st.peer,
            quoted(&up.user),
            quoted(&up.path),
            format_size(offset)
        );
    }
    Phase::Receiving(up)
}

/// The partial grew from `before` to `after` bytes: move its added cost
/// from the reservation to the figure used.
fn grew(ctx: &mut Ctx, up: &mut Upload, before: u64, after: u64) {
    let cost = usage::file_charge(after).saturating_sub(usage::file_charge(before));
    let reserved = cost.min(up.reserved);
    up.reserved -= reserved;
    ctx.accounts.wrote(&up.user, cost, reserved);
}

/// A chunk of upload data: write it, hash it, account for it.
pub fn put_chunk(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    mut up: Box<Upload>,
    bytes: &[u8],
) -> Phase {
    let len = bytes.len() as u64;
    let fits = up
        .written
        .checked_add(len)
        .is_some_and(|end| end <= up.size);
    if !fits {
        let message = format!(
            "upload failed: more bytes than the {} announced; nothing was saved",
            format_size(up.size)
        );
        log_upload(st, &up, "too many bytes");
        end_upload(ctx, *up, UploadEnd::Delete, "too many bytes");
        ctx.send_error(tx, ErrorCode::TransferFailed, &message);
        return Phase::Discarding;
    }
    if let Err(e) = ctx.stage.write_all(&mut up.file, bytes) {
        // Part of the chunk may have landed before the error: count what
        // is really in the file, so deleting it frees exactly that.
        if let Ok(meta) = up.file.metadata() {
            let before = up.written;
            up.written = meta.len().max(before);
            let after = up.written;
            grew(ctx, &mut up, before, after);
        }
        let err = FsError::from_io(&e, &up.path);
        let message = format!("upload of {} failed: {}", up.path, err.message);
        log!(
            Error,
            "{} {} put {}: write failed: {e}",
            st.peer,
            quoted(&up.user),
            quoted(&up.path)
        );
        log_upload(st, &up, "write failed");
        end_upload(ctx, *up, UploadEnd::Delete, "write failed");
        ctx.send_error(tx, err.code, &message);
        return Phase::Discarding;
    }
    up.hasher.update(bytes);
    let before = up.written;
    up.written += len;
    let after = up.written;
    grew(ctx, &mut up, before, after);
    Phase::Receiving(up)
}

/// `PutEnd`: check the size and CRC32, then sync and publish off the reactor.
pub fn put_end(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    up: Box<Upload>,
    crc32: u32,
) -> Phase {
    if up.written != up.size {
        let message = format!(
            "upload of {} ended early: {} of {} received; run the same put again to resume",
            up.path,
            format_size(up.written),
            format_size(up.size)
        );
        ctx.send_error(tx, ErrorCode::TransferFailed, &message);
        end_upload(ctx, *up, UploadEnd::Keep, "ended early");
        return Phase::Ready;
    }
    let actual = up.hasher.clone().finalize();
    if actual != crc32 {
        let message = format!(
            "checksum mismatch: {} was damaged in transit (crc32 {actual:08x}, expected {crc32:08x}); nothing was saved",
            up.path
        );
        log_upload(st, &up, "crc32 mismatch");
        end_upload(ctx, *up, UploadEnd::Delete, "crc32 mismatch");
        ctx.send_error(tx, ErrorCode::CrcMismatch, &message);
        return Phase::Ready;
    }
    let user = up.user.clone();
    let job = move || {
        // The time and the CRC32 (verified above) go with the data.
        if let Some(ns) = up.mtime {
            let _ = stamp::set_mtime(&up.file, ns);
        }
        stamp::write_stamp(&up.file, actual);
        // Data first, then the name: an acknowledged upload is on disk.
        let outcome = match up.file.sync_all() {
            Ok(()) => match publish_when_possible(&up) {
                Ok(done) => Publish::Done(done),
                Err(PublishError(e)) => Publish::Refused(e),
            },
            Err(e) => Publish::SyncFailed(FsError::from_io(&e, &up.path)),
        };
        Step::Done(JobResult::Published(up, outcome))
    };
    ctx.worker
        .submit(Lane::Sync, &user, st.key, st.generation, Box::new(job));
    Phase::Waiting
}

/// How a publish attempt went.
pub enum Publish {
    /// Renamed into place (the folder sync may still have failed).
    Done(Published),
    /// Not published; the verified data is kept for a later `put`.
    Refused(FsError),
    /// The data could not be made durable: it is suspect.
    SyncFailed(FsError),
}

/// How long a publish waits for a file descriptor (the server at its
/// open-files limit) before it gives up; it runs on a disk thread, so the
/// wait stalls nobody else.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(10);

/// Renames the partial over its target, retrying while the server is out of
/// file descriptors (others' transfers will free some).
fn publish_when_possible(up: &Upload) -> Result<Published, PublishError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match up.jail.publish_partial(&up.path) {
            Err(PublishError(e))
                if e.code == ErrorCode::Unavailable && started.elapsed() < PUBLISH_PATIENCE =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// The sync and rename finished: reply and settle the figures.
pub fn published(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    up: Box<Upload>,
    outcome: Publish,
) -> Phase {
    let crc = up.hasher.clone().finalize();
    match &outcome {
        Publish::Done(Published { synced: Ok(()), .. }) => {
            let done = Reply::PutDone {
                size: up.size,
                crc32: crc,
            };
            ctx.send(tx, &done);
            log_upload(st, &up, "ok");
        }
        Publish::Done(Published { synced: Err(e), .. }) => {
            // The new file is in place but its name may not survive a
            // crash: not a success to report.
            let message = format!(
                "upload of {} was saved but could not be synced to disk ({}); it may be lost if the server crashes",
                up.path, e.message
            );
            ctx.send_error(tx, ErrorCode::Io, &message);
            log_upload(st, &up, "folder sync failed");
        }
        Publish::Refused(e) => {
            let message = format!(
                "upload of {} not saved: {}; the data is kept, run the same put again",
                up.path, e.message
            );
            ctx.send_error(tx, e.code, &message);
            log_upload(st, &up, "publish refused");
        }
        Publish::SyncFailed(e) => {
            let message = format!("upload of {} failed: {}", up.path, e.message);
            ctx.send_error(tx, e.code, &message);
            log_upload(st, &up, "sync failed");
        }
    }
    settle_published(ctx, *up, outcome);
    Phase::Ready
}

/// Figures after a publish attempt, whether or not anyone is listening.
pub fn settle_published(ctx: &mut Ctx, up: Upload, outcome: Publish) {
    let end = match outcome {
        Publish::Done(done) => UploadEnd::Published(done.change),
        Publish::Refused(_) => UploadEnd::Keep,
        Publish::SyncFailed(_) => UploadEnd::Delete,
    };
    end_upload(ctx, up, end, "publish");
}

/// The one way an upload ends: hands back its reservation, and keeps,
/// deletes or accounts for the published partial. A partial is deleted on
/// a helper thread (a big file's blocks take milliseconds to free); its
/// path stays busy until then, so a new upload cannot open it meanwhile.
pub fn end_upload(ctx: &mut Ctx, up: Upload, end: UploadEnd, why: &str) {
    ctx.accounts.release(&up.user, up.reserved);
    let end = match end {
        UploadEnd::Keep if up.written == 0 => UploadEnd::Delete,
        end => end,
    };
    match end {
        UploadEnd::Published(change) => {
            ctx.accounts.apply(&up.user, change);
            not_busy(ctx, &up.user, &up.path);
        }
        UploadEnd::Keep => {
            log!(
                Info,
                "put {} {}: {why}; {} kept for resume",
                quoted(&up.user),
                quoted(&up.path),
                format_size(up.written)
            );
            not_busy(ctx, &up.user, &up.path);
        }
        UploadEnd::Delete => {
            let user = up.user.clone();
            let job = move || {
                let result = up.jail.remove_partial(&up.path);
                // Closed here, after the unlink: the last close of an
                // unlinked file frees its blocks.
                drop(up.file);
                Step::Done(JobResult::PartialRemoved {
                    user: up.user,
                    path: up.path,
                    result,
                })
            };
            ctx.worker
                .submit(Lane::Sync, &user, SERVER_JOB, 0, Box::new(job));
        }
    }
}

/// A partial was deleted: settle the figures and free the path.
pub fn partial_removed(ctx: &mut Ctx, user: &str, path: &VPath, result: Result<Change, FsError>) {
    match result {
        Ok(change) => ctx.accounts.apply(user, change),
        Err(e) => log!(
            Warn,
            "put {} {}: partial not removed: {}",
            quoted(user),
            quoted(path),
            e.message
        ),
    }
    not_busy(ctx, user, path);
}

fn not_busy(ctx: &mut Ctx, user: &str, path: &VPath) {
    if let Some(acc) = ctx.accounts.get_mut(user) {
        acc.uploads.remove(path);
    }
}

fn log_upload(st: &State, up: &Upload, outcome: &str) {
    let moved = up.written - up.start;
    let crc = up.hasher.clone().finalize();
    log_transfer(st, "put", &up.path, moved, up.began, crc, outcome);
}

/// `GetStart`: open the file and, when resuming, check the client's prefix.
pub fn get_start(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    path: &str,
    offset: u64,
    client_crc: u32,
    deferred: Option<&Deferred>,
) -> Phase {
    let Some(login) = st.login.as_ref() else {
        return Phase::Ready;
    };
    let path = match resolve(login, path) {
        Ok(p) => p,
        Err(e) => return fail(tx, ctx, &e),
    };
    let get_op = || DeferredOp::Get {
        path: path.to_string(),
        offset,
        prefix_crc: client_crc,
    };
    let Some(slot) = ctx.fds.take() else {
        return defer(st, tx, ctx, get_op(), deferred);
    };
    let (file, size, id) = match login.jail.open_read(&path) {
        Ok(opened) => opened,
        Err(e) if e.code == ErrorCode::Unavailable => {
            return defer(st, tx, ctx, get_op(), deferred);
        }
        Err(e) => return fail(tx, ctx, &e),
    };
    let user = login.user.clone();
    ctx.accounts.reading(&user, id);
    let down = Box::new(Download {
        user: user.clone(),
        path,
        file,
        id,
        _slot: slot,
        size,
        start: 0,
        sent: 0,
        hasher: Hasher::new(),
        began: ctx.now,
        asked: offset,
        client_crc,
    });
    if offset == 0 || offset > size {
        return begin_download(st, tx, ctx, down, Ok(0));
    }
    if offset <= INLINE_HASH {
        let crc = hash_now(&down.file, offset);
        return begin_download(st, tx, ctx, down, crc);
    }
    let job = hash_prefix(
        down,
        |d| &d.file,
        Hasher::new(),
        0,
        offset,
        JobResult::DownloadPrefix,
    );
    ctx.worker
        .submit(Lane::Read, &user, st.key, st.generation, job);
    Phase::Waiting
}

/// Starts streaming: from the client's offset if its prefix matched (`crc`
/// is the server's CRC32 of that prefix), from zero otherwise.
pub fn begin_download(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    mut down: Box<Download>,
    crc: io::Result<u32>,
) -> Phase {
    let offset = match crc {
        Ok(crc) if crc == down.client_crc && down.asked > 0 && down.asked <= down.size => {
            down.hasher = Hasher::new_with_initial(crc);
            down.asked
        }
        _ => {
            down.hasher = Hasher::new();
            0
        }
    };
    down.sent = offset;
    down.start = offset;
    if let Err(e) = down.file.seek(SeekFrom::Start(offset)) {
        let err = FsError::from_io(&e, &down.path);
        end_download(st, ctx, *down, "seek failed");
        return fail(tx, ctx, &err);
    }
    ctx.send(
        tx,
        &Reply::GetReady {
            size: down.size,
            offset,
        },
    );
    if offset > 0 {
        log!(
            Info,
            "{} {} get {}: resuming at {}",
            st.peer,
            quoted(&down.user),
            quoted(&down.path),
            format_size(offset)
        );
    }
    Phase::Sending(down)
}

/// Reads file chunks into the send buffer while it has room. Over TLS
/// (`bypass`), chunks go straight into the TLS layer instead, while nothing
/// waits in the send buffer, until it takes no more; the rest of a chunk it
/// did not take waits in the buffer. Returns the bytes queued.
pub fn pump_download(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    mut bypass: Option<&mut dyn Bypass>,
) -> usize {
    let Phase::Sending(down) = &mut st.phase else {
        return 0;
    };
    let mut queued = 0;
    while down.sent < down.size && tx.room() >= CHUNK_SIZE + CHUNK_HEADER_MAX {
        let n = (down.size - down.sent).min(CHUNK_SIZE as u64) as usize;
        let mut header = [0u8; CHUNK_HEADER_MAX];
        let h = chunk_header(REPLY_CHUNK_TAG, n, &mut header);
        if let Some(bypass) = bypass.as_deref_mut() {
            if !tx.is_empty() {
                // What waits must leave first: the connection's write moves
                // it into rustls, then the next pump goes on.
                break;
            }
            let block = match ctx.stage.read_block(&mut down.file, n) {
                Ok(block) if block.len() == n => block,
                Ok(_) => return shrank(st, tx, ctx),
                Err(e) => return read_failed(st, tx, ctx, &e),
            };
            down.hasher.update(block);
            // rustls fails only once the connection has, which the write
            // that follows reports; taking nothing then is right.
            let taken = bypass.take(&header[..h], block).unwrap_or(0);
            down.sent += n as u64;
            queued += h + n;
            if taken < h + n {
                // The loop's condition left room for the whole chunk.
                let head = &header[taken.min(h)..h];
                let body = &block[taken.saturating_sub(h)..];
                let space = tx.spare(head.len() + body.len());
                space[..head.len()].copy_from_slice(head);
                space[head.len()..head.len() + body.len()].copy_from_slice(body);
                tx.commit(head.len() + body.len());
                break;
            }
            continue;
        }
        let space = tx.spare(h + n);
        let got = match ctx.stage.read_full(&mut down.file, &mut space[h..h + n]) {
            Ok(got) => got,
            Err(e) => return read_failed(st, tx, ctx, &e),
        };
        if got < n {
            return shrank(st, tx, ctx);
        }
        space[..h].copy_from_slice(&header[..h]);
        down.hasher.update(&space[h..h + n]);
        tx.commit(h + n);
        down.sent += n as u64;
        queued += h + n;
    }
    if down.sent == down.size {
        let crc32 = down.hasher.clone().finalize();
        ctx.send(tx, &Reply::GetDone { crc32 });
        if let Phase::Sending(down) = std::mem::replace(&mut st.phase, Phase::Ready) {
            end_download(st, ctx, *down, "ok");
        }
    }
    queued
}

/// A download's file read failed.
fn read_failed(st: &mut State, tx: &mut Buffer, ctx: &mut Ctx, e: &io::Error) -> usize {
    let Phase::Sending(down) = &st.phase else {
        return 0;
    };
    let err = FsError::from_io(e, &down.path);
    let message = format!("download failed: {}", err.message);
    stop_download(st, tx, ctx, ErrorCode::Io, &message)
}

/// A download's file ended before its size.
fn shrank(st: &mut State, tx: &mut Buffer, ctx: &mut Ctx) -> usize {
    let Phase::Sending(down) = &st.phase else {
        return 0;
    };
    let message = format!(
        "download of {} failed: the file shrank on the server while being sent",
        down.path
    );
    stop_download(st, tx, ctx, ErrorCode::TransferFailed, &message)
}

fn stop_download(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    code: ErrorCode,
    message: &str,
) -> usize {
    ctx.send_error(tx, code, message);
    if let Phase::Sending(down) = std::mem::replace(&mut st.phase, Phase::Ready) {
        end_download(st, ctx, *down, message);
    }
    0
}

/// The one way a download ends: its access-log line, and the file let go.
pub fn end_download(st: &State, ctx: &mut Ctx, down: Download, outcome: &str) {
    let moved = down.sent - down.start;
    let crc = down.hasher.clone().finalize();
    log_transfer(st, "get", &down.path, moved, down.began, crc, outcome);
    release_download(ctx, down);
}

/// Lets a download's file go. A file deleted meanwhile is closed on a
/// helper thread (the last close frees its blocks, which takes
/// milliseconds for a big one), and what it kept charged is freed.
pub fn release_download(ctx: &mut Ctx, down: Download) {
    let Download { user, file, id, .. } = down;
    ctx.accounts.done_reading(&user, id);
    let unlinked = rustix::fs::fstat(&file).is_ok_and(|s| s.st_nlink == 0);
    if unlinked {
        let job = move || {
            drop(file);
            Step::Done(JobResult::Closed)
        };
        ctx.worker
            .submit(Lane::Sync, &user, SERVER_JOB, 0, Box::new(job));
    }
}

/// The access-log line of a transfer: who, from where, what, how much, how
/// fast, its CRC32 and how it ended. Each field is one `key=value` token:
/// the strings are quoted, so a name cannot pose as more fields.
pub(super) fn log_transfer(
    st: &State,
    dir: &str,
    path: &VPath,
    moved: u64,
    began: Instant,
    crc: u32,
    outcome: &str,
) {
    use crate::server::log::quoted;
    let secs = began.elapsed().as_secs_f64();
    log!(
        Info,
        "transfer user={} addr={} dir={dir} path={} bytes={moved} secs={secs:.3} rate=\"{}/s\" crc32={crc:08x} outcome={}",
        quoted(st.user()),
        st.peer,
        quoted(path),
        format_size((moved as f64 / secs.max(1e-6)) as u64),
        quoted(outcome),
    );
}
