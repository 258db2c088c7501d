//! What decoding one frame allocates, measured with a counting allocator
//! (the main package's tests keep the system allocator, so this lives
//! here): `cd fuzz && cargo test -- --include-ignored`.
//!
//! The counters are process-wide, so the tests take turns ([`ONE_AT_A_TIME`]).

use std::sync::Mutex;

use ftpd::frame::{self, HEADER_LEN};
use ftpd::proto::{MAX_FRAME, Reply, Request};
use ftpd_fuzz::alloc::{Counting, peak_of};
use ftpd_fuzz::props::MAX_WIRE_FRAME;

#[global_allocator]
static ALLOC: Counting = Counting;

/// Held while measuring, so no other test thread allocates meanwhile.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A frame whose body is `tag`, a varint `count`, then `count` zero bytes:
/// a sequence that claims as many elements as there are bytes left.
fn claims(tag: u8, count: usize) -> Vec<u8> {
    let mut body = vec![tag];
    let mut n = count;
    while n >= 0x80 {
        body.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    body.resize(body.len() + count, 0);
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    assert!(out.len() <= HEADER_LEN + MAX_FRAME);
    out
}

/// Every request variant (tags 0..=18) with a maximal claimed length in
/// its first field: strings and byte strings are only ever copies of the
/// body, so decoding holds at most one frame.
#[test]
fn request_decode_stays_within_one_frame() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for tag in 0..=18 {
        for count in [1000, MAX_FRAME - 8] {
            let data = claims(tag, count);
            let used = peak_of(|| drop(frame::decode::<Request>(&data)));
            assert!(
                used <= MAX_WIRE_FRAME,
                "request tag {tag}, {count} bytes: held {used}"
            );
        }
    }
}

/// `Reply::Entries` (tag 8) claiming 20 000 entries in a 20 KB frame: an
/// entry is 4 bytes on the wire at the least and 48 in memory, so the
/// decoder refuses more than LIST_BATCH per frame, before reserving room
/// for a claimed count.
#[test]
fn reply_decode_stays_within_one_frame() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for count in [20_000, MAX_FRAME - 8] {
        let data = claims(8, count);
        let used = peak_of(|| drop(frame::decode::<Reply>(&data)));
        assert!(
            used <= MAX_WIRE_FRAME,
            "Entries claiming {count}: held {used} bytes for a frame of {}",
            data.len()
        );
    }
}
