//! Columnar history: a stream's older records kept as Parquet segments, which Pacer's
//! history queries scan column by column and which DuckDB, Spark or pandas open as they are.
//!
//! Each stream has a directory of segments numbered in the order they were written, plus a
//! `positions` file saying where the log takes over. A segment's footer names the offsets
//! it holds per partition, so a crash between writing a segment and the positions file
//! neither loses nor repeats a record: the larger of the two counts.

pub mod columns;
mod compactor;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use pacer_core::Record;
use pacer_log::Positions;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};

pub use compactor::{Compactor, CompactorConfig};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Segment { path: PathBuf, message: String },
    #[error(transparent)]
    Log(#[from] pacer_log::LogError),
}

pub type Result<T> = std::result::Result<T, HistoryError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HistoryError + '_ {
    move |source| HistoryError::Io { path: path.to_path_buf(), source }
}

fn segment_err(path: &Path, message: impl ToString) -> HistoryError {
    HistoryError::Segment { path: path.to_path_buf(), message: message.to_string() }
}

const OFFSETS: &str = "pacer.offsets";
const MIN_TIME: &str = "pacer.min_time";
const MAX_TIME: &str = "pacer.max_time";
/// Rows per batch when scanning: large enough that per-batch work vanishes.
const SCAN_BATCH_ROWS: usize = 65_536;

/// The Parquet segments of every stream, under one directory.
#[derive(Debug, Clone)]
pub struct HistoryStore {
    dir: PathBuf,
}

/// One Parquet file of a stream's history.
#[derive(Debug, Clone)]
pub struct Segment {
    pub path: PathBuf,
    pub rows: u64,
    pub min_time: i64,
    pub max_time: i64,
    /// The position after its last record, per partition it holds.
    pub end: Positions,
}

impl HistoryStore {
    pub fn open(dir: impl Into<PathBuf>) -> Result<HistoryStore> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(HistoryStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stream_dir(&self, stream: &str) -> PathBuf {
        self.dir.join(stream)
    }

    /// A stream's segments, oldest first (none when it has no history).
    pub fn segments(&self, stream: &str) -> Result<Vec<Segment>> {
        let dir = self.stream_dir(stream);
        let mut paths: Vec<PathBuf> = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        paths.sort();
        paths.into_iter().map(|p| read_footer(&p)).collect()
    }

    /// Where the log takes over from the history: past every segment, and past what the
    /// positions file records (segments dropped by retention leave it behind).
    pub fn covered(&self, stream: &str, segments: &[Segment]) -> Result<Positions> {
        let path = self.stream_dir(stream).join("positions");
        let mut covered = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<Positions>().map_err(|e| segment_err(&path, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Positions::new(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        for segment in segments {
            extend(&mut covered, &segment.end);
        }
        Ok(covered)
    }

    /// Writes `records` as the stream's next segment, durably, then moves its positions
    /// past them.
    pub fn write(&self, stream: &str, records: &[Record]) -> Result<Segment> {
        let dir = self.stream_dir(stream);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let segments = self.segments(stream)?;
        let number =
            segments.last().and_then(|s| s.path.file_stem()?.to_str()?.parse::<u64>().ok()).map_or(0, |n| n + 1);
        let path = dir.join(format!("{number:020}.parquet"));
        let mut end = Positions::new();
        for r in records {
            end.advance_past(r.partition, r.offset);
        }
        let min_time = records.iter().map(|r| r.timestamp).min().unwrap_or(0);
        let max_time = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
        let batch = columns::to_batch(records).map_err(|e| segment_err(&path, e))?;
        let metadata = [(OFFSETS, end.to_string()), (MIN_TIME, min_time.to_string()), (MAX_TIME, max_time.to_string())]
            .into_iter()
            .map(|(k, v)| KeyValue::new(k.to_string(), v))
            .collect();
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_key_value_metadata(Some(metadata))
            .build();
        let partial = path.with_extension("parquet.partial");
        let file = fs::File::create(&partial).map_err(io_err(&partial))?;
        let mut writer =
            ArrowWriter::try_new(file, batch.schema(), Some(properties)).map_err(|e| segment_err(&partial, e))?;
        writer.write(&batch).map_err(|e| segment_err(&partial, e))?;
        let file = writer.into_inner().map_err(|e| segment_err(&partial, e))?;
        file.sync_all().map_err(io_err(&partial))?;
        fs::rename(&partial, &path).map_err(io_err(&path))?;
        let mut covered = self.covered(stream, &segments)?;
        extend(&mut covered, &end);
        write_atomically(&dir.join("positions"), covered.to_string().as_bytes())?;
        sync_dir(&dir);
        Ok(Segment { path, rows: records.len() as u64, min_time, max_time, end })
    }

    /// Deletes the segments whose newest record is older than `cutoff` (ms); returns how many.
    pub fn drop_older_than(&self, stream: &str, cutoff: i64) -> Result<usize> {
        let mut dropped = 0;
        for segment in self.segments(stream)? {
            if segment.max_time < cutoff {
                fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    /// Removes segments a crash left half written.
    pub fn clean(&self, stream: &str) -> Result<()> {
        let dir = self.stream_dir(stream);
        let Ok(entries) = fs::read_dir(&dir) else { return Ok(()) };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.to_string_lossy().ends_with(".partial") {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }
}

impl Segment {
    /// Its rows in batches, only the named columns (any case; those it lacks are left out)
    /// or all of them.
    pub fn scan(&self, columns: Option<&[String]>) -> Result<ParquetRecordBatchReader> {
        let file = fs::File::open(&self.path).map_err(io_err(&self.path))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| segment_err(&self.path, e))?;
        let builder = match columns {
            Some(names) => {
                let wanted: Vec<usize> = builder
                    .schema()
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| names.iter().any(|n| n.eq_ignore_ascii_case(f.name())))
                    .map(|(i, _)| i)
                    .collect();
                let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
                builder.with_projection(mask)
            }
            None => builder,
        };
        builder.with_batch_size(SCAN_BATCH_ROWS).build().map_err(|e| segment_err(&self.path, e))
    }

    /// Every record in it, in the order written.
    pub fn records(&self) -> Result<Vec<Record>> {
        let mut records = Vec::with_capacity(self.rows as usize);
        for batch in self.scan(None)? {
            let batch: RecordBatch = batch.map_err(|e| segment_err(&self.path, e))?;
            records.extend(columns::to_records(&batch).map_err(|e| segment_err(&self.path, e))?);
        }
        Ok(records)
    }
}

/// Moves `positions` forward to `other`'s where those are further.
fn extend(positions: &mut Positions, other: &Positions) {
    for (partition, next) in other.iter() {
        if next > positions.get(partition).unwrap_or(0) {
            positions.set(partition, next);
        }
    }
}

fn read_footer(path: &Path) -> Result<Segment> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let reader = SerializedFileReader::new(file).map_err(|e| segment_err(path, e))?;
    let meta = reader.metadata().file_metadata();
    let value = |key: &str| {
        meta.key_value_metadata()
            .and_then(|kv| kv.iter().find(|e| e.key == key))
            .and_then(|e| e.value.clone())
            .ok_or_else(|| segment_err(path, format!("no {key} in its footer: not a Pacer history segment")))
    };
    let time = |key: &str| value(key)?.parse::<i64>().map_err(|e| segment_err(path, format!("{key}: {e}")));
    Ok(Segment {
        path: path.to_path_buf(),
        rows: meta.num_rows() as u64,
        min_time: time(MIN_TIME)?,
        max_time: time(MAX_TIME)?,
        end: value(OFFSETS)?.parse().map_err(|e| segment_err(path, e))?,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension("partial");
    let mut file = fs::File::create(&partial).map_err(io_err(&partial))?;
    io::Write::write_all(&mut file, bytes).map_err(io_err(&partial))?;
    file.sync_all().map_err(io_err(&partial))?;
    fs::rename(&partial, path).map_err(io_err(path))
}

fn sync_dir(dir: &Path) {
    // A rename is durable once its directory is; failing that only weakens power-loss safety.
    if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "directory fsync failed");
    }
}
