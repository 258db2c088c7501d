//! Fuzz targets for `ftpd`, kept out of the main build (this folder is its
//! own workspace). The properties live in [`props`], which
//! `tests/props.rs` also includes, so that `cargo test` checks them on
//! stable Rust with proptest.

pub mod props;
