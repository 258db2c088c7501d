//! How a client decides to trust a server's key, ssh-style, in this order:
//!
//! 1. a fingerprint given on the command line must match;
//! 2. a pin for `HOST:PORT` in the known-hosts file must match;
//! 3. a certificate valid for the host name under the system's roots is
//!    trusted without asking (and not pinned: such keys rotate);
//! 4. anything else is a first contact with an unknown key, accepted only
//!    when the user said so (`--accept-new`, or yes at the prompt, which
//!    the caller asks for after [`Refusal::Unknown`]).
//!
//! The verifier records what it saw ([`Verifier::outcome`]) so that the
//! caller can word a refusal and, after a successful login, pin a key
//! accepted on first contact ([`KnownHosts::pin`]).
//!
//! The known-hosts file has one `HOST:PORT SHA256:...` pair per line;
//! blank lines and lines starting with `#` are ignored.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::Fingerprint;

/// Largest known-hosts file read: some thousands of servers.
const MAX_KNOWN_HOSTS: u64 = 4 * 1024 * 1024;

/// What the user told the client about trust.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `HOST:PORT` as given, the key under which pins are kept.
    pub host_port: String,
    /// `--fingerprint`: the key must be this one.
    pub expected: Option<Fingerprint>,
    /// The known-hosts file.
    pub known_hosts: KnownHosts,
    /// `--accept-new`: trust an unknown key on first contact.
    pub accept_new: bool,
}

impl Policy {
    /// A policy from the flags: `known_hosts` defaults to
    /// [`KnownHosts::default_path`].
    pub fn new(
        host_port: &str,
        expected: Option<Fingerprint>,
        known_hosts: Option<PathBuf>,
        accept_new: bool,
    ) -> Result<Policy, String> {
        let path = match known_hosts {
            Some(path) => path,
            None => KnownHosts::default_path().ok_or(
                "no place for known server keys: set HOME or XDG_CONFIG_HOME, \
                 or use --known-hosts FILE",
            )?,
        };
        Ok(Policy {
            host_port: host_port.to_owned(),
            expected,
            known_hosts: KnownHosts { path },
            accept_new,
        })
    }
}

/// Why a key was trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trusted {
    /// It matched `--fingerprint`.
    Expected,
    /// It matched the pin in the known-hosts file.
    Pinned,
    /// Its certificate is valid for the name under the system's roots.
    SystemRoots,
    /// An unknown key accepted on first contact.
    AcceptedNew,
}

impl Trusted {
    /// Why, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Trusted::Expected => "it matches --fingerprint",
            Trusted::Pinned => "it matches the pin in the known-hosts file",
            Trusted::SystemRoots => "its certificate is valid under the system's roots",
            Trusted::AcceptedNew => "it was accepted on first contact",
        }
    }

    /// Whether the key should be pinned once the login succeeds.
    pub fn to_pin(self) -> bool {
        matches!(self, Trusted::Expected | Trusted::AcceptedNew)
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It differs from `--fingerprint`.
    NotExpected {
        expected: Fingerprint,
        offered: Fingerprint,
    },
    /// It differs from the pin for this host.
    Changed {
        host_port: String,
        pinned: Fingerprint,
        offered: Fingerprint,
        file: PathBuf,
        line: usize,
    },
    /// Nothing vouches for it and the user has not accepted it.
    Unknown { offered: Fingerprint },
    /// The certificate cannot be read.
    Unreadable(String),
}

/// What the verifier decided about the key it was shown.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub fingerprint: Option<Fingerprint>,
    pub verdict: Result<Trusted, Refusal>,
}

/// A rustls verifier that applies a [`Policy`].
#[derive(Debug)]
pub struct Verifier {
    policy: Policy,
    system: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
    outcome: Mutex<Option<Outcome>>,
}

impl Verifier {
    /// A verifier for `policy`. The system's roots are loaded only when
    /// neither a fingerprint nor a pin decides first.
    pub fn new(policy: Policy, provider: &Arc<CryptoProvider>) -> Verifier {
        let decided = policy.expected.is_some()
            || matches!(policy.known_hosts.lookup(&policy.host_port), Ok(Some(_)));
        let system = if decided {
            None
        } else {
            system_verifier(provider)
        };
        Verifier {
            policy,
            system,
            algorithms: provider.signature_verification_algorithms,
            outcome: Mutex::new(None),
        }
    }

    /// What the last handshake's key check decided, if it ran.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome.lock().ok().and_then(|o| o.clone())
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn decide(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Outcome {
        let offered = match Fingerprint::of_cert(end_entity) {
            Ok(fp) => fp,
            Err(e) => {
                return Outcome {
                    fingerprint: None,
                    verdict: Err(Refusal::Unreadable(e.to_string())),
                };
            }
        };
        let verdict = self.judge(&offered, end_entity, intermediates, server_name, now);
        Outcome {
            fingerprint: Some(offered),
            verdict,
        }
    }

    fn judge(
        &self,
        offered: &Fingerprint,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<Trusted, Refusal> {
        if let Some(expected) = &self.policy.expected {
            return if expected == offered {
                Ok(Trusted::Expected)
            } else {
                Err(Refusal::NotExpected {
                    expected: expected.clone(),
                    offered: offered.clone(),
                })
            };
        }
        match self.policy.known_hosts.lookup(&self.policy.host_port) {
            Ok(Some((pinned, _))) if &pinned == offered => return Ok(Trusted::Pinned),
            Ok(Some((pinned, line))) => {
                return Err(Refusal::Changed {
                    host_port: self.policy.host_port.clone(),
                    pinned,
                    offered: offered.clone(),
                    file: self.policy.known_hosts.path.clone(),
                    line,
                });
            }
            // An unreadable file pins nothing; first contact rules apply.
            Ok(None) | Err(_) => {}
        }
        if let Some(system) = &self.system
            && system
                .verify_server_cert(end_entity, intermediates, server_name, &[], now)
                .is_ok()
        {
            return Ok(Trusted::SystemRoots);
        }
        if self.policy.accept_new {
            return Ok(Trusted::AcceptedNew);
        }
        Err(Refusal::Unknown {
            offered: offered.clone(),
        })
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let outcome = self.decide(end_entity, intermediates, server_name, now);
        let ok = outcome.verdict.is_ok();
        if let Ok(mut slot) = self.outcome.lock() {
            *slot = Some(outcome);
        }
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is never negotiated (the config offers only 1.3).
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The proof that the server holds the key we just trusted.
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A verifier for the system's trust roots, if there are any.
fn system_verifier(provider: &Arc<CryptoProvider>) -> Option<Arc<WebPkiServerVerifier>> {
    let mut roots = RootCertStore::empty();
    // Unreadable entries are skipped: the others still count.
    let loaded = rustls_native_certs::load_native_certs();
    for cert in loaded.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return None;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .ok()
}

/// The known-hosts file.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    pub path: PathBuf,
}

impl KnownHosts {
    /// `$XDG_CONFIG_HOME/ftpc/known_hosts`, else `~/.config/ftpc/known_hosts`.
    pub fn default_path() -> Option<PathBuf> {
        let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            Some(config) => PathBuf::from(config),
            None => {
                PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config")
            }
        };
        Some(base.join("ftpc").join("known_hosts"))
    }

    /// The pin for `host_port` and its line number, if any. A missing file
    /// pins nothing.
    pub fn lookup(&self, host_port: &str) -> io::Result<Option<(Fingerprint, usize)>> {
        let text = match read_limited(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // The last pin for a host wins, so appending a new one replaces it.
        let mut found = None;
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            if let (Some(host), Some(fp)) = (fields.next(), fields.next())
                && host == host_port
                && let Ok(fp) = Fingerprint::parse(fp)
            {
                found = Some((fp, index + 1));
            }
        }
        Ok(found)
    }

    /// Pins `fingerprint` for `host_port`: one line appended in a single
    /// write (so two clients at once cannot interleave), in a file and
    /// folder only the user can read.
    pub fn pin(&self, host_port: &str, fingerprint: &Fingerprint) -> io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        file.write_all(format!("{host_port} {fingerprint}\n").as_bytes())?;
        file.sync_all()
    }
}

fn read_limited(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let file = fs::File::open(path)?;
    let mut text = String::new();
    file.take(MAX_KNOWN_HOSTS).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_pins_and_finds_the_last_pin() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = KnownHosts {
            path: dir.path().join("sub").join("known_hosts"),
        };
        assert_eq!(hosts.lookup("h:1").unwrap(), None);
        let a = Fingerprint::of_spki(b"a");
        let b = Fingerprint::of_spki(b"b");
        hosts.pin("h:1", &a).unwrap();
        hosts.pin("other:1", &b).unwrap();
        assert_eq!(hosts.lookup("h:1").unwrap(), Some((a, 1)));
        hosts.pin("h:1", &b).unwrap();
        assert_eq!(hosts.lookup("h:1").unwrap(), Some((b, 3)));
        assert_eq!(hosts.lookup("h:2").unwrap(), None);
    }
}
