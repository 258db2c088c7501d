//! The users sessions log in as: one from `--user`/`--password`, or many
//! from a `--users` file of `name:password` lines.

use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};

/// One account.
#[derive(Clone)]
pub struct User {
    pub name: String,
    pub password: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Reads a users file: one `name:password` per line (the password is
/// everything after the first colon); blank lines and lines starting with
/// `#` are skipped.
pub fn read_file(path: &Path) -> anyhow::Result<Vec<User>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading users file {}", path.display()))?;
    let users = parse(&text).with_context(|| format!("in users file {}", path.display()))?;
    if users.is_empty() {
        bail!("users file {} lists no users", path.display());
    }
    Ok(users)
}

fn parse(text: &str) -> anyhow::Result<Vec<User>> {
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((name, password)) = line.split_once(':') else {
            bail!("line {}: expected name:password", i + 1);
        };
        let name = name.trim();
        if name.is_empty() {
            bail!("line {}: empty user name", i + 1);
        }
        users.push(User {
            name: name.to_string(),
            password: password.to_string(),
        });
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let users = parse("# comment\nalice:secret\n\nbob:a:b:c\r\n").unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].name, "alice");
        assert_eq!(users[0].password, "secret");
        assert_eq!(users[1].password, "a:b:c");
        assert!(parse("nocolon\n").is_err());
        assert!(parse(":pw\n").is_err());
    }
}
