//! The report's Markdown: the tables of rates with their Clopper–Pearson intervals, by group
//! and truth, and the margins each run was decided with.

use polars::prelude::*;

use super::*;

fn pct(k: usize, n: usize, ci: (f64, f64)) -> String {
    if n == 0 {
        return "—".into();
    }
    format!(
        "{k}/{n} = {:.3} [{:.3}, {:.3}]",
        k as f64 / n as f64,
        ci.0,
        ci.1
    )
}

pub(super) fn markdown(
    r: &Report,
    runs: &DataFrame,
    margins: &dyn Fn(&str, &str) -> Option<Margins>,
) -> String {
    let mut s = String::new();
    let total: usize = r.groups.iter().map(|g| g.runs).sum();
    let commits = strs(runs, "pot_commit").unwrap_or_default();
    let mut commits: Vec<&String> = commits.iter().collect();
    commits.sort();
    commits.dedup();
    let threads = floats(runs, "threads").unwrap_or_default();
    let (tmin, tmax) = threads
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), t| (a.min(*t), b.max(*t)));
    let _ = writeln!(
        s,
        "# Experiments\n\nWritten by `pot report` from `runs.csv` and `queries.csv` ({total} runs, pot commits {}; engine threads {}). Rerun the experiments with `scripts/run-experiments.sh`, then `pot report`.\n",
        commits.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "),
        if tmin == tmax { format!("{tmin}") } else { format!("{tmin}–{tmax}") }
    );
    let _ = writeln!(s, "## Which verdict is right\n\nFor each pair and mode, μ is the mean clipped score over all its challenges, with a Hoeffding 95 % interval (clipped scores lie in [0, B]). A verdict is judged against the mode's margins: SAME is right when the interval lies below γ, DIFFERENT when it lies above δ; otherwise either is. The pooled challenges come from runs that stopped early, which biases μ slightly. The fixed-N baseline has no mode of its own; it is judged by the pair's quick-mode μ (pot's scores at K = 16, where the baseline generates K = 32 tokens).");
    let between: Vec<String> = r
        .estimates
        .iter()
        .filter(|e| e.truth == Truth::Either)
        .map(|e| format!("{} ({})", e.pair, e.mode))
        .collect();
    let _ = writeln!(
        s,
        "{}\n",
        if between.is_empty() {
            "Every pair here lies clear of its mode's margins.".to_string()
        } else {
            format!(
                "Between the margins, where either verdict is right and no run can be wrong: {}.",
                between.join(", ")
            )
        }
    );
    let _ = writeln!(
        s,
        "| pair | mode | challenges | μ | 95 % interval | γ, δ | right verdict |\n|---|---|---|---|---|---|---|"
    );
    for e in &r.estimates {
        let m = margins(&e.pair, &e.mode);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | [{:.4}, {:.4}] | {} | {} |",
            e.pair,
            e.mode,
            e.challenges,
            e.mean,
            e.lower,
            e.upper,
            m.map(|m| format!("{}, {}", m.gamma, m.delta))
                .unwrap_or_default(),
            e.truth.as_str()
        );
    }
    let alphas = r
        .rates
        .iter()
        .filter(|x| x.method == "pot")
        .filter_map(|x| {
            let m = r.estimates.iter().find(|e| e.mode == x.mode)?;
            margins(&m.pair, &x.mode).map(|m| format!("{} {}", x.mode, m.alpha))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(s, "\n## Error rates (Clopper–Pearson 95 % intervals)\n\nA false accept is SAME on a pair whose right verdict is DIFFERENT (a substitute let through); a false reject is DIFFERENT on a pair whose right verdict is SAME. pot's test bounds each by α per run ({}); the fixed-N baseline bounds neither.\n", alphas);
    let _ = writeln!(
        s,
        "| method | mode | false accepts | false rejects | undecided |\n|---|---|---|---|---|"
    );
    for x in &r.rates {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {}/{} |",
            x.method,
            x.mode,
            pct(x.false_accept.0, x.false_accept.1, x.false_accept_ci),
            pct(x.false_reject.0, x.false_reject.1, x.false_reject_ci),
            x.undecided.0,
            x.undecided.1
        );
    }
    let _ = writeln!(s, "\n## Per pair\n\nQueries are challenges to a verdict (the baseline always uses its fixed N); wall time is per run, models loaded and hashed included.\n");
    let _ = writeln!(s, "| pair | method | mode | runs | SAME | DIFFERENT | UNDECIDED | right | wrong (rate, 95 % CI) | queries median / p90 | wall s median / p90 |\n|---|---|---|---|---|---|---|---|---|---|---|");
    let mut by_pair: BTreeMap<(String, String, String), &Group> = BTreeMap::new();
    for g in &r.groups {
        by_pair.insert((g.pair.clone(), g.method.clone(), g.mode.clone()), g);
    }
    for g in &r.groups {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.1} / {:.1} |",
            g.pair,
            g.method,
            g.mode,
            g.runs,
            g.same,
            g.different,
            g.undecided,
            g.truth.map(Truth::as_str).unwrap_or("?"),
            pct(g.wrong, g.runs, g.wrong_ci),
            g.queries_median,
            g.queries_p90,
            g.wall_median,
            g.wall_p90
        );
    }
    let _ = writeln!(s, "\n## Plots\n\nThe confidence sequence of one run per pair (mean clipped score and its bounds against challenges, margins dashed):\n\n![bounds](bounds.svg)\n\nQueries to a verdict, every run (circle area grows with the number of runs):\n\n![queries](queries.svg)\n\nDetection power: the share of runs that say DIFFERENT, per pair, with Clopper–Pearson 95 % intervals:\n\n![power](power.svg)\n\nDivergence by quantization rung (pairs named FAMILY-RUNG; FAMILY-self and FAMILY-q4km are the same weights): the mean score of each rung over all its audit-mode challenges, clipped at 1, with 95 % intervals, and the audit mode's margins:\n\n![ladder](ladder.svg)\n");
    s
}
