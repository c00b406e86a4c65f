//! MLX checkpoints, made by mlx-lm's own converter from SmolLM2 exported as a Hugging Face
//! folder (and from a random-weight Qwen 3), read natively by pot and checked against the MLX
//! runtime itself (mlx[cpu] and mlx-lm from PyPI): token ids identical, next-token
//! log-probabilities close; and `pot diff` of MLX checkpoints against the GGUF they came from.
//!
//! The MLX runtime runs in f32 here (scripts/mlx-yardstick.py): a bf16 checkpoint's own bf16
//! arithmetic rounds SmolLM2's logits to steps of 1/8 nat, which would hide any error of
//! pot's below that.
//!
//! Needs the models (`scripts/fetch-models.sh`) and the MLX venv (`scripts/test.sh` makes it;
//! `POT_MLX_PYTHON` overrides).

mod common;

use std::path::{Path, PathBuf};

use common::agreement::{check_loaded, check_path};
use common::{diff_cmd, hf_folder, mlx_convert, mlx_fixture, model_path};
use pot::model::device::DeviceSpec;
use pot::model::{Kernels, LoadOptions};
use serde_json::Value;

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Six texts of the llama.cpp fixture: prose, code, digits, accents, spaces and tabs, emoji and
/// CJK (the MLX runtime takes about a second a text on this CPU).
fn texts() -> Vec<String> {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/smollm2-135m-instruct-q4_1.llamacpp.json"),
        )
        .unwrap(),
    )
    .unwrap();
    fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .enumerate()
        .filter(|(i, _)| [0, 1, 3, 4, 5, 6].contains(i))
        .map(|(_, t)| t)
        .collect()
}

fn smol_hf() -> PathBuf {
    hf_folder(SMOL, "SmolLM2-hf")
}

/// mlx-community's usual recipe: 4 bits in groups of 64, bf16 scales and norms.
fn smol_mlx_4bit() -> PathBuf {
    mlx_convert(
        &smol_hf(),
        "SmolLM2-mlx-4bit",
        &[
            "-q",
            "--q-bits",
            "4",
            "--q-group-size",
            "64",
            "--dtype",
            "bfloat16",
        ],
    )
}

/// SmolLM2 in f16 with its tensors aligned (Hugging Face's safetensors writer).
fn smol_f16_aligned() -> PathBuf {
    let f16 = mlx_convert(&smol_hf(), "SmolLM2-mlx-f16", &["--dtype", "float16"]);
    common::hf_resaved(&f16, "SmolLM2-hf-f16")
}

#[test]
fn mlx_checkpoints_compute_what_the_mlx_runtime_computes() {
    let texts = texts();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let hf = smol_hf();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            hf.clone(),
            "the unquantized Hugging Face folder (pot export-hf), f32",
        ),
        (
            mlx_convert(&hf, "SmolLM2-mlx-f16", &["--dtype", "float16"]),
            "unquantized f16, as MLX writes it (values at odd offsets: copied)",
        ),
        (
            smol_f16_aligned(),
            "unquantized f16, as Hugging Face writes it (matrices and table read in place)",
        ),
        (smol_mlx_4bit(), "4-bit g64, bf16"),
        (
            mlx_convert(
                &hf,
                "SmolLM2-mlx-mixed-3-6",
                &["-q", "--quant-predicate", "mixed_3_6", "--dtype", "float16"],
            ),
            "mixed 3/6-bit (per-layer overrides), f16",
        ),
        (
            mlx_convert(
                &hf,
                "SmolLM2-mlx-2bit-g128-f32",
                &[
                    "-q",
                    "--q-bits",
                    "2",
                    "--q-group-size",
                    "128",
                    "--dtype",
                    "float32",
                ],
            ),
            "2-bit g128, f32",
        ),
    ];
    // (8 bits: pot_diff_tells_an_mlx_copy_of_the_same_weights_from_a_cheaper_one, and the
    // unit tests of src/model/mlx.rs; measured here once: 166/166, mean 0.0014 / 0.0001.)
    for (folder, what) in cases {
        let fixture = mlx_fixture(&folder, &texts, dir.path());
        eprintln!("{what}:");
        let q = check_path(&folder, &fixture, Kernels::Quantized);
        let d = check_path(&folder, &fixture, Kernels::Dense);
        // The GPU code path (`--device`), run on the CPU: affine quants widened to f32 on the
        // device, candle's attention.
        let g = check_loaded(
            &folder,
            &fixture,
            LoadOptions {
                kernels: Kernels::Quantized,
                device: Some(DeviceSpec::CandleCpu),
            },
        );
        // Measured: every top-1 token on every checkpoint with both kernels; mean |Δ| 0.0001
        // (dense) and 0.0014-0.0024 (quantized kernels: f16-rounded attention).
        for (a, k, mean) in [
            (&q, "quantized", 0.01),
            (&d, "dense", 0.001),
            (&g, "device path", 0.01),
        ] {
            assert_eq!(a.prompts, texts.len());
            assert!(
                a.top1_same as f64 >= 0.98 * a.positions as f64,
                "{what}, {k} kernels: top-1 {}/{}",
                a.top1_same,
                a.positions
            );
            assert!(
                a.mean_abs <= mean,
                "{what}, {k} kernels: mean |Δ| {}",
                a.mean_abs
            );
        }
    }
}

/// Qwen 3 and Gemma 3 have no real checkpoint reachable here: random-weight ones
/// (`tests/fixtures/make_random_hf.py`) as Hugging Face folders and as mlx-lm's 4-bit
/// conversions, each against the MLX runtime.
fn random_weights(arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join(format!("{arch}-random"));
    let o = std::process::Command::new(common::mlx_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_random_hf.py"))
        .arg(arch)
        .arg(&hf)
        .arg(smol_hf())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let q4 = dir.path().join(format!("{arch}-random-4bit"));
    let o = std::process::Command::new(common::mlx_python())
        .args(["-m", "mlx_lm", "convert", "--hf-path"])
        .arg(&hf)
        .arg("--mlx-path")
        .arg(&q4)
        .args(["-q", "--q-bits", "4", "--q-group-size", "32"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let texts = texts();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    for folder in [&hf, &q4] {
        let fixture = mlx_fixture(folder, &texts, dir.path());
        for kernels in [Kernels::Quantized, Kernels::Dense] {
            let a = check_path(folder, &fixture, kernels);
            assert!(
                a.top1_same as f64 >= 0.98 * a.positions as f64,
                "{}: top-1 {}/{}",
                folder.display(),
                a.top1_same,
                a.positions
            );
            assert!(a.mean_abs <= 0.01, "mean |Δ| {}", a.mean_abs);
        }
    }
}

/// Qwen 3: head norms, head_dim set apart, tied embeddings.
#[test]
fn qwen3_on_random_weights_computes_what_the_mlx_runtime_computes() {
    random_weights("qwen3");
}

/// Gemma 3: sliding-window layers with their own RoPE base, 1 + w norms around attention and
/// MLP, GELU, √d embedding scale, query_pre_attn_scalar.
#[test]
fn gemma3_on_random_weights_computes_what_the_mlx_runtime_computes() {
    random_weights("gemma3");
}

fn diff(reference: &Path, candidate: &Path) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let o = diff_cmd(reference, candidate, dir.path())
        .args(["--json", "--mode", "audit"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    eprintln!(
        "{} vs {}: {} in {} queries, mean {} ({}), {} s",
        reference.display(),
        candidate.display(),
        v["decision"],
        v["queries"],
        v["mean"],
        v["score_kind"],
        v["elapsed_s"]
    );
    let want = match v["decision"].as_str() {
        Some("SAME") => 0,
        Some("DIFFERENT") => 1,
        _ => panic!("{}", String::from_utf8_lossy(&o.stderr)),
    };
    assert_eq!(o.status.code(), Some(want));
    v
}

/// An MLX checkpoint holding the GGUF's weights to 8 bits computes what the GGUF computes:
/// SAME, scored token by token (mlx-lm's re-saved tokenizer hashes as the GGUF's). mlx-lm's
/// usual 4-bit recipe (groups of 64, bf16 scales) rounds the already 4-bit weights a second
/// time, onto another grid: a cheaper copy, DIFFERENT.
#[test]
fn pot_diff_tells_an_mlx_copy_of_the_same_weights_from_a_cheaper_one() {
    let gguf = model_path(SMOL);
    let eight = mlx_convert(
        &smol_hf(),
        "SmolLM2-mlx-8bit-g32-f32",
        &[
            "-q",
            "--q-bits",
            "8",
            "--q-group-size",
            "32",
            "--dtype",
            "float32",
        ],
    );
    let v = diff(&gguf, &eight);
    assert_eq!(v["decision"], "SAME");
    assert_eq!(v["score_kind"], "kl");
    let v = diff(&gguf, &smol_mlx_4bit());
    assert_eq!(v["decision"], "DIFFERENT");
    assert_eq!(v["score_kind"], "kl");
}

/// A 16-bit folder's matrices and embedding table are read in place from pot's own maps of
/// its safetensors files (the default), and compute what the same weights copied into memory
/// (`POT_MMAP=0`) compute, bit for bit.
#[test]
fn an_f16_folder_read_in_place_computes_what_a_copy_computes() {
    let f16 = smol_f16_aligned();
    for text in ["def f(x):", &texts()[0]] {
        let run = |mmap: &str| {
            let out = common::pot()
                .env("POT_MMAP", mmap)
                .args(["logits", "--json", "--top-k", "20", "--text", text])
                .arg(&f16)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let (mapped, copied) = (run("1"), run("0"));
        assert!(mapped.contains("top_logprobs"), "{mapped}");
        assert_eq!(mapped, copied, "{text:?}");
    }
}
