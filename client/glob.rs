//! Remote glob patterns, expanded by ftpc: `*`, `?` and `[...]` (with `[!...]`
//! for "not"), each within one path component, as a shell would. A `*` or
//! `?` does not match a leading `.`, so hidden names are matched only by a
//! pattern that starts with `.` itself.
//!
//! Each component with a pattern lists the folders matched so far (a page
//! at a time) and keeps the names that match; the others are taken as
//! they are. [`expand_remote`] is the one entry point for every command.

use glob::{MatchOptions, Pattern};

use ftpd::proto::{Entry, EntryKind, ErrorCode, MAX_LIST_ENTRIES};

use crate::conn::Conn;
use crate::display::sanitize;
use crate::error::Failure;
use crate::listing::{for_each_entry, join};

/// Most paths one pattern may expand to, so an expansion holds no more
/// than a listing does.
pub const MAX_MATCHES: usize = MAX_LIST_ENTRIES;

const OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// Whether `s` holds a pattern character (`*`, `?` or `[`).
pub fn has_magic(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The remote paths `pattern` names, sorted. A path without pattern
/// characters is returned as it is, unchecked and without asking the
/// server; a pattern that matches nothing is an error that says so.
pub fn expand_remote(conn: &mut Conn, pattern: &str) -> Result<Vec<String>, Failure> {
    Ok(expand_remote_entries(conn, pattern)?
        .into_iter()
        .map(|(path, _)| path)
        .collect())
}

/// Like [`expand_remote`], with each match's entry from the listing that
/// found it (`None` for a path without pattern characters, which was not
/// looked up), so a caller needs no `stat` per match.
pub fn expand_remote_entries(
    conn: &mut Conn,
    pattern: &str,
) -> Result<Vec<(String, Option<Entry>)>, Failure> {
    if !has_magic(pattern) {
        return Ok(vec![(pattern.to_owned(), None)]);
    }
    let components: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let mut found: Vec<(String, Option<Entry>)> = vec![(
        if pattern.starts_with('/') {
            "/".to_owned()
        } else {
            String::new()
        },
        None,
    )];
    let mut expanded = false;
    for (i, component) in components.iter().enumerate() {
        if !has_magic(component) {
            found = found
                .iter()
                .map(|(base, _)| (join(base, component), None))
                .collect();
            continue;
        }
        let matcher = Pattern::new(component)
            .map_err(|e| Failure::Usage(format!("bad pattern \"{}\": {e}", sanitize(pattern))))?;
        let last = i + 1 == components.len();
        let mut next = Vec::new();
        for (base, _) in &found {
            let listed = for_each_entry(conn, base, |entry| {
                let plain = !matches!(entry.name.as_str(), "" | "." | "..")
                    && !entry.name.contains(['/', '\0']);
                if plain
                    && (last || entry.kind == EntryKind::Dir)
                    && matcher.matches_with(&entry.name, OPTIONS)
                {
                    if next.len() == MAX_MATCHES {
                        return Err(Failure::Usage(format!(
                            "\"{}\" matches more than {MAX_MATCHES} names; narrow it down",
                            sanitize(pattern)
                        )));
                    }
                    let path = join(base, &entry.name);
                    next.push((path, Some(entry)));
                }
                Ok(())
            });
            match listed {
                Ok(()) => {}
                // A folder found by an earlier pattern may have gone, or a
                // literal part after it may not exist there: no match.
                Err(Failure::Refused {
                    code: ErrorCode::NotFound | ErrorCode::NotADirectory,
                    ..
                }) if expanded => {}
                Err(e) => return Err(e),
            }
        }
        next.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        found = next;
        expanded = true;
    }
    if found.is_empty() {
        return Err(Failure::Refused {
            code: ErrorCode::NotFound,
            message: format!("no match for \"{}\"", sanitize(pattern)),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_within_one_name() {
        let p = |s| Pattern::new(s).unwrap();
        assert!(p("*.txt").matches_with("a.txt", OPTIONS));
        assert!(!p("*.txt").matches_with(".hidden.txt", OPTIONS));
        assert!(p(".*").matches_with(".hidden", OPTIONS));
        assert!(p("?.log").matches_with("a.log", OPTIONS));
        assert!(!p("?.log").matches_with("ab.log", OPTIONS));
        assert!(p("[ab]*").matches_with("b1", OPTIONS));
        assert!(!p("[!ab]*").matches_with("b1", OPTIONS));
        assert!(!p("*.TXT").matches_with("a.txt", OPTIONS));
    }

    #[test]
    fn magic_is_recognised() {
        assert!(has_magic("logs/*.txt"));
        assert!(has_magic("a?"));
        assert!(has_magic("[ab]"));
        assert!(!has_magic("plain name.txt"));
    }
}
