//! Uploads and downloads: quota reservation, partial files, CRC32 checks,
//! atomic publish, resume, and streaming through the send buffer.
//!
//! Upload bookkeeping: `PutStart` reserves the bytes still to come. Each
//! chunk written moves its bytes from "reserved" to "used" (a partial file
//! counts as stored). Publishing subtracts the file it replaced; any end,
//! however it happens, hands back what is still reserved.
//!
//! What happens to the partial file: kept for resume when the client goes
//! away, stalls, or ends early; deleted when its data is known bad (CRC32
//! mismatch, more bytes than announced) or the disk failed under it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crc32fast::Hasher;

use super::fds::FileSlot;
use super::session::{Ctx, Deferred, DeferredOp, JobResult, Phase, State, defer, resolve};
use super::worker::Lane;
use crate::buf::Buffer;
use crate::frame::{CHUNK_HEADER_MAX, chunk_header};
use crate::jail::{FsError, Jail, Published, VPath};
use crate::log;
use crate::proto::{CHUNK_SIZE, ErrorCode, REPLY_CHUNK_TAG, Reply};
use crate::size::format_size;

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
    /// Bytes reserved and not written yet.
    reserved: u64,
    began: Instant,
}

/// A download in progress.
pub struct Download {
    path: VPath,
    file: File,
    _slot: FileSlot,
    size: u64,
    start: u64,
    sent: u64,
    hasher: Hasher,
    began: Instant,
}

fn fail(tx: &mut Buffer, ctx: &mut Ctx, e: &FsError) -> Phase {
    ctx.send_error(tx, e.code, &e.message);
    Phase::Ready
}

/// Bytes hashed per read while checking a resumed prefix.
const HASH_PIECE: usize = 1024 * 1024;

/// CRC32 of a file's first `len` bytes (runs on a disk helper thread).
fn prefix_crc(file: &File, len: u64) -> io::Result<u32> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; HASH_PIECE];
    let mut pos = 0u64;
    while pos < len {
        let want = (len - pos).min(HASH_PIECE as u64) as usize;
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(hasher.finalize())
}

/// `PutStart`: check the target, reserve the space, offer a resume.
pub fn put_start(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    path: &str,
    size: u64,
    resume: bool,
    deferred: Option<&Deferred>,
) -> Phase {
    let Some(login) = st.login.as_ref() else {
        return Phase::Ready;
    };
    let user = login.user.clone();
    let jail = Arc::clone(&login.jail);
    let path = match resolve(login, path) {
        Ok(p) => p,
        Err(e) => return fail(tx, ctx, &e),
    };
    if let Err(e) = check_target(&jail, &path) {
        return fail(tx, ctx, &e);
    }
    let busy = ctx
        .accounts
        .get(&user)
        .is_none_or(|a| a.uploads.contains(&path));
    if busy {
        let message = format!("busy: {path} is being uploaded by another session");
        ctx.send_error(tx, ErrorCode::Busy, &message);
        return Phase::Ready;
    }
    let put_op = || DeferredOp::Put {
        path: path.to_string(),
        size,
        resume,
    };
    let Some(slot) = ctx.fds.take() else {
        return defer(st, tx, ctx, put_op(), deferred);
    };
    let (file, mut existing) = match jail.open_partial(&path) {
        Ok(opened) => opened,
        Err(e) if e.code == ErrorCode::Unavailable => {
            return defer(st, tx, ctx, put_op(), deferred);
        }
        Err(e) => return fail(tx, ctx, &e),
    };
    if existing > 0 && (!resume || existing > size) {
        if let Err(e) = file.set_len(0) {
            return fail(tx, ctx, &FsError::from_io(&e, &path));
        }
        ctx.accounts.adjust(&user, -(existing as i64), 0);
        existing = 0;
    }
    let need = size - existing;
    if let Err((code, message)) = ctx.accounts.reserve(&user, need) {
        log!(Info, "{} {user} put {path}: {message}", st.peer);
        if existing == 0 {
            // Nothing worth resuming: do not leave an empty partial behind.
            let _ = jail.remove_partial(&path);
        }
        ctx.send_error(tx, code, &message);
        return Phase::Ready;
    }
    if let Some(acc) = ctx.accounts.get_mut(&user) {
        acc.uploads.insert(path.clone());
    }
    let up = Box::new(Upload {
        user,
        path,
        jail,
        file,
        _slot: slot,
        size,
        start: existing,
        written: existing,
        hasher: Hasher::new(),
        reserved: need,
        began: ctx.now,
    });
    if existing == 0 {
        return offer_upload(st, tx, ctx, up, Ok(0));
    }
    ctx.worker.submit(
        Lane::Read,
        st.key,
        st.generation,
        Box::new(move || {
            let crc = prefix_crc(&up.file, up.written);
            JobResult::UploadPrefix(up, crc)
        }),
    );
    Phase::Waiting
}

/// The target of an upload must be a file name in an existing directory.
fn check_target(jail: &Jail, path: &VPath) -> Result<(), FsError> {
    if path.is_root() {
        return Err(FsError::new(ErrorCode::IsADirectory, "is a directory: /"));
    }
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
                up.user,
                up.path
            );
            if let Err(e) = restart(ctx, &mut up) {
                let err = FsError::from_io(&e, &up.path);
                abort_upload(ctx, *up, "partial unusable");
                return fail(tx, ctx, &err);
            }
            0
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

/// Truncates the partial to nothing; its bytes go back into the reservation.
fn restart(ctx: &mut Ctx, up: &mut Upload) -> io::Result<()> {
    up.file.set_len(0)?;
    ctx.accounts.adjust(&up.user, -(up.written as i64), 0);
    if let Some(acc) = ctx.accounts.get_mut(&up.user) {
        acc.reserved += up.written;
    }
    up.reserved += up.written;
    up.written = 0;
    up.start = 0;
    up.hasher = Hasher::new();
    Ok(())
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
        abort_upload(ctx, *up, "bad PutFrom");
        let message = "bad request: PutFrom must be 0 or the offered offset";
        return super::session::refuse(st, tx, ctx, ErrorCode::BadRequest, message);
    }
    let result = if offset == 0 && up.written > 0 {
        restart(ctx, &mut up)
    } else {
        Ok(())
    };
    if let Err(e) = result.and_then(|()| up.file.seek(SeekFrom::Start(offset)).map(drop)) {
        let err = FsError::from_io(&e, &up.path);
        abort_upload(ctx, *up, "seek failed");
        return fail(tx, ctx, &err);
    }
    if offset > 0 {
        log!(
            Info,
            "{} {} put {}: resuming at {}",
            st.peer,
            up.user,
            up.path,
            format_size(offset)
        );
    }
    Phase::Receiving(up)
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
        discard_upload(st, ctx, up, &message);
        ctx.send_error(tx, ErrorCode::TransferFailed, &message);
        return Phase::Discarding;
    }
    if let Err(e) = up.file.write_all(bytes) {
        // Part of the chunk may have landed before the error: count what
        // is really in the file, so deleting it frees exactly that.
        if let Ok(meta) = up.file.metadata() {
            let extra = meta.len().saturating_sub(up.written);
            ctx.accounts.adjust(&up.user, extra as i64, extra);
            up.reserved = up.reserved.saturating_sub(extra);
            up.written = meta.len();
        }
        let err = FsError::from_io(&e, &up.path);
        let message = format!("upload of {} failed: {}", up.path, err.message);
        log!(
            Error,
            "{} {} put {}: write failed: {e}",
            st.peer,
            up.user,
            up.path
        );
        discard_upload(st, ctx, up, "write failed");
        ctx.send_error(tx, err.code, &message);
        return Phase::Discarding;
    }
    up.hasher.update(bytes);
    up.written += len;
    up.reserved = up.reserved.saturating_sub(len);
    ctx.accounts.adjust(&up.user, len as i64, len);
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
        abort_upload(ctx, *up, "ended early");
        return Phase::Ready;
    }
    let actual = up.hasher.clone().finalize();
    if actual != crc32 {
        let message = format!(
            "checksum mismatch: {} was damaged in transit (crc32 {actual:08x}, expected {crc32:08x}); nothing was saved",
            up.path
        );
        discard_upload(st, ctx, up, "crc32 mismatch");
        ctx.send_error(tx, ErrorCode::CrcMismatch, &message);
        return Phase::Ready;
    }
    ctx.worker.submit(
        Lane::Sync,
        st.key,
        st.generation,
        Box::new(move || {
            // Data first, then the name: an acknowledged upload is on disk.
            let result = match up.file.sync_all() {
                Ok(()) => publish_when_possible(&up),
                Err(e) => Err(FsError::from_io(&e, &up.path)),
            };
            JobResult::Published(up, result)
        }),
    );
    Phase::Waiting
}

/// How long a publish waits for a file descriptor (the server at its
/// open-files limit) before it gives up; it runs on a disk thread, so the
/// wait stalls nobody else.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(10);

/// Renames the partial over its target, retrying while the server is out of
/// file descriptors (others' transfers will free some).
fn publish_when_possible(up: &Upload) -> Result<Published, FsError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match up.jail.publish_partial_reporting_sync(&up.path) {
            Err(e) if e.code == ErrorCode::Unavailable && started.elapsed() < PUBLISH_PATIENCE => {
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
    result: Result<Published, FsError>,
) -> Phase {
    let crc = up.hasher.clone().finalize();
    match &result {
        Ok(Published { synced: Ok(()), .. }) => {
            let done = Reply::PutDone {
                size: up.size,
                crc32: crc,
            };
            ctx.send(tx, &done);
            log_upload(st, &up, "ok");
        }
        Ok(Published { synced: Err(e), .. }) => {
            // The new file is in place but its name may not survive a
            // crash: not a success to report.
            let message = format!(
                "upload of {} was saved but could not be synced to disk ({}); it may be lost if the server crashes",
                up.path, e.message
            );
            ctx.send_error(tx, ErrorCode::Io, &message);
            log_upload(st, &up, "folder sync failed");
        }
        Err(e) => {
            let message = format!("upload of {} failed: {}", up.path, e.message);
            ctx.send_error(tx, e.code, &message);
            log_upload(st, &up, "publish failed");
        }
    }
    settle_published(ctx, *up, &result);
    Phase::Ready
}

/// Figures after a publish attempt, whether or not anyone is listening.
pub fn settle_published(ctx: &mut Ctx, up: Upload, result: &Result<Published, FsError>) {
    match result {
        // Renamed: the partial's bytes are the file's now; the old file is gone.
        Ok(done) => {
            ctx.accounts
                .adjust(&up.user, -(done.replaced as i64), up.reserved);
        }
        Err(e) if e.code == ErrorCode::Unavailable => {
            // Nothing wrong with the data: keep it for a resume.
            ctx.accounts.adjust(&up.user, 0, up.reserved);
        }
        Err(_) => {
            // Sync or rename failed: the data is suspect, drop it.
            let freed = up.jail.remove_partial(&up.path).unwrap_or(0);
            ctx.accounts.adjust(&up.user, -(freed as i64), up.reserved);
        }
    }
    release(ctx, &up);
}

fn release(ctx: &mut Ctx, up: &Upload) {
    if let Some(acc) = ctx.accounts.get_mut(&up.user) {
        acc.uploads.remove(&up.path);
    }
}

/// Ends an upload and keeps its partial file for resume (an empty one is
/// removed: there is nothing to resume).
pub fn abort_upload(ctx: &mut Ctx, up: Upload, why: &str) {
    if up.written == 0 {
        let _ = up.jail.remove_partial(&up.path);
    }
    log!(
        Info,
        "put {} {}: {why}; {} kept for resume",
        up.user,
        up.path,
        format_size(up.written)
    );
    ctx.accounts.adjust(&up.user, 0, up.reserved);
    release(ctx, &up);
}

/// Ends an upload whose data is bad and deletes its partial file.
fn discard_upload(st: &State, ctx: &mut Ctx, up: Box<Upload>, why: &str) {
    log_upload(st, &up, why);
    let freed = up.jail.remove_partial(&up.path).unwrap_or(up.written);
    ctx.accounts.adjust(&up.user, -(freed as i64), up.reserved);
    release(ctx, &up);
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
    let (file, size) = match login.jail.open_read(&path) {
        Ok(opened) => opened,
        Err(e) if e.code == ErrorCode::Unavailable => {
            return defer(st, tx, ctx, get_op(), deferred);
        }
        Err(e) => return fail(tx, ctx, &e),
    };
    let down = Box::new(Download {
        path,
        file,
        _slot: slot,
        size,
        start: 0,
        sent: 0,
        hasher: Hasher::new(),
        began: ctx.now,
    });
    if offset == 0 || offset > size {
        return begin_download(st, tx, ctx, down, Ok(0), 0);
    }
    ctx.worker.submit(
        Lane::Read,
        st.key,
        st.generation,
        Box::new(move || {
            let crc = prefix_crc(&down.file, offset);
            let mut down = down;
            if crc.is_ok() {
                down.sent = offset;
            }
            JobResult::DownloadPrefix(down, crc, client_crc)
        }),
    );
    Phase::Waiting
}

/// Starts streaming: from the client's offset if its prefix matched (the
/// job set `sent` to it), from zero otherwise.
pub fn begin_download(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    mut down: Box<Download>,
    crc: io::Result<u32>,
    client_crc: u32,
) -> Phase {
    let offset = match crc {
        Ok(crc) if crc == client_crc && down.sent > 0 => {
            down.hasher = Hasher::new_with_initial(crc);
            down.sent
        }
        _ => {
            down.hasher = Hasher::new();
            0
        }
    };
    down.sent = offset;
    down.start = offset;
    if let Err(e) = down.file.seek(SeekFrom::Start(offset)) {
        return fail(tx, ctx, &FsError::from_io(&e, &down.path));
    }
    ctx.send(
        tx,
        &Reply::GetReady {
            size: down.size,
            offset,
        },
    );
    if offset > 0 {
        let user = st.login.as_ref().map_or("-", |l| l.user.as_str());
        log!(
            Info,
            "{} {user} get {}: resuming at {}",
            st.peer,
            down.path,
            format_size(offset)
        );
    }
    Phase::Sending(down)
}

/// Reads file chunks into the send buffer while it has room. Returns the
/// bytes queued.
pub fn pump_download(st: &mut State, tx: &mut Buffer, ctx: &mut Ctx) -> usize {
    let Phase::Sending(down) = &mut st.phase else {
        return 0;
    };
    let mut queued = 0;
    while down.sent < down.size && tx.room() >= CHUNK_SIZE + CHUNK_HEADER_MAX {
        let n = (down.size - down.sent).min(CHUNK_SIZE as u64) as usize;
        let mut header = [0u8; CHUNK_HEADER_MAX];
        let h = chunk_header(REPLY_CHUNK_TAG, n, &mut header);
        let space = tx.spare(h + n);
        let got = match read_full(&mut down.file, &mut space[h..h + n]) {
            Ok(got) => got,
            Err(e) => {
                let err = FsError::from_io(&e, &down.path);
                return end_download(
                    st,
                    tx,
                    ctx,
                    ErrorCode::Io,
                    &format!("download failed: {}", err.message),
                );
            }
        };
        if got < n {
            let message = format!(
                "download of {} failed: the file shrank on the server while being sent",
                down.path
            );
            return end_download(st, tx, ctx, ErrorCode::TransferFailed, &message);
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
            log_download(st, &down, "ok");
        }
    }
    queued
}

fn end_download(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    code: ErrorCode,
    message: &str,
) -> usize {
    ctx.send_error(tx, code, message);
    if let Phase::Sending(down) = std::mem::replace(&mut st.phase, Phase::Ready) {
        log_download(st, &down, message);
    }
    0
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// One access-log line for a finished or failed download.
pub fn log_download(st: &State, down: &Download, outcome: &str) {
    let moved = down.sent - down.start;
    let crc = down.hasher.clone().finalize();
    log_transfer(st, "get", &down.path, moved, down.began, crc, outcome);
}

/// The access-log line of a transfer: who, from where, what, how much, how
/// fast, its CRC32 and how it ended. Each field is one `key=value` token:
/// the strings are quoted, so a name cannot pose as more fields.
fn log_transfer(
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
