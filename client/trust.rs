//! The trust flags of `ftpc`, and connecting with them: on a first
//! contact with an unknown key, a terminal user is shown the fingerprint
//! and asked, as ssh does; without a terminal the connection is refused
//! (exit 8) unless `--accept-new` was given. A key accepted either way is
//! pinned only after the login succeeds (see `Conn::login`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use ftpd::tls::Fingerprint;
use ftpd::tls::trust::Policy;

use crate::conn::Conn;
use crate::error::Failure;
use crate::transport::Security;

/// How ftpc decides to trust a server.
#[derive(Debug, clap::Args)]
pub struct TrustArgs {
    /// Trust only a server whose key has this fingerprint (as `ftpd
    /// fingerprint` prints it: SHA256:...).
    #[arg(long, env = "FTPC_FINGERPRINT", value_name = "SHA256:...",
          value_parser = Fingerprint::parse, conflicts_with = "plaintext")]
    fingerprint: Option<Fingerprint>,
    /// File of pinned server keys [default: $XDG_CONFIG_HOME/ftpc/known_hosts,
    /// else ~/.config/ftpc/known_hosts].
    #[arg(long, env = "FTPC_KNOWN_HOSTS", value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Trust a server's key on first contact without asking (it is pinned
    /// after the login succeeds; a changed key is still refused).
    #[arg(long, env = "FTPC_ACCEPT_NEW", conflicts_with = "plaintext",
          value_parser = clap::builder::FalseyValueParser::new())]
    accept_new: bool,
    /// Speak without TLS: nothing is encrypted, the server is not
    /// authenticated. Only for a link that is already private (a VPN, an
    /// SSH tunnel); the server must run with --plaintext too.
    #[arg(long, env = "FTPC_PLAINTEXT", value_parser = clap::builder::FalseyValueParser::new())]
    plaintext: bool,
}

impl TrustArgs {
    /// The security these flags ask for, for the server at `addr`.
    pub fn security(&self, addr: &str) -> Result<Security, Failure> {
        if self.plaintext {
            return Ok(Security::Plaintext);
        }
        Policy::new(
            addr,
            self.fingerprint.clone(),
            self.known_hosts.clone(),
            self.accept_new,
        )
        .map(Security::Tls)
        .map_err(Failure::Usage)
    }
}

/// Connects to `addr` as the flags say, asking a terminal user about an
/// unknown key.
pub fn connect(addr: &str, timeout: Duration, args: &TrustArgs) -> Result<Conn, Failure> {
    let security = args.security(addr)?;
    match Conn::connect(addr, timeout, &security) {
        Err(Failure::UnknownKey { host_port, offered }) if on_a_terminal() => {
            if !ask(&host_port, &offered)? {
                return Err(Failure::Trust(format!(
                    "not connecting to {host_port}: its key was not accepted"
                )));
            }
            // Connect again, now expecting exactly the key the user saw.
            let Security::Tls(mut policy) = security else {
                return Err(Failure::UnknownKey { host_port, offered });
            };
            policy.expected = Some(offered);
            Conn::connect(addr, timeout, &Security::Tls(policy))
        }
        other => other,
    }
}

fn on_a_terminal() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks whether to trust `offered`, as ssh does.
fn ask(host_port: &str, offered: &Fingerprint) -> Result<bool, Failure> {
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "The authenticity of server {host_port} can't be established.\n\
         Its key fingerprint is {offered}.\n\
         Compare it with what `ftpd fingerprint` prints on the server.\n\
         Are you sure you want to continue connecting (yes/no)? "
    );
    let _ = err.flush();
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::Local(format!("cannot read the answer: {e}")))?;
        match line.trim().to_ascii_lowercase().as_str() {
            "yes" => return Ok(true),
            "no" | "" => return Ok(false),
            _ => {
                let _ = write!(err, "Please type 'yes' or 'no': ");
                let _ = err.flush();
            }
        }
    }
}
