//! `ftpc`: the command-line client of `ftpd`.
//!
//! ```text
//! ftpc [--server HOST:PORT] [--user NAME] [--password-file FILE] [--quiet] [--timeout S]
//!      [--utc] [--limit-rate RATE] COMMAND ...
//! ```
//!
//! The password comes from `FTPC_PASSWORD`, else the first line of
//! `--password-file`, else a prompt without echo when stdin is a terminal.
//! With no command on a terminal, `ftpc` starts the shell.
//!
//! # Exit codes
//!
//! | code | meaning                                                                  |
//! |------|--------------------------------------------------------------------------|
//! | 0    | success                                                                  |
//! | 1    | any other error (a local file cannot be read or written, ...)            |
//! | 2    | bad command line                                                         |
//! | 3    | cannot connect, connection lost, protocol error, version mismatch, time-out |
//! | 4    | login failed (wrong user or password, locked out, too many sessions)     |
//! | 5    | the server refused the command (not found, permission denied, exists, busy, ...) |
//! | 6    | quota exceeded                                                           |
//! | 7    | integrity error: the data did not match its CRC32                         |
//! | 8    | the server's key is not trusted: unknown, changed, or not the one given   |
//!
//! In a shell reading a script from stdin, a failing line is reported and the
//! shell goes on; it exits with the code of the last failing line, or at once
//! with 3 when the session is lost.

mod cancel;
mod clock;
mod commands;
mod conn;
mod display;
mod error;
mod glob;
mod listing;
mod local_dir;
mod pace;
mod progress;
mod rate;
mod shell;
mod transfer;
mod transport;
mod tree_get;
mod tree_put;
mod tree_report;
mod trust;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::commands::Command;
use crate::conn::Conn;
use crate::error::Failure;

/// Client for the ftpd file-transfer server.
#[derive(Debug, Parser)]
#[command(name = "ftpc", version)]
struct Cli {
    /// Server address.
    #[arg(
        long,
        env = "FTPC_SERVER",
        default_value = "127.0.0.1:9999",
        value_name = "HOST:PORT"
    )]
    server: String,
    /// User name (needed by every command except `ping`).
    #[arg(long, env = "FTPC_USER", value_name = "NAME")]
    user: Option<String>,
    /// Read the password from the first line of FILE (FTPC_PASSWORD wins).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Print no progress, notes or summaries on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Seconds to wait for the server: for a whole reply, or for each
    /// step of progress in a listing or a transfer (see README).
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
    /// Show times in UTC instead of the local time zone (TZ).
    #[arg(long)]
    utc: bool,
    /// Limit put and get to RATE bytes per second (500K, 10M: units as for
    /// quotas, binary).
    #[arg(long, value_name = "RATE", value_parser = rate::parse_rate)]
    limit_rate: Option<u64>,
    #[command(flatten)]
    trust: trust::TrustArgs,
    #[command(subcommand)]
    command: Option<TopCommand>,
}

#[derive(Debug, Subcommand)]
enum TopCommand {
    #[command(flatten)]
    Session(Command),
    /// Log in once and run commands typed at a prompt (or read from stdin).
    Shell,
}

fn main() -> ExitCode {
    ftpd::glibc_tunables::apply(&[
        ftpd::glibc_tunables::MEMCPY_VECTOR,
        ftpd::glibc_tunables::MALLOC_HUGE_PAGES,
    ]);
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `ftpc ls | head`: the reader had enough, which is no error.
        Err(e) if error::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpc: {e:#}");
            ExitCode::from(error::exit_code(&e))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    clock::init(cli.utc);
    if let Some(rate) = cli.limit_rate {
        rate::set_limit(rate);
    }
    let command = match cli.command {
        Some(command) => command,
        None if std::io::stdin().is_terminal() => TopCommand::Shell,
        None => {
            return Err(Failure::Usage(
                "no command given; `ftpc shell` reads commands from stdin, `ftpc help` lists them"
                    .into(),
            )
            .into());
        }
    };
    let timeout = Duration::from_secs(cli.timeout);
    if let TopCommand::Session(Command::Ping) = command {
        let mut conn = trust::connect(&cli.server, timeout, &cli.trust)?;
        commands::run(&mut conn, &Command::Ping, cli.quiet)?;
        conn.bye();
        return Ok(());
    }

    let user = cli
        .user
        .as_deref()
        .ok_or_else(|| Failure::Usage("no user name: use --user NAME or set FTPC_USER".into()))?;
    let password = password(user, &cli.server, cli.password_file.as_deref())?;
    let (server, trust, quiet) = (&cli.server, &cli.trust, cli.quiet);
    let open = move || -> Result<Conn, Failure> {
        let mut conn = trust::connect(server, timeout, trust)?;
        if let Some(note) = conn.login(user, password.as_bytes())? {
            progress::note(quiet, &note);
        }
        Ok(conn)
    };
    let mut conn = open()?;
    match command {
        // The shell keeps `open` (and so the password, in this process's
        // memory only) to log in again after Ctrl-C cancels a transfer.
        TopCommand::Shell => shell::run(conn, Box::new(open), user, &cli.server, cli.quiet),
        TopCommand::Session(cmd) => {
            drop(open);
            commands::run(&mut conn, &cmd, cli.quiet)?;
            conn.bye();
            Ok(())
        }
    }
}

/// The password: `FTPC_PASSWORD`, else the first line of `file`, else a
/// prompt on the terminal.
fn password(user: &str, server: &str, file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(p) = std::env::var_os("FTPC_PASSWORD") {
        return p
            .into_string()
            .map_err(|_| anyhow::anyhow!("FTPC_PASSWORD is not valid UTF-8"));
    }
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the password file {}", file.display()))?;
        let line = text.lines().next().unwrap_or("");
        return Ok(line.to_owned());
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(format!("password for {user}@{server}: "))
            .context("cannot read the password");
    }
    Err(Failure::Usage(
        "no password: set FTPC_PASSWORD, use --password-file, or run on a terminal".into(),
    )
    .into())
}
