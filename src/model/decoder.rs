//! The transformer forward pass pot owns: logits at every position, not only the last.
//!
//! candle-transformers' quantized models return the last position's logits only; scoring a
//! sequence by teacher forcing needs them all. This file wires candle's layers (matmul,
//! RMSNorm, RoPE, softmax) into the decoder-only families pot loads: Llama (interleaved RoPE,
//! as GGUF stores it), Qwen2 (Q/K/V biases, NeoX RoPE), Qwen3 (per-head Q/K RMSNorm) and
//! Gemma 3 ([`GemmaConfig`]: scaled embeddings, post-norms, GELU, sliding-window layers).
//!
//! Each weight matrix is held once, for the kernels the model runs: [`Kernels::Quantized`]
//! (the default) keeps the file's quantization and computes as llama.cpp does (8-bit
//! activations); [`Kernels::Dense`] dequantizes to f32 and computes exactly on the stored
//! weights. The two differ visibly only on rows with "massive activations", such as the
//! first position of Qwen2.5-1.5B (tests/engine_reference.rs).
//!
//! Sequences can run in batches ([`Decoder::forward_rows`]): the matrix products see the rows
//! of all sequences at once and attention runs per sequence, so a group of challenges costs
//! one pass over the weights per step instead of one per challenge.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Result, Tensor, D};

pub use super::layers::{fast_encoding, Embedding, Linear, RmsNorm};

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
    /// Architecture family.
    pub arch: super::Arch,
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
    /// Gemma-style extras (absent for llama/qwen2/qwen3, and then not hashed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gemma: Option<GemmaConfig>,
}

/// What Gemma 3 adds to the decoder (llama.cpp's `llm_build_gemma3_iswa`): embeddings scaled by
/// √d, norms after attention and after the MLP, GELU (tanh) instead of SiLU, queries scaled by
/// `attn_scale`, and sliding-window attention with its own RoPE base on all layers but every
/// `swa_pattern`-th.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GemmaConfig {
    /// Multiplier of the queries (instead of 1/√head_dim).
    pub attn_scale: f64,
    /// Keys at distance ≥ this from the query are masked on sliding-window layers.
    pub sliding_window: usize,
    /// Layer `i` is global when `i % swa_pattern == swa_pattern - 1`.
    pub swa_pattern: usize,
    /// RoPE base of sliding-window layers.
    pub rope_local_base: f64,
    /// Linear RoPE position scale of global layers (1 / `rope.scaling.factor`).
    pub rope_scale: f64,
}

impl Config {
    /// Why these hyper-parameters cannot be a model's, if they cannot: sizes that are zero,
    /// odd where RoPE pairs dimensions, or beyond any released model by orders of magnitude
    /// (a damaged file must fail here, not allocate without bound).
    pub fn implausible(&self) -> Option<String> {
        let sizes = [
            ("block count", self.n_layer, 1 << 12),
            ("embedding length", self.d_model, 1 << 17),
            ("head count", self.n_head, 1 << 12),
            ("key/value head count", self.n_kv_head, 1 << 12),
            ("head size", self.head_dim, 1 << 12),
            ("feed-forward length", self.d_ff, 1 << 20),
            ("vocabulary size", self.vocab_size, 1 << 24),
        ];
        for (what, v, max) in sizes {
            if v == 0 || v > max {
                return Some(format!("{what} {v} is outside 1..={max}"));
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return Some(format!(
                "head size {} is odd (RoPE rotates pairs)",
                self.head_dim
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            return Some(format!("RMSNorm epsilon {} is not in (0, 1)", self.rms_eps));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 1.0) {
            return Some(format!("RoPE base {} is not above 1", self.rope_base));
        }
        if let Some(g) = &self.gemma {
            for (what, v) in [
                ("attention scale", g.attn_scale),
                ("local RoPE base", g.rope_local_base),
                ("RoPE scale", g.rope_scale),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return Some(format!("Gemma {what} {v} is not a positive number"));
                }
            }
        }
        None
    }

    fn is_sliding(&self, layer: usize) -> bool {
        self.gemma
            .as_ref()
            .is_some_and(|g| g.swa_pattern > 0 && layer % g.swa_pattern < g.swa_pattern - 1)
    }
}

/// Which matrix kernels run a forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// The stored encoding, multiplied as its runtime does: GGUF as llama.cpp (activations
    /// rounded to 8 bits before each product with quantized weights, to the weight's type
    /// with f16 and bf16 weights), MLX checkpoints as MLX (f32 activations against the
    /// quants). Weights stay as small as the file: quick to load, and the fastest here
    /// (BENCHMARKS.md).
    #[default]
    Quantized,
    /// Weights dequantized to f32 and multiplied by dense GEMM: exact arithmetic on the
    /// stored weights, at four to eight times the memory of a 4-bit file.
    Dense,
}

impl Kernels {
    /// Whether a matrix stored as `dtype` stays as stored under these kernels (quantized, or
    /// 16-bit halves) instead of being widened to f32.
    pub fn keeps_quantized(self, dtype: GgmlDType) -> bool {
        use GgmlDType as T;
        match (self, dtype) {
            (_, T::F32) | (Kernels::Dense, _) => false,
            (Kernels::Quantized, _) => true,
        }
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
    /// Norm of the attention output (Gemma 3).
    pub post_attn_norm: Option<RmsNorm>,
    /// Pre-MLP norm.
    pub ffn_norm: RmsNorm,
    /// Norm of the MLP output (Gemma 3).
    pub post_ffn_norm: Option<RmsNorm>,
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
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    /// RoPE tables of sliding-window layers (Gemma 3).
    local: Option<(Tensor, Tensor)>,
    /// Round queries, keys, values and attention weights to f16 as llama.cpp does (its f16
    /// key/value cache and f16 products): on with [`Kernels::Quantized`], llama.cpp's
    /// numerics; off with [`Kernels::Dense`], exact f32.
    pub f16_attention: bool,
    /// Where the blocks run: the CPU with pot's kernels, or a device with candle's
    /// ([`Decoder::to_device`]).
    device: Device,
    /// Whether pot's own CPU attention and SwiGLU run (off on a device, and on the CPU
    /// through the device path).
    pot_kernels: bool,
}

/// RoPE tables `(max_pos, head_dim / 2)`: cos and sin of `pos · scale · base^(−2i/d)`.
fn rope_tables(head_dim: usize, base: f64, scale: f64, max_pos: usize) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / base.powf(2.0 * i as f64 / head_dim as f64) as f32)
        .collect();
    let inv = Tensor::from_vec(inv, (1, half), &Device::Cpu)?;
    let pos = (Tensor::arange(0u32, max_pos as u32, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .reshape((max_pos, 1))?
        * scale)?;
    let freqs = pos.matmul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
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
        embed: Embedding,
        blocks: Vec<Block>,
        norm: RmsNorm,
        output: Linear,
    ) -> Result<Self> {
        let max_pos = config.context_length.clamp(1, 32_768);
        let scale = config.gemma.as_ref().map_or(1.0, |g| g.rope_scale);
        let (cos, sin) = rope_tables(config.head_dim, config.rope_base, scale, max_pos)?;
        let local = match &config.gemma {
            Some(g) => Some(rope_tables(
                config.head_dim,
                g.rope_local_base,
                1.0,
                max_pos,
            )?),
            None => None,
        };
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            output,
            cos,
            sin,
            local,
            f16_attention: true,
            device: Device::Cpu,
            pot_kernels: true,
        })
    }

    /// The same network on `device`, run by candle's kernels only (`model::device`): every
    /// matrix, norm and RoPE table moved there once; the embedding table stays in host
    /// memory and its looked-up rows are copied over. With `Device::Cpu` this is the device
    /// code path on the CPU (candle's CPU kernels), which checks it where no GPU is.
    pub fn to_device(self, device: &Device) -> Result<Self> {
        let both = |(c, s): &(Tensor, Tensor)| -> Result<(Tensor, Tensor)> {
            Ok((c.to_device(device)?, s.to_device(device)?))
        };
        let blocks = self
            .blocks
            .iter()
            .map(|b| -> Result<Block> {
                let norm =
                    |n: &Option<RmsNorm>| n.as_ref().map(|n| n.to_device(device)).transpose();
                Ok(Block {
                    attn_norm: b.attn_norm.to_device(device)?,
                    wq: b.wq.to_device(device)?,
                    wk: b.wk.to_device(device)?,
                    wv: b.wv.to_device(device)?,
                    wo: b.wo.to_device(device)?,
                    q_norm: norm(&b.q_norm)?,
                    k_norm: norm(&b.k_norm)?,
                    post_attn_norm: norm(&b.post_attn_norm)?,
                    ffn_norm: b.ffn_norm.to_device(device)?,
                    post_ffn_norm: norm(&b.post_ffn_norm)?,
                    gate: b.gate.to_device(device)?,
                    up: b.up.to_device(device)?,
                    down: b.down.to_device(device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (cos, sin) = both(&(self.cos, self.sin))?;
        Ok(Self {
            config: self.config,
            embed: self.embed,
            blocks,
            norm: self.norm.to_device(device)?,
            output: self.output.to_device(device)?,
            cos,
            sin,
            local: self.local.as_ref().map(both).transpose()?,
            f16_attention: self.f16_attention,
            device: device.clone(),
            pot_kernels: false,
        })
    }

    /// Where the network runs.
    pub fn device(&self) -> &Device {
        &self.device
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
        self.forward_rows(&[tokens], &mut [cache], &[logits_from])
    }

    /// Run a batch of sequences, each continuing its own cache by its own new tokens, and
    /// return the logits `(n_seq, vocab)` after each sequence's last new token.
    pub fn forward_batch(&self, chunks: &[&[u32]], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let from: Vec<usize> = chunks.iter().map(|c| c.len().saturating_sub(1)).collect();
        self.forward_rows(chunks, caches, &from)
    }

    /// Run a batch of sequences, each continuing its own cache by its own new tokens, and
    /// return the logits after `chunks[i][from[i]..]` for every `i`, stacked in order
    /// (`Σ (len_i − from_i)` rows).
    ///
    /// The matrix products see the rows of all sequences at once (one pass over the weights
    /// per call, however many sequences); attention runs per sequence. A row depends on its
    /// own sequence only, up to the summation order the batch's shape selects in the kernels
    /// (differences of order 1e-6).
    pub fn forward_rows(
        &self,
        chunks: &[&[u32]],
        caches: &mut [&mut KvCache],
        from: &[usize],
    ) -> Result<Tensor> {
        if from.len() != chunks.len() || chunks.iter().zip(from).any(|(c, &f)| f >= c.len()) {
            // Also refuses empty chunks.
            candle_core::bail!("forward needs, per chunk, a first logits row inside the chunk");
        }
        let mut keep = Vec::new();
        let mut offset = 0;
        for (c, &f) in chunks.iter().zip(from) {
            keep.extend((offset + f..offset + c.len()).map(|r| r as u32));
            offset += c.len();
        }
        let x = self.run(chunks, caches, Some(&keep))?;
        self.head(&x)
    }

    /// One sequence through a fresh pass: the logits after each of `tokens[p]` for `p` in
    /// `positions` (in that order), the output projection run on those rows only. A router
    /// checking a few steps of a long answer pays the vocabulary-wide projection for those
    /// steps alone.
    pub fn forward_at(&self, tokens: &[u32], positions: &[usize]) -> Result<Tensor> {
        if positions.is_empty() || positions.iter().any(|&p| p >= tokens.len()) {
            candle_core::bail!("forward_at needs positions inside the sequence");
        }
        let mut cache = KvCache::default();
        let idx: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let x = self.run(&[tokens], &mut [&mut cache], Some(&idx))?;
        self.head(&x)
    }

    /// Final norm and output projection of hidden states `(1, n, d)`: logits `(n, vocab)`.
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.norm.forward(x)?;
        self.output.forward(&x)?.squeeze(0)
    }

    /// The blocks over a batch of chunks: hidden states `(1, total rows, d)` of every new
    /// position, chunks in order, or with `keep`, of those rows only (in `keep`'s order);
    /// each cache grows by its chunk.
    ///
    /// As llama.cpp does, rows nobody reads are dropped in the last block once its keys and
    /// values are cached, before the output projection and the feed-forward: a prompt whose
    /// last position alone is wanted skips about 1/24 of a 24-block model's products.
    fn run(
        &self,
        chunks: &[&[u32]],
        caches: &mut [&mut KvCache],
        keep: Option<&[u32]>,
    ) -> Result<Tensor> {
        if chunks.is_empty() || chunks.len() != caches.len() || chunks.iter().any(|c| c.is_empty())
        {
            candle_core::bail!("forward needs one non-empty chunk of tokens per cache");
        }
        // Per chunk: where its rows are, and its RoPE tables and masks (global layers, then
        // sliding-window layers).
        struct Part {
            offset: usize,
            t: usize,
            global: (Tensor, Tensor, Option<Tensor>),
            sliding: Option<(Tensor, Tensor, Option<Tensor>)>,
        }
        let window = self.config.gemma.as_ref().map(|g| g.sliding_window);
        let mut parts = Vec::with_capacity(chunks.len());
        let mut offset = 0;
        for (chunk, cache) in chunks.iter().zip(caches.iter_mut()) {
            let (t, start) = (chunk.len(), cache.len);
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
            let global = (
                self.cos.narrow(0, start, t)?,
                self.sin.narrow(0, start, t)?,
                self.mask(t, start, None)?,
            );
            let sliding = match (&self.local, window) {
                (Some((cos, sin)), w) => Some((
                    cos.narrow(0, start, t)?,
                    sin.narrow(0, start, t)?,
                    self.mask(t, start, w)?,
                )),
                _ => None,
            };
            parts.push(Part {
                offset,
                t,
                global,
                sliding,
            });
            offset += t;
        }
        let ids: Vec<u32> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?;
        let mut x = self
            .embed
            .rows(&ids)?
            .to_device(&self.device)?
            .unsqueeze(0)?; // (1, rows, d)
        if self.config.gemma.is_some() {
            x = (x * (self.config.d_model as f64).sqrt())?;
        }
        for (li, block) in self.blocks.iter().enumerate() {
            let sliding = self.config.is_sliding(li);
            let h = block.attn_norm.forward(&x)?;
            let q = block.wq.forward(&h)?;
            let k = block.wk.forward(&h)?;
            let v = block.wv.forward(&h)?;
            let mut ys = Vec::with_capacity(parts.len());
            for (part, cache) in parts.iter().zip(caches.iter_mut()) {
                let (cos, sin, mask) = match (&part.sliding, sliding) {
                    (Some(s), true) => s,
                    _ => &part.global,
                };
                let (off, t) = (part.offset, part.t);
                ys.push(self.attend(
                    block,
                    [
                        &q.narrow(1, off, t)?,
                        &k.narrow(1, off, t)?,
                        &v.narrow(1, off, t)?,
                    ],
                    (cos, sin),
                    mask.as_ref(),
                    &mut cache.layers[li],
                )?);
            }
            let mut y = if ys.len() == 1 {
                ys.pop().expect("one part")
            } else {
                Tensor::cat(&ys, 1)?
            };
            let last = li + 1 == self.blocks.len();
            if let (Some(rows), true) = (keep, last) {
                let every = rows.len() == x.dim(1)?
                    && rows.iter().enumerate().all(|(i, &r)| r as usize == i);
                if !every {
                    let idx = Tensor::new(rows, x.device())?;
                    y = y.index_select(&idx, 1)?;
                    x = x.index_select(&idx, 1)?;
                }
            }
            let y = block.wo.forward(&y)?;
            let y = match &block.post_attn_norm {
                Some(n) => n.forward(&y)?,
                None => y,
            };
            x = (x + y)?;
            let h = block.ffn_norm.forward(&x)?;
            let g = block.gate.forward(&h)?;
            let u = block.up.forward(&h)?;
            let au = if self.config.gemma.is_some() {
                (g.gelu()? * u)?
            } else if self.pot_kernels && g.device().is_cpu() && g.dtype() == DType::F32 {
                let gu = super::q8::with_f32(&g, |g| {
                    super::q8::with_f32(&u, |u| super::vexp::silu_mul(g, u))
                })??;
                Tensor::from_vec(gu, g.shape(), g.device())?
            } else {
                (candle_nn::ops::silu(&g)? * u)?
            };
            let m = block.down.forward(&au)?;
            let m = match &block.post_ffn_norm {
                Some(n) => n.forward(&m)?,
                None => m,
            };
            x = (x + m)?;
        }
        for (chunk, cache) in chunks.iter().zip(caches.iter_mut()) {
            cache.len += chunk.len();
        }
        Ok(x)
    }

    /// [`attention_mask`] on the decoder's device.
    fn mask(&self, t: usize, start: usize, window: Option<usize>) -> Result<Option<Tensor>> {
        attention_mask(t, start, window)?
            .map(|m| m.to_device(&self.device))
            .transpose()
    }

    /// Self-attention of one chunk `(1, t, ·)` of projected queries, keys and values over its
    /// sequence's cached keys and values (which it extends); returns `(1, t, heads·head_dim)`.
    fn attend(
        &self,
        block: &Block,
        [q, k, v]: [&Tensor; 3],
        (cos, sin): (&Tensor, &Tensor),
        mask: Option<&Tensor>,
        slot: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let t = q.dim(1)?;
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
                candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
                candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
            ),
            RopeStyle::Neox => (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            ),
        };
        // llama.cpp keeps keys and values as f16 and rounds the queries and the attention
        // weights to f16 for its f16 matrix products; pot rounds the same values, which moves
        // its agreement with llama.cpp closer (tests/engine_reference.rs, BENCHMARKS.md).
        let f16 = self.f16_attention;
        let round = |x: Tensor| if f16 { round_f16(&x) } else { Ok(x) };
        let (q, k, v) = (round(q)?, round(k)?, round(v)?);
        let (k, v) = match slot.take() {
            Some((kc, vc)) => (Tensor::cat(&[&kc, &k], 2)?, Tensor::cat(&[&vc, &v], 2)?),
            None => (k, v),
        };
        *slot = Some((k.clone(), v.clone()));
        let scale = cfg
            .gemma
            .as_ref()
            .map_or(1.0 / (cfg.head_dim as f64).sqrt(), |g| g.attn_scale);
        if self.pot_kernels && q.device().is_cpu() && q.dtype() == DType::F32 {
            let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<f32>();
            let m = mask.map(flat).transpose()?;
            let dims = super::attention::Dims {
                heads: cfg.n_head,
                kv_heads: cfg.n_kv_head,
                t,
                kv: k.dim(2)?,
                head_dim: cfg.head_dim,
            };
            let y = super::attention::attend(
                &flat(&q)?,
                &flat(&k)?,
                &flat(&v)?,
                m.as_deref(),
                dims,
                scale as f32,
                f16,
            );
            return Tensor::from_vec(y, (1, t, cfg.n_head * cfg.head_dim), q.device());
        }
        let groups = cfg.n_head / cfg.n_kv_head;
        let k = repeat_kv(&k, groups)?;
        let v = repeat_kv(&v, groups)?;
        let att = (q.matmul(&k.t()?)? * scale)?;
        let att = match mask {
            Some(m) => att.broadcast_add(m)?,
            None => att,
        };
        let att = round(candle_nn::ops::softmax_last_dim(&att)?)?;
        let y = att.matmul(&v)?; // (1, heads, t, head_dim)
        y.transpose(1, 2)?
            .reshape((1, t, cfg.n_head * cfg.head_dim))
    }
}

/// Additive attention mask `(t, start + t)` of new queries over all keys: 0 where query `i`
/// may see key `j`, -inf elsewhere. Causal; with a sliding `window`, keys `window` or more
/// positions behind the query are masked too (llama.cpp's standard SWA). `None` when nothing
/// is masked (one new query, no window in reach).
///
/// ```text
///            keys: cached (start) | new (t)
/// query 0    0 0 0 0 0            | 0 -inf -inf
/// query 1    0 0 0 0 0            | 0  0   -inf
/// query 2    0 0 0 0 0            | 0  0    0
/// ```
fn attention_mask(t: usize, start: usize, window: Option<usize>) -> Result<Option<Tensor>> {
    let kv = start + t;
    if t == 1 && window.is_none_or(|w| kv <= w) {
        return Ok(None);
    }
    let mask = super::attention::causal_mask(t, start, window);
    Tensor::from_vec(mask, (t, kv), &Device::Cpu).map(Some)
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

/// `x` rounded to the nearest f16, kept as f32.
fn round_f16(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F16)?.to_dtype(DType::F32)
}

/// Log-softmax of each row of `logits` `(n, vocab)`, as plain vectors.
pub fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    candle_nn::ops::log_softmax(logits, D::Minus1)?.to_vec2::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;

    #[test]
    fn masks_are_causal_and_slide() {
        let rows = |m: Option<Tensor>| -> Vec<Vec<bool>> {
            let v: Vec<Vec<f32>> = m.expect("a mask").to_vec2().expect("2-d");
            v.iter()
                .map(|r| r.iter().map(|x| x.is_finite()).collect())
                .collect()
        };
        // Causal: 3 new queries after 2 cached keys.
        assert_eq!(
            rows(attention_mask(3, 2, None).unwrap()),
            vec![
                vec![true, true, true, false, false],
                vec![true, true, true, true, false],
                vec![true, true, true, true, true],
            ]
        );
        // Window 2: a query sees itself and the key before it only.
        assert_eq!(
            rows(attention_mask(3, 0, Some(2)).unwrap()),
            vec![
                vec![true, false, false],
                vec![true, true, false],
                vec![false, true, true],
            ]
        );
        // One new query: no mask unless the window is in reach.
        assert!(attention_mask(1, 5, None).unwrap().is_none());
        assert!(attention_mask(1, 3, Some(4)).unwrap().is_none());
        assert_eq!(
            rows(attention_mask(1, 5, Some(4)).unwrap()),
            vec![vec![false, false, true, true, true, true]]
        );
    }

    #[test]
    fn q5_0_reencodes_as_q8_0_bit_for_bit() {
        let xs: Vec<f32> = (0..64 * 96)
            .map(|i| ((i as f32 * 0.37).sin() * 3.0 + (i % 7) as f32 * 0.1) * 0.02)
            .collect();
        let t = Tensor::from_vec(xs, (64, 96), &Device::Cpu).unwrap();
        let values = |q: &QTensor| -> Vec<f32> {
            let d = q.dequantize(&Device::Cpu).unwrap();
            d.flatten_all().unwrap().to_vec1().unwrap()
        };
        let q5 = QTensor::quantize(&t, GgmlDType::Q5_0).unwrap();
        let want = values(&q5);
        let q8 = fast_encoding(q5).unwrap();
        assert_eq!(q8.dtype(), GgmlDType::Q8_0);
        let got = values(&q8);
        assert_eq!(got, want);
    }
}
