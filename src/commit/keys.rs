//! The keys of the protocol, and their files.
//!
//! * A **node key** (Ed25519, `ed25519-dalek`) signs a provider's receipts. Its public half is
//!   published at `GET /v1/pot/node`; routers pin it.
//! * A **router key** (sr25519, `schnorrkel`) evaluates the VRF that picks which steps of a job
//!   are audited ([`super::select`]). Its public half lets anyone re-check the choice.
//! * An **auditor key** (Ed25519) signs evidence bundles (`crate::evidence`). Its public half
//!   is what a third party pins with `pot bundle verify --pubkey`.
//!
//! A secret key file holds one line, `pot-node-key-v1 <64 hex digits>`,
//! `pot-router-key-v1 …` or `pot-auditor-key-v1 …` (the 32-byte seed), and is created with mode 0600. The
//! kind prefix keeps one key from being used in the other's place, or a challenge key in
//! either's. Public keys travel as 64 hex digits.

use std::path::Path;

use ed25519_dalek::{Signer, Verifier};
use rand::RngCore;

use super::CommitError;

const NODE_PREFIX: &str = "pot-node-key-v1";
const ROUTER_PREFIX: &str = "pot-router-key-v1";
const AUDITOR_PREFIX: &str = "pot-auditor-key-v1";

/// A provider's signing key.
pub struct NodeKey(ed25519_dalek::SigningKey);

/// A provider's public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePublic(pub ed25519_dalek::VerifyingKey);

/// A router's VRF key.
pub struct RouterKey(pub(super) schnorrkel::Keypair);

/// A router's public VRF key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouterPublic(pub(super) schnorrkel::PublicKey);

fn fresh_seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// Read a key file of kind `prefix`: the 32-byte seed.
fn read_seed(path: &Path, prefix: &str, what: &str) -> Result<[u8; 32], CommitError> {
    let bad = |reason: String| CommitError::KeyFile {
        path: path.display().to_string(),
        reason,
    };
    let flag = match prefix {
        NODE_PREFIX => "node",
        ROUTER_PREFIX => "router",
        _ => "auditor",
    };
    let make = format!("make one with `pot keygen --{flag} --out FILE`");
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read the {what} file ({e}); {make}")))?;
    let text = text.trim();
    let Some(hex_part) = text.strip_prefix(prefix).map(str::trim) else {
        let kind = text.split_whitespace().next().unwrap_or("");
        return Err(bad(format!(
            "not a {what} file (it starts with {kind:?}, a {what} file with {prefix:?}); {make}"
        )));
    };
    let bytes = hex::decode(hex_part).map_err(|_| bad(format!("the key is not hex; {make}")))?;
    bytes
        .try_into()
        .map_err(|_| bad(format!("the key is not 32 bytes; {make}")))
}

fn key_line(prefix: &str, seed: &[u8; 32]) -> String {
    format!("{prefix} {}", hex::encode(seed))
}

/// 32 bytes from 64 hex digits.
pub fn parse_hex32(text: &str, what: &str) -> Result<[u8; 32], CommitError> {
    let b = hex::decode(text.trim())
        .map_err(|_| CommitError::Malformed(format!("{what} is not hex")))?;
    b.try_into()
        .map_err(|_| CommitError::Malformed(format!("{what} is not 32 bytes")))
}

impl NodeKey {
    /// A fresh key.
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&fresh_seed()))
    }

    /// The key of a file written by [`NodeKey::file_line`].
    pub fn read(path: &Path) -> Result<Self, CommitError> {
        let seed = read_seed(path, NODE_PREFIX, "node key")?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// The line a key file holds.
    pub fn file_line(&self) -> String {
        key_line(NODE_PREFIX, &self.0.to_bytes())
    }

    /// The public key.
    pub fn public(&self) -> NodePublic {
        NodePublic(self.0.verifying_key())
    }

    /// Sign `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }

    /// The same key as a libp2p identity: a node's peer id is its receipt key.
    pub fn libp2p_keypair(&self) -> libp2p::identity::Keypair {
        libp2p::identity::Keypair::ed25519_from_bytes(self.0.to_bytes())
            .expect("an Ed25519 seed is 32 bytes")
    }
}

/// An auditor's signing key (Ed25519): it signs evidence bundles. A separate kind from the
/// node key, so that neither signs in the other's place.
pub struct AuditorKey(NodeKey);

impl AuditorKey {
    /// A fresh key.
    pub fn generate() -> Self {
        Self(NodeKey::generate())
    }

    /// The key of a file written by [`AuditorKey::file_line`].
    pub fn read(path: &Path) -> Result<Self, CommitError> {
        let seed = read_seed(path, AUDITOR_PREFIX, "auditor key")?;
        Ok(Self(NodeKey(ed25519_dalek::SigningKey::from_bytes(&seed))))
    }

    /// The line a key file holds.
    pub fn file_line(&self) -> String {
        key_line(AUDITOR_PREFIX, &self.0 .0.to_bytes())
    }

    /// The public key (an Ed25519 public key, as a node's).
    pub fn public(&self) -> NodePublic {
        self.0.public()
    }

    /// Sign `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg)
    }
}

impl NodePublic {
    /// From its 32 bytes.
    pub fn from_bytes(b: &[u8; 32]) -> Result<Self, CommitError> {
        ed25519_dalek::VerifyingKey::from_bytes(b)
            .map(Self)
            .map_err(|_| {
                CommitError::Malformed("the node public key is not a valid Ed25519 point".into())
            })
    }

    /// From 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, CommitError> {
        Self::from_bytes(&parse_hex32(text, "the node public key")?)
    }

    /// Its 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The libp2p peer id of a node with this key.
    pub fn peer_id(&self) -> libp2p::PeerId {
        let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(&self.to_bytes())
            .expect("a valid Ed25519 key converts");
        libp2p::identity::PublicKey::from(key).to_peer_id()
    }

    /// The key behind a peer id, when the id inlines an Ed25519 key (as every pot node's does).
    pub fn of_peer(peer: &libp2p::PeerId) -> Option<Self> {
        let mh = multihash_identity_digest(peer)?;
        let public = libp2p::identity::PublicKey::try_decode_protobuf(mh).ok()?;
        let key = public.try_into_ed25519().ok()?;
        Self::from_bytes(&key.to_bytes()).ok()
    }

    /// Whether `sig` is this key's signature of `msg` (strict verification: no malleable or
    /// small-order forms).
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        self.0.verify_strict(msg, &sig).is_ok() && self.0.verify(msg, &sig).is_ok()
    }
}

impl RouterKey {
    /// A fresh key.
    pub fn generate() -> Self {
        Self::from_seed(&fresh_seed())
    }

    fn from_seed(seed: &[u8; 32]) -> Self {
        let mini =
            schnorrkel::MiniSecretKey::from_bytes(seed).expect("32 bytes make a mini secret key");
        Self(mini.expand_to_keypair(schnorrkel::ExpansionMode::Ed25519))
    }

    /// The key of a file (`pot-router-key-v1 <seed hex>`).
    pub fn read(path: &Path) -> Result<Self, CommitError> {
        Ok(Self::from_seed(&read_seed(
            path,
            ROUTER_PREFIX,
            "router key",
        )?))
    }

    /// A fresh key and the line its file holds (the seed is not kept by the key pair).
    pub fn generate_with_line() -> (Self, String) {
        let seed = fresh_seed();
        (Self::from_seed(&seed), key_line(ROUTER_PREFIX, &seed))
    }

    /// The public key.
    pub fn public(&self) -> RouterPublic {
        RouterPublic(self.0.public)
    }
}

impl RouterPublic {
    /// From its 32 bytes.
    pub fn from_bytes(b: &[u8; 32]) -> Result<Self, CommitError> {
        schnorrkel::PublicKey::from_bytes(b).map(Self).map_err(|_| {
            CommitError::Malformed("the router public key is not a valid sr25519 point".into())
        })
    }

    /// Its 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
}

/// The digest of an identity multihash (code 0x00): the encoded public key a short peer id
/// carries inline; `None` for a hashed (SHA-256) peer id.
fn multihash_identity_digest(peer: &libp2p::PeerId) -> Option<&[u8]> {
    let mh = peer.as_ref();
    (mh.code() == 0).then(|| mh.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_kinds_are_not_confused() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeKey::generate();
        let np = dir.path().join("node.key");
        std::fs::write(&np, node.file_line()).unwrap();
        assert_eq!(NodeKey::read(&np).unwrap().public(), node.public());
        let (router, line) = RouterKey::generate_with_line();
        let rp = dir.path().join("router.key");
        std::fs::write(&rp, line).unwrap();
        assert_eq!(RouterKey::read(&rp).unwrap().public(), router.public());
        // A node key is not a router key, nor is a bare challenge key either.
        let e = RouterKey::read(&np).err().unwrap().to_string();
        assert!(
            e.contains("not a router key file") && e.contains("pot keygen --router"),
            "{e}"
        );
        let auditor = AuditorKey::generate();
        let ap = dir.path().join("auditor.key");
        std::fs::write(&ap, auditor.file_line()).unwrap();
        assert_eq!(AuditorKey::read(&ap).unwrap().public(), auditor.public());
        let e = AuditorKey::read(&np).err().unwrap().to_string();
        assert!(e.contains("pot keygen --auditor"), "{e}");
        assert!(NodeKey::read(&ap).is_err());
        let cp = dir.path().join("challenge.key");
        std::fs::write(&cp, "ab".repeat(32)).unwrap();
        assert!(NodeKey::read(&cp).is_err());
        std::fs::write(&cp, format!("{NODE_PREFIX} abcd")).unwrap();
        assert!(NodeKey::read(&cp)
            .err()
            .unwrap()
            .to_string()
            .contains("32 bytes"));
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let k = NodeKey::generate();
        let sig = k.sign(b"message");
        assert!(k.public().verify(b"message", &sig));
        assert!(!k.public().verify(b"messagf", &sig));
        assert!(!NodeKey::generate().public().verify(b"message", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!k.public().verify(b"message", &bad));
        let p = NodePublic::from_hex(&hex::encode(k.public().to_bytes())).unwrap();
        assert_eq!(p, k.public());
    }
}
