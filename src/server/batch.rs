//! Small files in batches (`PutSmall`): many files without a round trip
//! each, made durable together.
//!
//! A client sends whole small files, one frame each, without waiting for
//! answers. The reactor checks each one as it arrives (path, CRC32 of the
//! data, busy, quota), reserves its space as a streamed upload would, and
//! adds it to the batch that is filling. Each batch is stored by a
//! helper job, two of a session's at once on two threads: each file
//! written to its partial, then every file synced (one `syncfs` for the
//! batch), then each published (renamed over its target), then the
//! folders synced (one `syncfs`, or the one folder's `fsync`); only then
//! does the reactor answer each file, in order (a batch that finishes
//! first waits for the one before it). While batches are stored the next
//! one fills, up to [`SMALL_BATCH_FILES`] files and [`SMALL_BATCH_BYTES`]
//! bytes; past that the connection's input is not read (backpressure), so
//! a connection holds at most three batches.
//!
//! A `Mkdir` among the files joins the batch too (done in its turn, before
//! the files after it are published), so a tree's folders do not stall the
//! stream; a batch that creates folders is stored alone, since later files
//! may go in them. Any other request is left unread until every file before it
//! has been answered, so replies keep the order of requests.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use super::fds::FileSlot;
use super::log::quoted;
use super::session::{Ctx, JobResult, MKDIR_SLACK, Phase, State, resolve};
use super::transfer::{self, OPEN_SLACK};
use super::worker::{Lane, Step};
use crate::buf::Buffer;
use crate::jail::{Change, FsError, Jail, PublishError, Target, VPath};
use crate::log;
use crate::proto::{ErrorCode, Reply, SMALL_BATCH_BYTES, SMALL_BATCH_FILES, SMALL_FILE_MAX};

/// One small file waiting to be stored.
pub struct SmallFile {
    path: VPath,
    data: Vec<u8>,
    size: u64,
    mtime: Option<i64>,
    crc32: u32,
    /// What was reserved for it (0 if it did not fit; then it can only be
    /// answered `Unchanged`, or refused with `over_quota`).
    reserved: u64,
    over_quota: Option<String>,
    _slot: FileSlot,
    began: Instant,
}

/// An item of a batch, in request order.
pub enum Item {
    File(Box<SmallFile>),
    /// A `Mkdir` that came among the files (a tree's next folder): it is
    /// done in its turn, so the files after it can land in it, without
    /// waiting for the batch before it to be answered.
    Folder {
        path: VPath,
        reserved: u64,
    },
    /// Refused on arrival; answered in its turn.
    Refused {
        code: ErrorCode,
        message: String,
    },
}

/// How a small file ended up.
pub enum Kept {
    Published,
    Unchanged,
}

/// An item after its batch was stored.
pub enum Stored {
    Folder {
        reserved: u64,
        result: Result<Change, FsError>,
    },
    File {
        file: Box<SmallFile>,
        /// What storing it did to the home's cost.
        change: Change,
        result: Result<Kept, FsError>,
    },
    Refused {
        code: ErrorCode,
        message: String,
    },
    /// What the batch did to the size of the folders it wrote in, measured
    /// once for the whole batch: answered with nothing, only counted.
    Folders {
        change: Change,
    },
}

/// Batches of one session stored at once, on different helper threads
/// (a user holds at most half of them anyway).
const STORING_AT_ONCE: usize = 2;

/// Longest error message in a batch's answers: with two batches answered
/// at once, their replies must fit the send buffer beside what is queued
/// (the client names its own file anyway).
const BATCH_ERROR_MAX: usize = 256;

/// A session's small-file batches: the one filling, those being stored,
/// and results waiting for an earlier batch to be answered first.
#[derive(Default)]
pub struct Batches {
    filling: Vec<Item>,
    bytes: usize,
    /// The filling batch creates a folder.
    filling_has_folder: bool,
    /// Batches out on helper threads.
    storing: usize,
    /// A batch being stored creates folders: later batches may put files
    /// in them, so none starts until it is done.
    blocking: bool,
    next_seq: u64,
    next_answer: u64,
    /// Stored batches (by sequence number) that wait for an earlier one.
    finished: Vec<(u64, bool, Vec<Stored>)>,
}

impl Batches {
    /// Whether a file of `len` bytes may join the filling batch now.
    pub fn has_room(&self, len: usize) -> bool {
        self.filling.is_empty()
            || (self.filling.len() < SMALL_BATCH_FILES
                && self.bytes.saturating_add(len) <= SMALL_BATCH_BYTES)
    }

    /// Whether a batch is being stored.
    pub fn storing(&self) -> bool {
        self.storing > 0
    }
}

/// `PutSmall`: check the file and add it to the filling batch.
pub fn put_small(
    st: &mut State,
    ctx: &mut Ctx,
    phase: Phase,
    path: &str,
    mtime: Option<i64>,
    crc32: u32,
    data: &[u8],
) -> Phase {
    let mut batches = match phase {
        Phase::Batch(b) => b,
        _ => Box::default(),
    };
    let item = admit(st, ctx, path, mtime, crc32, data);
    if let Item::File(f) = &item {
        batches.bytes = batches.bytes.saturating_add(f.data.len());
    }
    batches.filling.push(item);
    Phase::Batch(batches)
}

/// `Mkdir` while small files are being stored: joins the filling batch.
pub fn mkdir(st: &mut State, ctx: &mut Ctx, phase: Phase, path: &str) -> Phase {
    let Phase::Batch(mut batches) = phase else {
        return phase;
    };
    let item = match st.login.as_ref().map(|login| resolve(login, path)) {
        None => Item::Refused {
            code: ErrorCode::NotLoggedIn,
            message: "log in first".into(),
        },
        Some(Err(e)) => Item::Refused {
            code: e.code,
            message: e.message,
        },
        Some(Ok(path)) => match ctx.accounts.reserve_creation(st.user(), MKDIR_SLACK, 1) {
            Ok(()) => Item::Folder {
                path,
                reserved: MKDIR_SLACK,
            },
            Err((code, message)) => Item::Refused { code, message },
        },
    };
    batches.filling_has_folder |= matches!(item, Item::Folder { .. });
    batches.filling.push(item);
    Phase::Batch(batches)
}

fn admit(
    st: &State,
    ctx: &mut Ctx,
    path: &str,
    mtime: Option<i64>,
    crc32: u32,
    data: &[u8],
) -> Item {
    let refused = |e: FsError| Item::Refused {
        code: e.code,
        message: e.message,
    };
    let Some(login) = st.login.as_ref() else {
        return refused(FsError::new(ErrorCode::NotLoggedIn, "log in first"));
    };
    let path = match resolve(login, path) {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    if path.is_root() {
        return refused(FsError::new(ErrorCode::IsADirectory, "is a directory: /"));
    }
    if data.len() > SMALL_FILE_MAX {
        let message = format!("bad request: {path} is too big to send whole; stream it");
        return refused(FsError::new(ErrorCode::BadRequest, message));
    }
    if crc32fast::hash(data) != crc32 {
        let message =
            format!("checksum mismatch: {path} was damaged in transit; nothing was saved");
        return refused(FsError::new(ErrorCode::CrcMismatch, message));
    }
    let user = login.user.clone();
    if let Err((code, message)) = ctx.accounts.check_not_uploading(&user, &path) {
        return refused(FsError::new(code, message));
    }
    let Some(slot) = ctx.fds.take() else {
        let message = "the server is out of resources right now; try again later";
        return refused(FsError::new(ErrorCode::Unavailable, message));
    };
    let size = data.len() as u64;
    let full = transfer::still_needed(size, 0).saturating_add(OPEN_SLACK);
    let (reserved, over_quota) = match ctx.accounts.reserve_creation(&user, full, 1) {
        Ok(()) => (full, None),
        // An identical file needs no room: the job decides.
        Err((_, message)) => (0, Some(message)),
    };
    if let Some(acc) = ctx.accounts.get_mut(&user) {
        acc.uploads.insert(path.clone());
    }
    Item::File(Box::new(SmallFile {
        path,
        data: data.to_vec(),
        size,
        mtime,
        crc32,
        reserved,
        over_quota,
        _slot: slot,
        began: ctx.now,
    }))
}

/// Starts storing the filling batch if fewer than [`STORING_AT_ONCE`]
/// are being stored, none of them creates folders, and the client reads
/// its replies (`tx` holds fewer than `tx_high` bytes).
pub fn pump(st: &mut State, tx: &Buffer, ctx: &mut Ctx, tx_high: usize) {
    let Phase::Batch(b) = &mut st.phase else {
        return;
    };
    if b.storing >= STORING_AT_ONCE || b.blocking || b.filling.is_empty() || tx.len() >= tx_high {
        return;
    }
    let Some(login) = st.login.as_ref() else {
        return;
    };
    let items = std::mem::take(&mut b.filling);
    let folders = std::mem::take(&mut b.filling_has_folder);
    b.bytes = 0;
    b.storing += 1;
    b.blocking = folders;
    let seq = b.next_seq;
    b.next_seq += 1;
    let jail = Arc::clone(&login.jail);
    let user = login.user.clone();
    let owner = user.clone();
    let job = move || {
        let results = store(&jail, items);
        Step::Done(JobResult::SmallStored {
            user: owner,
            seq,
            folders,
            results,
        })
    };
    ctx.worker
        .submit(Lane::Sync, &user, st.key, st.generation, Box::new(job));
}

/// Stores a batch (on a helper thread): under the tree lock look at each
/// target and make each partial, then write them all, sync them all, and
/// under the lock again publish each; then sync each folder once. The
/// last item is what the batch did to its folders' sizes.
pub fn store(jail: &Jail, items: Vec<Item>) -> Vec<Stored> {
    let mut out = Vec::with_capacity(items.len() + 1);
    let mut written: Vec<(usize, File)> = Vec::new();
    let mut creating = jail.create_small();
    for item in items {
        let mut f = match item {
            Item::Refused { code, message } => {
                out.push(Stored::Refused { code, message });
                continue;
            }
            Item::Folder { path, reserved } => {
                let result = creating.mkdir(&path);
                out.push(Stored::Folder { reserved, result });
                continue;
            }
            Item::File(f) => f,
        };
        let (change, result) = match creating.target(&f.path, f.size, f.crc32, f.mtime) {
            Ok(Target::Same) => (Change::default(), Ok(Kept::Unchanged)),
            Err(e) => (Change::default(), Err(e)),
            Ok(Target::Other) => match f.over_quota.take() {
                Some(message) => {
                    let e = FsError::new(ErrorCode::QuotaExceeded, message);
                    (Change::default(), Err(e))
                }
                None => match creating.create(&f.path) {
                    Ok((file, change)) => {
                        written.push((out.len(), file));
                        (change, Ok(Kept::Published))
                    }
                    Err(e) => (Change::default(), Err(e)),
                },
            },
        };
        out.push(Stored::File {
            file: f,
            change,
            result,
        });
    }
    let mut grown = creating.finish();
    written.retain(|(i, file)| {
        let Stored::File {
            file: f,
            change,
            result,
        } = &mut out[*i]
        else {
            return false;
        };
        let data = std::mem::take(&mut f.data);
        let (wrote, done) = jail.write_small(&f.path, file, &data, f.mtime, f.crc32);
        *change = change.and(wrote);
        match done {
            Ok(()) => true,
            Err(e) => {
                *result = Err(e);
                false
            }
        }
    });
    // Data first, then names: an answered file is on disk. One syncfs
    // makes the whole batch durable with one journal commit, where a sync
    // per file would pay one each; should it fail, syncing each file
    // finds the ones that cannot be made durable.
    let together = written.len() > 1 && rustix::fs::syncfs(&written[0].1).is_ok();
    let mut synced = Vec::with_capacity(written.len());
    for (i, file) in written {
        match if together { Ok(()) } else { file.sync_all() } {
            Ok(()) => synced.push(i),
            Err(e) => fail(jail, &mut out[i], |path| {
                let e = FsError::from_io(&e, path);
                FsError::new(e.code, format!("upload of {path} failed: {}", e.message))
            }),
        }
    }
    let mut publishing = jail.publish_small();
    let mut in_folder: Vec<Vec<usize>> = Vec::new();
    let mut unpublished = Vec::new();
    for i in synced {
        let Stored::File { file, change, .. } = &mut out[i] else {
            continue;
        };
        match publishing.publish(&file.path) {
            Ok((replaced, folder)) => {
                *change = change.and(replaced);
                if in_folder.len() <= folder {
                    in_folder.resize_with(folder + 1, Vec::new);
                }
                in_folder[folder].push(i);
            }
            Err(PublishError(e)) => unpublished.push((i, e)),
        }
    }
    let (renamed, folders) = publishing.finish();
    grown = grown.and(renamed);
    for (i, e) in unpublished {
        fail(jail, &mut out[i], |path| {
            FsError::new(e.code, format!("upload of {path} not saved: {}", e.message))
        });
    }
    // The new names: one syncfs for several folders, else each folder's
    // own sync (which also tells which folder failed).
    let together = folders.len() > 1 && rustix::fs::syncfs(&folders[0]).is_ok();
    for (dir, files) in folders.iter().zip(in_folder) {
        if let Err(e) = if together {
            Ok(())
        } else {
            rustix::fs::fsync(dir)
        } {
            for i in files {
                if let Stored::File { file, result, .. } = &mut out[i] {
                    let message = format!(
                        "upload of {} was saved but could not be synced to disk ({e}); it may be lost if the server crashes",
                        file.path
                    );
                    *result = Err(FsError::new(ErrorCode::Io, message));
                }
            }
        }
    }
    out.push(Stored::Folders { change: grown });
    out
}

/// Marks a written file failed and removes its partial.
fn fail(jail: &Jail, stored: &mut Stored, error: impl FnOnce(&VPath) -> FsError) {
    if let Stored::File {
        file,
        change,
        result,
    } = stored
    {
        *result = Err(error(&file.path));
        if let Ok(removed) = jail.remove_partial(&file.path) {
            *change = change.and(removed);
        }
    }
}

/// A batch was stored: once every earlier batch is answered, settle each
/// file's figures and answer each, in order. The session goes on while
/// batches are filling or being stored.
pub fn stored(
    st: &mut State,
    tx: &mut Buffer,
    ctx: &mut Ctx,
    mut batches: Box<Batches>,
    (seq, folders, results): (u64, bool, Vec<Stored>),
) -> Phase {
    batches.storing = batches.storing.saturating_sub(1);
    if folders {
        batches.blocking = false;
    }
    batches.finished.push((seq, folders, results));
    while let Some(i) = batches
        .finished
        .iter()
        .position(|(s, _, _)| *s == batches.next_answer)
    {
        let (_, _, results) = batches.finished.swap_remove(i);
        answer(st, tx, ctx, results);
        batches.next_answer += 1;
    }
    if batches.filling.is_empty() && batches.storing == 0 && batches.finished.is_empty() {
        Phase::Ready
    } else {
        Phase::Batch(batches)
    }
}

/// Answers the files of one stored batch, in order.
fn answer(st: &mut State, tx: &mut Buffer, ctx: &mut Ctx, results: Vec<Stored>) {
    let short = |m: &str| -> String {
        if m.len() <= BATCH_ERROR_MAX {
            return m.to_owned();
        }
        let mut end = BATCH_ERROR_MAX;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &m[..end])
    };
    for stored in results {
        match stored {
            Stored::Refused { code, message } => ctx.send_error(tx, code, &short(&message)),
            Stored::Folders { change } => {
                let user = st.user().to_owned();
                ctx.accounts.apply(&user, change);
            }
            Stored::Folder { reserved, result } => {
                let user = st.user().to_owned();
                match settle_folder(ctx, &user, reserved, result) {
                    Ok(()) => ctx.send(tx, &Reply::Ok),
                    Err(e) => ctx.send_error(tx, e.code, &short(&e.message)),
                }
            }
            Stored::File {
                file,
                change,
                result,
            } => {
                let outcome = match &result {
                    Ok(Kept::Published) => "ok",
                    Ok(Kept::Unchanged) => "unchanged",
                    Err(_) => "failed",
                };
                if !matches!(result, Ok(Kept::Unchanged)) {
                    let moved = if result.is_ok() { file.size } else { 0 };
                    transfer::log_transfer(
                        st, "put", &file.path, moved, file.began, file.crc32, outcome,
                    );
                }
                match &result {
                    Ok(Kept::Published) => ctx.send(
                        tx,
                        &Reply::PutDone {
                            size: file.size,
                            crc32: file.crc32,
                        },
                    ),
                    Ok(Kept::Unchanged) => ctx.send(tx, &Reply::Unchanged),
                    Err(e) => {
                        if e.code == ErrorCode::QuotaExceeded {
                            log!(
                                Info,
                                "{} {} put {}: {}",
                                st.peer,
                                quoted(st.user()),
                                quoted(&file.path),
                                e.message
                            );
                        }
                        ctx.send_error(tx, e.code, &short(&e.message));
                    }
                }
                let user = st.user().to_owned();
                settle(ctx, &user, *file, change);
            }
        }
    }
}

/// A file's figures after storing: hand back the reservation, apply what
/// storing did, free the path.
fn settle(ctx: &mut Ctx, user: &str, file: SmallFile, change: Change) {
    let entries = u64::from(file.reserved > 0);
    ctx.accounts.release_creation(user, file.reserved, entries);
    ctx.accounts.apply(user, change);
    if let Some(acc) = ctx.accounts.get_mut(user) {
        acc.uploads.remove(&file.path);
    }
}

/// A folder's figures: hand back the reservation, apply what it did.
fn settle_folder(
    ctx: &mut Ctx,
    user: &str,
    reserved: u64,
    result: Result<Change, FsError>,
) -> Result<(), FsError> {
    ctx.accounts
        .release_creation(user, reserved, u64::from(reserved > 0));
    result.map(|change| ctx.accounts.apply(user, change))
}

/// A stored batch whose session is gone: settle the figures only.
pub fn orphan_stored(ctx: &mut Ctx, user: &str, results: Vec<Stored>) {
    for stored in results {
        match stored {
            Stored::File { file, change, .. } => settle(ctx, user, *file, change),
            Stored::Folder {
                reserved, result, ..
            } => {
                let _ = settle_folder(ctx, user, reserved, result);
            }
            Stored::Folders { change } => ctx.accounts.apply(user, change),
            Stored::Refused { .. } => {}
        }
    }
}

/// The session ends with files still waiting: nothing of those filling is
/// on disk yet, so only their reservations go back; those stored but not
/// answered are settled.
pub fn abandon(ctx: &mut Ctx, user: &str, batches: Batches) {
    for (_, _, results) in batches.finished {
        orphan_stored(ctx, user, results);
    }
    for item in batches.filling {
        match item {
            Item::File(f) => settle(ctx, user, *f, Change::default()),
            Item::Folder { reserved, .. } => {
                let _ = settle_folder(ctx, user, reserved, Ok(Change::default()));
            }
            Item::Refused { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::fds::FdBudget;
    use crate::usage;

    fn item(budget: &FdBudget, path: &str, data: &[u8], mtime: Option<i64>) -> Item {
        Item::File(Box::new(SmallFile {
            path: VPath::resolve(&VPath::root(), path).unwrap(),
            data: data.to_vec(),
            size: data.len() as u64,
            mtime,
            crc32: crc32fast::hash(data),
            reserved: 0,
            over_quota: None,
            _slot: budget.take().unwrap(),
            began: Instant::now(),
        }))
    }

    /// What `store` reports for each item: "published", "unchanged", the
    /// error code, or "refused"; and the sum of the changes.
    fn outcomes(results: &[Stored]) -> (Vec<String>, i64, i64) {
        let (mut bytes, mut entries) = (0, 0);
        let names = results
            .iter()
            .filter_map(|r| {
                Some(match r {
                    Stored::Folders { change } => {
                        bytes += change.bytes;
                        entries += change.entries;
                        return None;
                    }
                    Stored::Refused { .. } => "refused".to_owned(),
                    Stored::Folder { result, .. } => match result {
                        Ok(change) => {
                            bytes += change.bytes;
                            entries += change.entries;
                            "folder".to_owned()
                        }
                        Err(e) => format!("{:?}", e.code),
                    },
                    Stored::File { change, result, .. } => {
                        bytes += change.bytes;
                        entries += change.entries;
                        match result {
                            Ok(Kept::Published) => "published".to_owned(),
                            Ok(Kept::Unchanged) => "unchanged".to_owned(),
                            Err(e) => format!("{:?}", e.code),
                        }
                    }
                })
            })
            .collect();
        (names, bytes, entries)
    }

    #[test]
    fn a_batch_is_stored_published_stamped_and_measured() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("d1")).unwrap();
        std::fs::create_dir_all(home.join("d2/taken")).unwrap();
        let jail = Jail::open(&home).unwrap();
        let budget = FdBudget::new();
        let before = usage::tally(&home).unwrap();
        let t = 1_500_000_000_123_456_789;
        let items = vec![
            item(&budget, "/d1/a", b"alpha", Some(t)),
            Item::Refused {
                code: ErrorCode::CrcMismatch,
                message: "damaged".into(),
            },
            item(&budget, "/d2/b", b"", None),
            item(&budget, "/d2/taken", b"not over a folder", None),
            item(&budget, "/d1/c", &vec![7u8; 5000], None),
            Item::Folder {
                path: VPath::resolve(&VPath::root(), "/d1/new").unwrap(),
                reserved: 0,
            },
            item(
                &budget,
                "/d1/new/in-it",
                b"in a folder made in this batch",
                None,
            ),
        ];
        let results = store(&jail, items);
        let (names, bytes, entries) = outcomes(&results);
        assert_eq!(
            names,
            [
                "published",
                "refused",
                "published",
                "IsADirectory",
                "published",
                "folder",
                "published"
            ]
        );
        assert!(home.join("d1/new/in-it").is_file());
        // What the batch reported equals a recount of the disk.
        let after = usage::tally(&home).unwrap();
        assert_eq!(after.bytes as i64 - before.bytes as i64, bytes);
        assert_eq!(after.entries as i64 - before.entries as i64, entries);
        assert_eq!(std::fs::read(home.join("d1/a")).unwrap(), b"alpha");
        assert_eq!(std::fs::read(home.join("d1/c")).unwrap(), vec![7u8; 5000]);
        assert!(home.join("d2/b").is_file());
        let mtime = std::fs::metadata(home.join("d1/a"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(Some(mtime), crate::jail::stamp::system_time(t));
        let partials = std::fs::read_dir(home.join(crate::jail::PARTIAL_DIR)).unwrap();
        assert_eq!(partials.count(), 0, "partials left behind");

        // The same files again are unchanged (by their stamps) and cost
        // nothing; a changed one is published again.
        let again = vec![
            item(&budget, "/d1/a", b"alpha", Some(t)),
            item(&budget, "/d1/c", &vec![8u8; 5000], None),
        ];
        let (names, bytes, _) = outcomes(&store(&jail, again));
        assert_eq!(names, ["unchanged", "published"]);
        assert_eq!(bytes, 0, "replacing a file of the same size costs nothing");
        assert_eq!(std::fs::read(home.join("d1/c")).unwrap(), vec![8u8; 5000]);

        // A partial left by a broken streamed upload is emptied and used,
        // and the figures still match a recount.
        let left = jail.open_partial(&VPath::resolve(&VPath::root(), "/d2/left").unwrap(), None);
        let left = left.unwrap();
        std::os::unix::fs::FileExt::write_all_at(&left.file, &[1u8; 9000], 0).unwrap();
        drop(left);
        let before = usage::tally(&home).unwrap();
        let (names, bytes, entries) =
            outcomes(&store(&jail, vec![item(&budget, "/d2/left", b"new", None)]));
        assert_eq!(names, ["published"]);
        assert_eq!(std::fs::read(home.join("d2/left")).unwrap(), b"new");
        let after = usage::tally(&home).unwrap();
        assert_eq!(after.bytes as i64 - before.bytes as i64, bytes);
        assert_eq!(after.entries as i64 - before.entries as i64, entries);
    }
}
