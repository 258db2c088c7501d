//! Users as the running server knows them: credentials from the user file,
//! plus the figures every session of a user shares (quota used and reserved,
//! open sessions, uploads in flight, files being downloaded).
//!
//! Usage is recounted from disk when a user is first loaded (at start, or
//! on a helper thread when the user file gains a user) and kept current
//! from what every change reports ([`Change`]); no request walks the tree.
//! Uploads and folder creation reserve space before they start, so
//! concurrent sessions of one user can never overshoot the quota together.
//!
//! A file that loses its last name while a download still reads it keeps
//! occupying the disk: its cost stays charged ("pinned") until the last
//! such download ends.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::log::quoted;
use crate::jail::{Change, FileId, Jail, VPath};
use crate::proto::{ErrorCode, KdfParams, QuotaInfo};
use crate::scram::{self, StoredKeys};
use crate::size::format_size;
use crate::users::{self, UserDb};
use crate::{log, usage};

/// A file some downloads hold open.
#[derive(Debug, Default)]
struct Reading {
    readers: u32,
    /// Cost kept charged because the file lost its last name meanwhile.
    pinned: u64,
}

/// One user's shared state.
pub struct Account {
    pub quota: u64,
    /// Most files and folders the home may hold, if limited.
    pub max_files: Option<u64>,
    /// Entries promised to creations in progress.
    reserved_entries: u64,
    pub keys: StoredKeys,
    pub jail: Arc<Jail>,
    /// What the home costs ([`usage::charge`]), unfinished uploads and
    /// pinned files included.
    pub used: u64,
    /// Files and folders in the home.
    pub entries: u64,
    /// Bytes promised to work in progress and not written yet.
    pub reserved: u64,
    pub sessions: u32,
    /// Paths with an upload in progress (the second upload is refused as busy).
    pub uploads: HashSet<VPath>,
    /// Files being downloaded.
    reading: HashMap<FileId, Reading>,
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
            files: self.entries,
            max_files: self.max_files,
        }
    }
}

/// The credentials a login is checked against.
pub struct Credentials {
    pub keys: StoredKeys,
    /// False for a decoy: the login goes through the same steps and fails.
    pub known: bool,
}

/// A user in the user file whose home is being opened and recounted.
struct Pending {
    quota: u64,
    max_files: Option<u64>,
    keys: StoredKeys,
}

/// A home opened and recounted (on a helper thread).
pub struct OpenedHome {
    jail: Jail,
    usage: usage::Usage,
}

/// Opens a user's home (creating it if missing), sweeps stale partial
/// uploads and recounts what it holds. Walks the whole tree: never on the
/// reactor thread once the server runs.
pub fn open_home(root: &Path, name: &str, partial_ttl: Duration) -> std::io::Result<OpenedHome> {
    let home = users::home_dir(root, name);
    std::fs::create_dir_all(&home)?;
    let jail = Jail::open(&home)?;
    match jail.clean_stale_partials(partial_ttl, &HashSet::new()) {
        Ok(change) if change.bytes == 0 => {}
        Ok(change) => log!(
            Info,
            "user {}: removed stale partial uploads ({} bytes)",
            quoted(name),
            change.bytes.unsigned_abs()
        ),
        Err(e) => log!(
            Warn,
            "user {}: sweeping partial uploads failed: {e}",
            quoted(name)
        ),
    }
    let usage = usage::tally(&home)?;
    Ok(OpenedHome { jail, usage })
}

/// All users.
pub struct Accounts {
    root: PathBuf,
    stamp: Option<users::Stamp>,
    secret: [u8; 32],
    partial_ttl: Duration,
    map: HashMap<String, Account>,
    pending: HashMap<String, Pending>,
    /// Key-derivation settings shown for unknown users: the most common
    /// among real users, so a decoy does not stand out by its settings.
    decoy_kdf: KdfParams,
}

impl Accounts {
    /// Loads the user file, opens every home and computes its usage (at
    /// start, before anyone is served).
    pub fn load(root: &Path, partial_ttl: Duration) -> anyhow::Result<Accounts> {
        let secret = users::load_or_create_secret(root)?;
        let mut accounts = Accounts {
            root: root.to_path_buf(),
            stamp: None,
            secret,
            partial_ttl,
            map: HashMap::new(),
            pending: HashMap::new(),
            decoy_kdf: scram::DEFAULT_KDF,
        };
        for name in accounts.reload()? {
            let opened = open_home(root, &name, partial_ttl);
            accounts.opened(&name, opened);
        }
        Ok(accounts)
    }

    /// Re-reads the user file if it changed since it was last read; a
    /// broken file is logged and the old users stay in force. Returns the
    /// users whose homes must be opened ([`open_home`], then
    /// [`Accounts::opened`]).
    pub fn refresh(&mut self) -> Vec<String> {
        if users::file_stamp(&self.root) == self.stamp {
            return Vec::new();
        }
        self.reload().unwrap_or_else(|e| {
            log!(Error, "user file not reloaded: {e:#}");
            Vec::new()
        })
    }

    /// Reads the user file and merges it into the running state; returns
    /// the users new to the server, whose homes must be opened.
    pub fn reload(&mut self) -> anyhow::Result<Vec<String>> {
        let stamp = users::file_stamp(&self.root);
        let db = UserDb::load(&self.root)?;
        let mut new = Vec::new();
        for user in db.iter() {
            if let Some(acc) = self.map.get_mut(&user.name) {
                acc.quota = user.quota;
                acc.max_files = user.max_files;
                acc.keys = user.keys.clone();
                acc.active = true;
                continue;
            }
            let pending = Pending {
                quota: user.quota,
                max_files: user.max_files,
                keys: user.keys.clone(),
            };
            if self.pending.insert(user.name.clone(), pending).is_none() {
                new.push(user.name.clone());
            }
        }
        self.map.retain(|name, acc| {
            let present = db.get(name).is_some();
            acc.active = present;
            present || acc.sessions > 0 || !acc.uploads.is_empty() || !acc.reading.is_empty()
        });
        self.pending.retain(|name, _| db.get(name).is_some());
        self.decoy_kdf = most_common_kdf(&db);
        self.stamp = stamp;
        Ok(new)
    }

    /// A home from [`open_home`] is ready: the user can log in.
    pub fn opened(&mut self, name: &str, opened: std::io::Result<OpenedHome>) {
        // Deleted again while its home was being opened: nothing to do.
        let Some(pending) = self.pending.remove(name) else {
            return;
        };
        match opened {
            Ok(home) => {
                self.map.insert(
                    name.to_owned(),
                    Account {
                        quota: pending.quota,
                        max_files: pending.max_files,
                        reserved_entries: 0,
                        keys: pending.keys,
                        jail: Arc::new(home.jail),
                        used: home.usage.bytes,
                        entries: home.usage.entries,
                        reserved: 0,
                        sessions: 0,
                        uploads: HashSet::new(),
                        reading: HashMap::new(),
                        active: true,
                    },
                );
            }
            Err(e) => log!(Error, "user {}: home not usable: {e}", quoted(name)),
        }
    }

    /// Where the server keeps its data.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True while the user's home is being opened.
    pub fn is_pending(&self, name: &str) -> bool {
        self.pending.contains_key(name)
    }

    /// The credentials to check a login for `name` against: the user's, or
    /// a decoy that looks the same and can never verify.
    pub fn credentials(&self, name: &str) -> Credentials {
        // The decoy is derived for every name, known or not, so the time a
        // challenge takes does not tell which names exist.
        let mut decoy = std::hint::black_box(scram::decoy_keys(&self.secret, name));
        decoy.kdf = self.decoy_kdf;
        let keys = match (
            self.map.get(name).filter(|a| a.active),
            self.pending.get(name),
        ) {
            (Some(acc), _) => Some(&acc.keys),
            (None, Some(pending)) => Some(&pending.keys),
            (None, None) => None,
        };
        match keys {
            Some(keys) => Credentials {
                keys: keys.clone(),
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

    /// Users, their homes and the partials their uploads are writing, for
    /// the periodic sweep of stale partials.
    pub fn sweep_list(&self) -> Vec<(String, Arc<Jail>, HashSet<String>)> {
        self.map
            .iter()
            .map(|(name, acc)| {
                let in_use = acc.uploads.iter().map(Jail::partial_name).collect();
                (name.clone(), Arc::clone(&acc.jail), in_use)
            })
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
                files: 0,
                max_files: None,
            })
    }

    /// Refuses an upload to `path` while another session of `name` is
    /// uploading there (or the account is gone).
    pub fn check_not_uploading(&self, name: &str, path: &VPath) -> Result<(), (ErrorCode, String)> {
        if self.get(name).is_none_or(|a| a.uploads.contains(path)) {
            let message = format!("busy: {path} is being uploaded by another session");
            return Err((ErrorCode::Busy, message));
        }
        Ok(())
    }

    /// Reserves `need` bytes for work about to start, or says why it does
    /// not fit.
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
        acc.reserved = acc.reserved.saturating_add(need);
        Ok(())
    }

    /// Reserves `bytes` and `entries` for a creation about to start (a
    /// folder, an upload's partial), or says why it does not fit.
    pub fn reserve_creation(
        &mut self,
        name: &str,
        bytes: u64,
        entries: u64,
    ) -> Result<(), (ErrorCode, String)> {
        if let Some(acc) = self.map.get(name)
            && let Some(max) = acc.max_files
            && acc
                .entries
                .saturating_add(acc.reserved_entries)
                .saturating_add(entries)
                > max
        {
            let message =
                format!("quota exceeded: the limit of {max} files and folders is reached");
            return Err((ErrorCode::QuotaExceeded, message));
        }
        self.reserve(name, bytes)?;
        if let Some(acc) = self.map.get_mut(name) {
            acc.reserved_entries = acc.reserved_entries.saturating_add(entries);
        }
        Ok(())
    }

    /// Hands back what [`Accounts::reserve_creation`] reserved.
    pub fn release_creation(&mut self, name: &str, bytes: u64, entries: u64) {
        self.release(name, bytes);
        if let Some(acc) = self.map.get_mut(name) {
            acc.reserved_entries = acc.reserved_entries.saturating_sub(entries);
        }
    }

    /// Hands back `bytes` of a reservation.
    pub fn release(&mut self, name: &str, bytes: u64) {
        if let Some(acc) = self.map.get_mut(name) {
            acc.reserved = acc.reserved.saturating_sub(bytes);
        }
    }

    /// Bytes written into an upload's partial: its cost grew by `bytes`,
    /// of which `reserved` come from the upload's reservation.
    pub fn wrote(&mut self, name: &str, bytes: u64, reserved: u64) {
        if let Some(acc) = self.map.get_mut(name) {
            acc.used = acc.used.saturating_add(bytes);
            acc.reserved = acc.reserved.saturating_sub(reserved);
        }
    }

    /// Applies what a change to the user's tree did. A file it unlinked
    /// that a download still holds stays charged until that download ends.
    /// Saturates rather than wraps: a figure that would go negative is a
    /// bookkeeping slip, not a reason to crash.
    pub fn apply(&mut self, name: &str, change: Change) {
        let Some(acc) = self.map.get_mut(name) else {
            return;
        };
        let mut bytes = change.bytes;
        if let Some(gone) = change.gone
            && let Some(reading) = acc.reading.get_mut(&gone.id)
        {
            reading.pinned = reading.pinned.saturating_add(gone.charge);
            bytes = bytes.saturating_add_unsigned(gone.charge);
        }
        acc.used = acc.used.saturating_add_signed(bytes);
        acc.entries = acc.entries.saturating_add_signed(change.entries);
    }

    /// A download of the file `id` began.
    pub fn reading(&mut self, name: &str, id: FileId) {
        if let Some(acc) = self.map.get_mut(name) {
            acc.reading.entry(id).or_default().readers += 1;
        }
    }

    /// A download of the file `id` ended; the last one frees what the file
    /// kept charged after losing its name.
    pub fn done_reading(&mut self, name: &str, id: FileId) {
        let Some(acc) = self.map.get_mut(name) else {
            return;
        };
        let Some(reading) = acc.reading.get_mut(&id) else {
            return;
        };
        reading.readers = reading.readers.saturating_sub(1);
        if reading.readers == 0 {
            let pinned = reading.pinned;
            acc.reading.remove(&id);
            acc.used = acc.used.saturating_sub(pinned);
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
