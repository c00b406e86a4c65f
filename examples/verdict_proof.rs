//! What a Halo2 proof of a verdict costs: proof size, proving time and memory, verification
//! time, for runs of a given number of challenges.
//!
//! ```text
//! cargo run --release --example verdict_proof -- 10 50 200
//! ```
//!
//! Each run is made to end at exactly N challenges: N = 10 is the SAME of identical outputs
//! (every score 0, audit mode); longer runs are scores in the indifference zone (each at 0 or
//! B, mean 3/8 of B, from a fixed seed) at α = 10⁻⁹, UNDECIDED at a budget of N. The verdict arithmetic is
//! the same at every N (the circuit grows with N, not with the verdict). Times are wall
//! seconds on this machine; memory is the process's peak resident set (run one N per process
//! for a clean figure, as `scripts/bench-verdict-proof.sh` does).

use halo2_proofs::pasta::Fp;
use pot::stats::{fixed, Decision, TestParams};
use pot::zk::{self, Statement, Witness};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Params and grid scores of a run that ends at exactly `n` challenges.
fn run_of(n: usize) -> (TestParams, Vec<u64>, Decision) {
    let mut p = TestParams {
        alpha: 0.01,
        gamma: 0.005,
        delta: 0.01,
        clip: 0.02,
        n_min: 5,
        n_max: 200,
    };
    if n == 10 {
        return (p, vec![0; 10], Decision::Same);
    }
    p.n_max = n;
    // At α = 0.01 such scores decide within 200; the strictest α pot accepts keeps them
    // undecided longer (the circuit's cost does not depend on α).
    p.alpha = fixed::MIN_ALPHA;
    for seed in 0..1000u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let qs: Vec<u64> = (0..n)
            .map(|_| {
                if rng.gen::<f64>() < 0.375 {
                    fixed::Q
                } else {
                    0
                }
            })
            .collect();
        let (d, m) = zk::replay(&p, &qs);
        if m == n {
            return (p, qs, d);
        }
    }
    panic!("no seed ends at {n}");
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--pins") {
        // `--pins [K ...]`: the digests to pin in src/zk (default: every k pot uses).
        let ks: Vec<u32> = std::env::args()
            .skip(2)
            .map(|a| a.parse().expect("a k"))
            .collect();
        let ks = if ks.is_empty() {
            (13..=18).collect()
        } else {
            ks
        };
        for k in ks {
            println!("    ({k}, \"{}\"),", zk::params_digest(k));
        }
        return;
    }
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number of challenges"))
        .collect();
    let ns = if ns.is_empty() { vec![10, 50, 200] } else { ns };
    println!("| challenges | verdict | bounds proven | k (rows) | keys s | prove s | proof bytes | verify s (params + key + check) | peak RSS MiB |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|");
    for n in ns {
        let (p, qs, decision) = run_of(n);
        let salt = Fp::from(0x5eed);
        // The bounds pot publishes for these scores (each 0 or B, so exact as floats).
        let mut test = pot::stats::SequentialTest::new(p).expect("valid parameters");
        for &q in &qs {
            test.push(q as f64 / fixed::Q as f64 * p.clip);
        }
        let status = test.status();
        let st = Statement {
            params: p,
            decision,
            queries: n,
            lower: status.lower,
            upper: status.upper,
            commitment: zk::commitment(salt, &qs),
        };
        let w = Witness { salt, qs };
        let shape = st.shape().expect("a valid statement");
        let t0 = Instant::now();
        let proof = zk::prove(&st, &w).expect("proves");
        let prove_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        zk::verify(&st, &proof).expect("verifies");
        let verify_s = t1.elapsed().as_secs_f64();
        // The parts: the public parameters, the verifying key, the proving key.
        let t2 = Instant::now();
        let params = zk::setup(shape.k());
        let params_s = t2.elapsed().as_secs_f64();
        let empty = zk::VerdictCircuit {
            shape: shape.clone(),
            witness: None,
        };
        let t3 = Instant::now();
        let vk = halo2_proofs::plonk::keygen_vk(&params, &empty).unwrap();
        let vk_s = t3.elapsed().as_secs_f64();
        let t4 = Instant::now();
        let _pk = halo2_proofs::plonk::keygen_pk(&params, vk, &empty).unwrap();
        let pk_s = t4.elapsed().as_secs_f64();
        eprintln!(
            "n = {n}: params {params_s:.1} s, verifying key {vk_s:.1} s, proving key {pk_s:.1} s"
        );
        let keys_s = params_s + vk_s + pk_s;
        println!(
            "| {n} | {} | {} | {} ({}) | {keys_s:.1} | {prove_s:.1} | {} | {verify_s:.2} | {:.0} |",
            decision.as_str(),
            match (shape.lower.is_some(), shape.upper.is_some()) {
                (true, true) => "both",
                (true, false) => "lower",
                (false, true) => "upper",
                (false, false) => "none",
            },
            shape.k(),
            shape.rows(),
            proof.len(),
            peak_rss_mib()
        );
    }
}
