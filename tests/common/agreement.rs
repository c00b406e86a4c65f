//! pot's engine against another engine's token ids and logits (llama.cpp's fixtures, the MLX
//! runtime's output).

use std::path::Path;

use pot::model::{Kernels, LoadOptions, Model};
use serde_json::Value;

/// How far pot's next-token log-probabilities are from another engine's.
pub struct Agreement {
    pub prompts: usize,
    /// Top-1 agreements and positions after the first token of each prompt.
    pub later_top1_same: usize,
    pub later_positions: usize,
    pub positions: usize,
    pub top1_same: usize,
    pub mean_abs: f64,
    pub max_abs: f64,
    /// The widest gap between the other engine's top two logits at a position where pot's
    /// top-1 token differs (0 when none differs): a miss at a near-tie is rounding noise, a
    /// miss at a clear gap is not.
    pub widest_miss: f64,
}

/// Load `path` with `kernels` and compare it with `fixture` (JSON of another engine: token ids,
/// and per position the top ids, their logits and the row's log-sum-exp), printing the figures.
pub fn check_path(path: &Path, fixture: &Path, kernels: Kernels) -> Agreement {
    check_loaded(path, fixture, LoadOptions::kernels(kernels))
}

/// [`check_path`] with the model loaded by `opts` (kernels and device).
pub fn check_loaded(path: &Path, fixture: &Path, opts: LoadOptions) -> Agreement {
    let kernels = match opts.device {
        Some(d) => format!("{:?} kernels, device {d}", opts.kernels),
        None => format!("{:?} kernels", opts.kernels),
    };
    let model_file = path.file_name().unwrap().to_string_lossy().into_owned();
    let model = Model::load(path.to_str().unwrap(), opts).unwrap();
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let engine = fx["engine"]
        .as_str()
        .unwrap_or("the other engine")
        .to_string();
    let mut a = Agreement {
        later_top1_same: 0,
        later_positions: 0,
        prompts: 0,
        positions: 0,
        top1_same: 0,
        mean_abs: 0.0,
        max_abs: 0.0,
        widest_miss: 0.0,
    };
    let mut sum = 0.0;
    let mut count = 0usize;
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = model.tokenizer.encode(text).unwrap();
        assert_eq!(got, want, "{model_file}: token ids of {text:?}");
        a.prompts += 1;
        let lp = model.logprobs(&got, 0).unwrap();
        // The router's pass (the output projection on chosen rows only) gives the same rows,
        // up to the kernels' batch-shape rounding.
        let picked: Vec<usize> = (0..got.len()).rev().step_by(3).collect();
        for (p, row) in picked.iter().zip(model.logprobs_at(&got, &picked).unwrap()) {
            let off = row
                .iter()
                .zip(&lp[*p])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(off < 0.05, "{model_file}: logprobs_at row {p} is {off} off");
        }
        // A pass that wants the last row only (a prompt) drops the others in the last block.
        let last = got.len() - 1;
        let only = model.logprobs(&got, last).unwrap();
        assert_eq!(only.len(), 1, "{model_file}: one row from {last}");
        let off = only[0]
            .iter()
            .zip(&lp[last])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(off < 0.05, "{model_file}: the last row alone is {off} off");
        for (i, pos) in case["positions"].as_array().unwrap().iter().enumerate() {
            let ids: Vec<usize> = pos["top_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let logits: Vec<f64> = pos["top_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let lse = pos["logsumexp"].as_f64().unwrap();
            let row = &lp[i];
            let ours_top = pot::model::argmax(row) as usize;
            a.positions += 1;
            if ours_top == ids[0] {
                a.top1_same += 1;
            } else {
                a.widest_miss = a.widest_miss.max(logits[0] - logits[1]);
            }
            if i > 0 {
                a.later_positions += 1;
                a.later_top1_same += usize::from(ours_top == ids[0]);
            }
            for (id, l) in ids.iter().zip(&logits) {
                let d = (row[*id] as f64 - (l - lse)).abs();
                sum += d;
                count += 1;
                a.max_abs = a.max_abs.max(d);
            }
        }
    }
    a.mean_abs = sum / count as f64;
    eprintln!(
        "{model_file} ({kernels}) against {engine}: {} prompts, tokens identical; top-1 {}/{} ({:.1}%), after the first token {}/{}; |Δ log-softmax| over its top-20: mean {:.4}, max {:.4}; misses at top-two gaps up to {:.3} nats",
        a.prompts, a.top1_same, a.positions, 100.0 * a.top1_same as f64 / a.positions as f64, a.later_top1_same, a.later_positions, a.mean_abs, a.max_abs, a.widest_miss
    );
    a
}
