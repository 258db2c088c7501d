//! The remote session as the shell shares it between the command loop and
//! Tab completion: the connection, the remote folder, and a listing that
//! completion may have left unfinished.
//!
//! Completion must never hold the prompt for long, so each Tab reads a
//! folder's listing for at most [`COMPLETION_WAIT`] and completes from the
//! names that have arrived. A listing not over by then stays pending: the
//! next Tab on the same folder goes on reading it (so the names add up),
//! and the next command first reads the rest and drops it, so a request
//! never meets a stray listing frame.

use std::time::{Duration, Instant};

use ftpd::proto::{EntryKind, Reply, Request};

use crate::commands;
use crate::conn::Conn;
use crate::error::Failure;
use crate::pace::Awaiting;

/// How long one Tab waits for a folder's listing.
pub const COMPLETION_WAIT: Duration = Duration::from_millis(500);

/// How long a folder's whole listing stays good for Tab. Any command
/// clears it sooner, so it only spares the server repeated Tabs on a line.
const CACHE_FOR: Duration = Duration::from_secs(5);

/// Names kept from one listing for completion (the server's own cap on a
/// listing is higher; a few thousand names are more than a prompt can show).
const MAX_NAMES: usize = 5000;

/// One name in a folder, and whether it is a folder itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub name: String,
    pub is_dir: bool,
}

/// A folder's names, for Tab: whole, or as far as they have arrived.
struct Listing {
    /// The remote folder then, and the folder listed (as typed).
    cwd: String,
    dir: String,
    names: Vec<Name>,
    /// When the listing ended (`None` while it is still coming).
    done_at: Option<Instant>,
}

impl Listing {
    fn is_for(&self, cwd: &str, dir: &str) -> bool {
        self.cwd == cwd && self.dir == dir
    }
}

/// The logged-in session.
pub struct Remote {
    conn: Conn,
    /// The remote folder, for the prompt and for logging in again.
    pub cwd: String,
    /// The last listing read for Tab; while it is not done, the rest of it
    /// is on its way from the server.
    listing: Option<Listing>,
}

impl Remote {
    pub fn new(mut conn: Conn) -> Result<Remote, Failure> {
        let cwd = commands::pwd(&mut conn)?;
        Ok(Remote {
            conn,
            cwd,
            listing: None,
        })
    }

    fn pending(&self) -> bool {
        self.listing.as_ref().is_some_and(|l| l.done_at.is_none())
    }

    /// The connection, ready for a request (a listing left pending by Tab
    /// is read to its end first).
    pub fn conn(&mut self) -> Result<&mut Conn, Failure> {
        if self.pending() {
            let pace = self.conn.pace(Awaiting::Listing);
            loop {
                match self.conn.recv_paced(&pace) {
                    Ok(Reply::Entries(_)) => {}
                    Ok(Reply::ListEnd { .. }) | Err(Failure::Refused { .. }) => break,
                    Ok(other) => return Err(Failure::unexpected("Entries or ListEnd", &other)),
                    Err(e) => return Err(e),
                }
            }
            self.listing = None;
        }
        Ok(&mut self.conn)
    }

    /// Ends the session politely.
    pub fn bye(self) {
        self.conn.bye();
    }

    /// A command ran: what Tab knew may be stale. (A pending listing stays
    /// pending: only [`Remote::conn`] may finish it.)
    pub fn forget_listing(&mut self) {
        if !self.pending() {
            self.listing = None;
        }
    }

    /// Swaps in a new session (after a cancel) and goes back to the
    /// remote folder; if that folder is gone, stays where the login put us.
    pub fn replace(&mut self, conn: Conn) -> Result<(), Failure> {
        self.conn = conn;
        self.listing = None;
        match commands::cd(&mut self.conn, &self.cwd) {
            Ok(cwd) => self.cwd = cwd,
            Err(Failure::Refused { .. }) => self.cwd = commands::pwd(&mut self.conn)?,
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The names in remote folder `dir` ("" for the current one), for Tab,
    /// as far as they arrive within [`COMPLETION_WAIT`]. Errors give no
    /// names; the next command reports a lost session.
    pub fn names(&mut self, dir: &str) -> Vec<Name> {
        let deadline = Instant::now() + COMPLETION_WAIT;
        if let Some(l) = &self.listing
            && l.is_for(&self.cwd, dir)
            && l.done_at.is_some_and(|t| t.elapsed() < CACHE_FOR)
        {
            return l.names.clone();
        }
        // A listing of another folder still coming is read first (its
        // names are no use here), within the same wait.
        let other_pending = self.pending()
            && !self
                .listing
                .as_ref()
                .is_some_and(|l| l.is_for(&self.cwd, dir));
        if other_pending && (self.read_listing(deadline).is_err() || self.pending()) {
            return Vec::new();
        }
        if !self.pending() {
            if self.conn.send(&Request::List { path: dir.into() }).is_err() {
                return Vec::new();
            }
            self.listing = Some(Listing {
                cwd: self.cwd.clone(),
                dir: dir.to_owned(),
                names: Vec::new(),
                done_at: None,
            });
        }
        // Our short wait running out is no error; a lost link shows at the
        // next command.
        let _ = self.read_listing(deadline);
        self.listing
            .as_ref()
            .map(|l| l.names.clone())
            .unwrap_or_default()
    }

    /// Reads the pending listing until it ends or `deadline` passes.
    fn read_listing(&mut self, deadline: Instant) -> Result<(), Failure> {
        let Some(listing) = self.listing.as_mut().filter(|l| l.done_at.is_none()) else {
            return Ok(());
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.conn.recv_within(left) {
                Ok(Reply::Entries(batch)) => {
                    let room = MAX_NAMES.saturating_sub(listing.names.len());
                    listing
                        .names
                        .extend(batch.into_iter().take(room).map(|e| Name {
                            is_dir: e.kind == EntryKind::Dir,
                            name: e.name,
                        }));
                }
                Ok(Reply::ListEnd { .. }) => {
                    listing.done_at = Some(Instant::now());
                    return Ok(());
                }
                // Not a folder, no such folder: nothing to complete.
                Err(Failure::Refused { .. }) => {
                    listing.names.clear();
                    listing.done_at = Some(Instant::now());
                    return Ok(());
                }
                Ok(other) => return Err(Failure::unexpected("Entries or ListEnd", &other)),
                Err(e) => return Err(e),
            }
        }
    }
}
