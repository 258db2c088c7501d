//! Path resolution on any bytes, and the jail on a real home with symlinks
//! that lead out of it; see `ftpd_fuzz::props::fuzz_paths`.

#![no_main]

use std::sync::OnceLock;

use ftpd_fuzz::props::{self, JailFixture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One world for the whole run; the checks only read it. Its temporary
    // folder is left behind when libFuzzer exits.
    static JAIL: OnceLock<JailFixture> = OnceLock::new();
    props::fuzz_paths(JAIL.get_or_init(JailFixture::new), data);
});
