//! `pot node`: providers and routers on a libp2p network.
//!
//! A node's libp2p identity is its Ed25519 node key, the key that signs its receipts: a
//! receipt's signer is a peer id, and a peer id names the key its receipts must verify under.
//! Transports: TCP (noise, yamux) and QUIC. Discovery: mDNS on a local network, Kademlia
//! beyond it, where providers advertise the canonical weight hashes they serve as provider
//! records. Protocols (request-response, one CBOR value each way, [`codec`]):
//!
//! | protocol       | request                          | answer                                   | limits (request / answer) |
//! |----------------|----------------------------------|------------------------------------------|---------------------------|
//! | `/pot/job/1`   | [`message::JobMsg`]              | [`message::JobAnswer`] (text + receipt)  | 1 MiB / 4 MiB             |
//! | `/pot/open/1`  | [`crate::commit::receipt::OpenRequest`] | [`message::OpenAnswer`] (opening) | 64 KiB / 4 MiB            |
//!
//! Gossipsub topic `/pot/announce/1` carries signed [`message::Announcement`]s, each checked
//! (signature, and published by the node it names) before it is forwarded; `/pot/audit/1`
//! carries routers' [`message::AuditReport`]s of proven cheats, relayed only when their
//! evidence holds the checks that need no model ([`message::AuditReport::check`]). A forged or
//! unfounded message is rejected, which costs its sender gossipsub score. Messages are at most
//! 1 MiB and signed by their publisher (gossipsub's strict mode).
//!
//! Routers ([`gateway`]) keep each provider's record and bans in [`reputation`]; the threat
//! model is in `docs/network.md`.

pub mod codec;
pub mod gateway;
pub mod message;
pub mod node;
pub mod provider;
pub mod remote;
pub mod reputation;
pub mod router;

use libp2p::StreamProtocol;

pub use node::{Behaviour, Client, Event, NetOptions, Node};

/// Jobs.
pub const JOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/pot/job/1");
/// Openings.
pub const OPEN_PROTOCOL: StreamProtocol = StreamProtocol::new("/pot/open/1");
/// pot's own Kademlia network (not the IPFS DHT).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/pot/kad/1.0.0");
/// What identify says a pot node speaks.
pub const IDENTIFY_PROTOCOL: &str = "/pot/1";
/// Announcements.
pub const ANNOUNCE_TOPIC: &str = "/pot/announce/1";
/// Audit reports: proven cheats, with their evidence.
pub const REPORT_TOPIC: &str = "/pot/audit/1";

/// The largest job request: a prompt of 128k token ids fits.
pub const MAX_JOB_BYTES: usize = 1 << 20;
/// The largest answer to a job.
pub const MAX_JOB_ANSWER_BYTES: usize = crate::commit::wire::MAX_MESSAGE_BYTES;
/// The largest opening request.
pub const MAX_OPEN_BYTES: usize = 64 << 10;
/// The largest opening ([`crate::commit::wire::MAX_OPEN_STEPS`] steps fit).
pub const MAX_OPEN_ANSWER_BYTES: usize = crate::commit::wire::MAX_MESSAGE_BYTES;
/// The largest gossip message (an audit report carries a receipt with its output tokens and
/// an opening of a few steps).
pub const MAX_GOSSIP_BYTES: usize = 1 << 20;

/// What can go wrong on the network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Building the node.
    #[error("cannot start the network: {0}")]
    Setup(String),
    /// The node's task has stopped.
    #[error("the network task has stopped")]
    Closed,
    /// Listening.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// Address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// An address without a peer id.
    #[error("{0}: the address must end in /p2p/<peer id> (as a node prints it when it starts)")]
    NoPeerId(String),
    /// Dialing.
    #[error("cannot connect to {addr}: {reason}")]
    Dial {
        /// Address or peer.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A request failed (no answer, a timeout, a closed connection, a malformed answer).
    #[error("peer {peer}: {reason}")]
    Request {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A Kademlia query failed.
    #[error("discovery: {0}")]
    Discovery(String),
    /// Gossip.
    #[error("cannot publish: {0}")]
    Publish(String),
}

/// Parse a multiaddress given on the command line, naming it when it does not parse.
pub fn parse_addr(text: &str) -> Result<libp2p::Multiaddr, NetError> {
    text.parse().map_err(|e| NetError::Setup(format!(
        "{text:?} is not a multiaddress ({e}); write it as /ip4/127.0.0.1/tcp/4001/p2p/<peer id> or /ip4/0.0.0.0/udp/0/quic-v1"
    )))
}

#[cfg(test)]
mod tests;
