//! Transfer progress on stderr: a bar while it runs (only on a terminal),
//! a one-line summary at the end (unless `--quiet`).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use ftpd::size::format_size;
use indicatif::style::ProgressTracker;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::display::sanitize;

/// Redraw interval; also how often the stall check runs.
const TICK: Duration = Duration::from_millis(200);

/// No progress for this long shows "stalled".
const STALL_AFTER: Duration = Duration::from_secs(3);

/// Longest name shown in the bar, in characters.
const NAME_WIDTH: usize = 30;

/// Which way the bytes go; only changes words.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    Sent,
    Received,
}

/// Progress of one transfer.
pub struct Progress {
    bar: Option<ProgressBar>,
    direction: Direction,
    started: Instant,
    offset: u64,
    total: u64,
    quiet: bool,
}

impl Progress {
    /// Starts showing a transfer of `total` bytes of which `offset` were
    /// already there.
    pub fn start(
        direction: Direction,
        name: &str,
        total: u64,
        offset: u64,
        quiet: bool,
    ) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let mut msg = short_name(&sanitize(name));
            if offset > 0 {
                msg += &format!(" (resumed at {})", format_size(offset));
            }
            let style = ProgressStyle::with_template(
                "{msg} [{bar:25}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}{stalled}",
            )
            .expect("the template is valid")
            .progress_chars("=> ")
            .with_key("stalled", Stall::new());
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
                .with_style(style)
                .with_message(msg)
                .with_position(offset);
            // The rate counts only this run's bytes, not the resumed prefix.
            bar.reset_eta();
            bar.enable_steady_tick(TICK);
            bar
        });
        Progress {
            bar,
            direction,
            started: Instant::now(),
            offset,
            total,
            quiet,
        }
    }

    /// Counts `n` more bytes.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Clears the bar and prints the summary line.
    pub fn finish(mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.quiet {
            eprintln!(
                "{}",
                summary(
                    self.direction,
                    self.total - self.offset,
                    self.offset,
                    self.started.elapsed()
                )
            );
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Unfinished: leave the bar as it was, so the error that follows
        // shows where the transfer stopped.
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

/// Prints a remark about a transfer on stderr unless `quiet`.
pub fn note(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("{msg}");
    }
}

/// "sent 1.0 GiB in 2.3 s, 445.0 MiB/s, crc32 ok".
fn summary(direction: Direction, bytes: u64, resumed_at: u64, took: Duration) -> String {
    let verb = match direction {
        Direction::Sent => "sent",
        Direction::Received => "received",
    };
    let secs = took.as_secs_f64();
    let rate = (bytes as f64 / secs.max(1e-6)) as u64;
    let mut out = format!("{verb} {}", format_size(bytes));
    if resumed_at > 0 {
        let _ = write!(out, " (resumed at {})", format_size(resumed_at));
    }
    let places = if secs < 1.0 { 2 } else { 1 };
    let _ = write!(
        out,
        " in {secs:.places$} s, {}/s, crc32 ok",
        format_size(rate)
    );
    out
}

/// The end of a long name, which says most about it (a bar's current
/// file, here and in a tree job's bar).
pub fn short_name(name: &str) -> String {
    let count = name.chars().count();
    if count <= NAME_WIDTH {
        return name.to_owned();
    }
    let tail: String = name.chars().skip(count - (NAME_WIDTH - 1)).collect();
    format!("…{tail}")
}

/// Template key `{stalled}`: " stalled" once nothing moved for a while.
#[derive(Clone)]
struct Stall {
    pos: u64,
    since: Instant,
    stalled: bool,
}

impl Stall {
    fn new() -> Stall {
        Stall {
            pos: 0,
            since: Instant::now(),
            stalled: false,
        }
    }
}

impl ProgressTracker for Stall {
    fn clone_box(&self) -> Box<dyn ProgressTracker> {
        Box::new(self.clone())
    }

    fn tick(&mut self, state: &ProgressState, now: Instant) {
        if state.pos() != self.pos {
            self.pos = state.pos();
            self.since = now;
        }
        self.stalled = !state.is_finished() && now.duration_since(self.since) >= STALL_AFTER;
    }

    fn reset(&mut self, state: &ProgressState, now: Instant) {
        self.pos = state.pos();
        self.since = now;
        self.stalled = false;
    }

    fn write(&self, _: &ProgressState, w: &mut dyn std::fmt::Write) {
        if self.stalled {
            let _ = w.write_str("  stalled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_keep_their_end() {
        assert_eq!(short_name("a.txt"), "a.txt");
        let long = format!("{}end.bin", "x".repeat(40));
        let short = short_name(&long);
        assert_eq!(short.chars().count(), NAME_WIDTH);
        assert!(short.starts_with('…') && short.ends_with("end.bin"));
    }

    #[test]
    fn summary_line() {
        let s = summary(Direction::Sent, 0, 0, Duration::from_millis(1));
        assert!(s.starts_with("sent ") && s.ends_with("crc32 ok"), "{s}");
        let s = summary(Direction::Received, 10, 5, Duration::from_secs(2));
        assert!(
            s.starts_with("received ") && s.contains(" in 2.0 s, "),
            "{s}"
        );
        assert!(s.contains("(resumed at "), "{s}");
    }
}
