//! A shell line: split into words as a shell would, then parsed by clap
//! into a command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::Command;
use crate::display::ListOptions;

/// One shell line, parsed by clap like a command line.
#[derive(Debug, Parser)]
#[command(
    name = "ftpc",
    no_binary_name = true,
    disable_version_flag = true,
    help_template = "{subcommands}"
)]
pub struct Line {
    #[command(subcommand)]
    pub command: ShellCommand,
}

/// The commands of the shell: those of a session, plus the ones that only
/// make sense in a shell (the remote and local folders, leaving).
#[derive(Debug, Subcommand)]
pub enum ShellCommand {
    #[command(flatten)]
    Session(Command),
    /// Change the remote directory.
    Cd { path: String },
    /// Change the local directory (where put and get look; default: home).
    Lcd { path: Option<PathBuf> },
    /// Show the local directory.
    Lpwd,
    /// List a local directory (default: the local one), like ls.
    #[command(disable_help_flag = true)]
    Lls {
        path: Option<PathBuf>,
        #[command(flatten)]
        order: ListOptions,
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
    },
    /// Create a local directory.
    Lmkdir { path: PathBuf },
    /// Leave the shell (Ctrl-D too).
    #[command(alias = "quit")]
    Exit,
}

/// The names the shell knows, for Tab: every command and alias, from clap,
/// so the list cannot drift from the parser.
pub fn command_names() -> Vec<String> {
    use clap::CommandFactory;
    let mut names: Vec<String> = Line::command()
        .get_subcommands()
        .flat_map(|c| std::iter::once(c.get_name()).chain(c.get_all_aliases()))
        .map(str::to_owned)
        .collect();
    names.push("help".into());
    names.sort();
    names.dedup();
    names
}

/// A clap error in one line, for the shell: what is wrong and the usage of
/// the command, not the advice to run `--help`.
pub fn one_line(e: &clap::Error) -> String {
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

/// Where the word under the cursor begins in `before` (the line up to the
/// cursor): after the last blank that is neither escaped nor quoted.
pub fn last_word_start(before: &str) -> usize {
    let mut start = 0;
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in before.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => escaped = true,
            (None, '"' | '\'') => quote = Some(c),
            (Some('"'), '"') => quote = None,
            (None, c) if c.is_whitespace() => start = i + c.len_utf8(),
            _ => {}
        }
    }
    start
}

/// A word as typed so far, with its quotes and escapes undone; a quote
/// still open or a trailing backslash is fine.
pub fn partial_word(word: &str) -> String {
    let word = word.strip_suffix('\\').unwrap_or(word);
    ["", "\"", "'"]
        .iter()
        .find_map(|close| split(&format!("{word}{close}")).ok())
        .map(|words| words.concat())
        .unwrap_or_default()
}

/// Escapes `word` so that [`split`] gives it back as one word.
pub fn escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if c.is_whitespace() || matches!(c, '\\' | '"' | '\'' | '#') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
    fn the_word_under_the_cursor() {
        assert_eq!(last_word_start("get do"), 4);
        assert_eq!(last_word_start("get "), 4);
        assert_eq!(last_word_start("get my\\ fi"), 4);
        assert_eq!(last_word_start("get \"my fi"), 4);
        assert_eq!(last_word_start("get 'a b' c"), 10);
        assert_eq!(partial_word("my\\ fi"), "my fi");
        assert_eq!(partial_word("\"my fi"), "my fi");
        assert_eq!(partial_word("'it"), "it");
        assert_eq!(partial_word("end\\"), "end");
        for w in ["a b", "it's", "#x", "q\"q", "back\\slash"] {
            assert_eq!(words(&format!("get {}", escape(w))), ["get", w]);
        }
    }

    #[test]
    fn command_names_come_from_the_parser() {
        let names = command_names();
        for n in [
            "cd", "exit", "get", "lcd", "lls", "lmkdir", "lpwd", "ls", "put", "quit",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
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
