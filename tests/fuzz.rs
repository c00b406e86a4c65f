//! Property-based fuzzing of every parser that reads untrusted bytes: the GGUF reader (through
//! the model's configuration, tokenizer and weights), the tokenizer's input, transcripts,
//! evidence bundles, and the CBOR wire messages of the proof protocol. Each input is a valid
//! message with a few bytes overwritten and perhaps cut short, or plain random bytes. Nothing
//! may panic, and every refusal must be an error that names the input.
//!
//! Cases per parser: `POT_FUZZ_CASES` (default 25,000, about 6 s a parser on 2 cores; set it
//! higher for a longer hunt, e.g. `POT_FUZZ_CASES=1000000 cargo test --release --test fuzz`).

use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("POT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    })
}

/// A valid message with up to 8 bytes overwritten and, half the time, cut at a random length;
/// or, one time in eight, random bytes.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let edits = (
        prop::collection::vec((any::<Index>(), any::<u8>()), 0..8),
        any::<Index>(),
        any::<bool>(),
    )
        .prop_map(move |(edits, cut, truncate)| {
            let mut b = base.clone();
            for (i, v) in edits {
                let k = i.index(b.len());
                b[k] = v;
            }
            if truncate {
                b.truncate(cut.index(b.len() + 1));
            }
            b
        });
    prop_oneof![7 => edits, 1 => prop::collection::vec(any::<u8>(), 0..512)]
}

/// A whole little Llama in GGUF (pot::model::tiny): a few kilobytes, so mutations land in
/// the header and the metadata.
fn tiny_llama() -> Vec<u8> {
    pot::model::tiny::llama_gguf(0)
}

/// Open, configure, tokenize with and assemble a GGUF file; `Err` names the file.
fn read_gguf(path: &Path) -> Result<(), String> {
    use pot::model::gguf::GgufFile;
    let e = |e: pot::model::ModelError| e.to_string();
    let mut g = GgufFile::open(path).map_err(e)?;
    g.config().map_err(e)?;
    let tok = g.tokenizer().map_err(e)?;
    let ids = tok.encode("a b ab").map_err(e)?;
    tok.decode(&ids).map_err(e)?;
    g.decoder(pot::model::Kernels::Quantized).map_err(e)?;
    Ok(())
}

#[test]
fn the_gguf_reader_refuses_damaged_files_without_panicking() {
    let base = tiny_llama();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzzed.gguf");
    std::fs::write(&path, &base).unwrap();
    read_gguf(&path).expect("the undamaged model reads");
    let shown = path.display().to_string();
    runner()
        .run(&mutated(base), |bytes| {
            std::fs::write(&path, &bytes).unwrap();
            if let Err(msg) = read_gguf(&path) {
                prop_assert!(
                    msg.contains(&shown),
                    "an error that does not name the file: {msg}"
                );
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_tokenizer_takes_any_text_and_refuses_unknown_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_llama()).unwrap();
    let spm = pot::model::load_tokenizer(path.to_str().unwrap()).unwrap();
    // A real byte-level BPE tokenizer too, when the models are here (scripts/fetch-models.sh).
    let models = std::env::var("POT_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(&std::env::var("HOME").unwrap()).join(".cache/pot/models"));
    let qwen = models.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let bpe = qwen
        .is_file()
        .then(|| pot::model::load_tokenizer(qwen.to_str().unwrap()).unwrap());
    let strategy = (
        prop_oneof![any::<String>(), "[ a-zé€😀\\n\\t<>|]{0,64}"],
        prop::collection::vec(any::<u32>(), 0..8),
    );
    runner()
        .run(&strategy, |(text, ids)| {
            for tok in std::iter::once(&spm).chain(bpe.as_ref()) {
                let enc = tok.encode(&text);
                prop_assert!(enc.is_ok(), "{text:?}: {:?}", enc.err());
                let back = tok.decode(&enc.unwrap());
                prop_assert!(back.is_ok(), "{text:?}: {:?}", back.err());
                // Ids beyond the vocabulary are refused, never indexed.
                let vocab = tok.vocab_size() as u32;
                let r = tok.decode(&ids);
                if ids.iter().any(|&i| i >= vocab) {
                    prop_assert!(r.is_err(), "{ids:?} decoded with a vocabulary of {vocab}");
                }
            }
            Ok(())
        })
        .unwrap();
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn transcripts_that_are_damaged_are_refused_without_panicking() {
    let base = std::fs::read(fixture("fuzz-run.ndjson")).unwrap();
    pot::transcript::parse(std::str::from_utf8(&base).unwrap()).expect("the fixture parses");
    runner()
        .run(&mutated(base), |bytes| {
            // Transcripts are text: damaged UTF-8 is refused before parsing (as `read` does).
            if let Ok(text) = std::str::from_utf8(&bytes) {
                if let Err((line, why)) = pot::transcript::parse(text) {
                    prop_assert!(!why.to_string().is_empty() && line <= text.lines().count() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn bundles_that_are_damaged_fail_verification_without_panicking() {
    use pot::evidence::{verify_bytes, Bundle};
    let dir = tempfile::tempdir().unwrap();
    let key = pot::challenge::ChallengeKey::read(&fixture("fuzz-run.key")).unwrap();
    let auditor = pot::commit::keys::AuditorKey::generate();
    let out = dir.path().join("run.tar.gz");
    pot::evidence::create(&fixture("fuzz-run.ndjson"), &key, &auditor, &out).unwrap();
    let packed = std::fs::read(&out).unwrap();
    let report = verify_bytes(&packed, None);
    assert!(report.valid, "{:?}", report.first_failure());
    let inner = Bundle::unpack(&packed).unwrap();
    // Damage the archive itself, or one of its entries (then packed again, so the checks
    // behind the archive's are reached).
    let strategy = prop_oneof![
        mutated(packed.clone()).prop_map(|b| (b, 3)),
        (0..3usize).prop_flat_map(move |which| {
            let entry = match which {
                0 => inner.envelope.clone(),
                1 => inner.transcript.clone(),
                _ => inner.key.clone(),
            };
            let inner = inner.clone();
            mutated(entry).prop_map(move |e| {
                let mut b = inner.clone();
                match which {
                    0 => b.envelope = e,
                    1 => b.transcript = e,
                    _ => b.key = e,
                }
                (b.pack(), which)
            })
        }),
    ];
    runner()
        .run(&strategy, |(bytes, _)| {
            let r = verify_bytes(&bytes, None);
            if bytes != packed {
                if let Some(f) = r.first_failure() {
                    prop_assert!(!f.detail.is_empty(), "a failed check that says nothing");
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn wire_messages_that_are_damaged_are_refused_without_panicking() {
    use pot::commit::receipt::{OpenRequest, Opening, Receipt, OPEN_VERSION};
    use pot::commit::wire::{decode, encode, Bytes, Encoding};
    let (router, _) = pot::commit::keys::RouterKey::generate_with_line();
    let (selection, _) = pot::commit::select::Selection::make(&router, &[7u8; 32], 40, 4);
    let req = OpenRequest {
        version: OPEN_VERSION,
        job_id: Bytes([9u8; 16]),
        selection,
    };
    let base = encode(&req, Encoding::Cbor).unwrap();
    assert_eq!(decode::<OpenRequest>(&base, Encoding::Cbor).unwrap(), req);
    runner()
        .run(&mutated(base), |bytes| {
            for r in [
                decode::<OpenRequest>(&bytes, Encoding::Cbor).err(),
                decode::<Opening>(&bytes, Encoding::Cbor).err(),
                decode::<Receipt>(&bytes, Encoding::Cbor).err(),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!(!r.to_string().is_empty());
            }
            Ok(())
        })
        .unwrap();
}
