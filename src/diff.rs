//! `pot diff`: the sequential loop that joins the rooms.
//!
//! key → challenges → reference pass → candidate pass → scores → test → transcript lines,
//! until the test decides or the budget runs out. Challenges are scored in groups of one
//! stratification cycle (the test decides only at cycle ends, so this costs no query), each
//! group walked by both models together. With `one_at_a_time`, the reference alone computes
//! its half of a batch of groups, is dropped, then the candidate alone finishes them; the
//! groups and the order in which scores enter the test are the same either way, so both
//! paths reach the same decision at the same query.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::calibrate::Calibration;
use crate::challenge::{Catalog, Challenge, ChallengeKey};
use crate::identity::{fingerprint, Identity};
use crate::model::{resolve, Kernels, LoadOptions, Model, ModelError};
use crate::score::{self, ScoreKind};
use crate::served::{Ladder, Served};
use crate::stats::{Decision, SequentialTest, Status, TestParams, CYCLE};
use crate::transcript::{
    self, unix_now, Candidate, Header, Query, Resumed, TranscriptError, Verdict, Writer,
};

/// A preset of test parameters and continuation length.
///
/// The margins depend on how challenges are scored. KL on a shared tokenizer has a measured
/// floor far below 0.005 nats per token for the same weights on other kernels and engines,
/// while 4-bit and coarser copies sit above 0.01 (`pot calibrate`, BENCHMARKS.md): the audit and
/// extended modes put γ and δ there. An endpoint reports its 20 most likely tokens only, and
/// the divergence it shows ([`crate::score::coarse_kl`]) is at most the full KL and measured
/// at 0.71-0.88 of it on the ladder rungs: its margins are scaled by [`ENDPOINT_SHARE`]. Scores
/// that only see other models (bits per byte across tokenizers, the share of mismatched
/// greedy tokens) keep the coarse margins 0.05 and 0.1 in every mode, and so does the quick
/// mode, which screens for another model or a 2- or 3-bit copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Fast screening for another model or a 2- or 3-bit copy: α = 0.05, margins γ = 0.05,
    /// δ = 0.1 nats/token, K = 16, at most 50 challenges. Calls 4-bit and finer copies SAME.
    Quick,
    /// The default: sees 4-bit copies. α = 0.01, γ = 0.005, δ = 0.01 nats/token of KL
    /// (0.004 and 0.008 on what an endpoint reports), K = 32, at most 200 challenges.
    Audit,
    /// Disputes: the audit mode's margins at α = 0.001, K = 64, at most 1000 challenges.
    Extended,
}

/// Clip bound B as a multiple of δ (chosen by simulation, `examples/test_design.rs`).
pub const CLIP_RATIO: f64 = 2.0;

/// The share of the full KL an endpoint's top-20 report shows on the ladder rungs (measured
/// 0.71-0.88, median 0.81, over the rungs of Qwen 0.5B and SmolLM2; BENCHMARKS.md): the
/// endpoint margins are the KL margins times this.
pub const ENDPOINT_SHARE: f64 = 0.8;

/// (γ, δ) on KL scores in the audit and extended modes, nats per token.
const KL_MARGINS: (f64, f64) = (0.005, 0.01);
/// (γ, δ) on what an endpoint reports: [`KL_MARGINS`] × [`ENDPOINT_SHARE`].
const ENDPOINT_MARGINS: (f64, f64) = (0.004, 0.008);
/// (γ, δ) of scores that only tell other models apart, and of the quick mode.
const COARSE_MARGINS: (f64, f64) = (0.05, 0.1);

impl Mode {
    /// The mode's test parameters for challenges scored as `kind`.
    pub fn params(self, kind: ScoreKind) -> TestParams {
        let (alpha, n_min, n_max) = match self {
            Mode::Quick => (0.05, CYCLE, 50),
            Mode::Audit => (0.01, CYCLE, 200),
            Mode::Extended => (0.001, 2 * CYCLE, 1000),
        };
        let (gamma, delta) = match (self, kind) {
            (Mode::Quick, _) | (_, ScoreKind::BitsPerByte | ScoreKind::TextMismatch) => {
                COARSE_MARGINS
            }
            (_, ScoreKind::Kl) => KL_MARGINS,
            (_, ScoreKind::EndpointKl) => ENDPOINT_MARGINS,
        };
        TestParams {
            alpha,
            gamma,
            delta,
            clip: CLIP_RATIO * delta,
            n_min,
            n_max,
        }
    }

    /// The mode's continuation length K.
    pub fn k(self) -> usize {
        match self {
            Mode::Quick => 16,
            Mode::Audit => 32,
            Mode::Extended => 64,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Quick => "quick",
            Mode::Audit => "audit",
            Mode::Extended => "extended",
        }
    }
}

/// Test parameters set by hand, over the mode's (and a calibration's margins).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Overrides {
    /// Error bound.
    pub alpha: Option<f64>,
    /// SAME margin γ.
    pub gamma: Option<f64>,
    /// DIFFERENT margin δ.
    pub delta: Option<f64>,
    /// Clip bound B.
    pub clip: Option<f64>,
    /// Fewest challenges before a decision.
    pub n_min: Option<usize>,
    /// Budget.
    pub n_max: Option<usize>,
}

/// What every sequential run is, diff or audit: mode, margins, K, kernels, key, id,
/// transcript, and where the reference's calibration comes from.
pub struct RunSpec {
    /// Mode name (recorded).
    pub mode: Mode,
    /// Parameters set by hand.
    pub overrides: Overrides,
    /// Continuation length.
    pub k: usize,
    /// A calibration of the reference given by hand (`--calibration` or `--margins`): it must
    /// be of the reference's weights.
    pub calibration: Option<Calibration>,
    /// Take γ, δ and B from the calibration (`--margins CAL.json`).
    pub margins_from_calibration: bool,
    /// A folder of calibrations named by weight hash (`pot calibrate` stores there): used
    /// when none is given by hand and the reference has one.
    pub calibration_store: Option<PathBuf>,
    /// Kernels.
    pub kernels: Kernels,
    /// Challenge key.
    pub key: ChallengeKey,
    /// Run id.
    pub run_id: String,
    /// Transcript file.
    pub transcript: PathBuf,
    /// Continue an existing transcript.
    pub resume: bool,
}

impl RunSpec {
    /// The test parameters of this run for challenges scored as `kind`: the mode's, then the
    /// calibration's margins (when asked for), then the overrides.
    pub fn params(
        &self,
        kind: ScoreKind,
        calibration: Option<&Calibration>,
    ) -> Result<TestParams, DiffError> {
        let mut p = self.mode.params(kind);
        if self.margins_from_calibration {
            let cal = calibration.ok_or_else(|| {
                DiffError::Calibration("--margins needs a calibration of the reference".into())
            })?;
            let m = cal
                .margins(kind, p.clip / p.delta)
                .map_err(DiffError::Calibration)?;
            (p.gamma, p.delta, p.clip) = (m.gamma, m.delta, m.clip);
        }
        let o = self.overrides;
        for (slot, v) in [
            (&mut p.alpha, o.alpha),
            (&mut p.gamma, o.gamma),
            (&mut p.delta, o.delta),
            (&mut p.clip, o.clip),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
        p.n_min = o.n_min.unwrap_or(p.n_min);
        p.n_max = o.n_max.unwrap_or(p.n_max);
        p.validate()?;
        Ok(p)
    }

    /// The reference's calibration: the one given by hand, which must be of the reference's
    /// weights, or the store's for those weights, if any.
    pub fn calibration_for(&self, reference: &Identity) -> Result<Option<Calibration>, DiffError> {
        if let Some(c) = &self.calibration {
            if c.reference.weight_hash != reference.weight_hash {
                return Err(DiffError::Calibration(format!(
                    "the calibration is of {} (weights {}), not of the reference {} (weights {}); calibrate this reference with pot calibrate --ref {}",
                    c.reference.path,
                    &c.reference.weight_hash[..16],
                    reference.path,
                    &reference.weight_hash[..16],
                    reference.path
                )));
            }
            return Ok(Some(c.clone()));
        }
        let Some(dir) = &self.calibration_store else {
            return Ok(None);
        };
        let path = crate::calibrate::stored_path(dir, &reference.weight_hash);
        if !path.is_file() {
            return Ok(None);
        }
        Calibration::read(&path)
            .map(Some)
            .map_err(|e| DiffError::Calibration(format!("{e} (or remove it from the store)")))
    }

    /// The transcript header of this run.
    pub fn header(
        &self,
        score_kind: ScoreKind,
        params: TestParams,
        calibration: Option<&Calibration>,
        reference: Identity,
        candidate: Candidate,
    ) -> Header {
        Header {
            record: "header".into(),
            version: transcript::VERSION,
            run_id: self.run_id.clone(),
            mode: self.mode.name().into(),
            params,
            k: self.k,
            kernels: self.kernels,
            score_kind,
            key_commitment: self.key.commitment(),
            reference,
            candidate,
            ladder: calibration.and_then(|c| Ladder::of(c, score_kind)),
            pot_version: env!("CARGO_PKG_VERSION").into(),
            started_unix: unix_now(),
        }
    }

    /// The summary of a test's state in this run.
    pub fn summary(&self, test: &SequentialTest, header: &Header, elapsed_s: f64) -> Summary {
        let st = test.status();
        Summary {
            decision: test.decision().unwrap_or(Decision::Undecided),
            queries: st.n,
            mean: st.mean,
            lower: st.lower,
            upper: st.upper,
            alpha: header.params.alpha,
            params: header.params,
            mode: self.mode,
            k: self.k,
            score_kind: header.score_kind,
            served: Served::of(test, header.ladder.as_ref()),
            elapsed_s,
            run_id: self.run_id.clone(),
            transcript: self.transcript.display().to_string(),
            key_commitment: self.key.commitment(),
        }
    }
}

/// Everything a diff run needs.
pub struct DiffConfig {
    /// Reference model spec.
    pub reference: String,
    /// Candidate model spec.
    pub candidate: String,
    /// The run.
    pub run: RunSpec,
    /// Hold one model at a time, in batches of this many challenges.
    pub one_at_a_time: Option<usize>,
}

/// What every run reports, diff or audit: the verdict and how it was reached.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Verdict.
    pub decision: Decision,
    /// Challenges used.
    pub queries: usize,
    /// Mean clipped score.
    pub mean: f64,
    /// Confidence sequence lower end.
    pub lower: f64,
    /// Upper end.
    pub upper: f64,
    /// Error bound of each decision.
    pub alpha: f64,
    /// Margins and budget.
    pub params: TestParams,
    /// Mode.
    pub mode: Mode,
    /// Continuation length.
    pub k: usize,
    /// How challenges were scored.
    pub score_kind: ScoreKind,
    /// What the candidate's divergence says it serves: the estimate, and the reference's
    /// ladder rungs it is consistent with or excludes.
    pub served: Served,
    /// Wall time of the run (all sessions, when resumed).
    pub elapsed_s: f64,
    /// Run id.
    pub run_id: String,
    /// Transcript path.
    pub transcript: String,
    /// Key commitment.
    pub key_commitment: String,
}

/// The outcome of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiffOutcome {
    /// Verdict and how it was reached.
    #[serde(flatten)]
    pub summary: Summary,
    /// Reference identity.
    pub reference: Identity,
    /// Candidate identity.
    pub candidate: Identity,
}

/// What went wrong in a diff run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffError {
    /// A model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The transcript.
    #[error(transparent)]
    Transcript(#[from] TranscriptError),
    /// Challenge data or key.
    #[error(transparent)]
    Challenge(#[from] crate::challenge::ChallengeError),
    /// Parameters.
    #[error(transparent)]
    Params(#[from] crate::stats::ParamError),
    /// A calibration that cannot serve this run.
    #[error("calibration: {0}")]
    Calibration(String),
}

/// Progress callback: status after each challenge.
pub type Progress<'a> = &'a mut dyn FnMut(&Status);

/// Run (or resume) a diff to a decision.
pub fn run(cfg: &DiffConfig, progress: Progress<'_>) -> Result<DiffOutcome, DiffError> {
    let start = Instant::now();
    let catalog = Catalog::load()?;
    let ref_path = resolve(&cfg.reference)?;
    let cand_path = resolve(&cfg.candidate)?;
    let opts = LoadOptions {
        kernels: cfg.run.kernels,
    };
    let ref_spec = ref_path.display().to_string();
    let cand_spec = cand_path.display().to_string();
    // Hash the files (the identities) on a second thread while this one loads the models:
    // both are single-threaded work on the same files. Everything happens before the
    // transcript exists, so a model that fails to load leaves no file.
    let (identities, both) = std::thread::scope(|scope| {
        let hashing = scope.spawn(|| -> Result<(Identity, Identity), ModelError> {
            Ok((
                fingerprint(&ref_path, false)?,
                fingerprint(&cand_path, false)?,
            ))
        });
        let both = match cfg.one_at_a_time {
            None => Model::load(&ref_spec, opts)
                .and_then(|r| Ok(Some((r, Model::load(&cand_spec, opts)?)))),
            Some(_) => Ok(None),
        };
        let identities = hashing.join().expect("the hashing thread does not panic");
        (identities, both)
    });
    let (reference, candidate) = identities?;
    let both = both?;
    let kind = score::kind_for(&reference, &candidate);
    let calibration = cfg.run.calibration_for(&reference)?;
    let params = cfg.run.params(kind, calibration.as_ref())?;
    let mut test = SequentialTest::new(params)?;
    let mut header = cfg.run.header(
        kind,
        params,
        calibration.as_ref(),
        reference.clone(),
        Candidate::Model(candidate.clone()),
    );
    tracing::debug!("setup done: {:.2} s", start.elapsed().as_secs_f64());
    let mut prior_elapsed = 0.0;
    let mut writer = if cfg.run.resume {
        let same = |c: &Candidate| matches!(c, Candidate::Model(c) if c.weight_hash == candidate.weight_hash);
        match transcript::resume(&cfg.run.transcript, &mut header, same, &mut test)? {
            Resumed::Finished(elapsed) => {
                return Ok(outcome(cfg, &test, &header, elapsed, reference, candidate))
            }
            Resumed::Continue(w, elapsed) => {
                prior_elapsed = elapsed;
                w
            }
        }
    } else {
        Writer::create(&cfg.run.transcript, &header)?
    };
    let budget = params.n_max;
    let challenges = |range: std::ops::Range<usize>| -> Vec<Challenge> {
        range
            .map(|i| catalog.challenge(&cfg.run.key, &cfg.run.run_id, i as u64))
            .collect()
    };
    let prompts =
        |chs: &[Challenge]| -> Vec<String> { chs.iter().map(|c| c.prompt.clone()).collect() };
    match (cfg.one_at_a_time, both) {
        (None, Some((rm, cm))) => {
            while test.decision().is_none() {
                let first = test.n();
                let group = groups(first, CYCLE, budget).remove(0);
                let t0 = Instant::now();
                let chs = challenges(group.clone());
                let sides = score::reference_pass(&rm, &prompts(&chs), cfg.run.k, kind)?;
                let t_ref = t0.elapsed().as_secs_f64();
                let scores = score::candidate_pass(&cm, &sides)?;
                tracing::debug!(
                    "challenges {group:?}: reference {t_ref:.2} s, candidate {:.2} s",
                    t0.elapsed().as_secs_f64() - t_ref
                );
                let per = t0.elapsed().as_secs_f64() / group.len() as f64;
                for ((ch, side), sc) in chs.into_iter().zip(sides).zip(scores) {
                    record(&mut writer, &mut test, ch, side, sc, per, progress)?;
                }
            }
        }
        (batch, _) => {
            let batch = batch.unwrap_or(1).max(1);
            while test.decision().is_none() {
                let t0 = Instant::now();
                let work: Vec<(Vec<Challenge>, Vec<score::ReferenceSide>)> = {
                    let rm = Model::load(&ref_spec, opts)?;
                    groups(test.n(), batch, budget)
                        .into_iter()
                        .map(|g| {
                            let chs = challenges(g);
                            let sides =
                                score::reference_pass(&rm, &prompts(&chs), cfg.run.k, kind)?;
                            Ok((chs, sides))
                        })
                        .collect::<Result<_, DiffError>>()?
                };
                let cm = Model::load(&cand_spec, opts)?;
                let n: usize = work.iter().map(|(c, _)| c.len()).sum();
                let per = t0.elapsed().as_secs_f64() / n as f64;
                for (chs, sides) in work {
                    if test.decision().is_some() {
                        break;
                    }
                    let t1 = Instant::now();
                    let scores = score::candidate_pass(&cm, &sides)?;
                    let each = per + t1.elapsed().as_secs_f64() / chs.len() as f64;
                    for ((ch, side), sc) in chs.into_iter().zip(sides).zip(scores) {
                        record(&mut writer, &mut test, ch, side, sc, each, progress)?;
                    }
                }
            }
        }
    }
    let elapsed = prior_elapsed + start.elapsed().as_secs_f64();
    let st = test.status();
    writer.append(&Verdict::new(
        test.decision().unwrap_or(Decision::Undecided),
        &st,
        Served::of(&test, header.ladder.as_ref()),
        elapsed,
    ))?;
    Ok(outcome(cfg, &test, &header, elapsed, reference, candidate))
}

/// The groups of challenge indices scored together, covering `count` indices from `first`
/// (fewer if the budget `n_max` ends first), split at cycle ends: a group never spans two
/// cycles, so both paths (and a resumed run) walk the same groups after the first.
fn groups(first: usize, count: usize, n_max: usize) -> Vec<std::ops::Range<usize>> {
    let end = (first + count.max(1)).min(n_max.max(first + 1));
    let mut out = Vec::new();
    let mut i = first;
    while i < end {
        let j = ((i / CYCLE + 1) * CYCLE).min(end);
        out.push(i..j);
        i = j;
    }
    out
}

fn record(
    writer: &mut Writer,
    test: &mut SequentialTest,
    ch: crate::challenge::Challenge,
    side: score::ReferenceSide,
    sc: score::ChallengeScore,
    seconds: f64,
    progress: Progress<'_>,
) -> Result<(), DiffError> {
    test.push(sc.score);
    let st = test.status();
    writer.append(&Query {
        record: "query".into(),
        index: ch.index,
        family: ch.family,
        template: ch.template,
        prompt: ch.prompt,
        continuation_ids: side.continuation_ids,
        continuation_text: side.continuation_text,
        score: sc,
        mean: st.mean,
        lower: st.lower,
        upper: st.upper,
        seconds,
        endpoint: None,
    })?;
    progress(&st);
    Ok(())
}

fn outcome(
    cfg: &DiffConfig,
    test: &SequentialTest,
    header: &Header,
    elapsed: f64,
    reference: Identity,
    candidate: Identity,
) -> DiffOutcome {
    DiffOutcome {
        summary: cfg.run.summary(test, header, elapsed),
        reference,
        candidate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_margins_are_the_kl_margins_scaled() {
        let (g, d) = KL_MARGINS;
        let (eg, ed) = ENDPOINT_MARGINS;
        assert!((eg - g * ENDPOINT_SHARE).abs() < 1e-12 && (ed - d * ENDPOINT_SHARE).abs() < 1e-12);
        for mode in [Mode::Quick, Mode::Audit, Mode::Extended] {
            for kind in [
                ScoreKind::Kl,
                ScoreKind::EndpointKl,
                ScoreKind::BitsPerByte,
                ScoreKind::TextMismatch,
            ] {
                mode.params(kind).validate().unwrap();
            }
        }
    }

    #[test]
    fn groups_split_at_cycle_ends_and_stop_at_the_budget() {
        assert_eq!(groups(0, CYCLE, 200), vec![0..5]);
        assert_eq!(groups(3, CYCLE, 200), vec![3..5, 5..8]);
        assert_eq!(groups(0, 12, 200), vec![0..5, 5..10, 10..12]);
        assert_eq!(groups(10, 5, 12), vec![10..12]);
        // A resumed run mid-cycle finishes that cycle first, then walks whole cycles.
        assert_eq!(groups(7, 1, 200), vec![7..8]);
        assert_eq!(groups(8, 10, 200), vec![8..10, 10..15, 15..18]);
    }
}
