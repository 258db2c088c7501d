//! TLS pieces for tests: a client that trusts any server key (the tests
//! using it are about the server, not about trust), and a server identity
//! of a test's own, for relays that terminate TLS.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Accepts whatever key the server shows, checking only that it signs
/// the handshake.
#[derive(Debug)]
struct AnyKey(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyKey {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no TLS 1.2".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A TLS client connection to "localhost" that trusts any key.
pub fn client() -> Result<rustls::ClientConnection, rustls::Error> {
    let provider = ftpd::tls::provider();
    let verifier = Arc::new(AnyKey(provider.signature_verification_algorithms));
    let config = ftpd::tls::client_config(verifier)?;
    let name = ServerName::try_from("localhost").expect("name");
    rustls::ClientConnection::new(Arc::new(config), name)
}

/// A server configuration with a fresh self-signed key of the test's own,
/// and that key's fingerprint.
pub fn own_server() -> (Arc<rustls::ServerConfig>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = ftpd::tls::identity::Source::Generated {
        root: dir.path().to_owned(),
    }
    .load()
    .expect("identity");
    (identity.config, identity.fingerprint.to_string())
}

/// A socket that remembers the first bytes it read: what a server sent in
/// clear instead of a handshake.
pub struct Sniff<'a> {
    sock: &'a mut std::net::TcpStream,
    pub seen: Vec<u8>,
}

impl<'a> Sniff<'a> {
    pub fn new(sock: &'a mut std::net::TcpStream) -> Sniff<'a> {
        Sniff {
            sock,
            seen: Vec::new(),
        }
    }
}

impl std::io::Read for Sniff<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.sock.read(buf)?;
        if self.seen.len() < 4096 {
            self.seen.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

impl std::io::Write for Sniff<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sock.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sock.flush()
    }
}
