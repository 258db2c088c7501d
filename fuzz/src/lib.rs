//! Fuzz targets for `ftpd`, kept out of the main build (this folder is its
//! own workspace). The properties live in [`props`], which
//! `tests/props.rs` also includes, so that `cargo test` checks them on
//! stable Rust with proptest. [`alloc`] measures what a call allocates,
//! which the main test binary cannot (it keeps the system allocator).

pub mod alloc;
pub mod props;
