//! The report's plots, as SVG (plotters): text is left to the viewer's fonts, so nothing here
//! needs a font file.

use std::path::Path;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use polars::prelude::*;

use super::{floats, strs, Group, Margins};

const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// The name of the category at `y` on a categorical axis (rows 0, 1, …), blank between rows.
fn category(names: &[String], y: f64) -> String {
    let i = y.round();
    if (y - i).abs() < 1e-6 && i >= 0.0 {
        names.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

fn e<E: std::fmt::Display>(x: E) -> String {
    x.to_string()
}

/// Draws the chart's legend, boxed, at `position`.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(e)
}

/// A dot and the ends of its interval bar.
type Mark = ((f64, f64), [(f64, f64); 2]);

/// One series of dots with interval bars, labelled for the legend.
fn dots_with_bars<'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    marks: &[Mark],
    color: RGBColor,
    label: &str,
) -> Result<(), String> {
    chart
        .draw_series(
            marks
                .iter()
                .map(|(_, bar)| PathElement::new(bar.to_vec(), color.stroke_width(2))),
        )
        .map_err(e)?;
    chart
        .draw_series(
            marks
                .iter()
                .map(|(dot, _)| Circle::new(*dot, 5, color.filled())),
        )
        .map_err(e)?
        .label(label)
        .legend(move |(x, y)| Circle::new((x + 8, y), 5, color.filled()));
    Ok(())
}

/// A white canvas for a chart with one row per category.
fn rows_canvas(path: &Path, rows: usize) -> Result<DrawingArea<SVGBackend<'_>, Shift>, String> {
    let root = SVGBackend::new(path, (1000, 120 + 36 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    Ok(root)
}

/// The confidence sequence of one run of up to six (pair, mode)s.
pub fn bounds(
    path: &Path,
    queries: &DataFrame,
    margins: &dyn Fn(&str, &str) -> Option<Margins>,
) -> Result<(), String> {
    let run = strs(queries, "run_id").map_err(e)?;
    let pair = strs(queries, "pair").map_err(e)?;
    let mode = strs(queries, "mode").map_err(e)?;
    let mean = floats(queries, "mean").map_err(e)?;
    let lower = floats(queries, "lower").map_err(e)?;
    let upper = floats(queries, "upper").map_err(e)?;
    // The first run of each of these (pair, mode), which show the range of cases: a model
    // against itself, a near-lossless and a lossy requantization, another model, a variant
    // near the extended mode's tighter margins, and an audit of a server. Any other runs fill
    // the panels left.
    let preferred = [
        ("smol-self", "quick"),
        ("smol-q8_0", "audit"),
        ("smol-q4_0", "quick"),
        ("qwen-1.5b-0.5b", "quick"),
        ("smol-noise0.02", "extended"),
        ("serve-smol-self", "audit"),
    ];
    let first_run = |p: &str, m: &str| (0..run.len()).find(|&i| pair[i] == p && mode[i] == m);
    let mut chosen: Vec<(String, String, String)> = Vec::new();
    let pick = |i: usize, chosen: &mut Vec<(String, String, String)>| {
        if chosen.len() < 6
            && !chosen
                .iter()
                .any(|(p, _, m)| *p == pair[i] && *m == mode[i])
        {
            chosen.push((pair[i].clone(), run[i].clone(), mode[i].clone()));
        }
    };
    for (p, m) in preferred {
        if let Some(i) = first_run(p, m) {
            pick(i, &mut chosen);
        }
    }
    for (i, p) in pair.iter().enumerate() {
        if !chosen.iter().any(|(c, _, _)| c == p) {
            pick(i, &mut chosen);
        }
    }
    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let panels = root.split_evenly((2, 3));
    for ((p, r, m), panel) in chosen.iter().zip(panels.iter()) {
        let rows: Vec<usize> = (0..run.len()).filter(|&i| run[i] == *r).collect();
        let Some(mg) = margins(p, m) else { continue };
        let n = rows.len().max(1) as f64;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{p} ({m})"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0.5f64..n + 0.5, 0f64..mg.clip * 1.45) // headroom for the legend
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("challenges")
            .y_desc("mean clipped score")
            .x_labels(n as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(e)?;
        // Steps: a value holds from its challenge until the next one.
        let pts = |v: &Vec<f64>| -> Vec<(f64, f64)> {
            let mut out = Vec::new();
            for (j, &i) in rows.iter().enumerate() {
                let x = (j + 1) as f64;
                if let Some(&(_, prev)) = out.last() {
                    out.push((x, prev));
                }
                out.push((x, v[i]));
            }
            out
        };
        chart
            .draw_series(std::iter::once(Polygon::new(
                pts(&upper)
                    .into_iter()
                    .chain(pts(&lower).into_iter().rev())
                    .collect::<Vec<_>>(),
                PALETTE[0].mix(0.15),
            )))
            .map_err(e)?;
        for (v, label, width) in [
            (&lower, "lower", 1),
            (&upper, "upper", 1),
            (&mean, "mean", 3),
        ] {
            chart
                .draw_series(LineSeries::new(pts(v), PALETTE[0].stroke_width(width)))
                .map_err(e)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], PALETTE[0].stroke_width(width))
                });
        }
        for (v, c, label) in [(mg.gamma, RED, "γ"), (mg.delta, BLACK, "δ")] {
            chart
                .draw_series(std::iter::once(DashedPathElement::new(
                    vec![(0.5, v), (n + 0.5, v)],
                    6,
                    4,
                    c.stroke_width(2),
                )))
                .map_err(e)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c));
        }
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    root.present().map_err(e)
}

/// Queries to a verdict of every run: one row per pair, a circle per (method, queries) whose
/// area grows with its runs.
pub fn queries(path: &Path, runs: &DataFrame) -> Result<(), String> {
    let pair = strs(runs, "pair").map_err(e)?;
    let method = strs(runs, "method").map_err(e)?;
    let mode = strs(runs, "mode").map_err(e)?;
    let q = floats(runs, "queries").map_err(e)?;
    let mut pairs: Vec<String> = Vec::new();
    for p in &pair {
        if !pairs.contains(p) {
            pairs.push(p.clone());
        }
    }
    let mut series: Vec<String> = Vec::new();
    for i in 0..pair.len() {
        let s = format!("{} {}", method[i], mode[i]);
        if !series.contains(&s) {
            series.push(s);
        }
    }
    let mut cells: std::collections::BTreeMap<(usize, usize, u64), usize> = Default::default();
    for i in 0..pair.len() {
        let pi = pairs.iter().position(|p| *p == pair[i]).expect("listed");
        let si = series
            .iter()
            .position(|s| *s == format!("{} {}", method[i], mode[i]))
            .expect("listed");
        *cells.entry((pi, si, q[i] as u64)).or_default() += 1;
    }
    let qmax = q.iter().cloned().fold(1.0, f64::max);
    let root = rows_canvas(path, pairs.len())?;
    let np = pairs.len() as f64;
    let names = pairs.clone();
    let mut chart = ChartBuilder::on(&root)
        .caption("queries to a verdict", ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(150)
        .build_cartesian_2d((1f64..qmax * 1.6).log_scale(), -0.5f64..np - 0.5)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("challenges (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_labels(pairs.len())
        .y_label_formatter(&|y| category(&names, *y))
        .draw()
        .map_err(e)?;
    let ns = series.len().max(1) as f64;
    for (si, s) in series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let offset = (si as f64 - (ns - 1.0) / 2.0) * 0.18;
        let pts: Vec<(f64, f64, usize)> = cells
            .iter()
            .filter(|((_, s2, _), _)| *s2 == si)
            .map(|((pi, _, qv), c)| (*qv as f64, *pi as f64 + offset, *c))
            .collect();
        chart
            .draw_series(pts.iter().map(|(x, y, c)| {
                Circle::new(
                    (*x, *y),
                    (3.0 + 2.0 * (*c as f64).sqrt()) as i32,
                    color.mix(0.7).filled(),
                )
            }))
            .map_err(e)?
            .label(s.clone())
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, color.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(e)
}

/// The share of DIFFERENT verdicts per pair and method, with Clopper–Pearson intervals.
pub fn power(path: &Path, groups: &[Group]) -> Result<(), String> {
    let mut pairs: Vec<String> = Vec::new();
    let mut series: Vec<String> = Vec::new();
    for g in groups {
        if !pairs.contains(&g.pair) {
            pairs.push(g.pair.clone());
        }
        let s = format!("{} {}", g.method, g.mode);
        if !series.contains(&s) {
            series.push(s);
        }
    }
    let root = rows_canvas(path, pairs.len())?;
    let np = pairs.len() as f64;
    let names = pairs.clone();
    let mut chart = ChartBuilder::on(&root)
        .caption("share of runs that say DIFFERENT", ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(150)
        .build_cartesian_2d(0f64..1.0, -0.5f64..np - 0.5)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("P(DIFFERENT), 95 % Clopper–Pearson")
        .y_labels(pairs.len())
        .y_label_formatter(&|y| category(&names, *y))
        .draw()
        .map_err(e)?;
    let ns = series.len().max(1) as f64;
    for (si, s) in series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let offset = (si as f64 - (ns - 1.0) / 2.0) * 0.2;
        let gs: Vec<(f64, f64, f64, f64)> = groups
            .iter()
            .filter(|g| format!("{} {}", g.method, g.mode) == *s)
            .map(|g| {
                let y = pairs.iter().position(|p| *p == g.pair).expect("listed") as f64 + offset;
                let (lo, hi) = super::clopper_pearson(g.different, g.runs);
                (g.different as f64 / g.runs.max(1) as f64, y, lo, hi)
            })
            .collect();
        let marks: Vec<Mark> = gs
            .iter()
            .map(|(x, y, lo, hi)| ((*x, *y), [(*lo, *y), (*hi, *y)]))
            .collect();
        dots_with_bars(&mut chart, &marks, color, s)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperMiddle)?;
    root.present().map_err(e)
}

/// Points of a quantization ladder, in order: the same weights first (the pair `FAMILY-self`,
/// and `FAMILY-q4km`: the file an f16 reference was made from), then the rungs.
fn ladder_points() -> Vec<&'static str> {
    let mut v = vec!["self", "q4km"];
    v.extend(crate::variant::Target::LADDER.iter().map(|t| t.name()));
    v
}

/// Which ladder a pair belongs to and where: `FAMILY-POINT` with a point of [`ladder_points`].
pub(super) fn ladder_place(pair: &str) -> Option<(String, usize)> {
    let (family, point) = pair.rsplit_once('-')?;
    let i = ladder_points().iter().position(|p| *p == point)?;
    Some((family.to_string(), i))
}

/// Divergence by ladder rung: each ladder pair's mean score (clipped at 1, as the served
/// estimate is) over all its audit-mode challenges, with its 95 % Student-t interval, on a log
/// axis, and the audit margins γ and δ dashed. Diffs only (pairs not named `serve-…`).
pub fn ladder(
    path: &Path,
    queries: &DataFrame,
    margins: &dyn Fn(&str, &str) -> Option<Margins>,
) -> Result<(), String> {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    let pair = strs(queries, "pair").map_err(e)?;
    let method = strs(queries, "method").map_err(e)?;
    let mode = strs(queries, "mode").map_err(e)?;
    let score = floats(queries, "score").map_err(e)?;
    // (family, point) → scores
    let mut cells: std::collections::BTreeMap<(String, usize), Vec<f64>> = Default::default();
    let mut margin: Option<Margins> = None;
    for i in 0..pair.len() {
        if method[i] != "pot" || mode[i] != "audit" {
            continue;
        }
        // Audits of a server score what it reports (other margins): diffs only.
        if pair[i].starts_with("serve-") {
            continue;
        }
        if let Some((fam, pt)) = ladder_place(&pair[i]) {
            let s = if score[i].is_nan() {
                1.0
            } else {
                score[i].clamp(0.0, 1.0)
            };
            cells.entry((fam, pt)).or_default().push(s);
            margin = margin.or_else(|| margins(&pair[i], "audit"));
        }
    }
    let points = ladder_points();
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "divergence by ladder rung (audit mode, mean KL per token, 95 % intervals)",
            ("sans-serif", 20),
        )
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            -0.5f64..points.len() as f64 - 0.5,
            (1e-7f64..3.0).log_scale(),
        )
        .map_err(e)?;
    let names: Vec<String> = points.iter().map(|p| p.to_string()).collect();
    chart
        .configure_mesh()
        .x_labels(points.len())
        .x_label_formatter(&|x| category(&names, *x))
        .y_desc("mean score (log scale)")
        .y_label_formatter(&|y| format!("{y:.0e}"))
        .draw()
        .map_err(e)?;
    if let Some(m) = margin {
        for (v, name) in [(m.gamma, "γ"), (m.delta, "δ")] {
            chart
                .draw_series(std::iter::once(DashedPathElement::new(
                    vec![(-0.5, v), (points.len() as f64 - 0.5, v)],
                    6,
                    4,
                    BLACK.stroke_width(1),
                )))
                .map_err(e)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{name} = {v}"),
                    (points.len() as f64 - 1.6, v * 1.25),
                    ("sans-serif", 14),
                )))
                .map_err(e)?;
        }
    }
    let mut families: Vec<String> = cells.keys().map(|(f, _)| f.clone()).collect();
    families.dedup();
    let nf = families.len().max(1) as f64;
    for (fi, fam) in families.iter().enumerate() {
        let color = PALETTE[fi % PALETTE.len()];
        let offset = (fi as f64 - (nf - 1.0) / 2.0) * 0.15;
        let pts: Vec<(f64, f64, f64, f64)> = cells
            .iter()
            .filter(|((f, _), _)| f == fam)
            .map(|((_, pt), s)| {
                let n = s.len() as f64;
                let mean = s.iter().sum::<f64>() / n;
                let sd =
                    (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
                let t = StudentsT::new(0.0, 1.0, (n - 1.0).max(1.0))
                    .map(|t| t.inverse_cdf(0.975))
                    .unwrap_or(2.0);
                let half = t * sd / n.sqrt();
                let floor = 1e-7;
                (
                    *pt as f64 + offset,
                    mean.max(floor),
                    (mean - half).max(floor),
                    (mean + half).max(floor),
                )
            })
            .collect();
        let marks: Vec<Mark> = pts
            .iter()
            .map(|(x, y, lo, hi)| ((*x, *y), [(*x, *lo), (*x, *hi)]))
            .collect();
        dots_with_bars(&mut chart, &marks, color, fam)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(e)
}
