//! A byte relay between `ftpc` and a server that cuts both connections
//! once a number of bytes went from the server to the client: a network
//! that fails part-way through a transfer. It only forwards bytes, so it
//! works the same whatever the transport (plain or TLS).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A relay for one connection.
pub struct CutRelay {
    pub addr: SocketAddr,
    /// Bytes forwarded from the server so far.
    pub down: Arc<AtomicU64>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
}

impl CutRelay {
    /// Listens on 127.0.0.1:0; the first client is relayed to `server`,
    /// and both connections are cut after `budget` bytes from the server.
    pub fn start(server: SocketAddr, budget: u64) -> CutRelay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let down = Arc::new(AtomicU64::new(0));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (d, s) = (Arc::clone(&down), Arc::clone(&sockets));
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let upstream = TcpStream::connect(server).expect("relay connect");
            let dup = |s: &TcpStream| s.try_clone().expect("clone socket");
            s.lock().unwrap().extend([dup(&client), dup(&upstream)]);
            let (c2, u2) = (dup(&client), dup(&upstream));
            let up = Arc::new(AtomicU64::new(0));
            std::thread::spawn(move || pump(c2, u2, u64::MAX, &up));
            pump(upstream, client, budget, &d);
            for sock in s.lock().unwrap().iter() {
                let _ = sock.shutdown(Shutdown::Both);
            }
        });
        CutRelay {
            addr,
            down,
            sockets,
        }
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        for s in self.sockets.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` until `budget` bytes went through or either end
/// closes.
fn pump(mut from: TcpStream, mut to: TcpStream, budget: u64, done: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = budget - done.load(Ordering::SeqCst);
        if left == 0 {
            return;
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
        done.fetch_add(n as u64, Ordering::SeqCst);
    }
}
