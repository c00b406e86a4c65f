//! Matrix products for the k-quants Q4_K and Q6_K (super-blocks of 256), the arithmetic of
//! llama.cpp's AVX2 `ggml_vec_dot_q4_K_q8_K` and `ggml_vec_dot_q6_K_q8_K`: activations are
//! rounded to 8 bits per row and super-block (Q8_K, with sums per 16), each super-block's
//! integer dot products are weighted by the 6- or 8-bit sub-block scales in exact integer
//! arithmetic, and only then scaled by the two super-block scales in f32.
//!
//! candle's AVX2 path for these types expands Q4_K into tiles with f32 scales (a third more
//! bytes to stream per token) and multiplies one (row, column) pair at a time; it was 70% of
//! the Qwen 1.5B's decode time (BENCHMARKS.md). Here the file's blocks are kept at their size
//! (sub-block scales unpacked once at load), each weight vector is decoded once for up to four
//! activation rows, and tiles of columns go to candle's worker pool (`q8::products`).
//!
//! For many activation rows at once (teacher forcing, prompt evaluation, scoring every
//! position) the product goes to the tile kernels (`tiles`), which decode a tile of columns
//! once for all rows; they also cover Q2_K, Q3_K and Q5_K. What pot has no kernel for on a
//! CPU (few rows of Q2_K, Q3_K or Q5_K; anything without AVX2) goes to candle's.
//!
//! pot's kernels run on x86-64 with AVX2 and FMA (`available`, chosen at run time). The
//! blocks are the file's, in memory or in place in a mapped GGUF file (`mapped`); candle's
//! kernel, where it is needed, gets a copy made on first use.

use super::mapped::{Mapped, Stored};
use super::q8::{by_rows, products, Product};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Tensor};
use std::sync::{Arc, OnceLock};

/// Values per super-block.
const QK_K: usize = 256;
/// GGUF Q4_K block: f16 d, f16 dmin, 12 bytes of 6-bit sub-block scales and minima, 128 bytes
/// of nibbles.
const Q4K_BYTES: usize = 144;
/// GGUF Q6_K block: 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 i8 sub-block
/// scales, f16 d.
const Q6K_BYTES: usize = 210;
use super::tiles::{self, KQuant, MANY_ROWS};

/// A k-quant weight matrix `(n, k)`: `n` output rows of `k` inputs.
pub struct KMatrix {
    n: usize,
    k: usize,
    kind: KQuant,
    /// The file's blocks, row-major; what every kernel reads.
    blocks: Stored,
    /// candle's product, for what pot has no kernel for on this CPU; over mapped blocks it is
    /// made (a copy of the blocks) only when first needed.
    candle: OnceLock<QMatMul>,
}

/// Activations as llama.cpp's Q8_K: per row and super-block a scale, 256 quants and the sums
/// of each 16 quants.
struct Q8KRows {
    d: Vec<f32>,
    qs: Vec<i8>,
    bsums: Vec<i16>,
}

/// Whether this CPU runs pot's k-quant kernels.
pub fn available() -> bool {
    super::tiles::isa() >= super::tiles::Isa::Avx2
}

impl KMatrix {
    /// A k-quant CPU tensor `(n, k)` with whole super-blocks per row; `None` otherwise.
    pub fn new(weights: Arc<QTensor>) -> Option<Self> {
        let kind = KQuant::of(weights.dtype())?;
        let (n, k) = weights.shape().dims2().ok()?;
        let bytes = weights.data().ok()?.len();
        if !weights.device().is_cpu() || !Self::fits(kind, n, k, bytes) {
            return None;
        }
        Some(Self {
            n,
            k,
            kind,
            candle: OnceLock::from(QMatMul::QTensor(weights.clone())),
            blocks: Stored::Tensor(weights),
        })
    }

    /// A k-quant matrix `(n, k)` read in place from a mapped file's `blocks`; `None` unless
    /// `blocks` holds exactly `n` rows of whole super-blocks.
    pub fn mapped(kind: KQuant, n: usize, k: usize, blocks: Mapped) -> Option<Self> {
        if !Self::fits(kind, n, k, blocks.len()) {
            return None;
        }
        Some(Self {
            n,
            k,
            kind,
            candle: OnceLock::new(),
            blocks: Stored::Mapped(blocks),
        })
    }

    fn fits(kind: KQuant, n: usize, k: usize, bytes: usize) -> bool {
        k.is_multiple_of(QK_K)
            && Some(bytes)
                == n.checked_mul(k / QK_K)
                    .and_then(|b| b.checked_mul(kind.block_bytes()))
    }

    /// The blocks, row-major.
    fn data(&self) -> candle_core::Result<std::borrow::Cow<'_, [u8]>> {
        self.blocks.data()
    }

    /// candle's product over these blocks (copied out of the map the first time).
    fn candle(&self) -> candle_core::Result<&QMatMul> {
        if let Some(q) = self.candle.get() {
            return Ok(q);
        }
        let storage = candle_core::quantized::QStorage::from_data(
            self.data()?,
            &candle_core::Device::Cpu,
            self.kind.dtype(),
        )?;
        let q = QMatMul::QTensor(Arc::new(QTensor::new(storage, (self.n, self.k))?));
        Ok(self.candle.get_or_init(|| q))
    }

    /// `x (m, k)` row-major → `x · Wᵀ (m, n)` row-major on the tile kernels (many rows). Call
    /// only where `tiles::available()`.
    pub fn tiled(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        assert_eq!(x.len(), m * self.k, "activation shape");
        let data = self.data()?;
        let a = quantize_q8k(x);
        let rows = tiles::Rows {
            quants: &a.qs,
            scales: &a.d,
            sums: &[],
            isums: &[],
            bsums: &a.bsums,
        };
        let row_bytes = self.k / QK_K * self.kind.block_bytes();
        Ok(tiles::k_product(self.kind, self.n, self.k, m, &rows, |c| {
            &data[c * row_bytes..(c + 1) * row_bytes]
        }))
    }

    /// `x (m, k)` row-major → `x · Wᵀ (m, n)` row-major on pot's few-row kernel (Q4_K and
    /// Q6_K). Call only where `available()`.
    pub fn matmul(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        assert_eq!(x.len(), m * self.k, "activation shape");
        assert!(available(), "k-quant kernels need AVX2 and FMA");
        assert!(
            matches!(self.kind, KQuant::Q4K | KQuant::Q6K),
            "few-row kernel of {:?}",
            self.kind
        );
        let data = self.data()?;
        let a = quantize_q8k(x);
        let nb = self.k / QK_K;
        let size = self.kind.block_bytes();
        Ok(products(self.n, m, |c, r0, out| {
            let col = &data[c * nb * size..(c + 1) * nb * size];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA are present (asserted above); `col` holds `nb` blocks and
            // `a` holds rows `r0..r0 + out.len()` of `nb` super-blocks each.
            unsafe {
                avx2::dot_rows(self.kind, col, nb, &a, r0, out)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (col, r0, out);
        }))
    }
}

impl Product for KMatrix {
    fn ggml(
        &self,
    ) -> Option<(
        candle_core::quantized::GgmlDType,
        usize,
        usize,
        std::borrow::Cow<'_, [u8]>,
    )> {
        Some((self.kind.dtype(), self.n, self.k, self.blocks.data().ok()?))
    }
    /// The tile kernels from `MANY_ROWS` rows on, pot's few-row kernel below (Q4_K, Q6_K),
    /// candle's where pot has none for this CPU.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let m = b * t;
        if m >= MANY_ROWS && tiles::available() {
            return by_rows(x, self.n, |rows, m| self.tiled(rows, m));
        }
        if m >= MANY_ROWS || !matches!(self.kind, KQuant::Q4K | KQuant::Q6K) || !available() {
            return self.candle()?.forward(x);
        }
        by_rows(x, self.n, |rows, m| self.matmul(rows, m))
    }
}

/// llama.cpp's unpacking of a Q4_K block's 12 bytes of 6-bit fields (`get_scale_min_k4` for
/// all eight sub-blocks at once): 8 scales then 8 minima.
#[inline(always)]
fn scales_mins(q: &[u8]) -> [u8; 16] {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let w = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (u0, u1, u2) = (w(0), w(1), w(2));
    let t = [
        u0 & KMASK1,
        (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4),
        u1 & KMASK1,
        ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, v) in out.chunks_exact_mut(4).zip(t) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// llama.cpp's `quantize_row_q8_K_ref`, row by row: per super-block, the value of largest
/// magnitude `max` maps to -127 (iscale = -127 / max), quants are rounded half to even and
/// capped at 127, d = 1 / iscale, and each 16 quants are summed.
fn quantize_q8k(x: &[f32]) -> Q8KRows {
    #[cfg(target_arch = "x86_64")]
    if super::tiles::isa() >= super::tiles::Isa::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (tiles::isa).
        return unsafe { quantize_q8k_avx2(x) };
    }
    quantize_q8k_body(x)
}

/// [`quantize_q8k`] compiled for AVX2 (vector rounding, no library call per value).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_q8k_avx2(x: &[f32]) -> Q8KRows {
    quantize_q8k_body(x)
}

#[inline(always)]
fn quantize_q8k_body(x: &[f32]) -> Q8KRows {
    let blocks = x.len() / QK_K;
    let mut a = Q8KRows {
        d: Vec::with_capacity(blocks),
        qs: Vec::with_capacity(x.len()),
        bsums: Vec::with_capacity(blocks * 16),
    };
    for block in x.chunks_exact(QK_K) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in block {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            a.d.push(0.0);
            a.qs.extend(std::iter::repeat_n(0, QK_K));
            a.bsums.extend(std::iter::repeat_n(0, 16));
            continue;
        }
        let iscale = -127.0 / max;
        let start = a.qs.len();
        a.qs.extend(
            block
                .iter()
                .map(|&v| ((iscale * v).round_ties_even() as i32).min(127) as i8),
        );
        for g in a.qs[start..].chunks_exact(16) {
            a.bsums.push(g.iter().map(|&q| q as i16).sum());
        }
        a.d.push(1.0 / iscale);
    }
    a
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{scales_mins, KQuant as Kind, Q8KRows, Q4K_BYTES, Q6K_BYTES, QK_K};
    use crate::model::q8::avx2::{hsum, hsum4};
    use std::arch::x86_64::*;

    /// Dot products of one weight row (`nb` blocks) with activation rows `r0..r0 + out.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows(
        kind: Kind,
        col: &[u8],
        nb: usize,
        a: &Q8KRows,
        r0: usize,
        out: &mut [f32],
    ) {
        match (kind, out.len()) {
            (Kind::Q4K, 1) => q4k::<1>(col, nb, a, r0, out),
            (Kind::Q4K, 2) => q4k::<2>(col, nb, a, r0, out),
            (Kind::Q4K, 3) => q4k::<3>(col, nb, a, r0, out),
            (Kind::Q4K, _) => q4k::<4>(col, nb, a, r0, out),
            (Kind::Q6K, 1) => q6k::<1>(col, nb, a, r0, out),
            (Kind::Q6K, 2) => q6k::<2>(col, nb, a, r0, out),
            (Kind::Q6K, 3) => q6k::<3>(col, nb, a, r0, out),
            (Kind::Q6K, _) => q6k::<4>(col, nb, a, r0, out),
            _ => unreachable!("few-row kernel of {kind:?}"),
        }
    }

    /// Q4_K: per super-block, Σ_j sc_j · (q4 · q8 over sub-block j) in i32, times d_w · d_a,
    /// minus dmin_w · d_a · Σ_j min_j · (sum of sub-block j's activation quants).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q4k<const R: usize>(col: &[u8], nb: usize, a: &Q8KRows, r0: usize, out: &mut [f32]) {
        assert!(col.len() >= nb * Q4K_BYTES && out.len() >= R);
        assert!(a.d.len() >= (r0 + R) * nb);
        let m4 = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_m = [_mm_setzero_ps(); R];
        let aq = a.qs.as_ptr();
        for b in 0..nb {
            let raw = col.get_unchecked(b * Q4K_BYTES..(b + 1) * Q4K_BYTES);
            let d = half::f16::from_le_bytes([raw[0], raw[1]]).to_f32();
            let dmin = half::f16::from_le_bytes([raw[2], raw[3]]).to_f32();
            let sm = scales_mins(&raw[4..16]);
            let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(sm.as_ptr().add(8) as *const __m128i));
            let q4 = raw.as_ptr().add(16);
            let mut sumi = [_mm256_setzero_si256(); R];
            for j in 0..4 {
                let scale_l = _mm256_set1_epi16(sm[2 * j] as i16);
                let scale_h = _mm256_set1_epi16(sm[2 * j + 1] as i16);
                let bits = _mm256_loadu_si256(q4.add(32 * j) as *const __m256i);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                for (r, s) in sumi.iter_mut().enumerate() {
                    let y = aq.add(((r0 + r) * nb + b) * QK_K + 64 * j);
                    let yl = _mm256_loadu_si256(y as *const __m256i);
                    let yh = _mm256_loadu_si256(y.add(32) as *const __m256i);
                    let pl = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(lo, yl));
                    let ph = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(hi, yh));
                    *s = _mm256_add_epi32(*s, _mm256_add_epi32(pl, ph));
                }
            }
            for r in 0..R {
                let ab = (r0 + r) * nb + b;
                let yd = *a.d.get_unchecked(ab);
                acc[r] =
                    _mm256_fmadd_ps(_mm256_set1_ps(yd * d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
                let bs = _mm256_loadu_si256(a.bsums.as_ptr().add(ab * 16) as *const __m256i);
                let q8s =
                    _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
                let prod = _mm_madd_epi16(mins, q8s);
                acc_m[r] = _mm_fmadd_ps(_mm_set1_ps(-yd * dmin), _mm_cvtepi32_ps(prod), acc_m[r]);
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]) + hsum4(acc_m[r]);
        }
    }

    /// Q6_K: per super-block, Σ_j sc_j · (q6 · q8 over sub-block j of 16) in i32, with the
    /// stored offset of 32 taken off as 32 · Σ_j sc_j · (activation sum of sub-block j), times
    /// d_w · d_a.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn q6k<const R: usize>(col: &[u8], nb: usize, a: &Q8KRows, r0: usize, out: &mut [f32]) {
        assert!(col.len() >= nb * Q6K_BYTES && out.len() >= R);
        assert!(a.d.len() >= (r0 + R) * nb);
        let m3 = _mm256_set1_epi8(3);
        let m15 = _mm256_set1_epi8(15);
        let mut acc = [_mm256_setzero_ps(); R];
        let w = col.as_ptr();
        let aq = a.qs.as_ptr();
        for b in 0..nb {
            let blk = w.add(b * Q6K_BYTES);
            let d = half::f16::from_le_bytes([*blk.add(208), *blk.add(209)]).to_f32();
            let sc = blk.add(192) as *const i8;
            let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
            let ql = blk;
            let qh = blk.add(128);
            let mut sumi = [_mm256_setzero_si256(); R];
            for j in 0..2 {
                let bits1 = _mm256_loadu_si256(ql.add(64 * j) as *const __m256i);
                let bits2 = _mm256_loadu_si256(ql.add(64 * j + 32) as *const __m256i);
                let bits_h = _mm256_loadu_si256(qh.add(32 * j) as *const __m256i);
                let h0 = _mm256_slli_epi16(_mm256_and_si256(bits_h, m3), 4);
                let h1 = _mm256_slli_epi16(_mm256_and_si256(bits_h, _mm256_set1_epi8(12)), 2);
                let h2 = _mm256_and_si256(bits_h, _mm256_set1_epi8(48));
                let h3 = _mm256_srli_epi16(_mm256_and_si256(bits_h, _mm256_set1_epi8(-64)), 2);
                let q = [
                    _mm256_or_si256(_mm256_and_si256(bits1, m15), h0),
                    _mm256_or_si256(_mm256_and_si256(bits2, m15), h1),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits1, 4), m15), h2),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits2, 4), m15), h3),
                ];
                // Sub-blocks of 16: the low 128 bits of a product cover the first 16 values.
                let s: [__m256i; 4] = std::array::from_fn(|i| {
                    let at = 8 * j + 2 * i;
                    _mm256_set_m128i(
                        _mm_set1_epi16(*sc.add(at + 1) as i16),
                        _mm_set1_epi16(*sc.add(at) as i16),
                    )
                });
                for (r, acc_i) in sumi.iter_mut().enumerate() {
                    let y = aq.add(((r0 + r) * nb + b) * QK_K + 128 * j);
                    for i in 0..4 {
                        let yi = _mm256_loadu_si256(y.add(32 * i) as *const __m256i);
                        let p = _mm256_madd_epi16(s[i], _mm256_maddubs_epi16(q[i], yi));
                        *acc_i = _mm256_add_epi32(*acc_i, p);
                    }
                }
            }
            for r in 0..R {
                let ab = (r0 + r) * nb + b;
                let bs = _mm256_loadu_si256(a.bsums.as_ptr().add(ab * 16) as *const __m256i);
                let sub = _mm256_slli_epi32(_mm256_madd_epi16(bs, scales16), 5);
                let s = _mm256_sub_epi32(sumi[r], sub);
                let yd = *a.d.get_unchecked(ab);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(yd * d), _mm256_cvtepi32_ps(s), acc[r]);
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::q8::tests::candle_product;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Tensor};

    /// The same products as candle's Q4_K and Q6_K kernels (which follow llama.cpp's), for
    /// 1 to 9 activation rows (every remainder of the 4-row groups) and column counts that
    /// do and do not fill whole tiles.
    #[test]
    fn matches_candles_products() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX2/FMA, so pot uses candle's kernels");
            return;
        }
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            for n in [70, 64] {
                check(dtype, n);
            }
        }
    }

    /// Every k-quant through `forward`, for 1 to 21 rows: pot's tile kernels from
    /// `MANY_ROWS` rows on (where this CPU runs them), against candle's products.
    #[test]
    fn every_kquant_matches_candles_products_through_forward() {
        for dtype in [
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let (n, k) = (70, 512);
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 + ((i / k) as f32 * 0.01))
                .collect();
            let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            let q = Arc::new(QTensor::quantize(&wt, dtype).unwrap());
            let mine = KMatrix::new(q.clone()).unwrap();
            let qm = QMatMul::QTensor(q);
            for m in [1, 7, 8, 9, 13, 21] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.07 + (i % 7) as f32 * 0.001)
                    .collect();
                let want = candle_product(&qm, &x, m, k);
                let got: Vec<f32> = mine
                    .forward(&Tensor::from_slice(&x, (1, m, k), &Device::Cpu).unwrap())
                    .and_then(|y| y.flatten_all()?.to_vec1())
                    .unwrap();
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                        "{dtype:?} m={m} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    fn check(dtype: GgmlDType, n: usize) {
        let k = 512;
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 + ((i / k) as f32 * 0.01))
            .collect();
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&wt, dtype).unwrap();
        let q = Arc::new(q);
        let mine = KMatrix::new(q.clone()).unwrap();
        // The same blocks read in place from a mapped file: the same kernels, bit for bit.
        let kind = KQuant::of(dtype).unwrap();
        let in_place = KMatrix::mapped(
            kind,
            n,
            k,
            crate::model::mapped::tests::mapped(&q.data().unwrap()),
        )
        .unwrap();
        let qm = QMatMul::QTensor(q);
        // pot's kernel for every row count; through `forward`, candle's from MANY_ROWS on.
        for m in 1..=MANY_ROWS + 1 {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.07 + (i % 7) as f32 * 0.001)
                .collect();
            let want = candle_product(&qm, &x, m, k);
            let got = mine.matmul(&x, m).unwrap();
            let through: Vec<f32> = mine
                .forward(&Tensor::from_slice(&x, (1, m, k), &Device::Cpu).unwrap())
                .and_then(|y| y.flatten_all()?.to_vec1())
                .unwrap();
            let mapped: Vec<f32> = in_place
                .forward(&Tensor::from_slice(&x, (1, m, k), &Device::Cpu).unwrap())
                .and_then(|y| y.flatten_all()?.to_vec1())
                .unwrap();
            assert_eq!(
                mapped, through,
                "{dtype:?} n={n} m={m}: in place vs in memory"
            );
            for got in [got, through] {
                assert_eq!(got.len(), want.len());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                        "{dtype:?} n={n} m={m} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// The unpacked 6-bit fields are llama.cpp's `get_scale_min_k4` for every sub-block.
    #[test]
    fn scales_unpack_as_get_scale_min_k4() {
        let q: Vec<u8> = (0..12u32).map(|i| (i * 97 + 13) as u8).collect();
        let got = scales_mins(&q);
        for j in 0..8 {
            let (sc, mn) = if j < 4 {
                (q[j] & 63, q[j + 4] & 63)
            } else {
                (
                    (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
                    (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
                )
            };
            assert_eq!((got[j], got[8 + j]), (sc, mn), "sub-block {j}");
        }
    }

    /// Activation rounding as llama.cpp's Q8_K: the largest magnitude maps to ∓127, sums per
    /// 16 match the quants, and an all-zero block stays zero.
    #[test]
    fn q8k_rounds_as_llama_cpp() {
        let mut x: Vec<f32> = (0..QK_K).map(|i| (i as f32 - 100.0) * 0.5).collect();
        x.extend(std::iter::repeat_n(0.0, QK_K));
        let a = quantize_q8k(&x);
        // max is x[255] = 77.5 → iscale = -127/77.5, d = -77.5/127.
        assert_eq!(a.qs[255], -127);
        assert!((a.d[0] + 77.5 / 127.0).abs() < 1e-6);
        assert_eq!(a.qs[100], 0);
        for (g, s) in a.qs[..QK_K].chunks(16).zip(&a.bsums) {
            assert_eq!(g.iter().map(|&q| q as i16).sum::<i16>(), *s);
        }
        assert_eq!(a.d[1], 0.0);
        assert!(a.qs[QK_K..].iter().all(|&q| q == 0));
    }
}
