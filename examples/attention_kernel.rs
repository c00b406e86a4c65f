//! The CPU attention alone (`pot::model::attention`) on Qwen2.5 0.5B's shape for a 256-token
//! prompt: 14 query heads over 2 key/value heads of 64 values, causal, weights rounded to f16.
//!
//!   cargo run --release --example attention_kernel
use pot::model::attention::{attend, Dims};
use std::time::Instant;
fn main() {
    let (h, kvh, t, hd) = (14, 2, 256, 64);
    let q: Vec<f32> = (0..h * t * hd).map(|i| ((i as f32) * 0.37).sin()).collect();
    let k: Vec<f32> = (0..kvh * t * hd)
        .map(|i| ((i as f32) * 0.61).sin())
        .collect();
    let v: Vec<f32> = (0..kvh * t * hd)
        .map(|i| ((i as f32) * 0.23).sin())
        .collect();
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let d = Dims {
        heads: h,
        kv_heads: kvh,
        t,
        kv: t,
        head_dim: hd,
    };
    let mut best = f64::MAX;
    for _ in 0..50 {
        let s = Instant::now();
        std::hint::black_box(attend(&q, &k, &v, Some(&mask), d, 0.125, true));
        best = best.min(s.elapsed().as_secs_f64());
    }
    println!(
        "attention 14x256x256x64 causal: {:.2} ms best (x24 layers = {:.0} ms)",
        best * 1e3,
        best * 24e3
    );
}
