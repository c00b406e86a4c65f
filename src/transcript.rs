//! Transcripts: the append-only record of a run, one JSON object per line (NDJSON).
//!
//! Line 1 is a [`Header`] (identities, mode, parameters, key commitment); then one [`Query`]
//! line per finished challenge; then, once decided, a [`Verdict`] line. Each line is written
//! whole, flushed and fsynced before the run goes on, so a killed run loses at most the
//! challenge it was working on, and `--resume` continues from the last complete line.
//! The transcript holds everything needed to recompute the decision from the scores, and
//! never the challenge key (only its commitment).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::model::Kernels;
use crate::score::{ChallengeScore, ScoreKind};
use crate::served::{Ladder, Served};
use crate::stats::{Decision, SequentialTest, Status, TestParams};

/// Transcript format version. Version 3: the betting test in fixed point
/// ([`crate::stats::fixed`]); version 2 added margins by score kind, the reference's ladder in
/// the header and what is served in the verdict. Transcripts of other versions are refused
/// (their test differs).
pub const VERSION: u32 = 3;

/// The first line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Header {
    /// Always "header".
    pub record: String,
    /// Format version.
    pub version: u32,
    /// Run id (also the PRF input).
    pub run_id: String,
    /// Mode name.
    pub mode: String,
    /// Test parameters.
    pub params: TestParams,
    /// Continuation length K.
    pub k: usize,
    /// Kernels used.
    pub kernels: Kernels,
    /// How challenges are scored.
    pub score_kind: ScoreKind,
    /// SHA-256 commitment to the challenge key.
    pub key_commitment: String,
    /// The start of the score commitment's chain, `Poseidon(salt, TAG)` with the salt from
    /// the run key ([`crate::zk`]): written before the first score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_chain: Option<String>,
    /// The reference model.
    pub reference: Identity,
    /// The candidate: a model file (diff) or an endpoint (audit).
    pub candidate: Candidate,
    /// The reference's quantization ladder, from its calibration, when it has one: the
    /// verdict places the candidate on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ladder: Option<Ladder>,
    /// pot's version.
    pub pot_version: String,
    /// Unix time the run started.
    pub started_unix: u64,
}

/// What was compared with the reference.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Candidate {
    /// A model file.
    Model(Identity),
    /// An API endpoint.
    Endpoint(EndpointInfo),
}

/// An audited endpoint, as the transcript records it (never its API key).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EndpointInfo {
    /// Base URL.
    pub url: String,
    /// Model name sent.
    pub model: String,
    /// `completions` or `chat`.
    pub api: String,
    /// How challenges are put to it: `echo`, `echo-text`, `logprobs` or `text`.
    pub method: String,
    /// Alternatives asked per token.
    pub top_logprobs: usize,
    /// How log-probabilities are asked for (`logprobs: N`, or `logprobs: true, top_logprobs:
    /// N`); empty for text, and in transcripts from before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub logprobs_field: String,
    /// Whether requests carry llama.cpp's sampler fields at neutral values (`repeat_penalty`
    /// and `repetition_penalty` 1, `min_p` 0, `top_k` 0 or the one asked for; off where the
    /// endpoint refused them).
    #[serde(default)]
    pub penalty_fields: bool,
    /// The shapes tried before this one, each with why it did not do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<String>,
    /// What the endpoint said about itself (`/v1/models`), when it answered.
    pub models: Option<serde_json::Value>,
    /// The sampling asked for, when not greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<crate::score::sampled::Sampling>,
}

/// One finished challenge.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Query {
    /// Always "query".
    pub record: String,
    /// Challenge index.
    pub index: u64,
    /// Family.
    pub family: String,
    /// Template number.
    pub template: usize,
    /// Prompt text.
    pub prompt: String,
    /// Reference continuation ids.
    pub continuation_ids: Vec<u32>,
    /// Reference continuation text.
    pub continuation_text: String,
    /// The score and its detail.
    #[serde(flatten)]
    pub score: ChallengeScore,
    /// Mean clipped score so far.
    pub mean: f64,
    /// Confidence sequence lower end so far.
    pub lower: f64,
    /// Upper end.
    pub upper: f64,
    /// Seconds this challenge took.
    pub seconds: f64,
    /// Audits: the request sent and the endpoint's raw response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<serde_json::Value>,
}

/// The last line, once decided.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// Always "verdict".
    pub record: String,
    /// Decision.
    pub decision: Decision,
    /// Challenges used.
    pub queries: usize,
    /// Mean clipped score.
    pub mean: f64,
    /// Lower end.
    pub lower: f64,
    /// Upper end.
    pub upper: f64,
    /// What is served: the divergence estimate, placed on the ladder of the header.
    pub served: Served,
    /// Wall time over all sessions of the run.
    pub elapsed_s: f64,
    /// The Poseidon commitment to the scores on the test's grid ([`crate::zk`]), which a
    /// proof of the verdict is checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_commitment: Option<String>,
}

/// Transcript I/O errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranscriptError {
    /// Cannot create, read or write.
    #[error("{path}: {reason}")]
    Io {
        /// File.
        path: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A file operation that failed, its OS error kept.
    #[error(transparent)]
    File(#[from] crate::FileError),
    /// A resumed run whose transcript does not match this invocation.
    #[error("{path}: cannot resume: {what}; resume with the original models or endpoint, mode and flags, or start a new run")]
    ResumeMismatch {
        /// Transcript.
        path: String,
        /// What differs.
        what: String,
    },
    /// A line that does not parse.
    #[error("{path}:{line}: not a pot transcript line ({source}); the file is damaged or not a transcript")]
    Parse {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
        /// Why.
        #[source]
        source: LineError,
    },
}

/// Why a transcript line is not a record of this pot's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// Not JSON, or JSON of another shape.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// JSON, but not the record the line must hold.
    #[error("{0}")]
    Record(&'static str),
    /// A transcript of another format version.
    #[error("transcript format {found} (this pot reads {VERSION}: its test and records differ); use the pot that wrote it (pot_version {pot_version})")]
    Version {
        /// The file's version.
        found: u32,
        /// The pot that wrote it.
        pot_version: String,
    },
}

/// An open transcript being appended to.
pub struct Writer {
    file: File,
    path: PathBuf,
}

fn file_err(
    path: &Path,
    action: &'static str,
    fix: &'static str,
    e: std::io::Error,
) -> TranscriptError {
    TranscriptError::File(crate::FileError::new(path, action, fix, e))
}

const WRITABLE: &str = "; pass a writable --transcripts folder";

fn io(path: &Path, reason: impl std::fmt::Display) -> TranscriptError {
    TranscriptError::Io {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl Writer {
    /// Create a new transcript holding `header`; refuses to overwrite an existing one.
    pub fn create(path: &Path, header: &Header) -> Result<Self, TranscriptError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| file_err(dir, "cannot create the folder", WRITABLE, e))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => io(path, "a transcript of this run id exists already; continue it with --resume, or pick another --run-id"),
                _ => file_err(path, "cannot create the transcript", WRITABLE, e),
            })?;
        let mut w = Self {
            file,
            path: path.to_path_buf(),
        };
        if let Err(e) = w.append(header) {
            // Leave nothing half-written behind.
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(w)
    }

    /// Reopen an existing transcript for appending, cutting off a torn last line.
    pub fn reopen(path: &Path, complete_len: u64) -> Result<Self, TranscriptError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| file_err(path, "cannot open for appending", "", e))?;
        file.set_len(complete_len)
            .map_err(|e| file_err(path, "cannot cut off the torn last line", "", e))?;
        let mut w = Self {
            file,
            path: path.to_path_buf(),
        };
        use std::io::Seek;
        w.file
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| file_err(path, "cannot seek to the end", "", e))?;
        Ok(w)
    }

    /// Append one record as a line, flushed and fsynced.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), TranscriptError> {
        let mut line = serde_json::to_string(record).map_err(|e| io(&self.path, e))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| file_err(&self.path, "write failed", "", e))
    }
}

/// A transcript read back.
pub struct Loaded {
    /// Header.
    pub header: Header,
    /// Finished challenges in order.
    pub queries: Vec<Query>,
    /// The verdict, when the run had finished.
    pub verdict: Option<Verdict>,
    /// Byte length of the complete lines (a torn last line lies beyond).
    pub complete_len: u64,
}

/// A transcript's records, each with its 1-based line number.
pub struct Records {
    /// Line 1.
    pub header: Header,
    /// Finished challenges in order, with their lines.
    pub queries: Vec<(usize, Query)>,
    /// The verdict and its line, when the run had finished.
    pub verdict: Option<(usize, Verdict)>,
}

/// Parse the complete lines of a transcript. `Err` gives the 1-based line that is not a
/// transcript record (0 when there is no line at all) and why.
pub fn parse(text: &str) -> Result<Records, (usize, LineError)> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let json = |n: usize| move |e: serde_json::Error| (n, LineError::Json(e));
    let header: Header = match lines.next() {
        Some((n, l)) => serde_json::from_str(l).map_err(json(n))?,
        None => return Err((0, LineError::Record("no header line"))),
    };
    if header.record != "header" {
        return Err((1, LineError::Record("not a header record")));
    }
    if header.version != VERSION {
        return Err((
            1,
            LineError::Version {
                found: header.version,
                pot_version: header.pot_version,
            },
        ));
    }
    let (mut queries, mut verdict) = (Vec::new(), None);
    for (n, l) in lines {
        if verdict.is_some() {
            return Err((n, LineError::Record("a line after the verdict")));
        }
        let v: serde_json::Value = serde_json::from_str(l).map_err(json(n))?;
        match v.get("record").and_then(|r| r.as_str()) {
            Some("query") => queries.push((n, serde_json::from_value(v).map_err(json(n))?)),
            Some("verdict") => verdict = Some((n, serde_json::from_value(v).map_err(json(n))?)),
            _ => return Err((n, LineError::Record("unknown record type"))),
        }
    }
    Ok(Records {
        header,
        queries,
        verdict,
    })
}

/// Read a transcript; a torn last line (a killed write) is ignored.
pub fn read(path: &Path) -> Result<Loaded, TranscriptError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        file_err(
            path,
            "cannot read the transcript",
            "; check the run id and --transcripts folder",
            e,
        )
    })?;
    let complete_len = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let r = parse(&text[..complete_len]).map_err(|(line, reason)| match line {
        0 => io(
            path,
            "the transcript has no complete header line; delete it and start again",
        ),
        _ => TranscriptError::Parse {
            path: path.display().to_string(),
            line,
            source: reason,
        },
    })?;
    Ok(Loaded {
        header: r.header,
        queries: r.queries.into_iter().map(|(_, q)| q).collect(),
        verdict: r.verdict.map(|(_, v)| v),
        complete_len: complete_len as u64,
    })
}

impl Verdict {
    /// The verdict line of a run at this status.
    pub fn new(
        decision: Decision,
        st: &Status,
        served: Served,
        elapsed_s: f64,
        score_commitment: Option<String>,
    ) -> Self {
        Self {
            score_commitment,
            record: "verdict".into(),
            decision,
            queries: st.n,
            mean: st.mean,
            lower: st.lower,
            upper: st.upper,
            served,
            elapsed_s,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a resumed run stands.
pub enum Resumed {
    /// It has its verdict (written now if the run was killed just before): wall time so far.
    Finished(f64),
    /// It goes on: the transcript to append to, and the wall time of the earlier sessions.
    Continue(Writer, f64),
}

/// Continue the run recorded at `path`: check that its header matches this invocation's
/// (`header`: key commitment, reference weights, parameters, run id; `same_candidate`: the
/// candidate), replay its scores into `test`, and say where it stands. The run keeps the
/// ladder its header recorded (`header.ladder` is set to it), whatever calibration exists now.
pub fn resume(
    path: &Path,
    key: &crate::challenge::ChallengeKey,
    header: &mut Header,
    same_candidate: impl Fn(&Candidate) -> bool,
    test: &mut SequentialTest,
) -> Result<Resumed, TranscriptError> {
    let loaded = read(path)?;
    let h = &loaded.header;
    let mismatch = |what: &str| TranscriptError::ResumeMismatch {
        path: path.display().to_string(),
        what: what.to_string(),
    };
    if h.key_commitment != header.key_commitment {
        return Err(mismatch(
            "the key does not match the transcript's key commitment",
        ));
    }
    if h.reference.weight_hash != header.reference.weight_hash || !same_candidate(&h.candidate) {
        return Err(mismatch(
            "the reference's or the candidate's identity differs from the transcript's",
        ));
    }
    if h.params != header.params
        || h.k != header.k
        || h.kernels != header.kernels
        || h.run_id != header.run_id
        || h.score_kind != header.score_kind
    {
        return Err(mismatch(&format!(
            "parameters differ (transcript: mode {}, K {}, {:?}; now: mode {}, K {}, {:?})",
            h.mode, h.k, h.params, header.mode, header.k, header.params
        )));
    }
    header.ladder = h.ladder.clone();
    let mut prior_elapsed = 0.0;
    for q in &loaded.queries {
        test.push_score(&q.score);
        prior_elapsed += q.seconds;
    }
    if let Some(v) = loaded.verdict {
        return Ok(Resumed::Finished(v.elapsed_s));
    }
    let mut w = Writer::reopen(path, loaded.complete_len)?;
    if let Some(d) = test.decision() {
        // Killed between the last query line and the verdict line.
        let served = Served::of(test, h.ladder.as_ref());
        let commitment = Some(crate::zk::commit_scores(key, test));
        w.append(&Verdict::new(
            d,
            &test.status(),
            served,
            prior_elapsed,
            commitment,
        ))?;
        return Ok(Resumed::Finished(prior_elapsed));
    }
    Ok(Resumed::Continue(w, prior_elapsed))
}
