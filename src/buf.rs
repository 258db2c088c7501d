//! A byte buffer for nonblocking sockets: a `Vec<u8>` with start and end
//! offsets, a hard capacity cap, and read/write loops that run until the
//! socket would block.
//!
//! An empty buffer gives its memory back, so an idle connection costs no
//! buffer memory at all.

use std::io::{self, Read, Write};

/// What a read or write loop achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// Moved this many bytes and stopped because the socket would block.
    Progress(usize),
    /// Read this many bytes and stopped because the buffer is at its cap;
    /// the socket may hold more.
    Full(usize),
    /// The peer closed its side (reads only). Bytes read before the EOF are
    /// in the buffer.
    Eof(usize),
}

/// Appending would take a buffer past its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer full")]
pub struct Full;

/// A way for bulk bytes past a connection's send buffer: the TLS layer,
/// which seals plaintext as it takes it, so a download's chunk is copied
/// once (into a record) instead of twice (into the buffer, then into a
/// record). It may take fewer bytes than offered, or none.
pub trait Bypass {
    /// Takes a prefix of the bytes of `head` then `body`; returns how many.
    fn take(&mut self, head: &[u8], body: &[u8]) -> io::Result<usize>;
}

/// Bytes a read asks the socket for at least, so small requests do not cost
/// a syscall each.
const READ_MIN: usize = 16 * 1024;

/// A growable byte queue with a hard cap.
///
/// `bytes` is always fully initialised up to its length, and the live data
/// is `bytes[start..end]`; keeping the slack initialised means a read or a
/// file chunk can land straight in the buffer without zeroing it first.
#[derive(Debug, Default)]
pub struct Buffer {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
    cap: usize,
    keep: bool,
}

impl Buffer {
    /// An empty buffer that never holds more than `cap` bytes.
    pub fn with_cap(cap: usize) -> Buffer {
        Buffer {
            cap,
            ..Buffer::default()
        }
    }

    /// Changes the cap (existing data is kept even if over it).
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// While `keep` is set, an emptied buffer keeps its memory (a transfer
    /// refills it at once); otherwise it gives it back.
    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
        if !keep && self.is_empty() {
            self.clear();
        }
    }

    /// The bytes not consumed yet.
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// How many bytes are waiting.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// True when the buffer is at its cap.
    pub fn is_full(&self) -> bool {
        self.len() >= self.cap
    }

    /// Bytes of memory this buffer holds.
    pub fn allocated(&self) -> usize {
        self.bytes.capacity()
    }

    /// Bytes that may still be appended before the cap.
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.len())
    }

    /// Drops `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.clear();
        }
    }

    /// Empties the buffer, giving its memory back unless `keep` is set, so
    /// that a burst does not leave an idle connection holding memory.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        if !self.keep && self.bytes.capacity() > 0 {
            self.bytes = Vec::new();
        }
    }

    /// Appends bytes, or refuses (leaving the buffer as it was) if they
    /// would take it past its cap: the cap is enforced here, where the
    /// memory is taken, not left to callers.
    pub fn extend(&mut self, src: &[u8]) -> Result<(), Full> {
        if src.len() > self.room() {
            return Err(Full);
        }
        self.spare(src.len())[..src.len()].copy_from_slice(src);
        self.commit(src.len());
        Ok(())
    }

    /// Writable space of at least `n` bytes after the data; fill it, then
    /// [`Buffer::commit`] what was written.
    pub fn spare(&mut self, n: usize) -> &mut [u8] {
        if self.bytes.len() - self.end < n {
            // Compact first: moving the live bytes is cheaper than growing.
            if self.start > 0 {
                self.bytes.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.bytes.len() - self.end < n {
                // Double (up to the cap) so a growing stream resizes rarely.
                let grown = (self.bytes.len() * 2).min(self.cap);
                self.bytes.resize(grown.max(self.end + n), 0);
            }
        }
        &mut self.bytes[self.end..]
    }

    /// Marks `n` bytes of the space from [`Buffer::spare`] as data.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.bytes.len());
    }

    /// Reads from `src` until it would block, reaches EOF, or the buffer
    /// reaches its cap.
    pub fn read_from(&mut self, src: &mut impl Read) -> io::Result<Io> {
        let mut total = 0;
        loop {
            let room = self.room();
            if room == 0 {
                return Ok(Io::Full(total));
            }
            let slack = self.bytes.len() - self.end;
            let want = room.min(READ_MIN.max(slack));
            let space = self.spare(want);
            let want = want.min(space.len());
            match src.read(&mut space[..want]) {
                Ok(0) => {
                    if self.is_empty() {
                        self.clear();
                    }
                    return Ok(Io::Eof(total));
                }
                Ok(n) => {
                    self.commit(n);
                    total += n;
                }
                // Edge-triggered readiness: we must drain until the kernel says so.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.is_empty() {
                        self.clear();
                    }
                    return Ok(Io::Progress(total));
                }
                // A signal arrived mid-call; the socket is still readable.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes to `dst` until the buffer is empty or the socket would block.
    /// The unsent remainder stays in the buffer.
    pub fn write_to(&mut self, dst: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            match dst.write(self.data()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.consume(n);
                    total += n;
                }
                // The kernel's send buffer is full; wait for WRITABLE.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket stand-in that yields its chunks, then WouldBlock.
    struct Script {
        chunks: Vec<Vec<u8>>,
        eof: bool,
    }

    impl Read for Script {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.chunks.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let chunk = &mut self.chunks[0];
            let n = chunk.len().min(out.len());
            out[..n].copy_from_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.chunks.remove(0);
            }
            Ok(n)
        }
    }

    /// A writer that accepts `limit` bytes per call and `budget` in total.
    struct Slow {
        got: Vec<u8>,
        limit: usize,
        budget: usize,
    }

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.limit).min(self.budget);
            self.budget -= n;
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn reads_until_would_block() {
        let mut src = Script {
            chunks: vec![b"abc".to_vec(), b"def".to_vec()],
            eof: false,
        };
        let mut buf = Buffer::with_cap(1024);
        assert_eq!(buf.read_from(&mut src).unwrap(), Io::Progress(6));
        assert_eq!(buf.data(), b"abcdef");
    }

    #[test]
    fn stops_at_the_cap() {
        let mut src = Script {
            chunks: vec![vec![7; 100]],
            eof: false,
        };
        let mut buf = Buffer::with_cap(40);
        assert_eq!(buf.read_from(&mut src).unwrap(), Io::Full(40));
        assert!(buf.is_full());
        buf.consume(40);
        assert_eq!(buf.read_from(&mut src).unwrap(), Io::Full(40));
    }

    #[test]
    fn reports_eof_after_data() {
        let mut src = Script {
            chunks: vec![b"x".to_vec()],
            eof: true,
        };
        let mut buf = Buffer::with_cap(1024);
        assert_eq!(buf.read_from(&mut src).unwrap(), Io::Eof(1));
        assert_eq!(buf.data(), b"x");
    }

    #[test]
    fn partial_writes_keep_the_remainder() {
        let mut buf = Buffer::with_cap(1024);
        buf.extend(b"hello world").unwrap();
        let mut dst = Slow {
            got: Vec::new(),
            limit: 3,
            budget: 5,
        };
        assert_eq!(buf.write_to(&mut dst).unwrap(), 5);
        assert_eq!(buf.data(), b" world");
        dst.budget = 100;
        assert_eq!(buf.write_to(&mut dst).unwrap(), 6);
        assert_eq!(dst.got, b"hello world");
        assert!(buf.is_empty());
    }

    #[test]
    fn extend_refuses_past_the_cap() {
        let mut buf = Buffer::with_cap(8);
        buf.extend(b"12345").unwrap();
        assert_eq!(buf.extend(b"6789"), Err(Full));
        assert_eq!(buf.data(), b"12345");
        buf.extend(b"678").unwrap();
        assert!(buf.is_full());
    }

    #[test]
    fn empty_buffer_releases_memory() {
        let mut buf = Buffer::with_cap(1 << 20);
        buf.extend(&[1; 5000]).unwrap();
        assert!(buf.allocated() >= 5000);
        buf.consume(5000);
        assert_eq!(buf.allocated(), 0);
    }

    #[test]
    fn compaction_keeps_order() {
        let mut buf = Buffer::with_cap(1 << 20);
        buf.extend(b"0123456789").unwrap();
        buf.consume(7);
        buf.spare(100);
        buf.extend(b"ab").unwrap();
        assert_eq!(buf.data(), b"789ab");
    }

    #[test]
    fn kept_memory_survives_emptying() {
        let mut buf = Buffer::with_cap(1 << 20);
        buf.set_keep(true);
        buf.extend(&[1; 5000]).unwrap();
        buf.consume(5000);
        assert!(buf.allocated() >= 5000);
        buf.set_keep(false);
        assert_eq!(buf.allocated(), 0);
    }
}
