//! Frames: `len: u32 LE | crc32: u32 LE | payload`.

use std::io::{self, Read, Write};

/// The largest payload a frame may claim; anything larger is corruption
/// (a trip record is a few hundred bytes).
pub const MAX_PAYLOAD: u32 = 1 << 20;

/// Bytes of a frame's header.
pub const HEADER: u64 = 8;

/// Writes one frame.
pub fn write(out: &mut impl Write, payload: &[u8]) -> io::Result<u64> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("record too large"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&crc32fast::hash(payload).to_le_bytes())?;
    out.write_all(payload)?;
    Ok(HEADER + u64::from(len))
}

/// What reading the next frame found.
#[derive(Debug)]
pub enum Next {
    /// A whole frame with a good checksum.
    Frame(Vec<u8>),
    /// A clean end: no bytes left.
    End,
    /// Bytes that are not a whole good frame: a torn write or corruption.
    Bad(&'static str),
}

/// Reads the next frame.
pub fn read(input: &mut impl Read) -> io::Result<Next> {
    let mut header = [0u8; HEADER as usize];
    match read_full(input, &mut header)? {
        0 => return Ok(Next::End),
        n if n < header.len() => return Ok(Next::Bad("torn frame header")),
        _ => {}
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_PAYLOAD {
        return Ok(Next::Bad("frame length out of range"));
    }
    let mut payload = vec![0u8; len as usize];
    if read_full(input, &mut payload)? < payload.len() {
        return Ok(Next::Bad("torn frame payload"));
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Next::Bad("checksum mismatch"));
    }
    Ok(Next::Frame(payload))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
