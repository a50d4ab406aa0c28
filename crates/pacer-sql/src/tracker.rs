//! The hand-wired tracking query: latest position, speed, progress and rank per device.
//!
//! It reads an input stream of position fixes (JSON with `lat`, `lon` and optionally
//! `speed` in km/h, `alt`, `batt`) keyed by device, and writes one status record per fix to
//! its output stream, keyed the same way: a table changelog.
//!
//! Checkpoints: after each batch's output is durable, the query commits its input positions
//! to the log. Each output record carries the input position it came from, so a restart
//! rebuilds the table from the changelog records at or before the committed positions and
//! resumes input right after them. Output of a batch cut short by a crash (it can be durable
//! in some partitions and not in others) is ignored and computed again, so nothing is lost
//! and nothing counted twice.
//!
//! What it computes is what this ksqlDB query would, with a course instead of a straight
//! line to the finish:
//! `SELECT who, LATEST_BY_OFFSET(lat), …, TO_FINISH(course, lat, lon), RANK() … GROUP BY who`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use pacer_core::{header, NewRecord, Record};
use pacer_log::{Log, Positions, StartAt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::course::Course;
use crate::geo_fn::{geo_distance, DistanceUnit};

/// A device counts as finished once it covered this share of the course…
const FINISH_SHARE: f64 = 0.95;
/// …and is within this many metres of the end.
const FINISH_RADIUS_M: f64 = 50.0;

#[derive(Debug, Clone)]
pub struct TrackerConfig {
    pub input: String,
    pub output: String,
    pub course: Option<Arc<Course>>,
    /// (lat, lon) of the finish; remaining distance is measured to it when there is no course.
    pub finish: (f64, f64),
}

/// One device's row in the status table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub who: String,
    pub lat: f64,
    pub lon: f64,
    pub alt: Option<f64>,
    pub batt: Option<f64>,
    /// km/h: as reported, else computed from the previous fix.
    pub speed: Option<f64>,
    /// Event time of the fix, ms.
    pub ts: i64,
    pub progress_m: Option<f64>,
    pub to_finish_m: f64,
    pub finished_at: Option<i64>,
    pub rank: usize,
    pub fixes: u64,
}

pub struct Tracker {
    config: TrackerConfig,
    log: Arc<dyn Log>,
    table: HashMap<String, Status>,
}

impl Tracker {
    pub fn new(config: TrackerConfig, log: Arc<dyn Log>) -> Self {
        Tracker { config, log, table: HashMap::new() }
    }

    /// The consumer group its input positions are committed under.
    fn group(&self) -> String {
        format!("query:{}", self.config.output)
    }

    /// Runs until the log closes or fails.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let committed = self.log.committed_positions(&self.group(), &self.config.input).unwrap_or_default();
        self.restore(&committed).await?;
        tracing::info!(input = %self.config.input, output = %self.config.output, resume = %committed, devices = self.table.len(), "tracker started");
        let mut reader = self.log.reader(&self.config.input, StartAt::Positions(committed))?;
        loop {
            let batch = reader.next_batch().await?;
            let mut out = Vec::with_capacity(batch.len());
            let mut dead = Vec::new();
            for record in &batch {
                match self.update(record) {
                    Ok(changed) => out.extend(changed.iter().map(|status| status_record(record, status))),
                    Err(reason) => dead.push(dead_letter(&self.config.input, record, &reason)),
                }
            }
            if !dead.is_empty() {
                self.append_until_stored("_dead_letters", dead).await?;
            }
            self.append_until_stored(&self.config.output, out).await?;
            self.log.commit_positions(&self.group(), &self.config.input, &reader.positions()).await?;
        }
    }

    /// Appends, retrying while the log refuses (a full disk, say): the query waits rather
    /// than dropping results or stopping Pacer, and continues once the log takes writes again.
    async fn append_until_stored(&self, stream: &str, records: Vec<NewRecord>) -> anyhow::Result<()> {
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            match self.log.append(stream, records.clone()).await {
                Ok(_) => return Ok(()),
                Err(e @ pacer_log::LogError::Closed) => return Err(e.into()),
                Err(e) => {
                    tracing::error!(stream, error = %e, retry_in = ?delay, "query output not stored; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    /// Rebuilds the table from the changelog records of inputs before `committed`.
    async fn restore(&mut self, committed: &Positions) -> anyhow::Result<()> {
        let mut reader = self.log.reader(&self.config.output, StartAt::Beginning)?;
        loop {
            let batch = reader.try_batch().await?;
            if batch.is_empty() {
                return Ok(());
            }
            for record in batch {
                let input = record.header(header::INPUT_OFFSET).and_then(|v| std::str::from_utf8(v).ok());
                let checkpointed = input.and_then(|v| v.split_once(':')).is_some_and(|(p, o)| {
                    matches!((p.parse(), o.parse::<u64>()), (Ok(p), Ok(o)) if committed.get(p).is_some_and(|next| o < next))
                });
                if !checkpointed {
                    continue; // from a batch the crash cut short: it is computed again
                }
                if let Ok(status) = serde_json::from_slice::<Status>(&record.value) {
                    self.table.insert(status.who.clone(), status);
                }
            }
        }
    }

    /// Applies one fix. Returns the device's new status, then the status of every other
    /// device whose rank it changed, so the changelog always holds each device's true rank.
    fn update(&mut self, record: &Record) -> Result<Vec<Status>, String> {
        let value: Value = serde_json::from_slice(&record.value).map_err(|e| format!("value is not JSON: {e}"))?;
        let num = |field: &str| value.get(field).and_then(Value::as_f64);
        let (Some(lat), Some(lon)) = (num("lat"), num("lon")) else {
            return Err("fix has no numeric \"lat\" and \"lon\"".into());
        };
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(format!("position ({lat}, {lon}) is out of range"));
        }
        let who = match &record.key {
            Some(k) => String::from_utf8_lossy(k).into_owned(),
            None => value.get("who").and_then(Value::as_str).ok_or("fix has no key and no \"who\"")?.to_string(),
        };
        let previous = self.table.get(&who);
        let speed = num("speed").or_else(|| {
            let p = previous?;
            let hours = (record.timestamp - p.ts) as f64 / 3_600_000.0;
            (hours > 0.0).then(|| geo_distance(p.lat, p.lon, lat, lon, DistanceUnit::Km) / hours)
        });
        let (progress_m, to_finish_m, finished_at) = match &self.config.course {
            Some(course) => {
                let progress = course.progress(lat, lon, previous.and_then(|p| p.progress_m));
                let to_finish = (course.length_m() - progress).max(0.0);
                let at_end = geo_distance(lat, lon, self.config.finish.0, self.config.finish.1, DistanceUnit::Km)
                    * 1000.0
                    <= FINISH_RADIUS_M;
                let finished = previous
                    .and_then(|p| p.finished_at)
                    .or_else(|| (progress >= FINISH_SHARE * course.length_m() && at_end).then_some(record.timestamp));
                (Some(progress), if finished.is_some() { 0.0 } else { to_finish }, finished)
            }
            None => {
                let d = geo_distance(lat, lon, self.config.finish.0, self.config.finish.1, DistanceUnit::Km);
                (None, d * 1000.0, None)
            }
        };
        let status = Status {
            who: who.clone(),
            lat,
            lon,
            alt: num("alt"),
            batt: num("batt"),
            speed,
            ts: record.timestamp,
            progress_m,
            to_finish_m,
            finished_at,
            rank: 0,
            fixes: previous.map_or(0, |p| p.fixes) + 1,
        };
        self.table.insert(who.clone(), status);
        let reranked = self.rerank();
        let mut changed = vec![self.table[&who].clone()];
        changed.extend(reranked.iter().filter(|k| **k != who).map(|k| self.table[k].clone()));
        Ok(changed)
    }

    /// Finished devices first by finish time, then by remaining distance. Returns the
    /// devices whose rank changed.
    fn rerank(&mut self) -> Vec<String> {
        let mut order: Vec<(&String, &Status)> = self.table.iter().collect();
        order.sort_by(|a, b| {
            let fa = a.1.finished_at.unwrap_or(i64::MAX);
            let fb = b.1.finished_at.unwrap_or(i64::MAX);
            fa.cmp(&fb).then(a.1.to_finish_m.total_cmp(&b.1.to_finish_m)).then(a.0.cmp(b.0))
        });
        let ranks: Vec<(String, usize)> = order
            .iter()
            .enumerate()
            .filter(|(i, (_, s))| s.rank != i + 1)
            .map(|(i, (k, _))| ((*k).clone(), i + 1))
            .collect();
        let mut changed = Vec::with_capacity(ranks.len());
        for (k, rank) in ranks {
            self.table.get_mut(&k).unwrap().rank = rank;
            changed.push(k);
        }
        changed
    }
}

fn status_record(input: &Record, status: &Status) -> NewRecord {
    let value = serde_json::to_vec(status).expect("a status serializes");
    NewRecord::new(input.timestamp, Some(Bytes::from(status.who.clone())), value)
        .with_header(header::INPUT_OFFSET, Bytes::from(format!("{}:{}", input.partition, input.offset)))
}

fn dead_letter(stream: &str, record: &Record, reason: &str) -> NewRecord {
    let value = serde_json::json!({
        "reason": reason,
        "stream": stream,
        "offset": record.offset,
        "value": String::from_utf8_lossy(&record.value),
    });
    NewRecord::new(record.timestamp, record.key.clone(), value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacer_log::{EmbeddedLog, EmbeddedLogConfig};

    fn fix(who: &str, t: i64, lat: f64, lon: f64) -> NewRecord {
        let v = serde_json::json!({"who": who, "lat": lat, "lon": lon});
        NewRecord::new(t, Some(Bytes::from(who.to_string())), v.to_string())
    }

    /// Waits until the query committed `positions` of its input (an event in the log).
    async fn committed(log: &Arc<dyn Log>, positions: &str) {
        let mut reader = log.reader("__consumer_positions", StartAt::Beginning).unwrap();
        loop {
            if reader.next_batch().await.unwrap().iter().any(|r| r.value == positions.as_bytes()) {
                return;
            }
        }
    }

    async fn statuses(log: &Arc<dyn Log>, n: usize) -> Vec<Status> {
        let mut reader = log.reader("status", StartAt::Beginning).unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            for r in reader.next_batch().await.unwrap() {
                out.push(serde_json::from_slice(&r.value).unwrap());
            }
        }
        out
    }

    #[tokio::test]
    async fn ranks_by_progress_and_resumes_from_its_changelog_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path())).unwrap());
        let course = Arc::new(Course::new("line", vec![(0.0, 0.0), (0.01, 0.0)]).unwrap());
        let config =
            TrackerConfig { input: "fixes".into(), output: "status".into(), course: Some(course), finish: (0.0, 0.01) };
        log.append("fixes", vec![fix("a", 0, 0.0, 0.001), fix("b", 0, 0.0, 0.002), fix("a", 10_000, 0.0, 0.003)])
            .await
            .unwrap();
        let task = tokio::spawn(Tracker::new(config.clone(), log.clone()).run());
        let s = statuses(&log, 5).await;
        committed(&log, "0:3").await;
        task.abort();
        let ranks = |s: &[Status]| s.iter().map(|x| (x.who.clone(), x.rank)).collect::<Vec<_>>();
        let expect = |v: &[(&str, usize)]| v.iter().map(|(w, r)| (w.to_string(), *r)).collect::<Vec<_>>();
        // b passes a: b's new status, then a's, whose rank it changed; then a passes b back.
        assert_eq!(ranks(&s), expect(&[("a", 1), ("b", 1), ("a", 2), ("a", 1), ("b", 2)]));
        let speed = s[3].speed.unwrap();
        assert!((speed - 80.0).abs() < 1.0, "222 m in 10 s is about 80 km/h, got {speed}");
        assert!((s[3].to_finish_m - 778.0).abs() < 3.0, "{}", s[3].to_finish_m);

        // Restart: no input is processed twice, new input continues from the rebuilt table.
        log.append("fixes", vec![fix("b", 20_000, 0.0, 0.005), fix("b", 30_000, 0.0, 0.01)]).await.unwrap();
        let task = tokio::spawn(Tracker::new(config, log.clone()).run());
        let s = statuses(&log, 8).await;
        task.abort();
        assert_eq!(ranks(&s[5..]), expect(&[("b", 1), ("a", 2), ("b", 1)]));
        assert_eq!(s[5].fixes, 2);
        assert_eq!(s[7].finished_at, Some(30_000));
        assert_eq!(s[7].to_finish_m, 0.0);
    }
}
