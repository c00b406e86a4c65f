//! The engine against llama.cpp: token ids and next-token logits for the three real models,
//! from `tests/fixtures/*.llamacpp.json` (produced by llama.cpp, an independent implementation).
//!
//! Needs the models: `scripts/fetch-models.sh` (cache: `POT_MODELS`, default ~/.cache/pot/models).

mod common;

use std::path::Path;

use common::agreement::{check_path, Agreement};
use pot::model::Kernels;

fn check(model_file: &str, fixture: &str, kernels: Kernels) -> Agreement {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    check_path(&common::model_path(model_file), &fixture, kernels)
}

/// llama.cpp's numerics (quantized kernels, 8-bit activations, f16-rounded attention), every
/// position, against the bars `top1` and `mean` measured for that model (BENCHMARKS.md).
///
/// The fixtures themselves reproduce only so far: llama.cpp 0.3.36 (the fixtures' engine) run
/// on the project machine agrees with them on 166/166, 132/134 and 130/134 top-1 tokens with
/// mean |Δ| 0.061 / 0.052 / 0.075 (SmolLM2 / 0.5B / 1.5B; `scripts/llamacpp-yardstick.py`).
/// Rounding 8-bit activations makes logits move by ~0.05 nats between two correct engines,
/// and every miss here is a near-tie (llama.cpp's top two within 0.13 nats).
///
/// Where pot's top-1 token differs, the fixture's top two must lie within `NEAR_TIE` nats: a
/// miss at a near-tie is that noise (the order of pot's f32 sums moves which ties flip: the
/// many-row tile kernels of `src/model/tiles.rs` flipped three more on the 0.5B than the
/// few-row kernels had), a miss at a clear gap would be a fault.
fn assert_agrees(a: &Agreement, top1: f64, mean: f64) {
    assert_agrees_within(a, 10, top1, mean);
    assert!(
        a.widest_miss <= NEAR_TIE,
        "a top-1 miss where the fixture's top two are {} nats apart (> {NEAR_TIE})",
        a.widest_miss
    );
}

/// Top-two gaps (nats) within which two correct 8-bit engines may rank differently. Each
/// logit moves by up to 0.5-0.8 nats between them (the max |Δ| printed), so a rank can flip
/// where the two lie closer than that; measured, pot's misses lie within 0.19 (0.5B) and 0.17
/// (SmolLM2) nats with the tile kernels, llama.cpp's own against its fixtures within 0.13.
const NEAR_TIE: f64 = 0.25;

/// All `prompts` checked, top-1 agreement at least `top1` (a fraction of all positions), mean
/// |Δ log-softmax| at most `mean` nats.
fn assert_agrees_within(a: &Agreement, prompts: usize, top1: f64, mean: f64) {
    assert_eq!(a.prompts, prompts);
    assert!(
        a.top1_same as f64 >= top1 * a.positions as f64,
        "top-1 agreement {}/{} below {top1}",
        a.top1_same,
        a.positions
    );
    assert!(
        a.mean_abs <= mean,
        "mean |Δ log-softmax| {} above {mean} nats",
        a.mean_abs
    );
}

/// Dense f32 kernels: exact arithmetic on the same weights. They part from llama.cpp's 8-bit
/// activations only on massive-activation rows (the first position of Qwen2.5-1.5B), so the
/// bar holds on every later position, which is where pot scores continuations.
fn assert_dense_agrees(a: &Agreement) {
    assert_eq!(a.prompts, 10);
    // Measured: 155/156, all, 121/124 (the three misses are near-ties, |Δ| < 0.25 nats).
    assert!(
        a.later_top1_same as f64 >= 0.97 * a.later_positions as f64,
        "top-1 agreement below 97%"
    );
}

#[test]
fn smollm2_matches_llama_cpp() {
    let f = (
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-instruct-q4_1.llamacpp.json",
    );
    assert_dense_agrees(&check(f.0, f.1, Kernels::Dense));
    // Measured: 165/166, mean 0.099; 163/166, 0.102 (one-pass attention); 163/166, 0.106
    // (tile kernels).
    assert_agrees(&check(f.0, f.1, Kernels::Quantized), 0.98, 0.11);
}

#[test]
fn qwen_05b_matches_llama_cpp() {
    let f = (
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.llamacpp.json",
    );
    assert_dense_agrees(&check(f.0, f.1, Kernels::Dense));
    // Measured: 132/134, mean 0.060; 133/134, 0.064 (one-pass attention); 130/134 (97.0%),
    // 0.061 with the tile kernels, every miss at a near-tie (as llama.cpp itself on the 1.5B).
    assert_agrees(&check(f.0, f.1, Kernels::Quantized), 0.97, 0.07);
}

#[test]
fn qwen_15b_matches_llama_cpp() {
    let f = (
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.llamacpp.json",
    );
    // Dense kernels are checked on SmolLM2 and the 0.5B: widening the 1.5B's weights to f32
    // (6 GB) and multiplying them would take a minute of the suite for the same code.
    // Measured: 129/134 (96.3%), mean 0.085. The 98% is beyond what llama.cpp
    // itself reproduces of this fixture on this machine (130/134, 97.0%).
    assert_agrees(&check(f.0, f.1, Kernels::Quantized), 0.96, 0.09);
}

/// Gemma 3 on a small random-weight GGUF (no real Gemma 3 is reachable from the project
/// machines) against llama.cpp: SentencePiece tokens with BOS and no space prefix, √d
/// embedding scale, post-norms, GELU, sliding-window layers (window 4, shorter than the
/// prompts) with their own RoPE base, and linearly scaled RoPE on the global layers.
/// `tests/fixtures/make_gemma3_fixture.py` wrote both files.
#[test]
fn tiny_gemma3_matches_llama_cpp() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gemma3.gguf");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gemma3.llamacpp.json");
    let a = check_path(&path, &fixture, Kernels::Quantized);
    assert_agrees_within(&a, 5, 0.98, 0.02);
}

/// Qwen 3 on a small random-weight GGUF (no real Qwen 3 is reachable from the project
/// machines) against llama.cpp: per-head q/k RMS norms, head_dim apart from hidden / heads,
/// grouped keys and values, no q/k/v biases, tied embeddings, and matrices in Q8_0, f16 and
/// Q4_0 (each read in place from the mapped file). `tests/fixtures/make_qwen3_fixture.py`
/// wrote both files.
#[test]
fn tiny_qwen3_matches_llama_cpp() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let a = check_path(
        &dir.join("tiny-qwen3.gguf"),
        &dir.join("tiny-qwen3.llamacpp.json"),
        Kernels::Quantized,
    );
    assert_agrees_within(&a, 5, 0.98, 0.02);
}

/// Weights read in place from the mapped file (the default) compute exactly what the same
/// weights copied into memory (`POT_MMAP=0`) compute: every in-place kernel (k-quants, f16,
/// blocks of 32 decoded as read), for a short text (few rows: the one-token kernels) and a
/// long one (many rows: the tile kernels), top 20 of every position, bit for bit.
#[test]
fn mapped_weights_compute_what_copied_weights_compute() {
    let short = "def f(x):";
    let long = "The quick brown fox jumps over the lazy dog. In Rust, a slice is a view into \
                a contiguous sequence of elements, written &[T], and it knows its length.";
    let models = [
        common::model_path(common::SMOL),   // Q4_1 blocks, Q8_0 table
        common::model_path(common::QWEN05), // Q5_0, Q8_0, Q4_K, Q6_K
        common::qwen05_f16(),               // f16
    ];
    for model in &models {
        for text in [short, long] {
            let run = |mmap: &str| {
                let out = common::pot()
                    .env("POT_MMAP", mmap)
                    .args(["logits", "--json", "--top-k", "20", "--text", text])
                    .arg(model)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}: {}",
                    model.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap()
            };
            let (mapped, copied) = (run("1"), run("0"));
            assert!(mapped.contains("top_logprobs"), "{mapped}");
            assert_eq!(mapped, copied, "{} on {text:?}", model.display());
        }
    }
}

/// The GPU code path (`--device cuda`/`metal`: candle's kernels only, weights moved to the
/// device in their GGML encodings, candle's attention and SwiGLU, the embedding rows copied
/// over) run on the CPU (`--device candle-cpu`), against llama.cpp's outputs: what a GPU run
/// computes up to its backend's kernels, checked where there is no GPU. SmolLM2 (Q4_1 + Q8_0)
/// and random-weight Qwen 3 (Q8_0, f16, Q4_0) and Gemma 3; the k-quants of Qwen 0.5B (Q4_K,
/// Q5_0, Q6_K, Q8_0) in the test after it, which `scripts/gpu-check.sh` runs (a minute and a
/// half on 2 cores through candle's CPU kernels). `POT_TEST_DEVICE=cuda` (a `--features cuda`
/// build on a GPU machine) runs the same checks on the GPU.
#[test]
fn the_device_code_path_agrees_with_llama_cpp() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    device_agreement(&[
        (
            common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf"),
            "smollm2-135m-instruct-q4_1.llamacpp.json",
            0.95,
            0.13,
        ),
        (
            fixtures.join("tiny-qwen3.gguf"),
            "tiny-qwen3.llamacpp.json",
            0.97,
            0.05,
        ),
        (
            fixtures.join("tiny-gemma3.gguf"),
            "tiny-gemma3.llamacpp.json",
            0.98,
            0.02,
        ),
    ]);
}

/// [`the_device_code_path_agrees_with_llama_cpp`] on Qwen 0.5B's k-quants.
#[test]
#[ignore = "experiment: scripts/gpu-check.sh (or cargo test --release --test engine_reference -- --ignored)"]
fn the_device_code_path_agrees_with_llama_cpp_on_k_quants() {
    device_agreement(&[(
        common::model_path("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        "qwen2.5-coder-0.5b-instruct-q4_k_m.llamacpp.json",
        0.97,
        0.07,
    )]);
}

/// Each model on `POT_TEST_DEVICE` (default: candle's CPU) against its llama.cpp fixture, with
/// the least top-1 share and the most mean |Δ| allowed.
fn device_agreement(models: &[(std::path::PathBuf, &str, f64, f64)]) {
    use common::agreement::check_loaded;
    use pot::model::device::DeviceSpec;
    use pot::model::LoadOptions;
    let device = match std::env::var("POT_TEST_DEVICE") {
        Ok(d) => d
            .parse()
            .expect("POT_TEST_DEVICE names a device (cuda, cuda:1, metal)"),
        Err(_) => DeviceSpec::CandleCpu,
    };
    let opts = LoadOptions {
        kernels: Kernels::Quantized,
        device: Some(device),
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (model, fixture, top1, mean) in models {
        let a = check_loaded(model, &fixtures.join(fixture), opts);
        assert!(
            a.top1_same as f64 >= top1 * a.positions as f64,
            "{}: top-1 {}/{} below {top1}",
            model.display(),
            a.top1_same,
            a.positions
        );
        assert!(
            a.mean_abs <= *mean,
            "{}: mean |Δ| {}",
            model.display(),
            a.mean_abs
        );
        // Every miss at a near-tie: a clear gap missed is a wrong computation, not rounding.
        assert!(
            a.widest_miss <= 0.5,
            "{}: missed a top-1 token {} nats clear",
            model.display(),
            a.widest_miss
        );
    }
}
