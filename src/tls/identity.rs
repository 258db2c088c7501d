//! The server's TLS identity: a key and a certificate chain.
//!
//! With no flags the server makes its own on first start, in the data
//! folder:
//!
//! ```text
//! <root>/tls-key.pem    ECDSA P-256 private key (PKCS#8), mode 0600
//! <root>/tls-cert.pem   a self-signed certificate for that key
//! ```
//!
//! The key is the identity: clients pin its fingerprint, so it is created
//! once and kept. Both files are written under a private name, synced and
//! then linked into place, so a crash never leaves half a key, and two
//! servers starting at once agree on one key. A missing certificate is
//! made again from the key (same fingerprint). With `--tls-cert` and
//! `--tls-key` the given files are used instead, and nothing is created.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use super::Fingerprint;
use crate::users::create_private_once;

/// The generated key, in the data folder.
pub const KEY_FILE: &str = "tls-key.pem";

/// The generated self-signed certificate, in the data folder.
pub const CERT_FILE: &str = "tls-cert.pem";

/// Largest certificate or key file read: a long chain is a few KiB.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Where the server's identity comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Made and kept in the data folder.
    Generated { root: PathBuf },
    /// Given by the administrator (`--tls-cert`, `--tls-key`).
    Files { cert: PathBuf, key: PathBuf },
}

/// A loaded identity, ready to serve.
pub struct Identity {
    pub config: Arc<ServerConfig>,
    pub fingerprint: Fingerprint,
}

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot make a TLS key or certificate: {0}")]
    Generate(String),
    #[error("the certificate {cert} does not fit the key {key}: {message}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

impl Source {
    /// Loads the identity, creating it first if it is ours to create.
    pub fn load(&self) -> Result<Identity, IdentityError> {
        let (cert_path, key_path) = match self {
            Source::Generated { root } => {
                ensure_generated(root)?;
                (root.join(CERT_FILE), root.join(KEY_FILE))
            }
            Source::Files { cert, key } => (cert.clone(), key.clone()),
        };
        let chain = read_chain(&cert_path)?;
        let key = read_key(&key_path)?;
        let Some(leaf) = chain.first() else {
            return Err(invalid(&cert_path, "no certificate in the file"));
        };
        let fingerprint = Fingerprint::of_cert(leaf)
            .map_err(|e| invalid(&cert_path, &format!("not a usable certificate: {e}")))?;
        let config = super::server_config(chain, key).map_err(|e| IdentityError::Mismatch {
            cert: cert_path.clone(),
            key: key_path.clone(),
            message: e.to_string(),
        })?;
        Ok(Identity {
            config,
            fingerprint,
        })
    }
}

/// Creates the key if there is none, and the certificate if there is
/// none, in `root`.
fn ensure_generated(root: &Path) -> Result<(), IdentityError> {
    let key_path = root.join(KEY_FILE);
    if !exists(&key_path)? {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        create_private_once(root, KEY_FILE, key.serialize_pem().as_bytes()).map_err(|error| {
            IdentityError::Io {
                path: key_path.clone(),
                error,
            }
        })?;
    }
    let cert_path = root.join(CERT_FILE);
    if !exists(&cert_path)? {
        let pem = read_limited(&key_path)?;
        let text = String::from_utf8(pem).map_err(|_| invalid(&key_path, "not a PEM file"))?;
        let key = rcgen::KeyPair::from_pem(&text)
            .map_err(|e| invalid(&key_path, &format!("not a usable key: {e}")))?;
        let cert = self_signed(&key)?;
        create_private_once(root, CERT_FILE, cert.as_bytes()).map_err(|error| {
            IdentityError::Io {
                path: cert_path,
                error,
            }
        })?;
    }
    Ok(())
}

/// A self-signed certificate for `key`, in PEM. Its names do not matter:
/// clients trust it by the key's fingerprint, not by a name.
fn self_signed(key: &rcgen::KeyPair) -> Result<String, IdentityError> {
    let generate = |e: rcgen::Error| IdentityError::Generate(e.to_string());
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(generate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ftpd");
    Ok(params.self_signed(key).map_err(generate)?.pem())
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(IdentityError::Io {
            path: path.to_owned(),
            error,
        }),
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, IdentityError> {
    use std::io::Read;
    let io_error = |error| IdentityError::Io {
        path: path.to_owned(),
        error,
    };
    let file = fs::File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(invalid(path, "larger than 1 MiB; not a certificate or key"));
    }
    Ok(bytes)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let pem = read_limited(path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, &format!("not a PEM certificate chain: {e}")))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    let pem = read_limited(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| invalid(path, &format!("not a PEM private key: {e}")))
}

fn invalid(path: &Path, message: &str) -> IdentityError {
    IdentityError::Invalid {
        path: path.to_owned(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let source = Source::Generated {
            root: dir.path().to_owned(),
        };
        let first = source.load().unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(source.load().unwrap().fingerprint, first.fingerprint);
        // A lost certificate is made again for the same key.
        fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        assert_eq!(source.load().unwrap().fingerprint, first.fingerprint);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn given_files_that_do_not_fit_are_refused_with_their_names() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [&a, &b] {
            Source::Generated {
                root: d.path().to_owned(),
            }
            .load()
            .unwrap();
        }
        let mixed = Source::Files {
            cert: a.path().join(CERT_FILE),
            key: b.path().join(KEY_FILE),
        };
        let err = mixed.load().err().unwrap().to_string();
        assert!(err.contains("does not fit"), "{err}");
        let garbage = a.path().join("garbage.pem");
        fs::write(&garbage, "hello").unwrap();
        let err = Source::Files {
            cert: garbage.clone(),
            key: a.path().join(KEY_FILE),
        }
        .load()
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("garbage.pem") && err.contains("no certificate"),
            "{err}"
        );
    }
}
