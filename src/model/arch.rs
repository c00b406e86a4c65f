//! The model families pot runs, and each family's quirks in one place: which projections carry
//! a bias, which heads are normalized, which extra norms a block has, how RoPE pairs are laid
//! out in a GGUF file, and what the tensors are called in GGUF and in Hugging Face folders.
//! Both loaders (`gguf.rs`, `hf.rs`) ask an [`Arch`] instead of comparing names; the supported
//! list in errors and help derives from [`Arch::ALL`].

use super::decoder::RopeStyle;

/// A model family pot has a forward pass for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Llama (and its many fine-tunes, SmolLM2 among them).
    Llama,
    /// Qwen 2 and 2.5: biases on the query, key and value projections.
    Qwen2,
    /// Qwen 3: RMS norms on each query and key head, no biases.
    Qwen3,
    /// Gemma 3 (text): Qwen 3's head norms, norms after attention and after the MLP, GELU,
    /// scaled embeddings, sliding-window layers (see [`super::decoder::GemmaConfig`]).
    Gemma3,
}

/// A block's tensor, by its name in each format (under `blk.N.` in GGUF and
/// `model.layers.N.` in Hugging Face folders, before `.weight` / `.bias`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Names {
    /// GGUF name.
    pub gguf: &'static str,
    /// Hugging Face name.
    pub hf: &'static str,
}

const fn names(gguf: &'static str, hf: &'static str) -> Names {
    Names { gguf, hf }
}

/// The tensors every family's blocks have (the feed-forward norm is [`Arch::ffn_norm`]).
pub mod block {
    use super::{names, Names};
    /// Norm before attention.
    pub const ATTN_NORM: Names = names("attn_norm", "input_layernorm");
    /// Query projection.
    pub const Q: Names = names("attn_q", "self_attn.q_proj");
    /// Key projection.
    pub const K: Names = names("attn_k", "self_attn.k_proj");
    /// Value projection.
    pub const V: Names = names("attn_v", "self_attn.v_proj");
    /// Attention output projection.
    pub const O: Names = names("attn_output", "self_attn.o_proj");
    /// Per-head query norm ([`super::Arch::qk_norm`]).
    pub const Q_NORM: Names = names("attn_q_norm", "self_attn.q_norm");
    /// Per-head key norm.
    pub const K_NORM: Names = names("attn_k_norm", "self_attn.k_norm");
    /// Gated MLP: gate.
    pub const GATE: Names = names("ffn_gate", "mlp.gate_proj");
    /// Gated MLP: up.
    pub const UP: Names = names("ffn_up", "mlp.up_proj");
    /// Gated MLP: down.
    pub const DOWN: Names = names("ffn_down", "mlp.down_proj");
}

impl Arch {
    /// The families, in the order the supported list names them.
    pub const ALL: [Arch; 4] = [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Gemma3];

    /// The GGUF name (`general.architecture`), also what identities record.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// The supported families, comma-separated.
    pub fn supported() -> String {
        Self::ALL.map(Arch::name).join(", ")
    }

    /// The family of a GGUF `general.architecture`.
    pub fn from_gguf(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The family of a Hugging Face `model_type`, or what to say about one pot does not read.
    /// Gemma 3's text-only checkpoints say `gemma3_text`; the multimodal ones nest their text
    /// model and are not read.
    pub fn from_hf(model_type: &str) -> Result<Self, String> {
        match model_type {
            "gemma3_text" => Ok(Arch::Gemma3),
            "gemma3" => Err("gemma3 (multimodal checkpoint; pass its text model)".into()),
            t => Self::from_gguf(t).ok_or_else(|| t.to_string()),
        }
    }

    /// `architectures[0]` of a Hugging Face `config.json` for this family.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// `model_type` of a Hugging Face `config.json` for this family.
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Arch::Gemma3 => "gemma3_text",
            a => a.name(),
        }
    }

    /// Whether the query, key and value projections carry a bias.
    pub fn qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }

    /// Whether each query and key head is RMS-normalized before RoPE.
    pub fn qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3 | Arch::Gemma3)
    }

    /// The norms after attention and after the MLP, when the family has them.
    pub fn post_norms(self) -> Option<[Names; 2]> {
        (self == Arch::Gemma3).then_some([
            names("post_attention_norm", "post_attention_layernorm"),
            names("post_ffw_norm", "post_feedforward_layernorm"),
        ])
    }

    /// The norm before the MLP.
    pub fn ffn_norm(self) -> Names {
        match self {
            Arch::Gemma3 => names("ffn_norm", "pre_feedforward_layernorm"),
            _ => names("ffn_norm", "post_attention_layernorm"),
        }
    }

    /// How RoPE pairs lie in a GGUF file: llama.cpp's converter permutes Llama's query and key
    /// rows to interleaved pairs; the other families keep the NeoX halves (as every Hugging
    /// Face folder does).
    pub fn gguf_rope(self) -> RopeStyle {
        match self {
            Arch::Llama => RopeStyle::Interleaved,
            _ => RopeStyle::Neox,
        }
    }

    /// Whether a Hugging Face folder stores RMSNorm weights as `w` for a multiplier `1 + w`
    /// (GGUF stores `1 + w`).
    pub fn hf_norm_plus_one(self) -> bool {
        self == Arch::Gemma3
    }

    /// Whether a Hugging Face `config.json` without `tie_word_embeddings` means tied.
    pub fn hf_tied_by_default(self) -> bool {
        self == Arch::Gemma3
    }

    /// Whether the family takes a linear `rope_scaling` (others refuse any scaling).
    pub fn linear_rope_scaling(self) -> bool {
        self == Arch::Gemma3
    }

    /// Every tensor of this family's blocks.
    pub fn block_tensors(self) -> Vec<Names> {
        use block::*;
        let mut v = vec![ATTN_NORM, Q, K, V, O, self.ffn_norm(), GATE, UP, DOWN];
        if self.qk_norm() {
            v.extend([Q_NORM, K_NORM]);
        }
        v.extend(self.post_norms().into_iter().flatten());
        v
    }

    /// Whether `pot export-hf` writes this family.
    pub fn exports_hf(self) -> bool {
        self != Arch::Gemma3
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// As its name: the configuration hash ([`crate::identity`]) reads the same as when the
/// architecture was a string.
impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_the_supported_list_derives_from_all() {
        for a in Arch::ALL {
            assert_eq!(Arch::from_gguf(a.name()), Some(a));
            assert_eq!(Arch::from_hf(a.hf_model_type()), Ok(a));
            assert_eq!(serde_json::to_value(a).unwrap(), a.name());
        }
        assert_eq!(Arch::supported(), "llama, qwen2, qwen3, gemma3");
        assert_eq!(Arch::from_gguf("mamba"), None);
        assert!(Arch::from_hf("gemma3").unwrap_err().contains("multimodal"));
        assert_eq!(Arch::from_hf("phi3"), Err("phi3".into()));
        // GGUF's one feed-forward norm is each family's own in Hugging Face folders.
        assert_eq!(Arch::Gemma3.ffn_norm().hf, "pre_feedforward_layernorm");
        assert_eq!(Arch::Qwen2.ffn_norm().hf, "post_attention_layernorm");
    }
}
