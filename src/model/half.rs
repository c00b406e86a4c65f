//! Matrix products for 16-bit weights (f16 and bf16), kept in half precision in memory and
//! multiplied with llama.cpp's arithmetic: activations are rounded to the weight's type (its
//! `vec_dot_type`), and every product and sum is f32 (`ggml_vec_dot_f16` with F16C, and the
//! bf16 twin).
//!
//! candle widens 16-bit matrices to f32 at load: twice the memory of the file, and twice the
//! bytes to stream per generated token, which is what bounds generation. Here the file's
//! halves are read in place. Both operands of `x · Wᵀ` are contiguous along the inner
//! dimension (weight rows, activation rows), so, as llamafile's tinyBLAS does, a register
//! tile of 4 weight rows × 3 activation rows accumulates 12 dot products at once: each
//! 8-wide load of a weight row serves three activation rows and each activation load four
//! weight rows. With few activation rows (generation) weights are widened in the registers;
//! with many (prefill, teacher forcing) each worker widens a tile of weight rows once into a
//! small f32 buffer that every group of activation rows then reuses. Tiles of output columns
//! are split across candle's worker pool.
//!
//! The vector kernels need x86-64 with AVX2, FMA and F16C, detected at run time; elsewhere a
//! scalar loop computes the same sums in another order.

use super::q8::{by_rows, Product};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// From this many activation rows on, each tile of weight rows is widened to f32 once.
const MANY_ROWS: usize = 6;
/// Output columns (weight rows) per unit of work.
const TILE: usize = 32;
/// Register tile: weight rows × activation rows.
const RM: usize = 4;
const RN: usize = 3;

/// Which 16-bit type a matrix holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    F16,
    Bf16,
}

impl Kind {
    /// A value rounded to this type, and back.
    fn round(self, v: f32) -> f32 {
        match self {
            Kind::F16 => half::f16::from_f32(v).to_f32(),
            Kind::Bf16 => half::bf16::from_f32(v).to_f32(),
        }
    }

    fn widen(self, b: u16) -> f32 {
        match self {
            Kind::F16 => half::f16::from_bits(b).to_f32(),
            Kind::Bf16 => half::bf16::from_bits(b).to_f32(),
        }
    }
}

/// An f16 or bf16 weight matrix `(n, k)`: `n` output rows of `k` inputs, read in place.
pub struct HalfMatrix {
    n: usize,
    k: usize,
    kind: Kind,
    weights: Arc<QTensor>,
}

impl HalfMatrix {
    /// The matrix of a 2-D f16 or bf16 tensor on the CPU (`None` otherwise).
    pub fn new(weights: Arc<QTensor>) -> Option<Self> {
        let kind = match weights.dtype() {
            GgmlDType::F16 => Kind::F16,
            GgmlDType::BF16 => Kind::Bf16,
            _ => return None,
        };
        let (n, k) = weights.shape().dims2().ok()?;
        if !weights.device().is_cpu() || weights.data().ok()?.len() != n * k * 2 {
            return None;
        }
        Some(Self {
            n,
            k,
            kind,
            weights,
        })
    }

    /// `x (m, k)` row-major → `x · Wᵀ (m, n)` row-major, activations rounded to the weight's
    /// type first.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        assert_eq!(x.len(), m * self.k, "activation shape");
        let data = self.weights.data()?;
        // SAFETY: any bit pattern is a valid u16; align_to keeps the aligned middle only.
        let (head, w, tail) = unsafe { data.align_to::<u16>() };
        assert!(
            head.is_empty() && tail.is_empty(),
            "16-bit weights are stored 2-byte aligned"
        );
        let (n, k, kind) = (self.n, self.k, self.kind);
        let a: Vec<f32> = x.iter().map(|&v| kind.round(v)).collect();
        let mut out = vec![0f32; m * n];
        let dst = out.as_mut_ptr() as usize;
        let simd = simd_available();
        let widen_first = m >= MANY_ROWS || !simd || kind == Kind::Bf16;
        candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(TILE), |tiles| {
            let mut buf = Vec::new();
            for tile in tiles {
                let c0 = tile * TILE;
                let cols = TILE.min(n - c0);
                let ws = &w[c0 * k..(c0 + cols) * k];
                // SAFETY: tiles are disjoint, so each output column is written by one worker.
                let out = unsafe { std::slice::from_raw_parts_mut(dst as *mut f32, m * n) };
                if widen_first {
                    buf.resize(cols * k, 0.0);
                    widen(kind, ws, &mut buf);
                    block(Weights::F32(&buf), cols, &a, m, k, out, n, c0, simd);
                } else {
                    block(Weights::F16(ws), cols, &a, m, k, out, n, c0, simd);
                }
            }
        });
        Ok(out)
    }
}

impl Product for HalfMatrix {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        by_rows(x, self.n, |rows, m| self.matmul(rows, m))
    }
}

/// A tile of weight rows, widened or as stored (f16).
#[derive(Clone, Copy)]
enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

/// `out[r][c0 + j] = a[r] · w[j]` for the tile's `cols` weight rows and all `m` activation rows,
/// register tile by register tile, over blocks of [`KC`] inputs so that the weight rows and
/// the activation rows of a register tile are read from L1 (partial sums add up in `out`).
#[allow(clippy::too_many_arguments)]
fn block(
    w: Weights<'_>,
    cols: usize,
    a: &[f32],
    m: usize,
    k: usize,
    out: &mut [f32],
    n: usize,
    c0: usize,
    simd: bool,
) {
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let mut r = 0;
        while r < m {
            let rn = RN.min(m - r);
            let mut j = 0;
            while j < cols {
                let rm = RM.min(cols - j);
                let mut acc = [[0f32; RN]; RM];
                let at = Span { k, k0, kc };
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: AVX2, FMA and F16C were detected; the rows read are inside `w`
                    // and `a` (rows j..j + rm and r..r + rn, inputs k0..k0 + kc of k).
                    unsafe { avx2::tile(w, j, rm, a, r, rn, at, &mut acc) };
                } else {
                    scalar_tile(w, j, rm, a, r, rn, at, &mut acc);
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = simd;
                    scalar_tile(w, j, rm, a, r, rn, at, &mut acc);
                }
                for (jj, row) in acc.iter().enumerate().take(rm) {
                    for (rr, v) in row.iter().enumerate().take(rn) {
                        let o = &mut out[(r + rr) * n + c0 + j + jj];
                        *o = if k0 == 0 { *v } else { *o + *v };
                    }
                }
                j += rm;
            }
            r += rn;
        }
    }
}

/// Inputs per block of [`block`]: 32 weight rows and 3 activation rows of 256 f32 fit in L1.
const KC: usize = 256;

/// Which inputs a register tile sums over: `k0..k0 + kc` of rows `k` long.
#[derive(Clone, Copy)]
struct Span {
    k: usize,
    k0: usize,
    kc: usize,
}

#[allow(clippy::too_many_arguments)]
fn scalar_tile(
    w: Weights<'_>,
    j: usize,
    rm: usize,
    a: &[f32],
    r: usize,
    rn: usize,
    Span { k, k0, kc }: Span,
    acc: &mut [[f32; RN]; RM],
) {
    for (jj, accs) in acc.iter_mut().enumerate().take(rm) {
        let at = (j + jj) * k + k0;
        for (rr, o) in accs.iter_mut().enumerate().take(rn) {
            let x = &a[(r + rr) * k + k0..(r + rr) * k + k0 + kc];
            *o = match w {
                Weights::F32(w) => w[at..at + kc].iter().zip(x).map(|(p, q)| p * q).sum(),
                Weights::F16(w) => w[at..at + kc]
                    .iter()
                    .zip(x)
                    .map(|(p, q)| half::f16::from_bits(*p).to_f32() * q)
                    .sum(),
            };
        }
    }
}

/// Halves to f32.
fn widen(kind: Kind, src: &[u16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if kind == Kind::F16 && simd_available() {
        // SAFETY: F16C and AVX2 were detected; both slices have the same length.
        unsafe { avx2::widen_f16(src, dst) };
        return;
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = kind.widen(s);
    }
}

/// Whether the vector kernels run here: x86-64 with AVX2, FMA and F16C.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Span, Weights, RM, RN};
    use crate::model::q8::avx2::hsum;
    use std::arch::x86_64::*;

    /// Dot products of weight rows `j..j + rm` with activation rows `r..r + rn` (at most 4
    /// and 3) over the inputs of `at`, twelve 8-wide accumulators at most.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile(
        w: Weights<'_>,
        j: usize,
        rm: usize,
        a: &[f32],
        r: usize,
        rn: usize,
        at: Span,
        acc: &mut [[f32; RN]; RM],
    ) {
        match w {
            Weights::F32(w) => tile_w::<false>(w.as_ptr() as *const u8, j, rm, a, r, rn, at, acc),
            Weights::F16(w) => tile_w::<true>(w.as_ptr() as *const u8, j, rm, a, r, rn, at, acc),
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_w<const H: bool>(
        w: *const u8,
        j: usize,
        rm: usize,
        a: &[f32],
        r: usize,
        rn: usize,
        at: Span,
        acc: &mut [[f32; RN]; RM],
    ) {
        match (rm, rn) {
            (4, 3) => tile_n::<H, 4, 3>(w, j, a, r, at, acc),
            (4, 2) => tile_n::<H, 4, 2>(w, j, a, r, at, acc),
            (4, 1) => tile_n::<H, 4, 1>(w, j, a, r, at, acc),
            (3, 3) => tile_n::<H, 3, 3>(w, j, a, r, at, acc),
            (3, 2) => tile_n::<H, 3, 2>(w, j, a, r, at, acc),
            (3, 1) => tile_n::<H, 3, 1>(w, j, a, r, at, acc),
            (2, 3) => tile_n::<H, 2, 3>(w, j, a, r, at, acc),
            (2, 2) => tile_n::<H, 2, 2>(w, j, a, r, at, acc),
            (2, 1) => tile_n::<H, 2, 1>(w, j, a, r, at, acc),
            (1, 3) => tile_n::<H, 1, 3>(w, j, a, r, at, acc),
            (1, 2) => tile_n::<H, 1, 2>(w, j, a, r, at, acc),
            _ => tile_n::<H, 1, 1>(w, j, a, r, at, acc),
        }
    }

    /// Eight weights from element `at` of `w` (f16 when `H`, else f32), widened.
    #[inline(always)]
    unsafe fn load<const H: bool>(w: *const u8, at: usize) -> __m256 {
        if H {
            _mm256_cvtph_ps(_mm_loadu_si128((w as *const u16).add(at) as *const __m128i))
        } else {
            _mm256_loadu_ps((w as *const f32).add(at))
        }
    }

    #[inline(always)]
    unsafe fn scalar<const H: bool>(w: *const u8, at: usize) -> f32 {
        if H {
            half::f16::from_bits(*(w as *const u16).add(at)).to_f32()
        } else {
            *(w as *const f32).add(at)
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_n<const H: bool, const M: usize, const N: usize>(
        w: *const u8,
        j: usize,
        a: &[f32],
        r: usize,
        Span { k, k0, kc }: Span,
        acc: &mut [[f32; RN]; RM],
    ) {
        let mut v = [[_mm256_setzero_ps(); N]; M];
        let full = kc / 8 * 8;
        let ap = a.as_ptr();
        let mut i = k0;
        while i < k0 + full {
            let mut x = [_mm256_setzero_ps(); N];
            for (q, xq) in x.iter_mut().enumerate() {
                *xq = _mm256_loadu_ps(ap.add((r + q) * k + i));
            }
            for (p, vp) in v.iter_mut().enumerate() {
                let wv = load::<H>(w, (j + p) * k + i);
                for (q, vpq) in vp.iter_mut().enumerate() {
                    *vpq = _mm256_fmadd_ps(wv, x[q], *vpq);
                }
            }
            i += 8;
        }
        for p in 0..M {
            for q in 0..N {
                let mut s = hsum(v[p][q]);
                for t in k0 + full..k0 + kc {
                    s += scalar::<H>(w, (j + p) * k + t) * *ap.add((r + q) * k + t);
                }
                acc[p][q] = s;
            }
        }
    }

    /// f16 bits to f32, eight at a time.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn widen_f16(src: &[u16], dst: &mut [f32]) {
        let full = src.len() / 8 * 8;
        let mut i = 0;
        while i < full {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i) as *const __m128i));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
            i += 8;
        }
        for j in full..src.len() {
            dst[j] = half::f16::from_bits(src[j]).to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn matrix(dtype: GgmlDType, n: usize, k: usize) -> (HalfMatrix, Vec<f32>) {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i as f32 * 0.731).sin() * 0.5) + ((i % 13) as f32 - 6.0) * 0.01)
            .collect();
        let t = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let stored: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (HalfMatrix::new(Arc::new(q)).unwrap(), stored)
    }

    /// The f64 product of the stored weights with the activations rounded to `kind`.
    fn exact(kind: Kind, w: &[f32], x: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|i| w[c * k + i] as f64 * kind.round(x[r * k + i]) as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn half_products_match_the_exact_product_for_few_and_many_rows() {
        for (dtype, kind) in [(GgmlDType::F16, Kind::F16), (GgmlDType::BF16, Kind::Bf16)] {
            // k not a multiple of 8 exercises the tails; n = 37 is a whole tile of 32 columns
            // and a ragged one of 5 (register tiles of 4 and 1).
            let (n, k) = (37, 203);
            let (mat, stored) = matrix(dtype, n, k);
            for m in [1, 2, 3, 4, 5, 6, 7, 8, 13, 40] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.377).cos()).collect();
                let got = mat.matmul(&x, m).unwrap();
                let want = exact(kind, &stored, &x, n, k, m);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{dtype:?} m={m}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
