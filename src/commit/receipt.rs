//! The signed receipt of a job, and the provider side of the protocol ([`Prover`]).
//!
//! A receipt names everything a router needs to hold the provider to its answer: who signed
//! (`node`), which job (`job_id`), for whom (`nonce`, chosen by the client), when
//! (`timestamp_ms`), with which weights (`weight_hash`, pot's canonical hash) and arithmetic
//! (`kernels`), on which request (`request`: prompt token ids and sampling), what came out
//! (`output`, every generated token), and the Merkle `root` over the per-step data
//! ([`super::step`]) with its number of leaves (`steps`: a root alone does not fix its size).
//!
//! The Ed25519 signature covers [`Receipt::signed_bytes`], a fixed layout: the domain tag
//! `pot/receipt/v1\0`, then each field big-endian in the order above, with the request and the
//! output entered by their SHA-256 digests. The layout is spelled out so that a verifier in any
//! language can rebuild it; no serialization library's choices are signed.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::{NodeKey, NodePublic};
use super::merkle::{Hash, Inclusion, Tree};
use super::step::{leaf, StepData, SCALE, TOP_K};
use super::wire::Bytes;
use super::CommitError;
use crate::model::Kernels;

/// Version of the receipt layout.
pub const VERSION: u32 = 1;
const RECEIPT_TAG: &[u8] = b"pot/receipt/v1\0";
const REQUEST_TAG: &[u8] = b"pot/request/v1\0";
const OUTPUT_TAG: &[u8] = b"pot/output/v1\0";

/// What the client asked: the exact prompt tokens and sampling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Prompt token ids (a chat request's rendered template included).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: u32,
    /// Temperature (0: greedy).
    pub temperature: f64,
    /// Nucleus.
    pub top_p: f64,
    /// Sampler seed.
    pub seed: u64,
    /// Stop strings.
    pub stop: Vec<String>,
}

impl JobRequest {
    /// SHA-256 of its canonical bytes.
    pub fn digest(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(REQUEST_TAG);
        h.update((self.prompt.len() as u32).to_be_bytes());
        for t in &self.prompt {
            h.update(t.to_be_bytes());
        }
        h.update(self.max_tokens.to_be_bytes());
        h.update(self.temperature.to_bits().to_be_bytes());
        h.update(self.top_p.to_bits().to_be_bytes());
        h.update(self.seed.to_be_bytes());
        h.update((self.stop.len() as u32).to_be_bytes());
        for s in &self.stop {
            h.update((s.len() as u32).to_be_bytes());
            h.update(s.as_bytes());
        }
        h.finalize().into()
    }
}

/// SHA-256 of an output token list.
pub fn output_digest(output: &[u32]) -> Hash {
    let mut h = Sha256::new();
    h.update(OUTPUT_TAG);
    h.update((output.len() as u32).to_be_bytes());
    for t in output {
        h.update(t.to_be_bytes());
    }
    h.finalize().into()
}

/// A provider's signed account of one job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// Layout version ([`VERSION`]).
    pub version: u32,
    /// The node's Ed25519 public key.
    pub node: Bytes<32>,
    /// Job id, chosen by the provider.
    pub job_id: Bytes<16>,
    /// The client's nonce.
    pub nonce: Bytes<32>,
    /// When the job finished (Unix milliseconds).
    pub timestamp_ms: u64,
    /// Canonical weight hash of the model that ran.
    pub weight_hash: Bytes<32>,
    /// The arithmetic it ran with (the router re-executes with the same).
    pub kernels: Kernels,
    /// The request.
    pub request: JobRequest,
    /// Every generated token, the end token included.
    pub output: Vec<u32>,
    /// Likeliest tokens committed per step.
    pub top_k: u32,
    /// Codes per nat.
    pub scale: u32,
    /// Merkle root over the steps' leaves.
    pub root: Bytes<32>,
    /// Number of leaves (= `output.len()`).
    pub steps: u32,
    /// Ed25519 signature of [`Receipt::signed_bytes`].
    pub signature: Bytes<64>,
}

impl Receipt {
    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(320);
        b.extend_from_slice(RECEIPT_TAG);
        b.extend_from_slice(&self.version.to_be_bytes());
        b.extend_from_slice(&self.node.0);
        b.extend_from_slice(&self.job_id.0);
        b.extend_from_slice(&self.nonce.0);
        b.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        b.extend_from_slice(&self.weight_hash.0);
        b.push(match self.kernels {
            Kernels::Quantized => 0,
            Kernels::Dense => 1,
        });
        b.extend_from_slice(&self.request.digest());
        b.extend_from_slice(&output_digest(&self.output));
        b.extend_from_slice(&self.top_k.to_be_bytes());
        b.extend_from_slice(&self.scale.to_be_bytes());
        b.extend_from_slice(&self.root.0);
        b.extend_from_slice(&self.steps.to_be_bytes());
        b
    }

    /// SHA-256 of the signed bytes: the receipt's name (the VRF input of its audit).
    pub fn digest(&self) -> Hash {
        Sha256::digest(self.signed_bytes()).into()
    }

    /// Check the signature against the public key the receipt names.
    pub fn signature_valid(&self) -> bool {
        NodePublic::from_bytes(&self.node.0)
            .is_ok_and(|k| k.verify(&self.signed_bytes(), &self.signature.0))
    }
}

/// One revealed step: its data and its place in the tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenedStep {
    /// Step index.
    pub index: u32,
    /// The committed data.
    pub data: StepData,
    /// Merkle path to the receipt's root.
    pub path: Inclusion,
}

impl OpenedStep {
    /// Whether this is step `index` under `r`'s root.
    pub fn proves(&self, r: &Receipt) -> bool {
        self.path.index == self.index as u64
            && self.path.size == r.steps as u64
            && super::merkle::verify(
                &r.root.0,
                &leaf(&r.job_id.0, self.index, &self.data),
                &self.path,
            )
    }
}

/// Version of the open messages.
pub const OPEN_VERSION: u32 = 1;

/// A router's request to open steps of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenRequest {
    /// [`OPEN_VERSION`].
    pub version: u32,
    /// The job.
    pub job_id: Bytes<16>,
    /// The router's VRF choice of steps.
    pub selection: super::select::Selection,
}

/// The provider's answer: the chosen steps, with their Merkle paths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Opening {
    /// [`OPEN_VERSION`].
    pub version: u32,
    /// The job.
    pub job_id: Bytes<16>,
    /// The steps, in the selection's order.
    pub steps: Vec<OpenedStep>,
}

/// The provider side: sign receipts for a model and open their steps.
pub struct Prover {
    /// The node key.
    pub key: NodeKey,
    /// The weight hash it signs (the loaded model's canonical hash).
    pub weight_hash: [u8; 32],
    /// The arithmetic it runs.
    pub kernels: Kernels,
}

impl Prover {
    /// A one-token receipt signed by `key` for weights `weight_hash` at `now_ms` (tests).
    #[doc(hidden)]
    pub fn example_receipt(key: NodeKey, weight_hash: [u8; 32], now_ms: u64) -> Receipt {
        let p = Prover {
            key,
            weight_hash,
            kernels: Kernels::Quantized,
        };
        let steps = vec![StepData::from_logits(&[0.0, 1.0, 2.0], 2)];
        let request = JobRequest {
            prompt: vec![1],
            max_tokens: 1,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: vec![],
        };
        p.commit([1; 16], [2; 32], request, vec![2], &steps, now_ms)
            .expect("one step for one token")
    }

    /// Commit to a finished job: the receipt, signed now.
    pub fn commit(
        &self,
        job_id: [u8; 16],
        nonce: [u8; 32],
        request: JobRequest,
        output: Vec<u32>,
        steps: &[StepData],
        timestamp_ms: u64,
    ) -> Result<Receipt, CommitError> {
        if steps.len() != output.len() {
            return Err(CommitError::Malformed(format!(
                "{} steps for {} output tokens",
                steps.len(),
                output.len()
            )));
        }
        let tree = Tree::new(
            steps
                .iter()
                .enumerate()
                .map(|(i, d)| leaf(&job_id, i as u32, d)),
        );
        let mut r = Receipt {
            version: VERSION,
            node: Bytes(self.key.public().to_bytes()),
            job_id: Bytes(job_id),
            nonce: Bytes(nonce),
            timestamp_ms,
            weight_hash: Bytes(self.weight_hash),
            kernels: self.kernels,
            request,
            output,
            top_k: TOP_K as u32,
            scale: SCALE as u32,
            root: Bytes(tree.root()),
            steps: steps.len() as u32,
            signature: Bytes([0; 64]),
        };
        r.signature = Bytes(self.key.sign(&r.signed_bytes()));
        Ok(r)
    }
}

/// Open steps `indices` of a job whose data is `steps`.
pub fn open(
    job_id: &[u8; 16],
    steps: &[StepData],
    indices: &[u32],
) -> Result<Vec<OpenedStep>, CommitError> {
    let tree = Tree::new(
        steps
            .iter()
            .enumerate()
            .map(|(i, d)| leaf(job_id, i as u32, d)),
    );
    indices
        .iter()
        .map(|&i| {
            let path = tree.prove(i as usize).ok_or_else(|| {
                CommitError::Malformed(format!("step {i} is past the job's {} steps", steps.len()))
            })?;
            Ok(OpenedStep {
                index: i,
                data: steps[i as usize].clone(),
                path,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::wire::{decode, encode, Encoding};

    fn job() -> (Prover, Receipt, Vec<StepData>) {
        let p = Prover {
            key: NodeKey::generate(),
            weight_hash: [9; 32],
            kernels: Kernels::Quantized,
        };
        let steps: Vec<StepData> = (0..5u32)
            .map(|i| StepData::from_logits(&[0.0, 1.0, i as f32, 3.0, -1.0, 0.5, 2.0, 2.5, 0.1], i))
            .collect();
        let req = JobRequest {
            prompt: vec![1, 2, 3],
            max_tokens: 5,
            temperature: 0.0,
            top_p: 1.0,
            seed: 4,
            stop: vec!["\n".into()],
        };
        let r = p
            .commit(
                [1; 16],
                [2; 32],
                req,
                (0..5).collect(),
                &steps,
                1_700_000_000_000,
            )
            .unwrap();
        (p, r, steps)
    }

    #[test]
    fn a_receipt_verifies_and_any_changed_field_breaks_it() {
        let (_, r, _) = job();
        assert!(r.signature_valid());
        let mut tampered: Vec<Receipt> = Vec::new();
        let mut t = |f: &dyn Fn(&mut Receipt)| {
            let mut x = r.clone();
            f(&mut x);
            tampered.push(x);
        };
        t(&|x| x.version = 2);
        t(&|x| x.job_id.0[0] ^= 1);
        t(&|x| x.nonce.0[31] ^= 1);
        t(&|x| x.timestamp_ms += 1);
        t(&|x| x.weight_hash.0[5] ^= 1);
        t(&|x| x.kernels = Kernels::Dense);
        t(&|x| x.request.prompt.push(7));
        t(&|x| x.request.max_tokens += 1);
        t(&|x| x.request.temperature = 0.5);
        t(&|x| x.request.top_p = 0.9);
        t(&|x| x.request.seed += 1);
        t(&|x| x.request.stop.clear());
        t(&|x| x.output[2] = 99);
        t(&|x| x.top_k = 4);
        t(&|x| x.scale = 128);
        t(&|x| x.root.0[0] ^= 1);
        t(&|x| x.steps = 6);
        t(&|x| x.signature.0[0] ^= 1);
        // Signed by another key, naming it or not.
        t(&|x| {
            let other = NodeKey::generate();
            x.signature = Bytes(other.sign(&x.signed_bytes()));
        });
        t(&|x| {
            let other = NodeKey::generate();
            x.node = Bytes(other.public().to_bytes());
        });
        for (i, x) in tampered.iter().enumerate() {
            assert!(!x.signature_valid(), "tampering {i} passed");
        }
    }

    #[test]
    fn opened_steps_prove_against_the_signed_root_only() {
        let (_, r, steps) = job();
        let opened = open(&r.job_id.0, &steps, &[0, 3, 4]).unwrap();
        for o in &opened {
            assert!(o.proves(&r));
            let mut d = o.clone();
            d.data.top[0].1 += 1;
            assert!(!d.proves(&r));
            let mut i = o.clone();
            i.index = (i.index + 1) % 5;
            assert!(!i.proves(&r));
        }
        assert!(open(&r.job_id.0, &steps, &[5]).is_err());
        // The same data under another job id does not prove.
        let mut other = r.clone();
        other.job_id.0[0] ^= 1;
        assert!(!opened[0].proves(&other));
    }

    #[test]
    fn receipts_round_trip_through_json_and_cbor() {
        let (_, r, steps) = job();
        for enc in [Encoding::Json, Encoding::Cbor] {
            let b = encode(&r, enc).unwrap();
            let back: Receipt = decode(&b, enc).unwrap();
            assert_eq!(back, r);
            assert!(back.signature_valid());
            let o = open(&r.job_id.0, &steps, &[1]).unwrap();
            let ob: Vec<OpenedStep> = decode(&encode(&o, enc).unwrap(), enc).unwrap();
            assert_eq!(ob, o);
        }
        // CBOR carries hashes as bytes: smaller than JSON's hex.
        assert!(
            encode(&r, Encoding::Cbor).unwrap().len() < encode(&r, Encoding::Json).unwrap().len()
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["job_id"].as_str().unwrap(), "01".repeat(16));
        // Truncated or oversized input is refused with a message.
        let b = encode(&r, Encoding::Cbor).unwrap();
        assert!(decode::<Receipt>(&b[..b.len() / 2], Encoding::Cbor).is_err());
        let big = vec![0u8; crate::commit::wire::MAX_MESSAGE_BYTES + 1];
        assert!(decode::<Receipt>(&big, Encoding::Json)
            .unwrap_err()
            .to_string()
            .contains("bytes"));
    }
}
