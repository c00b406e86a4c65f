//! A tiny Llama written as GGUF in memory: random weights from a seed, a SentencePiece
//! vocabulary of a few pieces, one block. For tests and examples that need a real model file
//! the engine loads in milliseconds (the parsers' fuzzing, the server's in-process tests); it
//! computes nothing meaningful.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// Its vocabulary: `<unk>`, `<s>`, `</s>`, then pieces.
pub const PIECES: [&str; 8] = ["<unk>", "<s>", "</s>", "▁a", "▁b", "a", "b", "▁"];

/// The GGUF bytes of a tiny Llama (hidden size 8, two heads, one block, f32 weights drawn
/// from `seed`).
pub fn llama_gguf(seed: u64) -> Vec<u8> {
    let s = |v: &str| Value::String(v.into());
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", s("llama")),
        ("llama.embedding_length", Value::U32(8)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.block_count", Value::U32(1)),
        ("llama.feed_forward_length", Value::U32(16)),
        ("llama.context_length", Value::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
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
    let tensors: Vec<(&str, QTensor)> = vec![
        ("token_embd.weight", tensor(&[8, 8], false)),
        ("output_norm.weight", tensor(&[8], true)),
        ("blk.0.attn_norm.weight", tensor(&[8], true)),
        ("blk.0.attn_q.weight", tensor(&[8, 8], false)),
        ("blk.0.attn_k.weight", tensor(&[8, 8], false)),
        ("blk.0.attn_v.weight", tensor(&[8, 8], false)),
        ("blk.0.attn_output.weight", tensor(&[8, 8], false)),
        ("blk.0.ffn_norm.weight", tensor(&[8], true)),
        ("blk.0.ffn_gate.weight", tensor(&[16, 8], false)),
        ("blk.0.ffn_up.weight", tensor(&[16, 8], false)),
        ("blk.0.ffn_down.weight", tensor(&[8, 16], false)),
    ];
    let mut out = std::io::Cursor::new(Vec::new());
    let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut out, &md, &tensors).expect("writing to memory");
    out.into_inner()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tiny_llama_loads_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, super::llama_gguf(7)).unwrap();
        let m = crate::model::Model::load(path.to_str().unwrap(), Default::default()).unwrap();
        let ids = m.tokenizer.encode("a b ab").unwrap();
        let lp = m.logprobs(&ids, 0).unwrap();
        assert_eq!(lp.len(), ids.len());
        assert!(lp.iter().flatten().all(|x| x.is_finite() && *x <= 0.0));
        // Random weights from the seed: another seed, another model.
        std::fs::write(&path, super::llama_gguf(8)).unwrap();
        let m2 = crate::model::Model::load(path.to_str().unwrap(), Default::default()).unwrap();
        assert_ne!(m2.logprobs(&ids, 0).unwrap(), lp);
    }
}
