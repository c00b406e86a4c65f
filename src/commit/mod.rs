//! Proof of inference: what a provider commits to while it generates, so that a router can
//! later check chosen steps by re-running them.
//!
//! * [`step`]: the per-step data (top-k log-probabilities, coarsely coded) and the tolerance
//!   rule that compares it with a re-execution;
//! * [`merkle`]: the RFC 9162 tree over the steps;
//! * [`receipt`]: the signed receipt of a job (Ed25519 over a fixed byte layout) and the
//!   provider side ([`receipt::Prover`], openings);
//! * [`select`]: the router's VRF choice of audited steps;
//! * [`keys`]: node and router keys and their files; [`wire`]: JSON and CBOR messages;
//! * [`store`]: the provider's on-disk store of step data for audits.
//!
//! This room runs no model and decides nothing: the router that re-executes lives in
//! `crate::verify`. It uses maintained primitives only (`sha2`, `ed25519-dalek`,
//! `schnorrkel`); nothing here is home-made cryptography.

pub mod keys;
pub mod merkle;
pub mod receipt;
pub mod select;
pub mod step;
pub mod store;
pub mod wire;

/// What can go wrong with keys, messages and the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// A key file.
    #[error("{path}: {reason}")]
    KeyFile {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A message that does not parse or does not fit the protocol.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message over the size limit.
    #[error(
        "{what} of {bytes} bytes is over the limit of {} bytes",
        wire::MAX_MESSAGE_BYTES
    )]
    TooLarge {
        /// Which message.
        what: String,
        /// Its size.
        bytes: usize,
    },
    /// The step store's database failed.
    #[error("{path}: step store: {source}")]
    Store {
        /// Its file.
        path: String,
        /// redb's error (boxed: it is large).
        #[source]
        source: Box<redb::Error>,
    },
    /// The step store cannot be opened or created.
    #[error("{path}: step store: cannot open it ({source}); point --store at a writable file of pot's, or remove a damaged one")]
    StoreOpen {
        /// Its file.
        path: String,
        /// redb's error (boxed: it is large).
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// A job the step store refuses or a record it cannot read back.
    #[error("{path}: step store: {reason}")]
    StoreRecord {
        /// Its file.
        path: String,
        /// What is wrong (and the fix, where there is one).
        reason: String,
    },
}
