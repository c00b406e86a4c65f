//! `pot report` on the committed experiment results: tables, error rates with intervals, plots.

use std::process::Command;

fn pot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pot"))
}

#[test]
fn report_writes_tables_and_plots_from_the_committed_results() {
    // The results of issue 15's margins (audit mode, with the quantization ladder), and the
    // earlier ones kept beside them (quick, audit and extended mode, 1,260 runs).
    let results = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experimental_results");
    for (src, mode, least) in [
        (results.clone(), "audit", 60),
        (results.join("v1-2026-11"), "quick", 30),
    ] {
        let d = tempfile::tempdir().unwrap();
        for f in ["runs.csv", "queries.csv"] {
            std::fs::copy(src.join(f), d.path().join(f)).unwrap();
        }
        let o = pot()
            .args(["report", "--json", "--results"])
            .arg(d.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        // Every pot group's wrong-verdict interval contains its rate, and rates are k of n.
        for g in v["groups"].as_array().unwrap() {
            let (k, n) = (g["wrong"].as_f64().unwrap(), g["runs"].as_f64().unwrap());
            let (lo, hi) = (
                g["wrong_ci"][0].as_f64().unwrap(),
                g["wrong_ci"][1].as_f64().unwrap(),
            );
            assert!(n > 0.0 && lo <= k / n && k / n <= hi, "{g}");
        }
        let rates = v["rates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["method"] == "pot" && r["mode"] == mode)
            .unwrap_or_else(|| panic!("pot {mode} runs in {}", src.display()));
        assert!(
            rates["false_accept"][1].as_u64().unwrap() >= least,
            "{rates}"
        );
        let md = std::fs::read_to_string(d.path().join("REPORT.md")).unwrap();
        let row = format!("| smol-self | pot | {mode} |");
        for want in [
            "## Error rates",
            row.as_str(),
            "bounds.svg",
            "power.svg",
            "ladder.svg",
        ] {
            assert!(md.contains(want), "REPORT.md lacks {want}");
        }
        for svg in ["bounds.svg", "queries.svg", "power.svg", "ladder.svg"] {
            let t = std::fs::read_to_string(d.path().join(svg)).unwrap();
            assert!(t.starts_with("<svg") && t.contains("</svg>"), "{svg}");
        }
    }
    // The ladder plot draws the Qwen f16 rungs.
    let d = tempfile::tempdir().unwrap();
    for f in ["runs.csv", "queries.csv"] {
        std::fs::copy(results.join(f), d.path().join(f)).unwrap();
    }
    let o = pot()
        .args(["report", "--results"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(o.status.success());
    let t = std::fs::read_to_string(d.path().join("ladder.svg")).unwrap();
    assert!(
        t.contains("qwenf16") && t.contains("q4_0"),
        "ladder.svg lacks the Qwen rungs"
    );

    // No results: one line naming the file and the fix.
    let empty = tempfile::tempdir().unwrap();
    let o = pot()
        .args(["report", "--results"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("runs.csv") && e.contains("run-experiments.sh"),
        "{e}"
    );
}
