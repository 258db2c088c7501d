//! `get -r REMOTE_DIR [LOCAL_DIR]` and `get X Y ... LOCAL_DIR`: many files
//! over one connection, with a bounded window of downloads in flight.
//!
//! # How it goes
//!
//! The walk is depth first and streams: a folder is read a page at a time
//! (`ListFrom`, at most 20,000 entries a page, so a folder of any size is
//! fetched whole), and only the current page of each folder on the path
//! from the top is held, at most 64 such folders deep (the server resolves
//! no deeper path). Files are asked for with up to [`WINDOW`] `GetStart`s
//! in flight, so many small files do not each wait a round trip; the
//! replies come back in order and are written one after the other.
//!
//! # A rerun is a resume
//!
//! A local file of the server's size is hashed and offered whole
//! (`GetStart` at offset = size with its CRC32): the server answers at once
//! when its own file has the same CRC32 (skipped, counted as unchanged),
//! and sends the whole file otherwise, so a file changed in place with the
//! same size and time is fetched again. A local `NAME.part` is resumed the
//! same way from its length. Every file is verified and renamed into place
//! only when complete, then given the server's modification time.
//!
//! # Names from the server
//!
//! Only plain names are used ([`check_name`]); anything with `/`, NUL, or
//! `.`/`..` is a failed file. Files land through [`LocalDir`], which never
//! follows a link inside the target and refuses a second name for a file
//! written in this run (case or Unicode folding).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::io::{ErrorKind, Read, Seek};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use crc32fast::Hasher;
use ftpd::proto::{CHUNK_SIZE, Entry, EntryKind, Reply, Request};

use crate::commands::stat;
use crate::conn::Conn;
use crate::display::sanitize;
use crate::error::Failure;
use crate::glob::expand_remote_entries;
use crate::listing::{PageCount, join, receive_page, request_page};
use crate::local_dir::{LocalDir, part_name};
use crate::rate::Throttle;
use crate::transfer::{self, Sink, receive_chunks, remote_file_name};
use crate::tree_report::{Direction, TreeReport, Unfollowed};

/// Requests in flight at once: enough to hide the round trip behind the
/// transfers of small files, few enough that they always fit in the
/// sockets' buffers while the server streams the file before them (it
/// reads the next request only after finishing a reply).
pub const WINDOW: usize = 32;

/// Bytes of requests in flight at most (paths can be 1 KiB long): well
/// under what any socket buffers, so sending never waits on the server.
pub const WINDOW_BYTES: usize = 16 * 1024;

/// What a tree download may do.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub recursive: bool,
    pub resume: bool,
    pub quiet: bool,
}

/// `get [-r] PATH... [LOCAL]`: one source to a file or folder, or several
/// (patterns expanded) into a folder.
pub fn get_command(conn: &mut Conn, args: &[OsString], opts: Options) -> anyhow::Result<()> {
    let (sources, target) = match args {
        [] => return Err(Failure::Usage("get: name what to download".into()).into()),
        [one] => (std::slice::from_ref(one), None),
        [sources @ .., last] => (sources, Some(PathBuf::from(last))),
    };
    let mut found = Vec::new();
    for source in sources {
        let source = source.to_str().ok_or_else(|| {
            Failure::Usage(format!(
                "remote paths are UTF-8; {} is not",
                Path::new(source).display()
            ))
        })?;
        found.extend(expand_remote_entries(conn, source)?);
    }
    let to_stdout = target.as_deref().is_some_and(|t| t.as_os_str() == "-");
    if let [(remote, known)] = found.as_slice()
        && sources.len() == 1
    {
        if to_stdout {
            return transfer::get_to_stdout(conn, remote, opts.quiet);
        }
        if opts.recursive {
            let entry = match known {
                Some(entry) => entry.clone(),
                None => stat(conn, remote)?,
            };
            if entry.kind == EntryKind::Dir {
                let local = match target {
                    Some(t) => t,
                    None => PathBuf::from(remote_file_name(remote).ok_or_else(|| {
                        Failure::Usage(format!(
                            "cannot choose a local folder name for \"{}\"; give one: get -r REMOTE LOCAL",
                            sanitize(remote)
                        ))
                    })?),
                };
                return get_tree(conn, remote, &local, opts);
            }
        }
        return transfer::get(conn, remote, target.as_deref(), opts.resume, opts.quiet);
    }
    if to_stdout {
        return Err(Failure::Usage("get: only one file can go to standard output".into()).into());
    }
    let target = target.unwrap_or_else(|| PathBuf::from("."));
    get_into(conn, found, &target, opts)
}

/// `get -r REMOTE LOCAL`: the folder `remote`'s contents into `local`.
pub fn get_tree(conn: &mut Conn, remote: &str, local: &Path, opts: Options) -> anyhow::Result<()> {
    let top =
        LocalDir::open_top(local).with_context(|| format!("cannot create {}", local.display()))?;
    let level = Level {
        remote: remote.to_owned(),
        local: Rc::new(top),
        page: VecDeque::new(),
        next: Next::From(0),
        pages: PageCount::default(),
    };
    Engine::new(conn, opts, level).run()
}

/// `get X Y ... LOCAL`: each source into the folder `local` under its own
/// name; `known` holds the entries a pattern's listing already gave.
fn get_into(
    conn: &mut Conn,
    sources: Vec<(String, Option<Entry>)>,
    local: &Path,
    opts: Options,
) -> anyhow::Result<()> {
    let top =
        LocalDir::open_top(local).with_context(|| format!("cannot create {}", local.display()))?;
    let mut report = TreeReport::start(Direction::Received, opts.quiet);
    let mut page = VecDeque::new();
    for (remote, known) in sources {
        let entry = match known {
            Some(entry) => Ok(entry),
            None => stat(conn, &remote),
        };
        match entry {
            Ok(mut entry) => {
                // The local name is the source's own last name, whatever
                // the server calls it.
                entry.name = remote_file_name(&remote).unwrap_or("").to_owned();
                page.push_back(Item {
                    remote: Some(remote),
                    entry,
                });
            }
            Err(e) if e.is_fatal() => return report.finish(Some(e.into())),
            Err(e) => report.failed(&remote, &e.into(), 0),
        }
    }
    let level = Level {
        remote: String::new(),
        local: Rc::new(top),
        page,
        next: Next::End,
        pages: PageCount::default(),
    };
    let mut engine = Engine::new(conn, opts, level);
    engine.report = report;
    engine.discover_page();
    engine.run()
}

/// Why a name from the server cannot be a local name, if it cannot.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    match name {
        "" => Err("an empty name"),
        "." | ".." => Err("a name that means a folder itself"),
        _ if name.contains('/') => Err("a name with \"/\" in it"),
        _ if name.contains('\0') => Err("a name with a NUL byte in it"),
        _ => Ok(()),
    }
}

/// One entry waiting in a folder's page.
struct Item {
    /// Its remote path when it is not `folder/name` (a source).
    remote: Option<String>,
    entry: Entry,
}

/// Where a folder's listing stands.
enum Next {
    /// The next page starts here.
    From(u64),
    /// A page has been asked for.
    Asked,
    /// Read to its end.
    End,
}

/// A folder on the walk's current path.
struct Level {
    remote: String,
    local: Rc<LocalDir>,
    page: VecDeque<Item>,
    next: Next,
    pages: PageCount,
}

/// A file to download.
struct Task {
    remote: String,
    dir: Rc<LocalDir>,
    name: String,
    size: u64,
    mtime: i64,
}

/// What is already here of a file, decided before asking for it.
enum Plan {
    /// Nothing usable: fetch it whole into a new `.part`; `clean` when
    /// neither the file nor a `.part` of it was there.
    Fresh { clean: bool },
    /// A `.part` of `have` bytes to continue.
    Resume {
        file: File,
        have: u64,
        hasher: Hasher,
    },
    /// A complete local file of the server's size with this CRC32: skipped
    /// if the server's file has the same.
    Verify { file: File, have: u64, crc: u32 },
}

/// A request in flight.
enum Pending {
    File { task: Task, plan: Plan, cost: usize },
    Page { cost: usize },
}

/// What the walk asks for next.
enum Action {
    File(Task),
    Page { remote: String, from: u64 },
}

/// How one file ended, when it did not fail.
enum Outcome {
    Received(u64),
    Unchanged(u64),
}

struct Engine<'a> {
    conn: &'a mut Conn,
    opts: Options,
    report: TreeReport,
    stack: Vec<Level>,
    window: VecDeque<Pending>,
    in_flight: usize,
    /// A page was asked for; the walk waits for it.
    paging: bool,
    buf: Box<[u8]>,
    /// `--limit-rate` over the whole job, not each file afresh: a fresh
    /// bucket would let every small file through as a burst.
    throttle: Throttle,
}

impl<'a> Engine<'a> {
    fn new(conn: &'a mut Conn, opts: Options, top: Level) -> Engine<'a> {
        Engine {
            conn,
            opts,
            report: TreeReport::start(Direction::Received, opts.quiet),
            stack: vec![top],
            window: VecDeque::new(),
            in_flight: 0,
            paging: false,
            buf: vec![0u8; CHUNK_SIZE].into_boxed_slice(),
            throttle: Throttle::new(),
        }
    }

    fn run(mut self) -> anyhow::Result<()> {
        let fatal = loop {
            if let Err(e) = self.fill() {
                break Some(e);
            }
            let Some(pending) = self.window.pop_front() else {
                break None;
            };
            if let Err(e) = self.complete(pending) {
                break Some(e);
            }
        };
        // Close the folders (and sync them) before the summary.
        self.window.clear();
        self.stack.clear();
        self.report.finish(fatal)
    }

    /// Sends requests while the window has room and the walk has work,
    /// once it is down to half: topping it up by one request per answer
    /// would write (and encrypt) each request on its own.
    fn fill(&mut self) -> anyhow::Result<()> {
        if self.window.len() > WINDOW / 2 {
            return Ok(());
        }
        while !self.paging && self.window.len() < WINDOW && self.in_flight < WINDOW_BYTES {
            let Some(action) = self.next_action() else {
                break;
            };
            match action {
                Action::Page { remote, from } => {
                    request_page(self.conn, &remote, from)?;
                    let cost = request_cost(&remote);
                    self.push(Pending::Page { cost });
                    self.paging = true;
                }
                Action::File(task) => match self.plan(&task) {
                    Ok(plan) => {
                        let (offset, prefix_crc) = match &plan {
                            Plan::Fresh { .. } => (0, 0),
                            Plan::Resume { have, hasher, .. } => (*have, hasher.clone().finalize()),
                            Plan::Verify { have, crc, .. } => (*have, *crc),
                        };
                        self.conn.queue(&Request::GetStart {
                            path: task.remote.clone(),
                            offset,
                            prefix_crc,
                        })?;
                        let cost = request_cost(&task.remote);
                        self.push(Pending::File { task, plan, cost });
                    }
                    Err(e) => self.report.failed(&task.remote, &e, task.size),
                },
            }
        }
        Ok(())
    }

    fn push(&mut self, pending: Pending) {
        let (Pending::File { cost, .. } | Pending::Page { cost }) = &pending;
        self.in_flight += cost;
        self.window.push_back(pending);
    }

    /// The walk's next step: a file, or a page to read; `None` when there
    /// is nothing more (or the walk waits for a page).
    fn next_action(&mut self) -> Option<Action> {
        loop {
            let top = self.stack.last_mut()?;
            if let Some(item) = top.page.pop_front() {
                let remote = item
                    .remote
                    .unwrap_or_else(|| join(&top.remote, &item.entry.name));
                let local = Rc::clone(&top.local);
                if let Some(action) = self.visit(remote, local, item.entry) {
                    return Some(action);
                }
                continue;
            }
            match top.next {
                Next::From(from) => {
                    if let Err(e) = top.pages.next(&top.remote) {
                        let remote = top.remote.clone();
                        top.next = Next::End;
                        self.report.failed(&remote, &e.into(), 0);
                        continue;
                    }
                    top.next = Next::Asked;
                    return Some(Action::Page {
                        remote: top.remote.clone(),
                        from,
                    });
                }
                Next::Asked => return None,
                Next::End => {
                    self.stack.pop();
                }
            }
        }
    }

    /// One entry of a folder: a file to fetch, a folder to enter, or
    /// something to pass over.
    fn visit(&mut self, remote: String, local: Rc<LocalDir>, entry: Entry) -> Option<Action> {
        if let Err(why) = check_name(&entry.name) {
            let e = Failure::Link(format!(
                "protocol error: the server sent {why} (\"{}\"); not written",
                sanitize(&entry.name)
            ));
            self.report.failed(&remote, &e.into(), entry.size);
            return None;
        }
        match entry.kind {
            EntryKind::File => Some(Action::File(Task {
                remote,
                dir: local,
                name: entry.name,
                size: entry.size,
                mtime: entry.mtime,
            })),
            EntryKind::Dir if !self.opts.recursive => {
                let e = anyhow::anyhow!("a folder; use get -r");
                self.report.failed(&remote, &e, 0);
                None
            }
            EntryKind::Dir => {
                match local.subdir(&entry.name) {
                    Ok(dir) => self.stack.push(Level {
                        remote,
                        local: Rc::new(dir),
                        page: VecDeque::new(),
                        next: Next::From(0),
                        pages: PageCount::default(),
                    }),
                    Err(e) => {
                        let e = anyhow::Error::new(e).context(format!(
                            "cannot create {}",
                            local.show(&entry.name).display()
                        ));
                        self.report.failed(&remote, &e, 0);
                    }
                }
                None
            }
            EntryKind::Symlink => {
                self.report.not_followed(Unfollowed::Symlink);
                None
            }
            EntryKind::Other => {
                self.report.not_followed(Unfollowed::Special);
                None
            }
        }
    }

    /// Counts the files of the current page for the bar.
    fn discover_page(&mut self) {
        let Some(top) = self.stack.last() else {
            return;
        };
        let (files, bytes) = top
            .page
            .iter()
            .filter(|i| i.entry.kind == EntryKind::File)
            .fold((0u64, 0u64), |(n, b), i| {
                (n + 1, b.saturating_add(i.entry.size))
            });
        self.report.discovered(files, bytes);
    }

    /// Decides, from what is on the local disk, how to ask for `task`.
    fn plan(&mut self, task: &Task) -> anyhow::Result<Plan> {
        let dir = &task.dir;
        let shown = || dir.show(&task.name).display().to_string();
        let existing = dir
            .lstat(&task.name)
            .with_context(|| format!("cannot look at {}", shown()))?;
        if let Some(st) = existing {
            if !LocalDir::is_regular(&st) {
                return Err(dir.not_regular(&task.name).into());
            }
            if dir.written(&st) {
                return Err(dir.collision(&task.name).into());
            }
            if u64::try_from(st.st_size).ok() == Some(task.size) {
                let mut file = dir
                    .open_existing(&task.name)
                    .with_context(|| format!("cannot open {}", shown()))?;
                let (have, hasher) = hash_all(&mut file, &mut self.buf)
                    .with_context(|| format!("cannot read {}", shown()))?;
                return Ok(Plan::Verify {
                    file,
                    have,
                    crc: hasher.finalize(),
                });
            }
        }
        let part = part_name(&task.name);
        match dir
            .lstat(&part)
            .with_context(|| format!("cannot look at {}", dir.show(&part).display()))?
        {
            Some(st) if !LocalDir::is_regular(&st) => Err(dir.not_regular(&part).into()),
            Some(_) if self.opts.resume => {
                let mut file = dir
                    .open_part(&part)
                    .with_context(|| format!("cannot open {}", dir.show(&part).display()))?;
                let (have, hasher) = hash_all(&mut file, &mut self.buf)
                    .with_context(|| format!("cannot read {}", dir.show(&part).display()))?;
                Ok(Plan::Resume { file, have, hasher })
            }
            Some(_) => Ok(Plan::Fresh { clean: false }),
            None => Ok(Plan::Fresh {
                clean: existing.is_none(),
            }),
        }
    }

    /// Takes the reply to the oldest request in flight. Only a failure
    /// that ends the session is returned; a file's own failure is counted.
    fn complete(&mut self, pending: Pending) -> anyhow::Result<()> {
        match pending {
            Pending::Page { cost } => {
                self.in_flight -= cost;
                self.paging = false;
                let page = receive_page(self.conn);
                let Some(top) = self.stack.last_mut() else {
                    return Ok(());
                };
                match page {
                    Ok((entries, next)) => {
                        top.page = entries
                            .into_iter()
                            .map(|entry| Item {
                                remote: None,
                                entry,
                            })
                            .collect();
                        top.next = next.map_or(Next::End, Next::From);
                        self.discover_page();
                    }
                    Err(e) if e.is_fatal() => return Err(e.into()),
                    Err(e) => {
                        top.next = Next::End;
                        let remote = top.remote.clone();
                        self.report.failed(&remote, &e.into(), 0);
                    }
                }
                Ok(())
            }
            Pending::File { task, plan, cost } => {
                self.in_flight -= cost;
                self.report.begin_file(&task.remote);
                match self.receive_file(&task, plan) {
                    Ok(Outcome::Received(size)) => self.report.file_done(size),
                    Ok(Outcome::Unchanged(size)) => self.report.skipped(size),
                    Err(e) if is_fatal(&e) => return Err(e),
                    Err(e) => self.report.failed(&task.remote, &e, task.size),
                }
                Ok(())
            }
        }
    }

    /// Receives one file's reply and bytes, verifies them and puts the file
    /// in place.
    fn receive_file(&mut self, task: &Task, plan: Plan) -> anyhow::Result<Outcome> {
        let (size, offset) = match self.conn.recv()? {
            Reply::GetReady { size, offset } => (size, offset),
            other => return Err(Failure::unexpected("GetReady", &other).into()),
        };
        let clean = matches!(plan, Plan::Fresh { clean: true });
        let have = match &plan {
            Plan::Fresh { .. } => 0,
            Plan::Resume { have, .. } | Plan::Verify { have, .. } => *have,
        };
        if offset > size || (offset != 0 && offset != have) {
            return Err(Failure::Link(format!(
                "protocol error: the server offered {} from {offset} of {size} bytes, \
                 but {have} bytes are here",
                sanitize(&task.remote)
            ))
            .into());
        }
        let dir = Rc::clone(&task.dir);
        let part = part_name(&task.name);
        let shown_part = dir.show(&part).display().to_string();
        let (mut file, mut hasher) = match plan {
            Plan::Verify { file, crc, .. } if offset == size => {
                return self.unchanged(task, file, crc, size);
            }
            Plan::Verify { mut file, crc, .. } if offset > 0 => {
                // The server's file grew past ours with ours as its start:
                // begin the `.part` with our copy, then take the rest.
                let mut out = self.new_part(&dir, &part)?;
                file.rewind()
                    .and_then(|()| std::io::copy(&mut (&mut file).take(offset), &mut out))
                    .with_context(|| format!("cannot copy into {shown_part}"))?;
                (out, Hasher::new_with_initial_len(crc, offset))
            }
            Plan::Resume { file, hasher, .. } if offset > 0 => (file, hasher),
            Plan::Resume { mut file, .. } => {
                file.set_len(0)
                    .and_then(|()| file.rewind())
                    .with_context(|| format!("cannot truncate {shown_part}"))?;
                (file, Hasher::new())
            }
            Plan::Fresh { clean: true } => {
                let file = dir
                    .create_new(&part)
                    .with_context(|| format!("cannot create {shown_part}"))?;
                (file, Hasher::new())
            }
            Plan::Verify { .. } | Plan::Fresh { .. } => {
                (self.new_part(&dir, &part)?, Hasher::new())
            }
        };
        let failed = format!("cannot write {shown_part}");
        let sink = Sink {
            out: &mut file,
            failed: &failed,
        };
        let report = &self.report;
        let their_crc = receive_chunks(
            self.conn,
            sink,
            &mut hasher,
            size,
            offset,
            &mut self.throttle,
            |n| report.bytes(n),
        )?;
        let crc32 = hasher.finalize();
        if crc32 != their_crc {
            drop(file);
            // Known to be bad: resuming from it could never succeed.
            let _ = dir.remove(&part);
            return Err(Failure::Integrity(format!(
                "received data has crc32 {crc32:08x}, the server's file has {their_crc:08x}; \
                 the partial file was deleted, try again"
            ))
            .into());
        }
        file.sync_all()
            .with_context(|| format!("cannot sync {shown_part}"))?;
        let renamed = || {
            format!(
                "cannot rename {shown_part} to {}",
                dir.show(&task.name).display()
            )
        };
        // Nothing was there when asked for (the common case): one call
        // that cannot replace anything. Otherwise look first.
        if !(clean && dir.rename_new(&part, &task.name).with_context(renamed)?) {
            if let Some(st) = dir.lstat(&task.name)? {
                if dir.written(&st) {
                    drop(file);
                    let _ = dir.remove(&part);
                    return Err(dir.collision(&task.name).into());
                }
                if !LocalDir::is_regular(&st) {
                    return Err(dir.not_regular(&task.name).into());
                }
            }
            dir.rename(&part, &task.name).with_context(renamed)?;
        }
        let st = rustix::fs::fstat(&file)?;
        dir.claim(&st, &task.name)?;
        set_mtime(&file, task.mtime);
        Ok(Outcome::Received(size))
    }

    /// The server's file has the local file's CRC32: nothing comes but
    /// `GetDone`, which must say the same.
    fn unchanged(
        &mut self,
        task: &Task,
        file: File,
        crc: u32,
        size: u64,
    ) -> anyhow::Result<Outcome> {
        let failed = "nothing to write";
        let sink = Sink {
            out: &mut std::io::sink(),
            failed,
        };
        let their_crc = receive_chunks(
            self.conn,
            sink,
            &mut Hasher::new(),
            size,
            size,
            &mut self.throttle,
            |_| {},
        )?;
        if their_crc != crc {
            return Err(Failure::Integrity(format!(
                "the server said its file matches ours ({crc:08x}), then gave crc32 {their_crc:08x}"
            ))
            .into());
        }
        let st = rustix::fs::fstat(&file)?;
        task.dir.claim(&st, &task.name)?;
        set_mtime(&file, task.mtime);
        Ok(Outcome::Unchanged(size))
    }

    /// A new, empty `.part` (an old one is dropped first).
    fn new_part(&self, dir: &LocalDir, part: &str) -> anyhow::Result<File> {
        let shown = || dir.show(part).display().to_string();
        dir.remove(part)
            .with_context(|| format!("cannot remove {}", shown()))?;
        dir.create_new(part)
            .with_context(|| format!("cannot create {}", shown()))
    }
}

/// What a request costs of [`WINDOW_BYTES`]: its path and some framing.
fn request_cost(path: &str) -> usize {
    path.len() + 32
}

/// Whether the session cannot go on after `e`.
fn is_fatal(e: &anyhow::Error) -> bool {
    e.chain()
        .find_map(|c| c.downcast_ref::<Failure>())
        .is_some_and(Failure::is_fatal)
}

/// Reads `file` from its start to its end: its length and hasher, with the
/// position left at the end.
fn hash_all(file: &mut File, buf: &mut [u8]) -> std::io::Result<(u64, Hasher)> {
    file.rewind()?;
    let mut hasher = Hasher::new();
    let mut have = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok((have, hasher)),
            Ok(n) => {
                hasher.update(&buf[..n]);
                have += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Gives a file the server's modification time; an impossible one (a
/// hostile server's) is ignored, and so is a failure, as the data is fine.
fn set_mtime(file: &File, mtime: i64) {
    let time = if mtime >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(mtime.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(mtime.unsigned_abs()))
    };
    if let Some(time) = time {
        let _ = file.set_modified(time);
    }
}

/// For tests: the modification time `set_mtime` gives.
#[cfg(test)]
fn mtime_of(secs: i64) -> Option<std::time::SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_used() {
        for bad in ["", ".", "..", "a/b", "/etc", "../x", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a b", "ünïcödé", ".hidden", "..x", "x.."] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn impossible_times_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        set_mtime(&file, i64::MIN);
        set_mtime(&file, 1_700_000_000);
        assert_eq!(
            file.metadata().unwrap().modified().ok(),
            mtime_of(1_700_000_000)
        );
    }
}
