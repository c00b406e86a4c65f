//! Choosing pot's sequential test by simulation, on score distributions measured on real
//! models (`pot calibrate --keep-positions -o CAL.json`).
//!
//! ```text
//! cargo run --release --example test_design -- CAL.json [CAL2.json ...] [--streams N] [--kind kl|endpoint]
//! ```
//!
//! For each design (clip B as a multiple of δ, continuation length K; the betting is pot's own,
//! in its fixed-point arithmetic: `pot::stats::fixed`), it
//! reports:
//! * **power and speed on real entries**: streams resampled from each floor entry and rung of
//!   each calibration (stratified: each cycle draws one challenge of each family, with
//!   replacement from that family's measured scores): the share of SAME / DIFFERENT /
//!   UNDECIDED verdicts and the median and 90th percentile of the queries to a verdict;
//! * **error at the boundaries**: streams whose true mean clipped score is exactly γ (a
//!   DIFFERENT there is wrong) or exactly δ (a SAME there is wrong), with shapes fitted to the
//!   real runs: each measured entry's scores rescaled so that their clipped mean sits on the
//!   boundary (heavy right tails kept), a lognormal with the measured log-spread, the two-point
//!   {0, B} law (the most variable law with that mean), and families of unequal means. Each
//!   rate must stay at or below α; they are printed with their Clopper–Pearson 95 % upper bound.

use pot::calibrate::Calibration;
use pot::stats::{Decision, SequentialTest, TestParams, CYCLE};
use rand::{Rng, SeedableRng};

/// A measured entry: per family, the per-challenge scores at the studied K.
struct Sample {
    label: String,
    families: Vec<Vec<f64>>,
}

fn prefix_mean(v: &[f64], k: usize) -> f64 {
    let k = k.min(v.len()).max(1);
    v[..k].iter().sum::<f64>() / k as f64
}

/// Per-family score lists of every entry, the score at continuation length `k` (a prefix of
/// the measured positions when kept, else the stored score).
fn samples(cal: &Calibration, k: usize, endpoint: bool) -> Vec<Sample> {
    let mut fams: Vec<String> = cal.families.clone();
    fams.sort();
    fams.dedup();
    cal.entries
        .iter()
        .map(|e| {
            let per_challenge: Vec<f64> = match (endpoint, &e.positions, &e.endpoint_positions) {
                (false, Some(p), _) => p.iter().map(|v| prefix_mean(v, k)).collect(),
                (true, _, Some(p)) => p.iter().map(|v| prefix_mean(v, k)).collect(),
                (false, _, _) => e.scores.clone(),
                (true, _, _) => e.endpoint_scores.clone(),
            };
            let families = fams
                .iter()
                .map(|f| {
                    cal.families
                        .iter()
                        .zip(&per_challenge)
                        .filter(|(g, _)| *g == f)
                        .map(|(_, s)| *s)
                        .collect()
                })
                .collect();
            let name = std::path::Path::new(&cal.reference.path)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Sample {
                label: format!("{}:{}", short(&name), e.name),
                families,
            }
        })
        .collect()
}

fn short(name: &str) -> String {
    name.chars().take(14).collect()
}

struct Design {
    name: String,
    params: TestParams,
    k: usize,
}

/// One stratified stream run through a test: (decision, queries).
fn run(design: &Design, mut draw: impl FnMut(usize) -> f64) -> (Decision, usize) {
    let mut t = SequentialTest::new(design.params).expect("valid");
    for i in 0..design.params.n_max {
        if let Some(d) = t.push(draw(i % CYCLE)) {
            return (d, t.n());
        }
    }
    (Decision::Undecided, t.n())
}

/// Mean of `min(c·s, clip)` over a family-balanced sample.
fn clipped_mean(fams: &[Vec<f64>], c: f64, clip: f64) -> f64 {
    fams.iter()
        .map(|f| f.iter().map(|s| (c * s).min(clip)).sum::<f64>() / f.len() as f64)
        .sum::<f64>()
        / fams.len() as f64
}

/// The factor c with clipped mean of c·scores equal to `target` (bisection; None when the
/// scores are all zero or the target is out of reach).
fn scale_to(fams: &[Vec<f64>], target: f64, clip: f64) -> Option<f64> {
    if clipped_mean(fams, 1e12, clip) < target || clipped_mean(fams, 1.0, clip) <= 0.0 {
        return None;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while clipped_mean(fams, hi, clip) < target {
        hi *= 2.0;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if clipped_mean(fams, mid, clip) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

fn clopper_pearson_upper(k: usize, n: usize) -> f64 {
    use statrs::distribution::{Beta, ContinuousCDF};
    if k == n {
        return 1.0;
    }
    Beta::new(k as f64 + 1.0, (n - k) as f64)
        .map(|b| b.inverse_cdf(0.975))
        .unwrap_or(1.0)
}

fn quantile(sorted: &[usize], q: f64) -> usize {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut files = Vec::new();
    let mut streams = 10_000usize;
    let mut endpoint = false;
    let mut only_power = false;
    let mut ratios = vec![1.5, 2.0, 3.0, 4.0];
    let mut ks = vec![32usize, 64];
    let list = |v: Option<&String>| -> Vec<String> {
        v.map(|s| s.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--streams" => streams = it.next().and_then(|v| v.parse().ok()).expect("--streams N"),
            "--kind" => endpoint = it.next().map(String::as_str) == Some("endpoint"),
            "--power-only" => only_power = true,
            "--ratios" => {
                ratios = list(it.next())
                    .iter()
                    .map(|v| v.parse().expect("B/δ"))
                    .collect()
            }
            "--ks" => {
                ks = list(it.next())
                    .iter()
                    .map(|v| v.parse().expect("K"))
                    .collect()
            }
            f => files.push(f.to_string()),
        }
    }
    if files.is_empty() {
        eprintln!(
            "usage: test_design CAL.json [...] [--streams N] [--kind kl|endpoint] [--power-only]"
        );
        std::process::exit(2);
    }
    let cals: Vec<Calibration> = files
        .iter()
        .map(|f| Calibration::read(std::path::Path::new(f)).expect("a calibration"))
        .collect();
    // The audit mode's margins for the score kind studied.
    let kind = if endpoint {
        pot::score::ScoreKind::EndpointKl
    } else {
        pot::score::ScoreKind::Kl
    };
    let audit = pot::run::Mode::Audit.params(kind);
    let (gamma, delta, alpha) = (audit.gamma, audit.delta, audit.alpha);
    let mut designs = Vec::new();
    for &ratio in &ratios {
        for &k in &ks {
            designs.push(Design {
                name: format!("B={ratio}δ K={k}"),
                params: TestParams {
                    alpha,
                    gamma,
                    delta,
                    clip: ratio * delta,
                    n_min: CYCLE,
                    n_max: 200,
                },
                k,
            });
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261202);
    for d in &designs {
        println!("\n## {}", d.name);
        let all: Vec<Sample> = cals
            .iter()
            .flat_map(|c| samples(c, d.k, endpoint))
            .collect();
        println!("| entry | mean | SAME | DIFFERENT | UNDECIDED | queries median | p90 |");
        println!("|---|---|---|---|---|---|---|");
        let power_streams = (streams / 5).max(200);
        for s in &all {
            if s.families.iter().any(|f| f.is_empty()) {
                continue;
            }
            let mut counts = [0usize; 3];
            let mut qs = Vec::with_capacity(power_streams);
            for _ in 0..power_streams {
                let (dec, q) = run(d, |f| {
                    let fam = &s.families[f % s.families.len()];
                    fam[rng.gen_range(0..fam.len())]
                });
                counts[match dec {
                    Decision::Same => 0,
                    Decision::Different => 1,
                    Decision::Undecided => 2,
                }] += 1;
                qs.push(q);
            }
            qs.sort_unstable();
            let mean = s.families.iter().flatten().sum::<f64>()
                / s.families.iter().map(Vec::len).sum::<usize>() as f64;
            let share = |c: usize| c as f64 / power_streams as f64;
            println!(
                "| {} | {:.4} | {:.3} | {:.3} | {:.3} | {} | {} |",
                s.label,
                mean,
                share(counts[0]),
                share(counts[1]),
                share(counts[2]),
                quantile(&qs, 0.5),
                quantile(&qs, 0.9)
            );
        }
        if only_power {
            continue;
        }
        println!("\n| boundary shape | at | wrong verdicts | rate | 95% upper |");
        println!("|---|---|---|---|---|");
        let clip = d.params.clip;
        let mut worst = 0.0f64;
        for (at, target, wrong) in [
            ("γ", gamma, Decision::Different),
            ("δ", delta, Decision::Same),
        ] {
            // Shapes: every measured entry rescaled onto the boundary (heavy tails kept).
            let mut shapes: Vec<(String, Vec<Vec<f64>>)> = Vec::new();
            for s in &all {
                if let Some(c) = scale_to(&s.families, target, clip) {
                    let fams = s
                        .families
                        .iter()
                        .map(|f| f.iter().map(|x| c * x).collect())
                        .collect();
                    shapes.push((format!("{} rescaled", s.label), fams));
                }
            }
            // Two-point law {0, B}, equal and unequal family means.
            for (name, ps) in [
                ("two-point {0,B}", [target / clip; 5]),
                ("two-point, unequal families", {
                    // Family probabilities spread around m, inside [0, 1], averaging m.
                    let m = target / clip;
                    let w = m.min(1.0 - m);
                    [-1.0, -0.5, 0.0, 0.5, 1.0].map(|o: f64| m + o * w)
                }),
            ] {
                let fams: Vec<Vec<f64>> = ps
                    .iter()
                    .map(|p| {
                        let ones = (p * 1000.0).round() as usize;
                        (0..1000)
                            .map(|i| if i < ones { clip } else { 0.0 })
                            .collect()
                    })
                    .collect();
                shapes.push((name.into(), fams));
            }
            for (name, fams) in &shapes {
                let n = streams;
                let mut wrong_n = 0;
                for _ in 0..n {
                    let (dec, _) = run(d, |f| {
                        let fam = &fams[f % fams.len()];
                        fam[rng.gen_range(0..fam.len())]
                    });
                    if dec == wrong {
                        wrong_n += 1;
                    }
                }
                let rate = wrong_n as f64 / n as f64;
                worst = worst.max(rate);
                if rate > 0.0 || name.starts_with("two-point") {
                    println!(
                        "| {name} | {at} | {wrong_n}/{n} | {rate:.4} | {:.4} |",
                        clopper_pearson_upper(wrong_n, n)
                    );
                }
            }
        }
        println!("\nworst boundary error rate {worst:.4} (α = {alpha}); shapes with no error are not listed");
    }
}
