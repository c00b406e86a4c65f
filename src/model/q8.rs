//! An 8-bit matrix product for Q8_0 weights (blocks of 32 int8 values with one scale), the
//! arithmetic of llama.cpp's `ggml_vec_dot_q8_0_q8_0`: activations are rounded to Q8_0 per
//! row, integer dot products per block, scaled by both blocks' scales.
//!
//! candle multiplies Q8_0 one (row, column) pair at a time and converts both f16 scales on
//! every block; on the project machine that path was 70% of the Qwen 0.5B's time
//! (BENCHMARKS.md). Here the weight scales are converted once at load, each weight block is
//! loaded once for up to four activation rows, and columns are split across threads.

/// Values per block.
const QK: usize = 32;

/// A Q8_0 weight matrix `(n, k)`: `n` output rows of `k` inputs.
pub struct Q8Matrix {
    n: usize,
    k: usize,
    /// Per block scale, as f32 (the stored f16, exactly).
    scales: Vec<f32>,
    /// Per block 32 quants.
    quants: Vec<i8>,
}

/// Activations rounded to Q8_0: per row and block, a scale (f16-rounded) and 32 quants.
struct Q8Rows {
    scales: Vec<f32>,
    quants: Vec<i8>,
}

impl Q8Matrix {
    /// From GGUF Q8_0 bytes (per block: f16 scale, 32 × i8) of an `(n, k)` matrix.
    pub fn from_q8_0_bytes(bytes: &[u8], n: usize, k: usize) -> Option<Self> {
        if k % QK != 0 || bytes.len() != n * k / QK * 34 {
            return None;
        }
        let blocks = n * k / QK;
        let mut scales = Vec::with_capacity(blocks);
        let mut quants = Vec::with_capacity(blocks * QK);
        for b in bytes.chunks_exact(34) {
            scales.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            quants.extend(b[2..].iter().map(|&q| q as i8));
        }
        Some(Self {
            n,
            k,
            scales,
            quants,
        })
    }

    /// Rows of the output.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `x (m, k)` row-major → `x · Wᵀ (m, n)` row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "activation shape");
        let a = quantize_rows(x, m, k);
        let nb = k / QK;
        // Columns split across candle's CPU worker pool (its spinning workers hand work over
        // in microseconds, which one-token steps need); each range of columns is written for
        // every row, transposed, by exactly one worker.
        let mut out_t = vec![0f32; n * m];
        let dst = out_t.as_mut_ptr() as usize;
        candle_core::utils::barrier_pool().execute_chunked(n, |cols| {
            for c in cols {
                // SAFETY: column ranges are disjoint, so each `c` is written by one worker,
                // and `c * m + m <= n * m`.
                let col_out =
                    unsafe { std::slice::from_raw_parts_mut((dst as *mut f32).add(c * m), m) };
                let ws = &self.scales[c * nb..(c + 1) * nb];
                let wq = &self.quants[c * k..(c + 1) * k];
                let mut r = 0;
                while r < m {
                    let rows = (m - r).min(4);
                    dot_rows(ws, wq, &a, r, rows, nb, &mut col_out[r..r + rows]);
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
}

/// llama.cpp's `quantize_row_q8_0`: per block, d = max|x| / 127 (stored as f16), q = round(x / d).
fn quantize_rows(x: &[f32], m: usize, k: usize) -> Q8Rows {
    let nb = k / QK;
    let mut scales = Vec::with_capacity(m * nb);
    let mut quants = Vec::with_capacity(m * k);
    for block in x.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        scales.push(half::f16::from_f32(d).to_f32());
        quants.extend(block.iter().map(|v| (v * id).round() as i8));
    }
    Q8Rows { scales, quants }
}

/// Dot products of one weight row (column of the output) with activation rows
/// `r0..r0 + out.len()` (at most 4).
fn dot_rows(ws: &[f32], wq: &[i8], a: &Q8Rows, r0: usize, rows: usize, nb: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected; slices are in bounds by construction.
            unsafe { avx2::dot_rows(ws, wq, a, r0, rows, nb, out) };
            return;
        }
    }
    for (j, o) in out.iter_mut().enumerate().take(rows) {
        let r = r0 + j;
        let mut acc = 0f32;
        for b in 0..nb {
            let w = &wq[b * QK..(b + 1) * QK];
            let q = &a.quants[(r * nb + b) * QK..(r * nb + b + 1) * QK];
            let s: i32 = w.iter().zip(q).map(|(&x, &y)| x as i32 * y as i32).sum();
            acc += ws[b] * a.scales[r * nb + b] * s as f32;
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Q8Rows, QK};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// 8 partial sums (as f32) of the products of two blocks of 32 int8: llama.cpp's
    /// `mul_sum_i8_pairs_float` (|x| as u8 times y with x's sign, pairwise).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_dot(ax: __m256i, x: __m256i, y: __m256i) -> __m256 {
        let sy = _mm256_sign_epi8(y, x);
        let dot16 = _mm256_maddubs_epi16(ax, sy);
        let dot32 = _mm256_madd_epi16(dot16, _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(dot32)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_rows(
        ws: &[f32],
        wq: &[i8],
        a: &Q8Rows,
        r0: usize,
        rows: usize,
        nb: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); 4];
        let aq = a.quants.as_ptr();
        for b in 0..nb {
            let x = _mm256_loadu_si256(wq.as_ptr().add(b * QK) as *const __m256i);
            let ax = _mm256_sign_epi8(x, x);
            let wd = *ws.get_unchecked(b);
            for (j, acc) in acc.iter_mut().enumerate().take(rows) {
                let blk = (r0 + j) * nb + b;
                let y = _mm256_loadu_si256(aq.add(blk * QK) as *const __m256i);
                let d = _mm256_set1_ps(wd * *a.scales.get_unchecked(blk));
                *acc = _mm256_fmadd_ps(d, block_dot(ax, x, y), *acc);
            }
        }
        for (j, o) in out.iter_mut().enumerate().take(rows) {
            *o = hsum(acc[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    /// The same product as candle's Q8_0 kernels (which follow llama.cpp's), for 1, 3 and 7
    /// activation rows.
    #[test]
    fn matches_candles_q8_0_product() {
        let (n, k) = (70, 96);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&wt, GgmlDType::Q8_0).unwrap();
        let mine = Q8Matrix::from_q8_0_bytes(&q.data().unwrap(), n, k).unwrap();
        let qm = QMatMul::from_qtensor(q).unwrap();
        for m in [1usize, 3, 7] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.07)
                .collect();
            let want: Vec<f32> = qm
                .forward(&Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = mine.matmul(&x, m);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "m={m}: {g} vs {w}"
                );
            }
        }
    }
}
