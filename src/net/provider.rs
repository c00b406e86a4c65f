//! `pot node provider`: a model served to the network. Jobs on `/pot/job/1` are run,
//! committed, signed and kept for audits by the same engine as `pot serve --node-key`
//! ([`Service`]); openings on `/pot/open/1` reveal only the steps a router's VRF proof picks.
//! The node advertises its weight hash on Kademlia and announces itself on gossip.

use std::time::Duration;

use libp2p::Multiaddr;
use tokio::sync::mpsc;

use super::message::{JobAnswer, OpenAnswer, JOB_VERSION};
use super::node::{self, Event, NetOptions, Node};
use super::{Client, NetError};
use crate::serve::service::{Disguise, Service};
use crate::serve::{ServeConfig, ServeError};

/// What a provider needs.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// The model, node key, store and limits, as for `pot serve`.
    pub serve: ServeConfig,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through (each ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Network options.
    pub net: NetOptions,
    /// How often the node re-announces itself on gossip.
    pub announce_every: Duration,
    /// Lies to tell (tests of routers only; honest nodes leave it empty).
    pub disguise: Disguise,
}

/// Where a provider listens, once it does.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Listening {
    /// Always "listening".
    pub event: &'static str,
    /// Its peer id (its receipt key).
    pub peer: String,
    /// Its addresses, each ending in `/p2p/<peer>`.
    pub addrs: Vec<String>,
    /// The model's name.
    pub model: String,
    /// The weight hash it advertises.
    pub weight_hash: String,
}

/// Why a provider stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The model, key or store.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The network.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The runtime.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Load the model, join the network, and answer jobs until SIGINT or SIGTERM; `on_listening`
/// is told where the node listens once it does.
pub fn run(
    cfg: ProviderConfig,
    on_listening: impl FnOnce(&Listening),
) -> Result<(), ProviderError> {
    // The key and the store are read before the model: a bad file is named at once.
    let (service, _engine) = Service::start_disguised(cfg.serve.clone(), cfg.disguise.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ProviderError::Runtime)?;
    rt.block_on(async move {
        let swarm = node::swarm(service.libp2p_keypair(), &cfg.net)?;
        let (node, client, events) = Node::new(swarm, 64);
        let node = node.with_limits(&cfg.net);
        tokio::spawn(node.run());
        let mut addrs = Vec::new();
        for a in &cfg.listen {
            addrs.push(client.listen(a.clone()).await?);
        }
        for b in &cfg.bootstrap {
            client.dial(b.clone()).await?;
        }
        let listening = client.listening().await?;
        on_listening(&Listening {
            event: "listening",
            peer: client.peer_id().to_string(),
            addrs: listening.iter().map(|a| a.to_string()).collect(),
            model: service.name().to_string(),
            weight_hash: hex::encode(service.weight_hash()),
        });
        if let Err(e) = client.provide(service.weight_hash()).await {
            // Kept locally and re-published by Kademlia; routers that ask find it.
            tracing::warn!("the provider record was not stored on other peers yet: {e}");
        }
        let announcing = announce_loop(service.clone(), client.clone(), cfg.announce_every);
        tokio::select! {
            _ = answer(service, client, events) => {},
            _ = announcing => {},
            _ = crate::serve::wait_for_signal() => eprintln!("pot node: stopping"),
        }
        Ok(())
    })
}

/// Announce the node now and then (an announcement fails while no peer shares the topic).
async fn announce_loop(service: Service, client: Client, every: Duration) {
    loop {
        let a = service.announcement(crate::transcript::unix_now_ms());
        if let Err(e) = client.announce(a).await {
            tracing::debug!("announcement not sent: {e}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Answer the network's jobs and openings with `service`, each in a task of its own.
pub async fn answer(service: Service, client: Client, mut events: mpsc::Receiver<Event>) {
    while let Some(e) = events.recv().await {
        let (service, client) = (service.clone(), client.clone());
        match e {
            Event::Job {
                peer,
                request,
                channel,
            } => {
                tokio::spawn(async move {
                    if service.stalls() {
                        // Hold the request open and never answer.
                        let _held = channel;
                        std::future::pending::<()>().await;
                        return;
                    }
                    let answer = run_job(&service, request).await;
                    if let JobAnswer::Refused { reason } = &answer {
                        tracing::info!(%peer, "job refused: {reason}");
                    }
                    let _ = client.answer_job(channel, answer).await;
                });
            }
            Event::Open {
                peer,
                request,
                channel,
            } => {
                tokio::spawn(async move {
                    let answer = match service.open(request).await {
                        Ok(o) => OpenAnswer::Opened(o),
                        Err(e) => OpenAnswer::Refused { reason: e.message },
                    };
                    if let OpenAnswer::Refused { reason } = &answer {
                        tracing::info!(%peer, "opening refused: {reason}");
                    }
                    let _ = client.answer_open(channel, answer).await;
                });
            }
            Event::Announced { .. } | Event::Reported { .. } | Event::Refused { .. } => {}
        }
    }
}

/// A job's answer: run by `service`, or refused (another version, other weights, a bad request).
async fn run_job(service: &Service, request: super::message::JobMsg) -> JobAnswer {
    let refuse = |reason| JobAnswer::Refused { reason };
    if request.version != JOB_VERSION {
        return refuse(format!(
            "job version {} (this node speaks {JOB_VERSION})",
            request.version
        ));
    }
    if request.weight_hash.0 != service.weight_hash() {
        return refuse(format!(
            "this node serves weights {}, not {}",
            hex::encode(service.weight_hash()),
            request.weight_hash
        ));
    }
    match service.job(request.request, request.nonce.0).await {
        Ok((text, receipt)) => JobAnswer::Done {
            text,
            receipt: Box::new(receipt),
        },
        Err(e) => refuse(e.message),
    }
}
