//! The fixed-point test against the real-valued one on every recorded run of real pairs.
//!
//! ```text
//! cargo run --release --example fixed_point_replay -- [RESULTS_DIR ...]
//! ```
//!
//! For each directory of `scripts/run-experiments.sh` results (default: `experimental_results`
//! and `experimental_results/v1-2026-11`), each pot run's recorded scores (`queries.csv`) are
//! replayed through
//! * pot's test, in fixed point (`pot::stats::fixed`), and
//! * the real-valued test pot decided with before it (transcript format 2: the same bets,
//!   weights, cycles and stopping rule in `f64`, kept here only as the yardstick),
//!
//! and the verdicts, queries to decision and final bounds are compared, per pair and mode.
//! Runs of transcript format 2 (a `clip` column) are also compared with what they recorded.
//! Runs of format 1 were decided by an older test: there only the two replays are compared,
//! with that format's margins and B = 2δ. Exit 1 when any verdict or query count differs.

use pot::stats::{run_stream, Decision, SequentialTest, TestParams, CYCLE};
use std::collections::BTreeMap;
use std::path::Path;

/// The real-valued test of transcript format 2 (pot's decision before the fixed point).
mod real {
    use super::*;

    const SHARES: [f64; 12] = [
        0.95, 0.7, 0.5, 0.35, 0.25, 0.17, 0.12, 0.08, 0.05, 0.03, 0.02, 0.01,
    ];

    fn weight(g: usize) -> f64 {
        if g == 0 {
            0.5
        } else {
            0.5 / 11.0
        }
    }

    /// log of the mixture wealth of a gambler refuting `μ ≤ m` (`up`) or `μ ≥ m` after `xs`.
    fn log_mixture(logs: &[f64]) -> f64 {
        let m = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + logs
            .iter()
            .enumerate()
            .map(|(g, v)| weight(g) * (v - m).exp())
            .sum::<f64>()
            .ln()
    }

    fn push(logs: &mut [f64], x: f64, m: f64, up: bool) {
        let (y, cap) = if up {
            (x - m, 1.0 / m)
        } else {
            (m - x, 1.0 / (1.0 - m))
        };
        for (w, s) in logs.iter_mut().zip(SHARES) {
            *w += (1.0 + s * cap * y).ln();
        }
    }

    /// The decision and the challenges it took, as format 2 decided.
    pub fn run(p: TestParams, scores: &[f64]) -> (Decision, usize) {
        let (mut d, mut s) = ([0.0; 12], [0.0; 12]);
        let threshold = (1.0 / p.alpha).ln();
        for (i, score) in scores.iter().enumerate() {
            let score = if score.is_nan() { p.clip } else { *score };
            let x = score.clamp(0.0, p.clip) / p.clip;
            push(&mut d, x, p.gamma / p.clip, true);
            push(&mut s, x, p.delta / p.clip, false);
            let n = i + 1;
            if n % CYCLE == 0 && n >= p.n_min {
                let (wd, ws) = (log_mixture(&d), log_mixture(&s));
                if wd >= threshold && wd >= ws {
                    return (Decision::Different, n);
                } else if ws >= threshold {
                    return (Decision::Same, n);
                }
            }
            if n >= p.n_max {
                return (Decision::Undecided, n);
            }
        }
        (Decision::Undecided, scores.len())
    }
}

/// Rows of a CSV file as maps from column name (fields are plain or double-quoted, with no
/// commas inside).
fn read_csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/run-experiments.sh)", path.display()));
    let mut lines = text.lines();
    let split = |l: &str| -> Vec<String> {
        l.split(',')
            .map(|f| f.trim_matches('"').to_string())
            .collect()
    };
    let names = split(lines.next().unwrap_or_default());
    lines
        .map(|l| names.iter().cloned().zip(split(l)).collect())
        .collect()
}

fn num(row: &BTreeMap<String, String>, k: &str) -> f64 {
    row.get(k)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("column {k} in {row:?}"))
}

#[derive(Default)]
struct Tally {
    runs: usize,
    same_verdict: usize,
    same_queries: usize,
    recorded: usize,
    recorded_agree: usize,
    max_bound_shift: f64,
}

fn main() {
    let mut dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        dirs = vec![
            "experimental_results".into(),
            "experimental_results/v1-2026-11".into(),
        ];
    }
    let mut differ = 0;
    for dir in &dirs {
        let dir = Path::new(dir);
        let runs = read_csv(&dir.join("runs.csv"));
        let mut scores: BTreeMap<String, Vec<(usize, f64)>> = BTreeMap::new();
        for q in read_csv(&dir.join("queries.csv")) {
            scores
                .entry(q["run_id"].clone())
                .or_default()
                .push((num(&q, "index") as usize, num(&q, "score")));
        }
        let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
        for r in runs.iter().filter(|r| r["method"] == "pot") {
            let Some(mut s) = scores.remove(&r["run_id"]) else {
                continue;
            };
            s.sort_by_key(|(i, _)| *i);
            let s: Vec<f64> = s.into_iter().map(|(_, v)| v).collect();
            let (n_min, n_max) = match r["mode"].as_str() {
                "quick" => (CYCLE, 50),
                "audit" => (CYCLE, 200),
                _ => (2 * CYCLE, 1000),
            };
            let delta = num(r, "delta");
            let format2 = r.contains_key("clip");
            let p = TestParams {
                alpha: num(r, "alpha"),
                gamma: num(r, "gamma"),
                delta,
                clip: if format2 { num(r, "clip") } else { 2.0 * delta },
                n_min,
                n_max,
            };
            let fixed = run_stream(p, s.iter().copied());
            let real = real::run(p, &s);
            let t = tallies
                .entry(format!("{} {}", r["pair"], r["mode"]))
                .or_default();
            t.runs += 1;
            t.same_verdict += (fixed.0 == real.0) as usize;
            t.same_queries += (fixed.1 == real.1) as usize;
            if fixed != real {
                differ += 1;
                eprintln!(
                    "{} ({} {}): fixed {:?} after {}, real {:?} after {}",
                    r["run_id"], r["pair"], r["mode"], fixed.0, fixed.1, real.0, real.1
                );
            }
            if format2 {
                t.recorded += 1;
                let agree =
                    r["decision"] == real.0.as_str() && num(r, "queries") as usize == real.1;
                t.recorded_agree += agree as usize;
                let mut test = SequentialTest::new(p).expect("valid");
                for v in &s[..fixed.1.min(s.len())] {
                    test.push(*v);
                }
                let st = test.status();
                let shift = (st.lower - num(r, "lower"))
                    .abs()
                    .max((st.upper - num(r, "upper")).abs())
                    / p.clip;
                t.max_bound_shift = t.max_bound_shift.max(shift);
            }
        }
        println!("\n## {}\n", dir.display());
        println!("| pair, mode | runs | same verdict | same queries | recorded = real-valued replay | largest bound shift (share of B) |");
        println!("|---|---:|---:|---:|---:|---:|");
        let mut all = Tally::default();
        for (k, t) in &tallies {
            let rec = if t.recorded > 0 {
                format!("{}/{}", t.recorded_agree, t.recorded)
            } else {
                "(format 1)".into()
            };
            let shift = if t.recorded > 0 {
                format!("{:.1e}", t.max_bound_shift)
            } else {
                "-".into()
            };
            println!(
                "| {k} | {} | {} | {} | {rec} | {shift} |",
                t.runs, t.same_verdict, t.same_queries
            );
            all.runs += t.runs;
            all.same_verdict += t.same_verdict;
            all.same_queries += t.same_queries;
            all.recorded += t.recorded;
            all.recorded_agree += t.recorded_agree;
            all.max_bound_shift = all.max_bound_shift.max(t.max_bound_shift);
        }
        println!(
            "| **all** | {} | {} | {} | {}/{} | {:.1e} |",
            all.runs,
            all.same_verdict,
            all.same_queries,
            all.recorded_agree,
            all.recorded,
            all.max_bound_shift
        );
    }
    if differ > 0 {
        eprintln!("{differ} runs decided otherwise in fixed point");
        std::process::exit(1);
    }
}
