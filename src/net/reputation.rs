//! A router's memory of providers (redb: one file, ACID, survives a restart or a kill).
//!
//! Per provider peer: jobs sent, answers whose receipt passed, audits passed and failed, faults
//! (no answer, a refusal, a receipt it could not vouch for) and, once it is caught cheating, a
//! ban with the evidence. Every failed check keeps its evidence ([`Evidence`]) under the peer.
//!
//! What bans: a check that fails on a receipt the provider signed, and that the router itself
//! witnessed (another model's weights, a replayed or foreign nonce, another request, a
//! malformed receipt, steps that do not re-execute). What does not: what an honest node can
//! suffer (a timeout, a refusal, a full queue, a clock off by minutes, an opening of a job it
//! no longer keeps) — those are faults, which only lower the provider's score.
//!
//! Choosing a provider ([`super::gateway`]): among those not banned, one never tried first,
//! then the highest score per job in flight, where the score is the Laplace estimate of a job
//! succeeding, `(passed + 1) / (passed + faults + 2)`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::message::{Evidence, Recheck};
use crate::verify::Rejection;

/// peer id → [`PeerRecord`] (CBOR).
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
/// (peer id, sequence) → [`Kept`] (CBOR).
const EVIDENCE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("evidence");

/// What the router knows of one provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Jobs sent.
    pub jobs: u64,
    /// Answers whose receipt passed every check made (audited or not).
    pub passed: u64,
    /// Audits (re-execution) passed.
    pub audits_passed: u64,
    /// Audits failed.
    pub audits_failed: u64,
    /// Faults: no answer, refusals, unprovable failures.
    pub faults: u64,
    /// Set once the provider is caught.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban: Option<Ban>,
    /// Evidence kept so far.
    pub evidence: u64,
}

impl PeerRecord {
    /// The chance a job of this provider succeeds, estimated with one success and one failure
    /// added (a new provider scores 1/2).
    pub fn score(&self) -> f64 {
        (self.passed as f64 + 1.0) / ((self.passed + self.faults) as f64 + 2.0)
    }
}

/// A ban.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ban {
    /// When (Unix ms).
    pub at_ms: u64,
    /// Why, in words.
    pub reason: String,
    /// The evidence's sequence number under the peer.
    pub evidence: u64,
    /// Who proved it: this router, or the router whose gossiped report this one re-checked.
    pub by: String,
}

/// A piece of evidence as kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// When (Unix ms).
    pub at_ms: u64,
    /// Who found it (this router, or a reporting router's peer id).
    pub by: String,
    /// The evidence.
    pub evidence: Evidence,
}

/// Whether a rejection proves a cheat (bans) or could befall an honest node (a fault).
pub fn proves_cheat(r: &Rejection) -> bool {
    !matches!(
        r,
        Rejection::Signature
            | Rejection::Node { .. }
            | Rejection::Stale { .. }
            | Rejection::NotOpened(_)
    )
}

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}; the reputation store may be damaged or open in another router (pass another --reputation file)")]
pub struct StoreError {
    path: String,
    what: String,
}

/// The store.
pub struct Reputation {
    db: Database,
    path: PathBuf,
}

impl Reputation {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError {
            path: path.display().to_string(),
            what: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| err(&e))?;
        let w = db.begin_write().map_err(|e| err(&e))?;
        w.open_table(PEERS).map_err(|e| err(&e))?;
        w.open_table(EVIDENCE).map_err(|e| err(&e))?;
        w.commit().map_err(|e| err(&e))?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.display().to_string(),
            what: e.to_string(),
        }
    }

    /// A provider's record (a fresh one when unknown).
    pub fn get(&self, peer: &str) -> Result<PeerRecord, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(PEERS).map_err(|e| self.err(e))?;
        match t.get(peer).map_err(|e| self.err(e))? {
            None => Ok(PeerRecord::default()),
            Some(v) => ciborium::from_reader(v.value())
                .map_err(|e| self.err(format!("a damaged record of {peer} ({e})"))),
        }
    }

    /// Every provider's record.
    pub fn all(&self) -> Result<BTreeMap<String, PeerRecord>, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(PEERS).map_err(|e| self.err(e))?;
        let mut out = BTreeMap::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let rec: PeerRecord = ciborium::from_reader(v.value())
                .map_err(|e| self.err(format!("a damaged record ({e})")))?;
            out.insert(k.value().to_string(), rec);
        }
        Ok(out)
    }

    /// The evidence kept against a provider.
    pub fn evidence(&self, peer: &str) -> Result<Vec<Kept>, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(EVIDENCE).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t
            .range((peer, 0)..=(peer, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (_, v) = row.map_err(|e| self.err(e))?;
            out.push(
                ciborium::from_reader(v.value())
                    .map_err(|e| self.err(format!("damaged evidence ({e})")))?,
            );
        }
        Ok(out)
    }

    /// Change a provider's record in one durable transaction; `f` may also return evidence to
    /// keep, under the sequence number `rec.evidence` held when `f` was called.
    pub fn update(
        &self,
        peer: &str,
        f: impl FnOnce(&mut PeerRecord) -> Option<Kept>,
    ) -> Result<PeerRecord, StoreError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        let rec = {
            let mut peers = w.open_table(PEERS).map_err(|e| self.err(e))?;
            let mut rec: PeerRecord = match peers.get(peer).map_err(|e| self.err(e))? {
                None => PeerRecord::default(),
                Some(v) => ciborium::from_reader(v.value())
                    .map_err(|e| self.err(format!("a damaged record of {peer} ({e})")))?,
            };
            if let Some(kept) = f(&mut rec) {
                let seq = rec.evidence;
                rec.evidence += 1;
                let mut bytes = Vec::new();
                ciborium::into_writer(&kept, &mut bytes).map_err(|e| self.err(e))?;
                w.open_table(EVIDENCE)
                    .map_err(|e| self.err(e))?
                    .insert((peer, seq), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut bytes = Vec::new();
            ciborium::into_writer(&rec, &mut bytes).map_err(|e| self.err(e))?;
            peers
                .insert(peer, bytes.as_slice())
                .map_err(|e| self.err(e))?;
            rec
        };
        w.commit().map_err(|e| self.err(e))?;
        Ok(rec)
    }

    /// Record a failed check of `peer` found by `by` (on a job of this router's, `job`, or on
    /// another router's report): a ban when it proves a cheat (the first ban stands), a fault
    /// otherwise; the evidence is kept either way. A failure counts as a failed audit when it
    /// came from re-execution (the evidence holds an opening).
    pub fn failed(
        &self,
        peer: &str,
        by: &str,
        evidence: Evidence,
        job: bool,
        now_ms: u64,
    ) -> Result<PeerRecord, StoreError> {
        let cheat = proves_cheat(&evidence.rejection);
        let audited = evidence.selection.is_some();
        self.update(peer, |rec| {
            if job {
                rec.jobs += 1;
                if audited {
                    rec.audits_failed += 1;
                }
            }
            if cheat {
                if rec.ban.is_none() {
                    rec.ban = Some(Ban {
                        at_ms: now_ms,
                        reason: evidence.rejection.to_string(),
                        evidence: rec.evidence,
                        by: by.to_string(),
                    });
                }
            } else {
                rec.faults += 1;
            }
            Some(Kept {
                at_ms: now_ms,
                by: by.to_string(),
                evidence,
            })
        })
    }

    /// Whether gossiped evidence of this kind may be shared at all.
    pub fn shareable(e: &Evidence) -> bool {
        e.recheck() != Recheck::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::keys::NodeKey;
    use crate::commit::receipt::Prover;
    use crate::commit::wire::Bytes;

    fn evidence(rejection: Rejection) -> Evidence {
        let receipt = Prover::example_receipt(NodeKey::generate(), [1; 32], 1_000);
        Evidence {
            claimed: Bytes([2; 32]),
            rejection,
            receipt,
            selection: None,
            opening: None,
            announcement: None,
        }
    }

    #[test]
    fn bans_and_evidence_survive_reopening_and_faults_do_not_ban() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rep.redb");
        {
            let rep = Reputation::open(&path).unwrap();
            rep.update("honest", |r| {
                r.jobs += 1;
                r.passed += 1;
                None
            })
            .unwrap();
            let r = rep
                .failed(
                    "slow",
                    "me",
                    evidence(Rejection::NotOpened("expired".into())),
                    true,
                    5,
                )
                .unwrap();
            assert!(r.ban.is_none(), "an unopened job is a fault, not a proof");
            assert_eq!((r.jobs, r.faults, r.audits_failed), (1, 1, 0));
            let wrong = Rejection::WeightHash {
                claimed: "02".into(),
                got: "01".into(),
            };
            let r = rep
                .failed("cheat", "me", evidence(wrong.clone()), false, 7)
                .unwrap();
            let ban = r.ban.expect("another model's receipt bans");
            assert_eq!((ban.at_ms, ban.evidence, ban.by.as_str()), (7, 0, "me"));
        }
        let rep = Reputation::open(&path).unwrap();
        let all = rep.all().unwrap();
        assert_eq!(all.len(), 3);
        assert!(all["cheat"].ban.is_some(), "the ban survives a restart");
        assert!(all["honest"].score() > all["slow"].score());
        let kept = rep.evidence("cheat").unwrap();
        assert_eq!(kept.len(), 1);
        assert!(matches!(
            kept[0].evidence.rejection,
            Rejection::WeightHash { .. }
        ));
        assert!(rep.evidence("honest").unwrap().is_empty());
        // A second proof does not move the first ban.
        let r = rep
            .failed(
                "cheat",
                "other",
                evidence(Rejection::Replay { nonce: "00".into() }),
                false,
                9,
            )
            .unwrap();
        assert_eq!(r.ban.unwrap().at_ms, 7);
        assert_eq!(r.evidence, 2);
    }

    #[test]
    fn a_damaged_store_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rep.redb");
        std::fs::write(&path, b"not a database at all, just bytes").unwrap();
        let e = Reputation::open(&path).err().expect("refused").to_string();
        assert!(e.contains("rep.redb"), "{e}");
    }
}
