//! Protocol tests: nodes on libp2p's in-memory transport (libp2p-swarm-test) and on loopback
//! TCP, each node's swarm owned by its [`Node`] task as in `pot node`.

use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm};
use libp2p_swarm_test::SwarmExt;
use tokio::sync::mpsc;

use super::codec::CborCodec;
use super::message::{Announcement, JobAnswer, JobMsg, OpenAnswer};
use super::node::{self, Behaviour, Event, NetOptions, Node};
use super::*;
use crate::commit::keys::NodeKey;
use crate::model::Kernels;

fn opts() -> NetOptions {
    NetOptions {
        mdns: false,
        request_timeout: Duration::from_secs(10),
        heartbeat: Duration::from_millis(200),
        ..Default::default()
    }
}

/// A stand-in provider application: it answers every job with a refusal that echoes the job's
/// `max_tokens`, every opening with a refusal, and passes what the network refused to `refused`.
fn answer_all(client: Client, mut events: mpsc::Receiver<Event>, refused: mpsc::Sender<String>) {
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match e {
                Event::Job {
                    request, channel, ..
                } => {
                    let reason = format!("echo {}", request.request.max_tokens);
                    let _ = client
                        .answer_job(channel, JobAnswer::Refused { reason })
                        .await;
                }
                Event::Open { channel, .. } => {
                    let reason = "no such job".to_string();
                    let _ = client
                        .answer_open(channel, OpenAnswer::Refused { reason })
                        .await;
                }
                Event::Refused { reason, .. } => {
                    let _ = refused.send(reason).await;
                }
                Event::Announced { announcement, .. } => {
                    let _ = refused
                        .send(format!("announced {}", announcement.name))
                        .await;
                }
                Event::Reported { report, .. } => {
                    let _ = refused
                        .send(format!("reported {}", report.evidence.rejection))
                        .await;
                }
            }
        }
    });
}

/// A peer that speaks `/pot/job/1` with any bytes it likes.
type Raw = request_response::Behaviour<CborCodec<serde_bytes::ByteBuf, JobAnswer>>;

fn raw_peer() -> Swarm<Raw> {
    Swarm::new_ephemeral_tokio(|_| {
        request_response::Behaviour::with_codec(
            CborCodec::new(64 << 20, 64 << 20),
            [(JOB_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
        )
    })
}

/// Send `bytes` (as one CBOR byte string) from `raw` to `peer`: the answer, or the failure.
async fn raw_send(raw: &mut Swarm<Raw>, peer: PeerId, bytes: Vec<u8>) -> Result<JobAnswer, String> {
    raw.behaviour_mut().send_request(
        &peer,
        super::codec::Inbound::Message(serde_bytes::ByteBuf::from(bytes)),
    );
    loop {
        match raw.next_swarm_event().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => return Ok(response),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                return Err(error.to_string())
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn jobs_cross_and_oversized_or_malformed_requests_are_refused_while_the_node_stays_up() {
    let mut provider = Swarm::new_ephemeral_tokio(|k| Behaviour::new(&k, &opts()).unwrap());
    provider.listen().with_memory_addr_external().await;
    let mut router = Swarm::new_ephemeral_tokio(|k| Behaviour::new(&k, &opts()).unwrap());
    router.connect(&mut provider).await;
    let mut raw = raw_peer();
    raw.connect(&mut provider).await;
    let provider_id = *provider.local_peer_id();

    let (node, provider_client, events) = Node::new(provider, 16);
    tokio::spawn(node.run());
    let (refused_tx, mut refused) = mpsc::channel(16);
    answer_all(provider_client, events, refused_tx);
    let (node, router_client, _router_events) = Node::new(router, 16);
    tokio::spawn(node.run());

    // A job crosses and its answer comes back.
    let a = router_client
        .job(provider_id, JobMsg::example())
        .await
        .unwrap();
    assert_eq!(
        a,
        JobAnswer::Refused {
            reason: "echo 16".into()
        }
    );
    let o = router_client
        .open(
            provider_id,
            crate::commit::receipt::OpenRequest {
                version: crate::commit::receipt::OPEN_VERSION,
                job_id: crate::commit::wire::Bytes([1; 16]),
                selection: crate::commit::select::Selection {
                    router: crate::commit::wire::Bytes([2; 32]),
                    output: crate::commit::wire::Bytes([3; 32]),
                    proof: crate::commit::wire::Bytes([4; 64]),
                    count: 4,
                },
            },
        )
        .await
        .unwrap();
    assert!(matches!(o, OpenAnswer::Refused { .. }), "{o:?}");

    // Over the limit: the provider stops reading one byte past it and refuses, naming it (the
    // sender, still writing, may see its stream closed instead of the refusal).
    let r = raw_send(&mut raw, provider_id, vec![0; MAX_JOB_BYTES + 10]).await;
    if let Ok(a) = &r {
        assert!(
            matches!(a, JobAnswer::Refused { reason } if reason.contains("limit")),
            "{a:?}"
        );
    }
    let why = tokio::time::timeout(Duration::from_secs(10), refused.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(why.contains("/pot/job/1") && why.contains("limit"), "{why}");
    // Not a job: refused, and the sender is told why.
    let r = raw_send(&mut raw, provider_id, b"hello".to_vec()).await;
    assert!(
        matches!(&r, Ok(JobAnswer::Refused { reason }) if reason.contains("not a well-formed")),
        "{r:?}"
    );
    let why = tokio::time::timeout(Duration::from_secs(10), refused.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(why.contains("not a well-formed message"), "{why}");

    // The node is still up and answers the next job.
    let mut job = JobMsg::example();
    job.request.max_tokens = 5;
    let a = router_client.job(provider_id, job).await.unwrap();
    assert_eq!(
        a,
        JobAnswer::Refused {
            reason: "echo 5".into()
        }
    );
}

/// A node on loopback TCP with the identity of `key`, its client and its events.
async fn tcp_node(key: &NodeKey) -> (Client, mpsc::Receiver<Event>, libp2p::Multiaddr) {
    node_on(key, "/ip4/127.0.0.1/tcp/0").await
}

/// A node listening on `listen` with the identity of `key`, its client, its events and its
/// address (ending in its peer id).
async fn node_on(
    key: &NodeKey,
    listen: &str,
) -> (Client, mpsc::Receiver<Event>, libp2p::Multiaddr) {
    let swarm = node::swarm(key.libp2p_keypair(), &opts()).unwrap();
    let (node, client, events) = Node::new(swarm, 16);
    tokio::spawn(node.run());
    let addr = client.listen(listen.parse().unwrap()).await.unwrap();
    let addr = addr.with(libp2p::multiaddr::Protocol::P2p(client.peer_id()));
    (client, events, addr)
}

#[tokio::test]
async fn providers_are_found_by_weight_hash_and_forged_announcements_are_rejected() {
    let (provider_key, router_key, forger_key) = (
        NodeKey::generate(),
        NodeKey::generate(),
        NodeKey::generate(),
    );
    let (provider, _provider_events, provider_addr) = tcp_node(&provider_key).await;
    let (router, router_events, router_addr) = tcp_node(&router_key).await;
    let (forger, _forger_events, _) = tcp_node(&forger_key).await;
    let (seen_tx, mut seen) = mpsc::channel(16);
    answer_all(router.clone(), router_events, seen_tx);

    assert_eq!(
        router.dial(provider_addr.clone()).await.unwrap(),
        provider.peer_id()
    );
    // The forger reaches the router directly (the provider would drop its forgery unrelayed).
    assert_eq!(forger.dial(router_addr).await.unwrap(), router.peer_id());
    let hash = [42u8; 32];
    let _ = provider.provide(hash).await;
    let found = router.providers(hash).await.unwrap();
    assert!(found.contains(&provider.peer_id()), "{found:?}");
    assert!(router.providers([43; 32]).await.unwrap().is_empty());

    // The provider's own announcement reaches the router (through the mesh, once the
    // subscriptions have been exchanged); one the forger signs for the provider's key does
    // not: it is rejected, with the reason.
    let forged = Announcement::new(&provider_key, "forged", hash, Kernels::Quantized, 1);
    let honest = Announcement::new(&provider_key, "honest", hash, Kernels::Quantized, 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while tokio::time::Instant::now() < deadline
        && !(got.iter().any(|g: &String| g == "announced honest")
            && got.iter().any(|g| g.contains("published by peer")))
    {
        let _ = provider.announce(honest.clone()).await;
        let _ = forger.announce(forged.clone()).await;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), seen.recv()).await {
            got.push(m);
        }
    }
    assert!(got.iter().any(|g| g == "announced honest"), "{got:?}");
    assert!(
        got.iter()
            .any(|g| g.contains("gossip") && g.contains("published by peer")),
        "{got:?}"
    );
    assert!(!got.iter().any(|g| g == "announced forged"), "{got:?}");
}

/// A flood: one peer sends 30 jobs at once to a provider whose application takes its time;
/// past 16 in flight the node refuses each with the reason (and tells the application who
/// sent it), answers the first 16 when the application does, and answers the next peer.
#[tokio::test]
async fn a_request_flood_is_refused_past_the_per_peer_limit_and_the_node_stays_up() {
    let mut provider = Swarm::new_ephemeral_tokio(|k| Behaviour::new(&k, &opts()).unwrap());
    provider.listen().with_memory_addr_external().await;
    let mut flooder = Swarm::new_ephemeral_tokio(|k| Behaviour::new(&k, &opts()).unwrap());
    flooder.connect(&mut provider).await;
    let mut other = Swarm::new_ephemeral_tokio(|k| Behaviour::new(&k, &opts()).unwrap());
    other.connect(&mut provider).await;
    let provider_id = *provider.local_peer_id();
    let (node, client, mut events) = Node::new(provider, 64);
    tokio::spawn(node.limit_per_peer(16).limit_strikes(20).run());
    let (refused_tx, mut refused) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match e {
                Event::Job { channel, .. } => {
                    let client = client.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        let reason = "slow answer".to_string();
                        let _ = client
                            .answer_job(channel, JobAnswer::Refused { reason })
                            .await;
                    });
                }
                Event::Refused { peer, reason } => {
                    let _ = refused_tx.send((peer, reason)).await;
                }
                _ => {}
            }
        }
    });
    let (node, flood_client, _e1) = Node::new(flooder, 16);
    let flooder_id = flood_client.peer_id();
    tokio::spawn(node.run());
    let (node, other_client, _e2) = Node::new(other, 16);
    tokio::spawn(node.run());

    let mut sent = Vec::new();
    for _ in 0..30 {
        let c = flood_client.clone();
        sent.push(tokio::spawn(async move {
            c.job(provider_id, JobMsg::example()).await
        }));
    }
    let mut answered = 0;
    let mut too_many = 0;
    for h in sent {
        match h.await.unwrap().unwrap() {
            JobAnswer::Refused { reason } if reason == "slow answer" => answered += 1,
            JobAnswer::Refused { reason } if reason.contains("too many requests in flight") => {
                too_many += 1
            }
            a => panic!("{a:?}"),
        }
    }
    assert_eq!((answered, too_many), (16, 14));
    let (peer, why) = refused.recv().await.unwrap();
    assert_eq!(peer, flooder_id, "the refusal names the flooder");
    assert!(why.contains("at most 16"), "{why}");
    // Another peer is served; so is the flooder, now that its jobs are answered.
    let a = other_client
        .job(provider_id, JobMsg::example())
        .await
        .unwrap();
    assert_eq!(
        a,
        JobAnswer::Refused {
            reason: "slow answer".into()
        }
    );
    let a = flood_client
        .job(provider_id, JobMsg::example())
        .await
        .unwrap();
    assert_eq!(
        a,
        JobAnswer::Refused {
            reason: "slow answer".into()
        }
    );
    // A second flood brings the flooder's refusals past 20: it is cut off, the other peer is
    // still served.
    let mut sent = Vec::new();
    for _ in 0..22 {
        let c = flood_client.clone();
        sent.push(tokio::spawn(async move {
            c.job(provider_id, JobMsg::example()).await
        }));
    }
    for h in sent {
        let _ = h.await.unwrap();
    }
    let r = flood_client.job(provider_id, JobMsg::example()).await;
    assert!(r.is_err(), "a cut-off peer gets no answer: {r:?}");
    let a = other_client
        .job(provider_id, JobMsg::example())
        .await
        .unwrap();
    assert_eq!(
        a,
        JobAnswer::Refused {
            reason: "slow answer".into()
        }
    );
}

/// Audit reports on gossip: one whose evidence holds (a bait and switch: the provider's own
/// announcement of one model and its receipt for another) reaches the other router; one with
/// evidence only its author could check, or a tampered receipt, is rejected with the reason.
#[tokio::test]
async fn audit_reports_are_relayed_only_with_evidence_others_can_recheck() {
    use super::message::{AuditReport, Evidence, REPORT_VERSION};
    use crate::commit::receipt::Prover;
    use crate::commit::wire::Bytes;
    use crate::verify::Rejection;
    let (a_key, b_key, cheat_key) = (
        NodeKey::generate(),
        NodeKey::generate(),
        NodeKey::generate(),
    );
    let (a, _a_events, a_addr) = tcp_node(&a_key).await;
    let (b, b_events, _) = tcp_node(&b_key).await;
    let (seen_tx, mut seen) = mpsc::channel(16);
    answer_all(b.clone(), b_events, seen_tx);
    b.dial(a_addr).await.unwrap();

    let now = crate::transcript::unix_now_ms();
    let claimed = [7u8; 32];
    let announcement = Announcement::new(&cheat_key, "big", claimed, Kernels::Quantized, now);
    let receipt = Prover::example_receipt(cheat_key, [8; 32], now);
    let switch = AuditReport {
        version: REPORT_VERSION,
        timestamp_ms: now,
        evidence: Evidence {
            claimed: Bytes(claimed),
            rejection: Rejection::WeightHash {
                claimed: hex::encode(claimed),
                got: hex::encode([8u8; 32]),
            },
            receipt: receipt.clone(),
            selection: None,
            opening: None,
            announcement: Some(announcement),
        },
    };
    let mut bare = switch.clone();
    bare.evidence.announcement = None; // a bare accusation
    let mut tampered = switch.clone();
    tampered.evidence.receipt.output = vec![1];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut got: Vec<String> = Vec::new();
    let want = |got: &Vec<String>| {
        got.iter().any(|g| g.starts_with("reported"))
            && got.iter().any(|g| g.contains("cannot be re-checked"))
            && got.iter().any(|g| g.contains("signature does not verify"))
    };
    while tokio::time::Instant::now() < deadline && !want(&got) {
        for r in [&switch, &bare, &tampered] {
            let mut r = r.clone();
            r.timestamp_ms += got.len() as u64; // a new message each round
            let _ = a.report(r).await;
        }
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), seen.recv()).await {
            got.push(m);
        }
    }
    assert!(want(&got), "{got:?}");
}

/// QUIC: a job crosses between two nodes that only listen on QUIC (the transport `pot node`
/// offers beside TCP).
#[tokio::test]
async fn a_job_crosses_over_quic() {
    let (p_key, r_key) = (NodeKey::generate(), NodeKey::generate());
    let (provider, p_events, addr) = node_on(&p_key, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let (router, _r_events, _) = node_on(&r_key, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let (tx, _rx) = mpsc::channel(16);
    answer_all(provider.clone(), p_events, tx);
    assert!(addr.to_string().contains("/quic-v1"), "{addr}");
    assert_eq!(router.dial(addr).await.unwrap(), provider.peer_id());
    let mut job = JobMsg::example();
    job.request.max_tokens = 9;
    let a = router.job(provider.peer_id(), job).await.unwrap();
    assert_eq!(
        a,
        JobAnswer::Refused {
            reason: "echo 9".into()
        }
    );
}
