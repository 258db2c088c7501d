//! Ctrl-C in the shell: it cancels the transfer in progress, not the shell.
//!
//! The protocol has no message to cancel a transfer, so a cancelled
//! transfer ends its session: the SIGINT handler only sets a flag; the
//! transfer loops look at it between chunks (and while they sleep for
//! `--limit-rate`), and so does every wait on the server, every [`POLL`]
//! (`conn.rs`: a stalled server does not hold the prompt hostage; the
//! signal itself may land on another thread and interrupt no read). They fail
//! with [`Failure::Cancelled`], and the shell then drops the connection and
//! logs in again. Any command waiting on the server can be cancelled so,
//! a long listing too. What was moved so far stays for
//! a resume: the server keeps an upload's partial file when its client goes
//! away, and a download keeps its `.part` file.
//!
//! One-shot commands never install the handler, so there Ctrl-C still ends
//! ftpc at once (a download's `.part` is kept, as before).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Failure;

/// How often a wait on the server looks at the flag.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Set by the SIGINT handler once the shell installed it.
static REQUESTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Makes SIGINT set the flag instead of ending the process.
pub fn install() -> std::io::Result<()> {
    let flag = REQUESTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(flag))?;
    Ok(())
}

/// Forgets a Ctrl-C pressed while no transfer ran (during a listing, say),
/// so it cannot cancel the next command.
pub fn reset() {
    if let Some(flag) = REQUESTED.get() {
        flag.store(false, Ordering::Relaxed);
    }
}

/// Fails with [`Failure::Cancelled`] once Ctrl-C was pressed (and clears
/// the flag); the shell says what was cancelled and how to resume.
pub fn check() -> Result<(), Failure> {
    match REQUESTED.get() {
        Some(flag) if flag.swap(false, Ordering::Relaxed) => Err(Failure::Cancelled),
        _ => Ok(()),
    }
}
