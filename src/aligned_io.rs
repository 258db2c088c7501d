//! File reads and writes through a cache-line-aligned staging buffer.
//!
//! Linux copies between the page cache and user memory with `rep movsb`,
//! which on AMD EPYC runs at a fraction of its speed unless the user buffer
//! is aligned: reading 1 GiB from tmpfs in 128 KiB calls took 0.25 s into a
//! 64-byte-aligned buffer and 1.2 s into one 5 or 16 bytes off, and writing
//! took about twice as long from an unaligned one. Frames put file data at
//! whatever offset their header leaves, so file data goes through this
//! stage instead; the extra copy is a vector copy of a block that is in
//! cache (see `glibc_tunables`), a few per cent of the kernel's.

use std::io::{self, ErrorKind, Read, Write};

/// Alignment of the staged block: a cache line, which the kernel's copy
/// needs (32 was enough in the measurement, 16 was not).
const ALIGN: usize = 64;

/// Shorter reads and writes go straight through: their copy is short,
/// and a stage that is never used is never allocated.
const DIRECT_MAX: usize = 4096;

/// A reusable aligned block of up to `capacity` bytes.
pub struct Stage {
    buf: Vec<u8>,
    capacity: usize,
}

impl Stage {
    /// Allocates nothing until first used, then only as much as the
    /// largest block asked for (a client makes one per file, and a tree's
    /// files are mostly small).
    pub fn new(capacity: usize) -> Stage {
        Stage {
            buf: Vec::new(),
            capacity,
        }
    }

    fn block(&mut self, len: usize) -> &mut [u8] {
        let len = len.min(self.capacity);
        if self.buf.len() < len + ALIGN {
            self.buf = vec![0; len + ALIGN];
        }
        let start = self.buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        &mut self.buf[start..start + len]
    }

    /// Reads until `out` is full or the input ends; returns the bytes read.
    pub fn read_full(&mut self, input: &mut impl Read, out: &mut [u8]) -> io::Result<usize> {
        if out.len() <= DIRECT_MAX {
            return fill(input, out);
        }
        let mut got = 0;
        while got < out.len() {
            let block = self.block(out.len() - got);
            let n = fill(input, block)?;
            out[got..got + n].copy_from_slice(&block[..n]);
            got += n;
            // The input ended (an empty block, from a stage of no
            // capacity, also ends it rather than spinning).
            if n == 0 || n < block.len() {
                break;
            }
        }
        Ok(got)
    }

    /// Reads up to `len` bytes into the aligned block itself (at most the
    /// stage's capacity) until it is full or the input ends, and lends
    /// them: for a caller that hands the bytes on with a copy of its own.
    pub fn read_block(&mut self, input: &mut impl Read, len: usize) -> io::Result<&[u8]> {
        let block = self.block(len);
        let got = fill(input, block)?;
        Ok(&block[..got])
    }

    /// Fills `out` exactly, or fails with `UnexpectedEof`.
    pub fn read_exact(&mut self, input: &mut impl Read, out: &mut [u8]) -> io::Result<()> {
        if self.read_full(input, out)? < out.len() {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "the file ended early",
            ));
        }
        Ok(())
    }

    /// Writes all of `bytes`.
    pub fn write_all(&mut self, output: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() <= DIRECT_MAX {
            return output.write_all(bytes);
        }
        for piece in bytes.chunks(self.capacity.max(1)) {
            let block = self.block(piece.len());
            block.copy_from_slice(piece);
            output.write_all(block)?;
        }
        Ok(())
    }
}

/// Reads into `buf` until it is full or the input ends; returns the bytes
/// read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_pass_every_byte_through_in_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut stage = Stage::new(DIRECT_MAX + 1000);
        let mut out = Vec::new();
        stage.write_all(&mut out, &data).unwrap();
        stage.write_all(&mut out, &data[..100]).unwrap();
        assert_eq!(out[..data.len()], data);
        assert_eq!(out[data.len()..], data[..100]);

        let mut back = vec![0; 12_000];
        let n = stage.read_full(&mut &data[..], &mut back).unwrap();
        assert_eq!(n, data.len());
        assert_eq!(&back[..n], &data[..]);

        let mut short = vec![0; 10_001];
        let err = stage.read_exact(&mut &data[..], &mut short).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_block_read_lends_the_bytes_in_order_and_stops_at_the_end() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut stage = Stage::new(8192);
        let mut input = &data[..];
        assert_eq!(stage.read_block(&mut input, 6000).unwrap(), &data[..6000]);
        assert_eq!(stage.read_block(&mut input, 6000).unwrap(), &data[6000..]);
        assert!(stage.read_block(&mut input, 6000).unwrap().is_empty());
        assert_eq!(stage.read_block(&mut &data[..], 9000).unwrap().len(), 8192);
    }

    #[test]
    fn the_block_is_aligned() {
        let mut stage = Stage::new(4096);
        assert_eq!(stage.block(100).as_ptr().align_offset(ALIGN), 0);
        assert_eq!(stage.block(3000).as_ptr().align_offset(ALIGN), 0);
        assert_eq!(stage.block(9000).len(), 4096);
    }
}
