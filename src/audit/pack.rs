//! Reference packs: the reference's side of an audit computed once, on a machine that can run
//! the model (`pot reference build`), and audited from anywhere without it (`pot audit
//! --ref-pack`).
//!
//! A pack holds, for each of the run's first N keyed challenges, the prompt, the reference's
//! greedy continuation of K tokens and its top alternatives (20 by default) before each token,
//! with the reference's identity, the challenge key's commitment, and an Ed25519 signature of
//! the builder (an auditor key) over all of it. The audit then uses it as it uses a trusted
//! endpoint ([`super::paths`]): compared on the tokens both sides report, positions off the
//! reference's path not scored.
//!
//! A pack reveals its prompts: it is the auditor's secret, like the key it was built with.
//! Audit a vendor with a pack it has never seen, and build a new one after a pack has been used
//! against a vendor that may share prompts with another.
//!
//! File: `POTPACK1`, the signer's Ed25519 public key (32 bytes), the CBOR of [`PackBody`],
//! then the 64-byte signature over `pot/reference-pack/v1` ‖ public key ‖ SHA-256(CBOR). The
//! signature is checked before the body is read.

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::paths::{prompt_ids, KnownPaths, Path, SparseRow};
use crate::challenge::{Catalog, ChallengeKey};
use crate::commit::keys::{AuditorKey, NodePublic};
use crate::identity::Identity;
use crate::model::tokenizer::Tokenizer;
use crate::model::{Model, TextSide};
use crate::run::{Reference, RunError};
use crate::score::{ReferenceSide, ScoreKind};
use crate::FileError;

const MAGIC: &[u8; 8] = b"POTPACK1";
const SIGNING_TAG: &[u8] = b"pot/reference-pack/v1";
/// Format of the pack's body.
pub const FORMAT: u32 = 1;

/// What a pack is of.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PackHeader {
    /// Body format.
    pub format: u32,
    /// The reference model it was computed with.
    pub reference: Identity,
    /// The challenges' run id.
    pub run_id: String,
    /// Commitment to the run's challenge key.
    pub key_commitment: String,
    /// Continuation length K.
    pub k: usize,
    /// Whether prompts were rendered with the chat template (audits through chat).
    pub chat: bool,
    /// Alternatives kept per position.
    pub top: usize,
    /// Challenges held (indices 0..n).
    pub challenges: usize,
    /// When it was built (Unix seconds).
    pub created: u64,
    /// The builder's public key (hex).
    pub signer: String,
}

/// One challenge's reference side.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PackChallenge {
    /// Challenge index.
    pub index: u64,
    /// Prompt text.
    pub prompt: String,
    /// Its token ids as the reference read it.
    pub prompt_ids: Vec<u32>,
    /// The reference's greedy path.
    pub path: Path,
}

/// What is signed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PackBody {
    /// What the pack is of.
    pub header: PackHeader,
    /// The challenges, in index order.
    pub challenges: Vec<PackChallenge>,
}

/// What can go wrong with a pack.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading or writing the file.
    #[error(transparent)]
    File(#[from] FileError),
    /// Not a pack, or a damaged one.
    #[error("{path}: {reason}; build it again with pot reference build")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not hold.
    #[error("{path}: the signature does not match the pack's contents (tampered with, or damaged); do not use it")]
    Signature {
        /// The file.
        path: String,
    },
    /// Signed by another key than the one required.
    #[error("{path}: signed by {found}, not by the --ref-pack-signer given ({want}); use the pack you built")]
    Signer {
        /// The file.
        path: String,
        /// Its signer.
        found: String,
        /// The one asked for.
        want: String,
    },
    /// The output exists.
    #[error("{path}: exists already; choose another output path")]
    Exists {
        /// The file.
        path: String,
    },
}

impl PackBody {
    fn signing_message(signer: &[u8; 32], cbor: &[u8]) -> Vec<u8> {
        let mut m = SIGNING_TAG.to_vec();
        m.extend_from_slice(signer);
        m.extend_from_slice(&Sha256::digest(cbor));
        m
    }
}

/// What [`build`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Built {
    /// The pack.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Challenges held.
    pub challenges: usize,
    /// Bytes per challenge.
    pub bytes_per_challenge: f64,
    /// The run id (audits use it).
    pub run_id: String,
    /// The signer's public key (hex).
    pub signer: String,
}

/// What to build.
pub struct BuildConfig {
    /// The run's challenge key (already for the run: [`ChallengeKey::for_run`]).
    pub key: ChallengeKey,
    /// The run id.
    pub run_id: String,
    /// Challenges.
    pub n: usize,
    /// Continuation length.
    pub k: usize,
    /// Render prompts with the chat template.
    pub chat: bool,
    /// Alternatives per position.
    pub top: usize,
    /// Where to write (must not exist).
    pub out: PathBuf,
}

/// Build a pack: the reference continues each challenge greedily, in groups, and the whole is
/// signed and written at once (a temporary file renamed into place: never half-written).
pub fn build(
    cfg: &BuildConfig,
    signer: &AuditorKey,
    model: &Model,
    reference: Identity,
    progress: &mut dyn FnMut(usize),
) -> Result<Built, RunError> {
    let out_s = cfg.out.display().to_string();
    if cfg.out.exists() {
        return Err(pack_err(PackError::Exists { path: out_s }));
    }
    let catalog = Catalog::load()?;
    let mut challenges = Vec::with_capacity(cfg.n);
    for group in (0..cfg.n).collect::<Vec<_>>().chunks(crate::stats::CYCLE) {
        let chs: Vec<_> = group
            .iter()
            .map(|&i| catalog.challenge(&cfg.key, &cfg.run_id, i as u64))
            .collect();
        let ids = chs
            .iter()
            .map(|c| {
                if cfg.chat {
                    model.chat_prompt(&[crate::run::user_message(&c.prompt)])
                } else {
                    model.tokenizer.encode(&c.prompt)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let conts = model.continue_batch(&refs, cfg.k, true, true)?;
        for ((c, prompt_ids), cont) in chs.into_iter().zip(ids).zip(conts) {
            let rows: Vec<SparseRow> = cont
                .logprobs
                .iter()
                .map(|row| {
                    let t = crate::score::top_tokens(row, cfg.top);
                    t.top_ids
                        .iter()
                        .zip(&t.top_logprobs)
                        .map(|(&i, &lp)| (i, lp as f32))
                        .collect()
                })
                .collect();
            challenges.push(PackChallenge {
                index: c.index,
                prompt: c.prompt,
                prompt_ids,
                path: Path {
                    text: model.tokenizer.decode(&cont.tokens)?,
                    ids: cont.tokens,
                    rows,
                },
            });
        }
        progress(challenges.len());
    }
    let body = PackBody {
        header: PackHeader {
            format: FORMAT,
            reference,
            run_id: cfg.run_id.clone(),
            key_commitment: cfg.key.commitment(),
            k: cfg.k,
            chat: cfg.chat,
            top: cfg.top,
            challenges: challenges.len(),
            created: crate::transcript::unix_now(),
            signer: hex::encode(signer.public().to_bytes()),
        },
        challenges,
    };
    let bytes = write_signed(&body, signer, &cfg.out).map_err(pack_err)?;
    Ok(Built {
        path: out_s,
        bytes,
        challenges: body.challenges.len(),
        bytes_per_challenge: bytes as f64 / body.challenges.len().max(1) as f64,
        run_id: cfg.run_id.clone(),
        signer: body.header.signer,
    })
}

/// Sign `body` and write it to `out` (a temporary file renamed into place); its size.
fn write_signed(body: &PackBody, signer: &AuditorKey, out: &FsPath) -> Result<u64, PackError> {
    let mut cbor = Vec::new();
    ciborium::into_writer(body, &mut cbor).expect("packs encode");
    let public = signer.public().to_bytes();
    let sig = signer.sign(&PackBody::signing_message(&public, &cbor));
    let tmp = out.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&public)?;
        f.write_all(&cbor)?;
        f.write_all(&sig)?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(PackError::File(FileError::new(
            out,
            "cannot write the pack",
            "; check the folder is writable and has space",
            e,
        )));
    }
    Ok((MAGIC.len() + public.len() + cbor.len() + sig.len()) as u64)
}

fn pack_err(e: PackError) -> RunError {
    RunError::Pack(Box::new(e))
}

/// Read and check a pack: its signature, by its own signer (and, when `signer` is given, that
/// it is that key).
pub fn open(path: &FsPath, signer: Option<&NodePublic>) -> Result<PackBody, PackError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path)
        .map_err(|e| FileError::new(path, "cannot read the pack", "; check the path", e))?;
    let damaged = |reason: &str| PackError::Damaged {
        path: p.clone(),
        reason: reason.into(),
    };
    if !bytes.starts_with(MAGIC) {
        return Err(damaged("not a reference pack (no POTPACK1 magic)"));
    }
    if bytes.len() < MAGIC.len() + 32 + 64 {
        return Err(damaged("truncated"));
    }
    // The signature is checked before anything of the body is read.
    let rest = &bytes[MAGIC.len()..];
    let (public, rest) = rest.split_at(32);
    let (cbor, sig) = rest.split_at(rest.len() - 64);
    let public: &[u8; 32] = public.try_into().expect("32 bytes");
    let own = NodePublic::from_bytes(public)
        .map_err(|_| damaged("its signer is not an Ed25519 public key"))?;
    let sig: &[u8; 64] = sig.try_into().expect("64 bytes");
    if !own.verify(&PackBody::signing_message(public, cbor), sig) {
        return Err(PackError::Signature { path: p });
    }
    if let Some(want) = signer {
        if want.to_bytes() != *public {
            return Err(PackError::Signer {
                path: p,
                found: hex::encode(public),
                want: hex::encode(want.to_bytes()),
            });
        }
    }
    let body: PackBody = ciborium::from_reader(cbor).map_err(|e| match e {
        ciborium::de::Error::Io(_) => damaged("truncated"),
        e => damaged(&format!("damaged ({e})")),
    })?;
    if body.header.format != FORMAT {
        return Err(damaged(&format!(
            "format {} (this pot reads format {FORMAT})",
            body.header.format
        )));
    }
    if body.header.signer != hex::encode(public) {
        return Err(damaged(
            "its header names another signer than the one that signed it",
        ));
    }
    let consistent = body.header.challenges == body.challenges.len()
        && body
            .challenges
            .iter()
            .enumerate()
            .all(|(i, c)| c.index == i as u64 && c.path.rows.len() == c.path.ids.len());
    if !consistent {
        return Err(damaged("its challenges are not the ones its header lists"));
    }
    Ok(body)
}

/// A pack as a run's reference.
pub struct PackReference {
    text: TextSide,
    identity: Identity,
    chat: bool,
    paths: KnownPaths,
    path: String,
}

impl PackReference {
    /// The pack's reference, with prompts read by the tokenizer of `tokenizer` (a file or
    /// folder of the same model; it must be the pack's tokenizer).
    pub fn new(pack: PackBody, path: &FsPath, tokenizer: &str) -> Result<Self, RunError> {
        let text = TextSide::load(tokenizer)?;
        let p = path.display().to_string();
        if text.tokenizer.hash != pack.header.reference.tokenizer_hash {
            return Err(RunError::Unsupported {
                url: p,
                what: format!(
                    "the pack was built with another tokenizer than {tokenizer}'s; pass a file of the pack's model ({}) to --ref-tokenizer",
                    pack.header.reference.path
                ),
            });
        }
        let mut paths = KnownPaths::new(text.tokenizer.vocab_size());
        for c in pack.challenges {
            paths.prompt(&c.prompt_ids, &c.prompt);
            paths.insert(c.prompt_ids, c.path);
        }
        Ok(Self {
            text,
            identity: pack.header.reference,
            chat: pack.header.chat,
            paths,
            path: p,
        })
    }

    fn missing(&self) -> RunError {
        RunError::Unsupported {
            url: self.path.clone(),
            what: "the pack holds no reference side for this challenge: audit with the --key-file the pack was built with, and no more challenges than it holds".into(),
        }
    }
}

impl Reference for PackReference {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn tokenizer(&mut self) -> Result<&Tokenizer, RunError> {
        Ok(&self.text.tokenizer)
    }

    fn prompt_ids(&mut self, prompt: &str, chat: bool) -> Result<Vec<u32>, RunError> {
        if chat != self.chat {
            return Err(RunError::Unsupported {
                url: self.path.clone(),
                what: format!(
                    "the pack was built for {}; audit through {} or build another pack",
                    if self.chat {
                        "chat (--chat)"
                    } else {
                        "completions"
                    },
                    if self.chat {
                        "chat (--chat)"
                    } else {
                        "completions"
                    },
                ),
            });
        }
        prompt_ids(&self.text, prompt, chat)
    }

    fn continue_group(
        &mut self,
        prompts: &[String],
        _k: usize,
        _kind: ScoreKind,
    ) -> Result<Vec<ReferenceSide>, RunError> {
        let chat = self.chat;
        prompts
            .iter()
            .map(|p| {
                let ids = self.prompt_ids(p, chat)?;
                self.paths.side(p, ids).ok_or_else(|| self.missing())
            })
            .collect()
    }

    fn distributions(
        &mut self,
        seqs: &[&[u32]],
        from: &[usize],
    ) -> Result<Vec<Vec<Vec<f32>>>, RunError> {
        let keyed = self
            .paths
            .prompts_of(seqs, from)
            .ok_or_else(|| self.missing())?;
        Ok(self.paths.rows(seqs, from, &keyed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(signer: &AuditorKey) -> PackBody {
        let reference: Identity = serde_json::from_value(serde_json::json!({
            "path": "m.gguf", "arch": "llama", "file_bytes": 1, "parameters": 1,
            "vocab_size": 8, "file_sha256": "00", "weight_hash": "11", "config_hash": "22",
            "tokenizer_hash": "33"
        }))
        .unwrap();
        PackBody {
            header: PackHeader {
                format: FORMAT,
                reference,
                run_id: "r".into(),
                key_commitment: "c".into(),
                k: 2,
                chat: false,
                top: 2,
                challenges: 1,
                created: 0,
                signer: hex::encode(signer.public().to_bytes()),
            },
            challenges: vec![PackChallenge {
                index: 0,
                prompt: "p".into(),
                prompt_ids: vec![1],
                path: Path {
                    ids: vec![2, 3],
                    text: "ab".into(),
                    rows: vec![vec![(2, -0.1), (4, -2.5)], vec![(3, -0.2)]],
                },
            }],
        }
    }

    #[test]
    fn a_pack_reads_back_and_any_flipped_bit_or_cut_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let signer = AuditorKey::generate();
        let b = body(&signer);
        let path = dir.path().join("p.pack");
        let bytes = write_signed(&b, &signer, &path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        assert_eq!(open(&path, None).unwrap(), b);
        assert_eq!(open(&path, Some(&signer.public())).unwrap(), b);
        let other = AuditorKey::generate().public();
        assert!(matches!(
            open(&path, Some(&other)),
            Err(PackError::Signer { .. })
        ));
        let good = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad.pack");
        for i in (8..good.len()).step_by(7) {
            let mut t = good.clone();
            t[i] ^= 0x10;
            std::fs::write(&bad, &t).unwrap();
            assert!(
                matches!(
                    open(&bad, None),
                    Err(PackError::Signature { .. } | PackError::Damaged { .. })
                ),
                "byte {i} flipped was accepted"
            );
        }
        for cut in [0, 7, 40, good.len() - 1] {
            std::fs::write(&bad, &good[..cut]).unwrap();
            assert!(open(&bad, None).is_err(), "cut at {cut} was accepted");
        }
        assert!(matches!(
            write_signed(&b, &signer, &dir.path().join("no/such/dir/p.pack")),
            Err(PackError::File(_))
        ));
    }
}
