//! `ftpd user ...`: managing accounts in the data folder.
//!
//! Each command that changes `users.json` loads, changes and saves it
//! atomically under the users lock ([`UserDb::update`]), so two commands
//! run at the same moment both take effect, one after the other; a running
//! server notices the new file at the next login.

use anyhow::{Context, anyhow, bail};
use std::fs::{self, DirBuilder};
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::proto::KdfParams;
use crate::scram::{self, DEFAULT_KDF};
use crate::size::{format_size, parse_size};
use crate::usage::{disk_usage, tally};
use crate::users::{self, DEFAULT_QUOTA, HOMES_DIR, User, UserDb, validate_name};

/// Longest password accepted, in bytes: far beyond any real one, and it
/// bounds what scrypt is asked to hash.
const MAX_PASSWORD_LEN: usize = 1024;

/// Account management, run against the data folder.
#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user and create their home folder.
    Add {
        /// Login name: 1-32 letters, digits, '_', '-' or '.'.
        name: String,
        /// Most bytes the user may store, e.g. 500M or 2G (binary units) [default: 1G].
        #[arg(long)]
        quota: Option<String>,
        /// Most files and folders the user may have (0: no limit) [default: no limit].
        #[arg(long)]
        max_files: Option<u64>,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// log2 of scrypt's N (14-20); lower makes logins faster, for tests.
        #[arg(long, hide = true)]
        kdf_log_n: Option<u8>,
    },
    /// Change a user's password.
    Passwd {
        /// Login name.
        name: String,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user; their files stay on disk.
    Del {
        /// Login name.
        name: String,
    },
    /// Show all users with their quota and the space they use.
    List,
    /// Change a user's quota, or their limit on files and folders.
    Quota {
        /// Login name.
        name: String,
        /// New quota, e.g. 500M or 2G (binary units).
        #[arg(required_unless_present = "max_files")]
        size: Option<String>,
        /// Most files and folders the user may have (0: no limit).
        #[arg(long)]
        max_files: Option<u64>,
    },
}

/// Runs one `ftpd user` command against the data folder `root`, creating
/// the folder (mode 0700) if needed, and prints what it did.
pub fn run(root: &Path, cmd: UserCommand) -> anyhow::Result<()> {
    create_private_dir_all(root)?;
    let report = match cmd {
        UserCommand::Add {
            name,
            quota,
            max_files,
            password_stdin,
            kdf_log_n,
        } => {
            // Everything that can be checked is checked before the prompt,
            // so nobody types a password twice for nothing.
            let mut plan = plan_add(root, &name, quota.as_deref(), kdf_log_n)?;
            plan.max_files = max_files.filter(|&n| n > 0);
            let password = read_password(password_stdin, &name)?;
            add_user(root, &plan, &password)?
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            existing_user(&UserDb::load(root)?, &name)?;
            let password = read_password(password_stdin, &name)?;
            set_password(root, &name, &password)?
        }
        UserCommand::Del { name } => del_user(root, &name)?,
        UserCommand::List => list_users(root)?,
        UserCommand::Quota {
            name,
            size,
            max_files,
        } => {
            let mut reports = Vec::new();
            if let Some(size) = size {
                reports.push(set_quota(root, &name, &size)?);
            }
            if let Some(max) = max_files {
                reports.push(set_max_files(root, &name, max)?);
            }
            reports.join("\n")
        }
    };
    // The change is made; a closed stdout only loses the report.
    let _ = writeln!(io::stdout(), "{report}");
    Ok(())
}

/// A checked `user add`, waiting for its password.
#[derive(Debug)]
struct AddPlan {
    name: String,
    quota: u64,
    max_files: Option<u64>,
    kdf: KdfParams,
}

fn plan_add(
    root: &Path,
    name: &str,
    quota: Option<&str>,
    kdf_log_n: Option<u8>,
) -> anyhow::Result<AddPlan> {
    validate_name(name).map_err(|e| anyhow!(e))?;
    let quota = match quota {
        Some(text) => parse_size(text).map_err(|e| anyhow!(e))?,
        None => DEFAULT_QUOTA,
    };
    let kdf = match kdf_log_n {
        None => DEFAULT_KDF,
        Some(log_n) => {
            let kdf = KdfParams {
                log_n,
                ..DEFAULT_KDF
            };
            // Clients refuse anything outside these bounds, so the account
            // would be unusable.
            if scram::check_kdf(&kdf).is_err() {
                bail!("--kdf-log-n {log_n} is out of range (14-20)");
            }
            kdf
        }
    };
    if UserDb::load(root)?.get(name).is_some() {
        bail!("user {name} already exists");
    }
    Ok(AddPlan {
        name: name.to_owned(),
        quota,
        max_files: None,
        kdf,
    })
}

fn add_user(root: &Path, plan: &AddPlan, password: &[u8]) -> anyhow::Result<String> {
    check_password(password)?;
    // scrypt is slow: derived before taking the lock, so others wait less.
    let keys = scram::stored_keys(password, plan.kdf)?;
    let existed = UserDb::update(root, |db| {
        // Checked again: another command may have added the name meanwhile.
        if db.get(&plan.name).is_some() {
            bail!("user {} already exists", plan.name);
        }
        // The home exists before the account does, so a saved user always
        // has one.
        let existed = create_home(root, &plan.name)?;
        db.insert(User {
            name: plan.name.clone(),
            quota: plan.quota,
            max_files: plan.max_files,
            keys,
        });
        Ok(existed)
    })?;
    let home = relative_home(&plan.name);
    let kept = if existed { ", kept from before" } else { "" };
    Ok(format!(
        "added user {} (quota {}, home {}{kept})",
        plan.name,
        format_size(plan.quota),
        home.display()
    ))
}

fn set_password(root: &Path, name: &str, password: &[u8]) -> anyhow::Result<String> {
    check_password(password)?;
    UserDb::update(root, |db| {
        let user = existing_user_mut(db, name)?;
        // Keep the user's scrypt settings (they may have been chosen on
        // purpose), as they are under the lock.
        let kdf = user.keys.kdf;
        user.keys = scram::stored_keys(password, kdf)?;
        anyhow::Ok(())
    })?;
    Ok(format!("changed the password of {name}"))
}

fn del_user(root: &Path, name: &str) -> anyhow::Result<String> {
    UserDb::update(root, |db| {
        existing_user(db, name)?;
        db.remove(name);
        anyhow::Ok(())
    })?;
    Ok(format!(
        "removed user {name}; their files stay in {}",
        relative_home(name).display()
    ))
}

fn set_quota(root: &Path, name: &str, size: &str) -> anyhow::Result<String> {
    let quota = parse_size(size).map_err(|e| anyhow!(e))?;
    UserDb::update(root, |db| {
        existing_user_mut(db, name)?.quota = quota;
        anyhow::Ok(())
    })?;
    let mut report = format!("quota of {name} is now {}", format_size(quota));
    if let Ok(used) = disk_usage(&users::home_dir(root, name))
        && used > quota
    {
        report.push_str(&format!(
            "; they already use {}, so uploads fail until they free space",
            format_size(used)
        ));
    }
    Ok(report)
}

/// Sets (or with 0 removes) a user's limit on files and folders.
fn set_max_files(root: &Path, name: &str, max: u64) -> anyhow::Result<String> {
    let limit = (max > 0).then_some(max);
    UserDb::update(root, |db| {
        existing_user_mut(db, name)?.max_files = limit;
        anyhow::Ok(())
    })?;
    let mut report = match limit {
        Some(max) => format!("{name} may now have at most {max} files and folders"),
        None => format!("{name} may now have any number of files and folders"),
    };
    if let (Some(max), Ok(usage)) = (limit, tally(&users::home_dir(root, name)))
        && usage.entries > max
    {
        report.push_str(&format!(
            "; they already have {}, so creating more fails until they remove some",
            usage.entries
        ));
    }
    Ok(report)
}

fn list_users(root: &Path) -> anyhow::Result<String> {
    let db = UserDb::load(root)?;
    if db.is_empty() {
        return Ok("no users".to_owned());
    }
    let rows: Vec<[String; 4]> = db
        .iter()
        .map(|user| {
            let (used, files) = match tally(&users::home_dir(root, &user.name)) {
                Ok(usage) => (format_size(usage.bytes), usage.entries.to_string()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    ("no home".to_owned(), "-".to_owned())
                }
                Err(e) => {
                    let _ = writeln!(io::stderr(), "warning: {e}");
                    ("?".to_owned(), "?".to_owned())
                }
            };
            let files = match user.max_files {
                Some(max) => format!("{files}/{max}"),
                None => files,
            };
            [user.name.clone(), format_size(user.quota), used, files]
        })
        .collect();
    let header = ["NAME", "QUOTA", "USED", "FILES"].map(str::to_owned);
    let width = |col: usize| {
        std::iter::once(&header)
            .chain(&rows)
            .map(|row| row[col].len())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2, w3) = (width(0), width(1), width(2), width(3));
    let lines: Vec<String> = std::iter::once(&header)
        .chain(&rows)
        .map(|[name, quota, used, files]| {
            format!("{name:<w0$}  {quota:>w1$}  {used:>w2$}  {files:>w3$}")
        })
        .collect();
    Ok(lines.join("\n"))
}

fn existing_user<'a>(db: &'a UserDb, name: &str) -> anyhow::Result<&'a User> {
    db.get(name)
        .ok_or_else(|| anyhow!("no user named {name:?}"))
}

fn existing_user_mut<'a>(db: &'a mut UserDb, name: &str) -> anyhow::Result<&'a mut User> {
    db.get_mut(name)
        .ok_or_else(|| anyhow!("no user named {name:?}"))
}

/// `homes/NAME`, as shown to the administrator.
fn relative_home(name: &str) -> PathBuf {
    Path::new(HOMES_DIR).join(name)
}

/// Creates `root/homes/NAME` (mode 0700); says whether it was there already.
fn create_home(root: &Path, name: &str) -> anyhow::Result<bool> {
    create_private_dir_all(&root.join(HOMES_DIR))?;
    let home = users::home_dir(root, name);
    match DirBuilder::new().mode(0o700).create(&home) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A symlink here would point the user's home somewhere else.
            let meta = fs::symlink_metadata(&home)
                .with_context(|| format!("checking {}", home.display()))?;
            if !meta.is_dir() {
                bail!("{} exists and is not a folder", home.display());
            }
            Ok(true)
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", home.display())),
    }
}

fn create_private_dir_all(dir: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Reads a new password: one line of stdin, or twice from the terminal.
fn read_password(from_stdin: bool, name: &str) -> anyhow::Result<Vec<u8>> {
    if from_stdin {
        let mut line = Vec::new();
        // Reading one byte past the limit (plus "\r\n") is enough to refuse.
        io::stdin()
            .lock()
            .take(MAX_PASSWORD_LEN as u64 + 3)
            .read_until(b'\n', &mut line)
            .context("reading the password from stdin")?;
        return parse_password_line(line);
    }
    if !io::stdin().is_terminal() {
        bail!("no terminal to prompt for a password; use --password-stdin");
    }
    let first = rpassword::prompt_password(format!("Password for {name}: "))
        .context("reading the password")?;
    let second =
        rpassword::prompt_password("Same password again: ").context("reading the password")?;
    if first != second {
        bail!("the two passwords differ; nothing changed");
    }
    Ok(first.into_bytes())
}

/// The password in one line of input, without its line ending.
fn parse_password_line(mut line: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if std::str::from_utf8(&line).is_err() {
        // Clients read passwords as text, so they could never type this one.
        bail!("the password is not valid UTF-8");
    }
    Ok(line)
}

fn check_password(password: &[u8]) -> anyhow::Result<()> {
    if password.is_empty() {
        bail!("empty password refused");
    }
    if password.len() > MAX_PASSWORD_LEN {
        bail!("password too long (more than {MAX_PASSWORD_LEN} bytes)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FAST_LOG_N: u8 = 14;

    fn add(
        root: &Path,
        name: &str,
        quota: Option<&str>,
        password: &[u8],
    ) -> anyhow::Result<String> {
        let plan = plan_add(root, name, quota, Some(FAST_LOG_N))?;
        add_user(root, &plan, password)
    }

    fn err<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Whether `password` logs `name` in against the saved database.
    fn logs_in(root: &Path, name: &str, password: &[u8]) -> bool {
        let db = UserDb::load(root).unwrap();
        let keys = &db.get(name).unwrap().keys;
        let t = scram::Transcript {
            user: name,
            client_nonce: b"c",
            server_nonce: b"s",
            salt: &keys.salt,
            kdf: keys.kdf,
            channel_binding: None,
        };
        let am = t.auth_message();
        let client = scram::client_keys(password, &keys.salt, &keys.kdf).unwrap();
        scram::verify_client_proof(&keys.stored_key, &am, &scram::client_proof(&client, &am))
    }

    #[test]
    fn add_creates_user_and_home() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        create_private_dir_all(&root).unwrap();
        assert_eq!(mode(&root), 0o700);

        let report = add(&root, "alice", None, b"secret").unwrap();
        assert_eq!(report, "added user alice (quota 1.0 GiB, home homes/alice)");
        let home = root.join("homes/alice");
        assert!(home.is_dir());
        assert_eq!(mode(&home), 0o700);
        assert_eq!(mode(&root.join(HOMES_DIR)), 0o700);

        let db = UserDb::load(&root).unwrap();
        let alice = db.get("alice").unwrap();
        assert_eq!(alice.quota, DEFAULT_QUOTA);
        assert_eq!(
            alice.keys.kdf,
            KdfParams {
                log_n: FAST_LOG_N,
                ..DEFAULT_KDF
            }
        );
        assert!(logs_in(&root, "alice", b"secret"));
        assert!(!logs_in(&root, "alice", b"Secret"));
    }

    #[test]
    fn add_refuses_bad_input() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        add(root, "alice", Some("10M"), b"pw").unwrap();

        assert_eq!(
            err(plan_add(root, "alice", None, None)),
            "user alice already exists"
        );
        assert!(err(plan_add(root, "../x", None, None)).contains("invalid user name"));
        assert!(err(plan_add(root, "bob", Some("12Q"), None)).contains("invalid size"));
        assert!(err(plan_add(root, "bob", None, Some(10))).contains("out of range"));
        assert!(err(plan_add(root, "bob", None, Some(21))).contains("out of range"));
        assert!(err(add(root, "bob", None, b"")).contains("empty password"));
        assert!(err(add(root, "bob", None, &[b'x'; 1025])).contains("too long"));
        assert!(add(root, "bob", None, &[b'x'; 1024]).is_ok());

        // A plan made before someone else added the name must not overwrite.
        let plan = plan_add(root, "carol", None, Some(FAST_LOG_N)).unwrap();
        add(root, "carol", None, b"first").unwrap();
        assert!(err(add_user(root, &plan, b"second")).contains("already exists"));
        assert!(logs_in(root, "carol", b"first"));
    }

    #[test]
    fn add_keeps_an_existing_home_but_not_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("homes/alice")).unwrap();
        fs::write(root.join("homes/alice/old"), b"data").unwrap();
        let report = add(root, "alice", None, b"pw").unwrap();
        assert!(report.ends_with("kept from before)"), "{report}");
        assert!(root.join("homes/alice/old").exists());

        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.join("homes/bob")).unwrap();
        let err = add(root, "bob", None, b"pw").unwrap_err();
        assert!(err.to_string().contains("not a folder"), "{err}");
        assert!(UserDb::load(root).unwrap().get("bob").is_none());
    }

    #[test]
    fn passwd_changes_the_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        add(root, "alice", None, b"old").unwrap();
        assert_eq!(
            set_password(root, "alice", b"new").unwrap(),
            "changed the password of alice"
        );
        assert!(logs_in(root, "alice", b"new"));
        assert!(!logs_in(root, "alice", b"old"));
        let db = UserDb::load(root).unwrap();
        assert_eq!(db.get("alice").unwrap().keys.kdf.log_n, FAST_LOG_N);

        assert!(set_password(root, "alice", b"").is_err());
        assert!(logs_in(root, "alice", b"new"));
        let err = set_password(root, "bob", b"x").unwrap_err();
        assert_eq!(err.to_string(), "no user named \"bob\"");
    }

    #[test]
    fn del_keeps_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        add(root, "alice", None, b"pw").unwrap();
        fs::write(root.join("homes/alice/f"), b"data").unwrap();
        assert_eq!(
            del_user(root, "alice").unwrap(),
            "removed user alice; their files stay in homes/alice"
        );
        assert!(UserDb::load(root).unwrap().is_empty());
        assert!(root.join("homes/alice/f").exists());
        assert!(del_user(root, "alice").is_err());
    }

    #[test]
    fn quota_changes_and_warns_when_over() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        add(root, "alice", None, b"pw").unwrap();
        assert_eq!(
            set_quota(root, "alice", "2G").unwrap(),
            "quota of alice is now 2.0 GiB"
        );
        assert_eq!(
            UserDb::load(root).unwrap().get("alice").unwrap().quota,
            2 << 30
        );

        fs::write(root.join("homes/alice/f"), vec![0u8; 2048]).unwrap();
        let report = set_quota(root, "alice", "1K").unwrap();
        // 2,048 bytes occupy one 4 KiB block.
        assert!(report.contains("already use 4.0 KiB"), "{report}");

        assert!(set_quota(root, "alice", "lots").is_err());
        assert!(set_quota(root, "bob", "1G").is_err());
        assert_eq!(
            UserDb::load(root).unwrap().get("alice").unwrap().quota,
            1024
        );
    }

    #[test]
    fn list_shows_quota_and_usage() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        assert_eq!(list_users(root).unwrap(), "no users");
        add(root, "alice", Some("10M"), b"pw").unwrap();
        add(root, "bob_the_builder", None, b"pw").unwrap();
        fs::write(root.join("homes/alice/f"), vec![0u8; 1536]).unwrap();
        fs::remove_dir(root.join("homes/bob_the_builder")).unwrap();

        let table = list_users(root).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "NAME                QUOTA     USED  FILES",
                // 1,536 bytes occupy one 4 KiB block.
                "alice            10.0 MiB  4.0 KiB      1",
                "bob_the_builder   1.0 GiB  no home      -",
            ]
        );
        assert!(
            set_max_files(root, "alice", 5)
                .unwrap()
                .contains("at most 5")
        );
        let table = list_users(root).unwrap();
        assert!(table.lines().nth(1).unwrap().ends_with("  1/5"), "{table}");
        assert_eq!(
            UserDb::load(root).unwrap().get("alice").unwrap().max_files,
            Some(5)
        );
        assert!(
            set_max_files(root, "alice", 0)
                .unwrap()
                .contains("any number")
        );
        assert_eq!(
            UserDb::load(root).unwrap().get("alice").unwrap().max_files,
            None
        );
    }

    #[test]
    fn password_lines() {
        assert_eq!(parse_password_line(b"pw\n".to_vec()).unwrap(), b"pw");
        assert_eq!(parse_password_line(b"pw\r\n".to_vec()).unwrap(), b"pw");
        assert_eq!(parse_password_line(b"pw".to_vec()).unwrap(), b"pw");
        assert_eq!(parse_password_line(b" p w \n".to_vec()).unwrap(), b" p w ");
        assert_eq!(parse_password_line(b"\n".to_vec()).unwrap(), b"");
        assert!(parse_password_line(vec![0xff, b'\n']).is_err());
    }

    #[test]
    fn run_creates_a_private_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("new/data");
        run(&root, UserCommand::List).unwrap();
        assert_eq!(mode(&root), 0o700);
    }
}
