//! Model files: `pot tokenize`, `pot logits`, `pot fingerprint`, `pot bench`, `pot export-hf`, `pot variant`.

use super::*;

pub(super) fn cmd_tokenize(model: String, text: String, json: bool) -> Result<ExitCode> {
    let tokenizer = pot::model::load_tokenizer(&model)?;
    let ids = tokenizer.encode(&text)?;
    if json {
        let pieces: Vec<String> = ids
            .iter()
            .map(|i| tokenizer.decode(&[*i]).unwrap_or_default())
            .collect();
        outln!(
            "{}",
            serde_json::json!({"token_ids": ids, "pieces": pieces})
        )?;
    } else {
        for i in &ids {
            outln!("{i}\t{:?}", tokenizer.decode(&[*i])?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_logits(
    model: &str,
    text: &str,
    top_k: usize,
    kernels: Kernels,
    json: bool,
) -> Result<ExitCode> {
    let m = Model::load(model, LoadOptions::kernels(kernels))?;
    let ids = m.tokenizer.encode(text)?;
    if ids.is_empty() {
        bail!("--text {text:?} has no tokens; give a non-empty text");
    }
    let logits: Vec<Vec<f32>> = m
        .logits(&ids, 0)?
        .to_vec2()
        .map_err(|e| anyhow::anyhow!("{model}: {e}"))?;
    let positions: Vec<pot::score::TopTokens> = logits
        .iter()
        .map(|row| pot::score::top_tokens(row, top_k))
        .collect();
    if json {
        outln!(
            "{}",
            serde_json::json!({"token_ids": ids, "positions": positions})
        )?;
    } else {
        for (i, p) in positions.iter().enumerate() {
            let after = m.tokenizer.decode(&ids[..=i]).unwrap_or_default();
            outln!(
                "after {:?}:",
                after
                    .chars()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<String>()
            )?;
            for (&id, lp) in p.top_ids.iter().zip(&p.top_logprobs) {
                outln!(
                    "  {:>7} {:>9.4}  {:?}",
                    id,
                    lp,
                    m.tokenizer.decode(&[id]).unwrap_or_default()
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_fingerprint(
    model: String,
    compare: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let id = pot::identity::fingerprint(&pot::model::resolve(&model)?, true)?;
    let other = match &compare {
        Some(c) => Some(pot::identity::fingerprint(&pot::model::resolve(c)?, true)?),
        None => None,
    };
    let dist = other
        .as_ref()
        .and_then(|o| pot::identity::tlsh_distance(id.tlsh.as_deref()?, o.tlsh.as_deref()?));
    if json {
        outln!(
            "{}",
            serde_json::json!({"model": id, "compare": other, "tlsh_distance": dist})
        )?;
    } else {
        for x in std::iter::once(&id).chain(other.as_ref()) {
            outln!(
                "{}\n  arch {}  parameters {}  bytes {}",
                x.path,
                x.arch,
                x.parameters,
                x.file_bytes
            )?;
            outln!(
                "  file sha256     {}\n  weight hash     {}",
                x.file_sha256,
                x.weight_hash
            )?;
            outln!(
                "  config hash     {}\n  tokenizer hash  {}",
                x.config_hash,
                x.tokenizer_hash
            )?;
            outln!("  tlsh            {}", x.tlsh.as_deref().unwrap_or("-"))?;
        }
        if let Some(d) = dist {
            outln!("TLSH distance {d} (0 identical; small: near-clone; above ~100: unrelated)")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_bench(
    model: String,
    prompt_tokens: usize,
    gen_tokens: usize,
    kernels: KernelArg,
    json: bool,
) -> Result<ExitCode> {
    let t0 = std::time::Instant::now();
    let m = Model::load(&model, LoadOptions::kernels(kernels.into()))?;
    let load_s = t0.elapsed().as_secs_f64();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(prompt_tokens);
    let mut ids = m.tokenizer.encode(&text)?;
    ids.truncate(prompt_tokens.max(1));
    // As llama-bench measures: prompt-eval is one pass over the prompt that yields the
    // last position's logits; generation is the one-token steps after a short prompt.
    // One warm-up pass first (candle repacks some weights on first use).
    let last = ids.len() - 1;
    m.logits(&ids, last)?;
    let t = std::time::Instant::now();
    m.logits(&ids, last)?;
    let prefill = ids.len() as f64 / t.elapsed().as_secs_f64();
    // Scoring, as a diff or an audit does: the same pass with logits at every position.
    let t = std::time::Instant::now();
    m.logits(&ids, 0)?;
    let scoring = ids.len() as f64 / t.elapsed().as_secs_f64();
    let head = &ids[..16.min(ids.len())];
    let t = std::time::Instant::now();
    m.greedy_exact(head, 1)?;
    let first = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let g = m.greedy_exact(head, gen_tokens.max(2))?;
    let steps = g.len() - 1;
    let gen = steps as f64 / (t.elapsed().as_secs_f64() - first).max(1e-9);
    if json {
        outln!(
            "{}",
            serde_json::json!({"model": model, "kernels": pot::model::device::kernels_in_use(), "load_s": load_s, "prompt_tokens": ids.len(), "prompt_eval_tok_s": prefill, "scoring_tok_s": scoring, "generated": g.len(), "generation_tok_s": gen})
        )?;
    } else {
        outln!("{model}: load {load_s:.1} s; prompt-eval {prefill:.1} tok/s ({} tokens); scoring (logits at every position) {scoring:.1} tok/s; generation {gen:.1} tok/s ({} tokens); {} kernels", ids.len(), g.len(), pot::model::device::kernels_in_use())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_export_hf(model: String, out: PathBuf) -> Result<ExitCode> {
    let src = pot::model::resolve(&model)?;
    pot::model::hf::export(&src, &out)?;
    eprintln!("pot: wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_variant(
    model: String,
    to: Target,
    prune_layers: usize,
    noise: f64,
    seed: u64,
    out: PathBuf,
) -> Result<ExitCode> {
    let src = pot::model::resolve(&model)?;
    variant::derive(
        &src,
        &VariantOptions {
            to,
            prune_layers,
            noise,
            seed,
        },
        &out,
    )?;
    eprintln!("pot: wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}
