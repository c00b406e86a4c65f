//! Evidence bundles on real runs: `pot diff --bundle` and `pot audit --bundle` make them,
//! `pot bundle verify` accepts them, and every change to one is caught: every flipped byte of
//! the file; every field of the transcript and of the signed statement, whether the bundle is
//! left unsigned after the change or re-signed by the auditor with consistent digests (a
//! dishonest auditor), except the fields listed in `ATTESTED_ONLY`, which only re-running the
//! models could check.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use base64::Engine as _;
use common::{diff_cmd, model_path, pot, Server, SMOL};
use pot::commit::keys::AuditorKey;
use pot::evidence::{self, pae, Bundle, PAYLOAD_TYPE};
use serde_json::Value;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A finished run and its bundle, made once per test binary.
struct Made {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    bundle: PathBuf,
    auditor: AuditorKey,
    pubkey: String,
    bytes: Vec<u8>,
}

fn keygen_auditor(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let o = pot()
        .args(["keygen", "--auditor", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    (
        path,
        String::from_utf8(o.stdout).unwrap().trim().to_string(),
    )
}

/// SmolLM2 against itself, quick mode, with a bundle, placed on a small calibration of
/// SmolLM2 (one floor entry, one rung, five challenges) so the bundle holds a ladder.
fn made() -> &'static Made {
    static MADE: OnceLock<Made> = OnceLock::new();
    MADE.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let (key, pubkey) = keygen_auditor(&dir, "auditor.key");
        let bundle = dir.join("run.tar.gz");
        let smol = model_path(SMOL);
        let cal = dir.join("cal.json");
        let o = pot()
            .args([
                "calibrate",
                "--challenges",
                "5",
                "--floors",
                "one-at-a-time",
            ])
            .args(["--rungs", "q2_k", "--ref"])
            .arg(&smol)
            .arg("--keep")
            .arg(dir.join("rungs"))
            .arg("-o")
            .arg(&cal)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let o = diff_cmd(&smol, &smol, &dir.join("tr"))
            .args(["--mode", "quick", "--json", "--calibration"])
            .arg(&cal)
            .arg("--bundle")
            .arg(&bundle)
            .arg("--auditor-key")
            .arg(&key)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["decision"], "SAME");
        assert_eq!(v["served"]["consistent"][0], "one-at-a-time", "{v}");
        assert_eq!(v["served"]["excludes"][0], "q2_k", "{v}");
        assert_eq!(v["bundle"]["signer"], pubkey.as_str());
        assert_eq!(v["bundle"]["path"], bundle.display().to_string());
        let bytes = std::fs::read(&bundle).unwrap();
        assert_eq!(v["bundle"]["bytes"], bytes.len() as u64);
        Made {
            auditor: AuditorKey::read(&key).unwrap(),
            _dir: d,
            dir,
            bundle,
            pubkey,
            bytes,
        }
    })
}

fn verify_cli(path: &Path, extra: &[&str]) -> (Output, Value) {
    let o = pot()
        .args(["bundle", "verify", "--json"])
        .arg(path)
        .args(extra)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o, v)
}

#[test]
fn a_diff_bundle_verifies_pinned_and_unpinned_and_not_under_another_key() {
    let m = made();
    let (o, v) = verify_cli(&m.bundle, &["--pubkey", &m.pubkey]);
    assert_eq!(o.status.code(), Some(0), "{v}");
    assert_eq!(v["valid"], true);
    assert_eq!(v["pinned"], true);
    assert_eq!(v["decision"], "SAME");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in [
        "archive",
        "canonical",
        "signature",
        "transcript-digest",
        "key",
        "challenges",
        "scores",
        "bounds",
        "decision",
    ] {
        assert!(names.contains(&want), "{want} is checked: {names:?}");
    }
    // The public key from a file, as `pot keygen --auditor` prints it.
    let pubfile = m.dir.join("auditor.pub");
    std::fs::write(&pubfile, format!("{}\n", m.pubkey)).unwrap();
    let (o, _) = verify_cli(&m.bundle, &["--pubkey", pubfile.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    // Unpinned: valid, and says so.
    let (o, v) = verify_cli(&m.bundle, &[]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(v["pinned"], false);
    assert_eq!(v["signer"], m.pubkey.as_str());
    // Pinned to another auditor: rejected at the signature.
    let (_, other) = keygen_auditor(&m.dir, "other.key");
    let (o, v) = verify_cli(&m.bundle, &["--pubkey", &other]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(failed(&v), vec!["signature"]);
    // Text output: every check on a line, the verdict last; a failure also on stderr.
    let o = pot()
        .args(["bundle", "verify"])
        .arg(&m.bundle)
        .args(["--pubkey", &other])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("FAIL signature"), "{out}");
    assert!(out
        .lines()
        .last()
        .unwrap()
        .starts_with("INVALID: signature"));
    assert!(stderr(&o).contains("run.tar.gz"), "{}", stderr(&o));
}

fn failed(v: &Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_flipped_byte_truncation_and_appendix_of_the_file_is_caught() {
    let m = made();
    let b = &m.bytes;
    let pinned = m.auditor.public();
    assert!(evidence::verify_bytes(b, Some(&pinned)).valid);
    let mut caught = 0;
    for i in 0..b.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = b.clone();
            t[i] ^= bit;
            let r = evidence::verify_bytes(&t, Some(&pinned));
            assert!(!r.valid, "flipping bit {bit:#x} of byte {i} went unnoticed");
            caught += 1;
        }
    }
    for cut in (0..b.len()).step_by(97).chain([b.len() - 1]) {
        assert!(
            !evidence::verify_bytes(&b[..cut], Some(&pinned)).valid,
            "cut at {cut}"
        );
    }
    let mut longer = b.clone();
    longer.push(0);
    let r = evidence::verify_bytes(&longer, Some(&pinned));
    assert!(!r.valid);
    assert_eq!(r.first_failure().unwrap().name, "canonical");
    eprintln!(
        "{caught} flipped bits of a {} B bundle, all caught",
        b.len()
    );
}

/// Every leaf of a JSON value, as a JSON pointer, arrays cut to their first three items.
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| leaves(x, format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .take(3)
            .enumerate()
            .for_each(|(i, x)| leaves(x, format!("{at}/{i}"), out)),
        _ => out.push(at),
    }
}

/// Change a leaf to another value of its type.
fn mutate(v: &mut Value, ptr: &str) {
    let x = v.pointer_mut(ptr).unwrap();
    *x = match x.take() {
        Value::Bool(b) => Value::Bool(!b),
        Value::Number(n) if n.is_u64() => Value::from(n.as_u64().unwrap() + 1),
        Value::Number(n) if n.is_i64() => Value::from(n.as_i64().unwrap() + 1),
        Value::Number(n) => {
            let f = n.as_f64().unwrap();
            Value::from(if f == 0.0 { 0.015625 } else { f * 1.5 })
        }
        Value::String(s) if s.is_empty() => Value::from("x"),
        // Same length and alphabet where it can: the last character moved by one.
        Value::String(s) => {
            let mut c: Vec<char> = s.chars().collect();
            let last = c.pop().unwrap();
            c.push(match last {
                '0' => '1',
                'f' => 'e',
                'z' | 'Z' => 'a',
                ch if ch.is_ascii_alphanumeric() => ((ch as u8) + 1) as char,
                _ => 'x',
            });
            Value::from(c.into_iter().collect::<String>())
        }
        Value::Null => Value::from(0),
        other => other,
    };
}

/// The bundle's statement as JSON.
fn statement_of(b: &Bundle) -> Value {
    let env: Value = serde_json::from_slice(&b.envelope).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(env["payload"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&payload).unwrap()
}

/// An envelope around `statement`: signed by `key`, or keeping `old`'s signature.
fn envelope(statement: &Value, key: Option<&AuditorKey>, old: &Bundle) -> Vec<u8> {
    let payload = serde_json::to_vec(statement).unwrap();
    let mut env: Value = serde_json::from_slice(&old.envelope).unwrap();
    env["payload"] = base64::engine::general_purpose::STANDARD
        .encode(&payload)
        .into();
    if let Some(k) = key {
        env["signatures"][0]["sig"] = base64::engine::general_purpose::STANDARD
            .encode(k.sign(&pae(PAYLOAD_TYPE, &payload)))
            .into();
        env["signatures"][0]["keyid"] = hex::encode(k.public().to_bytes()).into();
    }
    serde_json::to_vec_pretty(&env).unwrap()
}

/// `b` with a new transcript; `resign`: the statement's digests updated and re-signed.
fn with_transcript(b: &Bundle, transcript: Vec<u8>, resign: Option<&AuditorKey>) -> Bundle {
    let Some(key) = resign else {
        return Bundle {
            transcript,
            ..b.clone()
        };
    };
    let mut st = statement_of(b);
    {
        let body = transcript.strip_suffix(b"\n").unwrap_or(&transcript);
        let lines: Vec<&[u8]> = body.split(|c| *c == b'\n').collect();
        let t = &mut st["predicate"]["transcript"];
        t["sha256"] = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&transcript)).into();
        t["merkle_root"] = hex::encode(pot::commit::merkle::Tree::new(&lines).root()).into();
        t["lines"] = lines.len().into();
        t["bytes"] = transcript.len().into();
    }
    Bundle {
        envelope: envelope(&st, Some(key), b),
        transcript,
        key: b.key.clone(),
        proof: b.proof.clone(),
    }
}

fn lines_of(b: &Bundle) -> Vec<Value> {
    String::from_utf8(b.transcript.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn join(lines: &[Value]) -> Vec<u8> {
    lines
        .iter()
        .map(|l| serde_json::to_string(l).unwrap() + "\n")
        .collect::<String>()
        .into_bytes()
}

/// Fields a re-signing auditor can change without a check failing: the models' outputs,
/// which only re-running the models checks, statements about the auditor's own machine and
/// tool, and the calibration the auditor placed the candidate with (the header's ladder: the
/// placement that follows from it is recomputed, see
/// `a_placement_that_does_not_follow_from_the_ladder_is_caught`).
const ATTESTED_ONLY: &[&str] = &[
    "/ladder/",
    "/continuation_ids/",
    "/continuation_text",
    "/top1_agree/",
    "/version",
    "/pot_version",
    "/timings/bundled_unix",
    "/environment/",
    "/pot/",
];

fn attested_only(ptr: &str) -> bool {
    ATTESTED_ONLY
        .iter()
        .any(|a| ptr == a.trim_end_matches('/') || ptr.starts_with(a))
}

#[test]
fn every_field_of_the_transcript_and_statement_is_caught_signed_or_re_signed() {
    let m = made();
    let b = Bundle::unpack(&m.bytes).unwrap();
    let pinned = m.auditor.public();
    let check = |t: &Bundle| evidence::verify_bytes(&t.pack(), Some(&pinned));
    assert!(check(&b).valid);
    let lines = lines_of(&b);
    let (mut unsigned, mut resigned, mut attested) = (0, 0, 0);
    for (i, line) in lines.iter().enumerate() {
        let mut ptrs = Vec::new();
        leaves(line, String::new(), &mut ptrs);
        for p in &ptrs {
            let mut changed = lines.clone();
            mutate(&mut changed[i], p);
            let t = join(&changed);
            // Left unsigned: the transcript's digests no longer match.
            let r = check(&with_transcript(&b, t.clone(), None));
            assert!(!r.valid, "line {} {p}: unsigned change not caught", i + 1);
            assert_eq!(r.first_failure().unwrap().name, "transcript-digest");
            unsigned += 1;
            // Re-signed with consistent digests: a check on the content must fail.
            let r = check(&with_transcript(&b, t, Some(&m.auditor)));
            if attested_only(p) {
                attested += 1;
                continue;
            }
            assert!(!r.valid, "line {} {p}: re-signed change not caught", i + 1);
            let f = r.first_failure().unwrap().name;
            assert!(
                !["signature", "transcript-digest", "canonical"].contains(&f),
                "line {} {p}: caught only by {f}",
                i + 1
            );
            resigned += 1;
        }
    }
    // Every field of the statement, unsigned and re-signed.
    let st = statement_of(&b);
    let mut ptrs = Vec::new();
    leaves(&st, String::new(), &mut ptrs);
    for p in &ptrs {
        let mut s = st.clone();
        mutate(&mut s, p);
        for key in [None, Some(&m.auditor)] {
            let t = Bundle {
                envelope: envelope(&s, key, &b),
                ..b.clone()
            };
            let r = check(&t);
            if key.is_some() && attested_only(p.trim_start_matches("/predicate")) {
                attested += 1;
                continue;
            }
            assert!(
                !r.valid,
                "statement {p} (re-signed: {}) not caught",
                key.is_some()
            );
            if key.is_none() {
                assert_eq!(r.first_failure().unwrap().name, "signature", "{p}");
            }
        }
    }
    eprintln!(
        "{unsigned} unsigned and {resigned} re-signed transcript changes caught, {} statement fields; {attested} attested-only changes",
        ptrs.len()
    );
}

#[test]
fn a_placement_that_does_not_follow_from_the_ladder_is_caught() {
    // A re-signed bundle whose ladder says the 2-bit rung diverges as little as the floor:
    // the verdict's "excludes q2_k" no longer follows from it, and verification says so.
    let m = made();
    let b = Bundle::unpack(&m.bytes).unwrap();
    let mut lines = lines_of(&b);
    let floor = lines[0]["ladder"]["points"][0]["scores"].clone();
    lines[0]["ladder"]["points"][1]["scores"] = floor;
    let t = with_transcript(&b, join(&lines), Some(&m.auditor));
    let r = evidence::verify_bytes(&t.pack(), Some(&m.auditor.public()));
    assert!(!r.valid);
    let f = r.first_failure().unwrap();
    assert_eq!(f.name, "decision");
    assert!(f.detail.contains("served"), "{}", f.detail);
}

#[test]
fn forged_keys_reordered_or_missing_lines_and_bad_archives_are_caught_where_they_are() {
    let m = made();
    let b = Bundle::unpack(&m.bytes).unwrap();
    let pinned = m.auditor.public();
    let first_failure = |t: &Bundle| {
        let r = evidence::verify_bytes(&t.pack(), Some(&pinned));
        assert!(!r.valid);
        let f = r.first_failure().unwrap().clone();
        (f.name.to_string(), f.detail)
    };
    // Another key revealed: it does not open the commitment.
    let other = Bundle {
        key: format!("{}\n", "ab".repeat(32)).into_bytes(),
        ..b.clone()
    };
    assert_eq!(first_failure(&other).0, "key");
    // Another key and a matching commitment (re-signed): the prompts do not re-derive.
    let forged_key = pot::challenge::ChallengeKey::from_bytes([7; 32]);
    let mut lines = lines_of(&b);
    lines[0]["key_commitment"] = forged_key.commitment().into();
    let mut st = statement_of(&b);
    st["predicate"]["challenge_key"]["commitment"] = forged_key.commitment().into();
    let t = with_transcript(
        &Bundle {
            envelope: envelope(&st, None, &b),
            key: format!("{}\n", forged_key.to_hex()).into_bytes(),
            ..b.clone()
        },
        join(&lines),
        Some(&m.auditor),
    );
    let (name, detail) = first_failure(&t);
    assert_eq!(name, "challenges");
    assert!(
        detail.contains("transcript line 2 (challenge 0)"),
        "{detail}"
    );
    // Two challenges swapped.
    let mut lines = lines_of(&b);
    lines.swap(2, 3);
    let (name, detail) = first_failure(&with_transcript(&b, join(&lines), Some(&m.auditor)));
    assert_eq!(name, "challenges");
    assert!(detail.contains("transcript line 3"), "{detail}");
    // A score raised together with its detail and its running mean: the bounds do not replay.
    let mut lines = lines_of(&b);
    let kl0 = lines[4]["kl"][0].as_f64().unwrap();
    lines[4]["kl"][0] = (kl0 + 0.5).into();
    let n = lines[4]["kl"].as_array().unwrap().len() as f64;
    let s = lines[4]["score"].as_f64().unwrap();
    lines[4]["score"] = (s + 0.5 / n).into();
    let (name, detail) = first_failure(&with_transcript(&b, join(&lines), Some(&m.auditor)));
    assert!(name == "scores" || name == "bounds", "{name}: {detail}");
    assert!(detail.contains("transcript line 5"), "{detail}");
    // The last challenge dropped: the test has not decided where the verdict stands.
    let mut lines = lines_of(&b);
    let last = lines.len() - 2;
    lines.remove(last);
    let (name, _) = first_failure(&with_transcript(&b, join(&lines), Some(&m.auditor)));
    assert!(name == "decision" || name == "header", "{name}");
    // The verdict line gone.
    let mut lines = lines_of(&b);
    lines.pop();
    let (name, detail) = first_failure(&with_transcript(&b, join(&lines), Some(&m.auditor)));
    assert_eq!(name, "decision", "{detail}");
    // A torn transcript.
    let mut torn = b.transcript.clone();
    torn.pop();
    let (name, _) = first_failure(&with_transcript(&b, torn, Some(&m.auditor)));
    assert_eq!(name, "transcript");
    // Envelope: two signatures, another payload type (re-signed), a signature of the wrong size.
    let mut env: Value = serde_json::from_slice(&b.envelope).unwrap();
    let sig = env["signatures"][0].clone();
    env["signatures"].as_array_mut().unwrap().push(sig);
    let t = Bundle {
        envelope: serde_json::to_vec(&env).unwrap(),
        ..b.clone()
    };
    assert_eq!(first_failure(&t).0, "envelope");
    let mut env: Value = serde_json::from_slice(&b.envelope).unwrap();
    env["signatures"][0]["sig"] = "AAAA".into();
    let t = Bundle {
        envelope: serde_json::to_vec(&env).unwrap(),
        ..b.clone()
    };
    assert_eq!(first_failure(&t).0, "signature");
    let t = Bundle {
        envelope: b"not json".to_vec(),
        ..b.clone()
    };
    assert_eq!(first_failure(&t).0, "envelope");
    // Archives: an extra entry, a missing one, a non-canonical packing.
    let tar_gz = |entries: &[(&str, &[u8])], level: u32| {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        let mut ar = tar::Builder::new(gz);
        for (name, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_path(name).unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            ar.append(&h, *data).unwrap();
        }
        ar.into_inner().unwrap().finish().unwrap()
    };
    let all = [
        (evidence::STATEMENT_ENTRY, b.envelope.as_slice()),
        (evidence::TRANSCRIPT_ENTRY, b.transcript.as_slice()),
        (evidence::KEY_ENTRY, b.key.as_slice()),
    ];
    let name_of = |bytes: Vec<u8>| {
        let r = evidence::verify_bytes(&bytes, Some(&pinned));
        assert!(!r.valid);
        let f = r.first_failure().unwrap();
        (f.name, f.detail.clone())
    };
    let (n, d) = name_of(tar_gz(&[all[0], all[1], all[2], ("extra.txt", b"x")], 9));
    assert_eq!(n, "archive");
    assert!(d.contains("extra.txt"), "{d}");
    let (n, d) = name_of(tar_gz(&[all[0], all[1], all[1], all[2]], 9));
    assert_eq!(n, "archive");
    assert!(d.contains("twice"), "{d}");
    let (n, d) = name_of(tar_gz(&[all[0], all[2]], 9));
    assert_eq!(n, "archive");
    assert!(d.contains(evidence::TRANSCRIPT_ENTRY), "{d}");
    let (n, _) = name_of(tar_gz(&all, 1));
    assert_eq!(n, "canonical");
}

#[test]
fn bad_bundle_inputs_fail_cleanly_and_bundles_can_be_made_after_the_run() {
    let m = made();
    // Missing file: exit 2, one line naming it.
    let missing = m.dir.join("nope.tar.gz");
    let o = pot()
        .args(["bundle", "verify"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("nope.tar.gz") && e.trim().lines().count() == 1,
        "{e}"
    );
    // Not a bundle: exit 1 at the archive check.
    let junk = m.dir.join("junk.tar.gz");
    std::fs::write(&junk, b"hello").unwrap();
    let (o, v) = verify_cli(&junk, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(failed(&v), vec!["archive"]);
    // A bad --pubkey: exit 2 naming it.
    let o = pot()
        .args(["bundle", "verify", "--pubkey", "xyz"])
        .arg(&m.bundle)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--pubkey xyz"), "{}", stderr(&o));
    // --bundle onto an existing file, or without a key: refused before any work.
    let smol = model_path(SMOL);
    let o = diff_cmd(&smol, &smol, &m.dir.join("tr2"))
        .args(["--mode", "quick"])
        .arg("--bundle")
        .arg(&m.bundle)
        .arg("--auditor-key")
        .arg(m.dir.join("auditor.key"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("exists already"), "{}", stderr(&o));
    assert!(!m.dir.join("tr2").exists(), "nothing written");
    let o = pot()
        .args(["diff", "--ref"])
        .arg(&smol)
        .arg("--cand")
        .arg(&smol)
        .arg("--bundle")
        .arg(m.dir.join("x.tar.gz"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--auditor-key"), "{}", stderr(&o));
    // A node key is not an auditor key.
    let node = m.dir.join("node.key");
    assert!(pot()
        .args(["keygen", "--node", "--out"])
        .arg(&node)
        .output()
        .unwrap()
        .status
        .success());
    // `pot bundle create` after the fact, from the run's saved key.
    let tr = m.dir.join("tr");
    let transcript = std::fs::read_dir(&tr)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .unwrap();
    let saved_key = transcript.with_extension("key");
    let later = m.dir.join("later.tar.gz");
    let create = |key: &Path, auditor: &Path, out: &Path| {
        pot()
            .args(["bundle", "create", "--transcript"])
            .arg(&transcript)
            .arg("--key-file")
            .arg(key)
            .arg("--auditor-key")
            .arg(auditor)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap()
    };
    let o = create(&saved_key, &node, &later);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("pot keygen --auditor"),
        "{}",
        stderr(&o)
    );
    let wrong = m.dir.join("wrong.key");
    assert!(pot()
        .args(["keygen", "-o"])
        .arg(&wrong)
        .status()
        .unwrap()
        .success());
    let o = create(&wrong, &m.dir.join("auditor.key"), &later);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("key commitment"), "{}", stderr(&o));
    assert!(!later.exists(), "nothing half-written");
    let o = create(&saved_key, &m.dir.join("auditor.key"), &later);
    assert!(o.status.success(), "{}", stderr(&o));
    let (o, v) = verify_cli(&later, &["--pubkey", &m.pubkey]);
    assert_eq!(o.status.code(), Some(0), "{v}");
    // The same run, bundled twice: the same transcript and key, the same Merkle root.
    let a = Bundle::unpack(&m.bytes).unwrap();
    let c = Bundle::unpack(&std::fs::read(&later).unwrap()).unwrap();
    assert_eq!((a.transcript, &a.key), (c.transcript, &c.key));
    // The revealed run key bundles the run too, and reveals only itself.
    let revealed = m.dir.join("revealed.key");
    std::fs::write(&revealed, &a.key).unwrap();
    let again = m.dir.join("again.tar.gz");
    let o = create(&revealed, &m.dir.join("auditor.key"), &again);
    assert!(o.status.success(), "{}", stderr(&o));
    let d = Bundle::unpack(&std::fs::read(&again).unwrap()).unwrap();
    assert_eq!(d.key, a.key);
    assert_ne!(
        String::from_utf8_lossy(&d.key).trim(),
        std::fs::read_to_string(&saved_key).unwrap().trim(),
        "the run key, not the key file's"
    );
}

#[test]
fn an_audit_of_pot_serve_bundles_and_verifies() {
    let d = tempfile::tempdir().unwrap();
    let (key, pubkey) = keygen_auditor(d.path(), "auditor.key");
    let server = Server::start(SMOL, &["--max-batch", "1"]);
    let bundle = d.path().join("audit.tar.gz");
    let o = pot()
        .args([
            "audit", "--mode", "quick", "--json", "--model", "vendor", "--ref",
        ])
        .arg(model_path(SMOL))
        .args(["--endpoint", &server.url])
        .arg("--transcripts")
        .arg(d.path().join("tr"))
        .arg("--bundle")
        .arg(&bundle)
        .arg("--auditor-key")
        .arg(&key)
        .arg("--prove")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // --prove: the bundle carries a proof of the audit's verdict, and it verifies.
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["bundle"]["proof"]["decision"], out["decision"], "{out}");
    let (o, v) = verify_cli(&bundle, &["--pubkey", &pubkey]);
    assert_eq!(o.status.code(), Some(0), "{v}");
    let last = v["checks"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["name"], "verdict-proof", "{v}");
    let b = Bundle::unpack(&std::fs::read(&bundle).unwrap()).unwrap();
    assert!(b.proof.is_some());
    let st = statement_of(&b);
    assert_eq!(st["predicate"]["command"], "audit");
    assert_eq!(st["predicate"]["score_kind"], "endpoint-kl");
    // An endpoint has no weights to name: the reference is the only subject.
    assert_eq!(st["subject"].as_array().unwrap().len(), 1);
    // The endpoint's raw answers are in the transcript; the API key never is.
    let t = String::from_utf8(b.transcript).unwrap();
    assert!(t.contains("\"endpoint\""));
    // A score changed in an endpoint audit (re-signed) is caught too.
    let mut lines: Vec<Value> = t
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines[1]["score"] = (lines[1]["score"].as_f64().unwrap() + 0.25).into();
    let b = Bundle::unpack(&std::fs::read(&bundle).unwrap()).unwrap();
    let auditor = AuditorKey::read(&key).unwrap();
    let r = evidence::verify_bytes(
        &with_transcript(&b, join(&lines), Some(&auditor)).pack(),
        Some(&auditor.public()),
    );
    assert_eq!(r.first_failure().unwrap().name, "scores");
    drop(server);
}

/// `pot prove` adds a Halo2 proof of the verdict to a real run's bundle; `pot bundle verify`
/// checks it offline. A flipped byte of the proof, a proof moved to a bundle of another run,
/// or a bundle that does not verify are refused, each with its reason.
#[test]
fn a_proof_of_the_verdict_verifies_and_a_tampered_or_moved_one_does_not() {
    let m = made();
    let dir = tempfile::tempdir().unwrap();
    let proved = dir.path().join("proved.tar.gz");
    let o = pot()
        .args(["prove", "--json"])
        .arg(&m.bundle)
        .arg("-o")
        .arg(&proved)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let p: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["decision"], "SAME");
    let size = p["proof_bytes"].as_u64().unwrap();
    assert!(size > 1000 && size < 20_000, "{p}");
    eprintln!(
        "proof of SAME after {}: {size} B, 2^{} rows, proved in {} s, verified in {} s",
        p["queries"], p["k"], p["prove_s"], p["verify_s"]
    );
    // The original is left as it was (the proof went to -o).
    assert_eq!(std::fs::read(&m.bundle).unwrap(), m.bytes);

    let (o, v) = verify_cli(&proved, &["--pubkey", &m.pubkey]);
    assert_eq!(o.status.code(), Some(0), "{v}");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.ends_with(&["score-commitment", "verdict-proof"]),
        "{names:?}"
    );

    // A flipped byte of the proof.
    let b = Bundle::unpack(&std::fs::read(&proved).unwrap()).unwrap();
    let proof = b.proof.clone().unwrap();
    for at in [0, proof.len() / 2, proof.len() - 1] {
        let mut bad = b.clone();
        let mut p = proof.clone();
        p[at] ^= 0x01;
        bad.proof = Some(p);
        let path = dir.path().join(format!("flipped-{at}.tar.gz"));
        std::fs::write(&path, bad.pack()).unwrap();
        let (o, v) = verify_cli(&path, &[]);
        assert_eq!(o.status.code(), Some(1), "byte {at}: {v}");
        assert_eq!(failed(&v), ["verdict-proof"], "byte {at}");
    }
    // The proof in another run's bundle (tests/fixtures/fuzz-run: another commitment, another
    // verdict and other parameters).
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let other = dir.path().join("other.tar.gz");
    evidence::create(
        &fx.join("fuzz-run.ndjson"),
        &pot::challenge::ChallengeKey::read(&fx.join("fuzz-run.key")).unwrap(),
        &m.auditor,
        &other,
    )
    .unwrap();
    let mut moved = Bundle::unpack(&std::fs::read(&other).unwrap()).unwrap();
    moved.proof = Some(proof.clone());
    let path = dir.path().join("moved.tar.gz");
    std::fs::write(&path, moved.pack()).unwrap();
    let (o, v) = verify_cli(&path, &[]);
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(failed(&v), ["verdict-proof"]);
    // A public bundle: the signed statement and the proof, the transcript and key withheld.
    let public = dir.path().join("public.tar.gz");
    let o = pot()
        .args(["prove", "--public", "--json"])
        .arg(&m.bundle)
        .arg("-o")
        .arg(&public)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let pb = Bundle::unpack(&std::fs::read(&public).unwrap()).unwrap();
    assert!(pb.is_public() && pb.transcript.is_empty() && pb.key.is_empty());
    let (o, v) = verify_cli(&public, &["--pubkey", &m.pubkey]);
    assert_eq!(o.status.code(), Some(0), "{v}");
    assert_eq!(v["public"], true);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "archive",
            "canonical",
            "envelope",
            "signature",
            "statement",
            "verdict-proof"
        ]
    );
    eprintln!(
        "public bundle: {} B (the full bundle with its proof: {} B)",
        std::fs::metadata(&public).unwrap().len(),
        std::fs::metadata(&proved).unwrap().len()
    );
    // Its statement re-signed by the auditor with another verdict: the signature holds, the
    // proof does not.
    let mut st = statement_of(&pb);
    st["predicate"]["decision"] = "DIFFERENT".into();
    let mut lie = pb.clone();
    lie.envelope = envelope(&st, Some(&m.auditor), &pb);
    let path = dir.path().join("lie.tar.gz");
    std::fs::write(&path, lie.pack()).unwrap();
    let (o, v) = verify_cli(&path, &["--pubkey", &m.pubkey]);
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(failed(&v), ["verdict-proof"]);
    // Other parameters, re-signed: likewise.
    let mut st = statement_of(&pb);
    st["predicate"]["params"]["alpha"] = 0.01.into();
    lie.envelope = envelope(&st, Some(&m.auditor), &pb);
    std::fs::write(&path, lie.pack()).unwrap();
    let (o, v) = verify_cli(&path, &["--pubkey", &m.pubkey]);
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(failed(&v), ["verdict-proof"]);
    // Other bounds, re-signed: the proof is of the published bounds (each placed on the
    // score grid), so a tighter one fails, and so does a looser one (true, but not what was
    // proven).
    let pred = statement_of(&pb)["predicate"].clone();
    let published = pred["upper"].as_f64().unwrap();
    let clip = pred["params"]["clip"].as_f64().unwrap();
    assert!(published > 0.0 && published < clip, "{pred}");
    for upper in [published * 0.5, (published + clip) / 2.0] {
        let mut st = statement_of(&pb);
        st["predicate"]["upper"] = upper.into();
        lie.envelope = envelope(&st, Some(&m.auditor), &pb);
        std::fs::write(&path, lie.pack()).unwrap();
        let (o, v) = verify_cli(&path, &["--pubkey", &m.pubkey]);
        assert_eq!(o.status.code(), Some(1), "upper {upper}: {v}");
        assert_eq!(failed(&v), ["verdict-proof"]);
    }

    // A bundle that does not verify is not proven, and nothing is written.
    let broken = dir.path().join("broken.tar.gz");
    let mut bytes = m.bytes.clone();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&broken, &bytes).unwrap();
    let out = dir.path().join("never.tar.gz");
    let o = pot()
        .arg("prove")
        .arg(&broken)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("cannot prove its verdict"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}
