//! `pot diff` on real models, through the real binary: the verdicts the issue requires, resume
//! after a kill, the one-model-at-a-time path, and bad input.
//!
//! Needs the models: `scripts/fetch-models.sh`. Heavy: run with `--test-threads=1` (as
//! scripts/test.sh does) so that two large models are not loaded twice over.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::{diff_cmd, model_path, pot, qwen05_f16, qwen05_rung, QWEN05, QWEN15, SMOL};
use serde_json::Value;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn diff(reference: &Path, candidate: &Path, dir: &Path, extra: &[&str]) -> (Output, Value) {
    let out = diff_cmd(reference, candidate, dir)
        .args(["--json", "--mode", "audit"])
        .args(extra)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    eprintln!(
        "{} vs {}: {} in {} queries, mean {}, [{}, {}], {} s",
        reference.display(),
        candidate.display(),
        v["decision"],
        v["queries"],
        v["mean"],
        v["lower"],
        v["upper"],
        v["elapsed_s"]
    );
    (out, v)
}

/// The diff reached `want`, with diff(1)'s exit code for it (0 SAME, 1 DIFFERENT).
fn assert_decision(o: &Output, v: &Value, want: &str) {
    assert_eq!(
        v["decision"],
        want,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let code = if want == "SAME" { 0 } else { 1 };
    assert_eq!(o.status.code(), Some(code), "exit code of a {want} verdict");
}

/// A fresh secret key written by `pot keygen` into `dir`.
fn new_key(dir: &Path) -> PathBuf {
    let key = dir.join("key");
    let ok = pot().args(["keygen", "-o"]).arg(&key).status().unwrap();
    assert!(ok.success());
    key
}

/// Held while a test writes a shared derived model.
static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Models derived from SmolLM2 once per test binary: `pot ARGS -o OUT SMOL`, unless OUT exists.
fn derived(name: &str, args: &[&str]) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let out = DIR.get_or_init(tmp).path().join(name);
    // Tests may run in parallel: one writer at a time.
    let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    if !out.exists() {
        let o = pot()
            .args(args)
            .arg("-o")
            .arg(&out)
            .arg(model_path(SMOL))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    out
}

/// Variants of SmolLM2 made with `pot variant`.
fn smol_variant(to: &str) -> PathBuf {
    derived(&format!("smol-{to}.gguf"), &["variant", "--to", to])
}

#[test]
fn smollm2_against_itself_is_same() {
    let d = tmp();
    let (o, v) = diff(&model_path(SMOL), &model_path(SMOL), d.path(), &[]);
    assert_decision(&o, &v, "SAME");
    // Identical weights: the only difference is the kernels' summation order between the
    // reference's one-token steps and the candidate's teacher-forced pass, which 8-bit
    // activation rounding turns into a mean KL of about 0.002 (measured 0.0013-0.0017),
    // far below the margin γ = 0.05.
    let mean = v["mean"].as_f64().unwrap();
    assert!(mean < 0.005, "self-diff mean score {mean}");
}

/// The substitution buyers meet most: a lower-precision copy of the claimed model. With Qwen
/// 0.5B f16 as the claimed model, the same weights (itself, and the Q4_K_M file it was made
/// from, run on 8-bit-activation kernels) are SAME, and its own 4-, 3- and 2-bit copies are
/// DIFFERENT, each within 20 challenges in audit mode; the verdict says what is served.
#[test]
fn qwen_f16_sees_its_4_3_and_2_bit_copies_and_not_its_own_weights() {
    let f16 = qwen05_f16();
    let cases = [
        (f16.clone(), "SAME"),
        (model_path(QWEN05), "SAME"),
        (qwen05_rung("q4_0"), "DIFFERENT"),
        (qwen05_rung("q3_k"), "DIFFERENT"),
        (qwen05_rung("q2_k"), "DIFFERENT"),
    ];
    for (cand, want) in cases {
        let d = tmp();
        let (o, v) = diff(&f16, &cand, d.path(), &[]);
        assert_decision(&o, &v, want);
        assert!(v["queries"].as_u64().unwrap() <= 20, "{v}");
        assert_eq!(v["score_kind"], "kl");
        assert_eq!(v["params"]["delta"], 0.01, "the audit mode's margins");
        // The estimate: below γ for the same weights, above δ for the copies. For the same
        // weights it is the clipped mean (clip B, what the test decides on): the unclipped one
        // rests on 10-15 challenges of a heavy-tailed score, and one outlier challenge took it
        // to 0.019 in a CI run whose clipped mean was 0.002 (the Q4_K_M file against its f16
        // re-encoding, a fresh key each run).
        if want == "SAME" {
            let est = v["served"]["near"]["mean"].as_f64().unwrap();
            assert!(est < 0.005, "{}: {est}", cand.display());
        } else {
            let est = v["served"]["far"]["mean"].as_f64().unwrap();
            assert!(est > 0.01, "{}: {est}", cand.display());
        }
    }
}

#[test]
fn qwen_05b_and_15b_are_different_within_12_queries_both_orders() {
    for (a, b) in [(QWEN05, QWEN15), (QWEN15, QWEN05)] {
        let d = tmp();
        let (o, v) = diff(&model_path(a), &model_path(b), d.path(), &[]);
        assert_decision(&o, &v, "DIFFERENT");
        assert!(v["queries"].as_u64().unwrap() <= 12, "{v}");
        assert_eq!(v["score_kind"], "kl");
    }
}

#[test]
fn smollm2_and_qwen_with_other_tokenizers_are_different() {
    let d = tmp();
    let (o, v) = diff(&model_path(SMOL), &model_path(QWEN05), d.path(), &[]);
    assert_decision(&o, &v, "DIFFERENT");
    assert_eq!(v["score_kind"], "bits-per-byte");
}

#[test]
fn smollm2_and_its_f16_reencoding_are_same() {
    let d = tmp();
    let (o, v) = diff(&model_path(SMOL), &smol_variant("f16"), d.path(), &[]);
    assert_decision(&o, &v, "SAME");
    // Other bytes, other weight hash: the identity sees the re-encoding, the verdict does not.
    assert_ne!(v["reference"]["weight_hash"], v["candidate"]["weight_hash"]);
}

#[test]
fn smollm2_and_its_q2_k_requantization_are_different() {
    let d = tmp();
    let (o, v) = diff(&model_path(SMOL), &smol_variant("q2_k"), d.path(), &[]);
    assert_decision(&o, &v, "DIFFERENT");
}

fn query_lines(transcript: &Path) -> usize {
    std::fs::read_to_string(transcript)
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("\"record\":\"query\""))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_killed_run_resumes_to_the_same_decision() {
    let d = tmp();
    let key = new_key(d.path());
    let k = key.to_str().unwrap();
    // n_min 20 keeps the run going long enough to be killed in the middle.
    let flags = ["--key-file", k, "--run-id", "killme", "--n-min", "20"];
    let whole = d.path().join("whole");
    let (_, uninterrupted) = diff(&model_path(SMOL), &smol_variant("q4_0"), &whole, &flags);

    let parts = d.path().join("parts");
    let mut child = diff_cmd(&model_path(SMOL), &smol_variant("q4_0"), &parts)
        .arg("--json")
        .args(flags)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = parts.join("killme.ndjson");
    let start = std::time::Instant::now();
    while query_lines(&t) < 4 && start.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done_before = query_lines(&t);
    assert!(
        (4..20).contains(&done_before),
        "killed after {done_before} queries"
    );
    assert!(!std::fs::read_to_string(&t)
        .unwrap()
        .contains("\"record\":\"verdict\""));

    let (o, resumed) = diff(
        &model_path(SMOL),
        &smol_variant("q4_0"),
        &parts,
        &["--key-file", k, "--resume", "killme", "--n-min", "20"],
    );
    assert!(
        o.status.code().is_some_and(|c| c != 2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(resumed["decision"], uninterrupted["decision"]);
    assert_eq!(resumed["queries"], uninterrupted["queries"]);
    assert_eq!(resumed["mean"], uninterrupted["mean"]);
    // Finished queries were not recomputed: the transcript holds each index once.
    let text = std::fs::read_to_string(&t).unwrap();
    let idx: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["record"] == "query")
        .map(|v| v["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, (0..idx.len() as u64).collect::<Vec<_>>());

    // Resuming with other parameters is refused.
    let (o, _) = diff(
        &model_path(SMOL),
        &smol_variant("q4_0"),
        &parts,
        &["--key-file", k, "--resume", "killme"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot resume"));
}

#[test]
fn one_model_at_a_time_reaches_the_same_decision() {
    let d = tmp();
    let key = new_key(d.path());
    let k = key.to_str().unwrap();
    let (_, a) = diff(
        &model_path(SMOL),
        &smol_variant("q2_k"),
        &d.path().join("a"),
        &["--key-file", k, "--run-id", "r"],
    );
    let (_, b) = diff(
        &model_path(SMOL),
        &smol_variant("q2_k"),
        &d.path().join("b"),
        &["--key-file", k, "--run-id", "r", "--one-at-a-time", "3"],
    );
    assert_eq!(a["decision"], b["decision"]);
    assert_eq!(a["queries"], b["queries"]);
    assert_eq!(a["mean"], b["mean"]);
}

fn assert_clean_error(o: &Output, needle: &str, dir: &Path) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{err}");
    let ndjson = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "ndjson"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(ndjson, 0, "no transcript may be left behind");
}

#[test]
fn bad_model_files_fail_cleanly() {
    let d = tmp();
    let tr = d.path().join("tr");
    let missing = d.path().join("missing.gguf");
    let (o, _) = diff(&model_path(SMOL), &missing, &tr, &[]);
    assert_clean_error(&o, "missing.gguf", &tr);

    let not_gguf = d.path().join("notes.gguf");
    std::fs::write(&not_gguf, b"this is not a model").unwrap();
    let (o, _) = diff(&model_path(SMOL), &not_gguf, &tr, &[]);
    assert_clean_error(&o, "not a GGUF file", &tr);

    let truncated = d.path().join("truncated.gguf");
    let bytes = std::fs::read(model_path(SMOL)).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let (o, _) = diff(&model_path(SMOL), &truncated, &tr, &[]);
    assert_clean_error(&o, "truncated", &tr);

    let empty_key = d.path().join("empty.key");
    std::fs::write(&empty_key, b"").unwrap();
    let (o, _) = diff(
        &model_path(SMOL),
        &model_path(SMOL),
        &tr,
        &["--key-file", empty_key.to_str().unwrap()],
    );
    assert_clean_error(&o, "empty", &tr);
}

#[test]
fn challenges_are_reproducible_and_never_show_the_key() {
    let d = tmp();
    let key = new_key(d.path());
    let run = |id: &str| {
        pot()
            .args([
                "challenges",
                "--json",
                "-n",
                "20",
                "--run-id",
                id,
                "--key-file",
            ])
            .arg(&key)
            .output()
            .unwrap()
    };
    let (a, b, c) = (run("x"), run("x"), run("y"));
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
    let secret = std::fs::read_to_string(&key).unwrap();
    assert!(!String::from_utf8_lossy(&a.stdout).contains(secret.trim()));
}

/// A reader that closes the pipe early (`pot challenges -n 100000 | head -1`) ends the command
/// successfully and quietly: no panic, no error line, exit 0.
#[test]
fn a_closed_pipe_ends_a_listing_successfully() {
    use std::io::{BufRead, BufReader};
    let d = tmp();
    let key = new_key(d.path());
    let mut child = pot()
        .args(["challenges", "-n", "100000", "--run-id", "p", "--key-file"])
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("[0 "), "{first}");
    // The reader is gone (dropped above); pot's next writes meet a closed pipe.
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}: {err}", o.status);
    assert!(err.is_empty(), "{err}");
}

/// TLSH of the weight signature: a re-encoding of SmolLM2 is near it, another model is far.
#[test]
fn fingerprint_tlsh_is_near_for_a_requantization_and_far_for_another_model() {
    let distance = |a: &Path, b: &Path| -> i64 {
        let o = pot()
            .args(["fingerprint", "--json", "--compare"])
            .arg(b)
            .arg(a)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["tlsh_distance"].as_i64().unwrap()
    };
    let smol = model_path(SMOL);
    let near = distance(&smol, &smol_variant("q8_0"));
    let far = distance(&smol, &model_path(QWEN05));
    eprintln!("TLSH distance: SmolLM2 vs its q8_0 re-encoding {near}, vs Qwen 0.5B {far}");
    // Measured: 5 and 36.
    assert!(near <= 15, "re-encoding at distance {near}");
    assert!(
        far >= 30 && far > 2 * near,
        "another model at distance {far}"
    );
}

/// SmolLM2 exported as a Hugging Face folder with `pot export-hf`.
fn smol_hf() -> PathBuf {
    derived("SmolLM2-hf", &["export-hf"])
}

fn json_of(args: &[&str], model: &Path) -> Value {
    let o = pot().args(args).arg(model).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A Hugging Face folder (safetensors, config.json, tokenizer.json) computes what the GGUF
/// file computes: same token ids, same logits (Llama's query/key permutation undone), and
/// `pot diff` calls them SAME.
#[test]
fn a_hugging_face_folder_computes_what_its_gguf_computes() {
    let gguf = model_path(SMOL);
    let folder = smol_hf();
    for text in [
        "The capital of France is",
        "def fibonacci(n):\n    if n < 2:",
        "日本語のテキスト 🦀 and ünïcödé",
    ] {
        let a = json_of(&["tokenize", "--json", "--text", text], &gguf);
        let b = json_of(&["tokenize", "--json", "--text", text], &folder);
        assert_eq!(a["token_ids"], b["token_ids"], "{text:?}");
        let args = [
            "logits",
            "--json",
            "--kernels",
            "dense",
            "--top-k",
            "5",
            "--text",
            text,
        ];
        let a = json_of(&args, &gguf);
        let b = json_of(&args, &folder);
        let (pa, pb) = (
            a["positions"].as_array().unwrap(),
            b["positions"].as_array().unwrap(),
        );
        assert_eq!(pa.len(), pb.len());
        for (x, y) in pa.iter().zip(pb) {
            assert_eq!(x["top_ids"][0], y["top_ids"][0], "{text:?}");
            for (u, v) in x["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .zip(y["top_logprobs"].as_array().unwrap())
            {
                let d = (u.as_f64().unwrap() - v.as_f64().unwrap()).abs();
                assert!(d < 1e-3, "{text:?}: log-prob differs by {d}");
            }
        }
    }
    let d = tmp();
    let (o, v) = diff(&gguf, &folder, d.path(), &[]);
    assert_decision(&o, &v, "SAME");
    // The exported tokenizer.json is the GGUF's tokenizer: compared token by token.
    assert_eq!(v["score_kind"], "kl");
    assert_eq!(
        v["reference"]["tokenizer_hash"],
        v["candidate"]["tokenizer_hash"]
    );
}

/// Hugging Face ids resolve through the local hub cache only: a cached snapshot loads, an
/// id that is not cached fails with one line naming what was looked for.
#[test]
fn hugging_face_ids_resolve_offline_from_the_local_cache() {
    let home = tmp();
    let repo = home.path().join("hub/models--pot-test--smollm2");
    let snap = repo.join("snapshots/0123456789abcdef");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    for f in std::fs::read_dir(smol_hf()).unwrap() {
        let f = f.unwrap().path();
        std::os::unix::fs::symlink(&f, snap.join(f.file_name().unwrap())).unwrap();
    }
    let o = pot()
        .env("HF_HOME", home.path())
        .args(["tokenize", "--json", "--text", "Hello", "pot-test/smollm2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = pot()
        .env("HF_HOME", home.path())
        .args(["tokenize", "--text", "Hello", "pot-test/not-cached"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("not in the local cache") && err.contains("models--pot-test--not-cached"),
        "{err}"
    );
}

/// Broken Hugging Face folders: an unsupported architecture and truncated weights.
#[test]
fn bad_hugging_face_folders_fail_cleanly() {
    let d = tmp();
    let tr = d.path().join("tr");
    let src = smol_hf();
    let gemma = d.path().join("gemma");
    std::fs::create_dir(&gemma).unwrap();
    for f in ["tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(src.join(f), gemma.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"llama\"", "\"gemma3\"");
    std::fs::write(gemma.join("config.json"), cfg).unwrap();
    let (o, _) = diff(&model_path(SMOL), &gemma, &tr, &[]);
    assert_clean_error(&o, "not supported", &tr);

    let cut = d.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    for f in ["tokenizer.json", "config.json"] {
        std::fs::copy(src.join(f), cut.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    std::fs::write(cut.join("model.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
    let (o, _) = diff(&model_path(SMOL), &cut, &tr, &[]);
    assert_clean_error(&o, "cut", &tr);
}

/// `pot calibrate` measures the floor (the same weights on other kernels, another batch shape,
/// an f16 re-encoding) and the ladder rungs asked for, every challenge's score kept; the
/// floor stays far below a 2-bit copy, the rung files are kept with --keep, the calibration
/// file feeds `pot diff`, and a bad rung name or an existing -o is refused before any work.
#[test]
fn calibrate_measures_the_floor_and_the_ladder() {
    let d = tmp();
    let cal = d.path().join("cal.json");
    let store = d.path().join("store");
    let o = pot()
        .env("POT_CALIBRATIONS", &store)
        .args([
            "calibrate",
            "--json",
            "--challenges",
            "10",
            "--rungs",
            "q8_0,q2_k",
            "--ref",
        ])
        .arg(model_path(SMOL))
        .arg("--keep")
        .arg(d.path())
        .arg("-o")
        .arg(&cal)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "pot-calibration/1");
    assert_eq!(v["challenges"], 10);
    let entries = v["entries"].as_array().unwrap();
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "other-kernels",
            "one-at-a-time",
            "f16-reencoding",
            "q8_0",
            "q2_k"
        ]
    );
    for e in entries {
        assert_eq!(e["scores"].as_array().unwrap().len(), 10, "{}", e["name"]);
        assert_eq!(e["endpoint_scores"].as_array().unwrap().len(), 10);
        let (mean, ep) = (
            e["kl"]["mean"].as_f64().unwrap(),
            e["endpoint_kl"]["mean"].as_f64().unwrap(),
        );
        assert!(
            ep <= mean + 1e-9,
            "the endpoint view sees at most the full KL: {e}"
        );
    }
    let mean = |name: &str| {
        entries.iter().find(|e| e["name"] == name).unwrap()["kl"]["mean"]
            .as_f64()
            .unwrap()
    };
    // SmolLM2's floor is about 0.003 over 50 challenges and heavy-tailed (10-challenge means
    // of 0.001–0.0051 measured): below the audit mode's δ, not always below its γ.
    for floor in ["other-kernels", "one-at-a-time", "f16-reencoding"] {
        assert!(mean(floor) < 0.01, "{floor}: {}", mean(floor));
    }
    assert!(
        mean("q2_k") > 100.0 * mean("f16-reencoding"),
        "{}",
        mean("q2_k")
    );
    assert!(std::fs::read_dir(d.path()).unwrap().any(|f| f
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with("-q2_k.gguf")));
    // The file is the JSON printed; the store holds it under the reference's weight hash.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&cal).unwrap()).unwrap();
    assert_eq!(file, v);
    let stored = store.join(format!(
        "{}.json",
        v["reference"]["weight_hash"].as_str().unwrap()
    ));
    assert!(stored.is_file(), "{}", stored.display());

    // A diff of the reference against its q2_k copy places the candidate on that ladder.
    let q2 = std::fs::read_dir(d.path())
        .unwrap()
        .map(|f| f.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-q2_k.gguf"))
        .unwrap();
    let (o, r) = diff(
        &model_path(SMOL),
        &q2,
        d.path(),
        &["--calibration", cal.to_str().unwrap()],
    );
    assert_decision(&o, &r, "DIFFERENT");
    let served = &r["served"];
    assert_eq!(served["calibrated"], true, "{r}");
    let excludes: Vec<&str> = served["excludes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(
        excludes.contains(&"other-kernels") && excludes.contains(&"q8_0"),
        "{served}"
    );
    let consistent: Vec<&str> = served["consistent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(consistent.contains(&"q2_k"), "{served}");

    // --margins takes γ, δ and B from the calibration: γ twice the floor's reach.
    let floor_high = entries
        .iter()
        .filter(|e| e["role"] == "floor")
        .map(|e| e["kl"]["mean_ci95"][1].as_f64().unwrap())
        .fold(0.0, f64::max);
    let (o, r) = diff(
        &model_path(SMOL),
        &model_path(SMOL),
        d.path(),
        &["--margins", cal.to_str().unwrap()],
    );
    assert_decision(&o, &r, "SAME");
    let g = r["params"]["gamma"].as_f64().unwrap();
    assert!((g - 2.0 * floor_high).abs() < 1e-12, "{g} vs {floor_high}");
    assert!((r["params"]["delta"].as_f64().unwrap() - 2.0 * g).abs() < 1e-12);
    // A calibration of other weights is refused, naming both.
    let (o, _) = diff(
        &model_path(QWEN05),
        &model_path(QWEN05),
        d.path(),
        &["--calibration", cal.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("not of the reference") && e.contains("pot calibrate --ref"),
        "{e}"
    );

    // A later calibration that measures less does not replace the stored ladder.
    let stored = std::fs::read_dir(&store)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let o = pot()
        .env("POT_CALIBRATIONS", &store)
        .args([
            "calibrate",
            "--challenges",
            "5",
            "--rungs",
            "f16",
            "--floors",
            "other-kernels",
            "--ref",
        ])
        .arg(model_path(SMOL))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("kept the stored calibration") && e.contains("q2_k"),
        "{e}"
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&stored).unwrap()).unwrap();
    assert_eq!(v["challenges"], 10, "the stored calibration was replaced");

    // Refused before any work: an unknown rung, and an -o that exists.
    let o = pot()
        .args(["calibrate", "--rungs", "q1", "--ref"])
        .arg(model_path(SMOL))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("q1") && e.contains("q4_k"), "{e}");
    let o = pot()
        .args(["calibrate", "--ref"])
        .arg(model_path(SMOL))
        .arg("-o")
        .arg(&cal)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists already"));
}
