//! The access and event log: one line per event on stderr, filtered by a
//! level set once at start.

use std::sync::atomic::{AtomicU8, Ordering};

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

/// Makes a peer-supplied string safe for a log line: control characters
/// (which could forge lines or drive a terminal) are escaped.
pub fn clean(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect()
}

/// Logs a line at a level: `log!(Info, "connect {addr}")`.
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        if $crate::server::log::enabled($crate::server::log::Level::$level) {
            eprintln!("{} {}", $crate::server::log::tag($crate::server::log::Level::$level), format_args!($($arg)*));
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
