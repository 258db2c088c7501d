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

/// What serde lets a sequence reserve from its declared length before any
/// element arrives (`serde::__private::size_hint::cautious`). A client
/// decoding a hostile `Reply::Entries` frame may reserve this much today
/// (`decode_memory::reply_decode_stays_within_one_frame`, ignored); the
/// bound keeps that known case from stopping every run.
const SERDE_PREALLOC: usize = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    // The server decodes requests: their strings and byte strings are
    // copies of the body, so never more than one frame.
    let used = peak_of(|| drop(frame::decode::<Request>(data)));
    assert!(
        used <= MAX_WIRE_FRAME,
        "decoding a request held {used} bytes"
    );
    let used = peak_of(|| drop(frame::decode::<Reply>(data)));
    assert!(
        used <= MAX_WIRE_FRAME + SERDE_PREALLOC,
        "decoding a reply held {used} bytes"
    );
    props::fuzz_frames(data);
});
