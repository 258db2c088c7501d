//! One session's state machine driven by any requests, before and after a
//! real login; see `ftpd_fuzz::props::fuzz_session`.

#![no_main]

use ftpd::server::log::{self, Level};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The session logs every refused request; that is noise here.
    log::set_level(Level::Error);
    ftpd_fuzz::props::fuzz_session(data);
});
