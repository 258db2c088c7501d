//! Login crypto: SCRAM (RFC 5802 / RFC 7677) with scrypt as the key
//! derivation, HMAC-SHA-256 and SHA-256.
//!
//! ```text
//! SaltedPassword  = scrypt(password, salt, N, r, p, 32 bytes)
//! ClientKey       = HMAC(SaltedPassword, "Client Key")
//! StoredKey       = SHA256(ClientKey)
//! ServerKey       = HMAC(SaltedPassword, "Server Key")
//! AuthMessage     = Transcript::auth_message()
//! ClientSignature = HMAC(StoredKey, AuthMessage)
//! ClientProof     = ClientKey XOR ClientSignature
//! ServerSignature = HMAC(ServerKey, AuthMessage)
//! ```
//!
//! The server keeps only `StoredKey` and `ServerKey`: a stolen user file
//! does not log anyone in, and the password never crosses the wire. The
//! server checks the proof by recovering `ClientKey` and hashing it; the
//! client checks the server's signature, so a server that does not know the
//! user's keys cannot pretend to have accepted the login.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::{Choice, ConstantTimeEq};
use thiserror::Error;

use crate::proto::{KdfParams, MIN_NONCE_LEN, NONCE_LEN, PROTOCOL_VERSION};
use crate::tls::ChannelBinding;

/// Key-derivation settings for new users: scrypt N = 2^15, r = 8, p = 1,
/// which takes 32 MiB of memory per derivation.
pub const DEFAULT_KDF: KdfParams = KdfParams {
    log_n: 15,
    r: 8,
    p: 1,
};

/// Length of every key and of the salted password (SHA-256 output).
pub const KEY_LEN: usize = 32;

/// Length of a user's salt.
pub const SALT_LEN: usize = 16;

/// Weakest and strongest scrypt settings a client accepts, so a hostile or
/// misconfigured server can neither downgrade the derivation nor make the
/// client burn gigabytes of memory.
const LOG_N_RANGE: std::ops::RangeInclusive<u8> = 14..=20;
const R_RANGE: std::ops::RangeInclusive<u32> = 8..=32;
const P_RANGE: std::ops::RangeInclusive<u32> = 1..=4;
const MAX_KDF_MEMORY: u64 = 1 << 30;

/// Domain tag at the start of every auth message, so a proof made for this
/// protocol can never be replayed as a signature for anything else.
const DOMAIN: &[u8] = b"ftpd-scram-v2";

type HmacSha256 = Hmac<Sha256>;

/// Why keys could not be derived.
#[derive(Debug, Error)]
pub enum ScramError {
    /// The scrypt settings are outside what this build accepts.
    #[error("{0}")]
    Kdf(String),
    /// The operating system's random number generator failed.
    #[error("reading random bytes from the operating system: {0}")]
    Random(std::io::Error),
}

/// What the server keeps for one user.
#[derive(Clone)]
pub struct StoredKeys {
    /// Random per-user salt, [`SALT_LEN`] bytes.
    pub salt: Vec<u8>,
    /// scrypt settings used to derive the keys.
    pub kdf: KdfParams,
    /// `SHA256(ClientKey)`: checks a client's proof.
    pub stored_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server's answer.
    pub server_key: [u8; KEY_LEN],
}

impl fmt::Debug for StoredKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKeys")
            .field("salt", &Hex(&self.salt))
            .field("kdf", &self.kdf)
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

/// What a client derives from the password; worth caching, since deriving
/// it is the slow part of a login.
#[derive(Clone)]
pub struct ClientKeys {
    /// `HMAC(SaltedPassword, "Client Key")`.
    pub client_key: [u8; KEY_LEN],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_LEN],
}

impl fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKeys")
            .field("client_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

/// Everything both sides saw during a login, bound into the proofs so that
/// changing any of it (user, nonces, salt, scrypt settings) breaks them.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// The user name from `LoginStart`.
    pub user: &'a str,
    /// The client's nonce from `LoginStart`.
    pub client_nonce: &'a [u8],
    /// The server's nonce from `Challenge`.
    pub server_nonce: &'a [u8],
    /// The salt from `Challenge`.
    pub salt: &'a [u8],
    /// The scrypt settings from `Challenge`.
    pub kdf: KdfParams,
    /// The TLS channel's `tls-exporter` binding; `None` only over
    /// `--plaintext`. Each end takes it from its own side of the channel,
    /// so a relay that terminates TLS (two channels) breaks both proofs.
    pub channel_binding: Option<&'a ChannelBinding>,
}

impl Transcript<'_> {
    /// The bytes both sides sign.
    ///
    /// ```text
    /// "ftpd-scram-v2" | PROTOCOL_VERSION: u32 BE
    /// | binding: 0 (plaintext) or 1 and the 32 bytes of tls-exporter
    /// | len: u32 BE | user | len | client_nonce | len | server_nonce | len | salt
    /// | log_n: u8 | r: u32 BE | p: u32 BE
    /// ```
    ///
    /// Every variable field carries its length, so no two different
    /// transcripts encode to the same bytes.
    pub fn auth_message(&self) -> Vec<u8> {
        let fields = [
            self.user.as_bytes(),
            self.client_nonce,
            self.server_nonce,
            self.salt,
        ];
        let mut out = Vec::with_capacity(
            DOMAIN.len() + 4 + 33 + fields.iter().map(|f| 4 + f.len()).sum::<usize>() + 9,
        );
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        match self.channel_binding {
            None => out.push(0),
            Some(binding) => {
                out.push(1);
                out.extend_from_slice(binding);
            }
        }
        for field in fields {
            // Fields come from bounded frames, far below 4 GiB; saturating
            // keeps the encoding total even if that ever changed.
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field);
        }
        out.push(self.kdf.log_n);
        out.extend_from_slice(&self.kdf.r.to_be_bytes());
        out.extend_from_slice(&self.kdf.p.to_be_bytes());
        out
    }
}

/// Checks scrypt settings offered by a server before deriving anything:
/// too weak means an attacker could be harvesting cheap-to-crack proofs, too
/// expensive means the client could be pushed to exhaust its memory.
pub fn check_kdf(kdf: &KdfParams) -> Result<(), String> {
    let describe = format!("scrypt N=2^{}, r={}, p={}", kdf.log_n, kdf.r, kdf.p);
    if kdf.log_n < *LOG_N_RANGE.start() || kdf.r < *R_RANGE.start() || kdf.p < *P_RANGE.start() {
        return Err(format!(
            "server asked for weak key derivation ({describe}); refusing"
        ));
    }
    let in_range =
        kdf.log_n <= *LOG_N_RANGE.end() && kdf.r <= *R_RANGE.end() && kdf.p <= *P_RANGE.end();
    // Only computed within the ranges, where it cannot overflow.
    if !in_range || 128 * u64::from(kdf.r) * (1u64 << kdf.log_n) * u64::from(kdf.p) > MAX_KDF_MEMORY
    {
        return Err(format!(
            "server asked for too expensive key derivation ({describe}); refusing"
        ));
    }
    Ok(())
}

/// Derives a client's keys from the password and the server's challenge.
///
/// Refuses settings that [`check_kdf`] refuses, so a caller that forgot to
/// check cannot be made to run an unbounded derivation.
pub fn client_keys(
    password: &[u8],
    salt: &[u8],
    kdf: &KdfParams,
) -> Result<ClientKeys, ScramError> {
    check_kdf(kdf).map_err(ScramError::Kdf)?;
    let params = scrypt::Params::new(kdf.log_n, kdf.r, kdf.p)
        .map_err(|e| ScramError::Kdf(format!("scrypt settings {kdf:?}: {e}")))?;
    let mut salted = [0u8; KEY_LEN];
    scrypt::scrypt(password, salt, &params, &mut salted)
        .map_err(|e| ScramError::Kdf(format!("scrypt: {e}")))?;
    let keys = ClientKeys {
        client_key: hmac(&salted, &[b"Client Key"]),
        server_key: hmac(&salted, &[b"Server Key"]),
    };
    // Not a guarantee (copies may remain), but keeps the obvious one short-lived.
    salted.fill(0);
    Ok(keys)
}

/// Derives what the server stores for a new password, with a fresh random
/// salt. The salted password and `ClientKey` are dropped here.
pub fn stored_keys(password: &[u8], kdf: KdfParams) -> Result<StoredKeys, ScramError> {
    let mut salt = vec![0u8; SALT_LEN];
    fill_random(&mut salt).map_err(ScramError::Random)?;
    let mut keys = client_keys(password, &salt, &kdf)?;
    let stored = StoredKeys {
        salt,
        kdf,
        stored_key: sha256(&keys.client_key),
        server_key: keys.server_key,
    };
    keys.client_key.fill(0);
    Ok(stored)
}

/// The client's proof: `ClientKey XOR HMAC(SHA256(ClientKey), AuthMessage)`.
pub fn client_proof(keys: &ClientKeys, auth_message: &[u8]) -> [u8; KEY_LEN] {
    let stored_key = sha256(&keys.client_key);
    let signature = hmac(&stored_key, &[auth_message]);
    xor(&keys.client_key, &signature)
}

/// Checks a client's proof against the user's `StoredKey`.
///
/// Runs in constant time, also when `proof` has the wrong length: that case
/// is padded and checked like any other, then rejected.
pub fn verify_client_proof(stored_key: &[u8; KEY_LEN], auth_message: &[u8], proof: &[u8]) -> bool {
    let length_ok = Choice::from(u8::from(proof.len() == KEY_LEN));
    let mut padded = [0u8; KEY_LEN];
    let n = proof.len().min(KEY_LEN);
    padded[..n].copy_from_slice(&proof[..n]);

    let signature = hmac(stored_key, &[auth_message]);
    let client_key = xor(&padded, &signature);
    let recovered = sha256(&client_key);
    bool::from(recovered.ct_eq(stored_key) & length_ok)
}

/// The server's signature: `HMAC(ServerKey, AuthMessage)`.
pub fn server_signature(server_key: &[u8; KEY_LEN], auth_message: &[u8]) -> [u8; KEY_LEN] {
    hmac(server_key, &[auth_message])
}

/// Checks the server's signature in constant time; the client calls this
/// before trusting `LoginOk`.
pub fn verify_server_signature(keys: &ClientKeys, auth_message: &[u8], sig: &[u8]) -> bool {
    let expected = server_signature(&keys.server_key, auth_message);
    // A length mismatch is not secret; subtle answers it without comparing.
    bool::from(expected.as_slice().ct_eq(sig))
}

/// Why a login failed on the client's side, before or after the server
/// answered.
#[derive(Debug, Error)]
pub enum ClientLoginError {
    /// The server's nonce is too short to make a challenge unpredictable.
    #[error("protocol error: the server's nonce has only {0} bytes")]
    ShortNonce(usize),
    /// The server asked for scrypt settings outside the accepted range.
    #[error("cannot log in: {0}")]
    Kdf(String),
    /// The server could not prove it knows the user's `ServerKey`.
    #[error("the server could not prove it knows your password; refusing it")]
    ServerUnproven,
}

/// The client's side of the login, without I/O: [`ClientLogin::start`]
/// gives what `LoginStart` carries, [`ClientLogin::on_challenge`] the
/// proof for `LoginProof`, and [`AwaitingOk::on_success`] checks the
/// server's signature from `LoginOk`. ftpc and ftpload both drive it, so
/// the transcript and the channel binding live only here.
pub struct ClientLogin {
    user: String,
    client_nonce: [u8; NONCE_LEN],
    channel_binding: Option<ChannelBinding>,
}

/// A login that sent its proof and waits for the server's signature.
pub struct AwaitingOk {
    keys: ClientKeys,
    auth_message: Vec<u8>,
}

impl ClientLogin {
    /// Starts a login of `user` over a channel with `channel_binding`
    /// (`None` only in clear), with a fresh nonce.
    pub fn start(
        user: &str,
        channel_binding: Option<ChannelBinding>,
    ) -> std::io::Result<ClientLogin> {
        let mut client_nonce = [0u8; NONCE_LEN];
        fill_random(&mut client_nonce)?;
        Ok(ClientLogin {
            user: user.to_owned(),
            client_nonce,
            channel_binding,
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The nonce `LoginStart` carries.
    pub fn client_nonce(&self) -> &[u8] {
        &self.client_nonce
    }

    /// Checks the challenge, derives (or looks up) the keys with `keys`,
    /// and returns the proof for `LoginProof`. The challenge is checked
    /// before `keys` runs: a hostile server could ask for settings that
    /// take minutes or gigabytes.
    pub fn on_challenge<E>(
        self,
        server_nonce: &[u8],
        salt: &[u8],
        kdf: KdfParams,
        keys: impl FnOnce(&[u8], &KdfParams) -> Result<ClientKeys, E>,
    ) -> Result<Result<([u8; KEY_LEN], AwaitingOk), E>, ClientLoginError> {
        if server_nonce.len() < MIN_NONCE_LEN {
            return Err(ClientLoginError::ShortNonce(server_nonce.len()));
        }
        check_kdf(&kdf).map_err(ClientLoginError::Kdf)?;
        let keys = match keys(salt, &kdf) {
            Ok(keys) => keys,
            Err(e) => return Ok(Err(e)),
        };
        let auth_message = Transcript {
            user: &self.user,
            client_nonce: &self.client_nonce,
            server_nonce,
            salt,
            kdf,
            channel_binding: self.channel_binding.as_ref(),
        }
        .auth_message();
        let proof = client_proof(&keys, &auth_message);
        Ok(Ok((proof, AwaitingOk { keys, auth_message })))
    }
}

impl AwaitingOk {
    /// Checks the server's signature from `LoginOk`.
    pub fn on_success(&self, server_signature: &[u8]) -> Result<(), ClientLoginError> {
        if verify_server_signature(&self.keys, &self.auth_message, server_signature) {
            Ok(())
        } else {
            Err(ClientLoginError::ServerUnproven)
        }
    }
}

/// Fills `buf` from the operating system's random number generator.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    getrandom::fill(buf).map_err(|e| match e.raw_os_error() {
        Some(errno) => std::io::Error::from_raw_os_error(errno),
        None => std::io::Error::other(e.to_string()),
    })
}

/// Keys for a user that does not exist, so the server can answer
/// `LoginStart` for any name with a challenge of the same shape, and a
/// login attempt cannot tell unknown users from known ones.
///
/// Derived from the server's secret, so the same name gets the same salt
/// across restarts (a changing salt would give the game away). They never
/// verify: no `ClientKey` hashes to a key that is itself an HMAC output,
/// short of breaking SHA-256.
pub fn decoy_keys(server_secret: &[u8; KEY_LEN], user: &str) -> StoredKeys {
    let salt = hmac(server_secret, &[b"salt:", user.as_bytes()]);
    StoredKeys {
        salt: salt[..SALT_LEN].to_vec(),
        kdf: DEFAULT_KDF,
        stored_key: hmac(server_secret, &[b"stored:", user.as_bytes()]),
        server_key: hmac(server_secret, &[b"server:", user.as_bytes()]),
    }
}

/// HMAC-SHA-256 over the concatenation of `parts`.
fn hmac(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC zero-pads keys shorter than the block (RFC 2104, step 1), so the
    // 32-byte key padded to the 64-byte block is the same key; going through
    // the fixed-size constructor leaves no error case to handle.
    let mut block = hmac::digest::Key::<HmacSha256>::default();
    block[..KEY_LEN].copy_from_slice(key);
    let mut mac = <HmacSha256 as KeyInit>::new(&block);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Lower-case hex for `Debug` output of non-secret bytes.
struct Hex<'a>(&'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Smallest settings the client accepts, to keep the tests quick.
    const FAST: KdfParams = KdfParams {
        log_n: 14,
        r: 8,
        p: 1,
    };

    fn transcript<'a>(keys: &'a StoredKeys) -> Transcript<'a> {
        Transcript {
            user: "alice",
            client_nonce: b"client nonce 0123456789ab",
            server_nonce: b"server nonce 0123456789ab",
            salt: &keys.salt,
            kdf: keys.kdf,
            channel_binding: Some(&[9u8; 32]),
        }
    }

    #[test]
    fn hmac_with_padded_key_matches_hmac_with_short_key() {
        let key = [7u8; KEY_LEN];
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&key).unwrap();
        mac.update(b"Client Key");
        let expected: [u8; KEY_LEN] = mac.finalize().into_bytes().into();
        assert_eq!(hmac(&key, &[b"Client ", b"Key"]), expected);
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        // RFC 4231 test case 2 uses the 4-byte key "Jefe"; zero-padding it
        // to 32 bytes must not change the result.
        let mut key = [0u8; KEY_LEN];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac(&key, &[b"what do ya want for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn client_keys_match_an_independent_implementation() {
        // From Python: hashlib.scrypt(b"pencil", salt=b"0123456789abcdef",
        // n=2**14, r=8, p=1, dklen=32), then hmac.new(sp, b"Client Key", "sha256").
        let keys = client_keys(b"pencil", b"0123456789abcdef", &FAST).unwrap();
        let hex = |k: &[u8]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(&keys.client_key),
            "d2f34469d24fd5c6fa822578002fc906fe916735c82da82914e29225ff906ac9"
        );
        assert_eq!(
            hex(&keys.server_key),
            "43e4beb4ef45a42864f5b897fd7faa23cd40b21e5d2f9a7b0e982d7ce1b59bb8"
        );
    }

    #[test]
    fn round_trip() {
        let stored = stored_keys(b"correct horse", FAST).unwrap();
        assert_eq!(stored.salt.len(), SALT_LEN);
        let t = transcript(&stored);
        let am = t.auth_message();

        let client = client_keys(b"correct horse", &stored.salt, &stored.kdf).unwrap();
        let proof = client_proof(&client, &am);
        assert!(verify_client_proof(&stored.stored_key, &am, &proof));

        let sig = server_signature(&stored.server_key, &am);
        assert!(verify_server_signature(&client, &am, &sig));
        assert!(!verify_server_signature(&client, &am, &sig[..31]));
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!verify_server_signature(&client, &am, &bad));
    }

    #[test]
    fn client_login_round_trip_and_channel_mismatch() {
        let stored = stored_keys(b"pw", FAST).unwrap();
        let run = |client_binding: [u8; 32], server_binding: [u8; 32]| {
            let login = ClientLogin::start("alice", Some(client_binding)).unwrap();
            let server_nonce = [5u8; NONCE_LEN];
            let server_am = Transcript {
                user: "alice",
                client_nonce: login.client_nonce(),
                server_nonce: &server_nonce,
                salt: &stored.salt,
                kdf: stored.kdf,
                channel_binding: Some(&server_binding),
            }
            .auth_message();
            let (proof, waiting) = login
                .on_challenge(&server_nonce, &stored.salt, stored.kdf, |salt, kdf| {
                    client_keys(b"pw", salt, kdf)
                })
                .unwrap()
                .unwrap();
            let accepted = verify_client_proof(&stored.stored_key, &server_am, &proof);
            let signed = waiting
                .on_success(&server_signature(&stored.server_key, &server_am))
                .is_ok();
            (accepted, signed)
        };
        assert_eq!(run([1; 32], [1; 32]), (true, true));
        // Two different channels (a relay in the middle): neither side's
        // proof holds on the other's channel.
        assert_eq!(run([1; 32], [2; 32]), (false, false));
    }

    #[test]
    fn client_login_refuses_weak_challenges_before_deriving() {
        let login = || ClientLogin::start("alice", None).unwrap();
        let never = |_: &[u8], _: &KdfParams| -> Result<ClientKeys, ()> { panic!("derived") };
        assert!(matches!(
            login().on_challenge(&[0; MIN_NONCE_LEN - 1], b"salt", FAST, never),
            Err(ClientLoginError::ShortNonce(15))
        ));
        let weak = KdfParams { log_n: 10, ..FAST };
        assert!(matches!(
            login().on_challenge(&[0; NONCE_LEN], b"salt", weak, never),
            Err(ClientLoginError::Kdf(_))
        ));
    }

    #[test]
    fn wrong_password_fails() {
        let stored = stored_keys(b"correct horse", FAST).unwrap();
        let am = transcript(&stored).auth_message();
        let client = client_keys(b"battery staple", &stored.salt, &stored.kdf).unwrap();
        assert!(!verify_client_proof(
            &stored.stored_key,
            &am,
            &client_proof(&client, &am)
        ));
        let sig = server_signature(&stored.server_key, &am);
        assert!(!verify_server_signature(&client, &am, &sig));
    }

    #[test]
    fn tampered_transcript_fails() {
        let stored = stored_keys(b"pw", FAST).unwrap();
        let t = transcript(&stored);
        let client = client_keys(b"pw", &stored.salt, &stored.kdf).unwrap();
        let proof = client_proof(&client, &t.auth_message());

        let other_salt = [0u8; SALT_LEN];
        let variants = [
            Transcript {
                channel_binding: Some(&[8u8; 32]),
                ..t
            },
            Transcript {
                channel_binding: None,
                ..t
            },
            Transcript { user: "alicf", ..t },
            Transcript { user: "alic", ..t },
            Transcript {
                client_nonce: b"client nonce 0123456789aB",
                ..t
            },
            Transcript {
                server_nonce: b"server nonce 0123456789aB",
                ..t
            },
            Transcript {
                salt: &other_salt,
                ..t
            },
            Transcript {
                kdf: KdfParams { log_n: 15, ..t.kdf },
                ..t
            },
            Transcript {
                kdf: KdfParams { r: 9, ..t.kdf },
                ..t
            },
            Transcript {
                kdf: KdfParams { p: 2, ..t.kdf },
                ..t
            },
        ];
        for v in variants {
            let am = v.auth_message();
            assert_ne!(am, t.auth_message());
            assert!(
                !verify_client_proof(&stored.stored_key, &am, &proof),
                "{v:?}"
            );
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = Transcript {
            user: "ab",
            client_nonce: b"c",
            server_nonce: b"",
            salt: b"",
            kdf: FAST,
            channel_binding: None,
        };
        let b = Transcript {
            user: "a",
            client_nonce: b"bc",
            ..a
        };
        assert_ne!(a.auth_message(), b.auth_message());
        assert!(a.auth_message().starts_with(DOMAIN));
    }

    #[test]
    fn wrong_length_proof_is_false() {
        let stored = stored_keys(b"pw", FAST).unwrap();
        let am = transcript(&stored).auth_message();
        let client = client_keys(b"pw", &stored.salt, &stored.kdf).unwrap();
        let proof = client_proof(&client, &am);
        let mut long = proof.to_vec();
        long.push(0);
        assert!(!verify_client_proof(&stored.stored_key, &am, &long));
        assert!(!verify_client_proof(&stored.stored_key, &am, &proof[..31]));
        assert!(!verify_client_proof(&stored.stored_key, &am, &[]));
    }

    #[test]
    fn decoy_is_deterministic_and_never_verifies() {
        let secret = [42u8; KEY_LEN];
        let a = decoy_keys(&secret, "mallory");
        let b = decoy_keys(&secret, "mallory");
        assert_eq!(a.salt, b.salt);
        assert_eq!(a.stored_key, b.stored_key);
        assert_eq!(a.server_key, b.server_key);
        assert_eq!(a.salt.len(), SALT_LEN);
        assert_eq!(a.kdf, DEFAULT_KDF);

        let c = decoy_keys(&secret, "mallorz");
        assert_ne!(a.salt, c.salt);
        assert_ne!(decoy_keys(&[43u8; KEY_LEN], "mallory").salt, a.salt);

        let t = Transcript {
            user: "mallory",
            client_nonce: b"n1",
            server_nonce: b"n2",
            salt: &a.salt,
            kdf: a.kdf,
            channel_binding: None,
        };
        let am = t.auth_message();
        // Any password: derive with the decoy's salt but quick settings.
        let client = client_keys(b"", &a.salt, &FAST).unwrap();
        assert!(!verify_client_proof(
            &a.stored_key,
            &am,
            &client_proof(&client, &am)
        ));
        assert!(!verify_client_proof(&a.stored_key, &am, &[0u8; KEY_LEN]));
    }

    #[test]
    fn debug_redacts_keys() {
        let keys = decoy_keys(&[1u8; KEY_LEN], "x");
        let shown = format!("{keys:?}");
        assert!(shown.contains("<redacted>"));
        let hex: String = keys.stored_key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex));
        assert!(!shown.contains(&format!("{:?}", keys.stored_key)));
        let client = ClientKeys {
            client_key: [9; KEY_LEN],
            server_key: [9; KEY_LEN],
        };
        assert!(!format!("{client:?}").contains('9'));
    }

    #[test]
    fn kdf_bounds() {
        assert!(check_kdf(&DEFAULT_KDF).is_ok());
        assert!(check_kdf(&FAST).is_ok());
        assert!(
            check_kdf(&KdfParams {
                log_n: 20,
                r: 8,
                p: 1
            })
            .is_ok()
        );

        let weak = check_kdf(&KdfParams {
            log_n: 10,
            r: 8,
            p: 1,
        })
        .unwrap_err();
        assert!(weak.contains("weak") && weak.contains("N=2^10"), "{weak}");
        assert!(
            check_kdf(&KdfParams {
                log_n: 13,
                r: 8,
                p: 1
            })
            .is_err()
        );
        assert!(
            check_kdf(&KdfParams {
                log_n: 15,
                r: 7,
                p: 1
            })
            .is_err()
        );
        assert!(
            check_kdf(&KdfParams {
                log_n: 15,
                r: 8,
                p: 0
            })
            .is_err()
        );

        let big = check_kdf(&KdfParams {
            log_n: 21,
            r: 8,
            p: 1,
        })
        .unwrap_err();
        assert!(big.contains("too expensive"), "{big}");
        assert!(
            check_kdf(&KdfParams {
                log_n: 15,
                r: 33,
                p: 1
            })
            .is_err()
        );
        assert!(
            check_kdf(&KdfParams {
                log_n: 15,
                r: 8,
                p: 5
            })
            .is_err()
        );
        assert!(
            check_kdf(&KdfParams {
                log_n: 255,
                r: 8,
                p: 1
            })
            .is_err()
        );
        // Each within its range, but together over 1 GiB.
        assert!(
            check_kdf(&KdfParams {
                log_n: 20,
                r: 16,
                p: 1
            })
            .is_err()
        );
        assert!(
            check_kdf(&KdfParams {
                log_n: 18,
                r: 32,
                p: 4
            })
            .is_err()
        );
        assert!(
            check_kdf(&KdfParams {
                log_n: 18,
                r: 16,
                p: 2
            })
            .is_ok()
        );
    }

    #[test]
    fn derivation_refuses_out_of_range_settings() {
        let weak = KdfParams {
            log_n: 4,
            r: 8,
            p: 1,
        };
        assert!(matches!(
            client_keys(b"pw", b"salt", &weak),
            Err(ScramError::Kdf(_))
        ));
        assert!(matches!(stored_keys(b"pw", weak), Err(ScramError::Kdf(_))));
    }
}
