//! Admission for open files, so the server never runs out of descriptors
//! in the middle of something.
//!
//! Every connection is a descriptor, and every transfer holds one more (the
//! file). Finishing an upload needs a descriptor too (the target's folder,
//! to rename into and fsync), and a connection can only finish by
//! finishing its upload: if transfers took the last descriptors, every
//! upload would wait for one that only another upload's end could free.
//! So a transfer starts only while descriptors remain for all open
//! connections plus a reserve; otherwise it waits (see `Phase::Deferred`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Descriptors kept free for the listener, the poller, the disk threads'
/// short-lived opens and accepting new connections.
const RESERVE: usize = 64;

/// Counts transfer files against the open-files limit.
#[derive(Debug)]
pub struct FdBudget {
    limit: usize,
    conns: usize,
    files: Arc<AtomicUsize>,
}

/// One transfer's claim on a descriptor; released when dropped (wherever
/// the transfer ends, on the reactor or on a disk thread).
#[derive(Debug)]
pub struct FileSlot(Arc<AtomicUsize>);

impl Drop for FileSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl FdBudget {
    /// A budget under the process's open-files limit.
    pub fn new() -> FdBudget {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        FdBudget {
            limit,
            conns: 0,
            files: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The number of open connections changed.
    pub fn set_conns(&mut self, conns: usize) {
        self.conns = conns;
    }

    /// A slot for one more transfer file, if the limit allows.
    pub fn take(&self) -> Option<FileSlot> {
        let files = self.files.load(Ordering::Acquire);
        let used = files.saturating_add(self.conns).saturating_add(RESERVE);
        if used >= self.limit {
            return None;
        }
        self.files.fetch_add(1, Ordering::AcqRel);
        Some(FileSlot(Arc::clone(&self.files)))
    }
}

impl Default for FdBudget {
    fn default() -> FdBudget {
        FdBudget::new()
    }
}
