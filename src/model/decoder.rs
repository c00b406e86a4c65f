//! The transformer forward pass pot owns: logits at every position, not only the last.
//!
//! candle-transformers' quantized models return the last position's logits only; scoring a
//! sequence by teacher forcing needs them all. This file wires candle's layers (matmul,
//! RMSNorm, RoPE, softmax) into the decoder-only families pot loads: Llama (interleaved RoPE,
//! as GGUF stores it), Qwen2 (Q/K/V biases, NeoX RoPE) and Qwen3 (per-head Q/K RMSNorm).
//!
//! With [`Kernels::Dense`] (the default) every quantized weight matrix is kept twice:
//! dequantized to f32 for prefill and teacher forcing (dense GEMM is several times faster
//! there, see BENCHMARKS.md), and quantized for one-token decoding (memory-bound, where fewer
//! bytes win). Teacher-forced scores then come from exact f32 arithmetic on the stored
//! weights, whichever file format they arrived in. [`Kernels::Quantized`] computes as
//! llama.cpp does (8-bit activations); the two differ visibly only on rows with "massive
//! activations", such as the first position of Qwen2.5-1.5B (tests/engine_reference.rs).

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor, D};

/// Which rotary embedding layout the checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1) rotate together: GGUF Llama (Q/K rows permuted by the converter).
    Interleaved,
    /// Pairs (i, i + d/2) rotate together: Qwen, and Hugging Face Llama checkpoints.
    Neox,
}

/// Architecture hyper-parameters: everything the forward pass needs besides weights.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Config {
    /// Architecture family (`llama`, `qwen2`, `qwen3`).
    pub arch: String,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Feed-forward inner size.
    pub d_ff: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// RoPE base frequency.
    pub rope_base: f64,
    /// RoPE layout.
    pub rope_style: RopeStyle,
    /// Longest sequence the model was trained for.
    pub context_length: usize,
    /// Whether the output projection is the token embedding.
    pub tied_embeddings: bool,
}

/// Which matrix kernels run a forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// Weights dequantized to f32 and multiplied densely for prefill and teacher forcing
    /// (several times faster on CPU); one-token decoding uses the quantized copy. The most
    /// exact arithmetic on the stored weights.
    #[default]
    Dense,
    /// Quantized kernels everywhere, as llama.cpp computes: activations are rounded to 8 bits
    /// before each product. Slower; use it to reproduce llama.cpp's numbers.
    Quantized,
}

/// A weight matrix `(out, in)` with its optional bias.
pub struct Linear {
    dense: Option<Tensor>,
    quant: Option<QMatMul>,
    bias: Option<Tensor>,
}

impl Linear {
    /// From a (possibly quantized) tensor, keeping what `kernels` needs.
    pub fn from_qtensor(w: QTensor, bias: Option<Tensor>, kernels: Kernels) -> Result<Self> {
        Self::build(w, bias, kernels, None)
    }

    /// From a quantized tensor whose dense f32 copy exists already (tied embeddings).
    pub fn from_qtensor_with_dense(w: QTensor, dense: Tensor, kernels: Kernels) -> Result<Self> {
        Self::build(w, None, kernels, Some(dense))
    }

    /// Keep the dense copy when the kernels use it (or the file is not quantized), computing
    /// it only when not given; keep the quantized copy whenever the file is quantized.
    fn build(
        w: QTensor,
        bias: Option<Tensor>,
        kernels: Kernels,
        dense: Option<Tensor>,
    ) -> Result<Self> {
        let quantized = !matches!(w.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let dense = if kernels == Kernels::Dense || !quantized {
            Some(match dense {
                Some(d) => d,
                None => w.dequantize(&Device::Cpu)?,
            })
        } else {
            None
        };
        Ok(Self {
            dense,
            quant: quantized.then(|| QMatMul::QTensor(Arc::new(w))),
            bias,
        })
    }

    /// From a dense f32 tensor.
    pub fn from_dense(w: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            dense: Some(w),
            quant: None,
            bias,
        }
    }

    fn forward(&self, x: &Tensor, decode: bool) -> Result<Tensor> {
        let y = match (&self.dense, &self.quant) {
            (_, Some(q)) if decode || self.dense.is_none() => q.forward(x)?,
            (Some(w), _) => {
                let (b, t, d) = x.dims3()?;
                x.reshape((b * t, d))?
                    .matmul(&w.t()?)?
                    .reshape((b, t, ()))?
            }
            (None, _) => candle_core::bail!("linear layer holds no weights"),
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// RMSNorm weights.
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// New norm layer.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            eps: eps as f32,
        }
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}

/// One transformer block.
pub struct Block {
    /// Pre-attention norm.
    pub attn_norm: RmsNorm,
    /// Query projection.
    pub wq: Linear,
    /// Key projection.
    pub wk: Linear,
    /// Value projection.
    pub wv: Linear,
    /// Output projection.
    pub wo: Linear,
    /// Per-head query norm (Qwen3).
    pub q_norm: Option<RmsNorm>,
    /// Per-head key norm (Qwen3).
    pub k_norm: Option<RmsNorm>,
    /// Pre-MLP norm.
    pub ffn_norm: RmsNorm,
    /// SwiGLU gate.
    pub gate: Linear,
    /// SwiGLU up.
    pub up: Linear,
    /// SwiGLU down.
    pub down: Linear,
}

/// The whole network.
pub struct Decoder {
    /// Hyper-parameters.
    pub config: Config,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
}

/// Keys and values of the positions seen so far, one pair per block.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Number of positions cached.
    pub len: usize,
}

impl Decoder {
    /// Assemble a decoder from loaded parts.
    pub fn new(
        config: Config,
        embed: Tensor,
        blocks: Vec<Block>,
        norm: RmsNorm,
        output: Linear,
    ) -> Result<Self> {
        let max_pos = config.context_length.clamp(1, 32_768);
        let half = config.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| {
                1.0 / config
                    .rope_base
                    .powf(2.0 * i as f64 / config.head_dim as f64) as f32
            })
            .collect();
        let inv = Tensor::from_vec(inv, (1, half), &Device::Cpu)?;
        let pos = Tensor::arange(0u32, max_pos as u32, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .reshape((max_pos, 1))?;
        let freqs = pos.matmul(&inv)?;
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            output,
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    /// Longest sequence this decoder accepts.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Run `tokens` after the positions already in `cache`, append them to the cache, and
    /// return the logits `(n, vocab)` for the new positions `logits_from..tokens.len()`.
    ///
    /// Row `i` of the result is the distribution of the token after `tokens[logits_from + i]`.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits_from: usize,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let t = tokens.len();
        if t == 0 || logits_from >= t {
            candle_core::bail!("forward needs at least one token at or after logits_from");
        }
        let start = cache.len;
        if start + t > self.max_positions() {
            candle_core::bail!(
                "sequence of {} tokens exceeds the {} positions this model supports",
                start + t,
                self.max_positions()
            );
        }
        if cache.layers.len() != self.blocks.len() {
            cache.layers = (0..self.blocks.len()).map(|_| None).collect();
        }
        let decode = t == 1;
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.embed.index_select(&ids, 0)?.unsqueeze(0)?; // (1, t, d)
        let cos = self.cos.narrow(0, start, t)?;
        let sin = self.sin.narrow(0, start, t)?;
        let mask = if t > 1 {
            Some(causal_mask(t, start)?)
        } else {
            None
        };
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let groups = cfg.n_head / cfg.n_kv_head;
        for (block, slot) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let h = block.attn_norm.forward(&x)?;
            let q = block.wq.forward(&h, decode)?;
            let k = block.wk.forward(&h, decode)?;
            let v = block.wv.forward(&h, decode)?;
            let q = q.reshape((1, t, cfg.n_head, cfg.head_dim))?;
            let k = k.reshape((1, t, cfg.n_kv_head, cfg.head_dim))?;
            let v = v.reshape((1, t, cfg.n_kv_head, cfg.head_dim))?;
            let q = match &block.q_norm {
                Some(n) => n.forward(&q)?,
                None => q,
            };
            let k = match &block.k_norm {
                Some(n) => n.forward(&k)?,
                None => k,
            };
            // (1, heads, t, head_dim)
            let q = q.transpose(1, 2)?.contiguous()?;
            let k = k.transpose(1, 2)?.contiguous()?;
            let v = v.transpose(1, 2)?.contiguous()?;
            let (q, k) = match cfg.rope_style {
                RopeStyle::Interleaved => (
                    candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
                ),
                RopeStyle::Neox => (
                    candle_nn::rotary_emb::rope(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope(&k, &cos, &sin)?,
                ),
            };
            let (k, v) = match slot.take() {
                Some((kc, vc)) => (Tensor::cat(&[&kc, &k], 2)?, Tensor::cat(&[&vc, &v], 2)?),
                None => (k, v),
            };
            *slot = Some((k.clone(), v.clone()));
            let k = repeat_kv(&k, groups)?;
            let v = repeat_kv(&v, groups)?;
            let att = (q.matmul(&k.t()?)? * scale)?;
            let att = match &mask {
                Some(m) => att.broadcast_add(m)?,
                None => att,
            };
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&v)?; // (1, heads, t, head_dim)
            let y = y
                .transpose(1, 2)?
                .reshape((1, t, cfg.n_head * cfg.head_dim))?;
            let y = block.wo.forward(&y, decode)?;
            x = (x + y)?;
            let h = block.ffn_norm.forward(&x)?;
            let g = block.gate.forward(&h, decode)?;
            let u = block.up.forward(&h, decode)?;
            let m = block
                .down
                .forward(&(candle_nn::ops::silu(&g)? * u)?, decode)?;
            x = (x + m)?;
        }
        cache.len += t;
        let x = x.narrow(1, logits_from, t - logits_from)?;
        let x = self.norm.forward(&x)?;
        let logits = self.output.forward(&x, decode)?;
        logits.squeeze(0)
    }
}

/// Additive causal mask `(t, start + t)`: 0 where query `i` may see key `j`, -inf elsewhere.
///
/// ```text
///            keys: cached (start) | new (t)
/// query 0    0 0 0 0 0            | 0 -inf -inf
/// query 1    0 0 0 0 0            | 0  0   -inf
/// query 2    0 0 0 0 0            | 0  0    0
/// ```
fn causal_mask(t: usize, start: usize) -> Result<Tensor> {
    let kv = start + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..kv).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, kv), &Device::Cpu)
}

/// Repeat key/value heads for grouped-query attention: `(1, kv, t, d)` → `(1, kv*n, t, d)`.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kv, n, t, d))?
        .reshape((b, kv * n, t, d))
}

/// Log-softmax of each row of `logits` `(n, vocab)`, as plain vectors.
pub fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    candle_nn::ops::log_softmax(logits, D::Minus1)?.to_vec2::<f32>()
}
