//! The shell: one login, then commands line by line, with a prompt and
//! history on a terminal, or read plainly from stdin for scripts.
//!
//! A failing command is reported and the shell goes on; only a lost session
//! ends it. A script's exit code is that of its last failing command.

use std::io::{BufRead, IsTerminal};

use clap::{Parser, Subcommand};
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::commands::{self, Command};
use crate::conn::Conn;
use crate::display::sanitize;
use crate::error::{Failure, exit_code};

/// One shell line, parsed by clap like a command line.
#[derive(Debug, Parser)]
#[command(
    name = "ftpc",
    no_binary_name = true,
    disable_version_flag = true,
    help_template = "{subcommands}"
)]
struct Line {
    #[command(subcommand)]
    command: ShellCommand,
}

#[derive(Debug, Subcommand)]
enum ShellCommand {
    #[command(flatten)]
    Session(Command),
    /// Change the remote directory.
    Cd { path: String },
    /// Leave the shell.
    #[command(alias = "quit")]
    Exit,
}

/// Where lines come from.
enum Input {
    /// A terminal: prompt, line editing, history.
    Editor(Box<DefaultEditor>),
    /// A pipe or file: plain lines, no prompt.
    Plain(std::io::StdinLock<'static>),
}

impl Input {
    /// The next line, or `None` at the end.
    fn next(&mut self, prompt: &str) -> Option<anyhow::Result<String>> {
        match self {
            Input::Editor(editor) => match editor.readline(prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        // Failing to record history is harmless.
                        let _ = editor.add_history_entry(line.as_str());
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

/// Runs the shell on a logged-in session.
pub fn run(mut conn: Conn, user: &str, server: &str, quiet: bool) -> anyhow::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    let mut input = if interactive {
        Input::Editor(Box::new(DefaultEditor::new()?))
    } else {
        Input::Plain(std::io::stdin().lock())
    };
    let mut cwd = commands::pwd(&mut conn)?;
    let (mut total, mut failed, mut last_code) = (0, 0, 0);
    loop {
        let prompt = format!("{}@{server}:{}> ", sanitize(user), sanitize(&cwd));
        let Some(line) = input.next(&prompt) else {
            break;
        };
        let outcome = line.and_then(|line| run_line(&mut conn, &line, &mut cwd, quiet));
        match outcome {
            Ok(Flow::Next) => {}
            Ok(Flow::Counted) => total += 1,
            Ok(Flow::Exit) => break,
            Err(e) => {
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
    conn.bye();
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

fn run_line(conn: &mut Conn, line: &str, cwd: &mut String, quiet: bool) -> anyhow::Result<Flow> {
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
        ShellCommand::Cd { path } => *cwd = commands::cd(conn, &path)?,
        ShellCommand::Session(cmd) => commands::run(conn, &cmd, quiet)?,
    }
    Ok(Flow::Counted)
}

/// A clap error in one line, for the shell: what is wrong and the usage of
/// the command, not the advice to run `--help`.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines();
    let what: Vec<&str> = lines
        .by_ref()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let what = what.join(" ");
    let what = what.strip_prefix("error: ").unwrap_or(&what);
    match lines.find_map(|l| l.strip_prefix("Usage: ")) {
        Some(usage) if !usage.contains("<COMMAND>") => format!("{what} (usage: {usage})"),
        _ => format!("{what}; try help"),
    }
}

/// Splits a line into words: blanks separate words, `"..."` and `'...'`
/// group, a backslash takes the next character literally (inside double
/// quotes too), and `#` at the start of a word begins a comment.
pub fn split(line: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '#' if word.is_none() => break,
            '\\' => {
                let next = chars.next().ok_or("a backslash ends the line")?;
                word.get_or_insert_default().push(next);
            }
            '"' => {
                let w = word.get_or_insert_default();
                loop {
                    match chars.next().ok_or("unterminated \"")? {
                        '"' => break,
                        '\\' => w.push(chars.next().ok_or("unterminated \"")?),
                        c => w.push(c),
                    }
                }
            }
            '\'' => {
                let w = word.get_or_insert_default();
                loop {
                    match chars.next().ok_or("unterminated '")? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            c => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        split(line).unwrap()
    }

    #[test]
    fn splits_on_blanks() {
        assert_eq!(words("  put  a.txt\tb.txt \n"), ["put", "a.txt", "b.txt"]);
        assert!(words("").is_empty());
        assert!(words("   ").is_empty());
    }

    #[test]
    fn quotes_and_escapes_keep_spaces() {
        assert_eq!(words(r#"get "my file.txt""#), ["get", "my file.txt"]);
        assert_eq!(words(r"get my\ file.txt"), ["get", "my file.txt"]);
        assert_eq!(
            words(r#"mv "a \"q\" b" 'c d'"#),
            ["mv", r#"a "q" b"#, "c d"]
        );
        assert_eq!(words(r#"x"y z"w"#), ["xy zw"]);
        assert_eq!(words(r#"mkdir """#), ["mkdir", ""]);
        assert_eq!(words(r"a\\b"), [r"a\b"]);
    }

    #[test]
    fn comments() {
        assert!(words("# a comment").is_empty());
        assert_eq!(words("ls # list"), ["ls"]);
        assert_eq!(words("rm a#b"), ["rm", "a#b"]);
        assert_eq!(words(r##"rm "#x""##), ["rm", "#x"]);
    }

    #[test]
    fn unterminated_is_an_error() {
        assert!(split(r#"get "oops"#).is_err());
        assert!(split("get 'oops").is_err());
        assert!(split(r"get oops\").is_err());
    }

    #[test]
    fn shell_lines_parse() {
        let p = Line::try_parse_from(["put", "--no-resume", "a b", "dir/"]).unwrap();
        assert!(matches!(
            p.command,
            ShellCommand::Session(Command::Put {
                no_resume: true,
                ..
            })
        ));
        let p = Line::try_parse_from(["quit"]).unwrap();
        assert!(matches!(p.command, ShellCommand::Exit));
        let e = Line::try_parse_from(["cd"]).unwrap_err();
        assert_eq!(
            one_line(&e),
            "the following required arguments were not provided: <PATH> (usage: cd <PATH>)"
        );
        let e = Line::try_parse_from(["frobnicate"]).unwrap_err();
        assert_eq!(
            one_line(&e),
            "unrecognized subcommand 'frobnicate'; try help"
        );
    }
}
