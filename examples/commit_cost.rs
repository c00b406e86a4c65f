//! What proof of inference costs: the provider's commitment overhead as a share of generation
//! time, the bytes of receipts and audit openings per token, and the router's audit cost as a
//! share of generation cost.
//!
//! ```text
//! cargo run --release --example commit_cost -- MODEL.gguf [JOBS] [TOKENS] [ROUNDS]
//! ```
//!
//! 1. **End to end.** The same greedy jobs go through pot's engine (one at a time, as a lone
//!    client sees `pot serve`) with commitments off and on, alternating for `ROUNDS` rounds;
//!    printed: seconds and tokens/s each way, and the difference.
//! 2. **Each part, timed alone** on the real logits rows of those jobs: the step data
//!    (`StepData::from_logits`, on the engine thread at every token), the Merkle tree and
//!    Ed25519 signature (`Prover::commit`, once per job), and the store's durable write
//!    (`Store::put`, once per job, off the engine thread). Their sum per token against the
//!    decode time per token is the overhead.
//! 3. **Bytes**, JSON and CBOR: the receipt (whole, and less the prompt and output the client
//!    has anyway), the router's open request, the opening of 1, 4 and 16 steps, and the store's
//!    bytes per step.
//! 4. **The router's audit**: receipt checks, the VRF choice, opening checks and the
//!    teacher-forced re-execution, timed per job for 1, 4 and 16 audited steps and for every
//!    step, against the job's generation time.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use pot::challenge::{Catalog, ChallengeKey};
use pot::commit::keys::{NodeKey, RouterKey};
use pot::commit::receipt::{open, JobRequest, OpenRequest, Opening, Prover, Receipt, OPEN_VERSION};
use pot::commit::select::Selection;
use pot::commit::step::StepData;
use pot::commit::store::{Store, StoredJob};
use pot::commit::wire::{encode, Encoding};
use pot::model::{Kernels, LoadOptions, Model};
use pot::serve::engine::{self, Committed, Event, Job};
use pot::verify::Verifier;

/// Per job: seconds, tokens generated, and (when committing) what was committed.
type Served = (Vec<f64>, Vec<usize>, Vec<Option<Committed>>);

/// Run every prompt through the engine, one job at a time; each job's seconds and, when
/// committing, its tokens and steps.
fn serve(
    model: &Arc<Model>,
    prompts: &[Vec<u32>],
    tokens: usize,
    commit: bool,
) -> anyhow::Result<Served> {
    let (queue, rx) = std::sync::mpsc::sync_channel::<Job>(1);
    let worker = engine::spawn(model.clone(), rx, 1, Arc::new(AtomicBool::new(false)));
    let (mut secs, mut generated, mut out) = (Vec::new(), Vec::new(), Vec::new());
    for p in prompts {
        let (job, mut r) = Job::greedy(p.clone(), tokens, commit);
        let t = Instant::now();
        queue.send(job)?;
        while let Some(ev) = r.blocking_recv() {
            match ev {
                Event::Done {
                    steps,
                    completion_tokens,
                    ..
                } => {
                    secs.push(t.elapsed().as_secs_f64());
                    generated.push(completion_tokens);
                    out.push(steps);
                    break;
                }
                Event::Failed(e) => anyhow::bail!("the engine failed: {e}"),
                _ => {}
            }
        }
    }
    drop(queue);
    worker.join().expect("engine");
    Ok((secs, generated, out))
}

/// The mean JSON and CBOR sizes of a message made from each receipt.
fn mean_size<T: serde::Serialize>(
    receipts: &[Receipt],
    make: impl Fn(&Receipt) -> anyhow::Result<T>,
) -> anyhow::Result<(usize, usize)> {
    let (mut json, mut cbor) = (0, 0);
    for r in receipts {
        let m = make(r)?;
        json += encode(&m, Encoding::Json)?.len();
        cbor += encode(&m, Encoding::Cbor)?.len();
    }
    Ok((json / receipts.len(), cbor / receipts.len()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(spec) = args.first().cloned() else {
        anyhow::bail!("usage: commit_cost MODEL.gguf [JOBS] [TOKENS] [ROUNDS]");
    };
    let jobs: usize = args.get(1).map_or(Ok(8), |s| s.parse())?;
    let tokens: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let rounds: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let (model, identity) = pot::identity::load_identified(
        std::path::Path::new(&spec),
        LoadOptions::kernels(Kernels::Quantized),
    )?;
    let model = Arc::new(model);
    let weight_hash: [u8; 32] = hex::decode(&identity.weight_hash)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("weight hash length"))?;
    let catalog = Catalog::load()?;
    let key = ChallengeKey::from_bytes([11; 32]);
    let prompts: Vec<Vec<u32>> = (0..jobs as u64)
        .map(|i| {
            model
                .tokenizer
                .encode(&catalog.challenge(&key, "cost", i).prompt)
        })
        .collect::<Result<_, _>>()?;
    println!(
        "model {spec}: {jobs} jobs of up to {tokens} tokens, prompts of {}..{} tokens, {} threads",
        prompts.iter().map(Vec::len).min().unwrap_or(0),
        prompts.iter().map(Vec::len).max().unwrap_or(0),
        candle_core::utils::get_num_threads()
    );

    // 1. End to end: each job with commitments off and on back to back, which goes first
    //    alternating by job and round, so drift in the machine's speed falls on both.
    let _ = serve(&model, &prompts[..1], tokens, false)?; // warm up
    let (mut off_s, mut on_s, mut n_tok) = (Vec::new(), Vec::new(), 0usize);
    let mut committed: Vec<Committed> = Vec::new();
    let mut job_secs = Vec::new();
    for round in 0..rounds {
        let (mut off, mut on, mut n) = (0.0, 0.0, 0);
        for (j, p) in prompts.iter().enumerate() {
            let one = std::slice::from_ref(p);
            let ((s0, g0, _), (s1, g1, mut c1)) = if (round + j) % 2 == 0 {
                let a = serve(&model, one, tokens, false)?;
                (a, serve(&model, one, tokens, true)?)
            } else {
                let b = serve(&model, one, tokens, true)?;
                (serve(&model, one, tokens, false)?, b)
            };
            anyhow::ensure!(g0 == g1, "a greedy job changed length with commitments on");
            off += s0[0];
            on += s1[0];
            n += g1[0];
            if round == 0 {
                committed.push(c1.remove(0).expect("committed"));
                job_secs.push(s1[0]);
            }
        }
        println!("round {round}: off {off:.2} s, on {on:.2} s ({n} tokens)");
        off_s.push(off);
        on_s.push(on);
        n_tok = n;
    }
    let diffs: Vec<f64> = off_s
        .iter()
        .zip(&on_s)
        .map(|(a, b)| 100.0 * (b - a) / a)
        .collect();
    let (off, on) = (median(off_s), median(on_s));
    println!(
        "end to end (median of {rounds} rounds): off {off:.2} s ({:.1} tok/s), on {on:.2} s ({:.1} tok/s); difference per round {:?} %",
        n_tok as f64 / off,
        n_tok as f64 / on,
        diffs.iter().map(|d| (d * 100.0).round() / 100.0).collect::<Vec<_>>()
    );

    // 2. Each part alone. Real rows: the teacher-forced logits of each job's output.
    let mut rows: Vec<(Vec<f32>, u32)> = Vec::new();
    for (p, c) in prompts.iter().zip(&committed) {
        let mut seq = p.clone();
        seq.extend_from_slice(&c.output[..c.output.len() - 1]);
        for (row, &t) in model
            .logprobs(&seq, p.len() - 1)?
            .into_iter()
            .zip(&c.output)
        {
            rows.push((row, t));
        }
    }
    let reps = (2000 / rows.len()).max(1);
    let t = Instant::now();
    for _ in 0..reps {
        for (row, tok) in &rows {
            std::hint::black_box(StepData::from_logits(std::hint::black_box(row), *tok));
        }
    }
    let step_us = t.elapsed().as_secs_f64() * 1e6 / (reps * rows.len()) as f64;
    let prover = Prover {
        key: NodeKey::generate(),
        weight_hash,
        kernels: Kernels::Quantized,
    };
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("steps.redb"), 3_600_000, 1 << 30)?;
    let (mut commit_us, mut put_us) = (Vec::new(), Vec::new());
    let mut receipts = Vec::new();
    for (i, (p, c)) in prompts.iter().zip(&committed).enumerate() {
        let request = JobRequest {
            prompt: p.clone(),
            max_tokens: tokens as u32,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        };
        let job_id = [i as u8; 16];
        let t = Instant::now();
        let r = prover.commit(
            job_id,
            rand::random(),
            request,
            c.output.clone(),
            &c.steps,
            pot::transcript::unix_now_ms(),
        )?;
        commit_us.push(t.elapsed().as_secs_f64() * 1e6);
        let job = StoredJob {
            receipt: r.clone(),
            steps: c.steps.clone(),
        };
        let t = Instant::now();
        store.put(&job, pot::transcript::unix_now_ms())?;
        put_us.push(t.elapsed().as_secs_f64() * 1e6);
        receipts.push(r);
    }
    let steps_per_job = n_tok as f64 / jobs as f64;
    let decode_ms = off * 1e3 / n_tok as f64;
    let (commit_us, put_us) = (median(commit_us), median(put_us));
    let engine_share = step_us / (decode_ms * 1e3);
    let total_share = (step_us + (commit_us + put_us) / steps_per_job) / (decode_ms * 1e3);
    println!(
        "per token: decode {decode_ms:.2} ms (prefill included), step data {step_us:.1} us; per job ({steps_per_job:.0} steps): Merkle tree + signature {commit_us:.0} us, store write {put_us:.0} us"
    );
    println!(
        "overhead: engine thread {:.3}% of generation time; everything (tree, signature, store write spread over the job's tokens) {:.3}%",
        100.0 * engine_share,
        100.0 * total_share
    );

    // 3. Bytes.
    let (_, stored) = store.usage()?;
    let router = RouterKey::generate();
    let show = |what: &str, (json, cbor): (usize, usize)| {
        println!(
            "  {what:<32} JSON {json:>7} B ({:>6.2} B/token)   CBOR {cbor:>7} B ({:>6.2} B/token)",
            json as f64 / steps_per_job,
            cbor as f64 / steps_per_job
        )
    };
    println!("bytes per job (mean over {jobs} jobs of {steps_per_job:.0} tokens):");
    show("receipt", mean_size(&receipts, |r| Ok(r.clone()))?);
    show(
        "receipt less prompt and output",
        mean_size(&receipts, |r| {
            let mut b = r.clone();
            b.request.prompt.clear();
            b.output.clear();
            Ok(b)
        })?,
    );
    for k in [1u32, 4, 16] {
        show(
            &format!("open request ({k} steps)"),
            mean_size(&receipts, |r| {
                Ok(OpenRequest {
                    version: OPEN_VERSION,
                    job_id: r.job_id,
                    selection: Selection::make(&router, &r.digest(), r.steps, k).0,
                })
            })?,
        );
        show(
            &format!("opening ({k} steps)"),
            mean_size(&receipts, |r| {
                let (_, idx) = Selection::make(&router, &r.digest(), r.steps, k);
                let steps = &committed[r.job_id.0[0] as usize].steps;
                Ok(Opening {
                    version: OPEN_VERSION,
                    job_id: r.job_id,
                    steps: open(&r.job_id.0, steps, &idx)?,
                })
            })?,
        );
    }
    // The receipt does not grow with the answer (less its tokens); an opening grows with
    // log2 of it. Sizes at other lengths: this run's step data, repeated to that length.
    let pool: Vec<StepData> = committed.iter().flat_map(|c| c.steps.clone()).collect();
    let bare = {
        let mut b = receipts[0].clone();
        b.request.prompt.clear();
        b.output.clear();
        encode(&b, Encoding::Cbor)?.len()
    };
    for n in [32usize, 256, 1024, 4096] {
        let steps: Vec<StepData> = pool.iter().cycle().take(n).cloned().collect();
        let (selection, idx) = Selection::make(&router, &[n as u8; 32], n as u32, 4);
        let ask = OpenRequest {
            version: OPEN_VERSION,
            job_id: receipts[0].job_id,
            selection,
        };
        let o = Opening {
            version: OPEN_VERSION,
            job_id: receipts[0].job_id,
            steps: open(&receipts[0].job_id.0, &steps, &idx)?,
        };
        let (req, opening) = (
            encode(&ask, Encoding::Cbor)?.len(),
            encode(&o, Encoding::Cbor)?.len(),
        );
        println!(
            "  {n:>5} tokens (CBOR): receipt less tokens {bare} B + open request {req} B + opening of 4 steps {opening} B = {:.2} B/token",
            (bare + req + opening) as f64 / n as f64
        );
    }
    println!(
        "  store: {stored} B for {n_tok} steps ({:.1} B/step, receipts included)",
        stored as f64 / n_tok as f64
    );

    // 4. The router's audit, against each job's generation time.
    let verifier_model = Model::load(&spec, LoadOptions::kernels(Kernels::Quantized))?;
    let mut v = Verifier::new(
        verifier_model,
        weight_hash,
        Kernels::Quantized,
        prover.key.public(),
        router,
        4,
    );
    for k in [1u32, 4, 16, u32::MAX] {
        let (mut share, mut audit_s, mut max_worst) = (Vec::new(), Vec::new(), 0.0f64);
        for (i, r) in receipts.iter().enumerate() {
            let t = Instant::now();
            v.check_receipt(r, r.nonce.0, &r.request, r.timestamp_ms)
                .map_err(|e| anyhow::anyhow!("honest receipt refused: {e:?}"))?;
            let (selection, idx) = Selection::make(&v.router, &r.digest(), r.steps, k);
            let o = Opening {
                version: OPEN_VERSION,
                job_id: r.job_id,
                steps: open(&r.job_id.0, &committed[i].steps, &idx)?,
            };
            selection.verify(&r.digest(), r.steps)?; // what the provider checks
            let opened = v
                .check_opening(r, &idx, &o)
                .map_err(|e| anyhow::anyhow!("honest opening refused: {e:?}"))?;
            let worst = v
                .reexecute(r, &opened)
                .map_err(|e| anyhow::anyhow!("honest job refused: {e:?}"))?;
            max_worst = max_worst.max(worst);
            let s = t.elapsed().as_secs_f64();
            audit_s.push(s);
            share.push(s / job_secs[i]);
        }
        let label = if k == u32::MAX {
            "every step".to_string()
        } else {
            format!("{k} steps")
        };
        println!(
            "router audit of {label:<10}: median {:.3} s per job, {:.1}% of the job's generation time (median; max {:.1}%); worst honest disagreement {max_worst:.3} nats",
            median(audit_s),
            100.0 * median(share.clone()),
            100.0 * share.iter().copied().fold(0.0, f64::max)
        );
        // Fresh nonces are not needed: check_receipt's replay memory is per verifier.
        v = Verifier::new(
            v.model.expect("this verifier holds the model"),
            weight_hash,
            Kernels::Quantized,
            v.node,
            v.router,
            4,
        );
    }
    Ok(())
}
