//! `put -r` and `put A B C DIR`: folders and several files in one job.
//!
//! The local tree is walked twice, streaming both times (no list of the
//! tree is ever held): a first walk only sums sizes for the quota check,
//! the second sends. Symbolic links are never followed, and they, special
//! files and names that are not UTF-8 are skipped and counted.
//!
//! Small files (up to [`SMALL_FILE_MAX`]) go whole in one `PutSmall` frame
//! each, several in flight at once ([`SMALL_FILES_IN_FLIGHT`]), so a tree
//! of many small files costs about one round trip per batch, not per
//! file. Larger files stream with `PutStart` as a single `put` does, after
//! the small files before them are answered. Folders are created with
//! pipelined `Mkdir`s ("already exists" is fine: a rerun works on the same
//! folder). A rerun skips identical files: every file goes with the CRC32
//! of its local bytes, and the server answers `Unchanged` when its file
//! has the same size and CRC32.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use crc32fast::Hasher;
use ftpd::proto::{
    EntryKind, ErrorCode, Reply, Request, SMALL_BYTES_IN_FLIGHT, SMALL_FILE_MAX,
    SMALL_FILES_IN_FLIGHT,
};
use ftpd::size::format_size;
use ftpd::usage::{BLOCK, file_charge};
use walkdir::WalkDir;

use crate::commands::{mkdir_p, stat};
use crate::conn::Conn;
use crate::error::Failure;
use crate::pace::Awaiting;
use crate::rate::Throttle;
use crate::transfer::{PUT_DONE_TIMEOUT, Sending, Upload, Uploaded, mtime_ns};
use crate::tree_report::{Direction, TreeReport, Unfollowed};

/// One local source and where it goes.
struct Source {
    local: PathBuf,
    /// The remote folder that receives a folder's contents, or the remote
    /// path of a file.
    remote: String,
    is_dir: bool,
}

/// `put [-r] SOURCES... [TARGET]` for the cases a single `put` does not
/// cover: `-r` with a folder, or several sources.
///
/// With one folder, `TARGET` (default: the folder's own name) is the
/// remote folder that holds its contents, created if missing. With several
/// sources, `TARGET` is required and each source lands inside it under its
/// own name.
pub fn put_tree(
    conn: &mut Conn,
    paths: &[PathBuf],
    target: Option<&str>,
    recursive: bool,
    resume: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let sources = plan(paths, target, recursive)?;
    let container = match (paths.len(), target) {
        (1, _) => None,
        (_, t) => t,
    };
    let tallies: Vec<Tally> = sources.iter().map(Source::tally).collect();
    precheck_quota(conn, &sources, &tallies)?;
    if let Some(dir) = container {
        mkdir_p(conn, dir)?;
    }
    let mut job = Job {
        conn,
        report: TreeReport::start(Direction::Sent, quiet),
        window: VecDeque::new(),
        in_flight_bytes: 0,
        resume,
        quiet,
        throttle: Throttle::new(),
    };
    for t in &tallies {
        job.report.discovered(t.files, t.bytes);
    }
    let fatal = job.run(&sources).err();
    let Job { report, .. } = job;
    report.finish(fatal)
}

/// Where each source goes.
fn plan(paths: &[PathBuf], target: Option<&str>, recursive: bool) -> anyhow::Result<Vec<Source>> {
    let mut sources = Vec::new();
    for local in paths {
        let meta = fs::symlink_metadata(local)
            .with_context(|| format!("cannot read {}", local.display()))?;
        let is_dir = meta.is_dir();
        if is_dir && !recursive {
            return Err(Failure::Usage(format!(
                "{} is a folder; use put -r to send it with its contents",
                local.display()
            ))
            .into());
        }
        if !is_dir && !meta.is_file() {
            anyhow::bail!("{} is not a regular file or folder", local.display());
        }
        let name = own_name(local)?;
        let remote = match (paths.len(), target) {
            // `put -r DIR [TARGET]`: TARGET holds DIR's contents.
            (1, Some(t)) => t.trim_end_matches('/').to_owned(),
            (1, None) => name,
            (_, Some(t)) => join(t, &name),
            (_, None) => {
                return Err(Failure::Usage("several sources need a target folder".into()).into());
            }
        };
        let remote = if remote.is_empty() {
            "/".to_owned()
        } else {
            remote
        };
        sources.push(Source {
            local: local.clone(),
            remote,
            is_dir,
        });
    }
    Ok(sources)
}

/// The last component of a local path, as the remote name.
fn own_name(local: &Path) -> anyhow::Result<String> {
    let canonical;
    let path = if local.file_name().is_none() {
        // `.` or `..`: name it after the folder it stands for.
        canonical =
            fs::canonicalize(local).with_context(|| format!("cannot read {}", local.display()))?;
        canonical.as_path()
    } else {
        local
    };
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no name usable on the server", local.display()))
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// What a tree would cost on the server: its files and folders by the
/// server's rule (whole 4 KiB blocks, at least one per entry).
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    files: u64,
    bytes: u64,
    cost: u64,
}

impl Source {
    /// What this source would cost (a folder: its whole tree).
    fn tally(&self) -> Tally {
        if self.is_dir {
            return tally(&self.local);
        }
        let size = fs::metadata(&self.local).map_or(0, |m| m.len());
        Tally {
            files: 1,
            bytes: size,
            cost: file_charge(size),
        }
    }
}

/// A cheap first walk: sizes only, nothing opened.
fn tally(root: &Path) -> Tally {
    let mut t = Tally::default();
    for entry in WalkDir::new(root).into_iter().flatten() {
        let ft = entry.file_type();
        let Ok(meta) = entry.metadata() else { continue };
        if ft.is_file() {
            t.files += 1;
            t.bytes = t.bytes.saturating_add(meta.len());
            t.cost = t.cost.saturating_add(file_charge(meta.len()));
        } else if ft.is_dir() {
            t.cost = t.cost.saturating_add(BLOCK);
        }
    }
    t
}

/// Refuses a job whose new part cannot fit the quota, before anything is
/// sent. Sources whose destination already exists (a rerun) are left out:
/// how much of them is already there is not known before sending, and
/// each file still reserves its own space on the server.
fn precheck_quota(conn: &mut Conn, sources: &[Source], tallies: &[Tally]) -> anyhow::Result<()> {
    let mut need = 0u64;
    for (source, t) in sources.iter().zip(tallies) {
        let exists = match stat(conn, &source.remote) {
            Ok(_) => true,
            Err(Failure::Refused {
                code: ErrorCode::NotFound,
                ..
            }) => false,
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(_) => true,
        };
        if !exists {
            need = need.saturating_add(t.cost);
        }
    }
    if need == 0 {
        return Ok(());
    }
    let available = match conn.call(&Request::Quota)? {
        Reply::Quota(q) => q.available(),
        other => return Err(Failure::unexpected("Quota", &other).into()),
    };
    if need > available {
        return Err(Failure::Refused {
            code: ErrorCode::QuotaExceeded,
            message: format!(
                "quota exceeded: the tree needs {}, {} available",
                format_size(need),
                format_size(available)
            ),
        }
        .into());
    }
    Ok(())
}

/// A request sent and not yet answered.
enum InFlight {
    Folder {
        remote: String,
    },
    File {
        shown: String,
        size: u64,
        crc32: u32,
    },
}

/// A running job: the session, the report, the window of small files.
struct Job<'c> {
    conn: &'c mut Conn,
    report: TreeReport,
    window: VecDeque<InFlight>,
    in_flight_bytes: usize,
    resume: bool,
    quiet: bool,
    /// `--limit-rate` over the small files (a large one has its own).
    throttle: Throttle,
}

impl Job<'_> {
    /// Sends every source; `Err` only when the session is lost.
    fn run(&mut self, sources: &[Source]) -> Result<(), anyhow::Error> {
        for source in sources {
            if source.is_dir {
                self.folder(&source.local, &source.remote)?;
            } else {
                let shown = source.local.display().to_string();
                self.file(&source.local, &shown, &source.remote)?;
            }
        }
        self.drain(0)
    }

    /// A folder's contents into `remote` (which is created if missing).
    fn folder(&mut self, root: &Path, remote: &str) -> Result<(), anyhow::Error> {
        // `mkdir_p` reads its own answers: nothing may be in flight.
        self.drain(0)?;
        if let Err(e) = mkdir_p(self.conn, remote) {
            if e.is_fatal() {
                return Err(e.into());
            }
            self.report.failed(remote, &e.into(), 0);
            return Ok(());
        }
        let mut walk = WalkDir::new(root).min_depth(1).into_iter();
        while let Some(entry) = walk.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let shown = e.path().unwrap_or(root).display().to_string();
                    let err = anyhow::Error::new(e).context("cannot read it");
                    self.report.failed(&shown, &err, 0);
                    continue;
                }
            };
            let ft = entry.file_type();
            let Some(rel) = remote_relative(entry.path(), root) else {
                self.report.not_followed(Unfollowed::NotUtf8);
                if ft.is_dir() {
                    walk.skip_current_dir();
                }
                continue;
            };
            let target = join(remote, &rel);
            let shown = entry.path().display().to_string();
            if ft.is_dir() {
                self.mkdir(target)?;
            } else if ft.is_file() {
                self.file(entry.path(), &shown, &target)?;
            } else if ft.is_symlink() {
                self.report.not_followed(Unfollowed::Symlink);
            } else {
                self.report.not_followed(Unfollowed::Special);
            }
        }
        Ok(())
    }

    /// A folder of the tree, created in the pipeline.
    fn mkdir(&mut self, remote: String) -> Result<(), anyhow::Error> {
        self.make_room(0)?;
        self.conn.queue(&Request::Mkdir {
            path: remote.clone(),
        })?;
        self.window.push_back(InFlight::Folder { remote });
        Ok(())
    }

    /// One file: whole in the window if small, else streamed.
    fn file(&mut self, local: &Path, shown: &str, remote: &str) -> Result<(), anyhow::Error> {
        let opened = File::open(local).and_then(|f| f.metadata().map(|m| (f, m)));
        let (mut file, meta) = match opened {
            Ok(opened) => opened,
            Err(e) => return self.local_failure(shown, e, 0),
        };
        if !meta.is_file() {
            let e = std::io::Error::other("not a regular file");
            return self.local_failure(shown, e, 0);
        }
        let size = meta.len();
        if size > SMALL_FILE_MAX as u64 {
            self.report.begin_file(shown);
            return self.stream(&mut file, &meta, shown, remote);
        }
        let mut data = Vec::with_capacity(size as usize);
        // One byte more than the limit tells a file that grew.
        let read = (&mut file)
            .take(SMALL_FILE_MAX as u64 + 1)
            .read_to_end(&mut data);
        let after = file.metadata();
        let changed = match (&read, &after) {
            (Ok(_), Ok(after)) => {
                data.len() as u64 != size
                    || after.len() != size
                    || mtime_ns(after) != mtime_ns(&meta)
            }
            _ => false,
        };
        if let Err(e) = read.and(after.map(drop)) {
            return self.local_failure(shown, e, size);
        }
        if changed {
            let e = std::io::Error::other("it changed while it was read; run the same put again");
            return self.local_failure(shown, e, size);
        }
        let crc32 = crc32fast::hash(&data);
        self.report.begin_file(shown);
        self.make_room(data.len())?;
        let request = Request::PutSmall {
            path: remote.to_owned(),
            mtime: mtime_ns(&meta),
            crc32,
            data: &data,
        };
        if self.throttle.is_limited() {
            // Under a limit each file goes out when paid for.
            self.conn.send(&request)?;
            let mut pace = self.conn.pace(Awaiting::Upload);
            self.throttle.pay(data.len() as u64, &mut pace)?;
        } else {
            self.conn.queue(&request)?;
        }
        self.in_flight_bytes += data.len();
        self.window.push_back(InFlight::File {
            shown: shown.to_owned(),
            size,
            crc32,
        });
        Ok(())
    }

    /// A large file, streamed once everything before it is answered. The
    /// local CRC32 is computed first only if the server has a file of the
    /// same size (a rerun), so a new file is read once.
    fn stream(
        &mut self,
        file: &mut File,
        meta: &fs::Metadata,
        shown: &str,
        remote: &str,
    ) -> Result<(), anyhow::Error> {
        self.drain(0)?;
        let size = meta.len();
        let crc32 = match stat(self.conn, remote) {
            Ok(e) if e.kind == EntryKind::File && e.size == size => match whole_crc(file) {
                Ok(crc) => Some(crc),
                Err(e) => return self.local_failure(shown, e, size),
            },
            Err(e) if e.is_fatal() => return Err(e.into()),
            _ => None,
        };
        let upload = Upload {
            remote,
            shown,
            size,
            mtime: mtime_ns(meta),
            crc32,
            resume: self.resume,
            quiet: self.quiet,
        };
        let report = &self.report;
        let outcome = upload.send(self.conn, file, &mut |event| match event {
            // A resumed prefix counts as done on the bar.
            Sending::From(start) => report.bytes(start),
            Sending::Bytes(n) => report.bytes(n),
        });
        match outcome {
            Ok(Uploaded::Sent) => self.report.file_done(size),
            Ok(Uploaded::Unchanged) => self.report.skipped(size),
            Err(e) if crate::error::is_fatal(&e) => return Err(e),
            Err(e) => self.report.failed(shown, &e, size),
        }
        Ok(())
    }

    fn local_failure(
        &mut self,
        shown: &str,
        e: std::io::Error,
        size: u64,
    ) -> Result<(), anyhow::Error> {
        let err = anyhow::Error::new(e).context("cannot read it");
        self.report.failed(shown, &err, size);
        Ok(())
    }

    /// Waits for answers until a file of `len` bytes fits the window.
    fn make_room(&mut self, len: usize) -> Result<(), anyhow::Error> {
        while !self.window.is_empty()
            && (self.window.len() >= SMALL_FILES_IN_FLIGHT
                || self.in_flight_bytes + len > SMALL_BYTES_IN_FLIGHT)
        {
            self.answer()?;
        }
        Ok(())
    }

    /// Waits until at most `left` requests are unanswered.
    fn drain(&mut self, left: usize) -> Result<(), anyhow::Error> {
        while self.window.len() > left {
            self.answer()?;
        }
        Ok(())
    }

    /// Takes the answer to the oldest request in flight.
    fn answer(&mut self) -> Result<(), anyhow::Error> {
        let Some(oldest) = self.window.pop_front() else {
            return Ok(());
        };
        // A batch is synced before it is answered.
        let reply = self
            .conn
            .recv_within(PUT_DONE_TIMEOUT.max(self.conn.timeout()));
        match oldest {
            InFlight::Folder { remote } => match reply {
                Ok(Reply::Ok)
                | Err(Failure::Refused {
                    code: ErrorCode::AlreadyExists,
                    ..
                }) => {}
                Ok(other) => return Err(Failure::unexpected("Ok", &other).into()),
                Err(e) if e.is_fatal() => return Err(e.into()),
                Err(e) => self.report.failed(&remote, &e.into(), 0),
            },
            InFlight::File { shown, size, crc32 } => {
                self.in_flight_bytes = self.in_flight_bytes.saturating_sub(size as usize);
                match reply {
                    Ok(Reply::PutDone {
                        size: their_size,
                        crc32: their_crc,
                    }) if (their_size, their_crc) == (size, crc32) => {
                        self.report.bytes(size);
                        self.report.file_done(size);
                    }
                    Ok(Reply::PutDone {
                        size: their_size,
                        crc32: their_crc,
                    }) => {
                        let e = Failure::Integrity(format!(
                            "the server stored {their_size} bytes with crc32 {their_crc:08x}, \
                             but {size} bytes with crc32 {crc32:08x} were sent"
                        ));
                        self.report.failed(&shown, &e.into(), size);
                    }
                    Ok(Reply::Unchanged) => self.report.skipped(size),
                    Ok(other) => return Err(Failure::unexpected("PutDone", &other).into()),
                    Err(e) if e.is_fatal() => return Err(e.into()),
                    Err(e) => self.report.failed(&shown, &e.into(), size),
                }
            }
        }
        Ok(())
    }
}

/// `path` below `root` as a remote relative path ("a/b/c"), or `None` if
/// a name in it is not valid UTF-8.
fn remote_relative(path: &Path, root: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let mut out = String::new();
    for part in rel.components() {
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(part.as_os_str().to_str()?);
    }
    Some(out)
}

/// The CRC32 of a whole local file, leaving it rewound.
fn whole_crc(file: &mut File) -> std::io::Result<u32> {
    use std::io::{Seek, SeekFrom};
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_remote_paths() {
        let root = Path::new("/tmp/a");
        assert_eq!(
            remote_relative(Path::new("/tmp/a/b/c d"), root).as_deref(),
            Some("b/c d")
        );
        assert_eq!(join("x/", "y"), "x/y");
        assert_eq!(join("x", "y"), "x/y");
    }

    #[test]
    fn targets_follow_sftp() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("album");
        fs::create_dir(&a).unwrap();
        let f = dir.path().join("f.txt");
        fs::write(&f, "x").unwrap();
        let one = plan(std::slice::from_ref(&a), None, true).unwrap();
        assert_eq!(one[0].remote, "album");
        let into = plan(std::slice::from_ref(&a), Some("backup/"), true).unwrap();
        assert_eq!(into[0].remote, "backup");
        let many = plan(&[a.clone(), f.clone()], Some("t"), true).unwrap();
        assert_eq!(many[0].remote, "t/album");
        assert_eq!(many[1].remote, "t/f.txt");
        assert!(plan(&[a], None, false).is_err(), "a folder without -r");
    }
}
