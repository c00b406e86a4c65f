//! A watch's embedded store (redb): what is watched, the detector's state, and every round,
//! each round committed with the state it leaves in one transaction, so a watch killed at any
//! point resumes from its last finished round.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::score::ScoreKind;
use crate::stats::detector::Detector;

/// "watch" → [`Watch`], "state" → [`State`] (JSON).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Round number → [`Round`] (JSON).
const ROUNDS: TableDefinition<u64, &[u8]> = TableDefinition::new("rounds");

/// Format of the records.
pub const FORMAT: u32 = 1;

/// What a store watches, fixed when it is made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Watch {
    /// Record format.
    pub format: u32,
    /// The challenges' run id.
    pub run_id: String,
    /// Commitment to the run key (the key itself lies beside the store, owner-only).
    pub key_commitment: String,
    /// The endpoint's base URL.
    pub url: String,
    /// The model asked of it.
    pub model: String,
    /// `completions` or `chat`.
    pub api: String,
    /// The reference.
    pub reference: Identity,
    /// How challenges are scored.
    pub score_kind: ScoreKind,
    /// Continuation length.
    pub k: usize,
    /// Cycles of challenges per round.
    pub cycles_per_round: usize,
    /// When the watch began (Unix seconds).
    pub created: u64,
}

/// Where a watch stands after its last finished round.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The next challenge's index.
    pub next_index: u64,
    /// Rounds finished.
    pub rounds: u64,
    /// The change detector.
    pub detector: Detector,
    /// The alert, once raised (it stands: a new watch needs a new store).
    pub alert: Option<Alert>,
}

/// An alert: the endpoint no longer serves the reference.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    /// Always "alert".
    pub event: String,
    /// The endpoint.
    pub url: String,
    /// The model asked of it.
    pub model: String,
    /// The round that raised it.
    pub round: u64,
    /// When (Unix seconds).
    pub at: u64,
    /// Challenges scored since the watch began.
    pub challenges: u64,
    /// log10 of the detector's statistic.
    pub log10_statistic: f64,
    /// log10 of the threshold (the average run length to a false alert, in cycles).
    pub log10_threshold: f64,
    /// What it means.
    pub message: String,
}

/// One challenge of a round.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoundScore {
    /// Challenge index.
    pub index: u64,
    /// Its family.
    pub family: String,
    /// Its score.
    pub score: f64,
    /// Why it was scored as it was, when unusual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The endpoint's request and raw response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<serde_json::Value>,
}

/// One round of a watch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Round {
    /// Round number (from 0).
    pub round: u64,
    /// When it began (Unix seconds).
    pub started: u64,
    /// How long it took.
    pub seconds: f64,
    /// Its challenges.
    pub scores: Vec<RoundScore>,
    /// Tokens the endpoint reported using.
    pub tokens: u64,
    /// log10 of the detector's statistic after it.
    pub log10_statistic: f64,
    /// Whether it raised the alert.
    pub alert: bool,
}

/// What can go wrong with a watch's store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed.
    #[error("{path}: the watch's store cannot be read or written; check the disk, or start a new watch with another --state folder")]
    Db {
        /// The store.
        path: String,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A record that does not decode.
    #[error(
        "{path}: damaged record {what} ({reason}); start a new watch with another --state folder"
    )]
    Record {
        /// The store.
        path: String,
        /// Which record.
        what: String,
        /// serde's message.
        reason: String,
    },
}

/// A watch's store.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Db {
            path: path.display().to_string(),
            source: Box::new(e.into()),
        })?;
        let s = Self {
            db,
            path: path.to_path_buf(),
        };
        let w = s.db.begin_write().map_err(|e| s.err(e))?;
        w.open_table(META).map_err(|e| s.err(e))?;
        w.open_table(ROUNDS).map_err(|e| s.err(e))?;
        w.commit().map_err(|e| s.err(e))?;
        Ok(s)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.display().to_string(),
            source: Box::new(e.into()),
        }
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Record {
            path: self.path.display().to_string(),
            what: what.into(),
            reason: e.to_string(),
        })
    }

    fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(META).map_err(|e| self.err(e))?;
        let Some(v) = t.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        self.decode(key, v.value()).map(Some)
    }

    /// What the store watches, if it watches anything yet.
    pub fn watch(&self) -> Result<Option<Watch>, StoreError> {
        self.meta("watch")
    }

    /// Where the watch stands.
    pub fn state(&self) -> Result<Option<State>, StoreError> {
        self.meta("state")
    }

    /// Begin a watch: what it watches and its first state, in one transaction.
    pub fn begin(&self, watch: &Watch, state: &State) -> Result<(), StoreError> {
        self.commit(None, watch_and_state(Some(watch), state))
    }

    /// A finished round and the state it leaves, in one transaction.
    pub fn finish_round(&self, round: &Round, state: &State) -> Result<(), StoreError> {
        self.commit(Some(round), watch_and_state(None, state))
    }

    fn commit(&self, round: Option<&Round>, meta: Vec<(&str, Vec<u8>)>) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = w.open_table(META).map_err(|e| self.err(e))?;
            for (k, v) in &meta {
                t.insert(*k, v.as_slice()).map_err(|e| self.err(e))?;
            }
            if let Some(r) = round {
                let bytes = serde_json::to_vec(r).expect("rounds serialize");
                let mut rounds = w.open_table(ROUNDS).map_err(|e| self.err(e))?;
                rounds
                    .insert(r.round, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        w.commit().map_err(|e| self.err(e))
    }

    /// Every round, in order.
    pub fn rounds(&self) -> Result<Vec<Round>, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(ROUNDS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push(self.decode(&format!("round {}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// Tokens the endpoint reported over the rounds begun at or after `since` (Unix seconds).
    pub fn tokens_since(&self, since: u64) -> Result<u64, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(ROUNDS).map_err(|e| self.err(e))?;
        let mut total = 0;
        for item in t.iter().map_err(|e| self.err(e))?.rev() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let round: Round = self.decode(&format!("round {}", k.value()), v.value())?;
            if round.started < since {
                break;
            }
            total += round.tokens;
        }
        Ok(total)
    }
}

fn watch_and_state(watch: Option<&Watch>, state: &State) -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    if let Some(w) = watch {
        v.push(("watch", serde_json::to_vec(w).expect("watches serialize")));
    }
    v.push((
        "state",
        serde_json::to_vec(state).expect("states serialize"),
    ));
    v
}
