//! One partition on disk: its segments, their sparse indexes, recovery, and reading.
//!
//! A partition directory holds segment files `<base offset>.log`. Sealed segments (all but
//! the last) also have `<base>.index` (offset → byte position, one entry per few KiB) and
//! `<base>.timeindex` (largest timestamp so far → offset), written when the segment is
//! sealed, so start-up loads them instead of scanning. The active segment is always scanned
//! at start-up and cut after its last whole entry: that is where a crash can tear.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Instant;

use bytes::Bytes;
use pacer_core::Record;

use crate::segment::{self, Decoded};
use crate::{LogError, Result};

/// One sparse index entry per this many bytes of segment.
pub const INDEX_INTERVAL: u64 = 4096;
/// Upper bound on one read from a segment file.
const READ_CHUNK: u64 = 1 << 20;

#[derive(Debug)]
pub struct SegmentInfo {
    pub base: u64,
    pub path: PathBuf,
    /// Committed length in bytes.
    pub len: u64,
    /// (offset, byte position) of some entries, ascending.
    pub index: Vec<(u64, u64)>,
    /// (largest timestamp up to and including offset, offset), ascending in both.
    pub time_index: Vec<(i64, u64)>,
    pub first_timestamp: Option<i64>,
    pub max_timestamp: Option<i64>,
    /// When the segment started taking records in this process, for rolling by age.
    pub opened: Instant,
}

impl SegmentInfo {
    pub fn empty(base: u64, path: PathBuf) -> Self {
        SegmentInfo {
            base,
            path,
            len: 0,
            index: Vec::new(),
            time_index: Vec::new(),
            first_timestamp: None,
            max_timestamp: None,
            opened: Instant::now(),
        }
    }

    /// Records an entry the writer appended (or recovery found) at `pos`.
    pub fn note_entry(&mut self, offset: u64, pos: u64, timestamp: i64) {
        let last_indexed = self.index.last().map(|&(_, p)| p);
        if last_indexed.is_none_or(|p| pos - p >= INDEX_INTERVAL) {
            self.index.push((offset, pos));
            let max = self.max_timestamp.map_or(timestamp, |m| m.max(timestamp));
            if self.time_index.last().is_none_or(|&(t, _)| max > t) {
                self.time_index.push((max, offset));
            }
        }
        self.first_timestamp.get_or_insert(timestamp);
        self.max_timestamp = Some(self.max_timestamp.map_or(timestamp, |m| m.max(timestamp)));
    }

    fn index_path(&self) -> PathBuf {
        self.path.with_extension("index")
    }

    fn time_index_path(&self) -> PathBuf {
        self.path.with_extension("timeindex")
    }

    /// Writes the index files of a segment that will take no more records.
    pub fn write_indexes(&self) -> Result<()> {
        let mut index = Vec::with_capacity(self.index.len() * 16);
        for &(o, p) in &self.index {
            index.extend_from_slice(&o.to_le_bytes());
            index.extend_from_slice(&p.to_le_bytes());
        }
        let mut time = Vec::with_capacity(self.time_index.len() * 16 + 16);
        let mut entries = self.time_index.clone();
        // The true largest timestamp goes last, so retention and lookups see it after a restart.
        if let (Some(max), Some(&(t, _))) = (self.max_timestamp, entries.last()) {
            if max > t {
                entries.push((max, self.index.last().map_or(self.base, |&(o, _)| o)));
            }
        }
        for (t, o) in entries {
            time.extend_from_slice(&t.to_le_bytes());
            time.extend_from_slice(&o.to_le_bytes());
        }
        write_synced(&self.index_path(), &index)?;
        write_synced(&self.time_index_path(), &time)
    }

    /// Loads the index files of a sealed segment; None when missing or not plausible.
    fn load_indexes(path: &Path, base: u64) -> Option<SegmentInfo> {
        let len = fs::metadata(path).ok()?.len();
        let index_bytes = fs::read(path.with_extension("index")).ok()?;
        let time_bytes = fs::read(path.with_extension("timeindex")).ok()?;
        if index_bytes.len() % 16 != 0 || time_bytes.len() % 16 != 0 {
            return None;
        }
        let pairs = |b: &[u8]| -> Vec<(u64, u64)> {
            b.chunks_exact(16)
                .map(|c| {
                    (u64::from_le_bytes(c[..8].try_into().unwrap()), u64::from_le_bytes(c[8..].try_into().unwrap()))
                })
                .collect()
        };
        let index = pairs(&index_bytes);
        let time_index: Vec<(i64, u64)> = pairs(&time_bytes).into_iter().map(|(t, o)| (t as i64, o)).collect();
        let plausible = match index.first() {
            None => len == 0,
            Some(&(o, p)) => o == base && p == 0 && index.last().unwrap().1 < len,
        };
        if !plausible {
            return None;
        }
        let first_timestamp = first_entry_timestamp(path);
        let max_timestamp = time_index.last().map(|&(t, _)| t);
        Some(SegmentInfo {
            base,
            path: path.to_path_buf(),
            len,
            index,
            time_index,
            first_timestamp,
            max_timestamp,
            opened: Instant::now(),
        })
    }

    fn delete_files(&self) {
        for p in [self.path.clone(), self.index_path(), self.time_index_path()] {
            if let Err(e) = fs::remove_file(&p) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "could not delete segment file");
                }
            }
        }
    }
}

fn first_entry_timestamp(path: &Path) -> Option<i64> {
    let mut buf = vec![0u8; 4096];
    let n = File::open(path).and_then(|mut f| f.read(&mut buf)).ok()?;
    buf.truncate(n);
    if let Decoded::Entry(rec, _) = segment::decode(&buf, 0) {
        return Some(rec.timestamp);
    }
    // An entry bigger than the first read: read it whole.
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize + 8;
    let mut whole = vec![0u8; len];
    File::open(path).and_then(|mut f| f.read_exact(&mut whole)).ok()?;
    match segment::decode(&whole, 0) {
        Decoded::Entry(rec, _) => Some(rec.timestamp),
        _ => None,
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io_err(path))
}

pub fn io_err(path: &Path) -> impl Fn(std::io::Error) -> LogError + '_ {
    move |error| LogError::Io { path: path.display().to_string(), error }
}

pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// The committed view of one partition, shared by the writer and readers.
pub struct Partition {
    pub id: u32,
    pub dir: PathBuf,
    pub segments: RwLock<Vec<SegmentInfo>>,
    /// Offset the next record will get: everything below it is durable.
    pub end: AtomicU64,
}

/// A run of records read from a partition, and where the next read continues.
pub struct Chunk {
    pub records: Vec<Record>,
    pub next: u64,
    /// (segment base, byte position) of `next`, when known.
    pub hint: Option<(u64, u64)>,
}

impl Partition {
    pub fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    pub fn start(&self) -> u64 {
        self.segments.read().unwrap().first().map_or(0, |s| s.base)
    }

    pub fn bytes(&self) -> u64 {
        self.segments.read().unwrap().iter().map(|s| s.len).sum()
    }

    /// Opens a partition directory, recovering it: sealed segments from their index files
    /// (scanned and re-indexed when those are missing), the active one scanned and cut after
    /// its last whole entry.
    pub fn recover(id: u32, dir: &Path) -> Result<Partition> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut bases: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        bases.sort_unstable();
        if bases.is_empty() {
            bases.push(0);
        }
        let mut segments = Vec::new();
        let mut end = bases[0];
        for (i, &base) in bases.iter().enumerate() {
            let path = segment_path(dir, base);
            let sealed_next = bases.get(i + 1).copied();
            let info = match sealed_next.and_then(|_| SegmentInfo::load_indexes(&path, base)) {
                Some(info) => info,
                None => {
                    let (info, next) = scan_segment(&path, base)?;
                    end = next;
                    if let Some(expected) = sealed_next {
                        if next != expected {
                            tracing::warn!(path = %path.display(), next, expected, "sealed segment ends before the next one starts; offsets in between are gone");
                        }
                        if let Err(e) = info.write_indexes() {
                            tracing::warn!(error = %e, "index files not written; the segment is scanned again at the next start");
                        }
                    }
                    info
                }
            };
            segments.push(info);
        }
        Ok(Partition { id, dir: dir.to_path_buf(), segments: RwLock::new(segments), end: AtomicU64::new(end) })
    }

    /// Reads committed records from `from` on, up to about `budget` bytes. Skips a corrupt
    /// stretch to the next index entry, reporting it.
    pub fn read(&self, from: u64, hint: Option<(u64, u64)>, budget: u64) -> Result<Chunk> {
        let end = self.end();
        let mut next = from;
        let mut hint = hint;
        let mut out = Vec::new();
        let mut used = 0u64;
        while next < end && used < budget {
            let (base, path, pos, seg_len, next_base) = {
                let segments = self.segments.read().unwrap();
                let first = segments.first().map_or(0, |s| s.base);
                if next < first {
                    next = first; // retention dropped what this reader had not read yet
                    hint = None;
                }
                let i = segments.partition_point(|s| s.base <= next).saturating_sub(1);
                let seg = &segments[i];
                let pos = match hint {
                    Some((b, p)) if b == seg.base => p,
                    _ => {
                        let j = seg.index.partition_point(|&(o, _)| o <= next);
                        if j == 0 {
                            0
                        } else {
                            seg.index[j - 1].1
                        }
                    }
                };
                (seg.base, seg.path.clone(), pos, seg.len, segments.get(i + 1).map(|s| s.base))
            };
            if pos >= seg_len {
                match next_base {
                    Some(b) if b > next => {
                        next = b;
                        hint = None;
                        continue;
                    }
                    _ => break, // the end moved ahead of the segment list: the writer is mid-update
                }
            }
            let want = (seg_len - pos).min(READ_CHUNK.min(budget - used).max(4096));
            let buf = match read_at(&path, pos, want) {
                Ok(buf) => buf,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    hint = None; // retention deleted the segment under us: look again
                    continue;
                }
                Err(error) => return Err(LogError::Io { path: path.display().to_string(), error }),
            };
            let mut at = 0usize;
            let mut corrupt = None;
            let mut big_entry = None;
            let mut reached_end = false;
            loop {
                match segment::decode_shared(&buf, at, self.id) {
                    // Committed after this read began: the next read returns it. Stepping
                    // past it here would move the position hint beyond a record never returned.
                    Decoded::Entry(rec, _) if rec.offset >= end => {
                        reached_end = true;
                        break;
                    }
                    Decoded::Entry(rec, n) => {
                        at += n;
                        if rec.offset >= next {
                            next = rec.offset + 1;
                            used += n as u64;
                            if out.capacity() == 0 {
                                // Room for the rest of the buffer if entries are alike: no regrowing.
                                out.reserve((buf.len() - at) / n + 1);
                            }
                            out.push(rec);
                        }
                    }
                    Decoded::Incomplete if at == 0 => {
                        big_entry = Some(u32::from_le_bytes(buf[0..4].try_into().unwrap()) as u64 + 8);
                        break;
                    }
                    Decoded::Incomplete => break,
                    Decoded::Corrupt(reason) => match next_valid_entry(&buf, at + 1, next + 1) {
                        // The damage is local: report it and continue at the next whole entry.
                        Some((resume, offset)) => {
                            tracing::error!(path = %path.display(), position = pos + at as u64, reason, unreadable_offsets = %format!("{next}..{offset}"), "corrupt entry in the log; skipped");
                            at = resume;
                            next = offset;
                        }
                        None => {
                            corrupt = Some(reason);
                            break;
                        }
                    },
                }
            }
            if let Some(len) = big_entry {
                let whole = read_at(&path, pos, len).map_err(io_err(&path))?;
                if let Decoded::Entry(rec, n) = segment::decode_shared(&whole, 0, self.id) {
                    if rec.offset >= end {
                        break;
                    }
                    if rec.offset >= next {
                        next = rec.offset + 1;
                        used += n as u64;
                        out.push(rec);
                    }
                    hint = Some((base, pos + n as u64));
                    continue;
                }
                corrupt = Some("entry cut short");
            }
            let at_pos = pos + at as u64;
            hint = Some((base, at_pos));
            if reached_end {
                break;
            }
            if let Some(reason) = corrupt {
                let resume = self.skip_corruption(base, at_pos, next_base);
                tracing::error!(path = %path.display(), position = at_pos, reason, skipped_offsets = %format!("{next}..{}", resume.0), "corrupt entry in the log; skipping to the next readable entry");
                next = resume.0;
                hint = resume.1;
                if !out.is_empty() {
                    break;
                }
            }
        }
        Ok(Chunk { records: out, next, hint })
    }

    /// Where reading continues after corruption at `pos` of segment `base`: the next index
    /// entry past it, else the next segment, else the end.
    fn skip_corruption(&self, base: u64, pos: u64, next_base: Option<u64>) -> (u64, Option<(u64, u64)>) {
        let segments = self.segments.read().unwrap();
        if let Some(seg) = segments.iter().find(|s| s.base == base) {
            if let Some(&(o, p)) = seg.index.iter().find(|&&(_, p)| p > pos) {
                return (o, Some((base, p)));
            }
        }
        (next_base.unwrap_or_else(|| self.end()), None)
    }

    /// The first offset whose record has a timestamp at or after `t`.
    pub fn offset_for_timestamp(&self, t: i64) -> Result<u64> {
        let start = {
            let segments = self.segments.read().unwrap();
            let Some(seg) = segments.iter().find(|s| s.max_timestamp.is_some_and(|m| m >= t)) else {
                return Ok(self.end());
            };
            // Every record before a time-index entry's offset has a timestamp <= its time.
            let i = seg.time_index.partition_point(|&(ts, _)| ts < t);
            if i == 0 {
                seg.base
            } else {
                seg.time_index[i - 1].1
            }
        };
        let mut next = start;
        let mut hint = None;
        loop {
            let chunk = self.read(next, hint, READ_CHUNK)?;
            if chunk.records.is_empty() {
                return Ok(chunk.next);
            }
            if let Some(r) = chunk.records.iter().find(|r| r.timestamp >= t) {
                return Ok(r.offset);
            }
            next = chunk.next;
            hint = chunk.hint;
        }
    }

    /// Drops the sealed segments that hold only records before `offset`. Returns how many went.
    pub fn drop_before(&self, offset: u64) -> usize {
        let removed: Vec<SegmentInfo> = {
            let mut segments = self.segments.write().unwrap();
            let whole = segments.windows(2).take_while(|pair| pair[1].base <= offset).count();
            segments.drain(..whole).collect()
        };
        for seg in &removed {
            tracing::debug!(dir = %self.dir.display(), base = seg.base, bytes = seg.len, "segment dropped: all of it is before what is kept");
            seg.delete_files();
        }
        removed.len()
    }

    /// Drops the oldest sealed segments whose newest record is older than `before_ms`, or
    /// while the partition is larger than `max_bytes`. Returns how many went.
    pub fn apply_retention(&self, before_ms: Option<i64>, max_bytes: Option<u64>) -> usize {
        let mut removed = Vec::new();
        {
            let mut segments = self.segments.write().unwrap();
            let mut total: u64 = segments.iter().map(|s| s.len).sum();
            while segments.len() > 1 {
                let oldest = &segments[0];
                let too_old = before_ms.is_some_and(|b| oldest.max_timestamp.is_some_and(|m| m < b));
                let too_big = max_bytes.is_some_and(|m| total > m);
                if !(too_old || too_big) {
                    break;
                }
                total -= oldest.len;
                removed.push(segments.remove(0));
            }
        }
        for seg in &removed {
            tracing::info!(dir = %self.dir.display(), base = seg.base, bytes = seg.len, "retention: segment deleted");
            seg.delete_files();
        }
        removed.len()
    }
}

fn read_at(path: &Path, pos: u64, len: u64) -> std::io::Result<Bytes> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(pos))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "segment shorter than its committed length"));
    }
    Ok(Bytes::from(buf))
}

/// The first position at or after `from` holding a whole, CRC-valid entry with an offset of
/// at least `min_offset`: where a scan resumes after corruption.
fn next_valid_entry(bytes: &[u8], from: usize, min_offset: u64) -> Option<(usize, u64)> {
    (from..bytes.len()).find_map(|at| match segment::decode(&bytes[at..], 0) {
        Decoded::Entry(rec, _) if rec.offset >= min_offset => Some((at, rec.offset)),
        _ => None,
    })
}

/// Scans a segment, builds its indexes, and cuts it after the last valid entry. Returns the
/// segment and the offset after its last record.
fn scan_segment(path: &Path, base: u64) -> Result<(SegmentInfo, u64)> {
    let mut bytes = Vec::new();
    if path.exists() {
        File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(path))?;
    }
    let mut info = SegmentInfo::empty(base, path.to_path_buf());
    let mut pos = 0usize;
    let mut expected = base;
    while pos < bytes.len() {
        match segment::decode(&bytes[pos..], 0) {
            Decoded::Entry(rec, used) if rec.offset == expected => {
                info.note_entry(rec.offset, pos as u64, rec.timestamp);
                pos += used;
                expected += 1;
            }
            other => {
                let reason = match other {
                    Decoded::Incomplete => "entry cut short",
                    Decoded::Corrupt(r) => r,
                    Decoded::Entry(..) => "offset out of sequence",
                };
                // Damage in the middle (a flipped byte) leaves whole entries after it: find the
                // next one and keep going. Damage at the end is a torn write: cut it off.
                if let Some((resume, rec_offset)) = next_valid_entry(&bytes, pos + 1, expected + 1) {
                    tracing::error!(path = %path.display(), position = pos, reason, unreadable_offsets = %format!("{expected}..{rec_offset}"), "corrupt entry in the log; the entries after it stay readable");
                    info.index.push((rec_offset, resume as u64));
                    pos = resume;
                    expected = rec_offset;
                    continue;
                }
                tracing::warn!(path = %path.display(), at = pos, dropped_bytes = bytes.len() - pos, reason, "truncating a torn tail");
                let cut = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(pos as u64).and_then(|_| f.sync_all()));
                if let Err(e) = cut {
                    // Readers stop at the committed end anyway; the writer cuts the file when
                    // it can open it for writing.
                    tracing::warn!(path = %path.display(), error = %e, "cannot cut the torn tail now");
                }
                break;
            }
        }
    }
    info.len = pos as u64;
    Ok((info, expected))
}
