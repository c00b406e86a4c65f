//! 8-bit matrix products for Q8_0, Q4_1 and Q5_1 weights (blocks of 32), the arithmetic of
//! llama.cpp's `ggml_vec_dot_q8_0_q8_0` and `ggml_vec_dot_q4_1_q8_1` (and `q5_1`): activations are rounded
//! to 8 bits per row and block, integer dot products per block are scaled by both blocks'
//! scales, and Q4_1 adds its block minimum times the activation block's sum.
//!
//! candle multiplies Q8_0 one (row, column) pair at a time, converting both f16 scales on
//! every block, and has no SIMD code for Q4_1 at all; on the project machine those paths were
//! 70% of the Qwen 0.5B's time and all of SmolLM2's (BENCHMARKS.md). Here the weight scales
//! are converted once at load, each weight block is loaded once for up to four activation
//! rows, and columns are split across candle's worker pool.

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Result, Tensor};

/// A weight matrix `(n, k)` that multiplies f32 activations on pot's own kernels.
pub trait Product: Send + Sync {
    /// `x (b, t, k)` → `x · Wᵀ (b, t, n)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// The matrix as GGML stores it, `(dtype, n, k, blocks)`, where it holds exactly that
    /// (what candle's kernels on another device read; `Decoder::to_device`).
    fn ggml(&self) -> Option<(GgmlDType, usize, usize, std::borrow::Cow<'_, [u8]>)> {
        None
    }

    /// The matrix `(n, k)` as f32 on the CPU.
    fn dequantize(&self) -> Result<Tensor> {
        match self.ggml() {
            Some((dtype, n, k, blocks)) => {
                let storage =
                    candle_core::quantized::QStorage::from_data(blocks, &Device::Cpu, dtype)?;
                candle_core::quantized::QTensor::new(storage, (n, k))?.dequantize(&Device::Cpu)
            }
            None => candle_core::bail!("this matrix cannot be dequantized"),
        }
    }
}

impl<T: Product + ?Sized> Product for std::sync::Arc<T> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }
    fn ggml(&self) -> Option<(GgmlDType, usize, usize, std::borrow::Cow<'_, [u8]>)> {
        (**self).ggml()
    }
    fn dequantize(&self) -> Result<Tensor> {
        (**self).dequantize()
    }
}

impl Product for Q8Matrix {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        by_rows(x, self.n, |rows, m| Ok(self.matmul(rows, m)))
    }
    /// Its quants are held split from their scales (and widened to a byte each): no GGML
    /// encoding, only the values.
    fn dequantize(&self) -> Result<Tensor> {
        let ids: Vec<u32> = (0..self.n as u32).collect();
        Tensor::from_vec(self.rows(&ids)?, (self.n, self.k), &Device::Cpu)
    }
}

/// `x (b, t, k)` through a kernel on row-major f32 rows, `(rows, m) → (m, n)`.
pub(super) fn by_rows(
    x: &Tensor,
    n: usize,
    matmul: impl FnOnce(&[f32], usize) -> Result<Vec<f32>>,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    let out = with_f32(x, |rows| matmul(rows, b * t))??;
    Tensor::from_vec(out, (b, t, n), &Device::Cpu)
}

/// `f` of a tensor's values in row-major order: borrowed from a contiguous f32 tensor on the
/// CPU, else copied out first.
pub(super) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            if let Ok(values) = cpu.as_slice::<f32>() {
                return Ok(f(&values[a..b]));
            }
        }
    }
    Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
}

/// Values per block.
const QK: usize = 32;

/// A Q8_0 or Q4_1 weight matrix `(n, k)`: `n` output rows of `k` inputs.
pub struct Q8Matrix {
    n: usize,
    k: usize,
    /// Per block scale, as f32 (the stored f16, exactly).
    scales: Vec<f32>,
    /// Per block minimum (Q4_1), as f32.
    mins: Option<Vec<f32>>,
    /// Per block 32 quants: i8 for Q8_0 (and 8-bit affine), 0..=15 for Q4_1, `0..2^bits` for
    /// affine weights of at most 7 bits.
    quants: Vec<u8>,
    /// Whether the quants are i8 (multiplied with the sign trick) rather than unsigned.
    signed: bool,
    /// Whether activations stay f32 (MLX's arithmetic: weights dequantized in registers)
    /// instead of being rounded to 8 bits (llama.cpp's).
    f32_activations: bool,
}

/// One weight row (one output column): its block scales, block minima (Q4_1) and quants.
#[derive(Clone, Copy)]
struct Column<'a> {
    scales: &'a [f32],
    mins: Option<&'a [f32]>,
    quants: &'a [u8],
    signed: bool,
}

/// Activations rounded to 8 bits: per row and block, a scale (f16-rounded), 32 quants and
/// (for Q4_1 weights) scale × sum of the quants, f16-rounded, as llama.cpp's Q8_1 keeps it.
struct Q8Rows {
    scales: Vec<f32>,
    quants: Vec<i8>,
    sums: Vec<f32>,
}

impl Q8Matrix {
    /// From GGUF Q8_0 bytes (per block: f16 scale, 32 × i8) of an `(n, k)` matrix.
    pub fn from_q8_0_bytes(bytes: &[u8], n: usize, k: usize) -> Option<Self> {
        if !k.is_multiple_of(QK) || bytes.len() != n * k / QK * 34 {
            return None;
        }
        let blocks = n * k / QK;
        let mut scales = Vec::with_capacity(blocks);
        let mut quants = Vec::with_capacity(blocks * QK);
        for b in bytes.chunks_exact(34) {
            scales.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            quants.extend_from_slice(&b[2..]);
        }
        Some(Self {
            n,
            k,
            scales,
            mins: None,
            quants,
            signed: true,
            f32_activations: false,
        })
    }

    /// From GGUF Q4_0 bytes (per block: f16 scale, 16 bytes of nibbles, value `q − 8`: the
    /// low nibble of byte `j` is value `j`, the high one value `j + 16`). Its quants are
    /// exactly i8 values in −8..=7, so it multiplies on the Q8_0 kernel: llama.cpp's
    /// `ggml_vec_dot_q4_0_q8_0` is the same integer dot product against the same Q8_0
    /// activations, scaled by the same two scales.
    pub fn from_q4_0_bytes(bytes: &[u8], n: usize, k: usize) -> Option<Self> {
        if !k.is_multiple_of(QK) || bytes.len() != n * k / QK * 18 {
            return None;
        }
        let blocks = n * k / QK;
        let mut scales = Vec::with_capacity(blocks);
        let mut quants = Vec::with_capacity(blocks * QK);
        for b in bytes.chunks_exact(18) {
            scales.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            quants.extend(b[2..].iter().map(|q| ((q & 0x0f) as i8 - 8) as u8));
            quants.extend(b[2..].iter().map(|q| ((q >> 4) as i8 - 8) as u8));
        }
        Some(Self {
            n,
            k,
            scales,
            mins: None,
            quants,
            signed: true,
            f32_activations: false,
        })
    }

    /// From GGUF Q4_1 bytes (per block: f16 scale, f16 minimum, 16 bytes of nibbles: the low
    /// nibble of byte `j` is value `j`, the high one value `j + 16`) of an `(n, k)` matrix.
    pub fn from_q4_1_bytes(bytes: &[u8], n: usize, k: usize) -> Option<Self> {
        if !k.is_multiple_of(QK) || bytes.len() != n * k / QK * 20 {
            return None;
        }
        let blocks = n * k / QK;
        let mut scales = Vec::with_capacity(blocks);
        let mut mins = Vec::with_capacity(blocks);
        let mut quants = Vec::with_capacity(blocks * QK);
        for b in bytes.chunks_exact(20) {
            scales.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            mins.push(half::f16::from_le_bytes([b[2], b[3]]).to_f32());
            quants.extend(b[4..].iter().map(|q| q & 0x0f));
            quants.extend(b[4..].iter().map(|q| q >> 4));
        }
        Some(Self {
            n,
            k,
            scales,
            mins: Some(mins),
            quants,
            signed: false,
            f32_activations: false,
        })
    }

    /// From GGUF Q5_1 bytes (per block: f16 scale, f16 minimum, 32 high bits, 16 bytes of
    /// nibbles: value `j` is the low nibble of byte `j` with high bit `j`, value `j + 16` the
    /// high nibble with high bit `j + 16`). Its 5-bit quants multiply on the Q4_1 kernel (the
    /// arithmetic of llama.cpp's `ggml_vec_dot_q5_1_q8_1` is the same with 0..=31 quants).
    pub fn from_q5_1_bytes(bytes: &[u8], n: usize, k: usize) -> Option<Self> {
        if !k.is_multiple_of(QK) || bytes.len() != n * k / QK * 24 {
            return None;
        }
        let blocks = n * k / QK;
        let mut scales = Vec::with_capacity(blocks);
        let mut mins = Vec::with_capacity(blocks);
        let mut quants = Vec::with_capacity(blocks * QK);
        for b in bytes.chunks_exact(24) {
            scales.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            mins.push(half::f16::from_le_bytes([b[2], b[3]]).to_f32());
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let qs = &b[8..24];
            quants.extend((0..16).map(|j| (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4)));
            quants.extend((0..16).map(|j| (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4)));
        }
        Some(Self {
            n,
            k,
            scales,
            mins: Some(mins),
            quants,
            signed: false,
            f32_activations: false,
        })
    }

    /// From affine quants (MLX's encoding: `w = scale · q + bias` per group of `group`
    /// values along a row, `q` in `0..2^bits`, one per byte) of an `(n, k)` matrix, with one
    /// scale and bias per group. A group of 32·g values is g blocks of 32 with the same scale
    /// and bias, so this is Q4_1's arithmetic with `bits`-bit quants: exact for up to 7 bits.
    /// 8-bit quants are stored as `q − 128` (i8) with the bias moved to `bias + 128 · scale`,
    /// which keeps the integer products within the kernel's 16-bit pairs.
    pub fn from_affine(
        n: usize,
        k: usize,
        bits: u32,
        group: usize,
        mut quants: Vec<u8>,
        scales: &[f32],
        biases: &[f32],
    ) -> Option<Self> {
        let groups = n * k / group.max(1);
        if group == 0
            || !group.is_multiple_of(QK)
            || !k.is_multiple_of(group)
            || !(1..=8).contains(&bits)
            || quants.len() != n * k
            || scales.len() != groups
            || biases.len() != groups
        {
            return None;
        }
        let per = group / QK;
        let signed = bits == 8;
        let mut s32 = Vec::with_capacity(n * k / QK);
        let mut m32 = Vec::with_capacity(n * k / QK);
        for (&s, &b) in scales.iter().zip(biases) {
            let b = if signed { b + 128.0 * s } else { b };
            s32.extend(std::iter::repeat_n(s, per));
            m32.extend(std::iter::repeat_n(b, per));
        }
        if signed {
            for q in &mut quants {
                *q ^= 0x80;
            }
        }
        Some(Self {
            n,
            k,
            scales: s32,
            mins: Some(m32),
            quants,
            signed,
            f32_activations: false,
        })
    }

    /// The same matrix multiplied as MLX multiplies it: activations stay f32 and each weight
    /// block is dequantized in registers (`scale · Σ q·x + bias · Σ x`), so the products are
    /// those of the dequantized f32 weights up to summation order. llama.cpp's 8-bit
    /// activations would move SmolLM2's log-probabilities by ~0.1 nats against MLX's.
    pub fn with_f32_activations(mut self) -> Self {
        self.f32_activations = true;
        self
    }

    /// `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Rows `ids` of the matrix, dequantized to f32 (row-major, `ids.len() × k`): an
    /// embedding table's lookup.
    pub fn rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let (n, k) = (self.n, self.k);
        let nb = k / QK;
        let mut out = Vec::with_capacity(ids.len() * k);
        for &id in ids {
            let r = id as usize;
            if r >= n {
                candle_core::bail!("token id {r} is outside the embedding table of {n} rows");
            }
            for b in 0..nb {
                let d = self.scales[r * nb + b];
                let m = self.mins.as_ref().map_or(0.0, |v| v[r * nb + b]);
                let q = &self.quants[r * k + b * QK..r * k + (b + 1) * QK];
                if self.signed {
                    out.extend(q.iter().map(|&q| d * (q as i8 as f32) + m));
                } else {
                    out.extend(q.iter().map(|&q| d * q as f32 + m));
                }
            }
        }
        Ok(out)
    }

    /// `x (m, k)` row-major → `x · Wᵀ (m, n)` row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "activation shape");
        let nb = k / QK;
        if self.f32_activations {
            let sums: Vec<f32> = x.chunks_exact(QK).map(|b| b.iter().sum()).collect();
            return products(n, m, |c, r0, out| {
                let col = Column {
                    scales: &self.scales[c * nb..(c + 1) * nb],
                    mins: self.mins.as_ref().map(|v| &v[c * nb..(c + 1) * nb]),
                    quants: &self.quants[c * k..(c + 1) * k],
                    signed: self.signed,
                };
                dot_rows_f32(col, x, &sums, k, r0, out);
            });
        }
        let a = quantize_rows(x, m, k, self.mins.is_some());
        if m >= super::tiles::MANY_ROWS && super::tiles::available() {
            let isums = a.isums(self.signed);
            let rows = super::tiles::Rows {
                quants: &a.quants,
                scales: &a.scales,
                sums: &a.sums,
                isums: &isums,
                bsums: &[],
            };
            return super::tiles::b32_product(
                n,
                k,
                m,
                &rows,
                self.signed,
                self.mins.is_some(),
                |c| {
                    super::tiles::B32Column::Split(
                        &self.scales[c * nb..(c + 1) * nb],
                        self.mins.as_ref().map(|v| &v[c * nb..(c + 1) * nb]),
                        &self.quants[c * k..(c + 1) * k],
                    )
                },
            );
        }
        products(n, m, |c, r0, out| {
            let col = Column {
                scales: &self.scales[c * nb..(c + 1) * nb],
                mins: self.mins.as_ref().map(|v| &v[c * nb..(c + 1) * nb]),
                quants: &self.quants[c * k..(c + 1) * k],
                signed: self.signed,
            };
            dot_rows(col, &a, r0, out);
        })
    }
}

impl Q8Rows {
    /// Per row and block, the sum of the quants (what the tile kernels need for i8 weights,
    /// `signed`); empty otherwise.
    fn isums(&self, signed: bool) -> Vec<i32> {
        if !signed {
            return Vec::new();
        }
        self.quants
            .chunks_exact(QK)
            .map(|b| b.iter().map(|&q| q as i32).sum())
            .collect()
    }
}

/// A GGUF blocks-of-32 matrix `(n, k)` (Q8_0, Q5_0, Q4_0, Q4_1, Q5_1) read in place from a
/// mapped file: the tile kernels decode its blocks as they fill each tile, for any number of
/// activation rows, with the arithmetic of [`Q8Matrix`] (llama.cpp's). Only where this CPU
/// runs the tile kernels (AVX2); elsewhere such weights are read into memory.
pub struct BlockMatrix {
    n: usize,
    k: usize,
    format: super::tiles::B32Format,
    blocks: super::mapped::Mapped,
}

impl BlockMatrix {
    /// `None` unless `blocks` holds exactly `n` rows of `k` values in whole blocks and this
    /// CPU runs the tile kernels.
    pub fn new(
        format: super::tiles::B32Format,
        n: usize,
        k: usize,
        blocks: super::mapped::Mapped,
    ) -> Option<Self> {
        let fits = k.is_multiple_of(QK)
            && Some(blocks.len())
                == n.checked_mul(k / QK)
                    .and_then(|b| b.checked_mul(format.block_bytes()));
        (fits && super::tiles::available()).then_some(Self {
            n,
            k,
            format,
            blocks,
        })
    }

    /// `x (m, k)` row-major → `x · Wᵀ (m, n)` row-major: the tile kernels for many rows; for
    /// few, [`Q8Matrix`]'s few-row kernel with each block decoded in registers as it is read
    /// (llama.cpp's `ggml_vec_dot_q5_0_q8_0` and kin).
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "activation shape");
        let signed = self.format.signed();
        let a = quantize_rows(x, m, k, !signed);
        let row = k / QK * self.format.block_bytes();
        let blocks: &[u8] = &self.blocks;
        if m < super::tiles::MANY_ROWS {
            let format = self.format;
            return products(n, m, |c, r0, out| {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX2 (`new` checked tiles::available()); the row holds
                // `k / 32` whole blocks and `a` rows `r0..r0 + out.len()` of as many.
                unsafe {
                    avx2::dot_rows_blocks(format, &blocks[c * row..(c + 1) * row], &a, r0, out)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (c, r0, out, format);
            });
        }
        let isums = a.isums(signed);
        let rows = super::tiles::Rows {
            quants: &a.quants,
            scales: &a.scales,
            sums: &a.sums,
            isums: &isums,
            bsums: &[],
        };
        super::tiles::b32_product(n, k, m, &rows, signed, !signed, |c| {
            super::tiles::B32Column::Blocks(self.format, &blocks[c * row..(c + 1) * row])
        })
    }
}

impl Product for BlockMatrix {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        by_rows(x, self.n, |rows, m| Ok(self.matmul(rows, m)))
    }
    fn ggml(&self) -> Option<(GgmlDType, usize, usize, std::borrow::Cow<'_, [u8]>)> {
        Some((
            self.format.dtype(),
            self.n,
            self.k,
            std::borrow::Cow::Borrowed(&self.blocks),
        ))
    }
}

/// Output columns per tile: a tile's weight rows stay in L2 while every group of activation
/// rows passes over them.
const TILE: usize = 16;

/// The `(m, n)` row-major product whose entries `dot(c, r0, out)` computes: output column `c`
/// for activation rows `r0..r0 + out.len()` (at most 4 at a time, so a kernel can load each
/// weight block once for four rows). Tiles of columns are split across candle's CPU worker
/// pool (its spinning workers hand work over in microseconds, which one-token steps need).
pub(super) fn products(
    n: usize,
    m: usize,
    dot: impl Fn(usize, usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out_t = vec![0f32; n * m];
    let dst = out_t.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(TILE), |tiles| {
        for tile in tiles {
            let cols = tile * TILE..((tile + 1) * TILE).min(n);
            let mut r = 0;
            while r < m {
                let rows = (m - r).min(4);
                for c in cols.clone() {
                    // SAFETY: tiles are disjoint, so each column `c` is written by one worker,
                    // and `c * m + r + rows <= n * m`.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut((dst as *mut f32).add(c * m + r), rows)
                    };
                    dot(c, r, out);
                }
                r += rows;
            }
        }
    });
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; m * n];
    for c in 0..n {
        for r in 0..m {
            out[r * n + c] = out_t[c * m + r];
        }
    }
    out
}

/// llama.cpp's `quantize_row_q8_0` (and `q8_1` with `sums`): per block, d = max|x| / 127
/// (stored as f16), q = round(x / d), s = d · Σq (stored as f16).
///
/// llama.cpp's x86 code multiplies by 127 / max|x| and rounds half to even, which differs from
/// x · (1 / d) in the last bit now and then. Either choice flips a few 8-bit roundings, and
/// those move near-tied next tokens: against llama.cpp's logits for SmolLM2 this form agreed on
/// 165 of 166 top-1 tokens and the x86 form on 162, with the same mean |Δ log-softmax| (0.100);
/// against llama.cpp run on this machine, the same. pot keeps the form that agreed more.
fn quantize_rows(x: &[f32], m: usize, k: usize, sums: bool) -> Q8Rows {
    #[cfg(target_arch = "x86_64")]
    if super::tiles::isa() >= super::tiles::Isa::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (tiles::isa).
        return unsafe { quantize_rows_avx2(x, m, k, sums) };
    }
    quantize_rows_body(x, m, k, sums)
}

/// [`quantize_rows`] compiled for AVX2 (vector rounding, no library call per value).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_rows_avx2(x: &[f32], m: usize, k: usize, sums: bool) -> Q8Rows {
    quantize_rows_body(x, m, k, sums)
}

#[inline(always)]
fn quantize_rows_body(x: &[f32], m: usize, k: usize, sums: bool) -> Q8Rows {
    let nb = k / QK;
    let mut rows = Q8Rows {
        scales: Vec::with_capacity(m * nb),
        quants: Vec::with_capacity(m * k),
        sums: Vec::with_capacity(if sums { m * nb } else { 0 }),
    };
    for block in x.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        rows.scales.push(half::f16::from_f32(d).to_f32());
        let start = rows.quants.len();
        rows.quants
            .extend(block.iter().map(|v| (v * id).round() as i8));
        if sums {
            let sum: i32 = rows.quants[start..].iter().map(|&q| q as i32).sum();
            rows.sums.push(half::f16::from_f32(sum as f32 * d).to_f32());
        }
    }
    rows
}

/// Dot products of one weight row (column of the output) with activation rows
/// `r0..r0 + out.len()` (at most 4).
fn dot_rows(col: Column<'_>, a: &Q8Rows, r0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::tiles::isa() >= super::tiles::Isa::Avx2 {
            // SAFETY: tiles::isa() detected AVX2 and FMA; slices are in bounds by construction.
            unsafe { avx2::dot_rows(col, a, r0, out) };
            return;
        }
    }
    let Column {
        scales: ws,
        mins,
        quants: wq,
        signed,
    } = col;
    let nb = ws.len();
    for (j, o) in out.iter_mut().enumerate() {
        let r = r0 + j;
        let mut acc = 0f32;
        let mut acc_min = 0f32;
        for b in 0..nb {
            let w = &wq[b * QK..(b + 1) * QK];
            let blk = r * nb + b;
            let q = &a.quants[blk * QK..(blk + 1) * QK];
            let s: i32 = if signed {
                w.iter()
                    .zip(q)
                    .map(|(&x, &y)| x as i8 as i32 * y as i32)
                    .sum()
            } else {
                w.iter().zip(q).map(|(&x, &y)| x as i32 * y as i32).sum()
            };
            acc += ws[b] * a.scales[blk] * s as f32;
            if let Some(m) = mins {
                acc_min += m[b] * a.sums[blk];
            }
        }
        *o = acc + acc_min;
    }
}

/// Dot products of one weight row with f32 activation rows `r0..r0 + out.len()` (at most 4)
/// of length `k`, whose per-block sums are `sums`: per block, `scale · Σ q·x + min · Σ x`.
fn dot_rows_f32(col: Column<'_>, x: &[f32], sums: &[f32], k: usize, r0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::tiles::isa() >= super::tiles::Isa::Avx2 {
            // SAFETY: tiles::isa() detected AVX2 and FMA; slices are in bounds by construction.
            unsafe { avx2::dot_rows_f32(col, x, sums, k, r0, out) };
            return;
        }
    }
    let nb = col.scales.len();
    for (j, o) in out.iter_mut().enumerate() {
        let r = r0 + j;
        let mut acc = 0f32;
        for b in 0..nb {
            let w = &col.quants[b * QK..(b + 1) * QK];
            let xs = &x[r * k + b * QK..r * k + (b + 1) * QK];
            let dot: f32 = if col.signed {
                w.iter().zip(xs).map(|(&q, &v)| q as i8 as f32 * v).sum()
            } else {
                w.iter().zip(xs).map(|(&q, &v)| q as f32 * v).sum()
            };
            acc += col.scales[b] * dot;
            if let Some(m) = col.mins {
                acc += m[b] * sums[r * nb + b];
            }
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::super::tiles::B32Format;
    use super::{Column, Q8Rows, QK};
    use std::arch::x86_64::*;

    /// Sum of the 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::model) unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        hsum4(_mm_add_ps(lo, hi))
    }

    /// Sum of the 4 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::model) unsafe fn hsum4(s: __m128) -> f32 {
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Eight quants from `p` as f32 lanes.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn widen(p: *const u8, signed: bool) -> __m256 {
        let v = _mm_loadl_epi64(p as *const __m128i);
        _mm256_cvtepi32_ps(if signed {
            _mm256_cvtepi8_epi32(v)
        } else {
            _mm256_cvtepu8_epi32(v)
        })
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows_f32(
        col: Column<'_>,
        x: &[f32],
        sums: &[f32],
        k: usize,
        r0: usize,
        out: &mut [f32],
    ) {
        let Column {
            scales: ws,
            mins,
            quants: wq,
            signed,
        } = col;
        let (nb, rows) = (ws.len(), out.len().min(4));
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut acc_min = [0f32; 4];
        let xp = x.as_ptr();
        for b in 0..nb {
            let q = wq.as_ptr().add(b * QK);
            let w = [
                widen(q, signed),
                widen(q.add(8), signed),
                widen(q.add(16), signed),
                widen(q.add(24), signed),
            ];
            let d = _mm256_set1_ps(*ws.get_unchecked(b));
            for (j, acc) in acc.iter_mut().enumerate().take(rows) {
                let xb = xp.add((r0 + j) * k + b * QK);
                let mut dot = _mm256_mul_ps(w[0], _mm256_loadu_ps(xb));
                dot = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb.add(8)), dot);
                dot = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xb.add(16)), dot);
                dot = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb.add(24)), dot);
                *acc = _mm256_fmadd_ps(d, dot, *acc);
                if let Some(m) = mins {
                    acc_min[j] += *m.get_unchecked(b) * *sums.get_unchecked((r0 + j) * nb + b);
                }
            }
        }
        for (j, o) in out.iter_mut().enumerate().take(rows) {
            *o = hsum(acc[j]) + acc_min[j];
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows(col: Column<'_>, a: &Q8Rows, r0: usize, out: &mut [f32]) {
        let Column {
            scales: ws,
            mins,
            quants: wq,
            signed,
        } = col;
        rows_of(ws.len(), signed, a, r0, out, &Split { wq, ws, mins })
    }

    /// Where a weight row's blocks come from: block `b` as (32 quants, scale, minimum).
    ///
    /// A trait with always-inlined methods rather than a closure: a closure is compiled
    /// without its caller's target features and need not be inlined, and then every
    /// intrinsic in it is a function call (the mapped few-row product ran at a sixth of its
    /// speed that way: SmolLM2 generated 21 tok/s against 120).
    trait Blocks {
        unsafe fn block(&self, b: usize) -> (__m256i, f32, f32);
        /// Whether blocks carry a minimum (then the activation rows carry their sums).
        fn has_mins(&self) -> bool;
    }

    /// Quants, scales and minimums held apart ([`Q8Matrix`]).
    struct Split<'a> {
        wq: &'a [u8],
        ws: &'a [f32],
        mins: Option<&'a [f32]>,
    }

    impl Blocks for Split<'_> {
        #[inline(always)]
        unsafe fn block(&self, b: usize) -> (__m256i, f32, f32) {
            (
                _mm256_loadu_si256(self.wq.as_ptr().add(b * QK) as *const __m256i),
                *self.ws.get_unchecked(b),
                self.mins.map_or(0.0, |m| *m.get_unchecked(b)),
            )
        }
        #[inline(always)]
        fn has_mins(&self) -> bool {
            self.mins.is_some()
        }
    }

    /// A file's blocks of one format, decoded as read ([`BlockMatrix`]).
    struct File {
        format: B32Format,
        row: *const u8,
        size: usize,
    }

    impl Blocks for File {
        #[inline(always)]
        unsafe fn block(&self, b: usize) -> (__m256i, f32, f32) {
            block(self.format, self.row.add(b * self.size))
        }
        #[inline(always)]
        fn has_mins(&self) -> bool {
            !self.format.signed()
        }
    }

    /// Weight row · activation rows `r0..r0 + out.len()` (at most 4) over `nb` blocks, block
    /// `b` of the weight row being `blocks.block(b)`: (32 quants, scale, minimum). `signed`: i8
    /// quants (Q8_0's arithmetic: |x| and the sign moved onto y); else unsigned quants of at
    /// most 7 bits (so maddubs's pairs of u8 × i8 cannot saturate i16). Where the blocks carry
    /// minimums (Q4_1, Q5_1, MLX's affine quants, signed 8-bit ones too), each block adds its
    /// minimum times the activation block's scaled sum.
    #[inline(always)]
    unsafe fn rows_of(
        nb: usize,
        signed: bool,
        a: &Q8Rows,
        r0: usize,
        out: &mut [f32],
        blocks: &impl Blocks,
    ) {
        let rows = out.len().min(4);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut acc_min = [0f32; 4];
        let aq = a.quants.as_ptr();
        let ones = _mm256_set1_epi16(1);
        let mins = blocks.has_mins();
        for b in 0..nb {
            let (x, wd, wm) = blocks.block(b);
            let ax = if signed { _mm256_sign_epi8(x, x) } else { x };
            for (j, acc) in acc.iter_mut().enumerate().take(rows) {
                let blk = (r0 + j) * nb + b;
                let y = _mm256_loadu_si256(aq.add(blk * QK) as *const __m256i);
                let sy = if signed { _mm256_sign_epi8(y, x) } else { y };
                let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones));
                let d = _mm256_set1_ps(wd * *a.scales.get_unchecked(blk));
                *acc = _mm256_fmadd_ps(d, dot, *acc);
                if mins {
                    acc_min[j] += wm * *a.sums.get_unchecked(blk);
                }
            }
        }
        for (j, o) in out.iter_mut().enumerate().take(rows) {
            *o = hsum(acc[j]) + acc_min[j];
        }
    }

    /// One GGUF block at `p` → (32 quants, i8 when the format is signed; scale; minimum):
    /// llama.cpp's `bytes_from_nibbles_32` and `bytes_from_bits_32`, the f16s by F16C.
    #[inline(always)]
    unsafe fn block(format: B32Format, p: *const u8) -> (__m256i, f32, f32) {
        let f16 = |p: *const u8| {
            let h = std::ptr::read_unaligned(p as *const u16);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
        };
        // Value i (i < 16) is the low nibble of byte i, value i + 16 its high nibble.
        let nibbles = |p: *const u8| {
            let b = _mm_loadu_si128(p as *const __m128i);
            let both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
        };
        // 0x10 in byte i where bit i of the 32 high bits is set.
        let fifth = |p: *const u8| {
            let x32 = std::ptr::read_unaligned(p as *const u32) as i32;
            let shuf = _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            );
            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf);
            let bits = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
            let set = _mm256_cmpeq_epi8(bits, _mm256_set1_epi64x(-1));
            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
        };
        match format {
            B32Format::Q8_0 => (_mm256_loadu_si256(p.add(2) as *const __m256i), f16(p), 0.0),
            B32Format::Q4_0 => {
                let q = _mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8));
                (q, f16(p), 0.0)
            }
            B32Format::Q5_0 => {
                let q = _mm256_or_si256(nibbles(p.add(6)), fifth(p.add(2)));
                (_mm256_sub_epi8(q, _mm256_set1_epi8(16)), f16(p), 0.0)
            }
            B32Format::Q4_1 => (nibbles(p.add(4)), f16(p), f16(p.add(2))),
            B32Format::Q5_1 => {
                let q = _mm256_or_si256(nibbles(p.add(8)), fifth(p.add(4)));
                (q, f16(p), f16(p.add(2)))
            }
        }
    }

    /// [`dot_rows`] over one row of a file's blocks, each decoded in registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows_blocks(
        format: B32Format,
        row: &[u8],
        a: &Q8Rows,
        r0: usize,
        out: &mut [f32],
    ) {
        // One copy of the loop per format, each with its decoding inlined.
        match format {
            B32Format::Q8_0 => fused(B32Format::Q8_0, row, a, r0, out),
            B32Format::Q5_0 => fused(B32Format::Q5_0, row, a, r0, out),
            B32Format::Q4_0 => fused(B32Format::Q4_0, row, a, r0, out),
            B32Format::Q4_1 => fused(B32Format::Q4_1, row, a, r0, out),
            B32Format::Q5_1 => fused(B32Format::Q5_1, row, a, r0, out),
        }
    }

    #[inline(always)]
    unsafe fn fused(format: B32Format, row: &[u8], a: &Q8Rows, r0: usize, out: &mut [f32]) {
        let size = format.block_bytes();
        let file = File {
            format,
            row: row.as_ptr(),
            size,
        };
        rows_of(row.len() / size, format.signed(), a, r0, out, &file)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    /// The same products as candle's Q8_0 and Q4_1 kernels (which follow llama.cpp's), for
    /// 1 to 21 activation rows (every remainder of the row groups of both kernels), over 70
    /// columns (a partial tile).
    #[test]
    fn matches_candles_products() {
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_1,
        ] {
            check(dtype);
        }
    }

    /// Every blocks-of-32 encoding read in place ([`BlockMatrix`]): bit for bit the products
    /// of the same weights read into memory ([`Q8Matrix`]; Q5_0 re-encoded as Q8_0), and
    /// within rounding of candle's, for 1 to 21 rows over a partial tile.
    #[test]
    fn blocks_read_in_place_multiply_as_in_memory() {
        if !crate::model::tiles::available() {
            return; // in-place blocks of 32 need the tile kernels
        }
        let (n, k) = (70, 96);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 + (i % 11) as f32 * 0.002)
            .collect();
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q5_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_1,
        ] {
            let q = QTensor::quantize(&wt, dtype).unwrap();
            let bytes = q.data().unwrap().to_vec();
            let format = crate::model::tiles::B32Format::of(dtype).unwrap();
            let in_place =
                BlockMatrix::new(format, n, k, crate::model::mapped::tests::mapped(&bytes))
                    .unwrap();
            let q8 = crate::model::layers::fast_encoding(QTensor::quantize(&wt, dtype).unwrap())
                .unwrap();
            let q8b = q8.data().unwrap();
            let in_memory = from_gguf_bytes(q8.dtype(), &q8b, n, k).unwrap();
            let qm = QMatMul::from_qtensor(q).unwrap();
            for m in [1usize, 2, 3, 4, 5, 7, 8, 13, 21] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.07)
                    .collect();
                let got = in_place.matmul(&x, m);
                assert_eq!(got, in_memory.matmul(&x, m), "{dtype:?} m={m}");
                let want = candle_product(&qm, &x, m, k);
                let tol = if format.signed() { 1e-4 } else { 2e-3 };
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= tol * w.abs().max(1.0),
                        "{dtype:?} m={m}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// A GGUF blocks-of-32 matrix read into pot's layout.
    fn from_gguf_bytes(dtype: GgmlDType, bytes: &[u8], n: usize, k: usize) -> Option<Q8Matrix> {
        match dtype {
            GgmlDType::Q8_0 => Q8Matrix::from_q8_0_bytes(bytes, n, k),
            GgmlDType::Q4_0 => Q8Matrix::from_q4_0_bytes(bytes, n, k),
            GgmlDType::Q4_1 => Q8Matrix::from_q4_1_bytes(bytes, n, k),
            GgmlDType::Q5_1 => Q8Matrix::from_q5_1_bytes(bytes, n, k),
            _ => None,
        }
    }

    /// candle's product `x (m, k) · Wᵀ`, row-major: the yardstick of pot's kernels.
    pub(in crate::model) fn candle_product(
        qm: &QMatMul,
        x: &[f32],
        m: usize,
        k: usize,
    ) -> Vec<f32> {
        qm.forward(&Tensor::from_slice(x, (m, k), &Device::Cpu).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn check(dtype: GgmlDType) {
        let (n, k) = (70, 96);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&wt, dtype).unwrap();
        let bytes = q.data().unwrap();
        let mine = from_gguf_bytes(dtype, &bytes, n, k).unwrap();
        let qm = QMatMul::from_qtensor(q).unwrap();
        // From tiles::MANY_ROWS rows on, the tile kernels (where this CPU runs them).
        for m in [1usize, 3, 7, 8, 13, 21] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.07)
                .collect();
            let want = candle_product(&qm, &x, m, k);
            let got = mine.matmul(&x, m);
            // Q4_1: candle rounds the activation block sum s = d·Σq as f16(Σq)·f16(d), twice;
            // llama.cpp (and pot) as f16(d·Σq), once. That moves results by ~1e-3 relative.
            let tol = if matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q4_0) {
                1e-4
            } else {
                2e-3
            };
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= tol * w.abs().max(1.0),
                    "{dtype:?} m={m}: {g} vs {w}"
                );
            }
        }
    }
}
