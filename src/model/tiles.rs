//! Products of many activation rows at once: prompt evaluation, and the pass of a diff or an
//! audit that needs logits at every position of a text.
//!
//! The weights are re-laid a tile of 16 output columns at a time, so that four consecutive
//! inputs of the 16 columns fill one 512-bit register (per block: `[group of 4][column][4
//! bytes]`). A kernel multiplies `R` activation rows against a tile: per group of four inputs
//! it loads the tile's weights once and, per row, broadcasts the row's four 8-bit activations,
//! so that one AVX-512 VNNI instruction (`vpdpbusd`) does 64 multiply-adds, for 16 columns at
//! once, with no horizontal sums. A tile is decoded from the stored blocks when a product needs
//! it, into a buffer of the worker's own (tens of KB, it stays in L2 while every row passes
//! over it), so the model keeps one copy of its weights.
//!
//! The integer arithmetic is llama.cpp's: the same 8-bit activations (Q8_0/Q8_1 per 32 values,
//! Q8_K per 256), the same integer dot products per block or sub-block, exact. Only the order
//! of the f32 sums over blocks differs, as it does between llama.cpp's own AVX2 and AVX-512
//! builds.
//!
//! Kernels are chosen when the program runs ([`isa`]), not when it is built: AVX-512 VNNI here,
//! AVX2 with FMA and F16C in `q8`, `kq` and `half`, portable code elsewhere. `POT_ISA=avx2` or
//! `POT_ISA=scalar` caps the choice, to measure or test a lesser CPU's path on a better one.

use std::sync::OnceLock;

/// Output columns per tile: one 512-bit register of i32 or f32 lanes.
pub const COLS: usize = 16;

/// The instruction sets pot's kernels use, best last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust (any CPU).
    Scalar,
    /// x86-64 AVX2 with FMA and F16C (Haswell, Zen and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL with VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later).
    Avx512Vnni,
}

impl Isa {
    /// How `pot --version` and the benchmarks name it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// The kernels this CPU runs: the best it has, capped by `POT_ISA` (`avx2`, `scalar`).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detected();
        match std::env::var("POT_ISA").ok().as_deref() {
            Some("scalar") | Some("portable") => Isa::Scalar,
            Some("avx2") => best.min(Isa::Avx2),
            _ => best,
        }
    })
}

/// The best instruction set this CPU has.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                return Isa::Avx512Vnni;
            }
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// From this many activation rows on, products go to the tile kernels where they run (a
/// tile's decoding is then shared by enough rows to pay for itself).
pub const MANY_ROWS: usize = 8;

/// Whether the many-row tile kernels run here (AVX-512 VNNI, or AVX2 at half the width).
pub fn available() -> bool {
    isa() >= Isa::Avx2
}

/// Activation rows rounded to 8 bits, as a tile kernel reads them.
pub struct Rows<'a> {
    /// Rows × `k` quants.
    pub quants: &'a [i8],
    /// Per row and block (32 values) or super-block (256): the scale.
    pub scales: &'a [f32],
    /// Blocks of 32: per row and block, scale × Σ quants (the Q4_1 minimum's partner), or
    /// empty. Super-blocks: unused.
    pub sums: &'a [f32],
    /// Blocks of 32: per row and block, Σ quants (the correction of signed weights moved to
    /// unsigned), or empty.
    pub isums: &'a [i32],
    /// Super-blocks: per row and sub-block of 16, Σ quants (llama.cpp's `bsums`).
    pub bsums: &'a [i16],
}

/// Per worker: the product of rows `r0..r0 + R` with one decoded tile, written to
/// `out[(r0 + r) * n + c0 + c]` for the tile's valid columns.
struct Out {
    ptr: usize,
    n: usize,
}

impl Out {
    /// # Safety
    /// Tiles must be disjoint in columns and `(r0 + R) * n <= len` of the buffer.
    unsafe fn put<const R: usize>(
        &self,
        vals: &[[f32; COLS]; R],
        r0: usize,
        c0: usize,
        cols: usize,
    ) {
        let base = self.ptr as *mut f32;
        for (r, row) in vals.iter().enumerate() {
            std::ptr::copy_nonoverlapping(row.as_ptr(), base.add((r0 + r) * self.n + c0), cols);
        }
    }
}

/// Runs `tile(t, rows-in-groups)` over tiles of columns on candle's worker pool, with a
/// per-chunk scratch buffer of `T`.
fn over_tiles<T>(n: usize, scratch: impl Fn() -> T + Sync, tile: impl Fn(&mut T, usize) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(COLS), |tiles| {
        let mut buf = scratch();
        for t in tiles {
            tile(&mut buf, t);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Blocks of 32: Q8_0, Q4_1, Q5_1 and affine quants with llama.cpp's 8-bit activations.

/// One weight row of a blocks-of-32 matrix.
#[derive(Clone, Copy)]
pub enum B32Column<'a> {
    /// pot's layout: block scales, block minima, quants (one byte each).
    Split(&'a [f32], Option<&'a [f32]>, &'a [u8]),
    /// The row's blocks as a GGUF file stores them, read in place.
    Blocks(B32Format, &'a [u8]),
}

/// A GGUF encoding in blocks of 32 values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B32Format {
    /// f16 scale, 32 × i8.
    Q8_0,
    /// f16 scale, 32 high bits, 16 bytes of nibbles; value `q − 16`.
    Q5_0,
    /// f16 scale, 16 bytes of nibbles; value `q − 8`.
    Q4_0,
    /// f16 scale, f16 minimum, 16 bytes of nibbles.
    Q4_1,
    /// f16 scale, f16 minimum, 32 high bits, 16 bytes of nibbles.
    Q5_1,
}

impl B32Format {
    /// The encoding of a GGML type, if it is one of these.
    pub fn of(dtype: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType as T;
        Some(match dtype {
            T::Q8_0 => B32Format::Q8_0,
            T::Q5_0 => B32Format::Q5_0,
            T::Q4_0 => B32Format::Q4_0,
            T::Q4_1 => B32Format::Q4_1,
            T::Q5_1 => B32Format::Q5_1,
            _ => return None,
        })
    }

    /// The GGML type.
    pub fn dtype(self) -> candle_core::quantized::GgmlDType {
        use candle_core::quantized::GgmlDType as T;
        match self {
            B32Format::Q8_0 => T::Q8_0,
            B32Format::Q5_0 => T::Q5_0,
            B32Format::Q4_0 => T::Q4_0,
            B32Format::Q4_1 => T::Q4_1,
            B32Format::Q5_1 => T::Q5_1,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            B32Format::Q8_0 => 34,
            B32Format::Q5_0 => 22,
            B32Format::Q4_0 => 18,
            B32Format::Q4_1 => 20,
            B32Format::Q5_1 => 24,
        }
    }

    /// Whether the quants are i8 (Q8_0's arithmetic) rather than unsigned with a minimum.
    pub fn signed(self) -> bool {
        matches!(self, B32Format::Q8_0 | B32Format::Q5_0 | B32Format::Q4_0)
    }

    /// One block → (scale, minimum, 32 quants: i8 as bytes when signed). The values are
    /// llama.cpp's: Q5_0 and Q4_0 as the i8 `q − 16` and `q − 8` their dot products use, which
    /// is how the Q8_0 kernel multiplies them exactly.
    #[inline(always)]
    pub fn decode(self, b: &[u8], q: &mut [u8; 32]) -> (f32, f32) {
        let d = f16(b, 0);
        let nibbles = |qs: &[u8], q: &mut [u8; 32], off: u8| {
            for j in 0..16 {
                q[j] = (qs[j] & 0x0f).wrapping_sub(off);
                q[j + 16] = (qs[j] >> 4).wrapping_sub(off);
            }
        };
        // Value `i`'s fifth bit is bit `i` of the block's 32 high bits.
        let high = |qh: u32, q: &mut [u8; 32]| {
            for (i, v) in q.iter_mut().enumerate() {
                *v |= (((qh >> i) & 1) as u8) << 4;
            }
        };
        let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        match self {
            B32Format::Q8_0 => {
                q.copy_from_slice(&b[2..34]);
                (d, 0.0)
            }
            B32Format::Q4_0 => {
                nibbles(&b[2..18], q, 8);
                (d, 0.0)
            }
            B32Format::Q5_0 => {
                nibbles(&b[6..22], q, 0);
                high(word(2), q);
                for v in q.iter_mut() {
                    *v = v.wrapping_sub(16);
                }
                (d, 0.0)
            }
            B32Format::Q4_1 => {
                nibbles(&b[4..20], q, 0);
                (d, f16(b, 2))
            }
            B32Format::Q5_1 => {
                nibbles(&b[8..24], q, 0);
                high(word(4), q);
                (d, f16(b, 2))
            }
        }
    }
}

/// A tile of a blocks-of-32 matrix: 16 columns, every block.
pub struct B32Tile {
    /// `[block][group of 4][column][4]` quants as stored (i8 when signed).
    w: Vec<u8>,
    /// `[block][column]` scales.
    scales: Vec<f32>,
    /// `[block][column]` minima (zero when the encoding has none).
    mins: Vec<f32>,
}

impl B32Tile {
    fn new(nb: usize) -> Self {
        Self {
            w: vec![0; nb * 32 * COLS],
            scales: vec![0.0; nb * COLS],
            mins: vec![0.0; nb * COLS],
        }
    }

    /// Column `c` from one weight row's block scales, minima and `nb * 32` quants; `None`
    /// clears it (past the matrix's last column).
    fn fill(&mut self, c: usize, col: Option<B32Column<'_>>) {
        let nb = self.scales.len() / COLS;
        match col {
            None => {
                for b in 0..nb {
                    self.scales[b * COLS + c] = 0.0;
                    self.mins[b * COLS + c] = 0.0;
                    for g in 0..8 {
                        let at = b * 32 * COLS + g * 4 * COLS + c * 4;
                        self.w[at..at + 4].fill(0);
                    }
                }
            }
            Some(B32Column::Blocks(format, row)) => {
                let size = format.block_bytes();
                let mut q = [0u8; 32];
                for b in 0..nb {
                    let (d, m) = format.decode(&row[b * size..(b + 1) * size], &mut q);
                    self.scales[b * COLS + c] = d;
                    self.mins[b * COLS + c] = m;
                    for g in 0..8 {
                        let at = b * 32 * COLS + g * 4 * COLS + c * 4;
                        self.w[at..at + 4].copy_from_slice(&q[g * 4..g * 4 + 4]);
                    }
                }
            }
            Some(B32Column::Split(scales, mins, quants)) => {
                for b in 0..nb {
                    self.scales[b * COLS + c] = scales[b];
                    self.mins[b * COLS + c] = mins.map_or(0.0, |m| m[b]);
                    for g in 0..8 {
                        let at = b * 32 * COLS + g * 4 * COLS + c * 4;
                        let from = b * 32 + g * 4;
                        self.w[at..at + 4].copy_from_slice(&quants[from..from + 4]);
                    }
                }
            }
        }
    }
}

/// `x (m, k) · Wᵀ` for a blocks-of-32 matrix `(n, k)` whose column `c` is `column(c)`: (block
/// scales, block minima, quants). `signed`: the quants are i8 (Q8_0's arithmetic), else
/// unsigned; `mins`: each block adds its minimum times the activation block's scaled sum
/// (Q4_1's). Returns `(m, n)` row-major. Call only where [`available`].
pub fn b32_product<'w>(
    n: usize,
    k: usize,
    m: usize,
    a: &Rows<'_>,
    signed: bool,
    mins: bool,
    column: impl Fn(usize) -> B32Column<'w> + Sync,
) -> Vec<f32> {
    assert!(available(), "tile kernels need AVX2");
    let wide = isa() >= Isa::Avx512Vnni;
    let nb = k / 32;
    assert!(a.quants.len() >= m * k && a.scales.len() >= m * nb);
    assert!(!signed || a.isums.len() >= m * nb);
    assert!(!mins || a.sums.len() >= m * nb);
    let mut out = vec![0f32; m * n];
    let dst = Out {
        ptr: out.as_mut_ptr() as usize,
        n,
    };
    over_tiles(
        n,
        || B32Tile::new(nb),
        |t, tile| {
            let c0 = tile * COLS;
            let cols = COLS.min(n - c0);
            for c in 0..COLS {
                t.fill(c, (c < cols).then(|| column(c0 + c)));
            }
            let mut r0 = 0;
            while r0 < m {
                let rows = m - r0;
                // SAFETY: the kernel's instruction set is present (asserted, `wide`); the tile and rows are in bounds
                // by the asserts above; tiles are disjoint in columns.
                unsafe {
                    #[cfg(target_arch = "x86_64")]
                    {
                        macro_rules! go {
                            ($isa:ident, $r:literal) => {{
                                let mut v = [[0f32; COLS]; $r];
                                $isa::b32::<$r>(t, a, k, r0, signed, mins, &mut v);
                                dst.put::<$r>(&v, r0, c0, cols);
                                $r
                            }};
                        }
                        r0 += match (wide, rows) {
                            (true, 8..) => go!(avx512, 8),
                            (true, 4..) => go!(avx512, 4),
                            (true, 2..) => go!(avx512, 2),
                            (true, _) => go!(avx512, 1),
                            (false, 4..) => go!(avx2, 4),
                            (false, 2..) => go!(avx2, 2),
                            (false, _) => go!(avx2, 1),
                        };
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    {
                        let _ = (&dst, cols, c0, t, rows, wide);
                        unreachable!("tile kernels are x86-64 only");
                    }
                }
            }
        },
    );
    out
}

// ---------------------------------------------------------------------------------------------
// K-quants: super-blocks of 256 (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) with Q8_K activations.

/// A k-quant encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KQuant {
    /// 2-bit quants, 4-bit scales and minima per 16.
    Q2K,
    /// 3-bit quants (2 low bits and a high-bit mask), 6-bit signed scales per 16.
    Q3K,
    /// 4-bit quants, 6-bit scales and minima per 32.
    Q4K,
    /// 5-bit quants, 6-bit scales and minima per 32.
    Q5K,
    /// 6-bit quants, 8-bit signed scales per 16.
    Q6K,
}

impl KQuant {
    /// Bytes per super-block of 256 values.
    pub fn block_bytes(self) -> usize {
        match self {
            KQuant::Q2K => 84,
            KQuant::Q3K => 110,
            KQuant::Q4K => 144,
            KQuant::Q5K => 176,
            KQuant::Q6K => 210,
        }
    }

    /// The GGML type.
    pub fn dtype(self) -> candle_core::quantized::GgmlDType {
        use candle_core::quantized::GgmlDType as T;
        match self {
            KQuant::Q2K => T::Q2K,
            KQuant::Q3K => T::Q3K,
            KQuant::Q4K => T::Q4K,
            KQuant::Q5K => T::Q5K,
            KQuant::Q6K => T::Q6K,
        }
    }

    /// The encoding of a GGML type, if it is a k-quant.
    pub fn of(dtype: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType as T;
        Some(match dtype {
            T::Q2K => KQuant::Q2K,
            T::Q3K => KQuant::Q3K,
            T::Q4K => KQuant::Q4K,
            T::Q5K => KQuant::Q5K,
            T::Q6K => KQuant::Q6K,
            _ => return None,
        })
    }
}

/// One super-block in the form every k-quant shares: value `i` is
/// `d · sc[i/16] · (u[i] − off) − e · cor'[i/16]`, so that with Q8_K activations
/// `y = d_a · q` the dot product is `d_a · (d · Σ_s sc_s · Σ u·q − e' · Σ_s c_s · Σ_{s} q)`:
/// `c_s = off · sc_s` with `e' = d` (Q3_K, Q6_K), or `c_s = min_s` with `e' = dmin` (Q2_K, Q4_K,
/// Q5_K). All sums but the last two products are integers.
pub struct Decoded {
    /// Unsigned quants.
    pub u: [u8; 256],
    /// Integer scale per sub-block of 16.
    pub sc: [i32; 16],
    /// Integer correction coefficient per sub-block of 16.
    pub c: [i16; 16],
    /// The scale of the integer products.
    pub d: f32,
    /// The scale of the corrections.
    pub e: f32,
}

fn f16(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// llama.cpp's `get_scale_min_k4` for the eight sub-blocks of 32: (scales, minima).
fn scale_min_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = q[j] & 63;
            mn[j] = q[j + 4] & 63;
        } else {
            sc[j] = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
            mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

impl KQuant {
    /// One super-block's bytes in the shared form (llama.cpp's `dequantize_row_*` layouts).
    pub fn decode(self, x: &[u8], o: &mut Decoded) {
        match self {
            KQuant::Q4K | KQuant::Q5K => {
                o.d = f16(x, 0);
                o.e = f16(x, 2);
                let (sc, mn) = scale_min_k4(&x[4..16]);
                for s in 0..16 {
                    o.sc[s] = sc[s / 2] as i32;
                    o.c[s] = mn[s / 2] as i16;
                }
                let (qh, ql) = if self == KQuant::Q5K {
                    (Some(&x[16..48]), &x[48..176])
                } else {
                    (None, &x[16..144])
                };
                for j in 0..4 {
                    for l in 0..32 {
                        let q = ql[32 * j + l];
                        let (h0, h1) = qh.map_or((0, 0), |h| {
                            (
                                ((h[l] >> (2 * j)) & 1) << 4,
                                ((h[l] >> (2 * j + 1)) & 1) << 4,
                            )
                        });
                        o.u[64 * j + l] = (q & 0x0f) | h0;
                        o.u[64 * j + 32 + l] = (q >> 4) | h1;
                    }
                }
            }
            KQuant::Q6K => {
                let (ql, qh, sc) = (&x[0..128], &x[128..192], &x[192..208]);
                o.d = f16(x, 208);
                o.e = o.d;
                for ((osc, oc), &v) in o.sc.iter_mut().zip(&mut o.c).zip(sc) {
                    *osc = v as i8 as i32;
                    *oc = (32 * (v as i8 as i32)) as i16;
                }
                for n in 0..2 {
                    let (ql, qh, u) = (&ql[64 * n..], &qh[32 * n..], &mut o.u[128 * n..]);
                    for l in 0..32 {
                        u[l] = (ql[l] & 0x0f) | ((qh[l] & 3) << 4);
                        u[l + 32] = (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4);
                        u[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        u[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
            }
            KQuant::Q3K => {
                let (hm, qs, s) = (&x[0..32], &x[32..96], &x[96..108]);
                o.d = f16(x, 108);
                o.e = o.d;
                let w = |i: usize| {
                    u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]])
                };
                let (a0, a1, tmp) = (w(0), w(1), w(2));
                const M1: u32 = 0x03030303;
                const M2: u32 = 0x0f0f0f0f;
                let aux = [
                    (a0 & M2) | ((tmp & M1) << 4),
                    (a1 & M2) | (((tmp >> 2) & M1) << 4),
                    ((a0 >> 4) & M2) | (((tmp >> 4) & M1) << 4),
                    ((a1 >> 4) & M2) | (((tmp >> 6) & M1) << 4),
                ];
                for (i, v) in aux.iter().enumerate() {
                    for (j, b) in v.to_le_bytes().iter().enumerate() {
                        let sc = *b as i32 - 32;
                        o.sc[4 * i + j] = sc;
                        o.c[4 * i + j] = (4 * sc) as i16;
                    }
                }
                // Value = low 2 bits − (high bit clear ? 4 : 0) = (low + 4·high) − 4.
                for n in 0..2 {
                    for j in 0..4 {
                        let m = 1u8 << (4 * n + j);
                        for l in 0..32 {
                            let q = (qs[32 * n + l] >> (2 * j)) & 3;
                            let h = u8::from(hm[l] & m != 0);
                            o.u[128 * n + 32 * j + l] = q + 4 * h;
                        }
                    }
                }
            }
            KQuant::Q2K => {
                let (sc, qs) = (&x[0..16], &x[16..80]);
                o.d = f16(x, 80);
                o.e = f16(x, 82);
                for ((osc, oc), &v) in o.sc.iter_mut().zip(&mut o.c).zip(sc) {
                    *osc = (v & 0x0f) as i32;
                    *oc = (v >> 4) as i16;
                }
                for n in 0..2 {
                    for j in 0..4 {
                        for l in 0..32 {
                            o.u[128 * n + 32 * j + l] = (qs[32 * n + l] >> (2 * j)) & 3;
                        }
                    }
                }
            }
        }
    }
}

/// A tile of a k-quant matrix: 16 columns, every super-block.
pub struct KTile {
    /// `[super-block][group of 4][column][4]` unsigned quants.
    w: Vec<u8>,
    /// `[super-block][sub-block of 16][column]` integer scales.
    sc: Vec<i32>,
    /// `[super-block][pair of sub-blocks][column][2]` correction coefficients `c_s`.
    c: Vec<i16>,
    /// `[super-block][column]`: d and e.
    d: Vec<f32>,
    e: Vec<f32>,
    scratch: Decoded,
}

impl KTile {
    fn new(nb: usize) -> Self {
        Self {
            w: vec![0; nb * 256 * COLS],
            sc: vec![0; nb * 16 * COLS],
            c: vec![0; nb * 16 * COLS],
            d: vec![0.0; nb * COLS],
            e: vec![0.0; nb * COLS],
            scratch: Decoded {
                u: [0; 256],
                sc: [0; 16],
                c: [0; 16],
                d: 0.0,
                e: 0.0,
            },
        }
    }

    /// Column `c` from one weight row's `nb` super-blocks; `None` clears it.
    fn fill(&mut self, kind: KQuant, c: usize, row: Option<&[u8]>) {
        let nb = self.d.len() / COLS;
        let size = kind.block_bytes();
        for b in 0..nb {
            let o = &mut self.scratch;
            match row {
                Some(row) => kind.decode(&row[b * size..(b + 1) * size], o),
                None => {
                    o.u = [0; 256];
                    o.sc = [0; 16];
                    o.c = [0; 16];
                    o.d = 0.0;
                    o.e = 0.0;
                }
            }
            let w = &mut self.w[b * 256 * COLS..];
            for g in 0..64 {
                w[g * 4 * COLS + c * 4..g * 4 * COLS + c * 4 + 4]
                    .copy_from_slice(&o.u[4 * g..4 * g + 4]);
            }
            for s in 0..16 {
                self.sc[(b * 16 + s) * COLS + c] = o.sc[s];
                self.c[(b * 8 + s / 2) * 2 * COLS + 2 * c + s % 2] = o.c[s];
            }
            self.d[b * COLS + c] = o.d;
            self.e[b * COLS + c] = o.e;
        }
    }
}

/// `x (m, k) · Wᵀ` for a k-quant matrix `(n, k)` whose row `c` is `row(c)` (its super-blocks'
/// bytes), against Q8_K activations (`a.scales` per row and super-block, `a.bsums` per row and
/// sub-block of 16). Returns `(m, n)` row-major. Call only where [`available`].
pub fn k_product<'w>(
    kind: KQuant,
    n: usize,
    k: usize,
    m: usize,
    a: &Rows<'_>,
    row: impl Fn(usize) -> &'w [u8] + Sync,
) -> Vec<f32> {
    assert!(available(), "tile kernels need AVX2");
    let wide = isa() >= Isa::Avx512Vnni;
    let nb = k / 256;
    assert!(a.quants.len() >= m * k && a.scales.len() >= m * nb && a.bsums.len() >= m * nb * 16);
    let mut out = vec![0f32; m * n];
    let dst = Out {
        ptr: out.as_mut_ptr() as usize,
        n,
    };
    over_tiles(
        n,
        || KTile::new(nb),
        |t, tile| {
            let c0 = tile * COLS;
            let cols = COLS.min(n - c0);
            for c in 0..COLS {
                t.fill(kind, c, (c < cols).then(|| row(c0 + c)));
            }
            let mut r0 = 0;
            while r0 < m {
                let rows = m - r0;
                // SAFETY: as in `b32_product`.
                unsafe {
                    #[cfg(target_arch = "x86_64")]
                    {
                        macro_rules! go {
                            ($isa:ident, $r:literal) => {{
                                let mut v = [[0f32; COLS]; $r];
                                $isa::kq::<$r>(t, a, nb, r0, &mut v);
                                dst.put::<$r>(&v, r0, c0, cols);
                                $r
                            }};
                            ($isa:ident, $r:literal, $s32:expr) => {{
                                let mut v = [[0f32; COLS]; $r];
                                if $s32 {
                                    $isa::kq::<$r, true>(t, a, nb, r0, &mut v);
                                } else {
                                    $isa::kq::<$r, false>(t, a, nb, r0, &mut v);
                                }
                                dst.put::<$r>(&v, r0, c0, cols);
                                $r
                            }};
                        }
                        let s32 = matches!(kind, KQuant::Q4K | KQuant::Q5K);
                        r0 += match (wide, rows) {
                            (true, 8..) => go!(avx512, 8, s32),
                            (true, 4..) => go!(avx512, 4, s32),
                            (true, 2..) => go!(avx512, 2, s32),
                            (true, _) => go!(avx512, 1, s32),
                            (false, 4..) => go!(avx2, 4),
                            (false, 2..) => go!(avx2, 2),
                            (false, _) => go!(avx2, 1),
                        };
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    {
                        let _ = (&dst, cols, c0, t, rows, wide);
                        unreachable!("tile kernels are x86-64 only");
                    }
                }
            }
        },
    );
    out
}

/// Four activation quants from `p` as one i32 (what a kernel broadcasts).
///
/// # Safety
/// `p` must point to at least four readable bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn word(p: *const i8) -> i32 {
    (p as *const i32).read_unaligned()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{word, B32Tile, KTile, Rows, COLS};
    use std::arch::x86_64::*;

    /// Rows `r0..r0 + R` times one blocks-of-32 tile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub(super) unsafe fn b32<const R: usize>(
        t: &B32Tile,
        a: &Rows<'_>,
        k: usize,
        r0: usize,
        signed: bool,
        mins: bool,
        out: &mut [[f32; COLS]; R],
    ) {
        let nb = k / 32;
        let flip = _mm512_set1_epi8(-128);
        let mut acc = [_mm512_setzero_ps(); R];
        let q = a.quants.as_ptr();
        for b in 0..nb {
            let wb = t.w.as_ptr().add(b * 32 * COLS);
            let mut dot = [_mm512_setzero_si512(); R];
            for g in 0..8 {
                let mut w = _mm512_loadu_si512(wb.add(g * 64) as *const _);
                if signed {
                    // i8 → u8 by + 128; the 128 · Σ activations it adds come off below.
                    w = _mm512_xor_si512(w, flip);
                }
                for (r, d) in dot.iter_mut().enumerate() {
                    let y = word(q.add((r0 + r) * k + b * 32 + g * 4));
                    *d = _mm512_dpbusd_epi32(*d, w, _mm512_set1_epi32(y));
                }
            }
            let ws = _mm512_loadu_ps(t.scales.as_ptr().add(b * COLS));
            let wm = _mm512_loadu_ps(t.mins.as_ptr().add(b * COLS));
            for (r, (acc, d)) in acc.iter_mut().zip(dot).enumerate() {
                let ab = (r0 + r) * nb + b;
                let d = if signed {
                    _mm512_sub_epi32(d, _mm512_set1_epi32(128 * *a.isums.get_unchecked(ab)))
                } else {
                    d
                };
                let s = _mm512_mul_ps(ws, _mm512_set1_ps(*a.scales.get_unchecked(ab)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, *acc);
                if mins {
                    *acc = _mm512_fmadd_ps(wm, _mm512_set1_ps(*a.sums.get_unchecked(ab)), *acc);
                }
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), acc);
        }
    }

    /// Rows `r0..r0 + R` times one k-quant tile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub(super) unsafe fn kq<const R: usize, const S32: bool>(
        t: &KTile,
        a: &Rows<'_>,
        nb: usize,
        r0: usize,
        out: &mut [[f32; COLS]; R],
    ) {
        let mut acc = [_mm512_setzero_ps(); R];
        let q = a.quants.as_ptr();
        let bs = a.bsums.as_ptr();
        for b in 0..nb {
            let wb = t.w.as_ptr().add(b * 256 * COLS);
            let mut isum = [_mm512_setzero_si512(); R];
            // Sub-blocks sharing a scale (Q4_K, Q5_K: 32 values) are summed before it applies.
            let per = if S32 { 2 } else { 1 };
            for s in (0..16).step_by(per) {
                let mut dot = [_mm512_setzero_si512(); R];
                for g in 0..4 * per {
                    let w = _mm512_loadu_si512(wb.add((4 * s + g) * 64) as *const _);
                    for (r, d) in dot.iter_mut().enumerate() {
                        let y = word(q.add(((r0 + r) * nb + b) * 256 + 16 * s + 4 * g));
                        *d = _mm512_dpbusd_epi32(*d, w, _mm512_set1_epi32(y));
                    }
                }
                let sc = _mm512_loadu_si512(t.sc.as_ptr().add((b * 16 + s) * COLS) as *const _);
                for (i, d) in isum.iter_mut().zip(dot) {
                    *i = _mm512_add_epi32(*i, _mm512_mullo_epi32(d, sc));
                }
            }
            let mut cs = [_mm512_setzero_si512(); R];
            for p in 0..8 {
                let cv = _mm512_loadu_si512(t.c.as_ptr().add((b * 8 + p) * 2 * COLS) as *const _);
                for (r, c) in cs.iter_mut().enumerate() {
                    let pair =
                        (bs.add(((r0 + r) * nb + b) * 16 + 2 * p) as *const i32).read_unaligned();
                    *c = _mm512_dpwssd_epi32(*c, cv, _mm512_set1_epi32(pair));
                }
            }
            let dv = _mm512_loadu_ps(t.d.as_ptr().add(b * COLS));
            let ev = _mm512_loadu_ps(t.e.as_ptr().add(b * COLS));
            for (r, acc) in acc.iter_mut().enumerate() {
                let v = _mm512_fmsub_ps(
                    _mm512_cvtepi32_ps(isum[r]),
                    dv,
                    _mm512_mul_ps(_mm512_cvtepi32_ps(cs[r]), ev),
                );
                let ya = *a.scales.get_unchecked((r0 + r) * nb + b);
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(ya), v, *acc);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The same kernels on 256-bit registers (8 columns, the tile in two halves), with
    //! llama.cpp's AVX2 arithmetic: `maddubs` pairs of u8 × i8 into i16 (they cannot saturate:
    //! quants are at most 63, or signs are moved onto the activations), then `madd` into i32.
    use super::{word, B32Tile, KTile, Rows, COLS};
    use std::arch::x86_64::*;

    /// Rows `r0..r0 + R` times one blocks-of-32 tile.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn b32<const R: usize>(
        t: &B32Tile,
        a: &Rows<'_>,
        k: usize,
        r0: usize,
        signed: bool,
        mins: bool,
        out: &mut [[f32; COLS]; R],
    ) {
        let nb = k / 32;
        let ones = _mm256_set1_epi16(1);
        let q = a.quants.as_ptr();
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..nb {
                let wb = t.w.as_ptr().add(b * 32 * COLS + 32 * h);
                let mut dot = [_mm256_setzero_si256(); R];
                for g in 0..8 {
                    let w = _mm256_loadu_si256(wb.add(g * 64) as *const __m256i);
                    // Q8_0: |w| times the activations with w's signs (llama.cpp's trick).
                    let aw = if signed { _mm256_sign_epi8(w, w) } else { w };
                    for (r, d) in dot.iter_mut().enumerate() {
                        let y = _mm256_set1_epi32(word(q.add((r0 + r) * k + b * 32 + g * 4)));
                        let y = if signed { _mm256_sign_epi8(y, w) } else { y };
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, y), ones);
                        *d = _mm256_add_epi32(*d, p);
                    }
                }
                let ws = _mm256_loadu_ps(t.scales.as_ptr().add(b * COLS + 8 * h));
                let wm = _mm256_loadu_ps(t.mins.as_ptr().add(b * COLS + 8 * h));
                for (r, (acc, d)) in acc.iter_mut().zip(dot).enumerate() {
                    let ab = (r0 + r) * nb + b;
                    let s = _mm256_mul_ps(ws, _mm256_set1_ps(*a.scales.get_unchecked(ab)));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, *acc);
                    if mins {
                        *acc = _mm256_fmadd_ps(wm, _mm256_set1_ps(*a.sums.get_unchecked(ab)), *acc);
                    }
                }
            }
            for (o, acc) in out.iter_mut().zip(acc) {
                _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), acc);
            }
        }
    }

    /// Rows `r0..r0 + R` times one k-quant tile. The sub-block scale multiplies the i16 pair
    /// sums in the same `madd` that widens them (each i32 lane is one column).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kq<const R: usize>(
        t: &KTile,
        a: &Rows<'_>,
        nb: usize,
        r0: usize,
        out: &mut [[f32; COLS]; R],
    ) {
        let q = a.quants.as_ptr();
        let bs = a.bsums.as_ptr();
        let low = _mm256_set1_epi32(0xffff);
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); R];
            for b in 0..nb {
                let wb = t.w.as_ptr().add(b * 256 * COLS + 32 * h);
                let mut isum = [_mm256_setzero_si256(); R];
                for s in 0..16 {
                    let sc = _mm256_loadu_si256(
                        t.sc.as_ptr().add((b * 16 + s) * COLS + 8 * h) as *const __m256i
                    );
                    // Each column's scale in both i16 halves of its lane.
                    let sc = _mm256_or_si256(_mm256_and_si256(sc, low), _mm256_slli_epi32(sc, 16));
                    for g in 0..4 {
                        let w = _mm256_loadu_si256(wb.add((4 * s + g) * 64) as *const __m256i);
                        for (r, i) in isum.iter_mut().enumerate() {
                            let y = word(q.add(((r0 + r) * nb + b) * 256 + 16 * s + 4 * g));
                            let p = _mm256_maddubs_epi16(w, _mm256_set1_epi32(y));
                            *i = _mm256_add_epi32(*i, _mm256_madd_epi16(p, sc));
                        }
                    }
                }
                let mut cs = [_mm256_setzero_si256(); R];
                for p in 0..8 {
                    let cv = _mm256_loadu_si256(
                        t.c.as_ptr().add((b * 8 + p) * 2 * COLS + 16 * h) as *const __m256i
                    );
                    for (r, c) in cs.iter_mut().enumerate() {
                        let pair = (bs.add(((r0 + r) * nb + b) * 16 + 2 * p) as *const i32)
                            .read_unaligned();
                        *c = _mm256_add_epi32(*c, _mm256_madd_epi16(cv, _mm256_set1_epi32(pair)));
                    }
                }
                let dv = _mm256_loadu_ps(t.d.as_ptr().add(b * COLS + 8 * h));
                let ev = _mm256_loadu_ps(t.e.as_ptr().add(b * COLS + 8 * h));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let v = _mm256_fmsub_ps(
                        _mm256_cvtepi32_ps(isum[r]),
                        dv,
                        _mm256_mul_ps(_mm256_cvtepi32_ps(cs[r]), ev),
                    );
                    let ya = *a.scales.get_unchecked((r0 + r) * nb + b);
                    *acc = _mm256_fmadd_ps(_mm256_set1_ps(ya), v, *acc);
                }
            }
            for (o, acc) in out.iter_mut().zip(acc) {
                _mm256_storeu_ps(o.as_mut_ptr().add(8 * h), acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared form dequantizes to what candle (llama.cpp's layouts) dequantizes, for
    /// every k-quant.
    #[test]
    fn decoded_kquants_dequantize_as_candle() {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        let k = 512;
        let w: Vec<f32> = (0..4 * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 + (i % 13) as f32 * 0.002)
            .collect();
        let wt = Tensor::from_vec(w, (4, k), &Device::Cpu).unwrap();
        for (dtype, kind) in [
            (GgmlDType::Q2K, KQuant::Q2K),
            (GgmlDType::Q3K, KQuant::Q3K),
            (GgmlDType::Q4K, KQuant::Q4K),
            (GgmlDType::Q5K, KQuant::Q5K),
            (GgmlDType::Q6K, KQuant::Q6K),
        ] {
            let q = QTensor::quantize(&wt, dtype).unwrap();
            let want: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let bytes = q.data().unwrap();
            let size = kind.block_bytes();
            let mut o = Decoded {
                u: [0; 256],
                sc: [0; 16],
                c: [0; 16],
                d: 0.0,
                e: 0.0,
            };
            let off = match kind {
                KQuant::Q6K => 32,
                KQuant::Q3K => 4,
                _ => 0,
            };
            for (b, blk) in bytes.chunks_exact(size).enumerate() {
                kind.decode(blk, &mut o);
                for i in 0..256 {
                    let s = i / 16;
                    // The shared form, and the offset form it stands for.
                    let v = o.d * o.sc[s] as f32 * o.u[i] as f32 - o.e * o.c[s] as f32;
                    let mins = if off == 0 { o.e * o.c[s] as f32 } else { 0.0 };
                    let direct = o.d * o.sc[s] as f32 * (o.u[i] as i32 - off) as f32 - mins;
                    assert!((v - direct).abs() <= 1e-5 * v.abs().max(1.0));
                    let w = want[b * 256 + i];
                    assert!(
                        (v - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{kind:?} block {b} [{i}]: {v} vs {w}"
                    );
                }
            }
        }
    }
}
