//! The commands, one function each, shared by one-shot use and the shell.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use ftpd::proto::{EntryKind, ErrorCode, MAX_LIST_ENTRIES, Reply, Request};

use crate::conn::Conn;
use crate::display;
use crate::error::Failure;
use crate::glob::{expand_remote, expand_remote_entries, has_magic};
use crate::pace::Awaiting;
use crate::transfer;
use crate::tree_get;
use crate::tree_put;
use crate::tree_report::more_serious;

/// A command that works on a session (the shell adds `cd` and `exit`).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the server's version and the round-trip time (no login needed).
    Ping,
    /// List a directory (default: the current one), sorted by name.
    #[command(disable_help_flag = true)]
    Ls {
        path: Option<String>,
        #[command(flatten)]
        order: display::ListOptions,
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
    },
    /// Create a directory.
    Mkdir {
        path: String,
        /// Create missing parents too; an existing folder is no error.
        #[arg(short, long)]
        parents: bool,
    },
    /// Remove an empty directory.
    Rmdir { path: String },
    /// Remove files (patterns allowed); with -r, folders and all they hold.
    Rm {
        /// Remove folders and everything in them (on the server, in
        /// pieces; never the home itself).
        #[arg(short, long)]
        recursive: bool,
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Move or rename a file or directory (replaces an existing file).
    Mv { from: String, to: String },
    /// Show type, size and modification time of a path.
    Stat { path: String },
    /// Show used, limit and available space.
    Quota,
    /// Show the current remote directory.
    Pwd,
    /// Upload a file, resuming an unfinished upload of it; with -r a
    /// folder; with several sources, each into the last argument's folder.
    #[command(
        override_usage = "put [OPTIONS] LOCAL [REMOTE]\n       put -r [OPTIONS] LOCAL_DIR [REMOTE_DIR]\n       put [-r] [OPTIONS] LOCAL... REMOTE_DIR"
    )]
    Put {
        /// Local files (and, with -r, folders), then the remote path or
        /// folder (default: the local name in the current folder).
        #[arg(required = true, num_args = 1.., value_name = "PATHS")]
        paths: Vec<PathBuf>,
        /// Send folders with everything in them.
        #[arg(short, long)]
        recursive: bool,
        /// Start over even if part of the file is already on the server.
        #[arg(long)]
        no_resume: bool,
    },
    /// Download a file, resuming from LOCAL.part if it exists; with -r a
    /// folder; with several sources (or a pattern), each into LOCAL.
    #[command(override_usage = "get [-r] REMOTE [LOCAL]\n       get [-r] REMOTE... LOCAL_DIR")]
    Get {
        /// The remote paths (patterns allowed: *, ?, [...]), then the local
        /// path or folder (default: the remote name, here); `-` writes one
        /// file to standard output.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<OsString>,
        /// Download folders and everything in them: `get -r DIR LOCAL`
        /// puts DIR's contents in LOCAL (default: DIR's name, here).
        #[arg(short, long)]
        recursive: bool,
        /// Start over even if LOCAL.part exists.
        #[arg(long)]
        no_resume: bool,
    },
}

/// Runs one command on a session (logged in, except for `ping`).
pub fn run(conn: &mut Conn, cmd: &Command, quiet: bool) -> anyhow::Result<()> {
    match cmd {
        Command::Ping => ping(conn),
        Command::Ls { path, order, .. } => ls(conn, path.as_deref().unwrap_or(""), order),
        Command::Mkdir {
            path,
            parents: false,
        } => Ok(conn.call_ok(&Request::Mkdir { path: path.clone() })?),
        Command::Mkdir {
            path,
            parents: true,
        } => Ok(mkdir_p(conn, path)?),
        Command::Rmdir { path } => Ok(conn.call_ok(&Request::Rmdir { path: path.clone() })?),
        Command::Rm { recursive, paths } => rm(conn, paths, *recursive),
        Command::Mv { from, to } => Ok(conn.call_ok(&Request::Rename {
            from: from.clone(),
            to: to.clone(),
        })?),
        Command::Stat { path } => {
            let entry = stat(conn, path)?;
            print_lines([display::stat_text(&entry)])
        }
        Command::Quota => match conn.call(&Request::Quota)? {
            Reply::Quota(q) => print_lines([display::quota_text(&q)]),
            other => Err(Failure::unexpected("Quota", &other).into()),
        },
        Command::Pwd => {
            let cwd = pwd(conn)?;
            print_lines([display::sanitize(&cwd)])
        }
        Command::Put {
            paths,
            recursive,
            no_resume,
        } => put(conn, paths, *recursive, !no_resume, quiet),
        Command::Get {
            paths,
            recursive,
            no_resume,
        } => tree_get::get_command(
            conn,
            paths,
            tree_get::Options {
                recursive: *recursive,
                resume: !no_resume,
                quiet,
            },
        ),
    }
}

/// `rm [-r] PATH...`: each path (patterns expanded) in turn; a failure
/// is reported and the rest still go. Exits with the most serious failure.
fn rm(conn: &mut Conn, paths: &[String], recursive: bool) -> anyhow::Result<()> {
    let (mut failed, mut worst) = (0u64, None);
    for pattern in paths {
        let removed = expand_remote(conn, pattern).and_then(|found| {
            found.iter().try_for_each(|path| {
                if recursive {
                    remove_tree(conn, path)
                } else {
                    conn.call_ok(&Request::Remove { path: path.clone() })
                }
            })
        });
        match removed {
            Ok(()) => {}
            Err(e) if e.is_fatal() || paths.len() == 1 => return Err(e.into()),
            Err(e) => {
                eprintln!("ftpc: {e}");
                failed += 1;
                let code = e.exit_code();
                worst = Some(worst.map_or(code, |w| more_serious(w, code)));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some(code) => Err(Failure::Tree { failed, code }.into()),
    }
}

/// Removes the tree `path` on the server, waiting as long as it reports
/// progress.
pub fn remove_tree(conn: &mut Conn, path: &str) -> Result<(), Failure> {
    conn.send(&Request::RemoveTree { path: path.into() })?;
    let mut pace = conn.pace(Awaiting::Removal);
    loop {
        match conn.recv_paced(&pace)? {
            Reply::Removing { .. } => pace.advance(1),
            Reply::Ok => return Ok(()),
            other => return Err(Failure::unexpected("Removing or Ok", &other)),
        }
    }
}

/// `put`: one file as ever, or a job over folders and several sources.
fn put(
    conn: &mut Conn,
    paths: &[PathBuf],
    recursive: bool,
    resume: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let (sources, target) = match paths {
        [one] => (std::slice::from_ref(one), None),
        [sources @ .., last] => (sources, Some(last)),
        [] => return Err(Failure::Usage("put needs a file to send".into()).into()),
    };
    let target = match target {
        Some(t) => Some(
            t.to_str()
                .ok_or_else(|| Failure::Usage("the remote path is not valid UTF-8".into()))?,
        ),
        None => None,
    };
    let single_file = sources.len() == 1 && !sources[0].is_dir();
    if single_file {
        return transfer::put(conn, &sources[0], target, resume, quiet);
    }
    tree_put::put_tree(conn, sources, target, recursive, resume, quiet)
}

/// `mkdir -p`: creates each missing folder along `path`; an existing
/// folder is fine. The `Mkdir`s go out together and their answers are
/// read after, so a deep path costs about one round trip.
pub fn mkdir_p(conn: &mut Conn, path: &str) -> Result<(), Failure> {
    let absolute = path.starts_with('/');
    let mut prefixes = Vec::new();
    let mut prefix = String::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if absolute || !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        prefixes.push(prefix.clone());
    }
    let Some(last) = prefixes.last().cloned() else {
        // `/` or `.`: there already.
        return Ok(());
    };
    for p in &prefixes {
        conn.send(&Request::Mkdir { path: p.clone() })?;
    }
    let mut first_error = None;
    let mut existed = false;
    for _ in &prefixes {
        existed = false;
        match conn.recv() {
            Ok(Reply::Ok) => {}
            Err(Failure::Refused {
                code: ErrorCode::AlreadyExists,
                ..
            }) => existed = true,
            Ok(other) => return Err(Failure::unexpected("Ok", &other)),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if existed && !is_remote_dir(conn, &last)? {
        return Err(Failure::refused(
            ErrorCode::AlreadyExists,
            &format!("already exists and is not a folder: {last}"),
        ));
    }
    Ok(())
}

/// Prints the server's version and the time a `Ping` takes.
fn ping(conn: &mut Conn) -> anyhow::Result<()> {
    let started = Instant::now();
    match conn.call(&Request::Ping)? {
        Reply::Pong => {}
        other => return Err(Failure::unexpected("Pong", &other).into()),
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let first = format!(
        "{} (protocol {}), round trip {ms:.2} ms",
        conn.server(),
        conn.version()
    );
    let security = conn
        .security_summary()
        .into_iter()
        .map(|(what, value)| format!("{what}: {value}"));
    print_lines(std::iter::once(first).chain(security))
}

/// Lists `path`, or shows a single entry when `path` is a file; a pattern
/// shows the entries it matches.
fn ls(conn: &mut Conn, path: &str, options: &display::ListOptions) -> anyhow::Result<()> {
    if has_magic(path) {
        let mut entries: Vec<_> = expand_remote_entries(conn, path)?
            .into_iter()
            .filter_map(|(_, entry)| entry)
            .collect();
        display::sort_entries(&mut entries, options);
        return print_lines(display::listing_lines(
            &entries,
            options.human,
            &display::Look::current(),
        ));
    }
    let mut entries = Vec::new();
    conn.send(&Request::List { path: path.into() })?;
    let mut pace = conn.pace(Awaiting::Listing);
    let (total, truncated) = loop {
        match conn.recv_paced(&pace) {
            Ok(Reply::Entries(batch)) => {
                // Bound memory even if the server ignores its own cap.
                if entries.len() + batch.len() > MAX_LIST_ENTRIES {
                    return Err(Failure::Link(format!(
                        "protocol error: the server sent more than {MAX_LIST_ENTRIES} entries"
                    ))
                    .into());
                }
                pace.advance(batch.len() as u64);
                entries.extend(batch);
            }
            Ok(Reply::ListEnd { total, truncated }) => break (total, truncated),
            Ok(other) => return Err(Failure::unexpected("Entries or ListEnd", &other).into()),
            Err(Failure::Refused {
                code: ErrorCode::NotADirectory,
                ..
            }) if !path.is_empty() => {
                // Like `ls -l FILE`: show the one entry.
                entries.push(stat(conn, path)?);
                break (1, false);
            }
            Err(e) => return Err(e.into()),
        }
    };
    display::sort_entries(&mut entries, options);
    print_lines(display::listing_lines(
        &entries,
        options.human,
        &display::Look::current(),
    ))?;
    if truncated {
        eprintln!(
            "(the server truncated this listing: {} of {total} entries shown)",
            entries.len()
        );
    }
    Ok(())
}

/// Type, size and time of one path.
pub fn stat(conn: &mut Conn, path: &str) -> Result<ftpd::proto::Entry, Failure> {
    match conn.call(&Request::Stat { path: path.into() })? {
        Reply::Entry(e) => Ok(e),
        other => Err(Failure::unexpected("Entry", &other)),
    }
}

/// Whether `path` is a directory on the server (false if it does not exist).
pub fn is_remote_dir(conn: &mut Conn, path: &str) -> Result<bool, Failure> {
    match stat(conn, path) {
        Ok(e) => Ok(e.kind == EntryKind::Dir),
        Err(Failure::Refused { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The current remote directory.
pub fn pwd(conn: &mut Conn) -> Result<String, Failure> {
    match conn.call(&Request::Pwd)? {
        Reply::Cwd(cwd) => Ok(cwd.to_owned()),
        other => Err(Failure::unexpected("Cwd", &other)),
    }
}

/// Changes the remote directory and returns the new one.
pub fn cd(conn: &mut Conn, path: &str) -> Result<String, Failure> {
    match conn.call(&Request::Cd { path: path.into() })? {
        Reply::Cwd(cwd) => Ok(cwd.to_owned()),
        Reply::Ok => pwd(conn),
        other => Err(Failure::unexpected("Cwd or Ok", &other)),
    }
}

/// Writes lines to stdout in one go.
pub fn print_lines<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in lines {
        writeln!(out, "{}", line.as_ref()).context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")
}
