//! TLS 1.3 for both sides: the one crypto provider, the configurations,
//! the server key's fingerprint and the channel binding of the login.
//!
//! Everything here is rustls 0.23 with aws-lc-rs (key exchange, signatures,
//! randomness; AES-GCM records from ring where that is faster, see
//! `aes_gcm_suites`): AES-GCM first (it seals at several GB/s with AES-NI,
//! ChaCha20 at a fraction of that), the
//! hybrid post-quantum group `X25519MLKEM768` before plain `X25519`, no
//! TLS 1.2, no 0-RTT and no session resumption: a session is one long
//! connection, so a full handshake per connection costs little, and
//! resumption would add state and a replay surface for nothing.

pub mod identity;
pub mod link;
pub mod trust;

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::{CryptoProvider, aws_lc_rs, ring};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, CommonState, ServerConfig, SupportedCipherSuite};
use sha2::{Digest, Sha256};

/// RFC 9266's exporter label for the `tls-exporter` channel binding.
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// Length of the channel binding, in bytes (RFC 9266).
pub const CHANNEL_BINDING_LEN: usize = 32;

/// The channel binding of one connection: both ends of the same TLS
/// channel compute the same bytes; two ends of different channels (a
/// man in the middle holds two) cannot.
pub type ChannelBinding = [u8; CHANNEL_BINDING_LEN];

/// Sent TLS data rustls may buffer beyond what the socket took: a few
/// records, so a peer that stops reading holds a bounded amount.
pub const SEND_BUFFER_LIMIT: usize = 64 * 1024;

/// Sealed records the server's rustls may hold while a download streams.
/// Each socket write takes what rustls holds, and writes of at most 64 KiB
/// (17,560 per GiB) cost the server 7-12 % more CPU per 1 GiB get (paired
/// runs; `perf`: system calls and the loopback's work per write).
pub const STREAM_SEND_LIMIT: usize = 1024 * 1024;

/// The crypto provider both sides use, with the order of preference above.
pub fn provider() -> Arc<CryptoProvider> {
    let base = aws_lc_rs::default_provider();
    let [aes128, aes256] = aes_gcm_suites();
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            aes128,
            aes256,
            aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![
            aws_lc_rs::kx_group::X25519MLKEM768,
            aws_lc_rs::kx_group::X25519,
        ],
        ..base
    })
}

/// AES-128-GCM and AES-256-GCM from the faster library for this CPU. aws-lc
/// is fastest where it has its AVX-512 code; without AVX-512 its best x86
/// code is the older AES-NI one, and ring's VAES-AVX2 code is faster: on
/// the AMD EPYC of our CI and bench machines ring seals 16 KiB records at
/// 5.2-5.5 GB/s and opens them at 4.5-5.2 GB/s, aws-lc at 2.0 and 2.7
/// (a loop over `LessSafeKey::seal_in_place_separate_tag`). Both
/// implement the same cipher suite, so the peers need not agree on this.
fn aes_gcm_suites() -> [SupportedCipherSuite; 2] {
    if prefer_aws_lc_gcm() {
        [
            aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ]
    } else {
        [
            ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ]
    }
}

/// aws-lc's own test for its AVX-512 AES-GCM (`crypto_gcm_avx512_enabled`).
#[cfg(target_arch = "x86_64")]
fn prefer_aws_lc_gcm() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("vaes")
        && has!("vpclmulqdq")
        && has!("avx512f")
        && has!("avx512dq")
        && has!("avx512bw")
        && has!("avx512vl")
}

/// Elsewhere (ARMv8) aws-lc's code is at least as fast as ring's.
#[cfg(not(target_arch = "x86_64"))]
fn prefer_aws_lc_gcm() -> bool {
    true
}

/// A server configuration for a certificate chain and its key.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // No resumption: no tickets, no session cache, no early data.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// A client configuration that trusts what `verifier` says.
pub fn client_config(verifier: Arc<dyn ServerCertVerifier>) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

/// A server key's fingerprint, the way `ssh-keygen -l` shows keys:
/// `SHA256:` and the unpadded base64 of the SHA-256 of the
/// SubjectPublicKeyInfo. It names the key, not the certificate, so a
/// renewed certificate for the same key keeps its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(spki: &[u8]) -> Fingerprint {
        let digest = Sha256::digest(spki);
        Fingerprint(format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        ))
    }

    /// The fingerprint of the key in a DER-encoded certificate.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<Fingerprint, webpki::Error> {
        let parsed = webpki::EndEntityCert::try_from(cert)?;
        Ok(Fingerprint::of_spki(&parsed.subject_public_key_info()))
    }

    /// Parses `SHA256:...` as a user types it (the prefix is required, so
    /// a fingerprint of another hash is never mistaken for one of ours).
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let text = text.trim();
        let Some(b64) = text.strip_prefix("SHA256:") else {
            return Err(format!(
                "not a key fingerprint: {text:?} (expected SHA256: and 43 base64 characters, as `ftpd fingerprint` prints)"
            ));
        };
        let b64 = b64.trim_end_matches('=');
        match base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64) {
            Ok(bytes) if bytes.len() == 32 => Ok(Fingerprint(format!("SHA256:{b64}"))),
            _ => Err(format!(
                "not a key fingerprint: {text:?} (expected SHA256: and 43 base64 characters, as `ftpd fingerprint` prints)"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `tls-exporter` channel binding of a connection whose handshake is
/// complete (RFC 9266: label `EXPORTER-Channel-Binding`, empty context).
pub fn channel_binding<Data>(
    conn: &rustls::ConnectionCommon<Data>,
) -> Result<ChannelBinding, rustls::Error> {
    let mut out = [0u8; CHANNEL_BINDING_LEN];
    conn.export_keying_material(&mut out, CHANNEL_BINDING_LABEL, Some(&[]))?;
    Ok(out)
}

/// "TLS 1.3, TLS13_AES_128_GCM_SHA256, X25519MLKEM768": what a connection
/// negotiated, for `ftpc ping` and the server's debug log.
pub fn describe(state: &CommonState) -> String {
    let version = match state.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "no TLS version yet".to_owned(),
    };
    let suite = state
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_else(|| "no cipher suite yet".into());
    let group = state
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_else(|| "no key exchange yet".into());
    format!("{version}, {suite}, {group}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_matches_sha256_of_spki_in_ssh_style() {
        // SHA-256 of the empty string, in unpadded base64.
        assert_eq!(
            Fingerprint::of_spki(b"").as_str(),
            "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
        );
    }

    #[test]
    fn parse_accepts_what_display_prints_and_refuses_the_rest() {
        let fp = Fingerprint::of_spki(b"key");
        assert_eq!(Fingerprint::parse(fp.as_str()), Ok(fp.clone()));
        assert_eq!(Fingerprint::parse(&format!(" {fp}= ")), Ok(fp));
        for bad in [
            "",
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
            "MD5:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
            "SHA256:short",
            "SHA256:!!!!pj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
        ] {
            assert!(Fingerprint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn provider_prefers_aes_gcm_and_the_hybrid_group() {
        let p = provider();
        assert_eq!(
            p.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(p.kx_groups[0].name(), rustls::NamedGroup::X25519MLKEM768);
        assert_eq!(p.kx_groups[1].name(), rustls::NamedGroup::X25519);
    }
}
