//! The layers a decoder block is made of: weight matrices held once for the kernels the model
//! runs ([`Linear`]: dense, candle's quantized kernels, or pot's own), RMS norms, and the token
//! embedding table.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};

use super::decoder::Kernels;

/// A weight matrix `(out, in)` with its optional bias.
pub struct Linear {
    pub(crate) weight: Weight,
    pub(crate) bias: Option<Tensor>,
}

/// How a weight matrix is held: one copy, for the kernels the model runs.
pub(crate) enum Weight {
    /// f32, multiplied by dense GEMM.
    Dense(Tensor),
    /// The file's quantization, multiplied by candle's quantized kernels.
    Quantized(QMatMul),
    /// Q8_0 (or Q5_0 re-encoded), Q4_0, Q4_1, Q5_1, the k-quants, F16 and BF16 on CPU,
    /// multiplied by pot's own kernels (`q8`, `kq`, `tiles`, `half`) with llama.cpp's
    /// arithmetic, chosen when the program runs: faster than candle's (whose SIMD is chosen
    /// when it is built), and 16-bit weights stay 16-bit. `kq` hands what pot has no kernel
    /// for on this CPU (few rows of Q2_K, Q3_K, Q5_K; anything without AVX2) to candle. GGUF
    /// matrices of these types are read in place from the mapped file (`gguf`, `mapped`):
    /// `kq::KMatrix`, `half::HalfMatrix` and `q8::BlockMatrix` over the file's pages.
    Pot(Box<dyn crate::model::q8::Product>),
}

impl Weight {
    /// The same matrix for candle's kernels on `device`: the file's GGML encoding where candle
    /// multiplies it there (every block-of-32 and k-quant encoding), f32 otherwise (16-bit
    /// weights, whose products there would round their outputs to 16 bits, and MLX's affine
    /// quants, which candle has no kernel for).
    fn to_device(&self, device: &Device) -> Result<Weight> {
        use candle_core::quantized::QStorage;
        let encoded = |dtype: GgmlDType, n: usize, k: usize, bytes: &[u8]| -> Result<Weight> {
            if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
                let storage =
                    QStorage::from_data(std::borrow::Cow::Borrowed(bytes), &Device::Cpu, dtype)?;
                let w = QTensor::new(storage, (n, k))?.dequantize(&Device::Cpu)?;
                return Ok(Weight::Dense(w.to_device(device)?));
            }
            // Straight to the device: no host copy of the blocks first.
            let storage = QStorage::from_data(std::borrow::Cow::Borrowed(bytes), device, dtype)?;
            Ok(Weight::Quantized(QMatMul::QTensor(Arc::new(QTensor::new(
                storage,
                (n, k),
            )?))))
        };
        match self {
            Weight::Dense(w) => Ok(Weight::Dense(w.to_device(device)?)),
            Weight::Quantized(QMatMul::QTensor(q)) => {
                let (n, k) = q.shape().dims2()?;
                encoded(q.dtype(), n, k, &q.data()?)
            }
            Weight::Quantized(QMatMul::Tensor(w)) => Ok(Weight::Dense(w.to_device(device)?)),
            Weight::Quantized(QMatMul::TensorF16(w)) => Ok(Weight::Dense(
                w.to_dtype(candle_core::DType::F32)?.to_device(device)?,
            )),
            Weight::Pot(m) => match m.ggml() {
                Some((dtype, n, k, bytes)) => encoded(dtype, n, k, &bytes),
                None => Ok(Weight::Dense(m.dequantize()?.to_device(device)?)),
            },
        }
    }
}

/// The quantized weight's kernel: pot's own on CPU where it has one, candle's otherwise.
///
/// Without AVX2 (an old x86-64, or aarch64, where pot's kernels are portable Rust) Q8_0, Q4_0
/// and the k-quants go to candle, whose aarch64 build multiplies them with NEON.
fn quantized_weight(w: Arc<QTensor>) -> Result<Weight> {
    use crate::model::kq::KMatrix;
    use crate::model::q8::{Product, Q8Matrix};
    use crate::model::tiles::{isa, Isa};
    let candles = matches!(
        w.dtype(),
        GgmlDType::Q8_0
            | GgmlDType::Q4_0
            | GgmlDType::Q2K
            | GgmlDType::Q3K
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
    );
    if w.device().is_cpu() && !(candles && isa() == Isa::Scalar) {
        let (n, k) = w.shape().dims2()?;
        let pot: Option<Box<dyn Product>> = match w.dtype() {
            GgmlDType::Q8_0 => {
                Q8Matrix::from_q8_0_bytes(&w.data()?, n, k).map(|m| Box::new(m) as _)
            }
            GgmlDType::Q4_0 => {
                Q8Matrix::from_q4_0_bytes(&w.data()?, n, k).map(|m| Box::new(m) as _)
            }
            GgmlDType::Q4_1 => {
                Q8Matrix::from_q4_1_bytes(&w.data()?, n, k).map(|m| Box::new(m) as _)
            }
            GgmlDType::Q5_1 => {
                Q8Matrix::from_q5_1_bytes(&w.data()?, n, k).map(|m| Box::new(m) as _)
            }
            // Every k-quant: pot's tile kernels for many rows (where the CPU runs them), its
            // few-row kernel for Q4_K and Q6_K, candle's otherwise.
            GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => {
                KMatrix::new(w.clone()).map(|m| Box::new(m) as _)
            }
            GgmlDType::F16 | GgmlDType::BF16 => {
                crate::model::half::HalfMatrix::new(w.clone()).map(|m| Box::new(m) as _)
            }
            _ => None,
        };
        if let Some(m) = pot {
            return Ok(Weight::Pot(m));
        }
    }
    Ok(Weight::Quantized(QMatMul::QTensor(w)))
}

impl Linear {
    /// From a (possibly quantized) tensor, keeping the copy `kernels` multiplies.
    pub fn from_qtensor(w: QTensor, bias: Option<Tensor>, kernels: Kernels) -> Result<Self> {
        let weight = if !kernels.keeps_quantized(w.dtype()) {
            Weight::Dense(w.dequantize(&Device::Cpu)?)
        } else {
            quantized_weight(Arc::new(fast_encoding(w)?))?
        };
        Ok(Self { weight, bias })
    }

    /// A quantized matrix shared with another layer (tied embeddings).
    pub fn from_shared_qtensor(w: Arc<QTensor>) -> Result<Self> {
        Ok(Self {
            weight: quantized_weight(w)?,
            bias: None,
        })
    }

    /// On one of pot's own kernels (an MLX checkpoint's affine matrix).
    pub fn from_product(w: Box<dyn crate::model::q8::Product>, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Pot(w),
            bias,
        }
    }

    /// From a dense f32 tensor.
    pub fn from_dense(w: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Dense(w),
            bias,
        }
    }

    /// The same layer for candle's kernels on `device` ([`Weight::to_device`]).
    pub(crate) fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: self.weight.to_device(device)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.to_device(device))
                .transpose()?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Quantized(q) => q.forward(x)?,
            Weight::Pot(m) => m.forward(x)?,
            Weight::Dense(w) => {
                let (b, t, d) = x.dims3()?;
                x.reshape((b * t, d))?
                    .matmul(&w.t()?)?
                    .reshape((b, t, ()))?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The same weights in an encoding candle multiplies fast on CPU, bit for bit.
///
/// Q5_0 (5-bit integers, one f16 scale per 32) has no SIMD kernel in candle; its values are
/// exactly representable as Q8_0 (8-bit integers, the same f16 scale per 32), whose kernel is
/// SIMD. Both multiply against the same 8-bit activations (Q8_0), so the integer dot products,
/// and therefore the results, are the same; the weights take 8.5 bits instead of 5.5.
pub fn fast_encoding(w: QTensor) -> Result<QTensor> {
    if w.dtype() != GgmlDType::Q5_0 || w.device().is_cuda() || w.device().is_metal() {
        return Ok(w);
    }
    let src = w.data()?;
    const IN: usize = 22; // f16 d, u32 qh, 16 bytes of low nibbles
    const OUT: usize = 34; // f16 d, 32 i8
    if src.len() % IN != 0 {
        candle_core::bail!("Q5_0 tensor of {} bytes is not whole blocks", src.len());
    }
    let mut out = Vec::with_capacity(src.len() / IN * OUT);
    for b in src.chunks_exact(IN) {
        out.extend_from_slice(&b[0..2]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = &b[6..22];
        let mut q = [0u8; 32];
        for j in 0..16 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = (((qs[j] & 0x0f) | h0) as i8 - 16) as u8;
            q[j + 16] = (((qs[j] >> 4) | h1) as i8 - 16) as u8;
        }
        out.extend_from_slice(&q);
    }
    let storage = candle_core::quantized::QStorage::from_data(
        std::borrow::Cow::Owned(out),
        &w.device(),
        GgmlDType::Q8_0,
    )?;
    QTensor::new(storage, w.shape().clone())
}

/// RMSNorm weights.
pub struct RmsNorm {
    pub(crate) weight: Tensor,
    pub(crate) eps: f32,
}

impl RmsNorm {
    /// New norm layer.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            eps: eps as f32,
        }
    }
    /// The same norm on `device`.
    pub(crate) fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: self.weight.to_device(device)?,
            eps: self.eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}

/// The token embedding table: dense rows, or quantized rows dequantized on lookup.
pub enum Embedding {
    /// f32 rows.
    Dense(Tensor),
    /// Quantized rows (the file's encoding); only the looked-up rows are dequantized.
    Quantized(Arc<QTensor>),
    /// Affine-quantized rows (an MLX checkpoint's), dequantized on lookup.
    Affine(Arc<crate::model::q8::Q8Matrix>),
    /// Quantized rows read in place from a mapped GGUF file: only the looked-up rows are
    /// read (and paged in) and dequantized, by candle as for [`Embedding::Quantized`].
    Mapped(MappedRows),
}

/// A quantized `(n, k)` table in a mapped file, row-major in whole blocks.
pub struct MappedRows {
    dtype: GgmlDType,
    n: usize,
    k: usize,
    bytes: crate::model::mapped::Mapped,
}

impl MappedRows {
    /// `None` unless `bytes` holds exactly `n` rows of `k` values in whole blocks of `dtype`.
    pub fn new(
        dtype: GgmlDType,
        n: usize,
        k: usize,
        bytes: crate::model::mapped::Mapped,
    ) -> Option<Self> {
        let (bs, ts) = (dtype.block_size(), dtype.type_size());
        // Every type but f32 (never mapped as a table) is read through 16-bit fields.
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(2);
        (aligned && k.is_multiple_of(bs) && Some(bytes.len()) == n.checked_mul(k / bs * ts))
            .then_some(Self { dtype, n, k, bytes })
    }

    fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        let row = self.k / self.dtype.block_size() * self.dtype.type_size();
        let mut out = Vec::with_capacity(ids.len() * self.k);
        for &id in &ids {
            let id = id as usize;
            if id >= self.n {
                candle_core::bail!("token id {id} is outside the table of {} rows", self.n);
            }
            let storage = candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Borrowed(&self.bytes[id * row..(id + 1) * row]),
                &Device::Cpu,
                self.dtype,
            )?;
            let q = QTensor::new(storage, (1, self.k))?;
            out.extend(
                q.dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
        Tensor::from_vec(out, (ids.len(), self.k), &Device::Cpu)
    }
}

impl Embedding {
    pub(crate) fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => t.index_select(ids, 0),
            Embedding::Quantized(q) => q.embedding(ids),
            Embedding::Affine(m) => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let (_, k) = m.dims();
                Tensor::from_vec(m.rows(&ids)?, (ids.len(), k), &Device::Cpu)
            }
            Embedding::Mapped(m) => m.rows(ids),
        }
    }
}
