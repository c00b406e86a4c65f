//! Re-checking a bundle, one function per check. Each takes what it checks and gives the
//! line a report shows: `Ok(what holds)` or `Err(what does not, and where)`. [`verify_bytes`]
//! runs them in order and stops where a later check would have nothing to read.

use super::{
    lines, pae, parse, sha256_hex, subjects, Bundle, Check, Envelope, Predicate, Report, Statement,
    B64, KEY_ENTRY, PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_ENTRY, STATEMENT_TYPE,
    TRANSCRIPT_ENTRY,
};
use crate::challenge::{Catalog, ChallengeKey};
use crate::commit::keys::NodePublic;
use crate::commit::merkle;
use crate::served::Served;
use crate::stats::SequentialTest;
use crate::transcript::{Candidate, Header, Records};
use base64::Engine as _;

/// What one check gives: what holds, or what does not.
type Outcome = Result<String, String>;

struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, name: &'static str, r: Outcome) -> bool {
        let ok = r.is_ok();
        self.0.push(Check {
            name,
            ok,
            detail: r.unwrap_or_else(|e| e),
        });
        ok
    }
}

/// Up to this many failures are listed per check.
const SHOWN: usize = 3;

/// "n of m …; first at …" for a list of failures.
fn failures(what: &str, total: usize, bad: &[String]) -> Outcome {
    if bad.is_empty() {
        return Ok(format!("{total} of {total} {what}"));
    }
    let shown: Vec<&str> = bad.iter().take(SHOWN).map(String::as_str).collect();
    Err(format!(
        "{} of {total} {what} fail: {}{}",
        bad.len(),
        shown.join("; "),
        if bad.len() > SHOWN { "; …" } else { "" }
    ))
}

/// `archive`: the bytes are a gzip'd tar of the three entries.
fn archive(bytes: &[u8]) -> Result<(Bundle, String), String> {
    let bundle = Bundle::unpack(bytes)?;
    if bundle.is_public() {
        return Ok((
            bundle.clone(),
            format!(
                "{STATEMENT_ENTRY} ({} B), {} ({} B): a public bundle, the transcript withheld",
                bundle.envelope.len(),
                super::PROOF_ENTRY,
                bundle.proof.as_ref().map_or(0, Vec::len)
            ),
        ));
    }
    let detail = format!(
        "{STATEMENT_ENTRY} ({} B), {TRANSCRIPT_ENTRY} ({} B), {KEY_ENTRY}",
        bundle.envelope.len(),
        bundle.transcript.len()
    );
    Ok((bundle, detail))
}

/// `canonical`: the bytes are the canonical packing of the entries.
fn canonical(bundle: &Bundle, bytes: &[u8]) -> Outcome {
    if bundle.pack() == bytes {
        Ok(format!(
            "{} B, the canonical packing of its entries",
            bytes.len()
        ))
    } else {
        Err("the file's bytes differ from the canonical packing of its entries: it was altered or re-packed".into())
    }
}

/// `envelope`: a DSSE envelope of the in-toto payload type with exactly one signature; its
/// payload decoded.
fn envelope(raw: &[u8]) -> Result<(Envelope, Vec<u8>, String), String> {
    let envelope: Envelope = serde_json::from_slice(raw)
        .map_err(|e| format!("{STATEMENT_ENTRY} is not a DSSE envelope ({e})"))?;
    let payload = B64
        .decode(&envelope.payload)
        .map_err(|e| format!("the payload is not base64 ({e})"))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(format!(
            "payloadType is {:?}, not {PAYLOAD_TYPE:?}",
            envelope.payload_type
        ));
    }
    match envelope.signatures.len() {
        1 => Ok((
            envelope,
            payload,
            format!("DSSE, {PAYLOAD_TYPE}, one signature"),
        )),
        n => Err(format!("{n} signatures; a pot bundle has exactly one")),
    }
}

/// `signature`: Ed25519 over the DSSE pre-authentication encoding, by the pinned key when
/// one is given, else by the key the envelope names.
fn signature(envelope: &Envelope, payload: &[u8], pinned: Option<&NodePublic>) -> Outcome {
    let sig = &envelope.signatures[0];
    let signed_by = match (pinned, NodePublic::from_hex(&sig.keyid)) {
        (Some(p), _) => *p,
        (None, Ok(k)) => k,
        (None, Err(_)) => return Err("the keyid is not an Ed25519 public key".into()),
    };
    let Some(s) = B64
        .decode(&sig.sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return Err("the signature is not 64 bytes of base64".into());
    };
    let who = hex::encode(signed_by.to_bytes());
    if signed_by.verify(&pae(PAYLOAD_TYPE, payload), &s) {
        Ok(format!(
            "Ed25519 by {who}{}",
            if pinned.is_some() {
                " (the pinned key)"
            } else {
                " (not pinned: pass --pubkey to require the auditor's key)"
            }
        ))
    } else {
        Err(format!(
            "the signature does not verify under {who}{}",
            if pinned.is_some() && sig.keyid != who {
                format!(" (the pinned key; the envelope names {})", sig.keyid)
            } else {
                String::new()
            }
        ))
    }
}

/// `statement`: an in-toto Statement v1 of pot's predicate type naming this bundle's entries.
fn statement(payload: &[u8]) -> Result<(Statement, Outcome), String> {
    let statement: Statement = serde_json::from_slice(payload)
        .map_err(|e| format!("the payload is not a pot statement ({e})"))?;
    let pr = &statement.predicate;
    let outcome = if statement.type_ != STATEMENT_TYPE {
        Err(format!(
            "_type is {:?}, not {STATEMENT_TYPE:?}",
            statement.type_
        ))
    } else if statement.predicate_type != PREDICATE_TYPE {
        Err(format!(
            "predicateType is {:?}, not {PREDICATE_TYPE:?}",
            statement.predicate_type
        ))
    } else if pr.challenge_key.revealed != KEY_ENTRY || pr.transcript.entry != TRANSCRIPT_ENTRY {
        Err("the predicate names entries this bundle does not have".into())
    } else {
        Ok(format!(
            "in-toto Statement v1, {} {} of run {}",
            pr.command,
            pr.decision.as_str(),
            pr.run_id
        ))
    };
    Ok((statement, outcome))
}

/// `transcript-digest`: the transcript's SHA-256, Merkle root over its lines, line and byte
/// counts are the statement's.
fn transcript_digest(transcript: &[u8], pr: &Predicate) -> Outcome {
    let leaves = lines(transcript);
    let root = hex::encode(merkle::Tree::new(&leaves).root());
    let sha = sha256_hex(transcript);
    let t = &pr.transcript;
    if sha != t.sha256 {
        Err(format!("SHA-256 {sha}, the statement says {}", t.sha256))
    } else if root != t.merkle_root {
        Err(format!(
            "Merkle root {root}, the statement says {}",
            t.merkle_root
        ))
    } else if leaves.len() != t.lines || transcript.len() as u64 != t.bytes {
        Err(format!(
            "{} lines and {} B, the statement says {} and {}",
            leaves.len(),
            transcript.len(),
            t.lines,
            t.bytes
        ))
    } else {
        Ok(format!(
            "SHA-256 and Merkle root {} over {} lines",
            &root[..16],
            t.lines
        ))
    }
}

/// `transcript`: a header, challenges and perhaps a verdict.
fn transcript(raw: &[u8]) -> Result<(Records, String), String> {
    let parsed = parse(raw).map_err(|e| format!("{TRANSCRIPT_ENTRY}: {e}"))?;
    let detail = format!(
        "a header, {} challenges{}",
        parsed.queries.len(),
        if parsed.verdict.is_some() {
            ", a verdict"
        } else {
            ""
        }
    );
    Ok((parsed, detail))
}

/// `header`: the statement's run, parameters, models and key commitment are the header's.
fn header(statement: &Statement, h: &Header) -> Outcome {
    let pr = &statement.predicate;
    let command = match h.candidate {
        Candidate::Model(_) => "diff",
        Candidate::Endpoint(_) => "audit",
    };
    let bad: Vec<String> = [
        ("the run id", pr.run_id == h.run_id),
        ("the mode", pr.mode == h.mode),
        ("the parameters", pr.params == h.params),
        ("K", pr.k == h.k),
        ("the kernels", pr.kernels == h.kernels),
        ("the score kind", pr.score_kind == h.score_kind),
        (
            "the key commitment",
            pr.challenge_key.commitment == h.key_commitment,
        ),
        ("the reference", pr.reference == h.reference),
        ("the candidate", pr.candidate == h.candidate),
        ("the start time", pr.timings.started_unix == h.started_unix),
        ("the command", pr.command == command),
        ("the subjects", statement.subject == subjects(h)),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(what, _)| format!("{what} differs"))
    .collect();
    if bad.is_empty() {
        Ok("the statement's run, parameters, models and commitment are the header's".into())
    } else {
        Err(format!(
            "statement against transcript line 1: {}",
            bad.join(", ")
        ))
    }
}

/// `key`: the revealed key opens the header's key commitment.
fn key(raw: &[u8], h: &Header) -> Result<(ChallengeKey, String), String> {
    let key = std::str::from_utf8(raw)
        .map_err(|_| "not text".to_string())
        .and_then(|t| ChallengeKey::from_hex(t, KEY_ENTRY).map_err(|e| e.to_string()))
        .map_err(|e| format!("{KEY_ENTRY}: {e}"))?;
    if key.commitment() != h.key_commitment {
        return Err(format!(
            "{KEY_ENTRY} does not open the header's key commitment {}",
            h.key_commitment
        ));
    }
    Ok((
        key,
        format!("opens the commitment {}", &h.key_commitment[..16]),
    ))
}

/// `challenges`: every challenge is the one the key derives at its index.
fn challenges(key: &ChallengeKey, parsed: &Records) -> Outcome {
    let cat = Catalog::load().map_err(|e| e.to_string())?;
    let h = &parsed.header;
    let mut bad = Vec::new();
    for (i, (line, q)) in parsed.queries.iter().enumerate() {
        let want = cat.challenge(key, &h.run_id, i as u64);
        let mut diffs = Vec::new();
        if q.index != i as u64 {
            diffs.push(format!("index {} where {i} belongs", q.index));
        }
        for (what, same) in [
            ("family", q.family == want.family),
            ("template", q.template == want.template),
            ("prompt", q.prompt == want.prompt),
        ] {
            if !same {
                diffs.push(what.to_string());
            }
        }
        if !diffs.is_empty() {
            bad.push(format!(
                "transcript line {line} (challenge {i}): {} not what the key derives",
                diffs.join(", ")
            ));
        }
    }
    failures("challenges match the key's", parsed.queries.len(), &bad)
}

/// `scores`: each score is what its detail gives, of the run's kind.
fn scores(parsed: &Records) -> Outcome {
    let kind = parsed.header.score_kind;
    let mut bad = Vec::new();
    for (line, q) in &parsed.queries {
        match q.score.recompute() {
            Ok(s) if s == q.score.score => {}
            Ok(s) => bad.push(format!(
                "transcript line {line} (challenge {}): score {} but its detail gives {s}",
                q.index, q.score.score
            )),
            Err(e) => bad.push(format!(
                "transcript line {line} (challenge {}): {e}",
                q.index
            )),
        }
        if q.score.kind != kind {
            bad.push(format!(
                "transcript line {line} (challenge {}): scored as {:?}, the run as {kind:?}",
                q.index, q.score.kind
            ));
        }
    }
    failures("scores match their detail", parsed.queries.len(), &bad)
}

/// `bounds`: the test replayed on the scores gives each line's mean and bounds; the test is
/// returned for the decision.
fn bounds(parsed: &Records) -> Result<(SequentialTest, Outcome), String> {
    let mut test = SequentialTest::for_kind(parsed.header.params, parsed.header.score_kind)
        .map_err(|e| format!("transcript line 1: {e}"))?;
    let mut bad = Vec::new();
    for (line, q) in &parsed.queries {
        if test.decision().is_some() {
            bad.push(format!(
                "transcript line {line}: a challenge after the test had decided"
            ));
            break;
        }
        test.push_score(&q.score);
        let st = test.status();
        if (st.mean, st.lower, st.upper) != (q.mean, q.lower, q.upper) {
            bad.push(format!(
                "transcript line {line} (challenge {}): mean and bounds ({}, {}, {}) where the test gives ({}, {}, {})",
                q.index, q.mean, q.lower, q.upper, st.mean, st.lower, st.upper
            ));
        }
    }
    let outcome = failures(
        "means and confidence bounds match the replayed test",
        parsed.queries.len(),
        &bad,
    );
    Ok((test, outcome))
}

/// `decision`: the transcript's verdict and the statement are what the replayed test decided,
/// with the same estimate and ladder placement.
fn decision(parsed: &Records, test: &SequentialTest, pr: &Predicate) -> Outcome {
    let n = parsed.queries.len();
    let st = test.status();
    let served = Served::of(test, parsed.header.ladder.as_ref());
    let seconds: f64 = parsed.queries.iter().map(|(_, q)| q.seconds).sum();
    let (line, v) = parsed
        .verdict
        .as_ref()
        .ok_or("the transcript has no verdict line")?;
    let Some(d) = test.decision() else {
        return Err(format!(
            "transcript line {line}: a verdict after {n} challenges, where the test has not decided"
        ));
    };
    if v.decision != d
        || v.queries != st.n
        || (v.mean, v.lower, v.upper) != (st.mean, st.lower, st.upper)
    {
        Err(format!(
            "transcript line {line}: verdict {} after {} (mean {}, [{}, {}]) where the test gives {} after {} (mean {}, [{}, {}])",
            v.decision.as_str(), v.queries, v.mean, v.lower, v.upper,
            d.as_str(), st.n, st.mean, st.lower, st.upper
        ))
    } else if pr.decision != d
        || pr.queries != st.n
        || (pr.mean, pr.lower, pr.upper) != (st.mean, st.lower, st.upper)
        || pr.timings.elapsed_s != v.elapsed_s
        || pr.timings.challenge_seconds != seconds
    {
        Err(format!(
            "the statement says {} after {} (mean {}, [{}, {}], {} s, {} s in challenges), the transcript {} after {} (mean {}, [{}, {}], {} s, {} s in challenges)",
            pr.decision.as_str(), pr.queries, pr.mean, pr.lower, pr.upper, pr.timings.elapsed_s, pr.timings.challenge_seconds,
            v.decision.as_str(), v.queries, v.mean, v.lower, v.upper, v.elapsed_s, seconds
        ))
    } else if v.served != served || pr.served != served {
        Err(format!(
            "transcript line {line}: what is served (estimate and ladder placement) is not what the replayed test and the header's ladder give: consistent with [{}], excludes [{}]",
            served.consistent.join(", "),
            served.excludes.join(", ")
        ))
    } else {
        Ok(format!(
            "{} after {} challenges, mean {:.4} in [{:.4}, {:.4}], recomputed",
            d.as_str(),
            st.n,
            st.mean,
            st.lower,
            st.upper
        ))
    }
}

/// Re-check a bundle's bytes. `pinned`: the auditor key the bundle must be signed by.
pub fn verify_bytes(bytes: &[u8], pinned: Option<&NodePublic>) -> Report {
    let mut c = Checks(Vec::new());
    let mut report = Report {
        valid: false,
        signer: None,
        pinned: false,
        decision: None,
        run_id: None,
        public: false,
        checks: Vec::new(),
    };
    run_checks(bytes, pinned, &mut c, &mut report);
    report.valid = c.0.iter().all(|x| x.ok);
    report.checks = c.0;
    report
}

/// The checks in order; each `?` is where the later checks have nothing to read.
fn run_checks(
    bytes: &[u8],
    pinned: Option<&NodePublic>,
    c: &mut Checks,
    report: &mut Report,
) -> Option<()> {
    let bundle = split(c, "archive", archive(bytes))?;
    c.add("canonical", canonical(&bundle, bytes));
    let (env, payload) = split(
        c,
        "envelope",
        envelope(&bundle.envelope).map(|(e, p, d)| ((e, p), d)),
    )?;
    report.signer = Some(env.signatures[0].keyid.clone());
    report.pinned = pinned.is_some();
    c.add("signature", signature(&env, &payload, pinned));
    let (st, outcome) = match statement(&payload) {
        Ok(x) => x,
        Err(e) => {
            c.add("statement", Err(e));
            return None;
        }
    };
    let pr = &st.predicate;
    report.decision = Some(pr.decision);
    report.run_id = Some(pr.run_id.clone());
    c.add("statement", outcome);
    if let (true, Some(proof)) = (bundle.is_public(), &bundle.proof) {
        // The statement and the proof alone: the decision arithmetic is checked, the scores,
        // challenges and digests are not (the auditor keeps the transcript).
        c.add("verdict-proof", verdict_proof(proof, pr));
        report.public = true;
        return Some(());
    }
    c.add(
        "transcript-digest",
        transcript_digest(&bundle.transcript, pr),
    );
    let parsed = split(c, "transcript", transcript(&bundle.transcript))?;
    let h = &parsed.header;
    c.add("header", header(&st, h));
    let run_key = split(c, "key", key(&bundle.key, h));
    if let Some(k) = &run_key {
        c.add("challenges", challenges(k, &parsed));
    }
    c.add("scores", scores(&parsed));
    let test = match bounds(&parsed) {
        Err(e) => {
            c.add("bounds", Err(e));
            None
        }
        Ok((test, outcome)) => {
            c.add("bounds", outcome);
            c.add("decision", decision(&parsed, &test, pr));
            Some(test)
        }
    };
    let committed = pr.score_commitment.is_some() || h.score_chain.is_some();
    if let (true, Some(k), Some(test)) = (committed, &run_key, &test) {
        c.add("score-commitment", score_commitment(k, test, &parsed, pr));
    }
    if let Some(proof) = &bundle.proof {
        c.add("verdict-proof", verdict_proof(proof, pr));
    }
    Some(())
}

/// `score-commitment`: the header's chain start and the verdict's and statement's
/// commitment are what the revealed key's salt and the transcript's scores give.
fn score_commitment(
    key: &ChallengeKey,
    test: &SequentialTest,
    parsed: &Records,
    pr: &Predicate,
) -> Outcome {
    let start = crate::zk::chain_start(key);
    let end = crate::zk::commit_scores(key, test);
    let verdict = parsed
        .verdict
        .as_ref()
        .and_then(|(_, v)| v.score_commitment.clone());
    if parsed.header.score_chain.as_deref() != Some(start.as_str()) {
        return Err(format!(
            "the header's score chain {:?} is not the run key's start {start}",
            parsed.header.score_chain
        ));
    }
    if verdict.as_deref() != Some(end.as_str()) || pr.score_commitment.as_deref() != Some(&end) {
        return Err(format!(
            "the verdict's ({verdict:?}) or the statement's ({:?}) score commitment is not {end}, the commitment to the transcript's {} scores",
            pr.score_commitment,
            test.n()
        ));
    }
    Ok(format!(
        "Poseidon commitment {}… to the {} grid scores, recomputed",
        &end[..16],
        test.n()
    ))
}

/// `verdict-proof`: the Halo2 proof verifies against the statement's parameters, verdict,
/// queries, bounds and score commitment.
fn verdict_proof(proof: &[u8], pr: &Predicate) -> Outcome {
    let Some(commitment) = pr.score_commitment.as_deref().and_then(crate::zk::from_hex) else {
        return Err(
            "a proof, but the statement records no score commitment to check it against".into(),
        );
    };
    let statement = pr.proof_statement(commitment);
    let start = std::time::Instant::now();
    crate::zk::verify(&statement, proof).map_err(|e| e.to_string())?;
    Ok(format!(
        "Halo2 (IPA, Pasta) proof of {} after {} and of the bounds [{:.4}, {:.4}] from the committed scores: {} B, verified in {:.2} s",
        pr.decision.as_str(),
        pr.queries,
        pr.lower,
        pr.upper,
        proof.len(),
        start.elapsed().as_secs_f64()
    ))
}

/// Record a check that also yields a value: its line, and the value when it holds.
fn split<T>(c: &mut Checks, name: &'static str, r: Result<(T, String), String>) -> Option<T> {
    match r {
        Ok((v, detail)) => {
            c.add(name, Ok(detail));
            Some(v)
        }
        Err(e) => {
            c.add(name, Err(e));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::keys::AuditorKey;

    /// A bundle of a real run (tests/fixtures/fuzz-run.ndjson, SmolLM2 against Qwen 0.5B),
    /// signed by a fresh auditor key: its bytes, entries, envelope, payload and records.
    struct Fixture {
        bytes: Vec<u8>,
        bundle: Bundle,
        env: Envelope,
        payload: Vec<u8>,
        statement: Statement,
        parsed: Records,
        auditor: AuditorKey,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let fx = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let key = ChallengeKey::read(&fx.join("fuzz-run.key")).unwrap();
        let auditor = AuditorKey::generate();
        let out = dir.path().join("b.tar.gz");
        super::super::create(&fx.join("fuzz-run.ndjson"), &key, &auditor, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let (bundle, _) = archive(&bytes).unwrap();
        let (env, payload, _) = envelope(&bundle.envelope).unwrap();
        let (statement, _) = statement(&payload).unwrap();
        let (parsed, _) = transcript(&bundle.transcript).unwrap();
        Fixture {
            bytes,
            bundle,
            env,
            payload,
            statement,
            parsed,
            auditor,
        }
    }

    #[test]
    fn a_whole_bundle_passes_every_check_in_order() {
        let f = fixture();
        let r = verify_bytes(&f.bytes, Some(&f.auditor.public()));
        assert!(r.valid, "{:?}", r.first_failure());
        let names: Vec<&str> = r.checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "archive",
                "canonical",
                "envelope",
                "signature",
                "statement",
                "transcript-digest",
                "transcript",
                "header",
                "key",
                "challenges",
                "scores",
                "bounds",
                "decision",
                "score-commitment"
            ]
        );
        assert!(r.pinned && r.decision.is_some());
    }

    #[test]
    fn each_check_refuses_its_own_tampering() {
        let f = fixture();
        assert!(archive(b"not gzip").is_err());
        let mut longer = f.bytes.clone();
        longer.push(0);
        assert!(canonical(&f.bundle, &longer).is_err());

        let mut env: serde_json::Value = serde_json::from_slice(&f.bundle.envelope).unwrap();
        env["payloadType"] = "text/plain".into();
        assert!(envelope(env.to_string().as_bytes())
            .unwrap_err()
            .contains("payloadType"));
        let mut two = f.env.clone();
        two.signatures.push(two.signatures[0].clone());
        let raw = serde_json::to_vec(&two).unwrap();
        assert!(envelope(&raw).unwrap_err().contains("2 signatures"));

        assert!(signature(&f.env, &f.payload, Some(&f.auditor.public())).is_ok());
        let other = AuditorKey::generate().public();
        assert!(signature(&f.env, &f.payload, Some(&other)).is_err());
        let mut payload = f.payload.clone();
        payload[10] ^= 1;
        assert!(signature(&f.env, &payload, None).is_err());

        let mut st: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
        st["_type"] = "https://example.com/other".into();
        let (_, outcome) = statement(st.to_string().as_bytes()).unwrap();
        assert!(outcome.unwrap_err().contains("_type"));

        let mut t = f.bundle.transcript.clone();
        t[5] ^= 1;
        let pr = &f.statement.predicate;
        assert!(transcript_digest(&f.bundle.transcript, pr).is_ok());
        assert!(transcript_digest(&t, pr).unwrap_err().contains("SHA-256"));

        let mut s2 = f.statement.clone();
        s2.predicate.mode = "quick".into();
        assert!(header(&s2, &f.parsed.header)
            .unwrap_err()
            .contains("the mode differs"));

        let (k, _) = key(&f.bundle.key, &f.parsed.header).unwrap();
        let wrong = ChallengeKey::generate().to_hex();
        assert!(key(wrong.as_bytes(), &f.parsed.header).is_err());
        assert!(challenges(&k, &f.parsed).is_ok());
        let mut p = transcript(&f.bundle.transcript).unwrap().0;
        p.queries[1].1.prompt.push('!');
        assert!(challenges(&k, &p).unwrap_err().contains("prompt"));

        assert!(scores(&f.parsed).is_ok());
        let mut p = transcript(&f.bundle.transcript).unwrap().0;
        p.queries[0].1.score.score += 0.5;
        assert!(scores(&p).unwrap_err().contains("its detail gives"));

        let (test, outcome) = bounds(&f.parsed).unwrap();
        assert!(outcome.is_ok());
        assert!(decision(&f.parsed, &test, pr).is_ok());
        let mut p = transcript(&f.bundle.transcript).unwrap().0;
        p.queries[2].1.upper += 1e-9;
        assert!(bounds(&p)
            .unwrap()
            .1
            .unwrap_err()
            .contains("the test gives"));
        let mut p = transcript(&f.bundle.transcript).unwrap().0;
        p.verdict = None;
        assert!(decision(&p, &test, pr).unwrap_err().contains("no verdict"));
        let mut pr2 = pr.clone();
        pr2.queries += 1;
        assert!(decision(&f.parsed, &test, &pr2)
            .unwrap_err()
            .contains("the statement says"));

        assert!(score_commitment(&k, &test, &f.parsed, pr).is_ok());
        let other = ChallengeKey::generate();
        assert!(score_commitment(&other, &test, &f.parsed, pr)
            .unwrap_err()
            .contains("score chain"));
        let mut pr3 = pr.clone();
        pr3.score_commitment = Some(crate::zk::chain_start(&k));
        assert!(score_commitment(&k, &test, &f.parsed, &pr3)
            .unwrap_err()
            .contains("score commitment"));
        let mut shorter = SequentialTest::new(pr.params).unwrap();
        shorter.push(f.parsed.queries[0].1.score.score);
        assert!(score_commitment(&k, &shorter, &f.parsed, pr).is_err());
        assert!(verdict_proof(b"not a proof", pr)
            .unwrap_err()
            .contains("does not verify"));
    }
}
