//! Loading GGUF files: metadata → [`Config`] and [`Tokenizer`], tensors → [`Decoder`].
//!
//! Required metadata keys fail with the key's name; optional ones have the defaults visible
//! below. The file is checked (magic, tensor bounds) before any weight is read.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use super::arch::{block, Arch};
use super::decoder::{
    fast_encoding, Block, Config, Decoder, Embedding, GemmaConfig, Kernels, Linear, RmsNorm,
};
use super::half::HalfMatrix;
use super::kq::KMatrix;
use super::layers::MappedRows;
use super::mapped::{self, Mapped, MappedFile};
use super::q8::{BlockMatrix, Product};
use super::tiles::{B32Format, KQuant};
use super::tokenizer::{GgufTokenizerData, Tokenizer};
use super::ModelError;

/// A parsed GGUF header with the open file.
pub struct GgufFile {
    /// Path as given, for messages.
    pub path: String,
    /// Metadata and tensor directory.
    pub content: Content,
    reader: BufReader<File>,
    /// The whole file, mapped (unless `POT_MMAP=0` or the map failed): k-quant matrices and
    /// quantized embedding tables are read in place from it.
    map: Option<MappedFile>,
}

impl GgufFile {
    /// Open and parse the header; errors say whether the file is missing, not GGUF, or cut short.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let p = path.display().to_string();
        let file = File::open(path).map_err(|e| ModelError::Open {
            path: p.clone(),
            source: e,
        })?;
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 4];
        if reader.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
            return Err(ModelError::NotGguf { path: p });
        }
        reader.rewind().map_err(|e| ModelError::Open {
            path: p.clone(),
            source: e,
        })?;
        let content = Content::read(&mut reader).map_err(|e| ModelError::Corrupt {
            path: p.clone(),
            reason: super::candle_message(&e),
        })?;
        // Every tensor must lie inside the file: a truncated download fails here, not mid-run.
        let size = reader
            .get_ref()
            .metadata()
            .map_err(|e| ModelError::Open {
                path: p.clone(),
                source: e,
            })?
            .len();
        for (name, info) in &content.tensor_infos {
            // Checked: a damaged shape must not wrap around into a small size that passes.
            let block = info.ggml_dtype.block_size();
            let end = info
                .shape
                .dims()
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .filter(|elems| elems % block as u64 == 0)
                .and_then(|elems| {
                    (elems / block as u64).checked_mul(info.ggml_dtype.type_size() as u64)
                })
                .and_then(|bytes| {
                    content
                        .tensor_data_offset
                        .checked_add(info.offset)?
                        .checked_add(bytes)
                });
            let Some(end) = end else {
                return Err(ModelError::Corrupt {
                    path: p,
                    reason: format!(
                        "tensor {name} has shape {:?}, which {:?} blocks of {block} cannot hold",
                        info.shape.dims(),
                        info.ggml_dtype
                    ),
                });
            };
            if end > size {
                return Err(ModelError::Corrupt {
                    path: p,
                    reason: format!(
                        "tensor {name} ends at byte {end} but the file has {size} bytes (truncated download?)"
                    ),
                });
            }
        }
        let map = if mapped::enabled() {
            MappedFile::open(reader.get_ref(), path)
                .map_err(|e| tracing::debug!("{e}; weights are copied instead"))
                .ok()
        } else {
            None
        };
        Ok(Self {
            path: p,
            content,
            reader,
            map,
        })
    }

    /// Tensor `name` in place in the mapped file: its type, shape and bytes.
    fn mapped(&self, name: &str) -> Option<(GgmlDType, Vec<usize>, Mapped)> {
        let map = self.map.as_ref()?;
        let info = self.content.tensor_infos.get(name)?;
        let dtype = info.ggml_dtype;
        // The bounds were checked when the file was opened; `slice` checks them again.
        let bytes = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
        let start =
            usize::try_from(self.content.tensor_data_offset.checked_add(info.offset)?).ok()?;
        let bytes = map.slice(start..start.checked_add(bytes)?)?;
        Some((dtype, info.shape.dims().to_vec(), bytes))
    }

    /// Matrix `name` read in place by pot's kernels, where the file is mapped, `kernels` keep
    /// it as stored and pot has an in-place kernel for its type: every k-quant, f16 and bf16,
    /// and on CPUs with AVX2 the blocks of 32 (Q8_0, Q5_0, Q4_0, Q4_1, Q5_1).
    fn mapped_matrix(&self, name: &str, kernels: Kernels) -> Option<Box<dyn Product>> {
        let (dtype, dims, bytes) = self.mapped(name)?;
        if !kernels.keeps_quantized(dtype) {
            return None;
        }
        let [n, k] = dims[..] else { return None };
        if let Some(kind) = KQuant::of(dtype) {
            return KMatrix::mapped(kind, n, k, bytes).map(|m| Box::new(m) as _);
        }
        if matches!(dtype, GgmlDType::F16 | GgmlDType::BF16) {
            return HalfMatrix::mapped(dtype, n, k, bytes).map(|m| Box::new(m) as _);
        }
        BlockMatrix::new(B32Format::of(dtype)?, n, k, bytes).map(|m| Box::new(m) as _)
    }

    /// Embedding table `name` looked up in place, where the file is mapped and the table is
    /// quantized or 16-bit (whatever the kernels: rows are dequantized from the stored
    /// encoding, exactly as from a copy).
    fn mapped_rows(&self, name: &str) -> Option<MappedRows> {
        let (dtype, dims, bytes) = self.mapped(name)?;
        if dtype == GgmlDType::F32 {
            return None;
        }
        let [n, k] = dims[..] else { return None };
        MappedRows::new(dtype, n, k, bytes)
    }

    /// A metadata value, or an error naming the missing key.
    pub fn md(&self, key: &str) -> Result<&Value, ModelError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| ModelError::MissingKey {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    fn md_usize(&self, key: &str) -> Result<usize, ModelError> {
        let v = self.md(key)?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as usize))
            .map_err(|e| self.bad_key(key, e))
    }

    fn md_f64(&self, key: &str) -> Result<f64, ModelError> {
        let v = self.md(key)?;
        v.to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map_err(|e| self.bad_key(key, e))
    }

    fn bad_key(&self, key: &str, e: impl std::fmt::Display) -> ModelError {
        ModelError::Corrupt {
            path: self.path.clone(),
            reason: format!("metadata key {key}: {e}"),
        }
    }

    /// `tokenizer.chat_template`, when the file has one.
    pub fn chat_template(&self) -> Option<String> {
        self.content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
    }

    /// `general.architecture`.
    pub fn arch(&self) -> Result<String, ModelError> {
        Ok(self
            .md("general.architecture")?
            .to_string()
            .map_err(|e| self.bad_key("general.architecture", e))?
            .clone())
    }

    /// Read one tensor (dequantization is the caller's choice).
    pub fn tensor(&mut self, name: &str) -> Result<QTensor, ModelError> {
        let path = self.path.clone();
        if !self.content.tensor_infos.contains_key(name) {
            return Err(ModelError::MissingTensor {
                path,
                name: name.to_string(),
            });
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| ModelError::Corrupt {
                path,
                reason: format!("tensor {name}: {e}"),
            })
    }

    /// Whether the file holds a tensor of that name.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The architecture hyper-parameters.
    pub fn config(&self) -> Result<Config, ModelError> {
        let name = self.arch()?;
        let arch = Arch::from_gguf(&name).ok_or_else(|| ModelError::UnsupportedArch {
            path: self.path.clone(),
            arch: name.clone(),
        })?;
        let k = |s: &str| format!("{name}.{s}");
        let d_model = self.md_usize(&k("embedding_length"))?;
        let n_head = self.md_usize(&k("attention.head_count"))?;
        let n_kv_head = self
            .md_usize(&k("attention.head_count_kv"))
            .unwrap_or(n_head);
        let head_dim = self
            .md_usize(&k("attention.key_length"))
            .unwrap_or(d_model / n_head.max(1));
        let vocab_size = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: "token_embd.weight".into(),
            })?;
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(self.bad_key(
                &k("attention.head_count_kv"),
                format!("{n_kv_head} key/value heads do not divide {n_head} query heads"),
            ));
        }
        let cfg = Config {
            n_layer: self.md_usize(&k("block_count"))?,
            d_model,
            n_head,
            n_kv_head,
            head_dim,
            d_ff: self.md_usize(&k("feed_forward_length"))?,
            vocab_size,
            rms_eps: self.md_f64(&k("attention.layer_norm_rms_epsilon"))?,
            rope_base: self.md_f64(&k("rope.freq_base")).unwrap_or(10_000.0),
            rope_style: arch.gguf_rope(),
            context_length: self.md_usize(&k("context_length")).unwrap_or(4096),
            tied_embeddings: !self.has_tensor("output.weight"),
            gemma: if arch == Arch::Gemma3 {
                let n_layer = self.md_usize(&k("block_count"))?;
                // llama.cpp: Gemma 3 27B (62 layers) scales queries by 1/√(d/heads), the
                // others by 1/√head_dim; sliding layers use RoPE base 10000, unscaled.
                let per_head = if n_layer == 62 {
                    d_model / n_head
                } else {
                    head_dim
                };
                let factor = self
                    .md_f64(&k("rope.scaling.factor"))
                    .or_else(|_| self.md_f64(&k("rope.scale_linear")))
                    .unwrap_or(1.0);
                Some(GemmaConfig {
                    attn_scale: 1.0 / (per_head as f64).sqrt(),
                    sliding_window: self.md_usize(&k("attention.sliding_window"))?,
                    swa_pattern: 6,
                    rope_local_base: 10_000.0,
                    rope_scale: if factor > 0.0 { 1.0 / factor } else { 1.0 },
                })
            } else {
                None
            },
            arch,
        };
        if let Some(why) = cfg.implausible() {
            return Err(ModelError::Corrupt {
                path: self.path.clone(),
                reason: why,
            });
        }
        let embd = &self.content.tensor_infos["token_embd.weight"];
        if embd.shape.dims().get(1) != Some(&d_model) {
            return Err(ModelError::Corrupt {
                path: self.path.clone(),
                reason: format!(
                    "token_embd.weight is {:?}, not (vocabulary, {d_model}) as {} says",
                    embd.shape.dims(),
                    k("embedding_length")
                ),
            });
        }
        Ok(cfg)
    }

    /// The tokenizer data in the metadata.
    pub fn tokenizer_data(&self) -> Result<GgufTokenizerData, ModelError> {
        let strings = |key: &str| -> Result<Vec<String>, ModelError> {
            let arr = self.md(key)?.to_vec().map_err(|e| self.bad_key(key, e))?;
            arr.iter()
                .map(|v| v.to_string().cloned().map_err(|e| self.bad_key(key, e)))
                .collect()
        };
        let opt_u32 = |key: &str| self.content.metadata.get(key).and_then(|v| v.to_u32().ok());
        let tokens = strings("tokenizer.ggml.tokens")?;
        let token_types = match self.content.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| self.bad_key("tokenizer.ggml.token_type", e))?
                .iter()
                .map(|x| x.to_i32().map(i64::from).unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let model = self
            .md("tokenizer.ggml.model")?
            .to_string()
            .map_err(|e| self.bad_key("tokenizer.ggml.model", e))?
            .clone();
        let flag = |key: &str, default: bool| {
            self.content
                .metadata
                .get(key)
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(default)
        };
        let scores = match self.content.metadata.get("tokenizer.ggml.scores") {
            Some(v) => v
                .to_vec()
                .map_err(|e| self.bad_key("tokenizer.ggml.scores", e))?
                .iter()
                .map(|x| x.to_f32().unwrap_or(0.0))
                .collect(),
            None => Vec::new(),
        };
        let spm = model == "llama";
        // Special ids must name entries of the vocabulary (else every encoding would carry an
        // id no text stands for).
        for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
            if let Some(id) = opt_u32(key).filter(|&id| id as usize >= tokens.len()) {
                return Err(self.bad_key(
                    key,
                    format!("{id} is outside the vocabulary of {} tokens", tokens.len()),
                ));
            }
        }
        Ok(GgufTokenizerData {
            scores,
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", spm),
            model,
            pre: self
                .content
                .metadata
                .get("tokenizer.ggml.pre")
                .and_then(|v| v.to_string().ok().cloned())
                .unwrap_or_else(|| "default".into()),
            merges: if self.content.metadata.contains_key("tokenizer.ggml.merges") {
                strings("tokenizer.ggml.merges")?
            } else {
                Vec::new()
            },
            tokens,
            token_types,
            bos: opt_u32("tokenizer.ggml.bos_token_id"),
            eos: opt_u32("tokenizer.ggml.eos_token_id"),
            add_bos: flag("tokenizer.ggml.add_bos_token", spm),
        })
    }

    /// Build the tokenizer.
    pub fn tokenizer(&self) -> Result<Tokenizer, ModelError> {
        Tokenizer::from_gguf_data(&self.path, &self.tokenizer_data()?)
    }

    /// Read every weight and assemble the decoder.
    pub fn decoder(&mut self, kernels: Kernels) -> Result<Decoder, ModelError> {
        let cfg = self.config()?;
        let map = |p: &str, e: candle_core::Error| ModelError::Corrupt {
            path: p.to_string(),
            reason: super::candle_message(&e),
        };
        let path = self.path.clone();
        let dense = |t: QTensor| t.dequantize(&Device::Cpu).map_err(|e| map(&path, e));
        const EMBED: &str = "token_embd.weight";
        let mapped_embed = self.mapped_rows(EMBED);
        let mapped_output = if cfg.tied_embeddings {
            self.mapped_matrix(EMBED, kernels)
        } else {
            self.mapped_matrix("output.weight", kernels)
        };
        let (embed, output) = match (mapped_embed, mapped_output) {
            // Tied or not, both read in place: nothing is copied.
            (Some(rows), Some(out)) => (Embedding::Mapped(rows), Linear::from_product(out, None)),
            // The table in place; an untied output (or a tied one whose type pot's kernels
            // cannot read in place) in memory.
            (Some(rows), None) => {
                let name = if cfg.tied_embeddings {
                    EMBED
                } else {
                    "output.weight"
                };
                let q = self.tensor(name)?;
                let output = if kernels.keeps_quantized(q.dtype()) || !cfg.tied_embeddings {
                    Linear::from_qtensor(q, None, kernels).map_err(|e| map(&path, e))?
                } else {
                    Linear::from_dense(dense(q)?, None)
                };
                (Embedding::Mapped(rows), output)
            }
            (None, _) => self.read_embeddings(&cfg, kernels)?,
        };
        let norm = RmsNorm::new(dense(self.tensor("output_norm.weight")?)?, cfg.rms_eps);
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let prefix = format!("blk.{i}");
            let mut lin = |name: &str, bias: bool| -> Result<Linear, ModelError> {
                let name = format!("{prefix}.{name}.weight");
                let b = if bias {
                    Some(dense(self.tensor(&name.replace(".weight", ".bias"))?)?)
                } else {
                    None
                };
                if let Some(m) = self.mapped_matrix(&name, kernels) {
                    return Ok(Linear::from_product(m, b));
                }
                let w = self.tensor(&name)?;
                Linear::from_qtensor(w, b, kernels).map_err(|e| map(&path, e))
            };
            let qkv_bias = cfg.arch.qkv_bias();
            let wq = lin(block::Q.gguf, qkv_bias)?;
            let wk = lin(block::K.gguf, qkv_bias)?;
            let wv = lin(block::V.gguf, qkv_bias)?;
            let wo = lin(block::O.gguf, false)?;
            let gate = lin(block::GATE.gguf, false)?;
            let up = lin(block::UP.gguf, false)?;
            let down = lin(block::DOWN.gguf, false)?;
            let mut norm_of = |name: &str| -> Result<RmsNorm, ModelError> {
                Ok(RmsNorm::new(
                    dense(self.tensor(&format!("{prefix}.{name}.weight"))?)?,
                    cfg.rms_eps,
                ))
            };
            let (q_norm, k_norm) = if cfg.arch.qk_norm() {
                (
                    Some(norm_of(block::Q_NORM.gguf)?),
                    Some(norm_of(block::K_NORM.gguf)?),
                )
            } else {
                (None, None)
            };
            let (post_attn_norm, post_ffn_norm) = match cfg.arch.post_norms() {
                Some([a, f]) => (Some(norm_of(a.gguf)?), Some(norm_of(f.gguf)?)),
                None => (None, None),
            };
            blocks.push(Block {
                post_attn_norm,
                post_ffn_norm,
                attn_norm: norm_of(block::ATTN_NORM.gguf)?,
                ffn_norm: norm_of(cfg.arch.ffn_norm().gguf)?,
                wq,
                wk,
                wv,
                wo,
                q_norm,
                k_norm,
                gate,
                up,
                down,
            });
        }
        Decoder::new(cfg, embed, blocks, norm, output).map_err(|e| map(&path, e))
    }

    /// The embedding table and output projection read into memory (the file is not mapped,
    /// or its table is not quantized).
    fn read_embeddings(
        &mut self,
        cfg: &Config,
        kernels: Kernels,
    ) -> Result<(Embedding, Linear), ModelError> {
        let map = |p: &str, e: candle_core::Error| ModelError::Corrupt {
            path: p.to_string(),
            reason: super::candle_message(&e),
        };
        let path = self.path.clone();
        let dense = |t: QTensor| t.dequantize(&Device::Cpu).map_err(|e| map(&path, e));
        let embed_q = self.tensor("token_embd.weight")?;
        let embed_quantized = !matches!(
            embed_q.dtype(),
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        );
        Ok(match cfg.tied_embeddings {
            true if kernels.keeps_quantized(embed_q.dtype()) => {
                // Tied: one quantized copy serves as the table and the output projection.
                let q = Arc::new(fast_encoding(embed_q).map_err(|e| map(&path, e))?);
                (
                    Embedding::Quantized(q.clone()),
                    Linear::from_shared_qtensor(q).map_err(|e| map(&path, e))?,
                )
            }
            true => {
                // Tied, dense: one f32 copy serves both.
                let d = dense(embed_q)?;
                (Embedding::Dense(d.clone()), Linear::from_dense(d, None))
            }
            false => {
                // Untied: look rows up in the stored encoding (exact, and no dense copy of
                // the table is needed).
                let embed = if embed_quantized || kernels.keeps_quantized(embed_q.dtype()) {
                    Embedding::Quantized(Arc::new(embed_q))
                } else {
                    Embedding::Dense(dense(embed_q)?)
                };
                let q = self.tensor("output.weight")?;
                let output = Linear::from_qtensor(q, None, kernels).map_err(|e| map(&path, e))?;
                (embed, output)
            }
        })
    }
}

/// Whether a path looks like a GGUF file (by its first four bytes).
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"GGUF")
        .unwrap_or(false)
}
