//! Selective cheating against audit size: how often the router catches a provider that runs
//! the claimed model on some steps and a cheaper one on the rest.
//!
//! ```text
//! cargo run --release --example selective_cheating -- CLAIMED.gguf CHEAP.gguf [JOBS] [TOKENS] [FRACTIONS]
//! ```
//!
//! For each cheating fraction `f` (default `1,0.5,0.2,0.1`), the provider generates `JOBS`
//! greedy answers of up to `TOKENS` tokens to keyed challenge prompts, drawing each step from
//! the cheap model with probability `f` (both models read every token, so each step continues
//! the same text), and commits what it ran. The router re-executes every step of each job
//! with the claimed model in one teacher-forced pass and marks each step that
//! `commit::step::check` (and, at temperature 0, the greedy rule) would reject at the
//! tolerance. Since the VRF draws `k` distinct steps uniformly, a job with `c` rejectable
//! steps of `n` is caught with probability `1 − C(n−c, k)/C(n, k)` exactly; the table
//! averages that over the jobs, for each `k`, and also counts real VRF draws (one per job and
//! `k`) as a check. Printed: the per-step catch rate of cheated and honest steps, the table,
//! and the smallest `k` reaching 99 %.

use pot::challenge::{Catalog, ChallengeKey};
use pot::commit::keys::RouterKey;
use pot::commit::select::Selection;
use pot::commit::step::{check, StepData};
use pot::model::{argmax, KvCache, LoadOptions, Model};
use pot::verify::TOL_QUANTIZED;
use rand::{Rng, SeedableRng};

/// Whether the router rejects a step: the greedy rule, then the value check.
fn rejects(d: &StepData, row: &[f32], tol: f64) -> bool {
    !d.is_greedy(tol) || check(d, row, tol).1.is_some()
}

/// `1 − C(n−c, k)/C(n, k)`: a uniform draw of `k` of `n` steps hits one of `c`.
fn hit(n: usize, c: usize, k: usize) -> f64 {
    let k = k.min(n);
    if n - c < k {
        return 1.0;
    }
    let miss: f64 = (0..k)
        .map(|i| (n - c - i) as f64 / (n - i) as f64)
        .product();
    1.0 - miss
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(claimed_path), Some(cheap_path)) = (args.first(), args.get(1)) else {
        anyhow::bail!(
            "usage: selective_cheating CLAIMED.gguf CHEAP.gguf [JOBS] [TOKENS] [FRACTIONS]"
        );
    };
    let jobs: usize = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let tokens: usize = args.get(3).map_or(Ok(32), |s| s.parse())?;
    let fractions: Vec<f64> = args
        .get(4)
        .map_or("1,0.5,0.2,0.1", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let real = Model::load(claimed_path, LoadOptions::default())?;
    let cheap = Model::load(cheap_path, LoadOptions::default())?;
    anyhow::ensure!(
        real.tokenizer.vocab_size() == cheap.tokenizer.vocab_size(),
        "the two models must share a tokenizer"
    );
    let tol = TOL_QUANTIZED;
    let catalog = Catalog::load()?;
    let key = ChallengeKey::from_bytes([13; 32]);
    let prompts: Vec<Vec<u32>> = (0..jobs as u64)
        .map(|i| {
            real.chat_prompt(&[pot::model::chat::Message {
                role: "user".into(),
                content: catalog.challenge(&key, "cheat", i).prompt,
            }])
        })
        .collect::<Result<_, _>>()?;
    let router = RouterKey::generate();
    let ks = [1usize, 2, 4, 8, 16, 32];
    println!("claimed {claimed_path}, cheap {cheap_path}: {jobs} jobs of up to {tokens} tokens, tolerance {tol} nats");
    for &f in &fractions {
        let mut rng = rand::rngs::StdRng::seed_from_u64((f * 1e6) as u64);
        let t0 = std::time::Instant::now();
        // Per job: which steps the router would reject; per step kind: counts.
        let mut per_job: Vec<Vec<bool>> = Vec::new();
        let (mut cheated, mut cheated_caught, mut honest, mut honest_caught) = (0, 0, 0, 0);
        for p in &prompts {
            let (mut rc, mut cc) = (KvCache::default(), KvCache::default());
            let (mut out, mut steps, mut flags) = (Vec::new(), Vec::new(), Vec::new());
            let mut chunk: Vec<u32> = p.clone();
            for _ in 0..tokens {
                let from = chunk.len() - 1;
                let rr = real
                    .decoder
                    .forward_rows(&[&chunk], &mut [&mut rc], &[from])?;
                let cr = cheap
                    .decoder
                    .forward_rows(&[&chunk], &mut [&mut cc], &[from])?;
                let cheat = rng.gen::<f64>() < f;
                let logits = if cheat { cr } else { rr };
                let row = pot::model::decoder::log_softmax_rows(&logits)?.remove(0);
                let t = argmax(&row);
                steps.push(StepData::from_logits(&row, t));
                flags.push(cheat);
                out.push(t);
                if real.tokenizer.stop_ids.contains(&t) {
                    break;
                }
                chunk = vec![t];
            }
            // The router: one teacher-forced pass of the claimed model over every step.
            let mut seq = p.clone();
            seq.extend_from_slice(&out[..out.len() - 1]);
            let rows = real.logprobs(&seq, p.len() - 1)?;
            let mut rejectable = Vec::new();
            for ((d, row), &cheat) in steps.iter().zip(&rows).zip(&flags) {
                let r = rejects(d, row, tol);
                rejectable.push(r);
                if cheat {
                    cheated += 1;
                    cheated_caught += r as usize;
                } else {
                    honest += 1;
                    honest_caught += r as usize;
                }
            }
            per_job.push(rejectable);
        }
        println!(
            "\ncheating fraction {f}: {cheated} cheated steps, {cheated_caught} rejectable ({:.1}%); {honest} honest steps, {honest_caught} rejectable; {:.0} s",
            100.0 * cheated_caught as f64 / cheated.max(1) as f64,
            t0.elapsed().as_secs_f64()
        );
        println!("  audited steps k | detection (exact, mean over jobs) | caught by one real VRF draw per job");
        let mut reached = None;
        for &k in &ks {
            let exact: f64 = per_job
                .iter()
                .map(|r| hit(r.len(), r.iter().filter(|&&x| x).count(), k))
                .sum::<f64>()
                / jobs as f64;
            // The router's real choice: a VRF over a fresh digest (a receipt's stands here).
            let drawn = per_job
                .iter()
                .filter(|r| {
                    let (_, idx) = Selection::make(&router, &rng.gen(), r.len() as u32, k as u32);
                    idx.iter().any(|&i| r[i as usize])
                })
                .count();
            println!("  {k:>15} | {exact:>33.4} | {drawn:>3}/{jobs}");
            if reached.is_none() && exact >= 0.99 {
                reached = Some(k);
            }
        }
        match reached {
            Some(k) => println!("  99% reached at k = {k}"),
            None => println!("  99% not reached within k = {}", ks[ks.len() - 1]),
        }
    }
    Ok(())
}
