//! The access and event log: one line per event on stderr, filtered by a
//! level set once at start.
//!
//! The reactor never waits on the log. `log!` formats a line and offers it
//! to a bounded queue ([`QUEUE_LINES`] lines, [`QUEUE_BYTES`] bytes); a
//! logging thread drains the queue to stderr in order. When the queue is
//! full the line is dropped and counted, and the next line that fits is
//! preceded by one saying how many were lost. Write errors are ignored:
//! after a broken pipe the thread stops writing and only drains, so a
//! vanished log reader never stops or kills the server.
//!
//! One line is always one event: every control, separator and format
//! character in a line is escaped as it is formatted. Strings a client
//! chose (names, paths, messages that hold them) go in through [`quoted`],
//! so each is one double-quoted field that cannot pose as other fields.

use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How much the server says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most detailed level that is printed.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// True when messages of `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Logs a line at a level: `log!(Info, "connect {addr}")`. It never
/// blocks: see the module notes.
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        if $crate::server::log::enabled($crate::server::log::Level::$level) {
            $crate::server::log::emit(
                $crate::server::log::Level::$level,
                format_args!($($arg)*),
            );
        }
    };
}

/// The prefix of a log line.
pub fn tag(level: Level) -> &'static str {
    match level {
        Level::Error => "ERROR",
        Level::Warn => "WARN ",
        Level::Info => "INFO ",
        Level::Debug => "DEBUG",
    }
}

/// Lines the queue holds: a burst of several thousand events (a few per
/// connection) waits for a slow reader without loss.
pub const QUEUE_LINES: usize = 4096;
/// Bytes the queued lines may take, so the queue stays small however long
/// its lines are.
pub const QUEUE_BYTES: usize = 1024 * 1024;
/// A line is cut here. The longest lines the server writes (two escaped
/// 1024-byte paths) stay well below it.
pub const MAX_LINE: usize = 16 * 1024;
/// What the logging thread writes at once.
const WRITE_BATCH: usize = 64 * 1024;

/// Wraps a client-supplied value (anything `Display`) so it prints as one
/// double-quoted field: `"`, `\`, control characters, line and paragraph
/// separators, bidi controls, zero-width and other format characters, and
/// anything else not printable are backslash-escaped (`\"`, `\\`, `\n`,
/// `\r`, `\t`, `\u{202e}`). `Debug` prints the same, so `{:?}` is safe too.
pub struct Quoted<T>(pub T);

/// `Quoted(value)`: the one way a client's string goes into a log line.
pub fn quoted<T: fmt::Display>(value: T) -> Quoted<T> {
    Quoted(value)
}

/// The name this module had before fields were quoted; prefer [`quoted`].
/// It returns the quoted form, so old call sites are safe as they stand.
pub fn clean(s: &str) -> Quoted<&str> {
    Quoted(s)
}

impl<T: fmt::Display> fmt::Display for Quoted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        write!(
            Escaper {
                out: f,
                quote: true
            },
            "{}",
            self.0
        )?;
        f.write_char('"')
    }
}

impl<T: fmt::Display> fmt::Debug for Quoted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// True for a character that must never reach the log raw: it could end
/// or split a line, reorder it on a terminal, hide, or look like a space.
fn must_escape(c: char) -> bool {
    if c.is_ascii_graphic() || c == ' ' {
        return false;
    }
    c.is_control()
        || matches!(c,
            '\u{00ad}' // soft hyphen
            | '\u{061c}' // Arabic letter mark
            | '\u{180e}' // Mongolian vowel separator
            | '\u{200b}'..='\u{200f}' // zero-width spaces, joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{206f}' // word joiner, bidi isolates, invisible operators
            | '\u{feff}' // zero-width no-break space
            | '\u{fff9}'..='\u{fffb}' // interlinear annotations
        )
        // The standard library's table of what is not printable: the other
        // format characters, separators other than space, unassigned and
        // private-use code points, and combining marks.
        || (!matches!(c, '"' | '\'' | '\\') && c.escape_debug().next() == Some('\\'))
}

/// Writes through to `out`, escaping what [`must_escape`] says; with
/// `quote`, also `"` and `\` (inside a quoted field).
struct Escaper<'a, W> {
    out: &'a mut W,
    quote: bool,
}

impl<W: fmt::Write> fmt::Write for Escaper<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut clean_from = 0;
        for (i, c) in s.char_indices() {
            let escape: Option<&str> = match c {
                '"' if self.quote => Some("\\\""),
                '\\' if self.quote => Some("\\\\"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                c if must_escape(c) => Some(""),
                _ => None,
            };
            let Some(escape) = escape else { continue };
            self.out.write_str(&s[clean_from..i])?;
            if escape.is_empty() {
                write!(self.out, "\\u{{{:x}}}", c as u32)?;
            } else {
                self.out.write_str(escape)?;
            }
            clean_from = i + c.len_utf8();
        }
        self.out.write_str(&s[clean_from..])
    }
}

/// A line under construction, cut at [`MAX_LINE`].
struct Line {
    text: String,
    cut: bool,
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.cut {
            return Ok(());
        }
        let room = MAX_LINE.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
        } else {
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.text.push_str(&s[..end]);
            self.cut = true;
        }
        Ok(())
    }
}

/// The whole line for a message, newline included, with every unsafe
/// character escaped.
fn format_line(level: Level, args: fmt::Arguments<'_>) -> String {
    let mut line = Line {
        text: String::with_capacity(128),
        cut: false,
    };
    line.text.push_str(tag(level));
    line.text.push(' ');
    // Writing into a String cannot fail; a Display impl that fails leaves
    // what it wrote, which is still a safe line.
    let _ = write!(
        Escaper {
            out: &mut line,
            quote: false,
        },
        "{args}"
    );
    if line.cut {
        line.text.push_str(" [line cut]");
    }
    line.text.push('\n');
    line.text
}

/// Formats and queues one line (the `log!` macro calls this).
pub fn emit(level: Level, args: fmt::Arguments<'_>) {
    let line = format_line(level, args);
    match QUEUE.get() {
        Some(queue) => queue.offer(line),
        // Not serving (admin commands, tests): write directly, and a
        // closed stderr is not an error worth dying for.
        None => {
            let _ = io::stderr().write_all(line.as_bytes());
        }
    }
}

/// The reactor's end of the queue.
struct Queue {
    tx: SyncSender<String>,
    shared: Arc<Shared>,
}

/// What the reactor and the logging thread both see.
#[derive(Default)]
struct Shared {
    /// Bytes the queued lines hold (their capacity), until written.
    bytes: AtomicUsize,
    /// Lines dropped since the last report of drops.
    dropped: AtomicU64,
    /// Signalled when `bytes` reaches zero, for `flush`.
    idle: Mutex<()>,
    drained: Condvar,
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

/// Starts the logging thread; from then on `log!` only queues. Calling it
/// again does nothing.
pub fn start() -> io::Result<()> {
    if QUEUE.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    let shared = Arc::new(Shared::default());
    let theirs = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("log".into())
        .spawn(move || drain(rx, &theirs))?;
    let _ = QUEUE.set(Queue { tx, shared });
    Ok(())
}

impl Queue {
    /// Queues a line, or counts it as dropped; never waits.
    fn offer(&self, line: String) {
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            // Report the gap where it is, before the next line that fits.
            if self.push(drop_notice(dropped)) {
                self.shared.dropped.fetch_sub(dropped, Ordering::Relaxed);
            } else {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if !self.push(line) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a line if both the line count and the byte budget allow.
    fn push(&self, line: String) -> bool {
        let len = line.capacity();
        let before = self.shared.bytes.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) > QUEUE_BYTES || self.tx.try_send(line).is_err() {
            self.shared.bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }
}

fn drop_notice(dropped: u64) -> String {
    format_line(
        Level::Warn,
        format_args!("log: {dropped} lines dropped here (the log output did not keep up)"),
    )
}

/// The logging thread: writes queued lines to stderr in batches, in order.
fn drain(rx: Receiver<String>, shared: &Shared) {
    let mut stderr = io::stderr();
    let mut broken = false;
    let mut batch = String::new();
    while let Ok(first) = rx.recv() {
        batch.clear();
        batch.push_str(&first);
        let mut freed = first.capacity();
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(line) => {
                    batch.push_str(&line);
                    freed += line.capacity();
                }
                Err(_) => break,
            }
        }
        if !broken && let Err(e) = stderr.write_all(batch.as_bytes()) {
            // Nobody will read a closed pipe again; other errors may pass.
            broken = e.kind() == io::ErrorKind::BrokenPipe;
        }
        let before = shared.bytes.fetch_sub(freed, Ordering::Relaxed);
        if before == freed {
            let _held = shared.idle.lock().unwrap_or_else(|e| e.into_inner());
            shared.drained.notify_all();
        }
        if batch.capacity() > 2 * WRITE_BATCH {
            batch = String::new(); // one huge burst does not stay allocated
        }
    }
}

/// Waits up to `wait` for queued lines to be written, first reporting any
/// lines dropped since the last report (used when the server stops).
pub fn flush(wait: Duration) {
    let Some(queue) = QUEUE.get() else {
        return;
    };
    let deadline = Instant::now() + wait;
    for _ in 0..2 {
        let dropped = queue.shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 && !queue.push(drop_notice(dropped)) {
            queue.shared.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        let held = queue.shared.idle.lock().unwrap_or_else(|e| e.into_inner());
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = queue.shared.drained.wait_timeout_while(held, left, |_| {
            queue.shared.bytes.load(Ordering::Relaxed) != 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> String {
        quoted(s).to_string()
    }

    #[test]
    fn plain_text_is_only_quoted() {
        assert_eq!(q("alice"), "\"alice\"");
        assert_eq!(q("/a b/c.txt"), "\"/a b/c.txt\"");
        assert_eq!(q("café ü 日本"), "\"café ü 日本\"");
        assert_eq!(q(""), "\"\"");
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(q(r#"a"b\c"#), r#""a\"b\\c""#);
        // A forged closing quote and field stays inside the field.
        assert_eq!(
            q("x\" outcome=ok user=\"root"),
            "\"x\\\" outcome=ok user=\\\"root\""
        );
    }

    #[test]
    fn controls_and_separators_are_escaped() {
        assert_eq!(q("a\nb\rc\td"), "\"a\\nb\\rc\\td\"");
        assert_eq!(q("\u{0}\u{1b}[31m\u{7f}"), "\"\\u{0}\\u{1b}[31m\\u{7f}\"");
        assert_eq!(q("\u{85}"), "\"\\u{85}\""); // NEL
        assert_eq!(q("a\u{2028}b\u{2029}"), "\"a\\u{2028}b\\u{2029}\"");
    }

    #[test]
    fn bidi_zero_width_and_format_characters_are_escaped() {
        for c in ('\u{202a}'..='\u{202e}').chain('\u{2066}'..='\u{2069}') {
            assert_eq!(q(&c.to_string()), format!("\"\\u{{{:x}}}\"", c as u32));
        }
        for c in [
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{2060}',
            '\u{feff}',
            '\u{ad}',
            '\u{61c}',
            '\u{600}',
            '\u{e0001}',
            '\u{fff9}',
        ] {
            assert_eq!(q(&c.to_string()), format!("\"\\u{{{:x}}}\"", c as u32));
        }
    }

    #[test]
    fn unprintable_and_lookalike_spaces_are_escaped() {
        // No-break and ideographic spaces, private use, unassigned.
        for c in ['\u{a0}', '\u{3000}', '\u{e000}', '\u{10ffff}', '\u{378}'] {
            assert_eq!(q(&c.to_string()), format!("\"\\u{{{:x}}}\"", c as u32));
        }
    }

    #[test]
    fn any_display_value_and_debug() {
        assert_eq!(
            quoted(format_args!("{}/{}", "a", "b\n")).to_string(),
            "\"a/b\\n\""
        );
        assert_eq!(format!("{:?}", clean("carol")), "\"carol\"");
        assert_eq!(format!("{}", clean("a\u{202e}")), "\"a\\u{202e}\"");
    }

    #[test]
    fn a_line_is_one_line_whatever_it_holds() {
        let line = format_line(Level::Info, format_args!("a\nb\u{2028}c\u{202e}d \"q\" \\"));
        assert_eq!(line, "INFO  a\\nb\\u{2028}c\\u{202e}d \"q\" \\\n");
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn a_long_line_is_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_LINE);
        let line = format_line(Level::Info, format_args!("{long}"));
        assert!(line.len() <= MAX_LINE + 32, "{}", line.len());
        assert!(line.ends_with(" [line cut]\n"));
    }

    #[test]
    fn a_full_queue_drops_counts_and_reports_in_place() {
        let (tx, rx) = mpsc::sync_channel(2);
        let queue = Queue {
            tx,
            shared: Arc::default(),
        };
        let line = |n: usize| format_line(Level::Info, format_args!("line {n}"));
        for n in 0..5 {
            queue.offer(line(n));
        }
        assert_eq!(queue.shared.dropped.load(Ordering::Relaxed), 3);
        let got: Vec<String> = rx.try_iter().collect();
        assert_eq!(got, [line(0), line(1)]);
        queue.offer(line(5));
        let got: Vec<String> = rx.try_iter().collect();
        assert_eq!(got, [drop_notice(3), line(5)]);
        assert_eq!(queue.shared.dropped.load(Ordering::Relaxed), 0);
        assert!(drop_notice(3).contains("log: 3 lines dropped here"));
    }

    #[test]
    fn the_byte_budget_bounds_the_queue_too() {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let queue = Queue {
            tx,
            shared: Arc::default(),
        };
        let long = "x".repeat(MAX_LINE);
        for _ in 0..QUEUE_LINES {
            queue.offer(format_line(Level::Info, format_args!("{long}")));
        }
        let held: usize = rx.try_iter().map(|l| l.capacity()).sum();
        assert!(held <= QUEUE_BYTES, "{held}");
        assert!(queue.shared.dropped.load(Ordering::Relaxed) > 0);
    }
}
