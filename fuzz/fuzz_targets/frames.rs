//! The frame decoder on any bytes, whole and cut into pieces; see
//! `ftpd_fuzz::props::fuzz_frames`. Also checks what one `decode` call
//! allocates, which `cargo test` cannot (see `fuzz/tests/decode_memory.rs`).

#![no_main]

use ftpd::frame;
use ftpd::proto::{Reply, Request};
use ftpd_fuzz::alloc::{Counting, peak_of};
use ftpd_fuzz::props::{self, MAX_WIRE_FRAME};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    // Strings and byte strings are copies of the body, and a listing
    // frame holds at most LIST_BATCH entries: never more than one frame.
    let used = peak_of(|| drop(frame::decode::<Request>(data)));
    assert!(
        used <= MAX_WIRE_FRAME,
        "decoding a request held {used} bytes"
    );
    let used = peak_of(|| drop(frame::decode::<Reply>(data)));
    assert!(
        used <= MAX_WIRE_FRAME,
        "decoding a reply held {used} bytes"
    );
    props::fuzz_frames(data);
});
