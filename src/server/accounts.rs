//! Users as the running server knows them: credentials from the user file,
//! plus the figures every session of a user shares (quota used and reserved,
//! open sessions, uploads in flight).
//!
//! Usage is computed from disk once when a user is first loaded (at start,
//! or when the user file gains a user) and kept current as bytes are
//! written, replaced and deleted; no request walks the tree. Uploads
//! reserve space before they start, so concurrent uploads of one user can
//! never overshoot the quota together.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::log::quoted;
use crate::jail::{Jail, VPath};
use crate::proto::{ErrorCode, KdfParams, QuotaInfo};
use crate::scram::{self, StoredKeys};
use crate::size::format_size;
use crate::users::{self, UserDb};
use crate::{log, usage};

/// One user's shared state.
pub struct Account {
    pub quota: u64,
    pub keys: StoredKeys,
    pub jail: Arc<Jail>,
    /// Bytes stored in the home, partial uploads included.
    pub used: u64,
    /// Bytes promised to uploads in progress and not written yet.
    pub reserved: u64,
    pub sessions: u32,
    /// Paths with an upload in progress (the second upload is refused as busy).
    pub uploads: HashSet<VPath>,
    /// False once the user was deleted from the user file; running sessions
    /// finish, new logins fail.
    pub active: bool,
}

impl Account {
    /// The figures a client sees.
    pub fn quota_info(&self) -> QuotaInfo {
        QuotaInfo {
            used: self.used,
            reserved: self.reserved,
            limit: self.quota,
        }
    }
}

/// The credentials a login is checked against.
pub struct Credentials {
    pub keys: StoredKeys,
    /// False for a decoy: the login goes through the same steps and fails.
    pub known: bool,
}

/// All users.
pub struct Accounts {
    root: PathBuf,
    stamp: Option<users::Stamp>,
    secret: [u8; 32],
    partial_ttl: Duration,
    map: HashMap<String, Account>,
    /// Key-derivation settings shown for unknown users: the most common
    /// among real users, so a decoy does not stand out by its settings.
    decoy_kdf: KdfParams,
}

impl Accounts {
    /// Loads the user file, opens every home and computes its usage.
    pub fn load(root: &Path, partial_ttl: Duration) -> anyhow::Result<Accounts> {
        let secret = users::load_or_create_secret(root)?;
        let mut accounts = Accounts {
            root: root.to_path_buf(),
            stamp: None,
            secret,
            partial_ttl,
            map: HashMap::new(),
            decoy_kdf: scram::DEFAULT_KDF,
        };
        accounts.reload()?;
        Ok(accounts)
    }

    /// Re-reads the user file if it changed since it was last read; a
    /// broken file is logged and the old users stay in force.
    pub fn refresh(&mut self) {
        if users::file_stamp(&self.root) != self.stamp
            && let Err(e) = self.reload()
        {
            log!(Error, "user file not reloaded: {e:#}");
        }
    }

    /// Reads the user file and merges it into the running state.
    pub fn reload(&mut self) -> anyhow::Result<()> {
        let stamp = users::file_stamp(&self.root);
        let db = UserDb::load(&self.root)?;
        for user in db.iter() {
            if let Some(acc) = self.map.get_mut(&user.name) {
                acc.quota = user.quota;
                acc.keys = user.keys.clone();
                acc.active = true;
                continue;
            }
            match self.open_account(&user.name) {
                Ok((jail, used)) => {
                    self.map.insert(
                        user.name.clone(),
                        Account {
                            quota: user.quota,
                            keys: user.keys.clone(),
                            jail: Arc::new(jail),
                            used,
                            reserved: 0,
                            sessions: 0,
                            uploads: HashSet::new(),
                            active: true,
                        },
                    );
                }
                Err(e) => log!(Error, "user {}: home not usable: {e}", quoted(&user.name)),
            }
        }
        self.map.retain(|name, acc| {
            let present = db.get(name).is_some();
            acc.active = present;
            present || acc.sessions > 0 || !acc.uploads.is_empty()
        });
        self.decoy_kdf = most_common_kdf(&db);
        self.stamp = stamp;
        Ok(())
    }

    /// Opens a user's home (creating it if missing), sweeps stale partial
    /// uploads and counts what is stored.
    fn open_account(&self, name: &str) -> std::io::Result<(Jail, u64)> {
        let home = users::home_dir(&self.root, name);
        std::fs::create_dir_all(&home)?;
        let jail = Jail::open(&home)?;
        match jail.clean_stale_partials(self.partial_ttl) {
            Ok(0) => {}
            Ok(freed) => log!(
                Info,
                "user {}: removed stale partial uploads ({freed} bytes)",
                quoted(name)
            ),
            Err(e) => log!(
                Warn,
                "user {}: sweeping partial uploads failed: {e}",
                quoted(name)
            ),
        }
        let used = usage::disk_usage(&home)?;
        Ok((jail, used))
    }

    /// The credentials to check a login for `name` against: the user's, or
    /// a decoy that looks the same and can never verify.
    pub fn credentials(&self, name: &str) -> Credentials {
        // The decoy is derived for every name, known or not, so the time a
        // challenge takes does not tell which names exist.
        let mut decoy = std::hint::black_box(scram::decoy_keys(&self.secret, name));
        decoy.kdf = self.decoy_kdf;
        match self.map.get(name).filter(|a| a.active) {
            Some(acc) => Credentials {
                keys: acc.keys.clone(),
                known: true,
            },
            None => Credentials {
                keys: decoy,
                known: false,
            },
        }
    }

    /// A user's state.
    pub fn get(&self, name: &str) -> Option<&Account> {
        self.map.get(name)
    }

    /// A user's state, to update.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Account> {
        self.map.get_mut(name)
    }

    /// Users and their homes, for the periodic sweep of stale partials.
    pub fn jails(&self) -> Vec<(String, Arc<Jail>)> {
        self.map
            .iter()
            .map(|(name, acc)| (name.clone(), Arc::clone(&acc.jail)))
            .collect()
    }

    /// How long an unfinished upload is kept.
    pub fn partial_ttl(&self) -> Duration {
        self.partial_ttl
    }

    /// The user's quota figures.
    pub fn quota_info(&self, name: &str) -> QuotaInfo {
        self.map
            .get(name)
            .map(Account::quota_info)
            .unwrap_or(QuotaInfo {
                used: 0,
                reserved: 0,
                limit: 0,
            })
    }

    /// Reserves `need` bytes for an upload, or says why it does not fit.
    pub fn reserve(&mut self, name: &str, need: u64) -> Result<(), (ErrorCode, String)> {
        let Some(acc) = self.map.get_mut(name) else {
            return Err((ErrorCode::Internal, "account not loaded".into()));
        };
        let available = acc.quota_info().available();
        if need > available {
            return Err((
                ErrorCode::QuotaExceeded,
                format!(
                    "quota exceeded: need {}, {} available",
                    format_size(need),
                    format_size(available)
                ),
            ));
        }
        acc.reserved += need;
        Ok(())
    }

    /// Adjusts a user's figures: bytes written (+) or freed (-) on disk, and
    /// reservation taken back. Saturates rather than wraps: a figure that
    /// would go negative is a bookkeeping slip, not a reason to crash.
    pub fn adjust(&mut self, name: &str, used_delta: i64, release: u64) {
        if let Some(acc) = self.map.get_mut(name) {
            acc.used = acc.used.saturating_add_signed(used_delta);
            acc.reserved = acc.reserved.saturating_sub(release);
        }
    }
}

/// The key-derivation settings most users have (the default when none).
fn most_common_kdf(db: &UserDb) -> KdfParams {
    let mut counts: HashMap<(u8, u32, u32), usize> = HashMap::new();
    for user in db.iter() {
        let k = user.keys.kdf;
        *counts.entry((k.log_n, k.r, k.p)).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(key, count)| (*count, *key))
        .map_or(scram::DEFAULT_KDF, |((log_n, r, p), _)| KdfParams {
            log_n,
            r,
            p,
        })
}
