//! Self-attention on the CPU in one pass per query row: scores against the visible keys only,
//! softmax, the attention weights rounded to f16 where llama.cpp rounds them, and the weighted
//! sum of the values, written straight into the `(t, heads·head_dim)` layout the output
//! projection reads.
//!
//! The general path (candle's matrix products, then scale, mask, softmax and rounding as
//! separate passes over a `(heads, t, kv)` score tensor) spent an eighth of a 256-token prompt
//! pass of Qwen 0.5B here (about 200 ms of 1,550), mostly in passes over masked scores and
//! single-threaded conversions; a causal mask hides half of the scores, which this never
//! computes. This takes about 90 ms (`examples/attention_kernel.rs`: 3.6 ms a layer). The
//! arithmetic is the same: f32 dot products of the (already rounded) queries and keys, times
//! the scale, plus the mask; the row's maximum subtracted before `exp` (the vectorized one of
//! [`super::vexp`], within 2.5 ulp-scale error, as llama.cpp uses its own); each weight divided
//! by the row's sum; f32 products with the (already rounded) values. The order of the sums
//! differs, as it does between any two matrix-product kernels. Every row is computed alone:
//! a row's result does not depend on the other rows of its chunk, only on whether the chunk
//! has fewer than 8 rows (keys read in place) or more (keys transposed).
//!
//! Work is split by (head, block of query rows) over candle's worker pool.

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: `heads` is a multiple of it).
    pub kv_heads: usize,
    /// New query rows.
    pub t: usize,
    /// Keys and values visible to the chunk (cached ones and the new ones).
    pub kv: usize,
    /// Values per head.
    pub head_dim: usize,
}

/// The additive mask `(t, start + t)` of `t` new queries after `start` cached positions: 0
/// where query `i` may see key `j`, -inf elsewhere. Causal; with a sliding `window`, keys
/// `window` or more positions behind the query are hidden too (llama.cpp's standard SWA).
pub fn causal_mask(t: usize, start: usize, window: Option<usize>) -> Vec<f32> {
    let kv = start + t;
    (0..t)
        .flat_map(|i| {
            let q = start + i;
            (0..kv).map(move |j| {
                if j > q || window.is_some_and(|w| q - j >= w) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect()
}

/// Query rows per unit of work.
const ROWS: usize = 16;

/// `softmax(q·kᵀ · scale + mask) · v` for every head: `q` is `(heads, t, head_dim)`, `k` and
/// `v` are `(kv_heads, kv, head_dim)`, `mask` (if any) is `(t, kv)` of 0 and -inf. Returns
/// `(t, heads·head_dim)`. With `round_f16`, the attention weights are rounded to f16 before
/// they weigh the values (llama.cpp's f16 product).
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    d: Dims,
    scale: f32,
    round_f16: bool,
) -> Vec<f32> {
    let Dims {
        heads,
        kv_heads,
        t,
        kv,
        head_dim: hd,
    } = d;
    assert!(
        kv_heads > 0 && heads % kv_heads == 0,
        "query heads group over key heads"
    );
    assert_eq!(q.len(), heads * t * hd, "query shape");
    assert_eq!(k.len(), kv_heads * kv * hd, "key shape");
    assert_eq!(v.len(), kv_heads * kv * hd, "value shape");
    if let Some(m) = mask {
        assert_eq!(m.len(), t * kv, "mask shape");
    }
    let group = heads / kv_heads;
    let blocks = t.div_ceil(ROWS);
    let mut out = vec![0f32; t * heads * hd];
    let dst = out.as_mut_ptr() as usize;
    let width = heads * hd;
    // With several query rows, keys are transposed per head, `(kv_heads, head_dim, kvp)`: a
    // query meets a block of keys per vector step, each lane one key's running sum, with no
    // horizontal sums; rows are padded with zeros to whole blocks, so every block is full.
    // With a few rows (generation), the copy would cost more than it saves: keys are read in
    // place, one dot product each.
    let transpose = t >= TRANSPOSE_FROM;
    let kvp = if transpose {
        kv.div_ceil(BLOCK) * BLOCK
    } else {
        kv
    };
    let mut kt = Vec::new();
    if transpose {
        kt = vec![0f32; kv_heads * hd * kvp];
        for kh in 0..kv_heads {
            for j in 0..kv {
                for l in 0..hd {
                    kt[(kh * hd + l) * kvp + j] = k[(kh * kv + j) * hd + l];
                }
            }
        }
    }
    let kt = &kt;
    candle_core::utils::barrier_pool().execute_chunked(heads * blocks, |units| {
        let mut p = vec![0f32; kvp];
        for unit in units {
            let (h, b) = (unit / blocks, unit % blocks);
            let kh = h / group;
            let keys = if transpose {
                Keys::Transposed {
                    kt: &kt[kh * kvp * hd..(kh + 1) * kvp * hd],
                    kvp,
                }
            } else {
                Keys::Rows(&k[kh * kv * hd..(kh + 1) * kv * hd])
            };
            let values = &v[kh * kv * hd..(kh + 1) * kv * hd];
            for i in b * ROWS..t.min((b + 1) * ROWS) {
                let qi = &q[(h * t + i) * hd..(h * t + i + 1) * hd];
                let mrow = mask.map(|m| &m[i * kv..(i + 1) * kv]);
                // SAFETY: units are disjoint (head, rows) pairs, so each output slice (row i,
                // head h) is written by one worker only.
                let y = unsafe {
                    std::slice::from_raw_parts_mut((dst as *mut f32).add(i * width + h * hd), hd)
                };
                row(qi, keys, values, mrow, scale, round_f16, &mut p, y);
            }
        }
    });
    out
}

/// Keys (or value columns) per register block: eight 8-wide vectors.
const BLOCK: usize = 64;

/// From this many query rows on, keys are transposed first.
const TRANSPOSE_FROM: usize = 8;

/// One head's keys.
#[derive(Clone, Copy)]
enum Keys<'a> {
    /// `(kv, head_dim)`, as cached.
    Rows(&'a [f32]),
    /// `(head_dim, kvp)`, each row padded with zeros to `kvp`, a whole number of blocks.
    Transposed { kt: &'a [f32], kvp: usize },
}

/// One query row against its visible keys; `p` is scratch of at least `kv` values (`kvp` for
/// transposed keys), `y` the output. Compiled twice: for AVX2 with FMA, chosen when the CPU has
/// them (`tiles::isa`), and portable.
#[allow(clippy::too_many_arguments)]
fn row(
    q: &[f32],
    keys: Keys<'_>,
    values: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    round_f16: bool,
    p: &mut [f32],
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::tiles::isa() >= super::tiles::Isa::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA (tiles::isa).
        return unsafe { row_avx2(q, keys, values, mask, scale, round_f16, p, y) };
    }
    row_body(q, keys, values, mask, scale, round_f16, p, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_avx2(
    q: &[f32],
    keys: Keys<'_>,
    values: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    round_f16: bool,
    p: &mut [f32],
    y: &mut [f32],
) {
    row_body(q, keys, values, mask, scale, round_f16, p, y)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_body(
    q: &[f32],
    keys: Keys<'_>,
    values: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
    round_f16: bool,
    p: &mut [f32],
    y: &mut [f32],
) {
    let hd = q.len();
    let kv = mask.map_or(values.len() / hd, |m| m.len());
    let visible = |j: usize| mask.is_none_or(|m| m[j] != f32::NEG_INFINITY);
    // The span of visible keys (causal and sliding masks hide a prefix and a suffix).
    let Some(lo) = (0..kv).find(|&j| visible(j)) else {
        y.fill(f32::NAN); // as softmax over nothing
        return;
    };
    let hi = (lo..kv).rev().find(|&j| visible(j)).map_or(lo, |j| j) + 1;
    match keys {
        Keys::Transposed { kt, kvp } => scores(q, kt, kvp, lo, hi, &mut p[lo..]),
        Keys::Rows(k) => {
            for (j, pj) in (lo..hi).zip(p[lo..hi].iter_mut()) {
                *pj = dot(q, &k[j * hd..(j + 1) * hd]);
            }
        }
    }
    let mut max = f32::NEG_INFINITY;
    for (j, pj) in (lo..hi).zip(p[lo..hi].iter_mut()) {
        let m = mask.map_or(0.0, |m| m[j]);
        *pj = if m == f32::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            *pj * scale + m
        };
        max = max.max(*pj);
    }
    for pj in p[lo..hi].iter_mut() {
        *pj -= max;
    }
    super::vexp::exp_slice(&mut p[lo..hi]);
    if let Some(m) = mask {
        for (pj, &mj) in p[lo..hi].iter_mut().zip(&m[lo..hi]) {
            if mj == f32::NEG_INFINITY {
                *pj = 0.0;
            }
        }
    }
    let sum: f32 = p[lo..hi].iter().sum();
    for pj in p[lo..hi].iter_mut() {
        *pj /= sum;
        if round_f16 {
            *pj = half::f16::from_f32(*pj).to_f32();
        }
    }
    weigh(&p[lo..hi], &values[lo * hd..hi * hd], y);
}

/// `s[j - lo] = q · key j` for keys `lo..hi` of `kt` (`(head_dim, kvp)`, rows padded to whole
/// blocks; `s` holds up to `kvp - lo`), a block of keys at a time with their sums in registers.
#[inline(always)]
fn scores(q: &[f32], kt: &[f32], kvp: usize, lo: usize, hi: usize, s: &mut [f32]) {
    let mut j = lo;
    while j < hi {
        // The last block may start past kvp - BLOCK when lo is not block-aligned: start it
        // earlier (those keys are computed twice, the same way).
        let j0 = j.min(kvp - BLOCK);
        let mut acc = [0f32; BLOCK];
        for (l, &ql) in q.iter().enumerate() {
            let kl: &[f32; BLOCK] = kt[l * kvp + j0..l * kvp + j0 + BLOCK]
                .try_into()
                .expect("a block");
            for c in 0..BLOCK {
                acc[c] = ql.mul_add(kl[c], acc[c]);
            }
        }
        let n = (hi - j).min(BLOCK - (j - j0));
        s[j - lo..j - lo + n].copy_from_slice(&acc[j - j0..j - j0 + n]);
        j += n;
    }
}

/// An f32 dot product in eight lanes (vectorized by the compiler), then the lanes summed.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y = Σ_j w[j] · values[j]` (`values` `(n, head_dim)` rows), a block of columns at a time
/// with their sums in registers.
#[inline(always)]
fn weigh(w: &[f32], values: &[f32], y: &mut [f32]) {
    let hd = y.len();
    let mut c0 = 0;
    while c0 + BLOCK <= hd {
        let mut acc = [0f32; BLOCK];
        for (j, &wj) in w.iter().enumerate() {
            let vj: &[f32; BLOCK] = values[j * hd + c0..j * hd + c0 + BLOCK]
                .try_into()
                .expect("a block");
            for c in 0..BLOCK {
                acc[c] = wj.mul_add(vj[c], acc[c]);
            }
        }
        y[c0..c0 + BLOCK].copy_from_slice(&acc);
        c0 += BLOCK;
    }
    let rest = hd - c0;
    if rest > 0 {
        let mut acc = [0f32; BLOCK];
        for (j, &wj) in w.iter().enumerate() {
            for (a, &vc) in acc.iter_mut().zip(&values[j * hd + c0..(j + 1) * hd]) {
                *a = wj.mul_add(vc, *a);
            }
        }
        y[c0..].copy_from_slice(&acc[..rest]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook computation in f64 (weights rounded to f16 when asked).
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: Option<&[f32]>,
        d: Dims,
        scale: f32,
        round: bool,
    ) -> Vec<f32> {
        let hd = d.head_dim;
        let group = d.heads / d.kv_heads;
        let mut out = vec![0f32; d.t * d.heads * hd];
        for h in 0..d.heads {
            let kh = h / group;
            for i in 0..d.t {
                let s: Vec<f64> = (0..d.kv)
                    .map(|j| {
                        let m = mask.map_or(0.0, |m| m[i * d.kv + j]) as f64;
                        (0..hd)
                            .map(|l| {
                                q[(h * d.t + i) * hd + l] as f64
                                    * k[(kh * d.kv + j) * hd + l] as f64
                            })
                            .sum::<f64>()
                            * scale as f64
                            + m
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for l in 0..hd {
                    out[i * d.heads * hd + h * hd + l] = (0..d.kv)
                        .map(|j| {
                            let mut w = e[j] / sum;
                            if round {
                                w = half::f16::from_f32(w as f32).to_f32() as f64;
                            }
                            w * v[(kh * d.kv + j) * hd + l] as f64
                        })
                        .sum::<f64>()
                        as f32;
                }
            }
        }
        out
    }

    #[test]
    fn fused_attention_matches_the_textbook_computation() {
        // Grouped heads, a head size with a tail (12 = 8 + 4), a chunk after cached keys,
        // more rows than one unit of work, a sliding window, no mask (one query).
        for (heads, kv_heads, t, start, hd, window, with_mask) in [
            (4, 2, 37, 5, 12, None, true),
            (2, 2, 20, 0, 64, Some(6), true),
            (6, 3, 1, 9, 16, None, false),
        ] {
            let kv = start + t;
            let d = Dims {
                heads,
                kv_heads,
                t,
                kv,
                head_dim: hd,
            };
            let gen = |n: usize, f: f32| -> Vec<f32> {
                (0..n).map(|i| ((i as f32) * f).sin() * 0.9).collect()
            };
            let q = gen(heads * t * hd, 0.37);
            let k = gen(kv_heads * kv * hd, 0.61);
            let v = gen(kv_heads * kv * hd, 0.23);
            let mask = with_mask.then(|| causal_mask(t, start, window));
            for round in [false, true] {
                let got = attend(&q, &k, &v, mask.as_deref(), d, 0.125, round);
                let want = reference(&q, &k, &v, mask.as_deref(), d, 0.125, round);
                for (g, w) in got.iter().zip(&want) {
                    // f16 rounding of a weight can flip on the last f32 bit of the sum.
                    let tol = if round { 2e-3 } else { 1e-5 };
                    assert!((g - w).abs() <= tol, "{d:?} round={round}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_the_rows_beside_it() {
        // The last row of a 20-row chunk equals the same query as the last of 8 new rows after
        // 12 cached keys (both with transposed keys: the same sums), and is within f32
        // rounding of it alone after 19 (keys read in place: another order of the sums).
        let (heads, kv_heads, hd, t) = (2, 1, 16, 20);
        let gen =
            |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32) * f).cos()).collect() };
        let q = gen(heads * t * hd, 0.41);
        let k = gen(kv_heads * t * hd, 0.17);
        let v = gen(kv_heads * t * hd, 0.29);
        let d = Dims {
            heads,
            kv_heads,
            t,
            kv: t,
            head_dim: hd,
        };
        let all = attend(&q, &k, &v, Some(&causal_mask(t, 0, None)), d, 0.25, true);
        let last_rows = |n: usize| -> Vec<f32> {
            (0..heads)
                .flat_map(|h| q[(h * t + t - n) * hd..(h * t + t) * hd].to_vec())
                .collect()
        };
        let eight = attend(
            &last_rows(8),
            &k,
            &v,
            Some(&causal_mask(8, t - 8, None)),
            Dims { t: 8, ..d },
            0.25,
            true,
        );
        assert_eq!(&all[(t - 1) * heads * hd..], &eight[7 * heads * hd..]);
        let one = attend(&last_rows(1), &k, &v, None, Dims { t: 1, ..d }, 0.25, true);
        for (a, b) in all[(t - 1) * heads * hd..].iter().zip(&one) {
            assert!((a - b).abs() <= 1e-3 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }
}
