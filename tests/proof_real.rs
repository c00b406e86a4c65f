//! Proof of inference on real models: the attack suite of issue 4.
//!
//! Honest providers (`pot serve --node-key`, other thread counts and batch shapes than the
//! router's) are accepted; substitution, hash forgery, tampering, replay, forged outputs and
//! selective cheating are rejected. Cheating providers are real code running real models:
//! they sign with real keys and commit real (or fabricated) step data, the way an attacker
//! would.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{model_path, Server, QWEN05, QWEN15, SMOL};
use pot::challenge::{Catalog, ChallengeKey};
use pot::commit::keys::{NodeKey, NodePublic, RouterKey};
use pot::commit::receipt::{open, JobRequest, OpenRequest, Opening, Prover, Receipt};
use pot::commit::select::Selection;
use pot::commit::step::{check, StepData};
use pot::commit::wire::Bytes;
use pot::model::{argmax, Kernels, LoadOptions, Model};
use pot::verify::http::HttpProvider;
use pot::verify::{Checked, Provider, Rejection, Verifier, VerifyError};

fn load(name: &str) -> (Model, [u8; 32]) {
    let (m, id) =
        pot::identity::load_identified(&model_path(name), LoadOptions::default()).expect("loads");
    (m, hex::decode(&id.weight_hash).unwrap().try_into().unwrap())
}

/// Chat-rendered challenge prompts.
fn requests(model: &Model, n: usize, max_tokens: u32, seed: u8) -> Vec<JobRequest> {
    let cat = Catalog::load().unwrap();
    let key = ChallengeKey::from_bytes([seed; 32]);
    (0..n as u64)
        .map(|i| {
            let c = cat.challenge(&key, "proof", i);
            let prompt = model
                .chat_prompt(&[pot::model::chat::Message {
                    role: "user".into(),
                    content: c.prompt,
                }])
                .unwrap();
            JobRequest {
                prompt,
                max_tokens,
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
                stop: vec![],
            }
        })
        .collect()
}

/// Rewrites a job's (output, steps) before it is committed.
type Forge<'a> = dyn Fn(&JobRequest, Vec<u32>, Vec<StepData>) -> (Vec<u32>, Vec<StepData>) + 'a;
/// Rewrites a receipt.
type Edit = Box<dyn FnMut(Receipt) -> Receipt>;

/// A provider in this process: generates with `real` (and `cheap` on the steps `cheat` picks),
/// signs what it likes, and opens whatever it committed.
struct Local<'a> {
    real: &'a Model,
    cheap: Option<&'a Model>,
    cheat: Box<dyn Fn(usize) -> bool + 'a>,
    prover: Prover,
    jobs: HashMap<[u8; 16], (Receipt, Vec<StepData>)>,
    /// Rewrite (output, steps) before committing.
    forge: Box<Forge<'a>>,
}

/// `model`'s greedy answer to `prompt` and its step data.
fn greedy(model: &Model, prompt: &[u32], max: usize) -> (Vec<u32>, Vec<StepData>) {
    let c = model
        .continue_batch(&[prompt], max, true, true)
        .unwrap()
        .remove(0);
    let steps = c
        .tokens
        .iter()
        .zip(&c.logprobs)
        .map(|(&t, row)| StepData::from_logits(row, t))
        .collect();
    (c.tokens, steps)
}

/// The job was rejected by re-execution.
fn assert_caught_by_re_execution(rep: &pot::verify::JobReport) {
    assert!(
        matches!(
            rep.rejection,
            Some(Rejection::Diverges { .. } | Rejection::NotGreedy { .. })
        ),
        "{:?}",
        rep.rejection
    );
}

impl<'a> Local<'a> {
    fn honest(real: &'a Model, weight_hash: [u8; 32]) -> Self {
        Self {
            real,
            cheap: None,
            cheat: Box::new(|_| false),
            prover: Prover {
                key: NodeKey::generate(),
                weight_hash,
                kernels: Kernels::Quantized,
            },
            jobs: HashMap::new(),
            forge: Box::new(|_, o, s| (o, s)),
        }
    }

    fn generate(&self, r: &JobRequest) -> (Vec<u32>, Vec<StepData>) {
        let max = r.max_tokens as usize;
        if self.cheap.is_none() {
            return greedy(self.real, &r.prompt, max);
        }
        let (mut seq, mut out, mut steps) = (r.prompt.clone(), Vec::new(), Vec::new());
        for i in 0..max {
            let m = match self.cheap {
                Some(c) if (self.cheat)(i) => c,
                _ => self.real,
            };
            let row = m.logprobs(&seq, seq.len() - 1).unwrap().pop().unwrap();
            let t = argmax(&row);
            steps.push(StepData::from_logits(&row, t));
            out.push(t);
            seq.push(t);
            if self.real.tokenizer.stop_ids.contains(&t) {
                break;
            }
        }
        (out, steps)
    }
}

impl Provider for Local<'_> {
    fn run(&mut self, r: &JobRequest, nonce: [u8; 32]) -> Result<Receipt, VerifyError> {
        let (out, steps) = self.generate(r);
        let (out, steps) = (self.forge)(r, out, steps);
        let id: [u8; 16] = rand::random();
        let receipt = self
            .prover
            .commit(
                id,
                nonce,
                r.clone(),
                out,
                &steps,
                pot::transcript::unix_now_ms(),
            )
            .unwrap();
        self.jobs.insert(id, (receipt.clone(), steps));
        Ok(receipt)
    }

    fn open(&mut self, req: &OpenRequest) -> Result<Opening, String> {
        let (receipt, steps) = self.jobs.get(&req.job_id.0).ok_or("unknown job")?;
        // The provider learns the chosen steps only now, from the router's VRF proof.
        let indices = req
            .selection
            .verify(&receipt.digest(), receipt.steps)
            .map_err(|e| e.to_string())?;
        Ok(Opening {
            version: pot::commit::receipt::OPEN_VERSION,
            job_id: req.job_id,
            steps: open(&req.job_id.0, steps, &indices).map_err(|e| e.to_string())?,
        })
    }
}

/// Wraps a provider and rewrites its receipts (tampering, replay).
struct Rewrite<P: Provider> {
    inner: P,
    edit: Edit,
}

impl<P: Provider> Provider for Rewrite<P> {
    fn run(&mut self, r: &JobRequest, nonce: [u8; 32]) -> Result<Receipt, VerifyError> {
        let receipt = self.inner.run(r, nonce)?;
        Ok((self.edit)(receipt))
    }
    fn open(&mut self, req: &OpenRequest) -> Result<Opening, String> {
        self.inner.open(req)
    }
}

fn verifier(model: Model, hash: [u8; 32], node: NodePublic, audit: u32) -> Verifier {
    Verifier::new(
        model,
        hash,
        Kernels::Quantized,
        node,
        RouterKey::generate(),
        audit,
    )
}

fn committing_server(model: &str, extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    std::fs::write(&key, NodeKey::generate().file_line()).unwrap();
    let store = dir.path().join("steps.redb");
    let mut args = vec![
        "--node-key".to_string(),
        key.display().to_string(),
        "--store".into(),
        store.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(model, &refs), dir)
}

fn http(server: &Server) -> (HttpProvider, NodePublic) {
    let mut p = HttpProvider::new(pot::openai::EndpointConfig {
        url: server.url.clone(),
        model: String::new(),
        chat: false,
        api_key: None,
        timeout: std::time::Duration::from_secs(120),
        retries: 0,
        max_backoff: std::time::Duration::from_secs(1),
    })
    .unwrap();
    let info = p.node_info().unwrap();
    (p, NodePublic::from_hex(&info.node).unwrap())
}

#[test]
fn honest_jobs_are_accepted_across_thread_counts_and_batch_shapes() {
    // The provider runs on 1 thread, batching up to 4 requests while a background client
    // keeps other requests coming; the router re-executes on all cores in one pass.
    let (server, _dir) = committing_server(SMOL, &["--threads", "1", "--max-batch", "4"]);
    let (mut provider, node) = http(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (url, stop) = (server.url.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = reqwest::blocking::Client::new();
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let body = serde_json::json!({"model": "vendor", "prompt": format!("Count to {n}:"), "max_tokens": 3 + n % 13, "temperature": 0});
                let _ = c.post(format!("{url}/v1/completions")).json(&body).send();
                n += 1;
            }
            n
        })
    };
    let (model, hash) = load(SMOL);
    let reqs = requests(&model, 30, 16, 1);
    let mut v = verifier(model, hash, node, 4);
    let mut worst = 0.0f64;
    let mut rejected = Vec::new();
    for r in &reqs {
        let rep = v.job(&mut provider, r).unwrap();
        worst = worst.max(rep.worst);
        if let Some(why) = rep.rejection {
            rejected.push(why.to_string());
        }
    }
    stop.store(true, Ordering::SeqCst);
    let background = background.join().unwrap();
    eprintln!("30 honest jobs beside {background} background requests: worst disagreement {worst:.3} nats");
    assert!(rejected.is_empty(), "{rejected:?}");
    assert!(
        (10..100_000).contains(&background),
        "the batch shapes varied: {background}"
    );
}

#[test]
fn substitution_is_rejected_by_the_weight_hash() {
    // Serves Qwen 0.5B with its true hash while the router pays for 1.5B.
    let (server, _dir) = committing_server(QWEN05, &[]);
    let (mut provider, node) = http(&server);
    let (big, big_hash) = load(QWEN15);
    let reqs = requests(&big, 3, 8, 2);
    let mut v = verifier(big, big_hash, node, 4);
    for r in &reqs {
        let rep = v.job(&mut provider, r).unwrap();
        assert!(
            matches!(rep.rejection, Some(Rejection::WeightHash { .. })),
            "{:?}",
            rep.rejection
        );
    }
}

/// The same node key, twice (a key is not `Clone`: keys are not copied by accident).
fn same_key(k: &NodeKey) -> NodeKey {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k");
    std::fs::write(&p, k.file_line()).unwrap();
    NodeKey::read(&p).unwrap()
}

#[test]
fn hash_forgery_and_forged_outputs_are_caught_by_re_execution() {
    let (small, _) = load(QWEN05);
    let (big, big_hash) = load(QWEN15);
    let reqs = requests(&big, 6, 16, 3);
    // A cached answer: 1.5B's real output and step data for another prompt.
    let cached = greedy(&big, &reqs[5].prompt, 16);
    // Hash forgery: 0.5B runs, the receipt names 1.5B.
    let mut forger = Local::honest(&small, big_hash);
    let node = forger.prover.key.public();
    let mut v = verifier(big, big_hash, node, 4);
    for r in &reqs[..3] {
        assert_caught_by_re_execution(&v.job(&mut forger, r).unwrap());
    }
    // Output forgery: random tokens with fabricated step data (each token committed as the
    // certain first choice), signed by the pinned node with the right hash.
    let vocab = small.tokenizer.vocab_size() as u32;
    let mut random = Local::honest(&small, big_hash);
    random.prover.key = same_key(&forger.prover.key);
    random.forge = Box::new(move |_, out, _| {
        let toks: Vec<u32> = out.iter().map(|_| rand::random::<u32>() % vocab).collect();
        let steps = toks
            .iter()
            .map(|&t| {
                let mut top = vec![(t, 0u16)];
                top.extend((0..7u32).map(|j| ((t + 1 + j) % vocab, 1000 + 10 * j as u16)));
                StepData {
                    token: t,
                    token_code: 0,
                    top,
                }
            })
            .collect();
        (toks, steps)
    });
    for r in &reqs[3..5] {
        let rep = v.job(&mut random, r).unwrap();
        assert!(
            matches!(rep.rejection, Some(Rejection::Diverges { .. })),
            "{:?}",
            rep.rejection
        );
    }
    // The cached answer, real 1.5B data for another prompt, served for this one.
    let mut replay = Local::honest(&small, big_hash);
    replay.prover.key = same_key(&forger.prover.key);
    replay.forge = Box::new(move |_, _, _| cached.clone());
    assert_caught_by_re_execution(&v.job(&mut replay, &reqs[4]).unwrap());
}

#[test]
fn tampered_receipts_other_keys_and_replays_are_rejected() {
    let (server, _dir) = committing_server(SMOL, &[]);
    let (provider, node) = http(&server);
    let (model, hash) = load(SMOL);
    let reqs = requests(&model, 12, 8, 4);
    let mut v = verifier(model, hash, node, 4);
    // Each edit of a signed field, and a re-signature by another key.
    let edits: Vec<(&str, Edit)> = vec![
        (
            "weight hash",
            Box::new(|mut r: Receipt| {
                r.weight_hash.0[0] ^= 1;
                r
            }),
        ),
        (
            "output token",
            Box::new(|mut r: Receipt| {
                r.output[0] = (r.output[0] + 1) % 1000;
                r
            }),
        ),
        (
            "root",
            Box::new(|mut r: Receipt| {
                r.root.0[3] ^= 1;
                r
            }),
        ),
        (
            "timestamp",
            Box::new(|mut r: Receipt| {
                r.timestamp_ms -= 1;
                r
            }),
        ),
        (
            "steps",
            Box::new(|mut r: Receipt| {
                r.steps += 1;
                r.output.push(0);
                r
            }),
        ),
        (
            "request seed",
            Box::new(|mut r: Receipt| {
                r.request.seed += 1;
                r
            }),
        ),
        (
            "kernels",
            Box::new(|mut r: Receipt| {
                r.kernels = Kernels::Dense;
                r
            }),
        ),
        (
            "signature",
            Box::new(|mut r: Receipt| {
                r.signature.0[0] ^= 1;
                r
            }),
        ),
        (
            "another key signs",
            Box::new(|mut r: Receipt| {
                let k = NodeKey::generate();
                r.signature = Bytes(k.sign(&r.signed_bytes()));
                r
            }),
        ),
        (
            "another key signs and is named",
            Box::new(|mut r: Receipt| {
                let k = NodeKey::generate();
                r.node = Bytes(k.public().to_bytes());
                r.signature = Bytes(k.sign(&r.signed_bytes()));
                r
            }),
        ),
    ];
    let mut p = Rewrite {
        inner: provider,
        edit: Box::new(|r| r),
    };
    for ((what, edit), r) in edits.into_iter().zip(&reqs) {
        p.edit = edit;
        let rep = v.job(&mut p, r).unwrap();
        assert!(
            matches!(
                rep.rejection,
                Some(Rejection::Signature | Rejection::Node { .. })
            ),
            "{what}: {:?}",
            rep.rejection
        );
    }
    // Replay: an old receipt answers a new nonce.
    p.edit = Box::new(|r| r);
    let honest = v.job(&mut p, &reqs[10]).unwrap();
    assert!(honest.accepted(), "{:?}", honest.rejection);
    let old = honest.receipt.clone();
    p.edit = Box::new(move |_| old.clone());
    let rep = v.job(&mut p, &reqs[10]).unwrap();
    assert!(
        matches!(rep.rejection, Some(Rejection::Nonce { .. })),
        "{:?}",
        rep.rejection
    );
    // The same nonce twice (a router must never accept a receipt twice).
    let nonce = honest.receipt.nonce.0;
    let again = v.check_receipt(
        &honest.receipt,
        nonce,
        &reqs[10],
        pot::transcript::unix_now_ms(),
    );
    assert!(matches!(
        again,
        Err(Checked::Rejected(Rejection::Replay { .. }))
    ));
    // A receipt older than the window.
    let mut fresh = verifier(load(SMOL).0, hash, node, 4);
    fresh.window_ms = 1000;
    let late = fresh.check_receipt(
        &honest.receipt,
        nonce,
        &reqs[10],
        honest.receipt.timestamp_ms + 5000,
    );
    assert!(matches!(
        late,
        Err(Checked::Rejected(Rejection::Stale { .. }))
    ));
    // An opening for steps other than the VRF's, or with a forged path, is refused.
    let job_id = honest.receipt.job_id;
    let sel = honest.selection.clone().unwrap();
    let good = p
        .open(&OpenRequest {
            version: 1,
            job_id,
            selection: sel,
        })
        .unwrap();
    let idx = &honest.audited;
    assert!(v.check_opening(&honest.receipt, idx, &good).is_ok());
    let mut fewer = good.clone();
    fewer.steps.pop();
    assert!(matches!(
        v.check_opening(&honest.receipt, idx, &fewer),
        Err(Checked::Rejected(Rejection::NotOpened(_)))
    ));
    let mut bent = good.clone();
    bent.steps[0].data.top[1].1 += 1;
    assert!(matches!(
        v.check_opening(&honest.receipt, idx, &bent),
        Err(Checked::Rejected(Rejection::Path { .. }))
    ));
}

/// SmolLM2 with 10 of its 30 blocks pruned (same tokenizer, cheaper), written into `dir`.
fn pruned_smol(dir: &std::path::Path) -> std::path::PathBuf {
    let pruned = dir.join("pruned.gguf");
    pot::variant::derive(
        &model_path(SMOL),
        &pot::variant::VariantOptions {
            to: pot::variant::Target::Q8_0,
            prune_layers: 10,
            noise: 0.0,
            seed: 0,
        },
        &pruned,
    )
    .unwrap();
    pruned
}

#[test]
fn selective_cheating_is_caught_on_the_steps_it_cheats() {
    // The provider runs the claimed model (SmolLM2) on half the steps and a cheaper one (the
    // same model with 10 of its 30 blocks pruned) on the rest, committing what it ran.
    let dir = tempfile::tempdir().unwrap();
    let pruned = pruned_smol(dir.path());
    let (real, hash) = load(SMOL);
    let cheap = Model::load(&pruned.display().to_string(), LoadOptions::default()).unwrap();
    let reqs = requests(&real, 12, 24, 6);
    let mut p = Local::honest(&real, hash);
    p.cheap = Some(&cheap);
    p.cheat = Box::new(|i| i % 2 == 1);
    let (router_model, _) = load(SMOL);
    let tol = pot::verify::TOL_QUANTIZED;
    let (mut cheated, mut caught, mut honest_steps, mut honest_failed) = (0, 0, 0, 0);
    for r in &reqs {
        let receipt = p.run(r, rand::random()).unwrap();
        let steps = &p.jobs[&receipt.job_id.0].1;
        let mut seq = r.prompt.clone();
        seq.extend_from_slice(&receipt.output[..receipt.output.len() - 1]);
        let rows = router_model.logprobs(&seq, r.prompt.len() - 1).unwrap();
        for (i, (d, row)) in steps.iter().zip(&rows).enumerate() {
            let failed = check(d, row, tol).1.is_some() || !d.is_greedy(tol);
            if i % 2 == 1 {
                cheated += 1;
                caught += failed as usize;
            } else {
                honest_steps += 1;
                honest_failed += failed as usize;
            }
        }
    }
    let d = caught as f64 / cheated as f64;
    eprintln!(
        "selective cheating: {caught}/{cheated} cheated steps caught (d = {d:.3}); {honest_failed}/{honest_steps} honest steps failed"
    );
    assert_eq!(honest_failed, 0);
    assert!(d >= 0.8, "per-step detection {d}");
}

/// The body `HttpProvider` sends for a job, streamed or not.
fn job_body(r: &JobRequest, nonce: &[u8; 32], stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "vendor", "prompt": r.prompt, "max_tokens": r.max_tokens,
        "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed, "stop": r.stop,
        "stream": stream, "pot": {"nonce": hex::encode(nonce)},
    })
}

/// POST an open request as JSON; the status and the body.
fn open_json(url: &str, req: &OpenRequest) -> (u16, serde_json::Value, String) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{url}/v1/pot/open"))
        .json(req)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let media = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, resp.json().unwrap(), media)
}

#[test]
fn streamed_receipts_json_openings_restarts_and_expiry() {
    let (mut server, dir) = committing_server(SMOL, &[]);
    let (model, hash) = load(SMOL);
    let (_, node) = http(&server);
    let req = requests(&model, 1, 12, 5).remove(0);
    let nonce: [u8; 32] = rand::random();

    // A streamed committed request ends with its receipt, before [DONE], signing what was
    // streamed.
    let sse = reqwest::blocking::Client::new()
        .post(format!("{}/v1/completions", server.url))
        .json(&job_body(&req, &nonce, true))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let (mut text, mut receipt, mut after_receipt) = (String::new(), None, Vec::new());
    for data in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if receipt.is_some() {
            after_receipt.push(data.to_string());
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        match v.get("pot") {
            Some(p) => receipt = Some(serde_json::from_value::<Receipt>(p.clone()).unwrap()),
            None => text += v["choices"][0]["text"].as_str().unwrap_or(""),
        }
    }
    let receipt = receipt.expect("the stream carries a receipt");
    assert_eq!(after_receipt, ["[DONE]"], "{sse}");
    let visible: Vec<u32> = receipt
        .output
        .iter()
        .copied()
        .filter(|t| !model.tokenizer.stop_ids.contains(t))
        .collect();
    assert_eq!(model.tokenizer.decode(&visible).unwrap(), text);
    let mut v = verifier(model, hash, node, 4);
    v.check_receipt(&receipt, nonce, &req, pot::transcript::unix_now_ms())
        .unwrap();

    // The opening in JSON proves against the receipt and re-executes within tolerance.
    let (selection, indices) = Selection::make(&v.router, &receipt.digest(), receipt.steps, 4);
    let ask = OpenRequest {
        version: pot::commit::receipt::OPEN_VERSION,
        job_id: receipt.job_id,
        selection,
    };
    let (status, body, media) = open_json(&server.url, &ask);
    assert_eq!(
        (status, media.as_str()),
        (200, "application/json"),
        "{body}"
    );
    let opening: Opening = serde_json::from_value(body).unwrap();
    let opened = v.check_opening(&receipt, &indices, &opening).unwrap();
    let worst = v.reexecute(&receipt, &opened).unwrap();
    assert!(worst < v.tolerance);

    // Another receipt's selection, or an unknown job, opens nothing.
    let (other, _) = Selection::make(&v.router, &[0; 32], receipt.steps, 4);
    let (status, body, _) = open_json(
        &server.url,
        &OpenRequest {
            selection: other,
            ..ask.clone()
        },
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "selection", "{body}");
    let unknown = OpenRequest {
        job_id: Bytes(rand::random()),
        ..ask.clone()
    };
    let (status, body, _) = open_json(&server.url, &unknown);
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &serde_json::json!("job_not_found"))
    );

    // The server restarts on the same key and store: the job still opens (CBOR this time).
    let args = |retention: &str| {
        vec![
            "--node-key".to_string(),
            dir.path().join("node.key").display().to_string(),
            "--store".into(),
            dir.path().join("steps.redb").display().to_string(),
            "--retention-hours".into(),
            retention.into(),
        ]
    };
    let restart = |server: &mut Server, retention: &str| {
        assert!(server
            .terminate(std::time::Duration::from_secs(20))
            .is_some_and(|s| s.success()));
        let a = args(retention);
        Server::start(SMOL, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    server = restart(&mut server, "1");
    let (mut provider, again) = http(&server);
    assert_eq!(again.to_bytes(), receipt.node.0, "the same node key");
    let opening = provider.open(&ask).unwrap();
    let opened = v.check_opening(&receipt, &indices, &opening).unwrap();
    assert!(v.reexecute(&receipt, &opened).unwrap() < v.tolerance);

    // With a retention of 0.36 s the job is past it: 404, with the retention named.
    server = restart(&mut server, "0.0001");
    std::thread::sleep(std::time::Duration::from_millis(400));
    let (status, body, _) = open_json(&server.url, &ask);
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retention"),
        "{body}"
    );
}

/// Run `pot` with arguments; exit code, stdout, stderr.
fn pot_cli(args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pot"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn pot_verify_exits_0_when_all_pass_1_on_a_rejection_2_on_an_error() {
    let (server, dir) = committing_server(SMOL, &[]);
    let router = dir.path().join("router.key");
    let records = dir.path().join("records.ndjson");
    let (router_s, records_s) = (router.display().to_string(), records.display().to_string());
    let (code, out, err) = pot_cli(&["keygen", "--router", "-o", &router_s]);
    assert_eq!(code, 0, "{out}{err}");
    let (smol, pruned) = (
        model_path(SMOL).display().to_string(),
        pruned_smol(dir.path()).display().to_string(),
    );
    let verify = |model: &str, extra: &[&str]| {
        let mut a = vec![
            "verify",
            "--endpoint",
            &server.url,
            "--model",
            model,
            "--router-key",
            &router_s,
            "--jobs",
            "2",
            "--max-tokens",
            "8",
            "--json",
        ];
        a.extend_from_slice(extra);
        pot_cli(&a)
    };

    // Honest: 0, a JSON summary, one record per job.
    let (code, out, err) = verify(&smol, &["--out", &records_s]);
    assert_eq!(code, 0, "{out}{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (s["accepted"].as_u64(), s["rejected"].as_u64()),
        (Some(2), Some(0)),
        "{s}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&records)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines
        .iter()
        .all(|r| r["receipt"]["signature"].is_string() && r["selection"]["proof"].is_string()));

    // Claiming another model (a pruned SmolLM2: same tokenizer): every job rejected, exit 1.
    let (code, out, err) = verify(&pruned, &[]);
    assert_eq!(code, 1, "{out}{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["rejected"].as_u64(), Some(2), "{s}");
    assert!(
        s["rejections"][0]["why"]
            .as_str()
            .unwrap()
            .contains("weight"),
        "{s}"
    );

    // A pinned node key that is not the node's: rejected.
    let other = hex::encode(NodeKey::generate().public().to_bytes());
    let (code, out, err) = verify(&smol, &["--node-pubkey", &other]);
    assert_eq!(code, 1, "{out}{err}");

    // Errors: exit 2 with one line naming the input.
    let missing = dir.path().join("nope.key").display().to_string();
    let mut a = vec![
        "verify",
        "--endpoint",
        &server.url,
        "--model",
        &smol,
        "--router-key",
        &missing,
    ];
    let (code, _, err) = pot_cli(&a);
    assert_eq!(code, 2);
    assert!(
        err.trim().lines().count() == 1 && err.contains("nope.key"),
        "{err}"
    );
    a[2] = "http://127.0.0.1:9";
    a[6] = &router_s;
    let (code, _, err) = pot_cli(&a);
    assert_eq!(code, 2);
    assert!(err.contains("127.0.0.1:9"), "{err}");
}
