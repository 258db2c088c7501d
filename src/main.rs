//! `ftpd`: serve (the default) or manage users (`ftpd user ...`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::builder::RangedU64ValueParser;
use clap::{Parser, Subcommand};

use ftpd::admin::UserCommand;
use ftpd::server::log::{self, Level};
use ftpd::server::{Config, GuardConfig, Server};

/// A single-threaded multi-user file-transfer server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Data folder: the user file, the server secret and the homes.
    #[arg(long, global = true, default_value = "./ftpd-data")]
    root: PathBuf,

    #[command(flatten)]
    serve: ServeArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage users: add, passwd, del, list, quota.
    #[command(subcommand)]
    User(UserCommand),
    /// Print the fingerprint of the server's TLS key, for users to pin
    /// (`ftpc --fingerprint ...`); creates the key if there is none yet.
    Fingerprint {
        #[command(flatten)]
        files: TlsFiles,
    },
}

/// A certificate chain and key given instead of the generated pair.
#[derive(clap::Args, Debug)]
struct TlsFiles {
    /// Serve this certificate chain (PEM) instead of the self-signed one
    /// made in the data folder; SIGHUP reloads it.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsFiles {
    /// Where the TLS identity comes from: these files, or the pair made
    /// in the data folder `root`.
    fn source(self, root: &std::path::Path) -> ftpd::tls::identity::Source {
        use ftpd::tls::identity::Source;
        match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Source::Files { cert, key },
            _ => Source::Generated {
                root: root.to_owned(),
            },
        }
    }
}

/// A flag's accepted values, as a clap parser: out of range is a usage
/// error (exit 2) that names the range, and everything in range is safe
/// for the `Duration` and `Instant` arithmetic the server does with it.
fn range<T>(range: std::ops::RangeInclusive<u64>) -> RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: std::error::Error + Send + Sync + 'static,
{
    RangedU64ValueParser::<T>::new().range(range)
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: SocketAddr,
    /// Most connections at once (1-1000000).
    #[arg(long, default_value_t = 10_000, value_parser = range::<usize>(1..=1_000_000))]
    max_conns: usize,
    /// Most connections at once from one address, or one IPv6 /64 (1-1000000).
    #[arg(long, default_value_t = 256, value_parser = range::<usize>(1..=1_000_000))]
    max_conns_per_ip: usize,
    /// Most logged-in sessions of one user at once (0: no limit; 0-1000000).
    #[arg(long, default_value_t = 64, value_parser = range::<u32>(0..=1_000_000))]
    max_sessions_per_user: u32,
    /// Seconds a logged-in session may sit idle (1-604800, a week).
    #[arg(long, default_value_t = 300, value_parser = range::<u64>(1..=604_800))]
    idle_timeout: u64,
    /// Seconds a new connection has to say hello and log in (1-3600).
    #[arg(long, default_value_t = 20, value_parser = range::<u64>(1..=3_600))]
    login_timeout: u64,
    /// Seconds a transfer may make no progress before it is dropped (1-86400).
    #[arg(long, default_value_t = 60, value_parser = range::<u64>(1..=86_400))]
    stall_timeout: u64,
    /// Hours an unfinished upload is kept for resume (1-8760, a year).
    #[arg(long, default_value_t = 24, value_parser = range::<u64>(1..=8_760))]
    partial_ttl_hours: u64,
    /// Delay before answering the first failed login, in ms, doubling after
    /// each, up to 5 s or this delay if longer (0-60000).
    #[arg(long, default_value_t = 500, value_parser = range::<u64>(0..=60_000))]
    login_delay_ms: u64,
    /// Failed logins of one user from one address before a lockout (1-1000000).
    #[arg(long, default_value_t = 5, value_parser = range::<u32>(1..=1_000_000))]
    lockout_after: u32,
    /// Failed logins from one address, any user, before a lockout (1-1000000).
    #[arg(long, default_value_t = 30, value_parser = range::<u32>(1..=1_000_000))]
    addr_lockout_after: u32,
    /// Seconds a lockout lasts (1-86400).
    #[arg(long, default_value_t = 300, value_parser = range::<u64>(1..=86_400))]
    lockout_secs: u64,
    /// Helper threads for changes to users' trees: mkdir, rmdir, rm, mv,
    /// opening, syncing, publishing and deleting uploads (1-64). Listings
    /// and resume hashing have two threads of their own. One user holds at
    /// most half of each lane's threads.
    #[arg(long, default_value_t = 4, value_parser = range::<usize>(1..=64))]
    disk_threads: usize,
    /// Log detail on stderr.
    #[arg(long, value_enum, default_value = "info")]
    log_level: Level,
    #[command(flatten)]
    tls: TlsFiles,
    /// Speak without TLS: nothing is encrypted. Only for a link that is
    /// already private (a VPN, an SSH tunnel) and for benchmarks; clients
    /// must ask for it too.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    plaintext: bool,
}

fn main() -> ExitCode {
    ftpd::glibc_tunables::apply(&[
        ftpd::glibc_tunables::MEMCPY_VECTOR,
        ftpd::glibc_tunables::MALLOC_TRIM_THRESHOLD,
    ]);
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::User(cmd)) => ftpd::admin::run(&cli.root, cmd),
        Some(Command::Fingerprint { files }) => print_fingerprint(&files.source(&cli.root)),
        None => serve(cli.root, cli.serve),
    };
    log::flush(LOG_FLUSH_WAIT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed stderr must not turn a clean error into a panic.
            let _ = writeln!(std::io::stderr(), "ftpd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_fingerprint(source: &ftpd::tls::identity::Source) -> anyhow::Result<()> {
    if let ftpd::tls::identity::Source::Generated { root } = source {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating data folder {}", root.display()))?;
    }
    let identity = source.load()?;
    println!("{}", identity.fingerprint);
    Ok(())
}

fn serve(root: PathBuf, args: ServeArgs) -> anyhow::Result<()> {
    log::set_level(args.log_level);
    log::start().context("starting the logging thread")?;
    raise_open_files_limit(args.max_conns);
    let cfg = Config {
        listen: args.listen,
        root: root.clone(),
        max_conns: args.max_conns,
        max_conns_per_ip: args.max_conns_per_ip,
        max_sessions_per_user: args.max_sessions_per_user,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        login_timeout: Duration::from_secs(args.login_timeout),
        stall_timeout: Duration::from_secs(args.stall_timeout),
        partial_ttl: Duration::from_secs(args.partial_ttl_hours.saturating_mul(3600)),
        guard: GuardConfig {
            base_delay: Duration::from_millis(args.login_delay_ms),
            max_delay: Duration::from_secs(5).max(Duration::from_millis(args.login_delay_ms)),
            pair_limit: args.lockout_after,
            addr_limit: args.addr_lockout_after,
            lockout: Duration::from_secs(args.lockout_secs),
        },
        disk_threads: args.disk_threads,
        tls: (!args.plaintext).then(|| args.tls.source(&root)),
    };
    let server = Server::bind(cfg)?;
    let addr = server.local_addr()?;
    // Scripts and tests read this first line to learn the real port; with
    // nobody reading stdout the server still serves.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}").and_then(|()| out.flush());
    drop(out);
    server.run()
}

/// How long a stopping server waits for its log to be written: long enough
/// for a slow reader, short enough that a stalled one cannot hold it up.
const LOG_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Each connection is a file descriptor, and a transfer holds a second one:
/// raise the limit so thousands of sessions do not fail on a default of
/// 1024. The hard limit is raised too where allowed (as root), to what the
/// connection limit needs.
fn raise_open_files_limit(max_conns: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // Two per connection (socket, file) plus the server's own.
    let wanted = (max_conns as u64).saturating_mul(2).saturating_add(64);
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < wanted {
        let raised = rustix::process::Rlimit {
            current: Some(wanted),
            maximum: Some(wanted),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return;
        }
    }
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return;
    }
    limit.current = Some(wanted.min(hard));
    if let Err(e) = setrlimit(Resource::Nofile, limit) {
        ftpd::log!(Warn, "could not raise the open-files limit: {e}");
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if now < wanted {
        ftpd::log!(
            Warn,
            "open-files limit {now} is below the {wanted} that --max-conns {max_conns} needs; \
             some sessions may be refused"
        );
    }
}
