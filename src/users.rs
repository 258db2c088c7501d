//! The user database and the other files in the data folder (`--root`).
//!
//! ```text
//! <root>/users.json      the users (this module), mode 0600
//! <root>/users.lock      empty; `ftpd user ...` holds a flock on it while
//!                        it reads, changes and writes users.json
//! <root>/server.secret   32 random bytes for decoy logins, mode 0600
//! <root>/tls-key.pem     the server's TLS key, mode 0600 (see crate::tls::identity)
//! <root>/tls-cert.pem    its self-signed certificate
//! <root>/homes/<name>/   each user's files
//! ```
//!
//! `users.json` is readable JSON, written by `ftpd user ...` and read by the
//! server, which reloads it when [`file_stamp`] changes:
//!
//! ```json
//! {
//!   "version": 1,
//!   "users": [
//!     {
//!       "name": "alice",
//!       "quota": 1073741824,
//!       "kdf": { "log_n": 15, "r": 8, "p": 1 },
//!       "salt": "<32 hex digits>",
//!       "stored_key": "<64 hex digits>",
//!       "server_key": "<64 hex digits>"
//!     }
//!   ]
//! }
//! ```
//!
//! `quota` is in bytes; `salt`, `stored_key` and `server_key` are the
//! [`StoredKeys`] in lower-case hex. Unknown fields, bad lengths, invalid
//! names and duplicate names are refused with the file's name and the line.
//! The file is replaced atomically (write a temporary file under a name of
//! its own, fsync, rename, fsync the folder), so a reader sees either the
//! old or the new version, never a half-written one. Writers take an
//! exclusive `flock` on `users.lock` around each read-modify-write
//! ([`UserDb::update`]), so two `ftpd user ...` commands at once never lose
//! each other's change. The server only reads (and must never block on a
//! lock), which the atomic rename makes safe.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

use crate::proto::{KdfParams, MAX_USER_LEN};
use crate::scram::{self, KEY_LEN, SALT_LEN, StoredKeys};

/// The user database, in the data folder.
pub const USERS_FILE: &str = "users.json";

/// The lock file that serialises changes to the user database.
pub const LOCK_FILE: &str = "users.lock";

/// The server's secret for decoy logins, in the data folder.
pub const SECRET_FILE: &str = "server.secret";

/// The folder holding each user's home, in the data folder.
pub const HOMES_DIR: &str = "homes";

/// Quota of a user added without `--quota`: 1 GiB.
pub const DEFAULT_QUOTA: u64 = 1 << 30;

/// The only `version` of `users.json` this build reads and writes.
const FORMAT_VERSION: u32 = 1;

/// Why the user database could not be read or written.
#[derive(Debug, Error)]
pub enum UsersError {
    /// Reading or writing a file failed.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    /// The file is not valid JSON of the expected shape; the message names
    /// the line and column.
    #[error("{}: {error}", path.display())]
    Parse {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// The file parsed but makes no sense as a whole (e.g. a name twice).
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// One user account.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name, also the name of the home folder.
    pub name: String,
    /// Most bytes the home may hold, unfinished uploads included.
    pub quota: u64,
    /// Most files and folders the home may hold, if limited.
    pub max_files: Option<u64>,
    /// Login keys (never the password).
    pub keys: StoredKeys,
}

/// All users, by name.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    users: BTreeMap<String, User>,
}

impl UserDb {
    /// Reads `<root>/users.json`; a missing file is an empty database.
    pub fn load(root: &Path) -> Result<UserDb, UsersError> {
        let path = root.join(USERS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(UserDb::default()),
            Err(error) => return Err(UsersError::Io { path, error }),
        };
        let file: FileFormat = match serde_json::from_str(&text) {
            Ok(file) => file,
            Err(error) => return Err(UsersError::Parse { path, error }),
        };
        let mut users = BTreeMap::new();
        for record in file.users {
            let user = User {
                name: record.name.clone(),
                quota: record.quota,
                max_files: record.max_files,
                keys: StoredKeys {
                    salt: record.salt.to_vec(),
                    kdf: record.kdf,
                    stored_key: record.stored_key,
                    server_key: record.server_key,
                },
            };
            if let Some(twice) = users.insert(record.name, user) {
                let message = format!("user {:?} is listed more than once", twice.name);
                return Err(UsersError::Invalid { path, message });
            }
        }
        Ok(UserDb { users })
    }

    /// Reads, changes and writes `<root>/users.json` under the users lock,
    /// so that no other writer's change is lost in between. Nothing is
    /// written when `change` fails.
    pub fn update<T, E: From<UsersError>>(
        root: &Path,
        change: impl FnOnce(&mut UserDb) -> Result<T, E>,
    ) -> Result<T, E> {
        let lock = UsersLock::take(root)?;
        let mut db = UserDb::load(root)?;
        let result = change(&mut db)?;
        db.write(root, &lock)?;
        Ok(result)
    }

    /// Writes `<root>/users.json` atomically, readable by the owner only,
    /// replacing whatever it held (use [`UserDb::update`] to change it).
    pub fn save(&self, root: &Path) -> Result<(), UsersError> {
        let lock = UsersLock::take(root)?;
        self.write(root, &lock)
    }

    /// The save itself; the lock proves no other writer is at work.
    fn write(&self, root: &Path, _lock: &UsersLock) -> Result<(), UsersError> {
        let path = root.join(USERS_FILE);
        // Under the lock, any temporary file is a leftover of a crashed save.
        remove_leftover_temps(root)?;
        let tmp = root.join(temp_name()?);
        let file = FileFormat {
            version: FORMAT_VERSION,
            users: self.users.values().map(Record::from).collect(),
        };
        let mut text = serde_json::to_string_pretty(&file).map_err(|e| UsersError::Invalid {
            path: path.clone(),
            message: format!("cannot encode: {e}"),
        })?;
        text.push('\n');

        write_new_file(&tmp, text.as_bytes()).map_err(|error| {
            // Best effort: a leftover is replaced by the next save anyway.
            let _ = fs::remove_file(&tmp);
            UsersError::Io {
                path: tmp.clone(),
                error,
            }
        })?;
        if let Err(error) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(UsersError::Io { path, error });
        }
        // The rename is durable only once the folder's entry is on disk.
        sync_dir(root).map_err(|error| UsersError::Io {
            path: root.to_path_buf(),
            error,
        })
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The user called `name`, to change.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut User> {
        self.users.get_mut(name)
    }

    /// Adds `user`, replacing any user of the same name.
    pub fn insert(&mut self, user: User) {
        self.users.insert(user.name.clone(), user);
    }

    /// Removes and returns the user called `name`.
    pub fn remove(&mut self, name: &str) -> Option<User> {
        self.users.remove(name)
    }

    /// All users, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// An exclusive hold on `<root>/users.lock`, released when dropped (the
/// kernel releases it too if the process dies).
#[derive(Debug)]
pub struct UsersLock {
    _file: File,
}

impl UsersLock {
    /// Waits for and takes the lock, creating the lock file (mode 0600) the
    /// first time. The file is never removed: removing it would let two
    /// writers lock two different files.
    pub fn take(root: &Path) -> Result<UsersLock, UsersError> {
        let path = root.join(LOCK_FILE);
        let io_error = |error| UsersError::Io {
            path: path.clone(),
            error,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_error)?;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => return Ok(UsersLock { _file: file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io_error(e.into())),
            }
        }
    }
}

/// Prefix of the temporary files a save writes before renaming.
const TEMP_PREFIX: &str = "users.json.tmp";

/// A temporary name no other save uses: the process id and 64 random bits.
fn temp_name() -> Result<String, UsersError> {
    let mut random = [0u8; 8];
    scram::fill_random(&mut random).map_err(|error| UsersError::Io {
        path: PathBuf::from("/dev/urandom"),
        error,
    })?;
    Ok(format!(
        "{TEMP_PREFIX}.{}.{}",
        std::process::id(),
        to_hex(&random)
    ))
}

/// Deletes temporary files that crashed saves left in `root`.
fn remove_leftover_temps(root: &Path) -> Result<(), UsersError> {
    let io_error = |path: &Path, error| UsersError::Io {
        path: path.to_path_buf(),
        error,
    };
    for entry in fs::read_dir(root).map_err(|e| io_error(root, e))? {
        let entry = entry.map_err(|e| io_error(root, e))?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            match fs::remove_file(entry.path()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error(&entry.path(), e));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Checks a user name: 1 to [`MAX_USER_LEN`] ASCII letters, digits, `_`,
/// `-` or `.`, not starting with `.` or `-`. Names double as folder names,
/// so this keeps out `..`, slashes, hidden folders and option look-alikes.
pub fn validate_name(name: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.');
    let ok = match name.as_bytes() {
        [] => false,
        [b'.' | b'-', ..] => false,
        bytes => bytes.len() <= MAX_USER_LEN && bytes.iter().all(|&b| allowed(b)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid user name {name:?}: use 1-{MAX_USER_LEN} letters, digits, '_', '-' or '.', \
             not starting with '.' or '-'"
        ))
    }
}

/// The home folder of user `name`: `<root>/homes/<name>`.
pub fn home_dir(root: &Path, name: &str) -> PathBuf {
    root.join(HOMES_DIR).join(name)
}

/// Reads `<root>/server.secret`, creating it with 32 random bytes (mode
/// 0600) the first time. Kept forever, so decoy salts stay the same across
/// restarts.
pub fn load_or_create_secret(root: &Path) -> io::Result<[u8; KEY_LEN]> {
    let path = root.join(SECRET_FILE);
    match read_secret(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }

    let mut secret = [0u8; KEY_LEN];
    scram::fill_random(&mut secret)?;
    match create_private_once(root, SECRET_FILE, &secret) {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_secret(&path),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// Creates `<dir>/<name>` with mode 0600 holding `bytes`, unless it exists
/// (then `AlreadyExists`). Written in full under a private name, synced,
/// then linked into place: a crash cannot leave a short file behind, and
/// if another process won the race, the link fails and its file stands.
pub(crate) fn create_private_once(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = write_new_file(&tmp, bytes).and_then(|()| fs::hard_link(&tmp, dir.join(name)));
    let _ = fs::remove_file(&tmp);
    result?;
    sync_dir(dir)
}

fn read_secret(path: &Path) -> io::Result<[u8; KEY_LEN]> {
    let file = File::open(path)?;
    let mut bytes = Vec::with_capacity(KEY_LEN + 1);
    // One byte more than needed is enough to tell a too-long file.
    file.take(KEY_LEN as u64 + 1).read_to_end(&mut bytes)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: expected exactly {KEY_LEN} bytes; remove it to make a new one",
                path.display()
            ),
        )
    })
}

/// Identity and version of `users.json`, to notice that it changed.
///
/// A save renames a new file into place, which changes the inode; the
/// modification time and length catch an editor writing in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Inode number.
    pub ino: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: i64,
    /// Length in bytes.
    pub len: u64,
}

/// The current [`Stamp`] of `<root>/users.json`, or `None` if it cannot be
/// read (for instance because there is no such file yet).
pub fn file_stamp(root: &Path) -> Option<Stamp> {
    let meta = fs::metadata(root.join(USERS_FILE)).ok()?;
    Some(Stamp {
        ino: meta.ino(),
        mtime_sec: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        len: meta.len(),
    })
}

/// Creates `path` (which must not exist) with mode 0600 and `bytes`, and
/// syncs it to disk.
fn write_new_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `users.json` as a whole.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(deserialize_with = "de_version")]
    version: u32,
    users: Vec<Record>,
}

/// One user in `users.json`. Checks run while parsing, so that errors
/// carry the line they are on.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    #[serde(deserialize_with = "de_name")]
    name: String,
    quota: u64,
    /// Absent means no limit (and in files written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_files: Option<u64>,
    #[serde(deserialize_with = "de_kdf")]
    kdf: KdfParams,
    #[serde(serialize_with = "ser_hex", deserialize_with = "de_hex")]
    salt: [u8; SALT_LEN],
    #[serde(serialize_with = "ser_hex", deserialize_with = "de_hex")]
    stored_key: [u8; KEY_LEN],
    #[serde(serialize_with = "ser_hex", deserialize_with = "de_hex")]
    server_key: [u8; KEY_LEN],
}

impl From<&User> for Record {
    fn from(user: &User) -> Record {
        // Salts are always SALT_LEN (checked on load, made so by scram);
        // pad or cut defensively rather than panic.
        let mut salt = [0u8; SALT_LEN];
        let n = user.keys.salt.len().min(SALT_LEN);
        salt[..n].copy_from_slice(&user.keys.salt[..n]);
        Record {
            name: user.name.clone(),
            quota: user.quota,
            max_files: user.max_files,
            kdf: user.keys.kdf,
            salt,
            stored_key: user.keys.stored_key,
            server_key: user.keys.server_key,
        }
    }
}

fn de_version<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let version = u32::deserialize(d)?;
    if version != FORMAT_VERSION {
        return Err(D::Error::custom(format!(
            "unsupported version {version} (this ftpd reads version {FORMAT_VERSION})"
        )));
    }
    Ok(version)
}

fn de_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    validate_name(&name).map_err(D::Error::custom)?;
    Ok(name)
}

fn de_kdf<'de, D: Deserializer<'de>>(d: D) -> Result<KdfParams, D::Error> {
    let kdf = KdfParams::deserialize(d)?;
    // A setting every client would refuse makes the account unusable.
    scram::check_kdf(&kdf)
        .map_err(|_| D::Error::custom(format!("scrypt settings {kdf:?} out of range")))?;
    Ok(kdf)
}

fn ser_hex<S: Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_hex(bytes))
}

fn de_hex<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
    let text = String::deserialize(d)?;
    from_hex(&text).map_err(D::Error::custom)
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn from_hex<const N: usize>(text: &str) -> Result<[u8; N], String> {
    if text.len() != 2 * N {
        return Err(format!(
            "expected {} hex digits, found {}",
            2 * N,
            text.len()
        ));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("{:?} is not a hex digit", char::from(c))),
    };
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn user(name: &str, quota: u64) -> User {
        User {
            max_files: None,
            name: name.into(),
            quota,
            keys: scram::decoy_keys(&[3u8; KEY_LEN], name),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn missing_file_is_an_empty_db() {
        let root = tempfile::tempdir().unwrap();
        let db = UserDb::load(root.path()).unwrap();
        assert!(db.is_empty());
        assert_eq!(db.len(), 0);
        assert_eq!(file_stamp(root.path()), None);
    }

    #[test]
    fn save_load_round_trip() {
        let root = tempfile::tempdir().unwrap();
        let mut db = UserDb::default();
        db.insert(user("bob", 5));
        db.insert(user("alice", DEFAULT_QUOTA));
        db.save(root.path()).unwrap();

        let loaded = UserDb::load(root.path()).unwrap();
        assert_eq!(loaded.len(), 2);
        let names: Vec<_> = loaded.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        for original in db.iter() {
            let got = loaded.get(&original.name).unwrap();
            assert_eq!(got.quota, original.quota);
            assert_eq!(got.keys.salt, original.keys.salt);
            assert_eq!(got.keys.kdf, original.keys.kdf);
            assert_eq!(got.keys.stored_key, original.keys.stored_key);
            assert_eq!(got.keys.server_key, original.keys.server_key);
        }
        assert!(loaded.get("carol").is_none());
    }

    #[test]
    fn format_is_the_documented_json() {
        let root = tempfile::tempdir().unwrap();
        let mut db = UserDb::default();
        db.insert(user("alice", DEFAULT_QUOTA));
        db.save(root.path()).unwrap();
        let text = fs::read_to_string(root.path().join(USERS_FILE)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["version"], 1);
        let alice = &value["users"][0];
        assert_eq!(alice["name"], "alice");
        assert_eq!(alice["quota"], 1_073_741_824u64);
        assert_eq!(alice["kdf"]["log_n"], 15);
        assert_eq!(alice["kdf"]["r"], 8);
        assert_eq!(alice["kdf"]["p"], 1);
        assert_eq!(alice["salt"].as_str().unwrap().len(), 32);
        assert_eq!(alice["stored_key"].as_str().unwrap().len(), 64);
        assert_eq!(alice["server_key"].as_str().unwrap().len(), 64);
        assert!(text.contains('\n'), "pretty-printed");
    }

    #[test]
    fn save_is_atomic_private_and_changes_the_stamp() {
        let root = tempfile::tempdir().unwrap();
        let mut db = UserDb::default();
        db.insert(user("alice", 1));
        db.save(root.path()).unwrap();
        let first = file_stamp(root.path()).unwrap();
        assert_eq!(mode(&root.path().join(USERS_FILE)), 0o600);

        // Leftovers from crashed saves must not stop the next one, and go.
        fs::write(root.path().join("users.json.tmp"), "junk").unwrap();
        fs::write(root.path().join("users.json.tmp.1.00ff"), "junk").unwrap();
        db.get_mut("alice").unwrap().quota = 2;
        db.save(root.path()).unwrap();
        let second = file_stamp(root.path()).unwrap();
        assert_ne!(first, second);
        assert_ne!(first.ino, second.ino, "rename gives a new inode");
        assert_eq!(mode(&root.path().join(USERS_FILE)), 0o600);

        let mut names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [USERS_FILE, LOCK_FILE]);
        assert_eq!(mode(&root.path().join(LOCK_FILE)), 0o600);
        assert_eq!(
            UserDb::load(root.path())
                .unwrap()
                .get("alice")
                .unwrap()
                .quota,
            2
        );
    }

    #[test]
    fn concurrent_updates_are_all_kept() {
        let root = tempfile::tempdir().unwrap();
        std::thread::scope(|scope| {
            for i in 0..20 {
                let root = root.path();
                scope.spawn(move || {
                    UserDb::update(root, |db| {
                        db.insert(user(&format!("user{i}"), i));
                        Ok::<_, UsersError>(())
                    })
                    .unwrap();
                });
            }
        });
        let db = UserDb::load(root.path()).unwrap();
        assert_eq!(db.len(), 20);
        let leftovers = fs::read_dir(root.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with(TEMP_PREFIX)
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn remove_and_save() {
        let root = tempfile::tempdir().unwrap();
        let mut db = UserDb::default();
        db.insert(user("alice", 1));
        db.insert(user("bob", 1));
        assert_eq!(db.remove("alice").map(|u| u.name), Some("alice".into()));
        assert!(db.remove("alice").is_none());
        db.save(root.path()).unwrap();
        let loaded = UserDb::load(root.path()).unwrap();
        assert_eq!(loaded.len(), 1);
        assert!(loaded.get("bob").is_some());
    }

    fn load_text(text: &str) -> String {
        let root = tempfile::tempdir().unwrap();
        fs::write(root.path().join(USERS_FILE), text).unwrap();
        UserDb::load(root.path()).unwrap_err().to_string()
    }

    fn saved_text() -> String {
        let root = tempfile::tempdir().unwrap();
        let mut db = UserDb::default();
        db.insert(user("alice", 1));
        db.save(root.path()).unwrap();
        fs::read_to_string(root.path().join(USERS_FILE)).unwrap()
    }

    #[test]
    fn corrupt_file_names_the_file_and_line() {
        let err = load_text("{\n  \"version\": 1,\n  \"users\": [\n    {,\n  ]\n}\n");
        assert!(err.contains("users.json"), "{err}");
        assert!(err.contains("line 4"), "{err}");

        let err = load_text("");
        assert!(err.contains("users.json"), "{err}");
    }

    #[test]
    fn invalid_contents_are_refused() {
        let good = saved_text();
        let cases = [
            (
                good.replace("\"version\": 1", "\"version\": 2"),
                "unsupported version",
            ),
            (good.replace("\"alice\"", "\"../x\""), "invalid user name"),
            (good.replace("\"salt\": \"", "\"salt\": \"00"), "hex digits"),
            (
                good.replace("\"stored_key\": \"", "\"stored_key\": \"zz"),
                "hex digits",
            ),
            (
                good.replace("\"server_key\": \"", "\"server_key\": \"0"),
                "hex digits",
            ),
            (
                good.replace("\"log_n\": 15", "\"log_n\": 4"),
                "scrypt settings",
            ),
            (
                good.replace("\"quota\"", "\"extra\": 1, \"quota\""),
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let err = load_text(&text);
            assert!(err.contains(expected), "{err}");
            assert!(err.contains("users.json") && err.contains("line"), "{err}");
        }
    }

    #[test]
    fn bad_hex_digit_is_refused() {
        let good = saved_text();
        let value: serde_json::Value = serde_json::from_str(&good).unwrap();
        let salt = value["users"][0]["salt"].as_str().unwrap();
        let bad = format!("g{}", &salt[1..]);
        let err = load_text(&good.replace(salt, &bad));
        assert!(err.contains("not a hex digit"), "{err}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let good = saved_text();
        let value: serde_json::Value = serde_json::from_str(&good).unwrap();
        let record = value["users"][0].clone();
        let doubled = serde_json::json!({ "version": 1, "users": [record.clone(), record] });
        let err = load_text(&doubled.to_string());
        assert!(err.contains("\"alice\" is listed more than once"), "{err}");
    }

    #[test]
    fn hex_round_trip() {
        let bytes: [u8; 4] = [0x00, 0x7f, 0xa5, 0xff];
        assert_eq!(to_hex(&bytes), "007fa5ff");
        assert_eq!(from_hex::<4>("007fa5ff"), Ok(bytes));
        assert_eq!(from_hex::<4>("007FA5FF"), Ok(bytes));
        assert!(from_hex::<4>("007fa5f").is_err());
        assert!(from_hex::<2>("é1").is_err());
    }

    #[test]
    fn names() {
        for good in ["alice", "a", "_x", "0day", "a.b-c_d", "A", &"x".repeat(32)] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            ".hidden",
            "-rf",
            "a b",
            "a\0b",
            "é",
            "a\\b",
            "a:b",
            &"x".repeat(33),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_name("../x"),
            Err(r#"invalid user name "../x": use 1-32 letters, digits, '_', '-' or '.', not starting with '.' or '-'"#.into())
        );
    }

    #[test]
    fn home_is_under_homes() {
        assert_eq!(
            home_dir(Path::new("/srv/ftpd"), "alice"),
            PathBuf::from("/srv/ftpd/homes/alice")
        );
    }

    #[test]
    fn secret_is_created_once_and_private() {
        let root = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(root.path()).unwrap();
        let second = load_or_create_secret(root.path()).unwrap();
        assert_eq!(first, second);
        assert_ne!(first, [0u8; KEY_LEN]);
        let path = root.path().join(SECRET_FILE);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read(&path).unwrap(), first);
        let names: Vec<_> = fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn secret_of_the_wrong_length_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(SECRET_FILE);
        for len in [0, 31, 33] {
            fs::write(&path, vec![1u8; len]).unwrap();
            let err = load_or_create_secret(root.path()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains(SECRET_FILE), "{err}");
        }
    }
}
