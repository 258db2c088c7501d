//! A listing read from its folder in bounded pieces, so a client that
//! stops reading holds one batch on the server, never the whole folder.
//!
//! Entries come in the folder's own order (the client sorts); after the
//! first `max` the rest are only counted, also in slices, so that the
//! listing can say how many it left out.

use rustix::fs::{AtFlags, Dir, OFlags};
use rustix::io::Errno;

use super::{FsError, Jail, PARTIAL_DIR, VPath, entry};
use crate::proto::Entry;

/// Names read per slice when only counting: one slice is a few
/// milliseconds of work even on a cold folder.
const COUNT_SLICE: usize = 4096;

/// A folder being listed.
pub struct Listing {
    dir: Dir,
    path: VPath,
    /// The folder is a home's top, whose partial-uploads folder is hidden.
    at_root: bool,
    max: u64,
    sent: u64,
    seen: u64,
    done: bool,
    /// A page of a walk (`ListFrom`): stops after `max` entries instead of
    /// counting the rest, and remembers where the next page starts.
    page: bool,
    /// The folder position after the last entry read.
    position: u64,
    /// The folder was read to its end.
    at_end: bool,
}

impl Jail {
    /// Opens the folder `p` for a listing of at most `max` entries.
    pub fn open_listing(&self, p: &VPath, max: usize) -> Result<Listing, FsError> {
        let err = |e| FsError::from_errno(e, p);
        let fd = self
            .open_beneath(p, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK)
            .map_err(err)?;
        let dir = Dir::new(fd).map_err(err)?;
        Ok(Listing {
            dir,
            path: p.clone(),
            at_root: p.is_root(),
            max: max as u64,
            sent: 0,
            seen: 0,
            done: false,
            page: false,
            position: 0,
            at_end: false,
        })
    }

    /// Opens one page of the folder `p` for a walk: at most `max` entries
    /// from the folder position `from` (0, or a previous page's
    /// [`Listing::next_page`]).
    pub fn open_listing_page(&self, p: &VPath, max: usize, from: u64) -> Result<Listing, FsError> {
        let mut listing = self.open_listing(p, max)?;
        if from != 0 {
            // The position is the kernel's own cookie (d_off), handed back
            // unchanged: a bit-for-bit cast, and a bad one fails the seek
            // or lists nothing, in this user's own folder only.
            listing
                .dir
                .seek(from as i64)
                .map_err(|e| FsError::from_errno(e, p))?;
        }
        listing.page = true;
        listing.position = from;
        Ok(listing)
    }

    /// The whole listing of `p` at once, sorted by name: at most `max`
    /// entries, with the count of all and whether some were left out.
    pub fn list(&self, p: &VPath, max: usize) -> Result<(Vec<Entry>, u64, bool), FsError> {
        let mut listing = self.open_listing(p, max)?;
        let mut entries = Vec::new();
        while !listing.finished() {
            entries.extend(listing.next_batch(crate::proto::LIST_BATCH)?);
        }
        entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok((entries, listing.total(), listing.truncated()))
    }
}

impl Listing {
    /// The next entries: at most `batch`, possibly none while the rest of
    /// a big folder is being counted. Entries that vanish meanwhile are
    /// skipped; names that are not UTF-8 are shown lossily; symlinks are
    /// shown as such, never followed.
    pub fn next_batch(&mut self, batch: usize) -> Result<Vec<Entry>, FsError> {
        let err = |e| FsError::from_errno(e, &self.path);
        let mut entries = Vec::new();
        let mut read = 0;
        while entries.len() < batch && read < COUNT_SLICE {
            if self.page && self.sent >= self.max {
                // A full page: the next one starts at `position`.
                self.done = true;
                break;
            }
            let Some(item) = self.dir.read() else {
                self.done = true;
                self.at_end = true;
                break;
            };
            read += 1;
            let item = item.map_err(err)?;
            self.position = item.offset() as u64;
            let name = item.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." || (self.at_root && bytes == PARTIAL_DIR.as_bytes())
            {
                continue;
            }
            self.seen += 1;
            if self.sent >= self.max {
                continue;
            }
            let dir_fd = self.dir.fd().map_err(err)?;
            match rustix::fs::statat(dir_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => {
                    let name = String::from_utf8_lossy(bytes).into_owned();
                    entries.push(entry(name, &st));
                    self.sent += 1;
                }
                // Removed since we read the folder: not there any more.
                Err(Errno::NOENT) => self.seen -= 1,
                Err(e) => return Err(err(e)),
            }
        }
        Ok(entries)
    }

    /// True once the whole folder was read.
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Entries seen so far (all of them once finished).
    pub fn total(&self) -> u64 {
        self.seen
    }

    /// For a page: where the next page starts, `None` once the folder was
    /// read to its end. Always `None` for a plain listing.
    pub fn next_page(&self) -> Option<u64> {
        (self.page && !self.at_end).then_some(self.position)
    }

    /// Whether this is a page of a walk (answered with `ListPage`).
    pub fn is_page(&self) -> bool {
        self.page
    }

    /// Whether entries were left out.
    pub fn truncated(&self) -> bool {
        self.seen > self.sent
    }
}
