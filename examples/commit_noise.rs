//! Calibrate the commitment tolerance: how far honest re-execution lands from what a serving
//! engine committed, and how far another model lands.
//!
//! ```text
//! cargo run --release --example commit_noise -- CLAIMED.gguf OTHER.gguf [JOBS] [TOKENS]
//! ```
//!
//! The claimed model is served by pot's engine (continuous batching, up to 4 jobs a step, as
//! `pot serve` runs it) with commitments on; each job's committed steps are then compared with
//! a teacher-forced re-execution (one pass, as the router runs it) by the same model with the
//! same kernels, by the same weights on dense f32 kernels, and by the other model. Printed: the
//! distribution of each step's worst disagreement (`commit::step::check`), and the share of
//! steps that fail at several tolerances.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use pot::challenge::{Catalog, ChallengeKey};
use pot::commit::step::check;
use pot::model::{Kernels, LoadOptions, Model};
use pot::serve::engine::{self, Event, Job};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (claimed, other) = match (args.first(), args.get(1)) {
        (Some(a), Some(b)) => (a.clone(), b.clone()),
        _ => anyhow::bail!("usage: commit_noise CLAIMED.gguf OTHER.gguf [JOBS] [TOKENS]"),
    };
    let jobs: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let tokens: usize = args.get(3).map_or(Ok(32), |s| s.parse())?;
    let load = |spec: &str, kernels| Model::load(spec, LoadOptions::kernels(kernels));
    let provider_kernels = match std::env::var("PROVIDER_KERNELS").as_deref() {
        Ok("dense") => Kernels::Dense,
        _ => Kernels::Quantized,
    };
    let model = Arc::new(load(&claimed, provider_kernels)?);

    // Serve the jobs through the engine, 4 at a time, committing.
    let catalog = Catalog::load()?;
    let key = ChallengeKey::from_bytes([7; 32]);
    let prompts: Vec<Vec<u32>> = (0..jobs as u64)
        .map(|i| {
            model
                .tokenizer
                .encode(&catalog.challenge(&key, "noise", i).prompt)
        })
        .collect::<Result<_, _>>()?;
    let (queue, rx) = std::sync::mpsc::sync_channel::<Job>(jobs);
    let worker = engine::spawn(model.clone(), rx, 4, Arc::new(AtomicBool::new(false)));
    let mut receivers = Vec::new();
    let t0 = std::time::Instant::now();
    for p in &prompts {
        let (job, r) = Job::greedy(p.clone(), tokens, true);
        queue.send(job)?;
        receivers.push(r);
    }
    drop(queue);
    let mut committed = Vec::new();
    for mut r in receivers {
        while let Some(ev) = r.blocking_recv() {
            if let Event::Done { steps, .. } = ev {
                committed.push(steps.expect("committing jobs report their steps"));
                break;
            }
        }
    }
    worker.join().expect("engine");
    let served = t0.elapsed().as_secs_f64();
    let n_steps: usize = committed.iter().map(|c| c.steps.len()).sum();
    println!("served {jobs} jobs, {n_steps} steps in {served:.1} s");

    let dense = load(&claimed, Kernels::Dense)?;
    let quantized = load(&claimed, Kernels::Quantized)?;
    let other = load(&other, Kernels::Quantized)?;
    for (name, m) in [
        ("same model, same kernels", &*model),
        ("same weights, dense f32 kernels", &dense),
        ("same weights, quantized kernels", &quantized),
        ("other model", &other),
    ] {
        let mut worst: Vec<f64> = Vec::new();
        let t = std::time::Instant::now();
        for (p, c) in prompts.iter().zip(&committed) {
            let mut seq = p.clone();
            seq.extend_from_slice(&c.output[..c.output.len() - 1]);
            let rows = m.logprobs(&seq, p.len() - 1)?;
            for (i, (d, row)) in c.steps.iter().zip(&rows).enumerate() {
                let (w, m) = check(d, row, 0.0);
                if std::env::var("DBG").is_ok() && worst.len() < 40 {
                    println!(
                        "step {i} worst {w:.4} {:?} top0 {:?} rec {:.4}",
                        m.map(|m| m.to_string()),
                        d.top[0],
                        row[d.top[0].0 as usize]
                    );
                }
                worst.push(w);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        worst.sort_by(f64::total_cmp);
        let q = |f: f64| worst[((worst.len() - 1) as f64 * f).round() as usize];
        println!(
            "{name}: worst disagreement per step (nats): median {:.5}, p90 {:.5}, p99 {:.5}, max {:.5}; re-executed in {secs:.1} s",
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0)
        );
        for tol in [0.01, 0.05, 0.2, 0.5, 1.0, 2.0] {
            let fail = worst.iter().filter(|&&w| w > tol).count();
            println!(
                "  tol {tol:>4}: {fail}/{} steps fail ({:.1}%)",
                worst.len(),
                100.0 * fail as f64 / worst.len() as f64
            );
        }
    }
    Ok(())
}
