//! `ftpload`: a load generator for `ftpd`.
//!
//! ```text
//! ftpload [OPTIONS] <login|transfer|idle|mixed>
//! ftpload --scenario transfer -n 5000 --users users.txt --addr 127.0.0.1:9999
//! ```
//!
//! One process, one thread, one `mio::Poll`: every simulated session is a
//! state machine in a slab (see `engine.rs` and `session.rs`), speaking the
//! protocol with the library's own codec. Sessions log in as
//! `--user`/`--password` (or `FTPLOAD_PASSWORD`), or round-robin over the
//! users of a `--users` file of `name:password` lines.
//!
//! Scenarios:
//!
//! - `login`: N sessions connect, Hello, log in, Bye.
//! - `transfer`: N sessions log in, put a file of `--size` bytes (64 KiB;
//!   distinct content per session), get it back, check the CRC32 the server
//!   reports and every byte that comes back, remove it (unless `--keep`), Bye.
//! - `idle`: N sessions log in and stay idle for `--duration` seconds while
//!   one more session puts and gets a `--size` file (256 MiB); with
//!   `--server-pid`, reports the server's RSS per idle session.
//! - `mixed`: `--big` sessions put/get/remove a `--size` file (64 MiB) in a
//!   loop while N sessions loop over `ls`, `stat` and `get` of a small file
//!   (`--small-size`, uploaded once per user first), for `--duration`
//!   seconds; reports the small requests' latency. By default each session
//!   sends its next request as soon as the reply is in (a closed loop,
//!   where latency is mostly queueing: N / throughput); `--think MS` makes
//!   each wait MS milliseconds (±50 %) first, which offers N / think
//!   requests a second.
//!
//! Key derivation (scrypt) is done once per user, before the measured
//! phase; see `scenario.rs`.
//!
//! # Exit codes
//!
//! | code | meaning                                                 |
//! |------|---------------------------------------------------------|
//! | 0    | every session succeeded                                 |
//! | 1    | some sessions failed (the report says which and why)    |
//! | 2    | bad command line, or the run could not start: the server cannot be reached, a priming login failed, ... |
//! | 130  | a second SIGINT/SIGTERM ended the run at once            |

mod content;
mod engine;
mod procfs;
mod progress;
mod report;
mod scenario;
mod session;
mod stats;
mod users;

use std::collections::BinaryHeap;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Parser;
use ftpd::frame::{self, HEADER_LEN};
use ftpd::proto::Request;
use ftpd::size::parse_size;

use crate::engine::{Ctx, Engine, Monitor, Pacing};
use crate::progress::Progress;
use crate::scenario::{Plan, Scenario};
use crate::users::User;

/// Overall deadline unless `--timeout` says otherwise: long enough for
/// 10,000 sessions on a slow disk, short enough that a wedged run ends.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

const EXIT_CODES: &str = "\
Exit codes: 0 every session succeeded; 1 some sessions failed; 2 bad command line or the run \
could not start (server unreachable, priming login failed).";

/// Load generator for ftpd: many concurrent sessions from one process.
#[derive(Debug, Parser)]
#[command(name = "ftpload", version, after_help = EXIT_CODES)]
struct Cli {
    /// Scenario to run.
    #[arg(value_enum, required_unless_present = "scenario_flag")]
    scenario: Option<Scenario>,
    /// The scenario, as an option (instead of the positional argument).
    #[arg(
        long = "scenario",
        id = "scenario_flag",
        value_enum,
        value_name = "SCENARIO",
        conflicts_with = "scenario"
    )]
    scenario_flag: Option<Scenario>,
    /// Speak without TLS (the server must run with --plaintext too).
    #[arg(long, env = "FTPLOAD_PLAINTEXT", value_parser = clap::builder::FalseyValueParser::new())]
    plaintext: bool,
    /// Trust only a server whose key has this fingerprint (SHA256:...).
    #[arg(long, env = "FTPC_FINGERPRINT", value_name = "SHA256:...",
          value_parser = ftpd::tls::Fingerprint::parse, conflicts_with = "plaintext")]
    fingerprint: Option<ftpd::tls::Fingerprint>,
    /// File of pinned server keys, as for ftpc.
    #[arg(long, env = "FTPC_KNOWN_HOSTS", value_name = "FILE")]
    known_hosts: Option<std::path::PathBuf>,
    /// Trust an unknown server key (nothing is pinned: ftpload never asks).
    #[arg(long, env = "FTPC_ACCEPT_NEW", conflicts_with = "plaintext",
          value_parser = clap::builder::FalseyValueParser::new())]
    accept_new: bool,
    /// Server address.
    #[arg(
        long,
        short = 'a',
        env = "FTPLOAD_ADDR",
        default_value = "127.0.0.1:9999",
        value_name = "HOST:PORT"
    )]
    addr: String,
    /// User to log in as (with --password or FTPLOAD_PASSWORD).
    #[arg(long, short = 'u', value_name = "NAME", conflicts_with = "users")]
    user: Option<String>,
    /// The user's password. Visible to other local users in the process
    /// list; prefer FTPLOAD_PASSWORD.
    #[arg(long, env = "FTPLOAD_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// File of `name:password` lines; sessions take the users round-robin.
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// Sessions (idle: idle sessions; mixed: small-request sessions).
    #[arg(long, short = 'n', default_value_t = 100, value_name = "N")]
    sessions: usize,
    /// File size: transfer [64K], idle [256M], mixed big files [64M].
    #[arg(long, short = 's', value_parser = parse_size_arg, value_name = "SIZE")]
    size: Option<u64>,
    /// Size of the small file of the mixed scenario.
    #[arg(long, value_parser = parse_size_arg, default_value = "4K", value_name = "SIZE")]
    small_size: u64,
    /// Seconds to hold idle sessions (idle) or to loop (mixed).
    #[arg(long, short = 'd', default_value_t = 10.0, value_name = "SECS")]
    duration: f64,
    /// Large transfers running alongside the small requests (mixed).
    #[arg(long, default_value_t = 2, value_name = "K")]
    big: usize,
    /// Think time of the small-request sessions (mixed), in milliseconds:
    /// after each reply a session waits this long, ±50 % at random, before
    /// its next request, which offers N / think requests a second. 0: send
    /// the next request at once (a closed loop, where latency is mostly
    /// queueing).
    #[arg(long, default_value_t = 0.0, value_name = "DURATION_MS")]
    think: f64,
    /// Keep uploaded files instead of removing them at the end.
    #[arg(long)]
    keep: bool,
    /// Start every session at once (the default).
    #[arg(long, conflicts_with_all = ["connect_rate", "max_connecting"])]
    connect_all_at_once: bool,
    /// Start at most this many sessions per second.
    #[arg(long, value_name = "PER_SEC")]
    connect_rate: Option<f64>,
    /// Keep at most this many TCP handshakes in flight.
    #[arg(long, value_name = "K")]
    max_connecting: Option<usize>,
    /// Overall deadline in seconds; sessions still running then fail
    /// [default: 300, plus --duration for idle and mixed].
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// A session fails when no byte moves for this many seconds (holding
    /// idle is exempt).
    #[arg(long, default_value_t = 30.0, value_name = "SECS")]
    step_timeout: f64,
    /// ftpd's process id: report its CPU time and memory (from /proc).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Seed of the file content (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

fn main() -> ExitCode {
    ftpd::glibc_tunables::apply(&[ftpd::glibc_tunables::MEMCPY_VECTOR]);
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ftpload: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the scenario; `Ok(false)` when some sessions failed.
fn run(cli: Cli) -> anyhow::Result<bool> {
    let scenario = cli
        .scenario
        .or(cli.scenario_flag)
        .ok_or_else(|| anyhow!("no scenario given"))?;
    let users = users(&cli)?;
    let addr = resolve(&cli.addr)?;
    let tls = if cli.plaintext {
        None
    } else {
        let policy = ftpd::tls::trust::Policy::new(
            &cli.addr,
            cli.fingerprint.clone(),
            cli.known_hosts.clone(),
            cli.accept_new,
        )
        .map_err(|e| anyhow!(e))?;
        Some(tls_client(&cli.addr, policy)?)
    };
    let seconds = |name: &str, v: f64| -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("--{name} must be a positive number of seconds"))
    };
    let duration = seconds("duration", cli.duration)?;
    let timeout = match cli.timeout {
        Some(t) => seconds("timeout", t)?,
        None => match scenario {
            Scenario::Idle | Scenario::Mixed => DEFAULT_TIMEOUT + duration,
            Scenario::Login | Scenario::Transfer => DEFAULT_TIMEOUT,
        },
    };
    let step_timeout = seconds("step-timeout", cli.step_timeout)?;
    if cli.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    if let Some(rate) = cli.connect_rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--connect-rate must be a positive number");
    }
    if cli.max_connecting == Some(0) {
        bail!("--max-connecting must be at least 1");
    }
    let think = Duration::try_from_secs_f64(cli.think / 1000.0)
        .map_err(|_| anyhow!("--think must be a number of milliseconds, 0 or more"))?;
    if !think.is_zero() && scenario != Scenario::Mixed {
        bail!("--think applies to the mixed scenario only");
    }
    let size = cli.size.unwrap_or(match scenario {
        Scenario::Transfer | Scenario::Login => 64 << 10,
        Scenario::Idle => 256 << 20,
        Scenario::Mixed => 64 << 20,
    });
    let seed = cli.seed.unwrap_or_else(clock_seed);
    let plan = Plan {
        scenario,
        sessions: cli.sessions,
        size,
        small_size: cli.small_size,
        duration,
        big: cli.big,
        think,
        keep: cli.keep,
        seed,
    };

    let progress = Progress::new(cli.quiet);
    let wanted = cli.sessions as u64 + cli.big as u64 + users.len() as u64 + 64;
    let open_files = raise_open_files_limit(wanted, &progress);
    check_environment(&plan, cli.server_pid, &progress);

    let n_users = users.len();
    let chunk_tag = frame::encode(&Request::Chunk(&[]))
        .context("encoding a chunk header")?
        .get(HEADER_LEN)
        .copied()
        .ok_or_else(|| anyhow!("empty chunk frame"))?;
    let cx = Ctx {
        now: Instant::now(),
        users,
        keys: (0..n_users).map(|_| None).collect(),
        probed: vec![None; n_users],
        groups: Vec::new(),
        pid: std::process::id(),
        nonce: seed ^ (u64::from(std::process::id()) << 32),
        chunk_tag,
        loop_until: None,
        release_at: None,
        scratch: Vec::new(),
        timers: BinaryHeap::new(),
        rng: seed ^ 0x6a09_e667_f3bc_c908,
        tls,
    };
    let pacing = Pacing {
        rate: cli.connect_rate,
        max_connecting: cli.max_connecting,
    };
    let connect = match (pacing.rate, pacing.max_connecting) {
        (None, None) => "all at once".to_string(),
        (Some(r), None) => format!("at {r}/s"),
        (None, Some(k)) => format!("with at most {k} in flight"),
        (Some(r), Some(k)) => format!("at {r}/s with at most {k} in flight"),
    };
    let deadline = Instant::now() + timeout;
    let mut eng = Engine::new(addr, cx, pacing, deadline, step_timeout, progress)
        .context("setting up the event loop")?;
    if let Some(pid) = cli.server_pid {
        let mut monitor = Monitor {
            pid,
            peak_rss_kib: 0,
        };
        if monitor.sample().is_none() {
            bail!("--server-pid {pid}: cannot read /proc/{pid}/status (no such process?)");
        }
        eng.monitor = Some(monitor);
    }

    let result = scenario::run(&mut eng, &plan);
    eng.progress.finish();
    let mut report = result?;
    report.addr = addr.to_string();
    report.connect = connect;
    report.open_files_limit = open_files;

    let mut out = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer(&mut out, &report).context("writing the report")?;
        writeln!(out)?;
    } else {
        report.print_table(&mut out)?;
    }
    out.flush()?;
    Ok(report.failed == 0 && report.outcome == "complete")
}

fn users(cli: &Cli) -> anyhow::Result<Vec<User>> {
    if let Some(path) = &cli.users {
        return users::read_file(path);
    }
    let Some(name) = &cli.user else {
        bail!("give --user NAME with --password (or FTPLOAD_PASSWORD), or --users FILE");
    };
    let Some(password) = &cli.password else {
        bail!("--user needs --password or FTPLOAD_PASSWORD");
    };
    Ok(vec![User {
        name: name.clone(),
        password: password.clone(),
    }])
}

/// Resolves once, up front: thousands of connects must not each look up a
/// name.
/// The TLS client configuration every session shares, and the name the
/// server's certificate is checked against.
fn tls_client(
    addr: &str,
    policy: ftpd::tls::trust::Policy,
) -> anyhow::Result<crate::engine::TlsClient> {
    let provider = ftpd::tls::provider();
    let verifier = std::sync::Arc::new(ftpd::tls::trust::Verifier::new(policy, &provider));
    let config = ftpd::tls::client_config(verifier).context("setting up TLS")?;
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| anyhow!("not a host name or address: {host:?}"))?;
    Ok(crate::engine::TlsClient {
        config: std::sync::Arc::new(config),
        name,
    })
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(40)
}

/// Each session is a file descriptor: raise the soft limit to the hard one,
/// and say so if even that is below what the run needs. Returns the limit.
fn raise_open_files_limit(wanted: u64, progress: &Progress) -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            progress.println(&format!(
                "ftpload: warning: cannot raise the open-files limit: {e}"
            ));
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    if let Some(soft) = now
        && soft < wanted
    {
        progress.println(&format!(
            "ftpload: warning: the open-files limit is {soft} (hard limit: {}), this run needs about \
             {wanted}; sessions beyond it fail as 'connect' errors. Only root can raise the hard \
             limit (ulimit -Hn, or LimitNOFILE= in a systemd unit).",
            limit.maximum.map_or("unlimited".into(), |m| m.to_string())
        ));
    }
    now
}

/// Warns about limits outside this process that would fail sessions.
fn check_environment(plan: &Plan, server_pid: Option<u32>, progress: &Progress) {
    let concurrent = (plan.sessions + plan.big + 1) as u64;
    if let Some(ports) = procfs::ephemeral_ports()
        && concurrent > ports
    {
        progress.println(&format!(
            "ftpload: warning: {concurrent} concurrent connections to one address need as many \
             local ports, but net.ipv4.ip_local_port_range has only {ports}"
        ));
    }
    if let Some(pid) = server_pid
        && let Some(limit) = procfs::open_files_limit(pid)
        && limit < concurrent + 16
    {
        progress.println(&format!(
            "ftpload: warning: the server's open-files limit is {limit}, below the {concurrent} \
             sessions of this run"
        ));
    }
}
