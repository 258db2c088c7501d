//! `ftpd`: a single-threaded, multi-user file-transfer server, and the pieces
//! its client `ftpc` shares with it (protocol, framing, login crypto).

pub mod admin;
pub mod aligned_io;
pub mod buf;
pub mod frame;
pub mod glibc_tunables;
pub mod jail;
pub mod proto;
pub mod scram;
pub mod server;
pub mod size;
pub mod tls;
pub mod usage;
pub mod users;
