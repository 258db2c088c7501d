//! The shell: one login, then commands line by line, with a prompt, Tab
//! completion and history on a terminal, or read plainly from stdin for
//! scripts.
//!
//! A failing command is reported and the shell goes on; only a lost session
//! ends it. A script's exit code is that of its last failing command.
//!
//! On a terminal, Ctrl-C at the prompt clears the line, Ctrl-D or `exit`
//! leaves, and Ctrl-C during a transfer cancels it (`cancel.rs`): the shell
//! then drops that session, logs in again with the credentials it holds,
//! and returns to the remote folder.

mod complete;
mod history;
mod line;
mod local;
mod remote;

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use clap::Parser;
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{CompletionType, Config, Editor};

use crate::commands::{self, Command};
use crate::conn::Conn;
use crate::display::sanitize;
use crate::error::{Failure, exit_code};
use complete::ShellHelper;
use line::{Line, ShellCommand, one_line, split};
use local::LocalDir;
use remote::Remote;

/// Logs in afresh (after Ctrl-C cancelled a transfer).
pub type Reopen<'a> = Box<dyn FnMut() -> Result<Conn, Failure> + 'a>;

/// Where lines come from.
enum Input {
    /// A terminal: prompt, line editing, completion, history.
    Editor {
        editor: Box<Editor<ShellHelper, FileHistory>>,
        history: Option<PathBuf>,
        /// A failure to save was reported already.
        save_failed: bool,
    },
    /// A pipe or file: plain lines, no prompt.
    Plain(std::io::StdinLock<'static>),
}

impl Input {
    fn editor(
        remote: &Rc<RefCell<Remote>>,
        local: &Rc<RefCell<LocalDir>>,
    ) -> anyhow::Result<Input> {
        let config = Config::builder()
            .max_history_size(history::MAX_LINES)?
            .history_ignore_space(true)
            .auto_add_history(false)
            // Like bash: Tab completes what is common, Tab again lists.
            .completion_type(CompletionType::List)
            .build();
        let mut editor = Editor::with_config(config)?;
        editor.set_helper(Some(ShellHelper::new(Rc::clone(remote), Rc::clone(local))));
        let history = history::path();
        if let Some(path) = &history {
            history::load(editor.history_mut(), path);
        }
        Ok(Input::Editor {
            editor: Box::new(editor),
            history,
            save_failed: false,
        })
    }

    /// The next line, or `None` at the end.
    fn next(&mut self, prompt: &str) -> Option<anyhow::Result<String>> {
        match self {
            Input::Editor {
                editor,
                history,
                save_failed,
            } => match editor.readline(prompt) {
                Ok(line) => {
                    if history::may_record(&line) {
                        // Failing to record history is harmless.
                        let _ = editor.add_history_entry(line.as_str());
                        // Saved at once, so a killed shell loses nothing.
                        if let Some(path) = history
                            && let Err(e) = history::save(editor.history_mut(), path)
                            && !std::mem::replace(save_failed, true)
                        {
                            eprintln!("ftpc: {e}");
                        }
                    }
                    Some(Ok(line))
                }
                // Ctrl-C abandons the line, as in other shells.
                Err(ReadlineError::Interrupted) => Some(Ok(String::new())),
                Err(ReadlineError::Eof) => None,
                Err(e) => Some(Err(e.into())),
            },
            Input::Plain(stdin) => {
                let mut bytes = Vec::new();
                match stdin.read_until(b'\n', &mut bytes) {
                    Ok(0) => None,
                    Ok(_) => Some(
                        String::from_utf8(bytes)
                            .map_err(|_| anyhow::anyhow!("this line is not valid UTF-8")),
                    ),
                    Err(e) => Some(Err(anyhow::Error::new(e).context("reading stdin"))),
                }
            }
        }
    }
}

/// Runs the shell on a logged-in session; `reopen` logs in again.
pub fn run(
    conn: Conn,
    mut reopen: Reopen,
    user: &str,
    server: &str,
    quiet: bool,
) -> anyhow::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    let remote = Rc::new(RefCell::new(Remote::new(conn)?));
    let local = Rc::new(RefCell::new(LocalDir::default()));
    let mut input = if interactive {
        // Without the handler Ctrl-C would end the shell, as it does in a
        // script, where there is no one to return the prompt to.
        crate::cancel::install()
            .map_err(|e| Failure::Local(format!("cannot catch Ctrl-C: {e}")))?;
        Input::editor(&remote, &local)?
    } else {
        Input::Plain(std::io::stdin().lock())
    };
    let (mut total, mut failed, mut last_code) = (0, 0, 0);
    loop {
        let prompt = format!(
            "{}@{server}:{}> ",
            sanitize(user),
            sanitize(&remote.borrow().cwd)
        );
        let Some(line) = input.next(&prompt) else {
            break;
        };
        crate::cancel::reset();
        let mut shell = Shell {
            remote: &mut remote.borrow_mut(),
            local: &mut local.borrow_mut(),
            quiet,
        };
        let outcome = line.map_err(Failed).and_then(|line| shell.run_line(&line));
        shell.remote.forget_listing();
        match outcome {
            Ok(Flow::Next) => {}
            Ok(Flow::Counted) => total += 1,
            Ok(Flow::Exit) => break,
            Err(Cancelled { what }) => {
                total += 1;
                failed += 1;
                last_code = crate::error::exit::OTHER;
                eprintln!("ftpc: {what}");
                shell.remote.replace(reopen()?)?;
            }
            Err(Failed(e)) => {
                total += 1;
                failed += 1;
                last_code = exit_code(&e);
                eprintln!("ftpc: {e:#}");
                if e.downcast_ref::<Failure>().is_some_and(Failure::is_fatal) {
                    return Err(e);
                }
            }
        }
    }
    // The editor's helper holds the other reference.
    drop(input);
    if let Ok(remote) = Rc::try_unwrap(remote) {
        remote.into_inner().bye();
    }
    // At a terminal the user saw each error already; a script needs to know.
    if failed > 0 && !interactive {
        return Err(Failure::Script {
            failed,
            total,
            code: last_code,
        }
        .into());
    }
    Ok(())
}

/// What the shell does after a line.
enum Flow {
    /// Nothing was run (empty line, help).
    Next,
    /// A command ran and succeeded.
    Counted,
    Exit,
}

/// Why a line did not succeed.
enum Stop {
    /// Ctrl-C cancelled a transfer; `what` says which and how to resume.
    Cancelled {
        what: String,
    },
    Failed(anyhow::Error),
}
use Stop::{Cancelled, Failed};

impl<E: Into<anyhow::Error>> From<E> for Stop {
    /// Any command waiting on the server can be cancelled; whatever it was,
    /// the session is out of step and is replaced.
    fn from(e: E) -> Stop {
        let e = e.into();
        match e.downcast_ref::<Failure>() {
            Some(Failure::Cancelled) => Cancelled {
                what: "cancelled (the server may have done it already)".into(),
            },
            _ => Failed(e),
        }
    }
}

/// One line's view of the shell's state.
struct Shell<'a> {
    remote: &'a mut Remote,
    local: &'a mut LocalDir,
    quiet: bool,
}

impl Shell<'_> {
    fn run_line(&mut self, line: &str) -> Result<Flow, Stop> {
        let words = split(line).map_err(|e| Failure::Usage(e.into()))?;
        if words.is_empty() {
            return Ok(Flow::Next);
        }
        let parsed = match Line::try_parse_from(&words) {
            Ok(parsed) => parsed,
            Err(e) if e.use_stderr() => return Err(Failure::Usage(one_line(&e)).into()),
            Err(e) => {
                // Help was asked for: not a failure.
                let _ = e.print();
                return Ok(Flow::Next);
            }
        };
        match parsed.command {
            ShellCommand::Exit => return Ok(Flow::Exit),
            ShellCommand::Cd { path } => {
                self.remote.cwd = commands::cd(self.remote.conn()?, &path)?;
            }
            ShellCommand::Lcd { path } => self.local.cd(path.as_deref())?,
            ShellCommand::Lpwd => {
                commands::print_lines([self.local.pwd()?.display().to_string()])?;
            }
            ShellCommand::Lls { path, order, .. } => self.local.ls(path.as_deref(), &order)?,
            ShellCommand::Lmkdir { path } => self.local.mkdir(&path)?,
            ShellCommand::Session(cmd) => self.session(cmd)?,
        }
        Ok(Flow::Counted)
    }

    /// A command of a session, with its local paths taken relative to the
    /// `lcd` folder and put's local globs expanded. Remote globs are the
    /// session commands' own business (`commands::run`), the same in the
    /// shell as one-shot.
    fn session(&mut self, cmd: Command) -> Result<(), Stop> {
        let quiet = self.quiet;
        match cmd {
            Command::Put {
                paths,
                recursive,
                no_resume,
            } => {
                // The locals are every path but a last one (the remote
                // target); each may be a pattern, and is taken from the
                // `lcd` folder.
                let (locals, remote) = match paths.split_last() {
                    Some((last, rest)) if !rest.is_empty() => (rest.to_vec(), Some(last.clone())),
                    _ => (paths.clone(), None),
                };
                let mut expanded = Vec::new();
                for local in &locals {
                    expanded.extend(self.local.glob(local)?);
                }
                if expanded.len() > 1
                    && let Some(r) = remote.as_deref().and_then(|r| r.to_str())
                    && !r.ends_with('/')
                    && !commands::is_remote_dir(self.remote.conn()?, r)?
                {
                    return Err(Failure::Usage(format!(
                        "{} files to put; the remote target {r} must be a folder",
                        expanded.len()
                    ))
                    .into());
                }
                let several = expanded.len() > 1;
                let mut paths = expanded;
                match remote {
                    Some(r) => paths.push(r),
                    // Several files into the current remote folder.
                    None if several => paths.push(PathBuf::from(".")),
                    None => {}
                }
                let cmd = Command::Put {
                    paths,
                    recursive,
                    no_resume,
                };
                let conn = self.remote.conn()?;
                commands::run(conn, &cmd, quiet).map_err(|e| cancelled(e, &cmd))
            }
            Command::Get {
                mut paths,
                recursive,
                no_resume,
            } => {
                self.local_target(&mut paths, recursive)?;
                let cmd = Command::Get {
                    paths,
                    recursive,
                    no_resume,
                };
                let conn = self.remote.conn()?;
                commands::run(conn, &cmd, quiet).map_err(|e| cancelled(e, &cmd))
            }
            cmd => Ok(commands::run(self.remote.conn()?, &cmd, quiet)?),
        }
    }
}

impl Shell<'_> {
    /// Makes get's local target relative to the `lcd` folder: the last of
    /// several paths, or, for one remote path, the `lcd` folder itself
    /// (`get -r DIR`: a folder named as DIR in it), where one-shot `get`
    /// would use the process's folder. Without `lcd`, nothing changes.
    fn local_target(&self, paths: &mut Vec<OsString>, recursive: bool) -> Result<(), Stop> {
        let Some(base) = self.local.dir() else {
            return Ok(());
        };
        match paths.as_mut_slice() {
            [] => {}
            [remote] => {
                let target = if recursive && !remote.to_str().is_some_and(crate::glob::has_magic) {
                    let name = remote
                        .to_str()
                        .map(|r| r.trim_end_matches('/'))
                        .and_then(|r| r.rsplit('/').next())
                        .filter(|n| !matches!(*n, "" | "." | ".."))
                        .ok_or_else(|| {
                            Failure::Usage(
                                "cannot choose a local folder name; give one: get -r REMOTE LOCAL"
                                    .into(),
                            )
                        })?;
                    base.join(name)
                } else {
                    base.to_owned()
                };
                paths.push(target.into_os_string());
            }
            [.., last] if last.as_os_str() != "-" => {
                *last = self.local.resolve(Path::new(last)).into_os_string();
            }
            _ => {}
        }
        Ok(())
    }
}

/// A cancelled transfer as the line the user reads: what stopped, what is
/// kept, and how to go on.
fn cancelled(e: anyhow::Error, cmd: &Command) -> Stop {
    if !matches!(e.downcast_ref::<Failure>(), Some(Failure::Cancelled)) {
        return Failed(e);
    }
    let what = match cmd {
        Command::Put { paths, .. } => format!(
            "put of {} cancelled; the server keeps the part sent for a resume: \
             put it again to go on",
            paths
                .first()
                .map_or("the file".into(), |p| p.to_string_lossy())
        ),
        Command::Get { paths, .. } => format!(
            "get of {} cancelled; what arrived is kept (.part): get it again to resume",
            paths
                .first()
                .map_or("the file".into(), |p| p.to_string_lossy()),
        ),
        _ => return Stop::from(e),
    };
    Cancelled { what }
}
