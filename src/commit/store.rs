//! The provider's store of committed step data, kept for audits (redb: one file, ACID,
//! survives a restart or a kill).
//!
//! Each job is one record (its receipt and steps, CBOR) under its job id, indexed by time.
//! The store keeps jobs for a retention window and within a byte budget: each insertion first
//! drops jobs older than the window, then the oldest jobs until the new one fits. A job that
//! an audit asks for after it was dropped gets a clear "expired or unknown" answer; routers
//! audit within seconds, the window is hours.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::receipt::Receipt;
use super::step::StepData;
use super::CommitError;

const JOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("jobs");
/// (timestamp ms, job id) → record bytes.
const BY_TIME: TableDefinition<(u64, &[u8]), u64> = TableDefinition::new("by_time");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A stored job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredJob {
    /// Its receipt.
    pub receipt: Receipt,
    /// Its steps' data.
    pub steps: Vec<StepData>,
}

/// The store.
pub struct Store {
    db: Database,
    path: PathBuf,
    retention_ms: u64,
    max_bytes: u64,
}

impl Store {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path, retention_ms: u64, max_bytes: u64) -> Result<Self, CommitError> {
        let db = Database::create(path).map_err(|e| CommitError::StoreOpen {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        let s = Self {
            db,
            path: path.to_path_buf(),
            retention_ms,
            max_bytes,
        };
        // Create the tables so that reads of an empty store work.
        let w = s.db.begin_write().map_err(|e| s.err(e))?;
        w.open_table(JOBS).map_err(|e| s.err(e))?;
        w.open_table(BY_TIME).map_err(|e| s.err(e))?;
        w.open_table(META).map_err(|e| s.err(e))?;
        w.commit().map_err(|e| s.err(e))?;
        Ok(s)
    }

    fn err(&self, e: impl Into<redb::Error>) -> CommitError {
        CommitError::Store {
            path: self.path.display().to_string(),
            source: Box::new(e.into()),
        }
    }

    fn record_err(&self, reason: String) -> CommitError {
        CommitError::StoreRecord {
            path: self.path.display().to_string(),
            reason,
        }
    }

    /// Keep a finished job (durably: the call returns after the commit reaches the disk).
    pub fn put(&self, job: &StoredJob, now_ms: u64) -> Result<(), CommitError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(job, &mut bytes)
            .map_err(|e| self.record_err(format!("a job that does not encode ({e})")))?;
        let size = bytes.len() as u64;
        if size > self.max_bytes {
            return Err(self.record_err(format!(
                "a job of {size} bytes does not fit the store's budget of {} bytes; raise --store-max-bytes",
                self.max_bytes
            )));
        }
        let id = job.receipt.job_id.0;
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut jobs = w.open_table(JOBS).map_err(|e| self.err(e))?;
            let mut by_time = w.open_table(BY_TIME).map_err(|e| self.err(e))?;
            let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
            let mut total = meta
                .get("bytes")
                .map_err(|e| self.err(e))?
                .map_or(0, |g| g.value());
            let horizon = now_ms.saturating_sub(self.retention_ms);
            loop {
                let Some((k, v)) = by_time.first().map_err(|e| self.err(e))? else {
                    break;
                };
                let (ts, old) = k.value();
                if ts >= horizon && total + size <= self.max_bytes {
                    break;
                }
                let (old, n) = (old.to_vec(), v.value());
                drop((k, v));
                by_time
                    .remove((ts, old.as_slice()))
                    .map_err(|e| self.err(e))?;
                jobs.remove(old.as_slice()).map_err(|e| self.err(e))?;
                total = total.saturating_sub(n);
            }
            jobs.insert(id.as_slice(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
            by_time
                .insert((job.receipt.timestamp_ms, id.as_slice()), size)
                .map_err(|e| self.err(e))?;
            meta.insert("bytes", total + size)
                .map_err(|e| self.err(e))?;
        }
        w.commit().map_err(|e| self.err(e))
    }

    /// A job, if it is still kept and, at `now_ms`, inside the retention window (a job past
    /// it stays on disk until the next [`Store::put`] evicts it, but is never opened).
    pub fn get(&self, job_id: &[u8; 16], now_ms: u64) -> Result<Option<StoredJob>, CommitError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let jobs = r.open_table(JOBS).map_err(|e| self.err(e))?;
        let Some(v) = jobs.get(job_id.as_slice()).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let job: StoredJob = ciborium::from_reader(v.value())
            .map_err(|e| self.record_err(format!("a damaged record ({e})")))?;
        let horizon = now_ms.saturating_sub(self.retention_ms);
        Ok((job.receipt.timestamp_ms >= horizon).then_some(job))
    }

    /// Jobs kept and their bytes.
    pub fn usage(&self) -> Result<(u64, u64), CommitError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let jobs = r.open_table(JOBS).map_err(|e| self.err(e))?;
        let meta = r.open_table(META).map_err(|e| self.err(e))?;
        let bytes = meta
            .get("bytes")
            .map_err(|e| self.err(e))?
            .map_or(0, |g| g.value());
        Ok((jobs.len().map_err(|e| self.err(e))?, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::keys::NodeKey;
    use crate::commit::receipt::{JobRequest, Prover};
    use crate::model::Kernels;

    fn job(i: u8, ts: u64, n: usize) -> StoredJob {
        let p = Prover {
            key: NodeKey::generate(),
            weight_hash: [0; 32],
            kernels: Kernels::Quantized,
        };
        let steps: Vec<StepData> = (0..n)
            .map(|t| StepData::from_logits(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, t as f32], 1))
            .collect();
        let req = JobRequest {
            prompt: vec![1],
            max_tokens: n as u32,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: vec![],
        };
        let receipt = p
            .commit([i; 16], [0; 32], req, vec![1; n], &steps, ts)
            .unwrap();
        StoredJob { receipt, steps }
    }

    #[test]
    fn jobs_survive_reopening_and_expire_by_age_and_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steps.redb");
        let hour = 3_600_000;
        {
            let s = Store::open(&path, hour, 1 << 20).unwrap();
            s.put(&job(1, 1000, 10), 1000).unwrap();
            s.put(&job(2, 2000, 10), 2000).unwrap();
        }
        let s = Store::open(&path, hour, 1 << 20).unwrap();
        assert_eq!(s.get(&[1; 16], 2000).unwrap().unwrap(), {
            let mut j = s.get(&[1; 16], 2000).unwrap().unwrap();
            j.steps.truncate(10);
            j
        });
        assert!(s
            .get(&[1; 16], 2000)
            .unwrap()
            .unwrap()
            .receipt
            .signature_valid());
        assert!(s.get(&[9; 16], 2000).unwrap().is_none());
        // An hour later job 1 is past the window; job 2 (1 s younger) too once time moves.
        let later = 1000 + hour + 500;
        s.put(&job(3, later, 10), later).unwrap();
        assert!(s.get(&[1; 16], later).unwrap().is_none());
        assert!(s.get(&[2; 16], later).unwrap().is_some());
        // Past its window a job is not opened, evicted or not.
        assert!(s.get(&[2; 16], 2001 + hour).unwrap().is_none());
        // A byte budget of about two jobs keeps the two newest.
        let one = s.usage().unwrap().1 / 2;
        drop(s);
        let s = Store::open(&path, u64::MAX, one * 2 + one / 2).unwrap();
        s.put(&job(4, 5_000_000, 10), 5_000_000).unwrap();
        assert!(s.get(&[2; 16], 5_000_000).unwrap().is_none());
        assert!(
            s.get(&[3; 16], 5_000_000).unwrap().is_some()
                && s.get(&[4; 16], 5_000_000).unwrap().is_some()
        );
        let (n, bytes) = s.usage().unwrap();
        assert_eq!(n, 2);
        assert!(bytes <= one * 2 + one / 2);
        // A job larger than the whole budget is refused, and nothing is dropped for it.
        assert!(s.put(&job(5, 6_000_000, 2000), 6_000_000).is_err());
        assert_eq!(s.usage().unwrap().0, 2);
    }

    #[test]
    fn a_file_that_is_not_a_store_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, b"this is not a database file at all, not even close").unwrap();
        let e = Store::open(&path, 1, 1).err().unwrap().to_string();
        assert!(e.contains("junk") && e.contains("step store"), "{e}");
    }
}
