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
//! weight rows. f16 weights are widened in the registers (bf16 ones once per tile, into a
//! small f32 buffer); from 8 activation rows on, whole tiles of 3 f16 rows are packed step by
//! step, so the tile reads them as one stream (3 % faster alone, `examples/half_kernel.rs`).
//! With one activation row (generation,
//! bound by streaming the weights from memory) the weight rows are read one after another,
//! each in order, with a software prefetch 1 KiB ahead: one sequential stream per worker
//! reaches 18–21 GB/s on 2 cores here, where four rows read side by side reached 12–15
//! (`examples/half_kernel.rs`); every row's sum keeps tinyBLAS's order (one 8-wide
//! accumulator, then the horizontal sum), so the numbers are the same either way. Tiles of
//! output columns are split across candle's worker pool.
//!
//! The vector kernels need x86-64 with AVX2, FMA and F16C, detected at run time; elsewhere a
//! scalar loop computes the same sums in another order.

use super::mapped::{Mapped, Stored};
use super::q8::{by_rows, Product};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// From this many activation rows on, activations are kept as f16 too (half the bytes to
/// stream from L2 for every group of weight rows); below, as f32 (one widening fewer per load,
/// while the weights stream from memory).
const MANY_ROWS: usize = 8;
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
    fn dtype(self) -> GgmlDType {
        match self {
            Kind::F16 => GgmlDType::F16,
            Kind::Bf16 => GgmlDType::BF16,
        }
    }

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
    weights: Stored,
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
            weights: Stored::Tensor(weights),
        })
    }

    /// An f16 or bf16 matrix `(n, k)` read in place from a mapped file; `None` unless `bytes`
    /// holds exactly `n · k` 2-byte-aligned values.
    pub fn mapped(dtype: GgmlDType, n: usize, k: usize, bytes: Mapped) -> Option<Self> {
        let kind = match dtype {
            GgmlDType::F16 => Kind::F16,
            GgmlDType::BF16 => Kind::Bf16,
            _ => return None,
        };
        let fits = Some(bytes.len()) == n.checked_mul(k).and_then(|v| v.checked_mul(2))
            && (bytes.as_ptr() as usize).is_multiple_of(2);
        fits.then_some(Self {
            n,
            k,
            kind,
            weights: Stored::Mapped(bytes),
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
        let mut out = vec![0f32; m * n];
        let dst = out.as_mut_ptr() as usize;
        let simd = simd_available();
        // f16 on x86 with F16C: both operands stay f16 and widen in the registers, as
        // tinyBLAS does; the activations, at half the bytes, stay in L2 while each group of
        // four weight rows (in L1) meets all of them. Otherwise (bf16, or no F16C): f32
        // activations (rounded to the weight's type) and each tile of weights widened once.
        let halves = simd && kind == Kind::F16;
        let a16: Vec<u16>;
        let a32: Vec<f32>;
        let a = if halves && m >= MANY_ROWS {
            a16 = x
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            Rows::F16(&a16)
        } else {
            a32 = x.iter().map(|&v| kind.round(v)).collect();
            Rows::F32(&a32)
        };
        // Whole tiles of RN activation rows, packed step by step (RN rows × 8 values, then the
        // next 8): the register tile reads one sequential stream instead of RN rows.
        let packed = match a {
            Rows::F16(a16) => pack(a16, m, k),
            Rows::F32(_) => Vec::new(),
        };
        let packed = &packed;
        candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(TILE), |tiles| {
            let mut buf = Vec::new();
            for tile in tiles {
                let c0 = tile * TILE;
                let cols = TILE.min(n - c0);
                let ws = &w[c0 * k..(c0 + cols) * k];
                // SAFETY: tiles are disjoint, so each output column is written by one worker.
                let out = unsafe { std::slice::from_raw_parts_mut(dst as *mut f32, m * n) };
                let at = Place { m, k, n, c0, cols };
                if halves {
                    block(Rows::F16(ws), a, at, out, simd, packed);
                } else {
                    buf.resize(cols * k, 0.0);
                    widen(kind, ws, &mut buf);
                    block(Rows::F32(&buf), a, at, out, simd, &[]);
                }
            }
        });
        Ok(out)
    }
}

impl Product for HalfMatrix {
    fn ggml(
        &self,
    ) -> Option<(
        candle_core::quantized::GgmlDType,
        usize,
        usize,
        std::borrow::Cow<'_, [u8]>,
    )> {
        Some((self.kind.dtype(), self.n, self.k, self.weights.data().ok()?))
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        by_rows(x, self.n, |rows, m| self.matmul(rows, m))
    }
}

/// Rows of `k` values, as f32 or as f16 bits.
#[derive(Clone, Copy)]
enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

impl Rows<'_> {
    fn get(&self, i: usize) -> f32 {
        match self {
            Rows::F32(v) => v[i],
            Rows::F16(v) => half::f16::from_bits(v[i]).to_f32(),
        }
    }
}

/// Where a tile of weight rows writes: `m` activation rows of `k` inputs, an output of `n`
/// columns, the tile's `cols` columns from `c0`.
#[derive(Clone, Copy)]
struct Place {
    m: usize,
    k: usize,
    n: usize,
    c0: usize,
    cols: usize,
}

/// `out[r][c0 + j] = a[r] · w[j]` for the tile's weight rows and all activation rows, one
/// register tile of [`RM`] weight rows × [`RN`] activation rows at a time, weight rows outer:
/// four weight rows stay in L1 while every activation row passes. `packed` holds the whole
/// tiles of f16 activation rows as [`pack`] lays them out (or nothing).
fn block(w: Rows<'_>, a: Rows<'_>, p: Place, out: &mut [f32], simd: bool, packed: &[u16]) {
    let Place { m, k, n, c0, cols } = p;
    let mut j = 0;
    while j < cols {
        let rm = RM.min(cols - j);
        let mut r = 0;
        while r < m {
            let rn = RN.min(m - r);
            let mut acc = [[0f32; RN]; RM];
            #[cfg(target_arch = "x86_64")]
            if let (true, Rows::F16(wh), Rows::F16(ah), RM, RN) =
                (simd && !packed.is_empty(), w, a, rm, rn)
            {
                // SAFETY: as below; packed tile r / RN exists since r + RN <= m.
                unsafe { avx2::tile_packed(wh, j, ah, r, k, packed, &mut acc) };
            } else if simd {
                // SAFETY: AVX2, FMA and F16C were detected; the rows read are inside `w` and
                // `a` (weight rows j..j + rm, activation rows r..r + rn, k values each).
                unsafe { avx2::tile(w, j, rm, a, r, rn, k, &mut acc) };
            } else {
                scalar_tile(w, j, rm, a, r, rn, k, &mut acc);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = simd;
                scalar_tile(w, j, rm, a, r, rn, k, &mut acc);
            }
            for (jj, row) in acc.iter().enumerate().take(rm) {
                for (rr, v) in row.iter().enumerate().take(rn) {
                    out[(r + rr) * n + c0 + j + jj] = *v;
                }
            }
            r += rn;
        }
        j += rm;
    }
}

#[allow(clippy::too_many_arguments)]
fn scalar_tile(
    w: Rows<'_>,
    j: usize,
    rm: usize,
    a: Rows<'_>,
    r: usize,
    rn: usize,
    k: usize,
    acc: &mut [[f32; RN]; RM],
) {
    for (jj, accs) in acc.iter_mut().enumerate().take(rm) {
        for (rr, o) in accs.iter_mut().enumerate().take(rn) {
            *o = (0..k)
                .map(|i| w.get((j + jj) * k + i) * a.get((r + rr) * k + i))
                .sum();
        }
    }
}

/// The whole tiles of [`RN`] rows of `a` (`m` rows of `k`), each as `k / 8` steps of RN rows ×
/// 8 values; the `k % 8` tail values and the last `m % RN` rows stay in `a` only.
fn pack(a: &[u16], m: usize, k: usize) -> Vec<u16> {
    let (tiles, steps) = (m / RN, k / 8);
    let mut packed = Vec::with_capacity(tiles * steps * RN * 8);
    for t in 0..tiles {
        for st in 0..steps {
            for q in 0..RN {
                let o = (t * RN + q) * k + st * 8;
                packed.extend_from_slice(&a[o..o + 8]);
            }
        }
    }
    packed
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
    super::tiles::isa() >= super::tiles::Isa::Avx2
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Rows, RM, RN};
    use crate::model::q8::avx2::hsum;
    use std::arch::x86_64::*;

    /// Dot products of weight rows `j..j + rm` with activation rows `r..r + rn` (at most 4
    /// and 3), twelve 8-wide accumulators at most.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile(
        w: Rows<'_>,
        j: usize,
        rm: usize,
        a: Rows<'_>,
        r: usize,
        rn: usize,
        k: usize,
        acc: &mut [[f32; RN]; RM],
    ) {
        match (w, a) {
            (Rows::F16(w), Rows::F16(a)) => {
                tile_w::<true, true>(w.as_ptr().cast(), j, rm, a.as_ptr().cast(), r, rn, k, acc)
            }
            (Rows::F16(w), Rows::F32(a)) => {
                tile_w::<true, false>(w.as_ptr().cast(), j, rm, a.as_ptr().cast(), r, rn, k, acc)
            }
            (Rows::F32(w), Rows::F32(a)) => {
                tile_w::<false, false>(w.as_ptr().cast(), j, rm, a.as_ptr().cast(), r, rn, k, acc)
            }
            (Rows::F32(_), Rows::F16(_)) => unreachable!("widened weights meet f32 activations"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_w<const WH: bool, const AH: bool>(
        w: *const u8,
        j: usize,
        rm: usize,
        a: *const u8,
        r: usize,
        rn: usize,
        k: usize,
        acc: &mut [[f32; RN]; RM],
    ) {
        match (rm, rn) {
            (4, 3) => tile_n::<WH, AH, 4, 3>(w, j, a, r, k, acc),
            (4, 2) => tile_n::<WH, AH, 4, 2>(w, j, a, r, k, acc),
            (4, 1) => tile_n::<WH, AH, 4, 1>(w, j, a, r, k, acc),
            (3, 3) => tile_n::<WH, AH, 3, 3>(w, j, a, r, k, acc),
            (3, 2) => tile_n::<WH, AH, 3, 2>(w, j, a, r, k, acc),
            (3, 1) => tile_n::<WH, AH, 3, 1>(w, j, a, r, k, acc),
            (2, 3) => tile_n::<WH, AH, 2, 3>(w, j, a, r, k, acc),
            (2, 2) => tile_n::<WH, AH, 2, 2>(w, j, a, r, k, acc),
            (2, 1) => tile_n::<WH, AH, 2, 1>(w, j, a, r, k, acc),
            (1, 3) => tile_n::<WH, AH, 1, 3>(w, j, a, r, k, acc),
            (1, 2) => tile_n::<WH, AH, 1, 2>(w, j, a, r, k, acc),
            _ => tile_n::<WH, AH, 1, 1>(w, j, a, r, k, acc),
        }
    }

    /// Eight values from element `at` (f16 when `H`, else f32), widened.
    #[inline(always)]
    unsafe fn load<const H: bool>(p: *const u8, at: usize) -> __m256 {
        if H {
            _mm256_cvtph_ps(_mm_loadu_si128((p as *const u16).add(at) as *const __m128i))
        } else {
            _mm256_loadu_ps((p as *const f32).add(at))
        }
    }

    #[inline(always)]
    unsafe fn scalar<const H: bool>(p: *const u8, at: usize) -> f32 {
        if H {
            half::f16::from_bits(*(p as *const u16).add(at)).to_f32()
        } else {
            *(p as *const f32).add(at)
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_n<const WH: bool, const AH: bool, const M: usize, const N: usize>(
        w: *const u8,
        j: usize,
        a: *const u8,
        r: usize,
        k: usize,
        acc: &mut [[f32; RN]; RM],
    ) {
        if N == 1 && WH {
            // One activation row against f16 weights streamed from memory (generation): the
            // rows one after another, each read in order, as one stream per worker with a
            // prefetch ahead of it. Four rows read side by side stream a fifth slower here
            // (measured by examples/half_kernel.rs). Each row's sum is the same single
            // accumulator as below, so the numbers do not change.
            for (p, accp) in acc.iter_mut().enumerate().take(M) {
                accp[0] = dot1::<AH>(w, (j + p) * k, a, r * k, k);
            }
            return;
        }
        let mut v = [[_mm256_setzero_ps(); N]; M];
        let full = k / 8 * 8;
        let mut i = 0;
        while i < full {
            let mut x = [_mm256_setzero_ps(); N];
            for (q, xq) in x.iter_mut().enumerate() {
                *xq = load::<AH>(a, (r + q) * k + i);
            }
            for (p, vp) in v.iter_mut().enumerate() {
                let wv = load::<WH>(w, (j + p) * k + i);
                for (q, vpq) in vp.iter_mut().enumerate() {
                    *vpq = _mm256_fmadd_ps(wv, x[q], *vpq);
                }
            }
            i += 8;
        }
        for p in 0..M {
            for q in 0..N {
                let mut s = hsum(v[p][q]);
                for t in full..k {
                    s += scalar::<WH>(w, (j + p) * k + t) * scalar::<AH>(a, (r + q) * k + t);
                }
                acc[p][q] = s;
            }
        }
    }

    /// A full 4 × 3 tile (weight rows `j..j + 4`, activation rows `r..r + 3`, `r` a multiple of
    /// 3) with the activations read from their packed tile: the same products and sums, in the
    /// same order, as [`tile`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tile_packed(
        w: &[u16],
        j: usize,
        a: &[u16],
        r: usize,
        k: usize,
        packed: &[u16],
        acc: &mut [[f32; RN]; RM],
    ) {
        let steps = k / 8;
        let pp = packed.as_ptr().add((r / RN) * steps * RN * 8);
        let wp = w.as_ptr();
        let mut v = [[_mm256_setzero_ps(); RN]; RM];
        for st in 0..steps {
            let mut x = [_mm256_setzero_ps(); RN];
            for (q, xq) in x.iter_mut().enumerate() {
                *xq = _mm256_cvtph_ps(_mm_loadu_si128(pp.add((st * RN + q) * 8) as *const __m128i));
            }
            for (p, vp) in v.iter_mut().enumerate() {
                let wv = _mm256_cvtph_ps(_mm_loadu_si128(
                    wp.add((j + p) * k + st * 8) as *const __m128i
                ));
                for (q, vpq) in vp.iter_mut().enumerate() {
                    *vpq = _mm256_fmadd_ps(wv, x[q], *vpq);
                }
            }
        }
        let full = steps * 8;
        for p in 0..RM {
            for q in 0..RN {
                let mut s = hsum(v[p][q]);
                for t in full..k {
                    s += scalar::<true>(wp.cast(), (j + p) * k + t)
                        * scalar::<true>(a.as_ptr().cast(), (r + q) * k + t);
                }
                acc[p][q] = s;
            }
        }
    }

    /// How far ahead of a weight row's reads (in values) the prefetch runs: 1 KiB.
    const PREFETCH: usize = 512;

    /// One f16 weight row (from value `wo`) · one activation row (from `ao`), eight values a
    /// step into one accumulator (tinyBLAS's order), prefetching a cache line per 32 values.
    #[inline(always)]
    unsafe fn dot1<const AH: bool>(
        w: *const u8,
        wo: usize,
        a: *const u8,
        ao: usize,
        k: usize,
    ) -> f32 {
        let mut s = _mm256_setzero_ps();
        let full = k / 8 * 8;
        let mut i = 0;
        while i < full {
            if i % 32 == 0 {
                // Past the matrix's end near the last rows: a prefetch never faults.
                _mm_prefetch::<_MM_HINT_T0>(
                    (w as *const u16).wrapping_add(wo + i + PREFETCH) as *const i8
                );
            }
            s = _mm256_fmadd_ps(load::<true>(w, wo + i), load::<AH>(a, ao + i), s);
            i += 8;
        }
        let mut t = hsum(s);
        while i < k {
            t += scalar::<true>(w, wo + i) * scalar::<AH>(a, ao + i);
            i += 1;
        }
        t
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
