//! Evidence bundles: a finished run, signed, in one file that anyone can re-check.
//!
//! A bundle is a gzip-compressed tar archive (`.tar.gz`) of exactly three files:
//!
//! * `statement.dsse.json`: an [in-toto Statement v1] in a [DSSE] envelope, signed with the
//!   auditor's Ed25519 key (`pot keygen --auditor`). Its subjects are the models (file SHA-256
//!   and pot's canonical weight hash); its predicate ([`Predicate`], type [`PREDICATE_TYPE`])
//!   holds the decision, mode, parameters, queries, mean and bounds, what is served (the
//!   divergence estimate and its place on the reference's quantization ladder), timings,
//!   environment, pot's version and git commit, the challenge key's commitment, and the transcript's SHA-256 and
//!   Merkle root (RFC 9162 over its lines, [`crate::commit::merkle`]).
//! * `transcript.ndjson`: the run's transcript, byte for byte.
//! * `challenge-key.txt`: the run's challenge key, revealed now that the run is final. It is
//!   the run key ([`ChallengeKey::for_run`]), so it reveals no other run's prompts.
//!
//! [`verify`] checks everything a third party can check without the models: the archive is
//! the canonical packing of its contents (so no byte of the file can change unnoticed), the
//! signature, every hash, that the revealed key opens the commitment, that every challenge
//! re-derives from the key and run id, and that the scores, the confidence bounds after each
//! challenge, the decision and what is served (against the ladder the transcript header
//! records) all recompute from the transcript's per-position detail. It
//! reports each check and, for a failure, where it fails.
//!
//! What it cannot check without the models: that the per-position numbers are what the models
//! compute. A dishonest auditor could sign invented numbers; re-running the transcript's
//! challenges on the models is the check for that.
//!
//! This room never reads a secret other than the auditor key it is handed, and never writes
//! a bundle partly: it writes a temporary file and renames it.
//!
//! [in-toto Statement v1]: https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md
//! [DSSE]: https://github.com/secure-systems-lab/dsse/blob/master/protocol.md

use std::io::{Read, Write};
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::challenge::ChallengeKey;
use crate::commit::keys::{AuditorKey, NodePublic};
use crate::commit::merkle;
use crate::identity::Identity;
use crate::model::Kernels;
use crate::score::ScoreKind;
use crate::served::Served;
use crate::stats::{Decision, TestParams};
use crate::transcript::{Candidate, Header, Records};

mod check;
pub use check::verify_bytes;

/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// pot's predicate type.
pub const PREDICATE_TYPE: &str = "https://pot.dev/attestation/verdict/v1";
/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The statement entry.
pub const STATEMENT_ENTRY: &str = "statement.dsse.json";
/// The transcript entry.
pub const TRANSCRIPT_ENTRY: &str = "transcript.ndjson";
/// The revealed key entry.
pub const KEY_ENTRY: &str = "challenge-key.txt";
/// The optional entry of a Halo2 proof of the verdict (`pot prove`, [`crate::zk`]).
pub const PROOF_ENTRY: &str = "verdict.proof";
/// The in-toto digest name of pot's canonical weight hash (the file's SHA-256 is `sha256`).
pub const WEIGHTS_DIGEST: &str = "pot-weights-sha256";
/// Largest bundle content read back (a bomb guard): 256 MiB decompressed.
pub const MAX_BYTES: u64 = 256 << 20;

/// What can go wrong making or reading a bundle (a bundle that reads but fails a check is a
/// [`Report`], not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// A file that cannot be read or written.
    #[error(transparent)]
    File(#[from] crate::FileError),
    /// A bundle to write whose path exists already.
    #[error("{path}: exists already; pick another --bundle path or remove it")]
    Exists {
        /// File.
        path: String,
    },
    /// A file too large to be a bundle.
    #[error("{path}: larger than {MAX_BYTES} bytes: not a pot bundle")]
    TooLarge {
        /// File.
        path: String,
    },
    /// A bundle whose verdict cannot be proven.
    #[error("{path}: cannot prove its verdict: {reason}")]
    Prove {
        /// File.
        path: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A transcript that cannot be bundled.
    #[error("{path}: {reason}")]
    Transcript {
        /// File.
        path: String,
        /// Why, and what to do.
        reason: String,
    },
}

/// A model named by the statement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Subject {
    /// `reference:FILE` or `candidate:FILE`.
    pub name: String,
    /// `sha256` (the file) and [`WEIGHTS_DIGEST`] (pot's canonical weight hash).
    pub digest: std::collections::BTreeMap<String, String>,
}

/// The in-toto statement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Statement {
    /// [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub type_: String,
    /// The models.
    pub subject: Vec<Subject>,
    /// [`PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The verdict and how it was reached.
    pub predicate: Predicate,
}

/// pot's predicate: the verdict, how it was reached, and what it rests on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Predicate {
    /// `diff` or `audit`.
    pub command: String,
    /// The verdict.
    pub decision: Decision,
    /// Mode name.
    pub mode: String,
    /// Run id (a PRF input).
    pub run_id: String,
    /// Test parameters.
    pub params: TestParams,
    /// Continuation length.
    pub k: usize,
    /// Kernels.
    pub kernels: Kernels,
    /// How challenges were scored.
    pub score_kind: ScoreKind,
    /// Challenges used.
    pub queries: usize,
    /// Mean clipped score.
    pub mean: f64,
    /// Confidence sequence lower end.
    pub lower: f64,
    /// Upper end.
    pub upper: f64,
    /// What is served: the divergence estimate and, when the reference had a calibration, the
    /// ladder rungs it is consistent with and those it excludes (recomputed by verification
    /// from the transcript header's ladder and the scores).
    pub served: Served,
    /// The Poseidon commitment to the scores on the test's grid, under a salt from the run
    /// key ([`crate::zk`]): what a proof of the verdict (`pot prove`) is checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_commitment: Option<String>,
    /// The reference model.
    pub reference: Identity,
    /// The candidate model or endpoint.
    pub candidate: Candidate,
    /// The challenge key: its commitment, and where the bundle reveals it.
    pub challenge_key: KeyInfo,
    /// The transcript: where, its digests and size.
    pub transcript: TranscriptInfo,
    /// When.
    pub timings: Timings,
    /// Where.
    pub environment: Environment,
    /// pot's version and the git commit it was built from.
    pub pot: Tool,
}

impl Predicate {
    /// The public statement a proof of this verdict proves: its parameters, verdict, queries
    /// and bounds, against the score commitment.
    pub fn proof_statement(&self, commitment: halo2_proofs::pasta::Fp) -> crate::zk::Statement {
        crate::zk::Statement {
            params: self.params,
            decision: self.decision,
            queries: self.queries,
            lower: self.lower,
            upper: self.upper,
            commitment,
        }
    }
}

/// The challenge key in a bundle.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    /// SHA-256 commitment to the run key, as the transcript header records it.
    pub commitment: String,
    /// The entry that reveals it.
    pub revealed: String,
}

/// The transcript in a bundle.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TranscriptInfo {
    /// Entry name.
    pub entry: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// Its lines.
    pub lines: usize,
    /// RFC 9162 Merkle root over its lines (without their newlines).
    pub merkle_root: String,
}

/// When the run happened.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    /// Unix time the run started.
    pub started_unix: u64,
    /// Unix time the bundle was made.
    pub bundled_unix: u64,
    /// Wall time of the run (all sessions).
    pub elapsed_s: f64,
    /// Sum of the per-challenge times.
    pub challenge_seconds: f64,
}

/// Where the run happened (as the auditor's machine reports it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Engine threads ([`crate::model::threads`]).
    pub threads: usize,
}

/// The tool.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// Crate version.
    pub version: String,
    /// Git commit pot was built from ("unknown" outside a checkout).
    pub git_commit: String,
}

/// A DSSE signature.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signer's Ed25519 public key, hex.
    pub keyid: String,
    /// The signature over the PAE, base64.
    pub sig: String,
}

/// A DSSE envelope.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The payload, base64.
    pub payload: String,
    /// [`PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Signatures.
    pub signatures: Vec<Signature>,
}

/// DSSE's pre-authentication encoding: what is signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

impl Envelope {
    /// An envelope of `statement`, signed with `key`.
    pub fn sign(statement: &Statement, key: &AuditorKey) -> Self {
        let payload = serde_json::to_vec(statement).expect("a statement serializes");
        let sig = key.sign(&pae(PAYLOAD_TYPE, &payload));
        Self {
            payload: B64.encode(&payload),
            payload_type: PAYLOAD_TYPE.into(),
            signatures: vec![Signature {
                keyid: hex::encode(key.public().to_bytes()),
                sig: B64.encode(sig),
            }],
        }
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The entries of a bundle: three, and a proof once `pot prove` has added one. A *public*
/// bundle (`pot prove --public`) holds only the statement and the proof: the transcript and
/// the key stay with the auditor, and are empty here.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    /// `statement.dsse.json`.
    pub envelope: Vec<u8>,
    /// `transcript.ndjson`.
    pub transcript: Vec<u8>,
    /// `challenge-key.txt`.
    pub key: Vec<u8>,
    /// `verdict.proof`: a Halo2 proof of the verdict from the committed scores.
    pub proof: Option<Vec<u8>>,
}

impl Bundle {
    /// Whether this is a public bundle: a statement and a proof, the transcript withheld.
    pub fn is_public(&self) -> bool {
        self.proof.is_some() && self.transcript.is_empty() && self.key.is_empty()
    }

    fn entries(&self) -> Vec<(&'static str, &[u8])> {
        let mut v = vec![(STATEMENT_ENTRY, &self.envelope[..])];
        if !self.is_public() {
            v.push((TRANSCRIPT_ENTRY, &self.transcript[..]));
            v.push((KEY_ENTRY, &self.key[..]));
        }
        if let Some(p) = &self.proof {
            v.push((PROOF_ENTRY, &p[..]));
        }
        v
    }

    /// The canonical archive: ustar entries in a fixed order, mode 0644, owner 0, time 0;
    /// gzip at level 9 with no name and time 0. The same contents always give the same bytes.
    pub fn pack(&self) -> Vec<u8> {
        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        for (name, data) in self.entries() {
            let mut h = tar::Header::new_ustar();
            h.set_path(name).expect("short ASCII names");
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            tar.append(&h, data).expect("writing to memory");
        }
        let gz = tar.into_inner().expect("writing to memory");
        gz.finish().expect("writing to memory")
    }

    /// Read a bundle's entries; `Err` says why the bytes are not a bundle.
    pub fn unpack(bytes: &[u8]) -> Result<Self, String> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(|e| format!("not a gzip file, or a damaged one ({e})"))?;
        if raw.len() as u64 > MAX_BYTES {
            return Err(format!("it unpacks to more than {MAX_BYTES} bytes"));
        }
        let mut ar = tar::Archive::new(raw.as_slice());
        let (mut envelope, mut transcript, mut key, mut proof) = (None, None, None, None);
        let entries = ar
            .entries()
            .map_err(|e| format!("not a tar archive ({e})"))?;
        for e in entries {
            let mut e = e.map_err(|e| format!("a damaged tar entry ({e})"))?;
            if e.header().entry_type() != tar::EntryType::Regular {
                return Err("an entry that is not a plain file".into());
            }
            let name = e
                .path()
                .map_err(|e| format!("an entry with a bad name ({e})"))?
                .to_string_lossy()
                .into_owned();
            let slot = match name.as_str() {
                STATEMENT_ENTRY => &mut envelope,
                TRANSCRIPT_ENTRY => &mut transcript,
                KEY_ENTRY => &mut key,
                PROOF_ENTRY => &mut proof,
                other => return Err(format!("an unexpected entry {other:?}")),
            };
            if slot.is_some() {
                return Err(format!("the entry {name} twice"));
            }
            let mut data = Vec::new();
            e.read_to_end(&mut data)
                .map_err(|e| format!("entry {name} is damaged ({e})"))?;
            *slot = Some(data);
        }
        let missing = |n: &str| format!("no {n} entry");
        let envelope = envelope.ok_or_else(|| missing(STATEMENT_ENTRY))?;
        if proof.is_some() && transcript.is_none() && key.is_none() {
            return Ok(Self {
                envelope,
                transcript: Vec::new(),
                key: Vec::new(),
                proof,
            });
        }
        Ok(Self {
            envelope,
            transcript: transcript.ok_or_else(|| missing(TRANSCRIPT_ENTRY))?,
            key: key.ok_or_else(|| missing(KEY_ENTRY))?,
            proof,
        })
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The lines of a transcript, without their newlines (the Merkle tree's leaves).
fn lines(transcript: &[u8]) -> Vec<&[u8]> {
    let body = transcript.strip_suffix(b"\n").unwrap_or(transcript);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|b| *b == b'\n').collect()
}

fn subject(role: &str, id: &Identity) -> Subject {
    let file = Path::new(&id.path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| id.path.clone());
    Subject {
        name: format!("{role}:{file}"),
        digest: [
            ("sha256".to_string(), id.file_sha256.clone()),
            (WEIGHTS_DIGEST.to_string(), id.weight_hash.clone()),
        ]
        .into_iter()
        .collect(),
    }
}

fn subjects(header: &Header) -> Vec<Subject> {
    let mut v = vec![subject("reference", &header.reference)];
    if let Candidate::Model(c) = &header.candidate {
        v.push(subject("candidate", c));
    }
    v
}

/// Parse a bundled transcript: whole lines only; `Err` names the line that does not parse.
fn parse(transcript: &[u8]) -> Result<Records, String> {
    if !transcript.ends_with(b"\n") {
        return Err("the transcript's last line is torn (no newline)".into());
    }
    let text = std::str::from_utf8(transcript)
        .map_err(|e| format!("the transcript is not UTF-8 ({e})"))?;
    crate::transcript::parse(text).map_err(|(line, reason)| match line {
        0 => "the transcript is empty".to_string(),
        n => format!("line {n}: {reason}"),
    })
}

/// What [`create`] made.
#[derive(Clone, Debug, Serialize)]
pub struct Created {
    /// The bundle file.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// The signer's public key, hex.
    pub signer: String,
    /// The decision it attests.
    pub decision: Decision,
    /// The transcript's Merkle root.
    pub merkle_root: String,
    /// The proof of the verdict, when one was added (`--prove`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proved>,
}

/// Bundle the finished run of `transcript_path`, revealing its run key and signing with
/// `auditor`, into `out` (which must not exist). The run must have its verdict. `key` is
/// either the run key itself or the key file's key it was derived from
/// ([`ChallengeKey::for_run`]); only the run key goes into the bundle.
pub fn create(
    transcript_path: &Path,
    key: &ChallengeKey,
    auditor: &AuditorKey,
    out: &Path,
) -> Result<Created, EvidenceError> {
    let tp = transcript_path.display().to_string();
    let terr = |reason: String| EvidenceError::Transcript {
        path: tp.clone(),
        reason,
    };
    let transcript = std::fs::read(transcript_path)
        .map_err(|e| crate::FileError::new(transcript_path, "cannot read the transcript", "", e))?;
    // A killed write leaves a torn last line: bundle the complete lines only.
    let complete = transcript
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let transcript = transcript[..complete].to_vec();
    let p =
        parse(&transcript).map_err(|e| terr(format!("not a transcript pot can bundle: {e}")))?;
    let Some((_, verdict)) = p.verdict else {
        return Err(terr(
            "the run has no verdict yet; finish it with --resume RUN, then bundle it".into(),
        ));
    };
    let h = &p.header;
    let derived = key.for_run(&h.run_id);
    let run_key = if key.commitment() == h.key_commitment {
        key
    } else if derived.commitment() == h.key_commitment {
        &derived
    } else {
        return Err(terr(
            "the challenge key does not open the transcript's key commitment; pass the run's own key (--key-file, or transcripts/RUN.key)".into(),
        ));
    };
    let leaves = lines(&transcript);
    let tree = merkle::Tree::new(&leaves);
    let threads = crate::model::threads();
    let statement = Statement {
        type_: STATEMENT_TYPE.into(),
        subject: subjects(h),
        predicate_type: PREDICATE_TYPE.into(),
        predicate: Predicate {
            command: match h.candidate {
                Candidate::Model(_) => "diff",
                Candidate::Endpoint(_) => "audit",
            }
            .into(),
            decision: verdict.decision,
            mode: h.mode.clone(),
            run_id: h.run_id.clone(),
            params: h.params,
            k: h.k,
            kernels: h.kernels,
            score_kind: h.score_kind,
            queries: verdict.queries,
            mean: verdict.mean,
            lower: verdict.lower,
            upper: verdict.upper,
            served: verdict.served.clone(),
            score_commitment: verdict.score_commitment.clone(),
            reference: h.reference.clone(),
            candidate: h.candidate.clone(),
            challenge_key: KeyInfo {
                commitment: h.key_commitment.clone(),
                revealed: KEY_ENTRY.into(),
            },
            transcript: TranscriptInfo {
                entry: TRANSCRIPT_ENTRY.into(),
                sha256: sha256_hex(&transcript),
                bytes: transcript.len() as u64,
                lines: leaves.len(),
                merkle_root: hex::encode(tree.root()),
            },
            timings: Timings {
                started_unix: h.started_unix,
                bundled_unix: crate::transcript::unix_now(),
                elapsed_s: verdict.elapsed_s,
                challenge_seconds: p.queries.iter().map(|(_, q)| q.seconds).sum(),
            },
            environment: Environment {
                os: std::env::consts::OS.into(),
                arch: std::env::consts::ARCH.into(),
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                threads,
            },
            pot: Tool {
                version: env!("CARGO_PKG_VERSION").into(),
                git_commit: env!("POT_GIT_COMMIT").into(),
            },
        },
    };
    let envelope = Envelope::sign(&statement, auditor);
    let bundle = Bundle {
        envelope: serde_json::to_vec_pretty(&envelope).expect("an envelope serializes"),
        transcript,
        key: format!("{}\n", run_key.to_hex()).into_bytes(),
        proof: None,
    };
    let bytes = bundle.pack();
    write_new(out, &bytes)?;
    Ok(Created {
        path: out.display().to_string(),
        bytes: bytes.len() as u64,
        signer: hex::encode(auditor.public().to_bytes()),
        decision: verdict.decision,
        merkle_root: statement.predicate.transcript.merkle_root,
        proof: None,
    })
}

/// What `pot prove` made.
#[derive(Clone, Debug, Serialize)]
pub struct Proved {
    /// The bundle written.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// The proof's size.
    pub proof_bytes: usize,
    /// The proven verdict.
    pub decision: Decision,
    /// Queries to it.
    pub queries: usize,
    /// Circuit size: `2^k` rows.
    pub k: u32,
    /// Seconds to prove (parameters, keys and proof).
    pub prove_s: f64,
    /// Seconds to verify it once made.
    pub verify_s: f64,
}

/// Add a Halo2 proof of the verdict ([`crate::zk`]) to the bundle at `path`, writing the
/// bundle with its proof to `out` (`out` may be `path`: it is replaced whole, never partly).
/// The bundle must verify first, and record a score commitment; the proof is checked before
/// it is written.
pub fn prove(path: &Path, out: &Path) -> Result<Proved, EvidenceError> {
    prove_to(path, out, false)
}

/// [`prove`], writing to `out` either the whole bundle with its proof, or (`public`) a
/// public bundle of the signed statement and the proof only, which reveals neither the
/// scores, nor the prompts, nor the key.
pub fn prove_to(path: &Path, out: &Path, public: bool) -> Result<Proved, EvidenceError> {
    let fail = |reason: String| EvidenceError::Prove {
        path: path.display().to_string(),
        reason,
    };
    let read_err = |e| crate::FileError::new(path, "cannot read the bundle", "", e);
    if std::fs::metadata(path).map_err(read_err)?.len() > MAX_BYTES {
        return Err(EvidenceError::TooLarge {
            path: path.display().to_string(),
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    let report = verify_bytes(&bytes, None);
    if let Some(c) = report.first_failure() {
        return Err(fail(format!(
            "the bundle does not verify ({}: {}); only a valid bundle is proven",
            c.name, c.detail
        )));
    }
    let mut bundle = Bundle::unpack(&bytes).map_err(fail)?;
    let env: Envelope =
        serde_json::from_slice(&bundle.envelope).map_err(|e| fail(e.to_string()))?;
    let payload = B64.decode(&env.payload).map_err(|e| fail(e.to_string()))?;
    let st: Statement = serde_json::from_slice(&payload).map_err(|e| fail(e.to_string()))?;
    let pr = &st.predicate;
    let Some(commitment) = pr.score_commitment.as_deref().and_then(crate::zk::from_hex) else {
        return Err(fail(
            "its statement records no score commitment (a bundle of a pot before 0.1's transcript format 3); rerun the audit".into(),
        ));
    };
    if pr.score_kind == ScoreKind::SampledText {
        return Err(fail(
            "the verdict of a sampled-text run rests on the uniformity e-process, which the circuit does not compute; only betting-test verdicts are proven".into(),
        ));
    }
    let text = std::str::from_utf8(&bundle.transcript).map_err(|e| fail(e.to_string()))?;
    let records = crate::transcript::parse(text)
        .map_err(|(l, e)| fail(format!("transcript line {l}: {e}")))?;
    let key = std::str::from_utf8(&bundle.key)
        .map_err(|e| e.to_string())
        .and_then(|t| ChallengeKey::from_hex(t, KEY_ENTRY).map_err(|e| e.to_string()))
        .map_err(fail)?;
    let clip = records.header.params.clip;
    let qs: Vec<u64> = records
        .queries
        .iter()
        .map(|(_, q)| crate::stats::fixed::quantize(q.score.score, clip))
        .collect();
    let statement = pr.proof_statement(commitment);
    let witness = crate::zk::Witness {
        salt: crate::zk::salt_of(&key),
        qs,
    };
    let start = std::time::Instant::now();
    let proof = crate::zk::prove(&statement, &witness).map_err(|e| {
        fail(match e {
            crate::zk::ZkError::Witness(w) => format!(
                "{w}: the betting test alone does not give the recorded verdict (a text run whose DIFFERENT also waited on the sampled-fit e-process)"
            ),
            other => other.to_string(),
        })
    })?;
    let prove_s = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    crate::zk::verify(&statement, &proof).map_err(|e| fail(e.to_string()))?;
    let verify_s = start.elapsed().as_secs_f64();
    let k = statement.shape().map(|s| s.k()).unwrap_or(0);
    let proof_bytes = proof.len();
    bundle.proof = Some(proof);
    if public {
        bundle.transcript.clear();
        bundle.key.clear();
    }
    let packed = bundle.pack();
    if out == path {
        replace(path, &packed)?;
    } else {
        write_new(out, &packed)?;
    }
    Ok(Proved {
        path: out.display().to_string(),
        bytes: packed.len() as u64,
        proof_bytes,
        decision: pr.decision,
        queries: pr.queries,
        k,
        prove_s,
        verify_s,
    })
}

/// Replace `path` with `bytes` whole: a temporary file renamed over it.
fn replace(path: &Path, bytes: &[u8]) -> Result<(), EvidenceError> {
    through_temporary(path, bytes, "; check the folder is writable", |tmp| {
        std::fs::rename(tmp, path)
    })
}

/// Write `bytes` to `path`, which must not exist, through a temporary file: a reader never
/// sees a partial bundle, and a failed write leaves nothing.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), EvidenceError> {
    if path.exists() {
        return Err(EvidenceError::Exists {
            path: path.display().to_string(),
        });
    }
    through_temporary(
        path,
        bytes,
        "; check the folder exists and is writable",
        |tmp| {
            // Never replaces a file that appeared meanwhile.
            std::fs::hard_link(tmp, path)?;
            std::fs::remove_file(tmp)
        },
    )
}

/// Write `bytes` to a temporary file beside `path`, synced, then put it in place with
/// `finish`; on any failure the temporary file is removed and the error names `path`.
fn through_temporary(
    path: &Path,
    bytes: &[u8],
    fix: &'static str,
    finish: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), EvidenceError> {
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        finish(&tmp)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(crate::FileError::new(path, "cannot write the bundle", fix, e).into());
    }
    Ok(())
}

/// One check of [`verify`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// What was found, and where it fails.
    pub detail: String,
}

/// What [`verify`] found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every check holds.
    pub valid: bool,
    /// The key that signed it, hex (when the envelope reads).
    pub signer: Option<String>,
    /// Whether the signer was the pinned key (`--pubkey`); unpinned, a valid bundle proves
    /// integrity, not who made it.
    pub pinned: bool,
    /// The attested decision (when the statement reads).
    pub decision: Option<Decision>,
    /// Run id (when the statement reads).
    pub run_id: Option<String>,
    /// A public bundle (statement and proof; the transcript withheld): the verdict's
    /// arithmetic is checked, the scores and challenges are not.
    pub public: bool,
    /// The checks, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// The first failing check.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.ok)
    }
}

/// Re-check the bundle at `path` (see [`verify_bytes`]); `Err` only when it cannot be read.
pub fn verify(path: &Path, pinned: Option<&NodePublic>) -> Result<Report, EvidenceError> {
    let read_err = |e| crate::FileError::new(path, "cannot read the bundle", "", e);
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_BYTES {
        return Err(EvidenceError::TooLarge {
            path: path.display().to_string(),
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    Ok(verify_bytes(&bytes, pinned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn packing_is_canonical_and_unpacks_to_the_same_entries() {
        let b = Bundle {
            envelope: b"{}".to_vec(),
            transcript: b"a\nb\n".to_vec(),
            key: b"k\n".to_vec(),
            proof: None,
        };
        let bytes = b.pack();
        assert_eq!(bytes, b.pack());
        assert_eq!(Bundle::unpack(&bytes).unwrap(), b);
        assert!(Bundle::unpack(b"not gzip").is_err());
        assert!(Bundle::unpack(&bytes[..bytes.len() - 9]).is_err());
    }

    #[test]
    fn transcript_lines_are_the_merkle_leaves() {
        assert_eq!(lines(b"a\nbc\n"), vec![&b"a"[..], &b"bc"[..]]);
        assert_eq!(lines(b""), Vec::<&[u8]>::new());
    }
}
