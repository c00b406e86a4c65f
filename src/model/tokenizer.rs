//! Tokenizers built from GGUF metadata.
//!
//! GGUF files carry their vocabulary, merges and token types but no `tokenizer.json`, so pot
//! builds a `tokenizers::Tokenizer` from the metadata itself, following llama.cpp (the reference
//! implementation for GGUF): `tokenizer.ggml.model = "gpt2"` is byte-level BPE whose
//! pre-tokenizer regexes are chosen by `tokenizer.ggml.pre`, applied in order. Control and
//! user-defined tokens are special tokens that the text may contain verbatim.
//!
//! This module never guesses: an unknown tokenizer model or pre-tokenizer is an error that names
//! the key and its value.

use sha2::{Digest, Sha256};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::ModelError;

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The GPT-2 split regex (llama.cpp's spelling, as used for `smollm`, `starcoder`, ...).
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (case-insensitive contractions spelled out).
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split regex.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regexes llama.cpp applies, in order, for a `tokenizer.ggml.pre` value.
fn pre_tokenizer_regexes(pre: &str) -> Option<Vec<&'static str>> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => vec![GPT2_REGEX],
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => {
            vec![r"\p{N}", GPT2_REGEX]
        }
        "qwen2" | "deepseek-r1-qwen" => vec![QWEN2_REGEX],
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => vec![LLAMA3_REGEX],
        _ => return None,
    })
}

/// Tokens that end a turn in the chat formats of the supported families: generation stops
/// after them as after the end-of-sequence token.
const STOP_TOKENS: [&str; 4] = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"];

/// Identity of a `tokenizers` pipeline: SHA-256 over its canonical JSON (the vocabulary in id
/// order, merges, pre-tokenizer, added tokens) with the BOS it prepends and its end ids. A GGUF
/// byte-level BPE and the `tokenizer.json` pot writes for it hash the same, so such a pair is
/// compared token by token. A post-processor that does nothing (a template of the sequence
/// alone, no special tokens: what transformers writes when it saves a tokenizer that had
/// none, as mlx-lm's converter does) hashes as none, so an MLX checkpoint's tokenizer is its
/// source's.
pub fn pipeline_hash(
    inner: &tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: &[u32],
) -> Result<String, ModelError> {
    let stripped;
    let inner = if inner
        .get_post_processor()
        .is_some_and(post_processor_is_noop)
    {
        let mut t = inner.clone();
        t.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        stripped = t;
        &stripped
    } else {
        inner
    };
    let canonical = serde_json::json!({
        "tokenizer_json": inner.to_string(false).map_err(|source| ModelError::Tokenize { action: "be written as JSON for its hash", source })?,
        "bos": bos,
        "eos": eos,
    });
    Ok(hex::encode(Sha256::digest(
        canonical.to_string().as_bytes(),
    )))
}

/// Whether a post-processor leaves a single sequence as it is: a template of `$A` alone with
/// no special tokens.
fn post_processor_is_noop(pp: &tokenizers::PostProcessorWrapper) -> bool {
    let tokenizers::PostProcessorWrapper::Template(_) = pp else {
        return false;
    };
    let Ok(v) = serde_json::to_value(pp) else {
        return false;
    };
    let single_is_a = v["single"]
        .as_array()
        .is_some_and(|s| s.len() == 1 && s[0]["Sequence"]["id"] == "A");
    let no_specials = v["special_tokens"]
        .as_object()
        .is_some_and(|m| m.is_empty());
    single_is_a && no_specials
}

/// Token ids that end generation: the end-of-sequence id and the chat formats' end tokens.
fn stop_ids(tokens: &[String], eos: Option<u32>) -> Vec<u32> {
    tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| STOP_TOKENS.contains(&t.as_str()))
        .map(|(i, _)| i as u32)
        .chain(eos)
        .collect()
}

/// GPT-2's byte-level alphabet inverted: the bytes a byte-level piece spells, or `None` when a
/// character of it is outside that alphabet (the tokenizer is not byte-level).
fn byte_level_bytes(piece: &str) -> Option<Vec<u8>> {
    // GPT-2 maps the printable bytes to themselves and the rest, in order, to U+0100...
    fn printable(b: u8) -> bool {
        matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
    }
    piece
        .chars()
        .map(|c| {
            let c = c as u32;
            if c < 256 && printable(c as u8) {
                return Some(c as u8);
            }
            let k = c.checked_sub(256)? as usize;
            (0..=255u8).filter(|b| !printable(*b)).nth(k)
        })
        .collect()
}

/// A tokenizer together with the facts about it that pot records.
pub struct Tokenizer {
    inner: Backend,
    /// Token id prepended to every encoding, when the model asks for one.
    pub bos: Option<u32>,
    /// The model's beginning-of-sequence token, prepended or not.
    pub bos_id: Option<u32>,
    /// End-of-sequence token id.
    pub eos: Option<u32>,
    /// Extra ids that end generation (end-of-turn tokens).
    pub stop_ids: Vec<u32>,
    /// Identity of the tokenizer: [`pipeline_hash`] for byte-level BPE and `tokenizer.json`,
    /// SHA-256 of the GGUF description (pieces, scores, types, flags) for SentencePiece. Two
    /// models with this hash equal tokenize every text identically.
    pub hash: String,
    vocab_size: usize,
}

/// Which algorithm tokenizes.
enum Backend {
    /// A `tokenizers` pipeline (byte-level BPE from GGUF, or a `tokenizer.json`).
    Hf(Box<tokenizers::Tokenizer>),
    /// SentencePiece BPE from GGUF pieces and scores.
    Spm(Box<super::spm::Spm>),
}

/// The raw tokenizer data read from GGUF metadata.
pub struct GgufTokenizerData {
    /// `tokenizer.ggml.model`.
    pub model: String,
    /// `tokenizer.ggml.pre` (empty when absent).
    pub pre: String,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`.
    pub token_types: Vec<i64>,
    /// `tokenizer.ggml.merges`.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (llama.cpp's default: true for SentencePiece, false
    /// for BPE).
    pub add_bos: bool,
    /// `tokenizer.ggml.scores` (SentencePiece; empty otherwise).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece; llama.cpp's default true).
    pub add_space_prefix: bool,
}

impl GgufTokenizerData {
    /// SHA-256 over a canonical JSON encoding of everything that decides tokenization.
    pub fn canonical_hash(&self) -> String {
        let canon = serde_json::json!({
            "model": self.model,
            "pre": self.pre,
            "tokens": self.tokens,
            "token_types": self.token_types,
            "merges": self.merges,
            "bos": self.bos,
            "eos": self.eos,
            "add_bos": self.add_bos,
        });
        let mut canon = canon;
        if self.model == "llama" {
            canon["scores"] = serde_json::json!(self.scores);
            canon["add_space_prefix"] = serde_json::json!(self.add_space_prefix);
        }
        hex::encode(Sha256::digest(canon.to_string().as_bytes()))
    }
}

impl Tokenizer {
    /// Build the tokenizer described by GGUF metadata; `source` names the file for errors.
    pub fn from_gguf_data(source: &str, d: &GgufTokenizerData) -> Result<Self, ModelError> {
        let unsupported = |what: String| ModelError::UnsupportedTokenizer {
            path: source.to_string(),
            what,
        };
        if d.model == "llama" {
            let spm =
                super::spm::Spm::new(&d.tokens, &d.scores, &d.token_types, d.add_space_prefix);
            return Ok(Self {
                inner: Backend::Spm(Box::new(spm)),
                bos: if d.add_bos { d.bos } else { None },
                bos_id: d.bos,
                eos: d.eos,
                stop_ids: stop_ids(&d.tokens, d.eos),
                hash: d.canonical_hash(),
                vocab_size: d.tokens.len(),
            });
        }
        if d.model != "gpt2" {
            return Err(unsupported(format!(
                "tokenizer.ggml.model = {:?} (implemented: \"gpt2\" byte-level BPE and \"llama\" SentencePiece)",
                d.model
            )));
        }
        let regexes = pre_tokenizer_regexes(&d.pre).ok_or_else(|| {
            unsupported(format!(
                "tokenizer.ggml.pre = {:?} is not a known pre-tokenizer",
                d.pre
            ))
        })?;
        let vocab: tokenizers::models::bpe::Vocab = d
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut merges = Vec::with_capacity(d.merges.len());
        for m in &d.merges {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                unsupported(format!("merge {m:?} in tokenizer.ggml.merges has no space"))
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(false)
            .build()
            .map_err(|e| unsupported(format!("BPE could not be built: {e}")))?;
        let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
        for r in regexes {
            let split = Split::new(
                SplitPattern::Regex(r.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| unsupported(format!("pre-tokenizer regex: {e}")))?;
            steps.push(split.into());
        }
        steps.push(ByteLevel::new(false, false, false).into());
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(steps)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = d
            .tokens
            .iter()
            .zip(&d.token_types)
            .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(t, &ty)| AddedToken::from(t.clone(), ty == TOKEN_TYPE_CONTROL))
            .collect();
        inner.add_special_tokens(&specials);
        let stop_ids = stop_ids(&d.tokens, d.eos);
        let bos = if d.add_bos { d.bos } else { None };
        let eos: Vec<u32> = d.eos.into_iter().collect();
        let hash = pipeline_hash(&inner, bos, &eos)?;
        Ok(Self {
            inner: Backend::Hf(Box::new(inner)),
            bos,
            bos_id: d.bos,
            eos: d.eos,
            stop_ids,
            hash,
            vocab_size: d.tokens.len(),
        })
    }

    /// A tokenizer loaded elsewhere (a `tokenizer.json`), with its BOS (when prepended), end
    /// ids and identity hash.
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Vec<u32>,
        hash: String,
    ) -> Self {
        let stop_ids = STOP_TOKENS
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .chain(eos.iter().copied())
            .collect();
        let vocab_size = inner.get_vocab_size(true);
        Self {
            inner: Backend::Hf(Box::new(inner)),
            bos,
            bos_id: bos,
            eos: eos.first().copied(),
            stop_ids,
            hash,
            vocab_size,
        }
    }

    /// The tokenizer as `tokenizer.json` text (Hugging Face format).
    pub fn inner_json(&self) -> Result<String, String> {
        match &self.inner {
            Backend::Hf(t) => t.to_string(true).map_err(|e| e.to_string()),
            Backend::Spm(_) => {
                Err("SentencePiece tokenizers cannot be written as tokenizer.json yet".into())
            }
        }
    }

    /// Token ids of `text` (with BOS when the model asks for it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let body = match &self.inner {
            Backend::Hf(t) => t
                .encode_fast(text, false)
                .map_err(|source| ModelError::Tokenize {
                    action: "encode the text",
                    source,
                })?
                .get_ids()
                .to_vec(),
            Backend::Spm(s) => s.encode(text),
        };
        let mut ids = Vec::with_capacity(body.len() + 1);
        ids.extend(self.bos);
        ids.extend(body);
        Ok(ids)
    }

    /// Text of `ids`, special tokens included; an id outside the vocabulary is refused (it
    /// would otherwise vanish from the text).
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        if let Some(&id) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(ModelError::UnknownToken {
                id,
                vocab: self.vocab_size,
            });
        }
        match &self.inner {
            Backend::Hf(t) => t.decode(ids, false).map_err(|source| ModelError::Tokenize {
                action: "decode the token ids",
                source,
            }),
            Backend::Spm(s) => Ok(s.decode(ids)),
        }
    }

    /// The bytes token `id` stands for in text (a byte-level token may hold part of a UTF-8
    /// character, so this is not always a string). Special tokens give their own spelling.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match &self.inner {
            Backend::Spm(s) => s.bytes(&[id]),
            Backend::Hf(t) => {
                let Some(piece) = t.id_to_token(id) else {
                    return Vec::new();
                };
                let special = t
                    .get_added_vocabulary()
                    .get_added_tokens_decoder()
                    .contains_key(&id);
                match (special, byte_level_bytes(&piece)) {
                    (false, Some(b)) => b,
                    _ => t.decode(&[id], false).unwrap_or(piece).into_bytes(),
                }
            }
        }
    }

    /// The token's string as stored in the vocabulary (byte-level encoded).
    pub fn token_str(&self, id: u32) -> Option<String> {
        match &self.inner {
            Backend::Hf(t) => t.id_to_token(id),
            Backend::Spm(s) => s.piece(id),
        }
    }

    /// Number of entries in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Identity of the vocabulary alone: SHA-256 over every id's bytes, in id order. Two
    /// tokenizers with this hash equal read every id as the same text, whatever their
    /// normalizers and pre-tokenizers; a model fed the other's ids can be compared with it
    /// row by row. (transformers rebuilds Qwen's tokenizer with an NFC normalizer and its own
    /// spelling of the split regex when it saves it, as mlx-lm's converter does: the pipeline
    /// hashes then differ, the vocabularies not.)
    pub fn vocab_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"pot/vocabulary/v1");
        for id in 0..self.vocab_size as u32 {
            let b = self.token_bytes(id);
            h.update((b.len() as u32).to_le_bytes());
            h.update(&b);
        }
        hex::encode(h.finalize())
    }
}
