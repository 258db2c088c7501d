//! Reading remote folders of any size, a page at a time (`ListFrom`), for
//! walks and glob patterns. A page holds at most [`MAX_LIST_ENTRIES`]
//! entries, so a caller that handles one page before asking for the next
//! holds at most that many, however large the folder.

use ftpd::proto::{Entry, MAX_LIST_ENTRIES, Reply, Request};

use crate::conn::Conn;
use crate::error::Failure;
use crate::pace::Awaiting;

/// Pages one folder may have before ftpc calls the server's listing
/// endless: 1,000 pages of 20,000 are 20 million entries.
pub const MAX_PAGES: u32 = 1000;

/// Where a folder's next page starts (0: the first page).
pub type PageStart = u64;

/// Sends (queues, as it may be pipelined) the request for one page of
/// `path` from `from`.
pub fn request_page(conn: &mut Conn, path: &str, from: PageStart) -> Result<(), Failure> {
    conn.queue(&Request::ListFrom {
        path: path.into(),
        from,
    })
}

/// Receives the page asked for with [`request_page`]: its entries, and
/// where the next page starts (`None` at the folder's end).
pub fn receive_page(conn: &mut Conn) -> Result<(Vec<Entry>, Option<PageStart>), Failure> {
    let mut entries = Vec::new();
    let mut pace = conn.pace(Awaiting::Listing);
    let next = loop {
        match conn.recv_paced(&pace)? {
            Reply::Entries(batch) => {
                // Bound memory even if the server ignores its own cap.
                if entries.len() + batch.len() > MAX_LIST_ENTRIES {
                    return Err(Failure::Link(format!(
                        "protocol error: the server sent more than {MAX_LIST_ENTRIES} entries in one page"
                    )));
                }
                pace.advance(batch.len() as u64);
                entries.extend(batch);
            }
            Reply::ListPage { next } => break next,
            other => return Err(Failure::unexpected("Entries or ListPage", &other)),
        }
    };
    if entries.is_empty() && next.is_some() {
        // It would let a walk go on forever without progress.
        return Err(Failure::Link(
            "protocol error: the server sent an empty page that is not the last".into(),
        ));
    }
    Ok((entries, next))
}

/// Counts a folder's pages against [`MAX_PAGES`].
#[derive(Debug, Default)]
pub struct PageCount(u32);

impl PageCount {
    /// One more page of `path`; an error past the limit.
    pub fn next(&mut self, path: &str) -> Result<(), Failure> {
        self.0 += 1;
        if self.0 > MAX_PAGES {
            return Err(Failure::Link(format!(
                "protocol error: the server's listing of {} goes on past {MAX_PAGES} pages",
                crate::display::sanitize(path)
            )));
        }
        Ok(())
    }
}

/// Calls `visit` with every entry of the folder `path`, a page at a time.
pub fn for_each_entry(
    conn: &mut Conn,
    path: &str,
    mut visit: impl FnMut(Entry) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut from = 0;
    let mut pages = PageCount::default();
    loop {
        pages.next(path)?;
        request_page(conn, path, from)?;
        let (entries, next) = receive_page(conn)?;
        entries.into_iter().try_for_each(&mut visit)?;
        match next {
            Some(next) => from = next,
            None => return Ok(()),
        }
    }
}

/// `parent/name` as a remote path ("/" and "" need no separator).
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_join() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("docs", "a b"), "docs/a b");
        assert_eq!(join("/docs/", "a"), "/docs/a");
    }
}
