//! Integration tests: the real `ftpd` on port 0, driven by the real `ftpc`
//! and by raw sockets.

mod util;

mod admin;
mod client_output;
mod fairness;
mod faults;
mod files;
mod hostile;
mod load;
mod lockout;
mod logging;
mod login;
mod memory;
mod props;
mod protocol;
mod quota;
mod races;
mod server_ops;
mod shell_tty;
mod tls;
mod transfer;
mod tree_get;
mod tree_put;
