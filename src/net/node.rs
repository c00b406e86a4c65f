//! One task owns the libp2p swarm ([`Node::run`]); everything else talks to it through a
//! [`Client`] (commands with a reply channel each) and reads what the network brings from an
//! [`Event`] stream: the shape of rust-libp2p's file-sharing example.
//!
//! The behaviour: identify (addresses for Kademlia), ping, Kademlia (provider records keyed by
//! canonical weight hashes), mDNS on a local network (optional), gossipsub (signed messages,
//! strict validation, every message checked by pot before it is forwarded), and two
//! request-response protocols, `/pot/job/1` and `/pot/open/1`, through [`CborCodec`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, identity, kad, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, CborCodec, Inbound};
use super::message::{Announcement, AuditReport, JobAnswer, JobMsg, OpenAnswer};
use super::{
    NetError, ANNOUNCE_TOPIC, IDENTIFY_PROTOCOL, JOB_PROTOCOL, KAD_PROTOCOL, MAX_GOSSIP_BYTES,
    MAX_JOB_ANSWER_BYTES, MAX_JOB_BYTES, MAX_OPEN_ANSWER_BYTES, MAX_OPEN_BYTES, OPEN_PROTOCOL,
    REPORT_TOPIC,
};
use crate::commit::receipt::OpenRequest;

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// Discover peers on the local network by mDNS.
    pub mdns: bool,
    /// How long a request may wait for its answer (a provider generating a long output needs
    /// time; a peer that stalls past it fails the request).
    pub request_timeout: Duration,
    /// Requests one connection may have in flight; libp2p drops streams past it.
    pub max_concurrent_streams: usize,
    /// Requests one peer may have in flight at this node (jobs and openings together); more
    /// are refused with the reason, and reported as [`Event::Refused`] (a flood).
    pub max_in_flight_per_peer: usize,
    /// Refusals a peer may earn (malformed, oversized or forged messages, floods) before this
    /// node disconnects it and refuses its connections until the node restarts.
    pub max_strikes: usize,
    /// Gossipsub heartbeat.
    pub heartbeat: Duration,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            mdns: true,
            request_timeout: Duration::from_secs(300),
            max_concurrent_streams: 32,
            max_in_flight_per_peer: 16,
            max_strikes: 100,
            heartbeat: Duration::from_secs(1),
        }
    }
}

pub use behaviour::{Behaviour, BehaviourEvent};

/// The derived behaviour and its event enum (whose variants the derive leaves undocumented:
/// one per field below, carrying that protocol's events).
mod behaviour {
    #![allow(missing_docs)]
    use super::*;

    /// pot's network behaviour.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// Who a peer is and where it listens.
        pub identify: identify::Behaviour,
        /// Liveness.
        pub ping: ping::Behaviour,
        /// Discovery beyond the local network: provider records of weight hashes.
        pub kad: kad::Behaviour<kad::store::MemoryStore>,
        /// Discovery on the local network.
        pub mdns: Toggle<mdns::tokio::Behaviour>,
        /// Announcements.
        pub gossip: gossipsub::Behaviour,
        /// `/pot/job/1`.
        pub job: request_response::Behaviour<CborCodec<JobMsg, JobAnswer>>,
        /// `/pot/open/1`.
        pub open: request_response::Behaviour<CborCodec<OpenRequest, OpenAnswer>>,
    }
}

impl Behaviour {
    /// The behaviour of a node with identity `key`.
    pub fn new(key: &identity::Keypair, opts: &NetOptions) -> Result<Self, NetError> {
        let peer = key.public().to_peer_id();
        let setup = |what: &str, e: &dyn std::fmt::Display| NetError::Setup(format!("{what}: {e}"));
        let mut kad = kad::Behaviour::with_config(
            peer,
            kad::store::MemoryStore::new(peer),
            kad::Config::new(KAD_PROTOCOL),
        );
        kad.set_mode(Some(kad::Mode::Server));
        let mdns = if opts.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer)
                    .map_err(|e| setup("mDNS", &e))?,
            )
        } else {
            None
        };
        let gossip_cfg = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(MAX_GOSSIP_BYTES)
            .heartbeat_interval(opts.heartbeat)
            // A message's id is its content's hash: the same announcement relayed twice is one.
            .message_id_fn(|m: &gossipsub::Message| {
                use sha2::Digest;
                gossipsub::MessageId::from(sha2::Sha256::digest(&m.data).to_vec())
            })
            .build()
            .map_err(|e| setup("gossipsub", &e))?;
        let mut gossip = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_cfg,
        )
        .map_err(|e| setup("gossipsub", &e))?;
        for topic in [ANNOUNCE_TOPIC, REPORT_TOPIC] {
            gossip
                .subscribe(&gossipsub::IdentTopic::new(topic))
                .map_err(|e| setup("gossipsub", &e))?;
        }
        let rr = |timeout| {
            request_response::Config::default()
                .with_request_timeout(timeout)
                .with_max_concurrent_streams(opts.max_concurrent_streams)
        };
        Ok(Self {
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("pot/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::default(),
            kad,
            mdns: mdns.into(),
            gossip,
            job: request_response::Behaviour::with_codec(
                CborCodec::new(MAX_JOB_BYTES, MAX_JOB_ANSWER_BYTES),
                [(JOB_PROTOCOL, ProtocolSupport::Full)],
                rr(opts.request_timeout),
            ),
            open: request_response::Behaviour::with_codec(
                CborCodec::new(MAX_OPEN_BYTES, MAX_OPEN_ANSWER_BYTES),
                [(OPEN_PROTOCOL, ProtocolSupport::Full)],
                rr(opts.request_timeout),
            ),
        })
    }
}

/// A swarm on TCP and QUIC (noise and yamux over TCP) with identity `key`.
pub fn swarm(key: identity::Keypair, opts: &NetOptions) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let opts = opts.clone();
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_quic()
        .with_behaviour(|k| {
            Behaviour::new(k, &opts)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build())
}

/// What the network brings to the application.
#[derive(Debug)]
pub enum Event {
    /// A job to run; answer with [`Client::answer_job`].
    Job {
        /// From.
        peer: PeerId,
        /// The job.
        request: JobMsg,
        /// Where the answer goes.
        channel: ResponseChannel<JobAnswer>,
    },
    /// Steps to open; answer with [`Client::answer_open`].
    Open {
        /// From.
        peer: PeerId,
        /// The request.
        request: OpenRequest,
        /// Where the answer goes.
        channel: ResponseChannel<OpenAnswer>,
    },
    /// A checked announcement.
    Announced {
        /// Who published it.
        peer: PeerId,
        /// What it says.
        announcement: Announcement,
    },
    /// A router's report of a proven cheat, whose evidence passed the checks that need no
    /// model; the application re-executes before it acts on it.
    Reported {
        /// The router that published it.
        peer: PeerId,
        /// The report.
        report: Box<AuditReport>,
    },
    /// Something a peer sent was refused (malformed, oversized, forged, stalled): logged, and
    /// the application may hold it against the peer.
    Refused {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
}

type Reply<T> = oneshot::Sender<Result<T, NetError>>;

enum Command {
    Listen(Multiaddr, Reply<Multiaddr>),
    Dial(Multiaddr, Reply<PeerId>),
    Provide([u8; 32], Reply<()>),
    Providers([u8; 32], Reply<HashSet<PeerId>>),
    Job(PeerId, JobMsg, Reply<JobAnswer>),
    Open(PeerId, OpenRequest, Reply<OpenAnswer>),
    AnswerJob(ResponseChannel<JobAnswer>, JobAnswer),
    AnswerOpen(ResponseChannel<OpenAnswer>, OpenAnswer),
    Announce(Announcement, Reply<()>),
    Report(Box<AuditReport>, Reply<()>),
    Listening(oneshot::Sender<Vec<Multiaddr>>),
}

/// A handle on the node's task. Cheap to clone; every call fails with [`NetError::Closed`]
/// once the task has stopped.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    peer: PeerId,
}

impl Client {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| NetError::Closed)?;
        rx.await.map_err(|_| NetError::Closed)?
    }

    /// Listen on `addr`; the address actually bound (a port 0 resolved).
    pub async fn listen(&self, addr: Multiaddr) -> Result<Multiaddr, NetError> {
        self.ask(|r| Command::Listen(addr, r)).await
    }

    /// The addresses this node listens on, each ending in `/p2p/<peer id>`.
    pub async fn listening(&self) -> Result<Vec<Multiaddr>, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Listening(tx))
            .await
            .map_err(|_| NetError::Closed)?;
        rx.await.map_err(|_| NetError::Closed)
    }

    /// Connect to the peer at `addr`, which must end in `/p2p/<peer id>`.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        self.ask(|r| Command::Dial(addr, r)).await
    }

    /// Advertise this node as a provider of the weights `weight_hash` names.
    pub async fn provide(&self, weight_hash: [u8; 32]) -> Result<(), NetError> {
        self.ask(|r| Command::Provide(weight_hash, r)).await
    }

    /// The peers that advertise the weights `weight_hash` names.
    pub async fn providers(&self, weight_hash: [u8; 32]) -> Result<HashSet<PeerId>, NetError> {
        self.ask(|r| Command::Providers(weight_hash, r)).await
    }

    /// Send a job and wait for the answer.
    pub async fn job(&self, peer: PeerId, job: JobMsg) -> Result<JobAnswer, NetError> {
        self.ask(|r| Command::Job(peer, job, r)).await
    }

    /// Ask for an opening and wait for the answer.
    pub async fn open(&self, peer: PeerId, req: OpenRequest) -> Result<OpenAnswer, NetError> {
        self.ask(|r| Command::Open(peer, req, r)).await
    }

    /// Answer a job.
    pub async fn answer_job(
        &self,
        channel: ResponseChannel<JobAnswer>,
        answer: JobAnswer,
    ) -> Result<(), NetError> {
        self.tx
            .send(Command::AnswerJob(channel, answer))
            .await
            .map_err(|_| NetError::Closed)
    }

    /// Answer an opening request.
    pub async fn answer_open(
        &self,
        channel: ResponseChannel<OpenAnswer>,
        answer: OpenAnswer,
    ) -> Result<(), NetError> {
        self.tx
            .send(Command::AnswerOpen(channel, answer))
            .await
            .map_err(|_| NetError::Closed)
    }

    /// Publish an announcement (fails while no peer shares the topic).
    pub async fn announce(&self, a: Announcement) -> Result<(), NetError> {
        self.ask(|r| Command::Announce(a, r)).await
    }

    /// Publish an audit report (fails while no peer shares the topic).
    pub async fn report(&self, report: AuditReport) -> Result<(), NetError> {
        self.ask(|r| Command::Report(Box::new(report), r)).await
    }
}

/// The task that owns the swarm.
pub struct Node {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    listens: HashMap<libp2p::core::transport::ListenerId, Reply<Multiaddr>>,
    dials: HashMap<PeerId, Vec<Reply<PeerId>>>,
    provides: HashMap<kad::QueryId, Reply<()>>,
    finds: HashMap<kad::QueryId, (HashSet<PeerId>, Reply<HashSet<PeerId>>)>,
    jobs: HashMap<OutboundRequestId, Reply<JobAnswer>>,
    opens: HashMap<OutboundRequestId, Reply<OpenAnswer>>,
    /// Requests each peer has in flight here, and which request is whose.
    inbound: HashMap<PeerId, usize>,
    inbound_ids: HashMap<libp2p::request_response::InboundRequestId, PeerId>,
    max_per_peer: usize,
    /// Refusals per peer, and the peers cut off for too many.
    strikes: HashMap<PeerId, usize>,
    max_strikes: usize,
    blocked: HashSet<PeerId>,
}

impl Node {
    /// A node over `swarm`, its client, and the stream of its events (at most `backlog`
    /// waiting: a slow application slows the network task, it does not grow its memory).
    pub fn new(swarm: Swarm<Behaviour>, backlog: usize) -> (Node, Client, mpsc::Receiver<Event>) {
        let (tx, commands) = mpsc::channel(64);
        let (events, rx) = mpsc::channel(backlog.max(1));
        let client = Client {
            tx,
            peer: *swarm.local_peer_id(),
        };
        let node = Node {
            swarm,
            commands,
            events,
            listens: HashMap::new(),
            dials: HashMap::new(),
            provides: HashMap::new(),
            finds: HashMap::new(),
            jobs: HashMap::new(),
            opens: HashMap::new(),
            inbound: HashMap::new(),
            inbound_ids: HashMap::new(),
            max_per_peer: NetOptions::default().max_in_flight_per_peer,
            strikes: HashMap::new(),
            max_strikes: NetOptions::default().max_strikes,
            blocked: HashSet::new(),
        };
        (node, client, rx)
    }

    /// Refuse a peer's requests past `n` in flight (default 16).
    pub fn limit_per_peer(mut self, n: usize) -> Self {
        self.max_per_peer = n.max(1);
        self
    }

    /// Cut a peer off after `n` refusals (default 100).
    pub fn limit_strikes(mut self, n: usize) -> Self {
        self.max_strikes = n.max(1);
        self
    }

    /// The limits of `opts`.
    pub fn with_limits(self, opts: &NetOptions) -> Self {
        self.limit_per_peer(opts.max_in_flight_per_peer)
            .limit_strikes(opts.max_strikes)
    }

    fn start_inbound(&mut self, id: libp2p::request_response::InboundRequestId, peer: PeerId) {
        *self.inbound.entry(peer).or_default() += 1;
        self.inbound_ids.insert(id, peer);
    }

    fn done_inbound(&mut self, id: &libp2p::request_response::InboundRequestId) {
        let Some(peer) = self.inbound_ids.remove(id) else {
            return;
        };
        if let Some(n) = self.inbound.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.inbound.remove(&peer);
            }
        }
    }

    /// Run until every [`Client`] is dropped.
    pub async fn run(mut self) {
        loop {
            tokio::select! {
                e = self.swarm.select_next_some() => self.on_swarm(e).await,
                c = self.commands.recv() => match c {
                    Some(c) => self.on_command(c),
                    None => return,
                },
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Listen(addr, reply) => match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    self.listens.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(NetError::Listen {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    }));
                }
            },
            Command::Listening(reply) => {
                let me = *self.swarm.local_peer_id();
                let addrs = self
                    .swarm
                    .listeners()
                    .map(|a| a.clone().with(Protocol::P2p(me)))
                    .collect();
                let _ = reply.send(addrs);
            }
            Command::Dial(addr, reply) => {
                let Some(peer) = peer_of(&addr) else {
                    let _ = reply.send(Err(NetError::NoPeerId(addr.to_string())));
                    return;
                };
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(peer));
                    return;
                }
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
                match self.swarm.dial(addr.clone()) {
                    Ok(()) => self.dials.entry(peer).or_default().push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dial {
                            addr: addr.to_string(),
                            reason: e.to_string(),
                        }));
                    }
                }
            }
            Command::Provide(hash, reply) => match self
                .swarm
                .behaviour_mut()
                .kad
                .start_providing(hash.to_vec().into())
            {
                Ok(q) => {
                    self.provides.insert(q, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(NetError::Discovery(e.to_string())));
                }
            },
            Command::Providers(hash, reply) => {
                let q = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(hash.to_vec().into());
                self.finds.insert(q, (HashSet::new(), reply));
            }
            Command::Job(peer, job, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .job
                    .send_request(&peer, Inbound::Message(job));
                self.jobs.insert(id, reply);
            }
            Command::Open(peer, req, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .open
                    .send_request(&peer, Inbound::Message(req));
                self.opens.insert(id, reply);
            }
            Command::AnswerJob(ch, a) => {
                if self.swarm.behaviour_mut().job.send_response(ch, a).is_err() {
                    tracing::debug!("a job's requester left before its answer");
                }
            }
            Command::AnswerOpen(ch, a) => {
                if self
                    .swarm
                    .behaviour_mut()
                    .open
                    .send_response(ch, a)
                    .is_err()
                {
                    tracing::debug!("an opening's requester left before its answer");
                }
            }
            Command::Announce(a, reply) => {
                let _ = reply.send(self.publish(ANNOUNCE_TOPIC, &a, "announcement"));
            }
            Command::Report(a, reply) => {
                let _ = reply.send(self.publish(REPORT_TOPIC, &*a, "audit report"));
            }
        }
    }

    fn publish(
        &mut self,
        topic: &str,
        v: &impl serde::Serialize,
        what: &str,
    ) -> Result<(), NetError> {
        let bytes = codec::encode(v, MAX_GOSSIP_BYTES, what)
            .map_err(|e| NetError::Publish(e.to_string()))?;
        self.swarm
            .behaviour_mut()
            .gossip
            .publish(gossipsub::IdentTopic::new(topic), bytes)
            .map(|_| ())
            .map_err(|e| NetError::Publish(e.to_string()))
    }

    async fn emit(&mut self, e: Event) {
        // The application went away: nothing left to tell.
        let _ = self.events.send(e).await;
    }

    async fn refuse(&mut self, peer: PeerId, reason: String) {
        tracing::warn!(%peer, "refused: {reason}");
        let n = self.strikes.entry(peer).or_default();
        *n += 1;
        if *n >= self.max_strikes && self.blocked.insert(peer) {
            tracing::warn!(%peer, "cut off after {} refusals", self.max_strikes);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.emit(Event::Refused { peer, reason }).await;
    }

    async fn on_swarm(&mut self, e: SwarmEvent<BehaviourEvent>) {
        match e {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if let Some(reply) = self.listens.remove(&listener_id) {
                    let _ = reply.send(Ok(address));
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(reply) = self.listens.remove(&listener_id) {
                    let _ = reply.send(Err(NetError::Listen {
                        addr: String::new(),
                        reason: format!("{reason:?}"),
                    }));
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. }
                if self.blocked.contains(&peer_id) =>
            {
                let _ = self.swarm.disconnect_peer_id(peer_id);
                for reply in self.dials.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Err(NetError::Dial {
                        addr: peer_id.to_string(),
                        reason: "this node cut the peer off for misbehaving".into(),
                    }));
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                for reply in self.dials.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                for reply in self.dials.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(NetError::Dial {
                        addr: peer.to_string(),
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::Behaviour(b) => self.on_behaviour(b).await,
            _ => {}
        }
    }

    async fn on_behaviour(&mut self, e: BehaviourEvent) {
        match e {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                for a in info.listen_addrs {
                    kad.add_address(&peer_id, a);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => self.on_query(id, result, step.last),
            BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let verdict = match message.source {
                    None => Err("an unsigned message".to_string()),
                    Some(publisher) => check_gossip(&message.topic, &message.data, publisher),
                };
                let acceptance = match &verdict {
                    Ok(_) => gossipsub::MessageAcceptance::Accept,
                    Err(_) => gossipsub::MessageAcceptance::Reject,
                };
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                match verdict {
                    Ok(e) => self.emit(e).await,
                    Err(reason) => {
                        self.refuse(propagation_source, format!("gossip: {reason}"))
                            .await
                    }
                }
            }
            BehaviourEvent::Job(e) => {
                self.on_exchange(
                    e,
                    JOB_PROTOCOL,
                    |n| &mut n.jobs,
                    |peer, request, channel| Event::Job {
                        peer,
                        request,
                        channel,
                    },
                    |reason| JobAnswer::Refused { reason },
                    |b, ch, a| b.job.send_response(ch, a).is_ok(),
                )
                .await
            }
            BehaviourEvent::Open(e) => {
                self.on_exchange(
                    e,
                    OPEN_PROTOCOL,
                    |n| &mut n.opens,
                    |peer, request, channel| Event::Open {
                        peer,
                        request,
                        channel,
                    },
                    |reason| OpenAnswer::Refused { reason },
                    |b, ch, a| b.open.send_response(ch, a).is_ok(),
                )
                .await
            }
            _ => {}
        }
    }

    /// One request-response protocol's events: requests go to the application, refused ones
    /// are answered with the reason and held against their sender, and the answers (or
    /// failures) of the requests this node sent complete them.
    #[allow(clippy::too_many_arguments)]
    async fn on_exchange<Req, Resp>(
        &mut self,
        e: request_response::Event<Inbound<Req>, Resp>,
        protocol: libp2p::StreamProtocol,
        pending: fn(&mut Node) -> &mut HashMap<OutboundRequestId, Reply<Resp>>,
        deliver: fn(PeerId, Req, ResponseChannel<Resp>) -> Event,
        refusal: fn(String) -> Resp,
        respond: fn(&mut Behaviour, ResponseChannel<Resp>, Resp) -> bool,
    ) {
        match e {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request,
                    channel,
                    request_id,
                } => {
                    // Counted until its answer (or refusal) is sent.
                    self.start_inbound(request_id, peer);
                    let flood = self.inbound[&peer] > self.max_per_peer;
                    let reason = match request {
                        Inbound::Message(_) if flood => format!(
                            "{protocol}: too many requests in flight from this peer (at most {})",
                            self.max_per_peer
                        ),
                        Inbound::Message(request) => {
                            return self.emit(deliver(peer, request, channel)).await
                        }
                        Inbound::Refused(reason) => reason,
                    };
                    respond(self.swarm.behaviour_mut(), channel, refusal(reason.clone()));
                    self.refuse(peer, reason).await
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = pending(self).remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = pending(self).remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer: peer.to_string(),
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure {
                peer,
                error,
                request_id,
                ..
            } => {
                self.done_inbound(&request_id);
                self.refuse(peer, format!("{protocol}: {error}")).await
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.done_inbound(&request_id)
            }
        }
    }

    fn on_query(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
        match result {
            kad::QueryResult::StartProviding(r) => {
                if let Some(reply) = self.provides.remove(&id) {
                    let _ = reply.send(
                        r.map(|_| ())
                            .map_err(|e| NetError::Discovery(e.to_string())),
                    );
                }
            }
            kad::QueryResult::GetProviders(r) => {
                if let Some((found, _)) = self.finds.get_mut(&id) {
                    if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = r {
                        found.extend(providers);
                    }
                }
                if last {
                    if let Some((found, reply)) = self.finds.remove(&id) {
                        let _ = reply.send(Ok(found));
                    }
                }
            }
            _ => {}
        }
    }
}

/// A gossip message as the event it brings, or why it is rejected.
fn check_gossip(
    topic: &gossipsub::TopicHash,
    data: &[u8],
    publisher: PeerId,
) -> Result<Event, String> {
    if *topic == gossipsub::IdentTopic::new(ANNOUNCE_TOPIC).hash() {
        let a: Announcement =
            codec::decode(data, MAX_GOSSIP_BYTES, "announcement").map_err(|e| e.to_string())?;
        a.check(&publisher)?;
        Ok(Event::Announced {
            peer: publisher,
            announcement: a,
        })
    } else if *topic == gossipsub::IdentTopic::new(REPORT_TOPIC).hash() {
        let r: AuditReport =
            codec::decode(data, MAX_GOSSIP_BYTES, "audit report").map_err(|e| e.to_string())?;
        r.check()?;
        Ok(Event::Reported {
            peer: publisher,
            report: Box::new(r),
        })
    } else {
        Err(format!(
            "a message on topic {topic}, which pot does not use"
        ))
    }
}

/// The peer id an address ends with (`/p2p/<id>`).
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}
