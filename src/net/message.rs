//! The network's messages. Jobs and openings carry the proof protocol's own types
//! ([`JobRequest`], [`Receipt`], [`OpenRequest`], [`Opening`]) in CBOR; announcements are
//! gossiped, signed by the node's receipt key over a fixed byte layout (no serializer's
//! choices are signed), and checked against the peer that published them.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::commit::keys::{NodeKey, NodePublic};
use crate::commit::receipt::{JobRequest, Opening, Receipt};
use crate::commit::select::Selection;
use crate::commit::wire::Bytes;
use crate::model::Kernels;
use crate::verify::Rejection;

/// Version of [`JobMsg`].
pub const JOB_VERSION: u32 = 1;
/// Version of [`Announcement`].
pub const ANNOUNCEMENT_VERSION: u32 = 1;
/// Version of [`AuditReport`].
pub const REPORT_VERSION: u32 = 1;
/// How far apart (ms) an announcement and a receipt naming other weights may be signed for the
/// pair to prove a bait and switch (a node may change models; within this it claimed one
/// model while it ran another).
pub const SWITCH_WINDOW_MS: u64 = 10 * 60 * 1000;
/// The longest model name an announcement may carry.
pub const MAX_NAME_BYTES: usize = 256;
const ANNOUNCEMENT_TAG: &[u8] = b"pot/announcement/v1\0";

/// A job sent to a provider on `/pot/job/1`: run `request` for `nonce` on the weights
/// `weight_hash` names (a provider serving other weights refuses instead of answering).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobMsg {
    /// [`JOB_VERSION`].
    pub version: u32,
    /// The canonical weight hash of the model the router pays for.
    pub weight_hash: Bytes<32>,
    /// Prompt tokens and sampling.
    pub request: JobRequest,
    /// The router's fresh nonce (it binds the receipt to this request).
    pub nonce: Bytes<32>,
}

impl JobMsg {
    /// A small valid job (tests).
    #[doc(hidden)]
    pub fn example() -> Self {
        Self {
            version: JOB_VERSION,
            weight_hash: Bytes([7; 32]),
            request: JobRequest {
                prompt: vec![1, 2, 3, 50_000],
                max_tokens: 16,
                temperature: 0.0,
                top_p: 1.0,
                seed: 9,
                stop: vec!["\n\n".into()],
            },
            nonce: Bytes([3; 32]),
        }
    }
}

/// A provider's answer to a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobAnswer {
    /// The text shown to the client and the signed receipt of the run.
    Done {
        /// Text.
        text: String,
        /// Receipt.
        receipt: Box<Receipt>,
    },
    /// Not run, and why (another model, a bad request, a full queue).
    Refused {
        /// Why.
        reason: String,
    },
}

/// A provider's answer to an opening request on `/pot/open/1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenAnswer {
    /// The opened steps.
    Opened(Opening),
    /// Not opened, and why (an audit fails on it).
    Refused {
        /// Why.
        reason: String,
    },
}

/// "Node `node` serves `name` with weights `weight_hash`": gossiped on `/pot/announce/1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// [`ANNOUNCEMENT_VERSION`].
    pub version: u32,
    /// The node's receipt key (its peer id's key).
    pub node: Bytes<32>,
    /// The served model's name.
    pub name: String,
    /// Its canonical weight hash.
    pub weight_hash: Bytes<32>,
    /// The arithmetic it runs with.
    pub kernels: Kernels,
    /// When (Unix milliseconds).
    pub timestamp_ms: u64,
    /// Ed25519 signature of [`Announcement::signed_bytes`] by `node`.
    pub signature: Bytes<64>,
}

impl Announcement {
    /// A signed announcement.
    pub fn new(
        key: &NodeKey,
        name: &str,
        weight_hash: [u8; 32],
        kernels: Kernels,
        now_ms: u64,
    ) -> Self {
        let mut name = name.to_string();
        while name.len() > MAX_NAME_BYTES {
            name.pop();
        }
        let mut a = Self {
            version: ANNOUNCEMENT_VERSION,
            node: Bytes(key.public().to_bytes()),
            name,
            weight_hash: Bytes(weight_hash),
            kernels,
            timestamp_ms: now_ms,
            signature: Bytes([0; 64]),
        };
        a.signature = Bytes(key.sign(&a.signed_bytes()));
        a
    }

    /// The bytes the signature covers: a domain tag, then each field in order (lengths and
    /// numbers big-endian).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128 + self.name.len());
        b.extend_from_slice(ANNOUNCEMENT_TAG);
        b.extend_from_slice(&self.version.to_be_bytes());
        b.extend_from_slice(&self.node.0);
        b.extend_from_slice(&(self.name.len() as u32).to_be_bytes());
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(&self.weight_hash.0);
        b.push(match self.kernels {
            Kernels::Quantized => 0,
            Kernels::Dense => 1,
        });
        b.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        b
    }

    /// Whether the announcement is well formed, signed by its node, and published by that
    /// node's peer id; the reason when not.
    pub fn check(&self, publisher: &PeerId) -> Result<NodePublic, String> {
        if self.version != ANNOUNCEMENT_VERSION {
            return Err(format!(
                "announcement version {} (this node reads {ANNOUNCEMENT_VERSION})",
                self.version
            ));
        }
        if self.name.len() > MAX_NAME_BYTES {
            return Err(format!(
                "a model name of {} bytes (at most {MAX_NAME_BYTES})",
                self.name.len()
            ));
        }
        let node = NodePublic::from_bytes(&self.node.0).map_err(|e| e.to_string())?;
        if !node.verify(&self.signed_bytes(), &self.signature.0) {
            return Err("the announcement's signature does not verify".into());
        }
        if node.peer_id() != *publisher {
            return Err(format!(
                "announced for node {} but published by peer {publisher}",
                node.peer_id()
            ));
        }
        Ok(node)
    }
}

/// What a router holds against a provider: signed by the provider itself, so that anyone can
/// re-check it, never a bare accusation.
///
/// * A failed re-execution: the signed receipt, the router's VRF choice of steps (anyone holding
///   the router's public key re-derives the steps, so they were not picked to frame the node)
///   and the node's opening of them (Merkle paths to the signed root). Whoever holds the claimed
///   model re-executes those steps and sees the same disagreement.
/// * A bait and switch: the node's signed announcement of the claimed weights and a receipt it
///   signed within [`SWITCH_WINDOW_MS`] naming other weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The weights the provider claimed (the job asked for them; it advertised them).
    pub claimed: Bytes<32>,
    /// What the router found.
    pub rejection: Rejection,
    /// The provider's signed receipt.
    pub receipt: Receipt,
    /// The router's choice of audited steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    /// The provider's opening of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opening: Option<Opening>,
    /// The provider's signed announcement of `claimed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<Announcement>,
}

/// How a third party can re-check a piece of [`Evidence`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recheck {
    /// By re-executing the opened steps with the claimed model.
    Reexecution,
    /// By the signatures alone (announcement and receipt).
    Signatures,
    /// Only the router that saw it knows (a replayed nonce, another request, a malformed
    /// receipt): acted on locally, never gossiped.
    Local,
}

impl Evidence {
    /// How this evidence can be re-checked by someone else.
    pub fn recheck(&self) -> Recheck {
        match (
            &self.rejection,
            &self.selection,
            &self.opening,
            &self.announcement,
        ) {
            (
                Rejection::Diverges { .. }
                | Rejection::NotGreedy { .. }
                | Rejection::Path { .. }
                | Rejection::Malformed(_),
                Some(_),
                Some(_),
                _,
            ) => Recheck::Reexecution,
            (Rejection::WeightHash { .. }, _, _, Some(_)) => Recheck::Signatures,
            _ => Recheck::Local,
        }
    }

    /// The bait-and-switch check: the announcement and the receipt are both signed by the
    /// receipt's node, the announcement names the claimed weights, the receipt others, within
    /// [`SWITCH_WINDOW_MS`]. The reason when they do not prove it.
    pub fn check_switch(&self) -> Result<(), String> {
        let a = self
            .announcement
            .as_ref()
            .ok_or("no announcement to hold the receipt against")?;
        let node = NodePublic::from_bytes(&self.receipt.node.0).map_err(|e| e.to_string())?;
        a.check(&node.peer_id())?;
        if !self.receipt.signature_valid() {
            return Err("the receipt's signature does not verify".into());
        }
        if a.weight_hash != self.claimed {
            return Err("the announcement names other weights than the claimed ones".into());
        }
        if self.receipt.weight_hash == self.claimed {
            return Err("the receipt names the claimed weights".into());
        }
        let apart = a.timestamp_ms.abs_diff(self.receipt.timestamp_ms);
        if apart > SWITCH_WINDOW_MS {
            return Err(format!(
                "announcement and receipt are {apart} ms apart (more than {SWITCH_WINDOW_MS})"
            ));
        }
        Ok(())
    }
}

/// A router's report of a proven cheat, gossiped on `/pot/audit/1` (gossipsub signs it with
/// the router's key; the evidence inside is signed by the provider).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// When (Unix milliseconds).
    pub timestamp_ms: u64,
    /// The evidence (its receipt names the provider).
    pub evidence: Evidence,
}

impl AuditReport {
    /// The provider the report is about.
    pub fn provider(&self) -> Result<NodePublic, String> {
        NodePublic::from_bytes(&self.evidence.receipt.node.0).map_err(|e| e.to_string())
    }

    /// The checks any node makes before relaying a report (cheap: no model): the version,
    /// re-checkable evidence, the receipt's signature, and the VRF proof of the audited steps
    /// or the bait-and-switch signatures.
    pub fn check(&self) -> Result<NodePublic, String> {
        if self.version != REPORT_VERSION {
            return Err(format!(
                "report version {} (this node reads {REPORT_VERSION})",
                self.version
            ));
        }
        let node = self.provider()?;
        let e = &self.evidence;
        if !e.receipt.signature_valid() {
            return Err("the reported receipt's signature does not verify".into());
        }
        match e.recheck() {
            Recheck::Local => Err("the evidence cannot be re-checked by others".into()),
            Recheck::Signatures => e.check_switch().map(|_| node),
            Recheck::Reexecution => {
                let sel = e
                    .selection
                    .as_ref()
                    .expect("re-execution evidence has a selection");
                sel.verify(&e.receipt.digest(), e.receipt.steps)
                    .map_err(|e| e.to_string())?;
                if e.receipt.weight_hash != e.claimed {
                    return Err("the receipt does not claim the reported weights".into());
                }
                Ok(node)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_verify_only_as_signed_and_from_their_own_peer() {
        let key = NodeKey::generate();
        let peer = key.public().peer_id();
        let a = Announcement::new(&key, "qwen", [5; 32], Kernels::Quantized, 1_000);
        assert_eq!(a.check(&peer).unwrap(), key.public());
        // The peer id is the receipt key: a receipt's signer is found on the network.
        assert_eq!(NodePublic::of_peer(&peer), Some(key.public()));
        assert_eq!(
            key.libp2p_keypair().public().to_peer_id(),
            peer,
            "the libp2p identity is the node key"
        );
        let other = NodeKey::generate().public().peer_id();
        assert!(a.check(&other).unwrap_err().contains("published by peer"));
        let mut changed = a.clone();
        changed.weight_hash.0[0] ^= 1;
        assert!(changed.check(&peer).unwrap_err().contains("signature"));
        let mut changed = a.clone();
        changed.name.push('x');
        assert!(changed.check(&peer).unwrap_err().contains("signature"));
        let mut changed = a;
        changed.timestamp_ms += 1;
        assert!(changed.check(&peer).is_err());
    }
}
