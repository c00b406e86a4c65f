//! The 16-bit kernels alone, on Qwen2.5 0.5B's shapes with random f16 weights: generation
//! (one activation row against all of a token's weights, 0.99 GB, far more than any cache:
//! memory bound, so GB/s) and prompt-eval (256 rows against one layer: compute bound, so
//! GFLOP/s). Beside it, what the machine streams: `scripts/bench.sh` runs llama.cpp.
//!
//!   cargo run --release --example half_kernel
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use pot::model::half::HalfMatrix;
use std::sync::Arc;
use std::time::Instant;

fn matrix(n: usize, k: usize) -> HalfMatrix {
    let t = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu).expect("random weights");
    let q = QTensor::quantize(&t, GgmlDType::F16).expect("f16 weights");
    HalfMatrix::new(Arc::new(q)).expect("an f16 matrix")
}

fn main() -> anyhow::Result<()> {
    // q, k, v, o, gate, up, down: one layer; 24 of them and the output head.
    let layer = [
        (896, 896),
        (128, 896),
        (128, 896),
        (896, 896),
        (4864, 896),
        (4864, 896),
        (896, 4864),
    ];
    let mut shapes: Vec<(usize, usize)> = (0..24).flat_map(|_| layer).collect();
    shapes.push((151936, 896));
    let mats: Vec<HalfMatrix> = shapes.iter().map(|&(n, k)| matrix(n, k)).collect();
    let bytes: usize = shapes.iter().map(|(n, k)| n * k * 2).sum();
    let xs: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(_, k)| (0..256 * k).map(|i| ((i as f32) * 0.37).sin()).collect())
        .collect();
    let mut gen = Vec::new();
    for _ in 0..8 {
        let t = Instant::now();
        for (mat, (x, &(_, k))) in mats.iter().zip(xs.iter().zip(&shapes)) {
            std::hint::black_box(mat.matmul(&x[..k], 1)?);
        }
        gen.push(t.elapsed().as_secs_f64());
    }
    gen.remove(0);
    let mean = gen.iter().sum::<f64>() / gen.len() as f64;
    println!(
        "generation: a token's weights ({:.2} GB) in {:.1} ms mean ({:.1} best): {:.1} GB/s, {:.1} tok/s bound",
        bytes as f64 / 1e9,
        mean * 1e3,
        gen.iter().cloned().fold(f64::MAX, f64::min) * 1e3,
        bytes as f64 / mean / 1e9,
        1.0 / mean
    );
    let flops: usize = layer.iter().map(|(n, k)| 2 * 256 * n * k).sum();
    let mut pre = Vec::new();
    for _ in 0..4 {
        let t = Instant::now();
        for (mat, x) in mats.iter().zip(&xs).take(layer.len()) {
            std::hint::black_box(mat.matmul(x, 256)?);
        }
        pre.push(t.elapsed().as_secs_f64());
    }
    pre.remove(0);
    let mean = pre.iter().sum::<f64>() / pre.len() as f64;
    println!(
        "prompt-eval: 256 rows through one layer in {:.1} ms mean: {:.0} GFLOP/s",
        mean * 1e3,
        flops as f64 / mean / 1e9
    );
    // Each shape alone: where the layer's time goes.
    for (i, &(n, k)) in layer.iter().enumerate() {
        if i == 2 || i == 5 {
            continue; // the same shapes as v and gate
        }
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            std::hint::black_box(mats[i].matmul(&xs[i], 256)?);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "  ({n} x {k}): {:.2} ms best, {:.0} GFLOP/s",
            best * 1e3,
            (2 * 256 * n * k) as f64 / best / 1e9
        );
    }
    Ok(())
}
