//! The raw loopback ceiling: how fast one TCP stream moves bytes from memory
//! to a receiver that discards them, with plain blocking `write`/`read`
//! calls of 1 MiB (what the server and client use per call). `scripts/bench.sh` compares transfers against it.
//!
//! Usage: `loopback_ceiling [BYTES]` (default 1 GiB); prints MB/s
//! (10^6 bytes per second), timed on the receiving side from accept to EOF.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

const PIECE: usize = 1024 * 1024;

fn main() -> std::io::Result<()> {
    let total: u64 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|e| std::io::Error::other(format!("{arg}: {e}")))?,
        None => 1 << 30,
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stream = TcpStream::connect(addr)?;
        let piece = vec![0x5au8; PIECE];
        let mut left = total;
        while left > 0 {
            let n = left.min(PIECE as u64) as usize;
            stream.write_all(&piece[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let (mut stream, _) = listener.accept()?;
    let started = Instant::now();
    let mut buf = vec![0u8; PIECE];
    let mut got = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| std::io::Error::other("sender panicked"))??;
    if got != total {
        return Err(std::io::Error::other(format!(
            "received {got} of {total} bytes"
        )));
    }
    println!("{:.0}", got as f64 / secs / 1e6);
    Ok(())
}
