//! `put` and `get`: streaming a file in `Chunk` frames, resuming an
//! unfinished transfer, and checking the CRC32 of the whole file.
//!
//! Uploads read the file straight into one reused send buffer, after the
//! frame header, and send several chunks per `write`; downloads write chunks
//! straight from the receive buffer. Neither allocates per chunk.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use crc32fast::Hasher;
use ftpd::aligned_io::Stage;
use ftpd::frame::{CHUNK_HEADER_MAX, chunk_header};
use ftpd::proto::{CHUNK_SIZE, Reply, Request};
use ftpd::size::format_size;

use crate::commands::is_remote_dir;
use crate::conn::Conn;
use crate::error::Failure;
use crate::pace::Awaiting;
use crate::progress::{Direction, Progress, note};
use crate::rate::Throttle;

/// postcard's variant index of [`Request::Chunk`], for [`chunk_header`]
/// (checked against postcard by a test below).
const REQUEST_CHUNK_TAG: u8 = 15;

/// Chunks per `write` call: fewer syscalls, and still a bounded buffer.
const CHUNKS_PER_WRITE: usize = 4;

/// Every this many writes (32 chunks, 4 MiB) an upload looks whether the
/// server already gave up on it (quota, disk full), instead of sending the
/// rest for nothing.
const WRITES_PER_CHECK: u64 = 8;

/// How long to wait for `PutDone`: the server syncs the file to disk first,
/// which for a large file on a slow disk can take minutes.
pub const PUT_DONE_TIMEOUT: Duration = Duration::from_secs(600);

/// Uploads `local` to `remote` (default: the local name), resuming an
/// unfinished upload when `resume` is set. The file keeps its
/// modification time.
pub fn put(
    conn: &mut Conn,
    local: &Path,
    remote: Option<&str>,
    resume: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let shown = local.display();
    let mut file = File::open(local).with_context(|| format!("cannot open {shown}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {shown}"))?;
    if !meta.is_file() {
        bail!("{shown} is not a regular file");
    }
    let name = local
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{shown} has no usable file name; name the remote file"))?;
    let remote = match remote {
        None => name.to_owned(),
        Some(r) if r.ends_with('/') => format!("{r}{name}"),
        Some(r) if is_remote_dir(conn, r)? => format!("{r}/{name}"),
        Some(r) => r.to_owned(),
    };
    let upload = Upload {
        remote: &remote,
        shown: &shown.to_string(),
        size: meta.len(),
        mtime: mtime_ns(&meta),
        crc32: None,
        resume,
        quiet,
    };
    let mut progress = None;
    upload.send(conn, &mut file, &mut |event| match event {
        Sending::From(start) => {
            progress = Some(Progress::start(
                Direction::Sent,
                &remote,
                meta.len(),
                start,
                quiet,
            ));
        }
        Sending::Bytes(n) => {
            if let Some(p) = &progress {
                p.inc(n);
            }
        }
    })?;
    if let Some(p) = progress {
        p.finish();
    }
    Ok(())
}

/// A file's modification time in nanoseconds since the Unix epoch, as the
/// protocol carries it; `None` if it does not fit.
pub fn mtime_ns(meta: &fs::Metadata) -> Option<i64> {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
        .checked_mul(1_000_000_000)?
        .checked_add(meta.mtime_nsec())
}

/// What a streamed upload reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Sending {
    /// Bytes start going out from this offset (after a resumed prefix).
    From(u64),
    /// This many more bytes went out.
    Bytes(u64),
}

/// How a streamed upload ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uploaded {
    /// Sent, verified and stored.
    Sent,
    /// The server already had exactly these bytes (`crc32` was given).
    Unchanged,
}

/// One file to stream with `PutStart`.
pub struct Upload<'a> {
    pub remote: &'a str,
    /// How the user names the local file, for messages.
    pub shown: &'a str,
    pub size: u64,
    pub mtime: Option<i64>,
    /// The whole local file's CRC32, if known: the server answers
    /// `Unchanged` when its file has the same size and CRC32.
    pub crc32: Option<u32>,
    pub resume: bool,
    pub quiet: bool,
}

impl Upload<'_> {
    /// Streams `file`, telling `progress` how it goes.
    pub fn send(
        &self,
        conn: &mut Conn,
        file: &mut File,
        progress: &mut dyn FnMut(Sending),
    ) -> anyhow::Result<Uploaded> {
        let Upload {
            remote,
            shown,
            size,
            quiet,
            ..
        } = *self;
        let mut buf =
            vec![0u8; CHUNKS_PER_WRITE * (CHUNK_HEADER_MAX + CHUNK_SIZE)].into_boxed_slice();
        let (offer, prefix_crc) = match conn.call(&Request::PutStart {
            path: remote.to_owned(),
            size,
            resume: self.resume,
            mtime: self.mtime,
            crc32: self.crc32,
        })? {
            Reply::PutReady { offset, prefix_crc } => (offset, prefix_crc),
            Reply::Unchanged => return Ok(Uploaded::Unchanged),
            other => return Err(Failure::unexpected("PutReady", &other).into()),
        };
        let mut hasher = Hasher::new();
        let start = match resume_point(file, offer, size, prefix_crc, &mut hasher, &mut buf) {
            Ok(start) => start,
            Err(e) => {
                conn.send(&Request::PutFrom { offset: 0 })?;
                return abandon(conn, e).with_context(|| format!("cannot read {shown}"));
            }
        };
        if start > 0 {
            note(
                quiet,
                &format!("{remote}: resuming at {}", format_size(start)),
            );
        } else if offer > 0 {
            note(
                quiet,
                &format!("{remote}: the partial upload on the server differs; starting over"),
            );
        }
        conn.send(&Request::PutFrom { offset: start })?;
        progress(Sending::From(start));
        let mut sent = |n| progress(Sending::Bytes(n));
        match send_chunks(conn, file, start, size, &mut hasher, &mut buf, &mut sent)? {
            Sent::All => {}
            Sent::Stopped => {
                // The server has answered already (with an error) and skips our
                // chunks up to `PutEnd`, which gets no answer of its own. Read
                // the answer first: it says more than a failed send would.
                let err = match conn.recv() {
                    Err(e) => e,
                    Ok(other) => Failure::unexpected("Error", &other),
                };
                if !err.is_fatal() {
                    // If this fails, the next command reports the lost session.
                    let _ = conn.send(&Request::PutEnd { crc32: 0 });
                }
                return Err(err.into());
            }
            Sent::LocalError(e) => {
                return abandon(conn, e).with_context(|| format!("cannot read {shown}"));
            }
        }
        let crc32 = hasher.finalize();
        conn.send(&Request::PutEnd { crc32 })?;
        let (their_size, their_crc) =
            match conn.recv_within(PUT_DONE_TIMEOUT.max(conn.timeout()))? {
                Reply::PutDone {
                    size: their_size,
                    crc32: their_crc,
                } => (their_size, their_crc),
                other => return Err(Failure::unexpected("PutDone", &other).into()),
            };
        if (their_size, their_crc) != (size, crc32) {
            return Err(Failure::Integrity(format!(
                "the server stored {their_size} bytes with crc32 {their_crc:08x}, \
                 but {size} bytes with crc32 {crc32:08x} were sent"
            ))
            .into());
        }
        Ok(Uploaded::Sent)
    }
}

/// Where the upload starts: at the server's `offer` if the local file's
/// prefix has the same CRC32 (left in `hasher`), else at 0 with the file
/// rewound.
fn resume_point(
    file: &mut File,
    offer: u64,
    size: u64,
    prefix_crc: u32,
    hasher: &mut Hasher,
    buf: &mut [u8],
) -> std::io::Result<u64> {
    if offer == 0 {
        return Ok(0);
    }
    if offer <= size && hash_prefix(file, offer, hasher, buf)? == prefix_crc {
        return Ok(offer);
    }
    *hasher = Hasher::new();
    file.rewind()?;
    Ok(0)
}

/// Ends an upload early after a local error: a short `PutEnd` makes the
/// server answer (with an error), which keeps the session in step.
fn abandon<T>(conn: &mut Conn, e: std::io::Error) -> anyhow::Result<T> {
    conn.send(&Request::PutEnd { crc32: 0 })?;
    // The answer is an error about the short upload; ours says more.
    let _ = conn.recv();
    Err(e.into())
}

/// How an upload's stream of chunks ended.
enum Sent {
    /// All bytes went out.
    All,
    /// The server sent a reply early (an error); no more chunks went out.
    Stopped,
    /// Reading the local file failed or it shrank.
    LocalError(std::io::Error),
}

/// Sends the file's bytes from `start` to `size` in chunks.
fn send_chunks(
    conn: &mut Conn,
    file: &mut File,
    start: u64,
    size: u64,
    hasher: &mut Hasher,
    buf: &mut [u8],
    sent: &mut dyn FnMut(u64),
) -> Result<Sent, Failure> {
    let mut pos = start;
    let mut writes = 0u64;
    let mut stage = Stage::new(CHUNK_SIZE);
    let mut pace = conn.pace(Awaiting::Upload);
    let mut throttle = Throttle::new();
    // Under --limit-rate: small chunks, one per write, for a steady rate.
    let (chunk, batch) = match throttle.chunk(CHUNK_SIZE) {
        Some(chunk) => (chunk, CHUNK_HEADER_MAX + chunk),
        None => (CHUNK_SIZE, buf.len()),
    };
    while pos < size {
        let mut used = 0;
        let batch_start = pos;
        while pos < size && used + CHUNK_HEADER_MAX + chunk <= batch {
            // Bounded by CHUNK_SIZE, so it fits in usize.
            let n = (size - pos).min(chunk as u64) as usize;
            let mut header = [0; CHUNK_HEADER_MAX];
            let h = chunk_header(REQUEST_CHUNK_TAG, n, &mut header);
            buf[used..used + h].copy_from_slice(&header[..h]);
            used += h;
            let data = &mut buf[used..used + n];
            if let Err(e) = stage.read_exact(file, data) {
                return Ok(Sent::LocalError(if e.kind() == ErrorKind::UnexpectedEof {
                    std::io::Error::other("the file shrank while it was being sent")
                } else {
                    e
                }));
            }
            hasher.update(data);
            used += n;
            pos += n as u64;
        }
        conn.send_paced(&buf[..used], &mut pace)?;
        sent(pos - batch_start);
        // Ctrl-C in the shell, and --limit-rate, act between writes.
        throttle.pay(pos - batch_start, &mut pace)?;
        writes += 1;
        if writes.is_multiple_of(WRITES_PER_CHECK) && conn.reply_waiting() {
            return Ok(Sent::Stopped);
        }
    }
    Ok(Sent::All)
}

/// Hashes the first `len` bytes of `file` into `hasher`, returning their CRC32.
fn hash_prefix(
    file: &mut File,
    len: u64,
    hasher: &mut Hasher,
    buf: &mut [u8],
) -> std::io::Result<u32> {
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher.clone().finalize())
}

/// Downloads `remote` to `local` (default: the remote file's name in the
/// current directory) through `LOCAL.part`, resuming it when `resume` is set.
pub fn get(
    conn: &mut Conn,
    remote: &str,
    local: Option<&Path>,
    resume: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let target = local_target(remote, local)?;
    let part = part_path(&target);
    let shown = part.display();
    // Renaming over a device or FIFO (`get x /dev/null`) would replace it,
    // and a `.part` that is a link or FIFO would be written through.
    if fs::metadata(&target).is_ok_and(|m| !m.is_file()) {
        bail!("{} exists and is not a regular file", target.display());
    }
    if fs::symlink_metadata(&part).is_ok_and(|m| !m.is_file()) {
        bail!("{shown} exists and is not a regular file");
    }

    let mut buf = vec![0u8; CHUNK_SIZE].into_boxed_slice();
    let created = !part.exists();
    let (mut file, have, mut hasher) =
        open_part(&part, resume, &mut buf).with_context(|| format!("cannot open {shown}"))?;
    let ready = match conn.call(&Request::GetStart {
        path: remote.into(),
        offset: have,
        prefix_crc: hasher.clone().finalize(),
    }) {
        Ok(Reply::GetReady { size, offset }) => Ok((size, offset)),
        Ok(other) => Err(Failure::unexpected("GetReady", &other)),
        Err(e) => Err(e),
    };
    let (size, offset) = match ready {
        Ok(ready) => ready,
        Err(e) => {
            if created {
                // Nothing to resume later: do not leave an empty `.part`.
                drop(file);
                let _ = fs::remove_file(&part);
            }
            return Err(e.into());
        }
    };
    if offset > size || (offset != 0 && offset != have) {
        return Err(Failure::Link(format!(
            "protocol error: the server offered to resume at {offset} of {size} bytes, \
             but {have} bytes are here"
        ))
        .into());
    }
    if offset > 0 {
        note(quiet, &format!("resuming at {}", format_size(offset)));
    } else if have > 0 {
        note(quiet, "the file on the server changed; starting over");
        hasher = Hasher::new();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .with_context(|| format!("cannot truncate {shown}"))?;
    }

    let progress = Progress::start(Direction::Received, remote, size, offset, quiet);
    let sink = Sink {
        out: &mut file,
        failed: &format!("cannot write {shown}"),
    };
    let their_crc = receive_chunks(
        conn,
        sink,
        &mut hasher,
        size,
        offset,
        &mut Throttle::new(),
        |n| progress.inc(n),
    )?;
    let crc32 = hasher.finalize();
    if crc32 != their_crc {
        drop(file);
        // Known to be bad: resuming from it could never succeed.
        let _ = fs::remove_file(&part);
        return Err(Failure::Integrity(format!(
            "{remote}: received data has crc32 {crc32:08x}, the server's file has \
             {their_crc:08x}; the partial file was deleted, try again"
        ))
        .into());
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {shown}"))?;
    drop(file);
    fs::rename(&part, &target)
        .with_context(|| format!("cannot rename {shown} to {}", target.display()))?;
    sync_parent(&target);
    progress.finish();
    Ok(())
}

/// Where a download's bytes go, and what to say when writing there fails.
pub struct Sink<'a, W> {
    pub out: &'a mut W,
    pub failed: &'a str,
}

/// Receives a download's chunks into `sink` up to `GetDone`, whose CRC32
/// it returns. After a local write error it keeps reading to the end, so
/// the session stays in step, and reports the error then. `progress` is
/// told of every chunk's bytes.
pub fn receive_chunks(
    conn: &mut Conn,
    sink: Sink<impl Write>,
    hasher: &mut Hasher,
    size: u64,
    offset: u64,
    throttle: &mut Throttle,
    progress: impl Fn(u64),
) -> anyhow::Result<u32> {
    let want = size - offset;
    let mut got = 0u64;
    let mut write_error = None;
    let mut stage = Stage::new(CHUNK_SIZE);
    let mut pace = conn.pace(Awaiting::Download);
    let their_crc = loop {
        match conn.recv_paced(&pace)? {
            Reply::Chunk(data) => {
                if data.len() as u64 > want - got {
                    return Err(Failure::Link(format!(
                        "protocol error: the server sent more than the {size} bytes it announced"
                    ))
                    .into());
                }
                if write_error.is_none()
                    && let Err(e) = stage.write_all(sink.out, data)
                {
                    write_error = Some(e);
                }
                hasher.update(data);
                got += data.len() as u64;
                let n = data.len() as u64;
                pace.advance(n);
                progress(n);
                // Ctrl-C in the shell, and --limit-rate, act between chunks.
                throttle.pay(n, &mut pace)?;
            }
            Reply::GetDone { crc32 } => break crc32,
            other => return Err(Failure::unexpected("Chunk or GetDone", &other).into()),
        }
    };
    if let Some(e) = write_error {
        return Err(anyhow::Error::new(e).context(sink.failed.to_owned()));
    }
    if got != want {
        return Err(Failure::Link(format!(
            "protocol error: the download ended after {} of {size} bytes",
            offset + got
        ))
        .into());
    }
    Ok(their_crc)
}

/// `get REMOTE -`: streams the file to stdout (no `.part`, no resume), and
/// still checks the CRC32 at the end.
pub fn get_to_stdout(conn: &mut Conn, remote: &str, quiet: bool) -> anyhow::Result<()> {
    let (size, offset) = match conn.call(&Request::GetStart {
        path: remote.into(),
        offset: 0,
        prefix_crc: 0,
    })? {
        Reply::GetReady { size, offset: 0 } => (size, 0),
        other => return Err(Failure::unexpected("GetReady", &other).into()),
    };
    let progress = Progress::start(Direction::Received, remote, size, offset, quiet);
    let mut hasher = Hasher::new();
    let mut out = std::io::stdout().lock();
    let sink = Sink {
        out: &mut out,
        failed: "cannot write to standard output",
    };
    let their_crc = receive_chunks(
        conn,
        sink,
        &mut hasher,
        size,
        offset,
        &mut Throttle::new(),
        |n| progress.inc(n),
    )?;
    out.flush().context("cannot write to standard output")?;
    let crc32 = hasher.finalize();
    if crc32 != their_crc {
        return Err(Failure::Integrity(format!(
            "{remote}: received data has crc32 {crc32:08x}, the server's file has {their_crc:08x}"
        ))
        .into());
    }
    progress.finish();
    Ok(())
}

/// Opens `part` for a download: with `resume`, keeps its content and returns
/// its length and hasher; otherwise truncates it.
fn open_part(part: &Path, resume: bool, buf: &mut [u8]) -> std::io::Result<(File, u64, Hasher)> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true);
    let mut file = options.truncate(!resume).open(part)?;
    let mut hasher = Hasher::new();
    let mut have = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                have += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    // Reading left the position at the end, where new bytes go.
    Ok((file, have, hasher))
}

/// Where a download goes: `local`, or inside it if it is a directory, or
/// the remote file's name in the current directory.
pub fn local_target(remote: &str, local: Option<&Path>) -> anyhow::Result<PathBuf> {
    let name = remote_file_name(remote);
    match local {
        Some(dir) if dir.is_dir() => match name {
            Some(name) => Ok(dir.join(name)),
            None => Err(no_name(remote)),
        },
        Some(path) => Ok(path.to_owned()),
        None => name.map(PathBuf::from).ok_or_else(|| no_name(remote)),
    }
}

fn no_name(remote: &str) -> anyhow::Error {
    Failure::Usage(format!(
        "cannot choose a local name for \"{}\"; give one: get REMOTE LOCAL",
        crate::display::sanitize(remote)
    ))
    .into()
}

/// The last component of a remote path, if it can be a local file name.
/// The server's paths never choose where a download lands beyond this one
/// plain name.
pub fn remote_file_name(remote: &str) -> Option<&str> {
    let name = remote.rsplit('/').next()?;
    (!matches!(name, "" | "." | "..")).then_some(name)
}

/// `LOCAL.part`.
fn part_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Syncs the directory holding `path`, so the rename survives a crash.
/// Best effort: some file systems cannot sync directories.
fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_chunk_tag_matches_postcard() {
        for len in [0usize, 5, 200, CHUNK_SIZE] {
            let payload = vec![7u8; len];
            let encoded = ftpd::frame::encode(&Request::Chunk(&payload)).unwrap();
            let mut header = [0; CHUNK_HEADER_MAX];
            let h = chunk_header(REQUEST_CHUNK_TAG, len, &mut header);
            assert_eq!(&encoded[..h], &header[..h]);
            assert_eq!(encoded.len(), h + len);
        }
    }

    #[test]
    fn remote_names_are_reduced_to_a_plain_name() {
        assert_eq!(remote_file_name("a.txt"), Some("a.txt"));
        assert_eq!(remote_file_name("/docs/sub/a b.txt"), Some("a b.txt"));
        assert_eq!(remote_file_name("../../etc/passwd"), Some("passwd"));
        assert_eq!(remote_file_name("docs/"), None);
        assert_eq!(remote_file_name(""), None);
        assert_eq!(remote_file_name("."), None);
        assert_eq!(remote_file_name("a/.."), None);
        assert_eq!(remote_file_name("/"), None);
    }

    #[test]
    fn local_target_choice() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            local_target("x/report.pdf", None).unwrap(),
            PathBuf::from("report.pdf")
        );
        assert_eq!(
            local_target("x/report.pdf", Some(dir.path())).unwrap(),
            dir.path().join("report.pdf")
        );
        let file = dir.path().join("other.pdf");
        assert_eq!(local_target("x/report.pdf", Some(&file)).unwrap(), file);
        assert!(local_target("x/..", None).is_err());
        assert_eq!(
            local_target("x/..", Some(&file)).unwrap(),
            file,
            "an explicit local name needs no remote name"
        );
        assert_eq!(
            part_path(Path::new("dir/a.txt")),
            PathBuf::from("dir/a.txt.part")
        );
    }

    #[test]
    fn part_file_resume_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("f.part");
        fs::write(&part, b"hello").unwrap();
        let mut buf = [0u8; 2];
        let (_, have, hasher) = open_part(&part, true, &mut buf).unwrap();
        assert_eq!(have, 5);
        assert_eq!(hasher.finalize(), crc32fast::hash(b"hello"));
        let (_, have, _) = open_part(&part, false, &mut buf).unwrap();
        assert_eq!(have, 0);
        assert_eq!(fs::metadata(&part).unwrap().len(), 0);
    }
}
