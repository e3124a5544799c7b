//! Frames: `len: u32 LE | crc32: u32 LE | payload`.

use std::io::{self, Read, Write};

/// The largest payload a frame may hold. The writer refuses a larger one
/// (nothing is written) and the reader takes a larger length for damage, so
/// the two can never disagree. The engine keeps every record well under it
/// (`dispatch_core::engine::MAX_OFFERS_PER_TRIP`, checked by a property
/// test in `tests/limits.rs`).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Bytes of a frame's header.
pub const HEADER: u64 = 8;

/// Writes one frame whose payload is `parts` one after the other (a
/// protobuf message followed by more of its repeated fields reads back as
/// one message). Refuses, writing nothing, a payload over [`MAX_PAYLOAD`].
pub fn write(out: &mut impl Write, parts: &[&[u8]]) -> io::Result<u64> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("record of {total} bytes is over the {MAX_PAYLOAD}-byte frame limit"),
        ));
    }
    let mut crc = crc32fast::Hasher::new();
    for part in parts {
        crc.update(part);
    }
    // Fits: total <= MAX_PAYLOAD < u32::MAX.
    out.write_all(&(total as u32).to_le_bytes())?;
    out.write_all(&crc.finalize().to_le_bytes())?;
    for part in parts {
        out.write_all(part)?;
    }
    Ok(HEADER + total as u64)
}

/// Why bytes are not a good frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// The input ended inside a frame whose length is plausible: what a
    /// write cut short by a crash leaves.
    Torn(&'static str),
    /// A whole frame the reader refuses (a length over the limit, a
    /// checksum that does not match): damage, not a crash.
    Refused(&'static str),
}

impl Bad {
    /// What was wrong, for the log.
    pub fn why(self) -> &'static str {
        match self {
            Bad::Torn(why) | Bad::Refused(why) => why,
        }
    }
}

/// What reading the next frame found.
#[derive(Debug)]
pub enum Next {
    /// A whole frame with a good checksum.
    Frame(Vec<u8>),
    /// A clean end: no bytes left.
    End,
    /// Bytes that are not a whole good frame.
    Bad(Bad),
}

/// Reads the next frame.
pub fn read(input: &mut impl Read) -> io::Result<Next> {
    let mut header = [0u8; HEADER as usize];
    match read_full(input, &mut header)? {
        0 => return Ok(Next::End),
        n if n < header.len() => return Ok(Next::Bad(Bad::Torn("torn frame header"))),
        _ => {}
    }
    let (len, crc) = parse_header(&header);
    if len > MAX_PAYLOAD {
        return Ok(Next::Bad(Bad::Refused("frame length out of range")));
    }
    let mut payload = vec![0u8; len];
    if read_full(input, &mut payload)? < payload.len() {
        return Ok(Next::Bad(Bad::Torn("torn frame payload")));
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Next::Bad(Bad::Refused("checksum mismatch")));
    }
    Ok(Next::Frame(payload))
}

fn parse_header(header: &[u8; HEADER as usize]) -> (usize, u32) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len as usize, crc)
}

/// The first offset in `bytes` where a whole frame with a good checksum
/// starts whose payload `plausible` accepts: where reading can go on after
/// damage. Costs a checksum per candidate whose length fits, so it is for
/// damaged files only.
pub fn resync(bytes: &[u8], plausible: impl Fn(&[u8]) -> bool) -> Option<usize> {
    (0..bytes.len()).find(|&at| {
        let Some(header) = bytes.get(at..at + HEADER as usize) else { return false };
        let Ok(header) = <&[u8; HEADER as usize]>::try_from(header) else { return false };
        let (len, crc) = parse_header(header);
        let start = at + HEADER as usize;
        len <= MAX_PAYLOAD
            && bytes
                .get(start..start + len)
                .is_some_and(|payload| crc32fast::hash(payload) == crc && plausible(payload))
    })
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
