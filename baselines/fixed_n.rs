//! The fixed-N baseline: what auditors usually do instead of a sequential test.
//!
//! Draw N challenge prompts (the same keyed families pot uses, fresh key per run), let both
//! models continue each greedily for K tokens, and compare the two texts character by
//! character. The agreement of one challenge is the share of character positions (over the
//! longer text) where both texts hold the same character. The verdict is SAME when the mean
//! agreement over the N challenges is at least τ, DIFFERENT otherwise. There is no error
//! bound: N, K and τ are rules of thumb, and `pot report` measures how often the verdict is
//! wrong beside pot's.
//!
//! ```sh
//! cargo run --release --example fixed-n -- --ref A.gguf --cand B.gguf [-n 20] [--k 32] [--tau 0.95] [--json]
//! ```
//! Exit codes as `pot diff`: 0 SAME, 1 DIFFERENT, 2 error.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use pot::challenge::{Catalog, ChallengeKey};
use pot::model::{Kernels, LoadOptions, Model};

/// Generate N greedy outputs from both models and compare them character by character.
#[derive(Parser)]
struct Args {
    /// Reference model.
    #[arg(long = "ref")]
    reference: String,
    /// Candidate model.
    #[arg(long = "cand")]
    candidate: String,
    /// Challenges.
    #[arg(short, default_value_t = 20)]
    n: usize,
    /// Greedy tokens per challenge.
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// SAME when the mean character agreement is at least this.
    #[arg(long, default_value_t = 0.95)]
    tau: f64,
    /// Engine threads.
    #[arg(long)]
    threads: Option<usize>,
    /// JSON output (the fields `pot diff --json` has, where they mean something here).
    #[arg(long)]
    json: bool,
}

/// Share of character positions, over the longer text, where both texts agree (1 when both
/// are empty).
pub fn char_agreement(a: &str, b: &str) -> f64 {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let n = a.len().max(b.len());
    if n == 0 {
        return 1.0;
    }
    a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / n as f64
}

/// Greedy continuations of `prompts`, `k` tokens at most, as text.
fn continuations(m: &Model, prompts: &[String], k: usize) -> Result<Vec<String>> {
    let ids = prompts
        .iter()
        .map(|p| m.tokenizer.encode(p))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    m.continue_batch(&refs, k, true, false)?
        .into_iter()
        .map(|c| Ok(m.tokenizer.decode(&c.tokens)?))
        .collect()
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fixed-n: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    let a = Args::parse();
    if let Some(t) = a.threads {
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    anyhow::ensure!(a.n > 0 && a.k > 0, "-n and --k must be at least 1");
    anyhow::ensure!((0.0..=1.0).contains(&a.tau), "--tau must lie in [0, 1]");
    let start = Instant::now();
    let opts = LoadOptions::kernels(Kernels::Quantized);
    let r = Model::load(&a.reference, opts).with_context(|| a.reference.clone())?;
    let c = Model::load(&a.candidate, opts).with_context(|| a.candidate.clone())?;
    let key = ChallengeKey::generate();
    let run_id = format!("fixed-n-{:08x}", rand::random::<u32>());
    let cat = Catalog::load()?;
    let prompts: Vec<String> = (0..a.n as u64)
        .map(|i| cat.challenge(&key, &run_id, i).prompt)
        .collect();
    // Groups of five, as pot walks its challenges, so both cost the same per token.
    let mut agreements = Vec::with_capacity(a.n);
    for group in prompts.chunks(5) {
        let (x, y) = (
            continuations(&r, group, a.k)?,
            continuations(&c, group, a.k)?,
        );
        agreements.extend(x.iter().zip(&y).map(|(x, y)| char_agreement(x, y)));
    }
    let mean = agreements.iter().sum::<f64>() / agreements.len() as f64;
    let identical = agreements.iter().filter(|v| **v == 1.0).count();
    let same = mean >= a.tau;
    let decision = if same { "SAME" } else { "DIFFERENT" };
    let elapsed_s = start.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "run_id": run_id,
                "decision": decision,
                "queries": a.n,
                // The score is a divergence, as pot's: 1 - mean agreement.
                "mean": 1.0 - mean,
                "lower": null,
                "upper": null,
                "params": {"n": a.n, "k": a.k, "tau": a.tau},
                "identical": identical,
                "elapsed_s": elapsed_s,
            })
        );
    } else {
        println!("{decision}");
        println!(
            "  {} challenges, {elapsed_s:.1} s; mean character agreement {mean:.4} (SAME at ≥ {}), {identical} identical outputs",
            a.n, a.tau
        );
    }
    Ok(ExitCode::from(if same { 0 } else { 1 }))
}

#[cfg(test)]
mod tests {
    use super::char_agreement;

    #[test]
    fn agreement_counts_positions_over_the_longer_text() {
        assert_eq!(char_agreement("abcd", "abcd"), 1.0);
        assert_eq!(char_agreement("abcd", "abxd"), 0.75);
        assert_eq!(char_agreement("ab", "abcd"), 0.5);
        assert_eq!(char_agreement("", ""), 1.0);
        assert_eq!(char_agreement("é", "e"), 0.0);
    }
}
