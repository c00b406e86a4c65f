//! `pot report`: the experiments' results as tables and plots (`REPORT.md`).
//!
//! Reads `runs.csv` and `queries.csv` (written by `scripts/run-experiments.sh`) with polars and
//! writes `REPORT.md` and SVG plots beside them. Which verdict is right for a pair is never
//! taken from a label: each pair's mean clipped score μ is estimated from all its challenges
//! (with a Hoeffding 95 % interval, valid because clipped scores are bounded), and a verdict is
//! wrong when the interval lies wholly on the other side of a margin: SAME is wrong when μ > δ,
//! DIFFERENT when μ < γ. Pairs whose interval touches [γ, δ] accept either verdict. Error rates
//! carry exact Clopper–Pearson 95 % intervals (statrs' Beta quantiles).
//!
//! This room reads only the results folder and writes only REPORT.md and its plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::Serialize;
use statrs::distribution::{Beta, ContinuousCDF};

mod markdown;
mod plots;
use markdown::markdown;

/// Report errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// A results file that is not there.
    #[error("{path}: missing; run scripts/run-experiments.sh first (or pass --results DIR)")]
    Missing {
        /// File.
        path: String,
    },
    /// A results file that does not parse as CSV.
    #[error("{path}: not a results CSV ({source})")]
    Input {
        /// File.
        path: String,
        /// polars' error.
        #[source]
        source: PolarsError,
    },
    /// A results file without a column the report needs, or with a damaged one.
    #[error("{path}: {source}; the file lacks a column pot report needs, or is damaged")]
    Columns {
        /// File.
        path: String,
        /// polars' error.
        #[source]
        source: PolarsError,
    },
    /// A plot cannot be drawn or written.
    #[error("{path}: {reason}")]
    Plot {
        /// File.
        path: String,
        /// plotters' message.
        reason: String,
    },
    /// The report cannot be written.
    #[error("{path}: cannot write ({source})")]
    Output {
        /// File.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The error bound, margins and clip bound of a pair's runs in a mode (α, γ, δ, B), as the
/// runs recorded them (margins depend on how the pair is scored, so they are per pair).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Margins {
    /// α.
    pub alpha: f64,
    /// γ.
    pub gamma: f64,
    /// δ.
    pub delta: f64,
    /// B.
    pub clip: f64,
}

/// Which verdict is right for a pair, from its estimated mean score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Truth {
    /// μ < γ: SAME is right, DIFFERENT is a false reject.
    Same,
    /// μ > δ: DIFFERENT is right, SAME is a false accept.
    Different,
    /// The interval touches [γ, δ]: either verdict is right.
    Either,
}

impl Truth {
    fn as_str(self) -> &'static str {
        match self {
            Truth::Same => "SAME",
            Truth::Different => "DIFFERENT",
            Truth::Either => "either",
        }
    }
}

/// A pair's estimated mean clipped score in one mode.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    /// Pair.
    pub pair: String,
    /// Mode.
    pub mode: String,
    /// Challenges pooled over all runs.
    pub challenges: usize,
    /// Mean clipped score.
    pub mean: f64,
    /// Hoeffding 95 % interval.
    pub lower: f64,
    /// Upper end.
    pub upper: f64,
    /// Which verdict is right.
    pub truth: Truth,
}

/// The runs of one pair, method and mode.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// Pair.
    pub pair: String,
    /// `pot` or `baseline`.
    pub method: String,
    /// Mode.
    pub mode: String,
    /// Runs.
    pub runs: usize,
    /// SAME verdicts.
    pub same: usize,
    /// DIFFERENT verdicts.
    pub different: usize,
    /// UNDECIDED verdicts.
    pub undecided: usize,
    /// The right verdict (None when no estimate exists for the pair).
    pub truth: Option<Truth>,
    /// Wrong verdicts.
    pub wrong: usize,
    /// Clopper–Pearson 95 % interval of the wrong-verdict rate.
    pub wrong_ci: (f64, f64),
    /// Median queries to a verdict.
    pub queries_median: f64,
    /// 90th percentile.
    pub queries_p90: f64,
    /// Median wall seconds per run.
    pub wall_median: f64,
    /// 90th percentile.
    pub wall_p90: f64,
}

/// Error rates of one method and mode over all pairs.
#[derive(Clone, Debug, Serialize)]
pub struct Rates {
    /// Method.
    pub method: String,
    /// Mode.
    pub mode: String,
    /// SAME verdicts on pairs whose right verdict is DIFFERENT, of such runs.
    pub false_accept: (usize, usize),
    /// Its Clopper–Pearson 95 % interval.
    pub false_accept_ci: (f64, f64),
    /// DIFFERENT verdicts on pairs whose right verdict is SAME, of such runs.
    pub false_reject: (usize, usize),
    /// Its interval.
    pub false_reject_ci: (f64, f64),
    /// UNDECIDED verdicts, of all runs.
    pub undecided: (usize, usize),
}

/// What [`run`] found and wrote.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Per pair and mode.
    pub estimates: Vec<Estimate>,
    /// Per pair, method and mode.
    pub groups: Vec<Group>,
    /// Per method and mode.
    pub rates: Vec<Rates>,
    /// Files written.
    pub written: Vec<String>,
}

/// The exact (Clopper–Pearson) two-sided 95 % interval of a binomial rate, k of n.
pub fn clopper_pearson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let a = 0.05;
    let (k, nf) = (k as f64, n as f64);
    let lo = if k == 0.0 {
        0.0
    } else {
        Beta::new(k, nf - k + 1.0)
            .expect("positive shapes")
            .inverse_cdf(a / 2.0)
    };
    let hi = if k == nf {
        1.0
    } else {
        Beta::new(k + 1.0, nf - k)
            .expect("positive shapes")
            .inverse_cdf(1.0 - a / 2.0)
    };
    (lo, hi)
}

fn read_csv(path: &Path) -> Result<DataFrame, ReportError> {
    if !path.is_file() {
        return Err(ReportError::Missing {
            path: path.display().to_string(),
        });
    }
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(None)
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|source| ReportError::Input {
            path: path.display().to_string(),
            source,
        })
}

fn strs(df: &DataFrame, name: &str) -> Result<Vec<String>, PolarsError> {
    Ok(df
        .column(name)?
        .cast(&DataType::String)?
        .str()?
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect())
}

fn floats(df: &DataFrame, name: &str) -> Result<Vec<f64>, PolarsError> {
    Ok(df
        .column(name)?
        .cast(&DataType::Float64)?
        .f64()?
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

/// The margins each pair's pot runs recorded, per mode: α, γ and δ from their columns, and B
/// from the clip column when the results have one (runs before it had B = 2δ in every mode).
fn recorded_margins(runs: &DataFrame) -> Result<Vec<(String, String, Margins)>, PolarsError> {
    let (pair, mode, method) = (
        strs(runs, "pair")?,
        strs(runs, "mode")?,
        strs(runs, "method")?,
    );
    let (alpha, gamma, delta) = (
        floats(runs, "alpha")?,
        floats(runs, "gamma")?,
        floats(runs, "delta")?,
    );
    let clip = match runs.column("clip") {
        Ok(_) => floats(runs, "clip")?,
        Err(_) => delta.iter().map(|d| 2.0 * d).collect(),
    };
    let mut out: Vec<(String, String, Margins)> = Vec::new();
    for i in 0..pair.len() {
        if method[i] != "pot" || out.iter().any(|(p, m, _)| *p == pair[i] && *m == mode[i]) {
            continue;
        }
        out.push((
            pair[i].clone(),
            mode[i].clone(),
            Margins {
                alpha: alpha[i],
                gamma: gamma[i],
                delta: delta[i],
                clip: if clip[i].is_finite() {
                    clip[i]
                } else {
                    2.0 * delta[i]
                },
            },
        ));
    }
    Ok(out)
}

fn counts(df: &DataFrame, name: &str) -> Result<Vec<usize>, PolarsError> {
    Ok(floats(df, name)?
        .into_iter()
        .map(|v| if v.is_finite() { v as usize } else { 0 })
        .collect())
}

/// Read the results in `dir`, write `REPORT.md` and plots into `dir`.
pub fn run(dir: &Path) -> Result<Report, ReportError> {
    let runs_path = dir.join("runs.csv");
    let queries_path = dir.join("queries.csv");
    let runs = read_csv(&runs_path)?;
    let queries = read_csv(&queries_path)?;
    let perr = |path: &Path| {
        let p = path.display().to_string();
        move |source: PolarsError| ReportError::Columns {
            path: p.clone(),
            source,
        }
    };
    let recorded = recorded_margins(&runs).map_err(perr(&runs_path))?;
    let margins = |pair: &str, mode: &str| {
        recorded
            .iter()
            .find(|(p, m, _)| p == pair && m == mode)
            .map(|(_, _, x)| *x)
    };
    let margins = &margins;

    // Each pair's clip bound in each mode, as a column, to clip the scores as the test does.
    let mut clip_expr = lit(f64::NAN);
    for (p, m, x) in &recorded {
        clip_expr = when(
            col("mode")
                .eq(lit(m.clone()))
                .and(col("pair").eq(lit(p.clone()))),
        )
        .then(lit(x.clip))
        .otherwise(clip_expr);
    }
    let est = queries
        .clone()
        .lazy()
        .filter(col("method").eq(lit("pot")))
        .with_column(clip_expr.alias("clip"))
        .with_column(
            when(col("score").gt(col("clip")).or(col("score").is_nan()))
                .then(col("clip"))
                .when(col("score").lt(lit(0.0)))
                .then(lit(0.0))
                .otherwise(col("score"))
                .alias("clipped"),
        )
        .group_by_stable([col("pair"), col("mode")])
        .agg([
            len().alias("challenges"),
            col("clipped").mean().alias("mean"),
            col("clip").first().alias("clip"),
        ])
        .collect()
        .map_err(perr(&queries_path))?;
    let mut estimates = Vec::new();
    {
        let e = |x| perr(&queries_path)(x);
        let (pairs, ms) = (
            strs(&est, "pair").map_err(e)?,
            strs(&est, "mode").map_err(e)?,
        );
        let n = counts(&est, "challenges").map_err(e)?;
        let mean = floats(&est, "mean").map_err(e)?;
        let clip = floats(&est, "clip").map_err(e)?;
        for i in 0..pairs.len() {
            let Some(mg) = margins(&pairs[i], &ms[i]) else {
                continue;
            };
            // Hoeffding: clipped scores lie in [0, B].
            let half = clip[i] * ((2.0f64 / 0.05).ln() / (2.0 * n[i] as f64)).sqrt();
            let (lo, hi) = ((mean[i] - half).max(0.0), (mean[i] + half).min(clip[i]));
            let truth = if hi < mg.gamma {
                Truth::Same
            } else if lo > mg.delta {
                Truth::Different
            } else {
                Truth::Either
            };
            estimates.push(Estimate {
                pair: pairs[i].clone(),
                mode: ms[i].clone(),
                challenges: n[i],
                mean: mean[i],
                lower: lo,
                upper: hi,
                truth,
            });
        }
    }
    // Tables read by mode (quick, audit, extended), then pairs in the order they were run.
    let pair_order = strs(&runs, "pair").map_err(perr(&runs_path))?;
    let pair_rank = |p: &str| pair_order.iter().position(|x| x == p).unwrap_or(usize::MAX);
    let mode_rank = |m: &str| {
        ["quick", "audit", "extended"]
            .iter()
            .position(|x| *x == m)
            .unwrap_or(3)
    };
    estimates.sort_by_key(|e| (mode_rank(&e.mode), pair_rank(&e.pair)));
    let truth_of = |pair: &str, mode: &str| {
        estimates
            .iter()
            .find(|e| e.pair == pair && e.mode == mode)
            .map(|e| e.truth)
    };

    let agg = runs
        .clone()
        .lazy()
        .group_by_stable([col("pair"), col("method"), col("mode")])
        .agg([
            len().alias("runs"),
            col("decision")
                .eq(lit("SAME"))
                .cast(DataType::UInt32)
                .sum()
                .alias("same"),
            col("decision")
                .eq(lit("DIFFERENT"))
                .cast(DataType::UInt32)
                .sum()
                .alias("different"),
            col("decision")
                .eq(lit("UNDECIDED"))
                .cast(DataType::UInt32)
                .sum()
                .alias("undecided"),
            col("queries")
                .cast(DataType::Float64)
                .median()
                .alias("q_median"),
            col("queries")
                .cast(DataType::Float64)
                .quantile(lit(0.9), QuantileMethod::Nearest)
                .alias("q_p90"),
            col("wall_s").median().alias("wall_median"),
            col("wall_s")
                .quantile(lit(0.9), QuantileMethod::Nearest)
                .alias("wall_p90"),
        ])
        .collect()
        .map_err(perr(&runs_path))?;
    let mut groups = Vec::new();
    {
        let e = |x| perr(&runs_path)(x);
        let pairs = strs(&agg, "pair").map_err(e)?;
        let methods = strs(&agg, "method").map_err(e)?;
        let ms = strs(&agg, "mode").map_err(e)?;
        let n = counts(&agg, "runs").map_err(e)?;
        let same = counts(&agg, "same").map_err(e)?;
        let diff = counts(&agg, "different").map_err(e)?;
        let und = counts(&agg, "undecided").map_err(e)?;
        let qm = floats(&agg, "q_median").map_err(e)?;
        let q9 = floats(&agg, "q_p90").map_err(e)?;
        let wm = floats(&agg, "wall_median").map_err(e)?;
        let w9 = floats(&agg, "wall_p90").map_err(e)?;
        for i in 0..pairs.len() {
            // The baseline has no mode of its own: it is judged by the pair's quick-mode μ.
            let truth = truth_of(&pairs[i], &ms[i]).or_else(|| truth_of(&pairs[i], "quick"));
            let wrong = match truth {
                Some(Truth::Same) => diff[i],
                Some(Truth::Different) => same[i],
                _ => 0,
            };
            groups.push(Group {
                pair: pairs[i].clone(),
                method: methods[i].clone(),
                mode: ms[i].clone(),
                runs: n[i],
                same: same[i],
                different: diff[i],
                undecided: und[i],
                truth,
                wrong,
                wrong_ci: clopper_pearson(wrong, n[i]),
                queries_median: qm[i],
                queries_p90: q9[i],
                wall_median: wm[i],
                wall_p90: w9[i],
            });
        }
    }

    groups.sort_by_key(|g| (g.method != "pot", mode_rank(&g.mode), pair_rank(&g.pair)));

    let mut rates: Vec<Rates> = Vec::new();
    let mut keys: Vec<(String, String)> = groups
        .iter()
        .map(|g| (g.method.clone(), g.mode.clone()))
        .collect();
    keys.sort_by_key(|(method, mode)| (method != "pot", mode_rank(mode), mode.clone()));
    keys.dedup();
    for (method, mode) in keys {
        let gs: Vec<&Group> = groups
            .iter()
            .filter(|g| g.method == method && g.mode == mode)
            .collect();
        let sum = |f: &dyn Fn(&Group) -> usize| gs.iter().map(|g| f(g)).sum::<usize>();
        let fa = (
            sum(&|g| {
                if g.truth == Some(Truth::Different) {
                    g.same
                } else {
                    0
                }
            }),
            sum(&|g| {
                if g.truth == Some(Truth::Different) {
                    g.runs
                } else {
                    0
                }
            }),
        );
        let fr = (
            sum(&|g| {
                if g.truth == Some(Truth::Same) {
                    g.different
                } else {
                    0
                }
            }),
            sum(&|g| {
                if g.truth == Some(Truth::Same) {
                    g.runs
                } else {
                    0
                }
            }),
        );
        rates.push(Rates {
            method,
            mode,
            false_accept: fa,
            false_accept_ci: clopper_pearson(fa.0, fa.1),
            false_reject: fr,
            false_reject_ci: clopper_pearson(fr.0, fr.1),
            undecided: (sum(&|g| g.undecided), sum(&|g| g.runs)),
        });
    }

    let mut written = Vec::new();
    let plot_err = |path: &Path, e: String| ReportError::Plot {
        path: path.display().to_string(),
        reason: e,
    };
    let bounds_svg = dir.join("bounds.svg");
    plots::bounds(&bounds_svg, &queries, margins).map_err(|e| plot_err(&bounds_svg, e))?;
    let queries_svg = dir.join("queries.svg");
    plots::queries(&queries_svg, &runs).map_err(|e| plot_err(&queries_svg, e))?;
    let power_svg = dir.join("power.svg");
    plots::power(&power_svg, &groups).map_err(|e| plot_err(&power_svg, e))?;
    let ladder_svg = dir.join("ladder.svg");
    plots::ladder(&ladder_svg, &queries, margins).map_err(|e| plot_err(&ladder_svg, e))?;
    written.extend(
        [&bounds_svg, &queries_svg, &power_svg, &ladder_svg].map(|p| p.display().to_string()),
    );

    let report = Report {
        estimates,
        groups,
        rates,
        written: Vec::new(),
    };
    let md = markdown(&report, &runs, margins);
    let md_path = dir.join("REPORT.md");
    write_atomic(&md_path, md.as_bytes())?;
    written.push(md_path.display().to_string());
    Ok(Report { written, ..report })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let tmp: PathBuf = path.with_extension("md.tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ReportError::Output {
                path: path.display().to_string(),
                source: e,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::clopper_pearson;

    #[test]
    fn clopper_pearson_matches_known_values() {
        // 0 of 30: the upper end is 1 - 0.025^(1/30).
        let (lo, hi) = clopper_pearson(0, 30);
        assert_eq!(lo, 0.0);
        assert!(
            (hi - (1.0 - 0.025f64.powf(1.0 / 30.0))).abs() < 1e-9,
            "{hi}"
        );
        // 30 of 30 mirrors it.
        let (lo, hi) = clopper_pearson(30, 30);
        assert!((lo - 0.025f64.powf(1.0 / 30.0)).abs() < 1e-9);
        assert_eq!(hi, 1.0);
        // 5 of 10: the textbook interval [0.187, 0.813].
        let (lo, hi) = clopper_pearson(5, 10);
        assert!(
            (lo - 0.18709).abs() < 1e-4 && (hi - 0.81291).abs() < 1e-4,
            "{lo} {hi}"
        );
    }
}
