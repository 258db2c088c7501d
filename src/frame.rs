//! Length-prefixed postcard frames: `[u32 big-endian length][body]`.
//!
//! [`decode`] works on whatever bytes have arrived: `Ok(None)` means "need
//! more", and it reports how many bytes a complete frame used, so a caller
//! decodes every frame of a read in a loop. A length over [`MAX_FRAME`] is
//! rejected before anything is allocated.

use serde::{Deserialize, Serialize};

use crate::proto::MAX_FRAME;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be decoded or encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The declared (or encoded) length is over the limit.
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME} bytes")]
    TooLarge(usize),
    /// The body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(postcard::Error),
    /// The body decoded, but bytes were left over.
    #[error("malformed frame: {0} trailing bytes")]
    Trailing(usize),
}

/// The body length a frame at the front of `src` declares, once its header
/// has arrived; lets a caller apply a tighter limit than [`MAX_FRAME`].
pub fn declared_len(src: &[u8]) -> Option<usize> {
    src.first_chunk::<HEADER_LEN>()
        .map(|header| u32::from_be_bytes(*header) as usize)
}

/// Decodes one frame from the front of `src`.
///
/// Returns `Ok(None)` while the frame is incomplete, or the message and the
/// number of bytes it took from `src`.
pub fn decode<'a, T: Deserialize<'a>>(src: &'a [u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(header) = src.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let Some(body) = src.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let (msg, rest) = postcard::take_from_bytes(body).map_err(FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    Ok(Some((msg, HEADER_LEN + len)))
}

/// Appends `msg` as one frame to `dst`.
///
/// On error `dst` is left as it was.
pub fn encode_into<T: Serialize>(msg: &T, dst: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = dst.len();
    dst.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = postcard::to_extend(msg, Appender(dst)) {
        dst.truncate(start);
        return Err(FrameError::Malformed(e));
    }
    let len = dst.len() - start - HEADER_LEN;
    if len > MAX_FRAME {
        dst.truncate(start);
        return Err(FrameError::TooLarge(len));
    }
    dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Lets postcard append to a borrowed vector.
struct Appender<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Appender<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// Encodes `msg` as one frame in a new vector.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// Most bytes [`chunk_header`] writes: the length prefix, a one-byte variant
/// tag and a varint of at most 3 bytes (chunks stay under 2^21 bytes).
pub const CHUNK_HEADER_MAX: usize = HEADER_LEN + 1 + 3;

/// Writes the frame header of a `Chunk` message carrying `payload_len` bytes
/// into `out` and returns how many bytes it used.
///
/// This lets a sender read file data straight into its send buffer after the
/// header instead of serialising a copy; the bytes are exactly what postcard
/// produces for `Chunk(&payload)` given the variant's index `tag`.
pub fn chunk_header(tag: u8, payload_len: usize, out: &mut [u8; CHUNK_HEADER_MAX]) -> usize {
    debug_assert!(payload_len < 1 << 21);
    let mut varint = [0u8; 3];
    let mut n = payload_len;
    let mut used = 0;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            varint[used] = byte;
            used += 1;
            break;
        }
        varint[used] = byte | 0x80;
        used += 1;
    }
    let body_len = 1 + used + payload_len;
    out[..HEADER_LEN].copy_from_slice(&(body_len as u32).to_be_bytes());
    out[HEADER_LEN] = tag;
    out[HEADER_LEN + 1..HEADER_LEN + 1 + used].copy_from_slice(&varint[..used]);
    HEADER_LEN + 1 + used
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ErrorCode, Reply, Request};

    fn sample() -> Vec<Request<'static>> {
        vec![
            Request::Hello {
                magic: crate::proto::MAGIC,
                version: 1,
            },
            Request::Cd {
                path: "/docs/ä b".into(),
            },
            Request::Chunk(b"hello world"),
            Request::Ping,
            Request::PutStart {
                path: "x".into(),
                size: u64::MAX,
                resume: true,
                mtime: None,
                crc32: None,
            },
        ]
    }

    fn stream() -> Vec<u8> {
        let mut buf = Vec::new();
        for m in sample() {
            encode_into(&m, &mut buf).unwrap();
        }
        buf
    }

    /// Decodes every complete frame in `buf`, returning them and the bytes used.
    fn decode_all(buf: &[u8]) -> (Vec<Request<'_>>, usize) {
        let mut out = Vec::new();
        let mut used = 0;
        while let Some((m, n)) = decode::<Request>(&buf[used..]).unwrap() {
            out.push(m);
            used += n;
        }
        (out, used)
    }

    #[test]
    fn many_frames_in_one_buffer() {
        let buf = stream();
        let (msgs, used) = decode_all(&buf);
        assert_eq!(msgs, sample());
        assert_eq!(used, buf.len());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let buf = stream();
        for cut in 0..=buf.len() {
            // Feed the first part, keep what is left over, then append the rest.
            let (first, used) = decode_all(&buf[..cut]);
            let mut carried = buf[used..cut].to_vec();
            carried.extend_from_slice(&buf[cut..]);
            let (second, used2) = decode_all(&carried);
            assert_eq!(used2, carried.len(), "cut at {cut}");
            let all: Vec<_> = first.into_iter().chain(second).collect();
            assert_eq!(all, sample(), "cut at {cut}");
        }
    }

    #[test]
    fn incomplete_is_none_not_error() {
        let buf = stream();
        for len in 0..4 {
            assert_eq!(decode::<Request>(&buf[..len]).unwrap(), None);
        }
    }

    #[test]
    fn oversized_prefix_is_rejected_before_the_body_arrives() {
        let buf = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(
            decode::<Request>(&buf),
            Err(FrameError::TooLarge(MAX_FRAME + 1))
        );
        let buf = u32::MAX.to_be_bytes();
        assert!(matches!(
            decode::<Request>(&buf),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        let mut buf = 5u32.to_be_bytes().to_vec();
        buf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode::<Request>(&buf),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut body = postcard::to_stdvec(&Request::Ping).unwrap();
        body.extend_from_slice(&[0, 0]);
        let mut buf = (body.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(&body);
        assert_eq!(decode::<Request>(&buf), Err(FrameError::Trailing(2)));
    }

    #[test]
    fn encoder_refuses_oversized_messages() {
        let big = vec![0u8; MAX_FRAME + 10];
        let mut out = vec![1, 2, 3];
        assert!(matches!(
            encode_into(&Request::Chunk(&big), &mut out),
            Err(FrameError::TooLarge(_))
        ));
        assert_eq!(out, vec![1, 2, 3]);
    }

    #[test]
    fn a_listing_frame_holds_at_most_one_batch() {
        use crate::proto::{Entry, EntryKind, LIST_BATCH};
        let entry = Entry {
            name: String::new(),
            kind: EntryKind::File,
            size: 0,
            mtime: 0,
        };
        let full = encode(&Reply::Entries(vec![entry.clone(); LIST_BATCH])).unwrap();
        assert!(matches!(
            decode::<Reply>(&full),
            Ok(Some((Reply::Entries(v), _))) if v.len() == LIST_BATCH
        ));
        // One more is refused: 4 bytes on the wire would be 48 in memory.
        let over = encode(&Reply::Entries(vec![entry; LIST_BATCH + 1])).unwrap();
        assert!(matches!(
            decode::<Reply>(&over),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn chunk_header_matches_postcard() {
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 128 * 1024] {
            let payload = vec![0xab; len];
            let expected = encode(&Reply::Chunk(&payload)).unwrap();
            let mut header = [0; CHUNK_HEADER_MAX];
            assert_eq!(expected[HEADER_LEN], crate::proto::REPLY_CHUNK_TAG);
            let n = chunk_header(crate::proto::REPLY_CHUNK_TAG, len, &mut header);
            assert_eq!(&expected[..n], &header[..n], "len {len}");
            assert_eq!(expected.len(), n + len);
        }
        let err = Reply::Error {
            code: ErrorCode::Io,
            message: String::new(),
        };
        assert_eq!(encode(&err).unwrap()[HEADER_LEN], 0);
    }
}
