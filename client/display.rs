//! Turning what the server sends into text that is safe to print.
//!
//! Names come from the server (and from whoever uploaded them), so a name
//! could carry terminal escape sequences or line breaks; everything printed
//! goes through [`sanitize`] first. Times are shown in the zone chosen in
//! `clock.rs`; folders (and links, and special files) are coloured when
//! stdout is a terminal that wants colour (see [`Look::current`]).

use std::borrow::Cow;
use std::io::IsTerminal;

use anstyle::{AnsiColor, Style};
use jiff::tz::TimeZone;

use ftpd::proto::{Entry, EntryKind, QuotaInfo};
use ftpd::size::format_size;

/// Replaces characters that could move the cursor, change colours or hide
/// text (control characters, Unicode line separators and bidi overrides)
/// with `?`.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| if is_unsafe(c) { '?' } else { c })
            .collect(),
    )
}

fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{2028}' | '\u{2029}'          // line and paragraph separators
            | '\u{200e}' | '\u{200f}'        // left-to-right / right-to-left marks
            | '\u{202a}'..='\u{202e}'        // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}'        // bidi isolates
        )
}

/// The `ls -l` style type letter.
pub fn kind_char(kind: EntryKind) -> char {
    match kind {
        EntryKind::Dir => 'd',
        EntryKind::File => '-',
        EntryKind::Symlink => 'l',
        EntryKind::Other => '?',
    }
}

fn kind_word(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Dir => "directory",
        EntryKind::File => "file",
        EntryKind::Symlink => "symbolic link",
        EntryKind::Other => "special file",
    }
}

/// How `ls` orders and shows a listing (`ls -h -t -S -r`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListOptions {
    /// Sizes for people: 1.5K, 23M, 4.0G.
    #[arg(short = 'h', long)]
    pub human: bool,
    /// Newest first.
    #[arg(short = 't', overrides_with = "by_size")]
    pub by_time: bool,
    /// Largest first.
    #[arg(short = 'S', overrides_with = "by_time")]
    pub by_size: bool,
    /// Reverse the order.
    #[arg(short = 'r', long)]
    pub reverse: bool,
}

/// Sorts a listing: by name (byte order) unless `-t` or `-S`, which break
/// ties by name; `-r` reverses the whole order.
pub fn sort_entries(entries: &mut [Entry], options: &ListOptions) {
    entries.sort_unstable_by(|a, b| {
        let key = if options.by_time {
            b.mtime.cmp(&a.mtime)
        } else if options.by_size {
            b.size.cmp(&a.size)
        } else {
            std::cmp::Ordering::Equal
        };
        key.then_with(|| a.name.cmp(&b.name))
    });
    if options.reverse {
        entries.reverse();
    }
}

/// A size as `ls -lh` shows it: bytes below 1 KiB, else one decimal below
/// ten units and whole units above, always rounded up (binary units).
pub fn human_size(bytes: u64) -> String {
    if bytes < 1024 {
        return bytes.to_string();
    }
    let bytes = u128::from(bytes);
    for (i, unit) in ['K', 'M', 'G', 'T', 'P', 'E'].into_iter().enumerate() {
        let scale = 1u128 << (10 * (i + 1));
        let tenths = (bytes * 10).div_ceil(scale);
        if tenths < 100 {
            return format!("{}.{}{unit}", tenths / 10, tenths % 10);
        }
        let whole = bytes.div_ceil(scale);
        if whole < 1024 || unit == 'E' {
            return format!("{whole}{unit}");
        }
    }
    unreachable!("every u64 fits in exbibytes")
}

/// How a listing looks where it is printed: the time zone and clock for
/// the time column, and whether names are coloured.
pub struct Look {
    pub zone: TimeZone,
    /// Seconds since the epoch, for `ls`'s "recent" rule.
    pub now: i64,
    pub colour: bool,
}

impl Look {
    /// For stdout now: the zone from `clock.rs`, colour only on a terminal
    /// that is not `TERM=dumb`, and never with `NO_COLOR` set (no-color.org:
    /// any non-empty value).
    pub fn current() -> Look {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        Look {
            zone: crate::clock::zone(),
            now: crate::clock::now(),
            colour: std::io::stdout().is_terminal() && !no_color && !dumb,
        }
    }

    /// `ls`'s time column; a time beyond what a calendar can show (only a
    /// broken server sends one) is shown as the old UTC date instead.
    fn time(&self, secs: i64) -> String {
        crate::clock::ls_time(secs, self.now, &self.zone)
            .unwrap_or_else(|| format_time(secs, false))
    }

    /// The name, sanitized, in the colour of its kind (as `ls --color`).
    fn name(&self, e: &Entry) -> String {
        let name = sanitize(&e.name);
        let style = match e.kind {
            EntryKind::Dir => AnsiColor::Blue.on_default().bold(),
            EntryKind::Symlink => AnsiColor::Cyan.on_default().bold(),
            EntryKind::Other => AnsiColor::Yellow.on_default(),
            EntryKind::File => Style::new(),
        };
        if self.colour && style != Style::new() {
            format!("{style}{name}{style:#}")
        } else {
            name.into_owned()
        }
    }
}

/// Formats a listing, one line per entry: type, size (in bytes, or for
/// people with `human`), time as `ls -l` shows it, name; sizes are
/// right-aligned. The type column's `d` marks folders.
pub fn listing_lines<'a>(
    entries: &'a [Entry],
    human: bool,
    look: &'a Look,
) -> impl Iterator<Item = String> + 'a {
    let size = move |e: &Entry| {
        if human {
            human_size(e.size)
        } else {
            e.size.to_string()
        }
    };
    let width = entries.iter().map(|e| size(e).len()).max().unwrap_or(1);
    entries.iter().map(move |e| {
        format!(
            "{} {:>width$} {} {}",
            kind_char(e.kind),
            size(e),
            look.time(e.mtime),
            look.name(e)
        )
    })
}

/// Formats the answer to `stat`.
pub fn stat_text(e: &Entry) -> String {
    format!(
        "name:     {}\ntype:     {}\nsize:     {} bytes ({})\nmodified: {}",
        sanitize(&e.name),
        kind_word(e.kind),
        e.size,
        format_size(e.size),
        crate::clock::full_time(e.mtime, &crate::clock::zone())
            .unwrap_or_else(|| format!("{} UTC", format_time(e.mtime, true))),
    )
}

/// Formats the answer to `quota`.
pub fn quota_text(q: &QuotaInfo) -> String {
    let mut out = format!("used       {}\n", format_size(q.used));
    if q.reserved > 0 {
        // Space promised to uploads in progress counts against the quota too.
        out += &format!("reserved   {}\n", format_size(q.reserved));
    }
    out += &format!(
        "limit      {}\navailable  {}",
        format_size(q.limit),
        format_size(q.available())
    );
    // Files and folders count one each, unfinished uploads included.
    out += &match q.max_files {
        Some(max) => format!("\nfiles      {} of {max}", q.files),
        None => format!("\nfiles      {}", q.files),
    };
    out
}

/// Formats seconds since the epoch as `YYYY-MM-DD HH:MM[:SS]` in UTC.
pub fn format_time(secs: i64, with_seconds: bool) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
    if with_seconds {
        format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}")
    } else {
        format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}")
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date
/// (Howard Hinnant's `civil_from_days`, valid for every `i64` day count the
/// server could send without overflowing).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March based
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_control_characters() {
        assert_eq!(sanitize("plain name.txt"), "plain name.txt");
        assert!(matches!(sanitize("ok"), Cow::Borrowed(_)));
        assert_eq!(sanitize("a\x1b[2Jb"), "a?[2Jb");
        assert_eq!(sanitize("two\nlines\r"), "two?lines?");
        assert_eq!(sanitize("bell\x07 del\x7f c1\u{9b}"), "bell? del? c1?");
        assert_eq!(sanitize("evil\u{202e}txt.exe"), "evil?txt.exe");
        assert_eq!(sanitize("tab\there"), "tab?here");
        assert_eq!(sanitize("ünïcödé ✓"), "ünïcödé ✓");
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(format_time(0, false), "1970-01-01 00:00");
        assert_eq!(format_time(1_795_992_727, false), "2026-11-29 22:52");
        assert_eq!(format_time(1_795_992_727, true), "2026-11-29 22:52:07");
        assert_eq!(format_time(951_782_400, false), "2000-02-29 00:00");
        assert_eq!(format_time(-1, true), "1969-12-31 23:59:59");
        // Absurd times from a hostile server must not panic.
        format_time(i64::MAX, true);
        format_time(i64::MIN, true);
    }

    #[test]
    fn listing_is_aligned_and_safe() {
        let entries = [
            Entry {
                name: "docs".into(),
                kind: EntryKind::Dir,
                size: 4096,
                mtime: 1_795_992_727,
            },
            Entry {
                name: "a\x1bb".into(),
                kind: EntryKind::File,
                size: 7,
                mtime: 0,
            },
            Entry {
                name: "link".into(),
                kind: EntryKind::Symlink,
                size: 12,
                mtime: 0,
            },
        ];
        let mut look = Look {
            zone: TimeZone::UTC,
            now: 1_795_992_727,
            colour: false,
        };
        let lines: Vec<_> = listing_lines(&entries, false, &look).collect();
        assert_eq!(
            lines,
            [
                "d 4096 Nov 29 22:52 docs",
                "-    7 Jan  1  1970 a?b",
                "l   12 Jan  1  1970 link",
            ]
        );
        look.colour = true;
        let lines: Vec<_> = listing_lines(&entries, false, &look).collect();
        assert_eq!(
            lines,
            [
                "d 4096 Nov 29 22:52 \x1b[1m\x1b[34mdocs\x1b[0m",
                "-    7 Jan  1  1970 a?b",
                "l   12 Jan  1  1970 \x1b[1m\x1b[36mlink\x1b[0m",
            ]
        );
    }

    #[test]
    fn human_sizes_round_up_like_ls() {
        assert_eq!(human_size(0), "0");
        assert_eq!(human_size(1023), "1023");
        assert_eq!(human_size(1024), "1.0K");
        assert_eq!(human_size(1025), "1.1K");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(10 * 1024 - 1), "10K");
        assert_eq!(human_size(23 << 20), "23M");
        assert_eq!(human_size(4 << 30), "4.0G");
        assert_eq!(human_size((1 << 20) - 1), "1.0M");
        assert_eq!(human_size(u64::MAX), "16E");
    }

    #[test]
    fn listings_sort_by_name_time_or_size() {
        let e = |name: &str, size, mtime| Entry {
            name: name.into(),
            kind: EntryKind::File,
            size,
            mtime,
        };
        let names = |o: ListOptions| {
            let mut v = [e("b", 5, 30), e("a", 9, 10), e("c", 5, 20)];
            sort_entries(&mut v, &o);
            v.iter().map(|e| e.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(ListOptions::default()), ["a", "b", "c"]);
        let by_time = ListOptions {
            by_time: true,
            ..Default::default()
        };
        assert_eq!(names(by_time.clone()), ["b", "c", "a"]);
        let by_size = ListOptions {
            by_size: true,
            ..Default::default()
        };
        assert_eq!(names(by_size.clone()), ["a", "b", "c"]);
        let reverse = ListOptions {
            reverse: true,
            ..by_size
        };
        assert_eq!(names(reverse), ["c", "b", "a"]);
    }

    #[test]
    fn quota_shows_reserved_only_when_present() {
        let q = QuotaInfo {
            used: 10,
            reserved: 0,
            limit: 100,
            files: 3,
            max_files: None,
        };
        assert!(!quota_text(&q).contains("reserved"));
        assert!(quota_text(&q).ends_with("files      3"));
        let q = QuotaInfo {
            reserved: 5,
            max_files: Some(10),
            ..q
        };
        assert!(quota_text(&q).contains("reserved"));
        assert!(quota_text(&q).ends_with("files      3 of 10"));
    }
}
