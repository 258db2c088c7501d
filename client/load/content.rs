//! File content for uploads, generated in memory from a seed.
//!
//! One buffer per size is shared by every session. Each session's file is
//! that buffer with its first [`PREFIX_LEN`] bytes replaced by a prefix made
//! of the session's number and the run's nonce, so no two sessions (nor two
//! runs) upload the same bytes, and no session needs a copy: uploads write
//! the prefix and the shared tail straight to the socket, downloads compare
//! what arrives against them in place. The CRC32 of each session's file is
//! combined from the prefix's CRC and the tail's, computed once.

use crc32fast::Hasher;

/// Bytes at the start of every file that differ per session.
pub const PREFIX_LEN: usize = 16;

/// A session's prefix.
pub type Prefix = [u8; PREFIX_LEN];

/// The prefix of file `id` in the run with nonce `nonce`.
pub fn prefix(id: u64, nonce: u64) -> Prefix {
    let mut p = [0u8; PREFIX_LEN];
    p[..8].copy_from_slice(&id.to_le_bytes());
    p[8..].copy_from_slice(&nonce.to_le_bytes());
    p
}

/// Shared content of one size.
pub struct Content {
    base: Vec<u8>,
    /// CRC32 state over `base[PREFIX_LEN..]`.
    tail: Hasher,
}

/// SplitMix64: fast, and good enough that the bytes do not compress.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Content {
    /// `size` pseudo-random bytes from `seed`.
    pub fn generate(seed: u64, size: u64) -> Result<Content, String> {
        let len = usize::try_from(size)
            .map_err(|_| format!("a file of {size} bytes does not fit in memory here"))?;
        let mut base = Vec::new();
        base.try_reserve_exact(len)
            .map_err(|e| format!("cannot hold {size} bytes of file content in memory: {e}"))?;
        base.resize(len, 0);
        let mut state = seed;
        for word in base.chunks_mut(8) {
            let v = splitmix64(&mut state).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        let mut tail = Hasher::new();
        tail.update(&base[PREFIX_LEN.min(len)..]);
        Ok(Content { base, tail })
    }

    pub fn len(&self) -> u64 {
        self.base.len() as u64
    }

    /// CRC32 of the file with this prefix.
    pub fn crc(&self, prefix: &Prefix) -> u32 {
        let mut h = Hasher::new();
        h.update(&prefix[..PREFIX_LEN.min(self.base.len())]);
        h.combine(&self.tail);
        h.finalize()
    }

    /// The file's bytes `start..end` as the prefix part and the shared part
    /// (either may be empty). The range must lie within the file.
    pub fn pieces<'a>(&'a self, prefix: &'a Prefix, start: u64, end: u64) -> (&'a [u8], &'a [u8]) {
        let (start, end) = (start as usize, end as usize);
        let split = PREFIX_LEN.min(self.base.len());
        let head = if start < split {
            &prefix[start..end.min(split)]
        } else {
            &[][..]
        };
        let tail = &self.base[start.max(split).min(end)..end];
        (head, tail)
    }

    /// Whether `data` equals the file's bytes from `pos`.
    pub fn matches(&self, prefix: &Prefix, pos: u64, data: &[u8]) -> bool {
        let Some(end) = pos.checked_add(data.len() as u64) else {
            return false;
        };
        if end > self.len() {
            return false;
        }
        let (head, tail) = self.pieces(prefix, pos, end);
        data[..head.len()] == *head && data[head.len()..] == *tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(c: &Content, p: &Prefix) -> Vec<u8> {
        let (a, b) = c.pieces(p, 0, c.len());
        [a, b].concat()
    }

    #[test]
    fn crc_is_that_of_the_whole_file() {
        for size in [0u64, 1, 15, 16, 17, 1000, 200_000] {
            let c = Content::generate(7, size).unwrap();
            let p = prefix(3, 99);
            let bytes = whole(&c, &p);
            assert_eq!(bytes.len() as u64, size);
            assert_eq!(c.crc(&p), crc32fast::hash(&bytes), "size {size}");
        }
    }

    #[test]
    fn sessions_differ() {
        let c = Content::generate(1, 4096).unwrap();
        assert_ne!(whole(&c, &prefix(1, 5)), whole(&c, &prefix(2, 5)));
        assert_ne!(c.crc(&prefix(1, 5)), c.crc(&prefix(2, 5)));
    }

    #[test]
    fn matches_any_window() {
        let c = Content::generate(2, 300).unwrap();
        let p = prefix(9, 1);
        let bytes = whole(&c, &p);
        for start in [0usize, 5, 16, 100] {
            for end in [start, start + 1, 20.max(start), 300] {
                assert!(c.matches(&p, start as u64, &bytes[start..end]));
            }
        }
        let mut bad = bytes.clone();
        bad[3] ^= 1;
        assert!(!c.matches(&p, 0, &bad));
        assert!(!c.matches(&p, 1, &bytes));
    }
}
