//! The on-disk record format of a segment file, and the scan that recovers one.
//!
//! A segment is a sequence of entries, each `len: u32 | crc32c(body): u32 | body`, where the
//! body is `offset u64 | timestamp i64 | key_len i32 (-1 = none) | key | value_len u32 |
//! value | header_count u16 | (name_len u16 | name | value_len u32 | value)*`, all little
//! endian. The CRC lets recovery find where a crash tore the tail.

use bytes::Bytes;
use pacer_core::{NewRecord, Record};

const ENTRY_HEADER: usize = 8;
/// Bigger entries can only be corruption: the broker's packet limit is far below this.
const MAX_ENTRY: usize = 64 << 20;

pub fn encode(offset: u64, rec: &NewRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; ENTRY_HEADER]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&rec.timestamp.to_le_bytes());
    match &rec.key {
        Some(k) => {
            out.extend_from_slice(&(k.len() as i32).to_le_bytes());
            out.extend_from_slice(k);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    out.extend_from_slice(&(rec.value.len() as u32).to_le_bytes());
    out.extend_from_slice(&rec.value);
    out.extend_from_slice(&(rec.headers.len() as u16).to_le_bytes());
    for (name, value) in &rec.headers {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    let body_len = (out.len() - start - ENTRY_HEADER) as u32;
    let crc = crc32c::crc32c(&out[start + ENTRY_HEADER..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Outcome of decoding at the front of a buffer.
pub enum Decoded {
    /// A whole, valid entry and its length in bytes.
    Entry(Record, usize),
    /// The buffer ends inside an entry: read more (or, at the end of the file, a torn tail).
    Incomplete,
    /// The bytes are not a valid entry.
    Corrupt(&'static str),
}

/// Decodes the entry at the front of `buf`, copying its key and value out.
pub fn decode(buf: &[u8], partition: u32) -> Decoded {
    decode_with(buf, partition, |range| Bytes::copy_from_slice(&buf[range]))
}

/// Decodes the entry at `at` in `buf`; its key and value share `buf`'s memory, so reading
/// a chunk of a segment allocates once, not per record.
pub fn decode_shared(buf: &Bytes, at: usize, partition: u32) -> Decoded {
    decode_with(&buf[at..], partition, |range| buf.slice(at + range.start..at + range.end))
}

fn decode_with(buf: &[u8], partition: u32, bytes: impl Fn(std::ops::Range<usize>) -> Bytes) -> Decoded {
    if buf.len() < ENTRY_HEADER {
        return Decoded::Incomplete;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if len > MAX_ENTRY {
        return Decoded::Corrupt("entry length out of range");
    }
    if buf.len() < ENTRY_HEADER + len {
        return Decoded::Incomplete;
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let body = &buf[ENTRY_HEADER..ENTRY_HEADER + len];
    if crc32c::crc32c(body) != crc {
        return Decoded::Corrupt("CRC mismatch");
    }
    match parse_body(buf, ENTRY_HEADER + len, partition, bytes) {
        Some(rec) => Decoded::Entry(rec, ENTRY_HEADER + len),
        None => Decoded::Corrupt("malformed entry body"),
    }
}

/// Reads the body that runs from `ENTRY_HEADER` to `end` of `buf`.
fn parse_body(
    buf: &[u8],
    end: usize,
    partition: u32,
    bytes: impl Fn(std::ops::Range<usize>) -> Bytes,
) -> Option<Record> {
    let mut r = Cursor { buf: &buf[..end], at: ENTRY_HEADER };
    let offset = u64::from_le_bytes(buf[r.take(8)?].try_into().ok()?);
    let timestamp = i64::from_le_bytes(buf[r.take(8)?].try_into().ok()?);
    let key_len = i32::from_le_bytes(buf[r.take(4)?].try_into().ok()?);
    let key = if key_len < 0 { None } else { Some(bytes(r.take(key_len as usize)?)) };
    let value_len = u32::from_le_bytes(buf[r.take(4)?].try_into().ok()?) as usize;
    let value = bytes(r.take(value_len)?);
    let count = u16::from_le_bytes(buf[r.take(2)?].try_into().ok()?);
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let n = u16::from_le_bytes(buf[r.take(2)?].try_into().ok()?) as usize;
        let name = std::str::from_utf8(&buf[r.take(n)?]).ok()?.to_string();
        let n = u32::from_le_bytes(buf[r.take(4)?].try_into().ok()?) as usize;
        headers.push((name, bytes(r.take(n)?)));
    }
    Some(Record { partition, offset, timestamp, key, value, headers })
}

/// Walks a body by position, so fields can be cut out of a shared buffer.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<std::ops::Range<usize>> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len())?;
        let range = self.at..end;
        self.at = end;
        Some(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NewRecord {
        NewRecord::new(1_558_212_482_000, Some(Bytes::from_static(b"alice")), &b"{\"lat\":1}"[..])
            .with_header("mqtt.topic", &b"race/alice"[..])
    }

    #[test]
    fn entry_round_trips() {
        let mut buf = Vec::new();
        encode(42, &sample(), &mut buf);
        let Decoded::Entry(rec, used) = decode(&buf, 0) else { panic!("not decoded") };
        assert_eq!(used, buf.len());
        assert_eq!(rec.offset, 42);
        assert_eq!(rec.key.as_deref(), Some(&b"alice"[..]));
        assert_eq!(rec.header("mqtt.topic").map(|v| &v[..]), Some(&b"race/alice"[..]));
    }

    #[test]
    fn shared_decoding_slices_the_chunk() {
        let mut buf = vec![0xAA; 3];
        encode(7, &sample(), &mut buf);
        let chunk = Bytes::from(buf);
        let Decoded::Entry(rec, used) = decode_shared(&chunk, 3, 0) else { panic!("not decoded") };
        assert_eq!(used, chunk.len() - 3);
        assert_eq!((rec.offset, rec.value.as_ref()), (7, &b"{\"lat\":1}"[..]));
        let inside = chunk.as_ptr_range();
        assert!(inside.contains(&rec.value.as_ptr()), "the value points into the chunk, not a copy");
    }

    #[test]
    fn torn_and_flipped_entries_are_detected() {
        let mut buf = Vec::new();
        encode(1, &sample(), &mut buf);
        assert!(matches!(decode(&buf[..buf.len() - 1], 0), Decoded::Incomplete));
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        assert!(matches!(decode(&buf, 0), Decoded::Corrupt("CRC mismatch")));
    }
}
