//! The report of a job over many files (`get -r`, `put -r`, several
//! sources): counts, the files that failed, one progress bar for the whole
//! job on a terminal, the summary line, and the exit code.
//!
//! A failure on one file never stops the others (unless the session is
//! lost); the job's exit code is that of the most serious failure, ranked
//! by [`SEVERITY`]. Use it like this:
//!
//! ```text
//! let mut report = TreeReport::start(Direction::Received, quiet);
//! report.discovered(files, bytes);      // as the walk finds them
//! report.begin_file("docs/a.txt");     // the bar shows the name
//! report.bytes(n);                     // per chunk
//! report.file_done(size) | report.skipped(size) | report.failed("docs/a.txt", &err);
//! report.not_followed(Unfollowed::Symlink);
//! report.finish()?                     // prints; Err carries the exit code
//! ```

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use ftpd::size::format_size;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::display::sanitize;
use crate::error::{self, Failure, exit};
pub use crate::progress::Direction;
use crate::progress::short_name;

/// Exit codes of failed files, most serious first: a lost session stops
/// everything, bad data is worse than a full quota, a full quota worse than
/// a refusal, and a refusal worse than a local problem. The job exits with
/// the first of these that any file failed with.
pub const SEVERITY: [u8; 5] = [
    exit::CONNECTION,
    exit::INTEGRITY,
    exit::QUOTA,
    exit::REFUSED,
    exit::OTHER,
];

/// Failed files named one by one at the end; the rest are counted.
pub const FAILURES_SHOWN: usize = 10;

/// Redraw interval of the bar.
const TICK: Duration = Duration::from_millis(200);

/// Things a tree job passes over without following them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfollowed {
    /// A symbolic link.
    Symlink,
    /// A FIFO, socket or device.
    Special,
    /// A name that is not valid UTF-8 (met by `put -r`'s local walk).
    #[allow(dead_code)]
    NotUtf8,
}

/// The more serious of two exit codes, by [`SEVERITY`] (a code not in it
/// ranks last).
pub fn more_serious(a: u8, b: u8) -> u8 {
    let rank = |c| {
        SEVERITY
            .iter()
            .position(|&s| s == c)
            .unwrap_or(SEVERITY.len())
    };
    if rank(b) < rank(a) { b } else { a }
}

/// A job's running counts and its bar.
pub struct TreeReport {
    direction: Direction,
    quiet: bool,
    started: Instant,
    bar: Option<ProgressBar>,
    /// Files and bytes found so far (the walk streams, so these grow).
    total_files: u64,
    total_bytes: u64,
    done_files: u64,
    done_bytes: u64,
    skipped_files: u64,
    skipped_bytes: u64,
    /// The first [`FAILURES_SHOWN`] failures, as "path: message".
    failures: Vec<String>,
    failed: u64,
    /// The most serious exit code among the failures.
    worst: Option<u8>,
    symlinks: u64,
    specials: u64,
    not_utf8: u64,
    current: String,
}

impl TreeReport {
    /// Starts a job; the bar shows only on a terminal and without `quiet`.
    pub fn start(direction: Direction, quiet: bool) -> TreeReport {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let style = ProgressStyle::with_template(
                "{msg} [{bar:20}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .expect("the template is valid")
            .progress_chars("=> ");
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
                .with_style(style);
            bar.enable_steady_tick(TICK);
            bar
        });
        TreeReport {
            direction,
            quiet,
            started: Instant::now(),
            bar,
            total_files: 0,
            total_bytes: 0,
            done_files: 0,
            done_bytes: 0,
            skipped_files: 0,
            skipped_bytes: 0,
            failures: Vec::new(),
            failed: 0,
            worst: None,
            symlinks: 0,
            specials: 0,
            not_utf8: 0,
            current: String::new(),
        }
    }

    /// The walk found `files` more files holding `bytes`.
    pub fn discovered(&mut self, files: u64, bytes: u64) {
        self.total_files = self.total_files.saturating_add(files);
        self.total_bytes = self.total_bytes.saturating_add(bytes);
        if let Some(bar) = &self.bar {
            bar.set_length(self.total_bytes);
        }
        self.redraw();
    }

    /// A file's transfer begins; the bar names it.
    pub fn begin_file(&mut self, name: &str) {
        if self.bar.is_some() {
            self.current = short_name(&sanitize(name));
            self.redraw();
        }
    }

    /// `n` more bytes moved.
    pub fn bytes(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// A file of `size` bytes arrived complete and verified. Bytes already
    /// counted with [`TreeReport::bytes`] are not counted again.
    pub fn file_done(&mut self, size: u64) {
        self.done_files += 1;
        self.done_bytes = self.done_bytes.saturating_add(size);
        self.redraw();
    }

    /// A file of `size` bytes was already there, identical; its bytes count
    /// as done on the bar.
    pub fn skipped(&mut self, size: u64) {
        self.skipped_files += 1;
        self.skipped_bytes = self.skipped_bytes.saturating_add(size);
        self.bytes(size);
        self.redraw();
    }

    /// A file failed; `path` is how the user names it. `size` bytes of it
    /// will not move (they leave the bar's total).
    pub fn failed(&mut self, path: &str, err: &anyhow::Error, size: u64) {
        self.failed += 1;
        let code = error::exit_code(err);
        self.worst = Some(self.worst.map_or(code, |w| more_serious(w, code)));
        if self.failures.len() < FAILURES_SHOWN {
            self.failures.push(format!("{}: {err:#}", sanitize(path)));
        }
        self.total_bytes = self.total_bytes.saturating_sub(size);
        if let Some(bar) = &self.bar {
            bar.set_length(self.total_bytes);
        }
        self.redraw();
    }

    /// Something was passed over without being followed.
    pub fn not_followed(&mut self, what: Unfollowed) {
        match what {
            Unfollowed::Symlink => self.symlinks += 1,
            Unfollowed::Special => self.specials += 1,
            Unfollowed::NotUtf8 => self.not_utf8 += 1,
        }
    }

    /// Files that failed so far.
    #[allow(dead_code)]
    pub fn failures(&self) -> u64 {
        self.failed
    }

    fn redraw(&self) {
        if let Some(bar) = &self.bar {
            let finished = self.done_files + self.skipped_files + self.failed;
            bar.set_message(format!(
                "{}/{} files {}",
                format_count(finished),
                format_count(self.total_files),
                self.current
            ));
        }
    }

    /// Ends the job: clears the bar, prints the warnings, the failed files
    /// (always, even with `quiet`) and the summary line; `Err` when any
    /// file failed, with the most serious failure's exit code. `fatal` is
    /// the failure that stopped the job early (a lost session), if any.
    pub fn finish(mut self, fatal: Option<anyhow::Error>) -> anyhow::Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.quiet {
            for line in self.warnings() {
                eprintln!("{line}");
            }
        }
        for line in &self.failures {
            eprintln!("ftpc: failed: {line}");
        }
        if self.failed > self.failures.len() as u64 {
            let more = self.failed - self.failures.len() as u64;
            eprintln!("ftpc: ... and {} more failed", format_count(more));
        }
        if !self.quiet {
            eprintln!("{}", self.summary(self.started.elapsed()));
        }
        if let Some(fatal) = fatal {
            return Err(fatal);
        }
        match self.worst {
            None => Ok(()),
            Some(code) => Err(Failure::Tree {
                failed: self.failed,
                code,
            }
            .into()),
        }
    }

    /// One line per kind of thing passed over.
    fn warnings(&self) -> Vec<String> {
        // "2 local symbolic links", "2 symbolic links on the server".
        let counted = |n: u64, one: &str, many: &str| {
            let noun = if n == 1 { one } else { many };
            match self.direction {
                Direction::Sent => format!("{} local {noun}", format_count(n)),
                Direction::Received => format!("{} {noun} on the server", format_count(n)),
            }
        };
        let mut lines = Vec::new();
        if self.symlinks > 0 {
            lines.push(format!(
                "skipped {} (never followed)",
                counted(self.symlinks, "symbolic link", "symbolic links")
            ));
        }
        if self.specials > 0 {
            lines.push(format!(
                "skipped {} (FIFOs, sockets, devices)",
                counted(self.specials, "special file", "special files")
            ));
        }
        if self.not_utf8 > 0 {
            lines.push(format!(
                "skipped {} whose names are not valid UTF-8",
                counted(self.not_utf8, "entry", "entries")
            ));
        }
        lines
    }

    /// "received 1,998 files (7.8 MiB) in 0.21 s, 2 skipped (unchanged),
    /// 0 failed, crc32 ok".
    fn summary(&self, took: Duration) -> String {
        let verb = match self.direction {
            Direction::Sent => "sent",
            Direction::Received => "received",
        };
        let secs = took.as_secs_f64();
        let places = if secs < 1.0 { 2 } else { 1 };
        let files = if self.done_files == 1 {
            "file"
        } else {
            "files"
        };
        let mut out = format!(
            "{verb} {} {files} ({}) in {secs:.places$} s, {} skipped (unchanged), {} failed",
            format_count(self.done_files),
            format_size(self.done_bytes),
            format_count(self.skipped_files),
            format_count(self.failed),
        );
        if self.worst != Some(exit::INTEGRITY) {
            let _ = write!(out, ", crc32 ok");
        }
        out
    }
}

impl Drop for TreeReport {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

/// `1998` as "1,998".
pub fn format_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_separators() {
        assert_eq!(format_count(0), "0");
        assert_eq!(format_count(999), "999");
        assert_eq!(format_count(1998), "1,998");
        assert_eq!(format_count(1_234_567), "1,234,567");
    }

    #[test]
    fn the_most_serious_failure_wins() {
        assert_eq!(more_serious(exit::OTHER, exit::REFUSED), exit::REFUSED);
        assert_eq!(more_serious(exit::QUOTA, exit::REFUSED), exit::QUOTA);
        assert_eq!(more_serious(exit::QUOTA, exit::INTEGRITY), exit::INTEGRITY);
        assert_eq!(
            more_serious(exit::CONNECTION, exit::INTEGRITY),
            exit::CONNECTION
        );
        assert_eq!(more_serious(exit::OTHER, 42), exit::OTHER);
    }

    #[test]
    fn summary_and_exit_code() {
        let mut r = TreeReport::start(Direction::Received, true);
        r.discovered(4, 3000);
        r.file_done(1000);
        r.skipped(1000);
        let refused = anyhow::Error::new(Failure::refused(ftpd::proto::ErrorCode::NotFound, "x"));
        r.failed("a", &refused, 500);
        r.failed("b", &anyhow::anyhow!("local trouble"), 500);
        let s = r.summary(Duration::from_millis(210));
        assert_eq!(
            s,
            "received 1 file (1000 bytes) in 0.21 s, 1 skipped (unchanged), 2 failed, crc32 ok"
                .replace("1000 bytes", &format_size(1000))
        );
        let err = r.finish(None).unwrap_err();
        assert_eq!(error::exit_code(&err), exit::REFUSED);
    }

    #[test]
    fn warnings_count_what_was_not_followed() {
        let mut r = TreeReport::start(Direction::Sent, true);
        r.not_followed(Unfollowed::Symlink);
        r.not_followed(Unfollowed::Symlink);
        r.not_followed(Unfollowed::Special);
        assert_eq!(
            r.warnings(),
            [
                "skipped 2 local symbolic links (never followed)",
                "skipped 1 local special file (FIFOs, sockets, devices)"
            ]
        );
    }
}
