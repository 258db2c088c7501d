//! The frame decoder on any bytes, whole and cut into pieces; see
//! `ftpd_fuzz::props::fuzz_frames`. Also measures what one `decode` call
//! allocates, which `cargo test` cannot (it has no allocator of its own).

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ftpd::frame;
use ftpd::proto::{Reply, Request};
use ftpd_fuzz::props::{self, MAX_WIRE_FRAME};
use libfuzzer_sys::fuzz_target;

/// Counts the bytes the Rust side holds, and the most it held.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed on to `System` unchanged; only counters are
// updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most bytes `f` held at once beyond what was live before it.
fn peak_of(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed) - base
}

/// What serde lets a sequence reserve from its declared length before any
/// element arrives (`serde::__private::size_hint::cautious`). postcard
/// bounds the declared length by the bytes left, but a `Reply::Entries`
/// element is far bigger in memory than its smallest encoding, so a
/// client decoding a hostile listing frame may reserve up to this much.
const SERDE_PREALLOC: usize = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    // The server decodes requests: strings and byte strings are copies of
    // the body, so nothing beyond one frame.
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
