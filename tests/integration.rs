//! Integration tests: the real `ftpd` on port 0, driven by the real `ftpc`
//! and by raw sockets.

mod util;

mod files;
mod login;
mod protocol;
mod transfer;
