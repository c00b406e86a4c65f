//! Tiny models written as GGUF in memory, one per architecture pot runs: random weights from a
//! seed, a SentencePiece vocabulary of a few pieces, one block with every tensor the family's
//! blocks have (biases, head norms, post-norms). For tests and examples that need a real model
//! file the engine loads in milliseconds (the parsers' fuzzing, the server's in-process tests,
//! each family's code paths); they compute nothing meaningful.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::arch::{block, Arch};

/// Its vocabulary: `<unk>`, `<s>`, `</s>`, then pieces.
pub const PIECES: [&str; 8] = ["<unk>", "<s>", "</s>", "▁a", "▁b", "a", "b", "▁"];

/// The GGUF bytes of a tiny Llama (hidden size 8, two heads, one block, f32 weights drawn
/// from `seed`).
pub fn llama_gguf(seed: u64) -> Vec<u8> {
    gguf(Arch::Llama, seed)
}

/// The GGUF bytes of a tiny model of `arch`: hidden size 8, two query heads of 4 over one
/// key/value head (grouped-query attention), one block, f32 weights drawn from `seed`.
pub fn gguf(arch: Arch, seed: u64) -> Vec<u8> {
    let s = |v: &str| Value::String(v.into());
    let a = arch.name();
    let k = |key: &str| format!("{a}.{key}");
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(a)),
        (k("embedding_length"), Value::U32(8)),
        (k("attention.head_count"), Value::U32(2)),
        (k("attention.head_count_kv"), Value::U32(1)),
        (k("attention.key_length"), Value::U32(4)),
        (k("block_count"), Value::U32(1)),
        (k("feed_forward_length"), Value::U32(16)),
        (k("context_length"), Value::U32(64)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
    ];
    if arch == Arch::Gemma3 {
        md.push((k("attention.sliding_window"), Value::U32(4)));
    }
    let tok: Vec<(&str, Value)> = vec![
        ("tokenizer.ggml.model", s("llama")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(PIECES.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array((0..8).map(|i| Value::F32(-(i as f32))).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array([2, 3, 3, 1, 1, 1, 1, 1].map(Value::I32).to_vec()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ];
    md.extend(tok.into_iter().map(|(k, v)| (k.to_string(), v)));
    // A small linear congruential stream: reproducible weights without another dependency.
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
    };
    let mut tensor = |dims: &[usize], ones: bool| {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| if ones { 1.0 } else { next() }).collect();
        let t = Tensor::from_vec(v, dims, &Device::Cpu).expect("shape matches");
        QTensor::quantize(&t, GgmlDType::F32).expect("f32 needs no quantization")
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), tensor(&[8, 8], false)),
        ("output_norm.weight".into(), tensor(&[8], true)),
    ];
    for names in arch.block_tensors() {
        let n = names.gguf;
        let dims: &[usize] = match names {
            block::Q | block::O => &[8, 8],
            block::K | block::V => &[4, 8],
            block::Q_NORM | block::K_NORM => &[4],
            block::GATE | block::UP => &[16, 8],
            block::DOWN => &[8, 16],
            // The norms.
            _ => &[8],
        };
        let norm = dims.len() == 1;
        tensors.push((format!("blk.0.{n}.weight"), tensor(dims, norm)));
        if arch.qkv_bias() && matches!(names, block::Q | block::K | block::V) {
            tensors.push((format!("blk.0.{n}.bias"), tensor(&dims[..1], false)));
        }
    }
    let mut out = std::io::Cursor::new(Vec::new());
    let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut out, &md, &tensors).expect("writing to memory");
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    fn load(dir: &std::path::Path, arch: Arch, seed: u64) -> Model {
        let path = dir.join(format!("tiny-{arch}-{seed}.gguf"));
        std::fs::write(&path, gguf(arch, seed)).unwrap();
        Model::load(path.to_str().unwrap(), Default::default()).unwrap()
    }

    #[test]
    fn the_tiny_llama_loads_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let m = load(dir.path(), Arch::Llama, 7);
        let ids = m.tokenizer.encode("a b ab").unwrap();
        let lp = m.logprobs(&ids, 0).unwrap();
        assert_eq!(lp.len(), ids.len());
        assert!(lp.iter().flatten().all(|x| x.is_finite() && *x <= 0.0));
        // Random weights from the seed: another seed, another model.
        let m2 = load(dir.path(), Arch::Llama, 8);
        assert_ne!(m2.logprobs(&ids, 0).unwrap(), lp);
    }

    /// Every family's block (biases, head norms, post-norms, sliding windows) through the
    /// engine's three paths: generation of a batch, one sequence alone, and a teacher-forced
    /// pass over the generated tokens, which must agree.
    #[test]
    fn every_family_generates_in_batches_what_it_scores_alone() {
        let dir = tempfile::tempdir().unwrap();
        for arch in Arch::ALL {
            let m = load(dir.path(), arch, 11);
            assert_eq!(m.decoder.config.arch, arch);
            let a = m.tokenizer.encode("a b ab b").unwrap();
            let b = m.tokenizer.encode("b").unwrap();
            let both = m.continue_batch(&[&a, &b], 12, false, true).unwrap();
            for (prompt, got) in [(&a, &both[0]), (&b, &both[1])] {
                assert_eq!(got.tokens.len(), 12, "{arch}");
                let alone = m.continue_batch(&[prompt], 12, false, true).unwrap();
                assert_eq!(
                    alone[0].tokens, got.tokens,
                    "{arch}: batch and alone differ"
                );
                let seq: Vec<u32> = prompt.iter().chain(&got.tokens).copied().collect();
                let forced = m.logprobs(&seq, prompt.len() - 1).unwrap();
                for (j, (g, f)) in got.logprobs.iter().zip(&forced).enumerate() {
                    let diff = g
                        .iter()
                        .zip(f)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max);
                    assert!(diff < 1e-3, "{arch}: position {j} differs by {diff}");
                }
            }
        }
    }
}
