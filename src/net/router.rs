//! `pot node router`, first form: find the providers of a model on the network and hold each
//! to its receipts. For every provider Kademlia names for the claimed model's weight hash, the
//! router sends fresh secret challenge jobs over `/pot/job/1` and audits every one: the
//! receipt's signature under the key the provider's peer id names (a peer cannot answer with
//! another node's receipts), the weight hash, nonce, request and time window, then VRF-chosen
//! steps opened over `/pot/open/1` and re-executed with the router's own copy of the model
//! ([`crate::verify`]).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

use super::node::{self, NetOptions, Node};
use super::remote::RemoteProvider;
use super::NetError;
use crate::commit::keys::NodePublic;
use crate::verify::session::{Session, Tally};
use crate::verify::Verifier;

/// What a sweep needs.
pub struct SweepConfig {
    /// The router's network identity (a fresh one when it has no node key of its own).
    pub identity: libp2p::identity::Keypair,
    /// Addresses to listen on (none: dial out only).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through.
    pub bootstrap: Vec<Multiaddr>,
    /// Network options.
    pub net: NetOptions,
    /// How long to look for providers.
    pub discover: Duration,
    /// Jobs per provider.
    pub jobs: usize,
    /// Tokens per job.
    pub max_tokens: u32,
}

/// One provider's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct ProviderReport {
    /// Its peer id.
    pub peer: String,
    /// Its node key (what its receipts must verify under).
    pub node: String,
    /// Jobs, accepted, rejected, tokens, seconds.
    pub tally: Tally,
    /// Why jobs were rejected, or why the provider could not be audited.
    pub failures: Vec<String>,
}

/// A sweep's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    /// Seconds until the providers were found.
    pub discover_s: f64,
    /// Each provider found.
    pub providers: Vec<ProviderReport>,
}

impl SweepReport {
    /// Whether every job of every provider was accepted.
    pub fn all_accepted(&self) -> bool {
        self.providers
            .iter()
            .all(|p| p.failures.is_empty() && p.tally.rejected == 0 && p.tally.jobs > 0)
    }
}

/// Why a sweep could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SweepError {
    /// The network.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Nobody serves the model.
    #[error("no provider of weights {0} was found on the network; check --bootstrap, or wait for providers to join (--discover)")]
    NoProviders(String),
    /// The runtime.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Find the providers of `v`'s model and audit `cfg.jobs` jobs of each with `v`.
pub fn sweep(cfg: SweepConfig, v: &mut Verifier) -> Result<SweepReport, SweepError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(SweepError::Runtime)?;
    let hash = v.weight_hash;
    let t0 = Instant::now();
    let (client, peers) = rt.block_on(async {
        let swarm = node::swarm(cfg.identity.clone(), &cfg.net)?;
        let (node, client, mut events) = Node::new(swarm, 64);
        let node = node.with_limits(&cfg.net);
        tokio::spawn(node.run());
        // A router answers nothing yet; it drains what the network brings (and logs refusals).
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                if let super::Event::Refused { peer, reason } = e {
                    tracing::warn!(%peer, "refused: {reason}");
                }
            }
        });
        for a in &cfg.listen {
            client.listen(a.clone()).await?;
        }
        for b in &cfg.bootstrap {
            client.dial(b.clone()).await?;
        }
        let mut found = BTreeSet::new();
        while found.is_empty() && t0.elapsed() < cfg.discover {
            found.extend(client.providers(hash).await?);
            found.remove(&client.peer_id());
            if found.is_empty() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok::<_, SweepError>((client, found))
    })?;
    if peers.is_empty() {
        return Err(SweepError::NoProviders(hex::encode(hash)));
    }
    let discover_s = t0.elapsed().as_secs_f64();
    let mut reports = Vec::new();
    for peer in peers {
        reports.push(audit_provider(&cfg, v, &client, peer, rt.handle().clone()));
    }
    Ok(SweepReport {
        discover_s,
        providers: reports,
    })
}

fn audit_provider(
    cfg: &SweepConfig,
    v: &mut Verifier,
    client: &super::Client,
    peer: PeerId,
    rt: tokio::runtime::Handle,
) -> ProviderReport {
    let mut report = ProviderReport {
        peer: peer.to_string(),
        node: String::new(),
        tally: Tally::default(),
        failures: Vec::new(),
    };
    // The peer id is the key its receipts must verify under.
    let Some(node) = NodePublic::of_peer(&peer) else {
        report
            .failures
            .push("its peer id names no Ed25519 key, so no receipt of it can verify".into());
        return report;
    };
    report.node = hex::encode(node.to_bytes());
    v.node = node;
    let mut provider = RemoteProvider::new(client.clone(), peer, v.weight_hash, rt);
    let mut session = match Session::new(cfg.max_tokens) {
        Ok(s) => s,
        Err(e) => {
            report.failures.push(e.to_string());
            return report;
        }
    };
    for _ in 0..cfg.jobs {
        match session.job(v, &mut provider) {
            Ok(r) => {
                if let Some(why) = r.rejection {
                    report.failures.push(why.to_string());
                }
            }
            Err(e) => {
                report.failures.push(crate::with_causes(&e));
                break;
            }
        }
    }
    report.tally = session.tally().clone();
    report
}
