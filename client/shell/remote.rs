//! The remote session as the shell shares it between the command loop and
//! Tab completion: the connection, the remote folder, and a listing that
//! completion may have left unfinished.
//!
//! Completion must never hold the prompt for long, so it reads a folder's
//! listing for at most [`COMPLETION_WAIT`]; if the listing is not over by
//! then, the rest is still on its way and is read (and dropped) before the
//! next request, so a request never meets a stray listing frame.

use std::time::{Duration, Instant};

use ftpd::proto::{EntryKind, Reply, Request};

use crate::commands;
use crate::conn::Conn;
use crate::error::Failure;
use crate::pace::Awaiting;

/// How long Tab waits for a folder's listing; it completes from what has
/// arrived by then.
pub const COMPLETION_WAIT: Duration = Duration::from_millis(500);

/// How long a folder's listing stays good for Tab. Any command clears it
/// sooner, so it only spares the server repeated Tabs on one line.
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

/// A folder's names, for Tab.
struct Cached {
    /// The remote folder then, and the folder listed (as typed).
    cwd: String,
    dir: String,
    at: Instant,
    names: Vec<Name>,
}

/// The logged-in session.
pub struct Remote {
    conn: Conn,
    /// The remote folder, for the prompt and for logging in again.
    pub cwd: String,
    /// A listing for completion was cut short; its rest is on the way.
    listing_open: bool,
    cached: Option<Cached>,
}

impl Remote {
    pub fn new(mut conn: Conn) -> Result<Remote, Failure> {
        let cwd = commands::pwd(&mut conn)?;
        Ok(Remote {
            conn,
            cwd,
            listing_open: false,
            cached: None,
        })
    }

    /// The connection, ready for a request (a listing cut short by Tab is
    /// read to its end first).
    pub fn conn(&mut self) -> Result<&mut Conn, Failure> {
        if self.listing_open {
            let pace = self.conn.pace(Awaiting::Listing);
            loop {
                match self.conn.recv_paced(&pace) {
                    Ok(Reply::Entries(_)) => {}
                    Ok(Reply::ListEnd { .. }) | Err(Failure::Refused { .. }) => break,
                    Ok(other) => return Err(Failure::unexpected("Entries or ListEnd", &other)),
                    Err(e) => return Err(e),
                }
            }
            self.listing_open = false;
        }
        Ok(&mut self.conn)
    }

    /// Ends the session politely.
    pub fn bye(self) {
        self.conn.bye();
    }

    /// A command ran: what Tab knew may be stale.
    pub fn forget_listing(&mut self) {
        self.cached = None;
    }

    /// Swaps in a new session (after a cancel) and goes back to the
    /// remote folder; if that folder is gone, stays where the login put us.
    pub fn replace(&mut self, conn: Conn) -> Result<(), Failure> {
        self.conn = conn;
        self.listing_open = false;
        self.cached = None;
        match commands::cd(&mut self.conn, &self.cwd) {
            Ok(cwd) => self.cwd = cwd,
            Err(Failure::Refused { .. }) => self.cwd = commands::pwd(&mut self.conn)?,
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The names in remote folder `dir` ("" for the current one), for Tab:
    /// from the cache, else from what the server sends within
    /// [`COMPLETION_WAIT`]. Errors give no names; the next command reports
    /// a lost session.
    pub fn names(&mut self, dir: &str) -> Vec<Name> {
        if let Some(c) = &self.cached
            && c.cwd == self.cwd
            && c.dir == dir
            && c.at.elapsed() < CACHE_FOR
        {
            return c.names.clone();
        }
        let deadline = Instant::now() + COMPLETION_WAIT;
        let names = self.fetch(dir, deadline).unwrap_or_default();
        self.cached = Some(Cached {
            cwd: self.cwd.clone(),
            dir: dir.to_owned(),
            at: Instant::now(),
            names: names.clone(),
        });
        names
    }

    fn fetch(&mut self, dir: &str, deadline: Instant) -> Result<Vec<Name>, Failure> {
        if self.listing_open {
            // An earlier listing is still coming: do not wait for it here.
            return Ok(Vec::new());
        }
        self.conn.send(&Request::List { path: dir.into() })?;
        self.listing_open = true;
        let mut names = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(names);
            }
            match self.conn.recv_within(left) {
                Ok(Reply::Entries(batch)) => {
                    let room = MAX_NAMES.saturating_sub(names.len());
                    names.extend(batch.into_iter().take(room).map(|e| Name {
                        is_dir: e.kind == EntryKind::Dir,
                        name: e.name,
                    }));
                }
                Ok(Reply::ListEnd { .. }) => {
                    self.listing_open = false;
                    return Ok(names);
                }
                // Not a folder, no such folder: nothing to complete.
                Err(Failure::Refused { .. }) => {
                    self.listing_open = false;
                    return Ok(Vec::new());
                }
                Ok(other) => return Err(Failure::unexpected("Entries or ListEnd", &other)),
                // Our short wait ran out (or the link is lost, which the
                // next command finds): the rest is read before it.
                Err(e) => return Err(e),
            }
        }
    }
}
