//! The measuring: the reference continues the challenges once; each floor variant and rung
//! (and, when asked, a server holding the reference's weights) is teacher-forced on those
//! continuations, and every challenge's score is kept.

use super::*;

/// Whether every matrix of a GGUF file is stored in 16 or 32 bits.
fn is_16_bit(path: &Path) -> Result<bool, ModelError> {
    use candle_core::quantized::GgmlDType as T;
    if crate::model::hf::is_hf_folder(path) {
        return Ok(true);
    }
    let g = crate::model::gguf::GgufFile::open(path)?;
    Ok(g.content
        .tensor_infos
        .values()
        .all(|t| matches!(t.ggml_dtype, T::F16 | T::BF16 | T::F32)))
}

/// Measure the floor and the ladder of `cfg.reference`.
pub fn run(
    cfg: &CalibrateConfig,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Calibration, CalibrateError> {
    let start = Instant::now();
    if cfg.challenges == 0 || cfg.k == 0 {
        return Err(CalibrateError::Options(
            "--challenges and --k must be at least 1".into(),
        ));
    }
    let n = cfg.challenges.div_ceil(CYCLE) * CYCLE;
    let source = resolve(&cfg.reference)?;
    let identity = fingerprint(&source, false)?;
    std::fs::create_dir_all(&cfg.workdir).map_err(|e| {
        crate::FileError::new(
            &cfg.workdir,
            "cannot create the folder for rung files",
            "; pick another with --keep",
            e,
        )
    })?;
    let opts = LoadOptions::kernels(cfg.kernels);
    let spec = source.display().to_string();
    let reference = Model::load(&spec, opts)?;
    let catalog = Catalog::load()?;
    let mut sides: Vec<ReferenceSide> = Vec::with_capacity(n);
    let mut families = Vec::with_capacity(n);
    for first in (0..n).step_by(CYCLE) {
        let chs: Vec<_> = (first..first + CYCLE)
            .map(|i| catalog.challenge(&cfg.key, &cfg.run_id, i as u64))
            .collect();
        families.extend(chs.iter().map(|c| c.family.clone()));
        let prompts: Vec<String> = chs.into_iter().map(|c| c.prompt).collect();
        sides.extend(score::reference_pass(
            &reference,
            &prompts,
            cfg.k,
            ScoreKind::Kl,
        )?);
        progress(Event::Reference(sides.len(), n));
    }
    let sixteen = is_16_bit(&source)?;
    let mut entries = Vec::new();
    let measure = |progress: &mut dyn FnMut(Event<'_>),
                   label: Label,
                   model: &Model,
                   group: usize|
     -> Result<Entry, CalibrateError> {
        progress(Event::Scoring(&label.name));
        let t0 = Instant::now();
        let e = score_entry(label, model, &sides, group, cfg.keep_positions)?;
        let e = Entry {
            seconds: e.seconds + t0.elapsed().as_secs_f64(),
            ..e
        };
        progress(Event::Done(&e));
        Ok(e)
    };
    for &f in &cfg.floors {
        match f {
            Floor::OtherKernels => {
                let other = match cfg.kernels {
                    Kernels::Quantized => Kernels::Dense,
                    Kernels::Dense => Kernels::Quantized,
                };
                let m = Model::load(&spec, LoadOptions::kernels(other))?;
                let what = format!("the reference on the {} kernels", kernels_name(other));
                entries.push(measure(
                    progress,
                    Label::new(f.name(), Role::Floor, what, None),
                    &m,
                    CYCLE,
                )?);
            }
            Floor::OneAtATime => {
                let what = "the reference, one challenge per pass instead of five".to_string();
                entries.push(measure(
                    progress,
                    Label::new(f.name(), Role::Floor, what, None),
                    &reference,
                    1,
                )?);
            }
            Floor::F16Reencoding if sixteen => {}
            Floor::F16Reencoding => {
                let (file, built) = build_rung(cfg, &source, &identity, Target::F16, progress)?;
                let m = Model::load(&file.display().to_string(), opts)?;
                let what = "the reference's matrices re-encoded as f16".to_string();
                entries.push(measure(
                    progress,
                    Label::new(f.name(), Role::Floor, what, Some(built)),
                    &m,
                    CYCLE,
                )?);
            }
        }
    }
    drop(reference);
    if let Some(ep) = &cfg.endpoint {
        progress(Event::Scoring("endpoint"));
        let e = endpoint_entry(cfg, &source, ep, n)?;
        progress(Event::Done(&e));
        entries.push(e);
    }
    for f in &cfg.same_files {
        let spec = resolve(&f.display().to_string())?;
        let m = Model::load(&spec.display().to_string(), opts)?;
        let stem = spec.file_stem().map_or_else(
            || spec.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        let what = format!("the same weights in {}", spec.display());
        entries.push(measure(
            progress,
            Label::new(&format!("same:{stem}"), Role::Floor, what, None),
            &m,
            CYCLE,
        )?);
    }
    for &r in &cfg.rungs {
        let (file, built) = build_rung(cfg, &source, &identity, r, progress)?;
        let m = Model::load(&file.display().to_string(), opts)?;
        let what = format!("every matrix re-encoded as {r}");
        entries.push(measure(
            progress,
            Label::new(r.name(), Role::Rung, what, Some(built)),
            &m,
            CYCLE,
        )?);
    }
    Ok(Calibration {
        format: FORMAT.into(),
        reference: identity,
        kernels: cfg.kernels,
        k: cfg.k,
        challenges: n,
        top_logprobs: ENDPOINT_TOP,
        run_id: cfg.run_id.clone(),
        key_commitment: cfg.key.commitment(),
        families,
        entries,
        pot_version: env!("CARGO_PKG_VERSION").into(),
        created_unix: crate::transcript::unix_now(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The floor entry of a server holding the reference's weights: `pot audit` on the very
/// challenges of the calibration (same key, run id and K, so the reference sends the same
/// continuations), for exactly `n` challenges, its transcript kept in the work folder.
fn endpoint_entry(
    cfg: &CalibrateConfig,
    source: &Path,
    endpoint: &crate::openai::EndpointConfig,
    n: usize,
) -> Result<Entry, CalibrateError> {
    use crate::audit::{self, AuditConfig};
    use crate::run::{Mode, Overrides, RunSpec};
    let t0 = Instant::now();
    let transcript = cfg.workdir.join(format!("endpoint-{}.ndjson", cfg.run_id));
    let _ = std::fs::remove_file(&transcript);
    let run = RunSpec {
        mode: Mode::Audit,
        overrides: Overrides {
            n_min: Some(n),
            n_max: Some(n),
            ..Overrides::default()
        },
        k: cfg.k,
        calibration: None,
        margins_from_calibration: false,
        calibration_store: None,
        kernels: cfg.kernels,
        key: cfg.key.clone(),
        run_id: cfg.run_id.clone(),
        transcript: transcript.clone(),
        resume: false,
    };
    let out = audit::run(
        &AuditConfig {
            reference: audit::ReferenceSource::Model(source.display().to_string()),
            endpoint: endpoint.clone(),
            method: None,
            top_logprobs: ENDPOINT_TOP,
            run,
            max_total_tokens: None,
            concurrency: audit::DEFAULT_CONCURRENCY,
            sampling: Default::default(),
        },
        &mut |_| {},
    )
    .map_err(|e| CalibrateError::EndpointRun(Box::new(e)))?;
    if out.summary.score_kind != ScoreKind::EndpointKl {
        return Err(CalibrateError::Endpoint(format!(
            "{}: the endpoint gives text only (method {}), which measures no divergence; a floor needs log-probabilities (echo or logprobs)",
            endpoint.url, out.method
        )));
    }
    let t = crate::transcript::read(&transcript).map_err(CalibrateError::EndpointTranscript)?;
    let endpoint_scores: Vec<f64> = t.queries.iter().map(|q| q.score.score).collect();
    let endpoint_positions = cfg
        .keep_positions
        .then(|| t.queries.iter().map(|q| q.score.kl.clone()).collect());
    let agree: Vec<bool> = t
        .queries
        .iter()
        .flat_map(|q| q.score.top1_agree.iter().copied())
        .collect();
    Ok(Entry {
        name: "endpoint".into(),
        role: Role::Floor,
        what: format!(
            "the reference's weights served at {} (model {}), by {} with {} alternatives",
            endpoint.url, endpoint.model, out.method, out.endpoint.top_logprobs
        ),
        bits_per_weight: None,
        file_bytes: None,
        kl: None,
        endpoint_kl: Distribution::of(&endpoint_scores),
        top1_agreement: agree.iter().filter(|a| **a).count() as f64 / agree.len().max(1) as f64,
        scores: Vec::new(),
        endpoint_scores,
        positions: None,
        endpoint_positions,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

pub(super) fn kernels_name(k: Kernels) -> &'static str {
    match k {
        Kernels::Quantized => "quantized",
        Kernels::Dense => "dense",
    }
}

/// The file of a rung in the work folder, built when missing: (path, (rung, bytes, seconds)).
fn build_rung(
    cfg: &CalibrateConfig,
    source: &Path,
    identity: &Identity,
    rung: Target,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<(PathBuf, (Target, u64, f64)), CalibrateError> {
    let t0 = Instant::now();
    // Named by the reference's weights, so a folder shared by several references (or a
    // reference that changed) never hands out another model's rung.
    let file = cfg.workdir.join(format!(
        "{}-{}.gguf",
        &identity.weight_hash[..16],
        rung.name()
    ));
    if !file.is_file() {
        progress(Event::Building(rung.name()));
        variant::derive(
            source,
            &VariantOptions {
                to: rung,
                prune_layers: 0,
                noise: 0.0,
                seed: 0,
            },
            &file,
        )
        .map_err(|source| CalibrateError::Variant {
            rung: rung.name().into(),
            source,
        })?;
    }
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    Ok((file, (rung, bytes, t0.elapsed().as_secs_f64())))
}

/// What an entry is, before it is measured.
struct Label {
    name: String,
    role: Role,
    what: String,
    /// A rung's encoding, file size and seconds to build.
    built: Option<(Target, u64, f64)>,
}

impl Label {
    fn new(name: &str, role: Role, what: String, built: Option<(Target, u64, f64)>) -> Self {
        Self {
            name: name.into(),
            role,
            what,
            built,
        }
    }
}

/// Teacher-force `model` on every side, `group` challenges per pass, and summarize.
fn score_entry(
    label: Label,
    model: &Model,
    sides: &[ReferenceSide],
    group: usize,
    keep_positions: bool,
) -> Result<Entry, CalibrateError> {
    let mut scores = Vec::with_capacity(sides.len());
    let mut endpoint_scores = Vec::with_capacity(sides.len());
    let (mut positions, mut endpoint_positions) = (Vec::new(), Vec::new());
    let (mut agree, mut seen_positions) = (0usize, 0usize);
    for chunk in sides.chunks(group.max(1)) {
        let refs: Vec<&ReferenceSide> = chunk.iter().collect();
        let rows = score::candidate_rows(model, &refs)?;
        for (side, lq) in chunk.iter().zip(&rows) {
            let lp = side.reference_rows();
            let s = score::kl_score(lp, lq);
            agree += s.top1_agree.iter().filter(|a| **a).count();
            seen_positions += s.top1_agree.len();
            scores.push(s.score);
            let seen: Vec<_> = lq
                .iter()
                .zip(&side.continuation_ids)
                .map(|(row, &t)| score::endpoint_view(row, t, ENDPOINT_TOP))
                .collect();
            let es = score::endpoint_kl_score(lp, &seen);
            endpoint_scores.push(es.score);
            if keep_positions {
                positions.push(s.kl);
                endpoint_positions.push(es.kl);
            }
        }
    }
    let (bits_per_weight, file_bytes, seconds) = match label.built {
        Some((t, bytes, s)) => (Some(t.bits_per_weight()), Some(bytes), s),
        None => (None, None, 0.0),
    };
    Ok(Entry {
        name: label.name,
        role: label.role,
        what: label.what,
        bits_per_weight,
        file_bytes,
        kl: Some(Distribution::of(&scores)),
        endpoint_kl: Distribution::of(&endpoint_scores),
        top1_agreement: agree as f64 / seen_positions.max(1) as f64,
        scores,
        endpoint_scores,
        positions: keep_positions.then_some(positions),
        endpoint_positions: keep_positions.then_some(endpoint_positions),
        seconds,
    })
}
