//! The one sequential run: key → challenges → reference side → candidate side → scores →
//! test → transcript lines, until the test decides, the budget runs out, or the candidate asks
//! to stop (a token budget).
//!
//! A run compares two sides through two traits:
//! * a [`Reference`], the model the provider claims to serve: it continues a group of prompts
//!   greedily and gives its next-token distributions along any token sequence (teacher
//!   forcing). Today a local model ([`local::LocalModel`]); a trusted endpoint or a precomputed
//!   pack is one more implementation.
//! * a [`Candidate`], what is tested: it scores a group of challenges against the reference,
//!   teacher-forced on the reference's continuations (a local model, an endpoint that echoes)
//!   or by generating its own tokens for the reference to score (an endpoint that only
//!   generates).
//!
//! This room owns everything else a run is: the mode presets and the run's description
//! ([`spec`]), run ids and challenge keys ([`files`]), the transcript and resume, the summary,
//! and one error enum. `pot diff` and `pot audit` are adapters that build the two sides.
//!
//! Challenges are scored in groups of one stratification cycle (the test decides only at cycle
//! ends, so this costs no query). With `one_at_a_time`, the reference alone computes its half
//! of a batch of groups and lets go of its model, then the candidate alone finishes them; the
//! groups and the order in which scores enter the test are the same either way, so both paths
//! reach the same decision at the same query.

pub mod files;
pub mod local;
pub mod spec;

use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use spec::{Mode, Overrides, RunSpec, CLIP_RATIO, ENDPOINT_SHARE};

use crate::challenge::{Catalog, Challenge};
use crate::identity::Identity;
use crate::model::chat::Message;
use crate::model::tokenizer::Tokenizer;
use crate::model::ModelError;
use crate::score::{ChallengeScore, ReferenceSide, ScoreKind};
use crate::served::Served;
use crate::stats::{Decision, SequentialTest, Status, TestParams, CYCLE};
use crate::transcript::{self, Query, Resumed, TranscriptError, Verdict, Writer};

/// The side a run trusts: the claimed model.
pub trait Reference {
    /// Its identity (the header records it; calibrations are looked up by its weights).
    fn identity(&self) -> &Identity;
    /// Its tokenizer (candidates read an endpoint's tokens and text through it).
    fn tokenizer(&mut self) -> Result<&Tokenizer, RunError>;
    /// A prompt's token ids as the reference sees it: raw, or through its chat template.
    fn prompt_ids(&mut self, prompt: &str, chat: bool) -> Result<Vec<u32>, RunError>;
    /// The reference's half of a group: each prompt continued greedily by up to `k` tokens,
    /// with what scoring as `kind` needs (see [`crate::score::reference_pass`]).
    fn continue_group(
        &mut self,
        prompts: &[String],
        k: usize,
        kind: ScoreKind,
    ) -> Result<Vec<ReferenceSide>, RunError>;
    /// Teacher forcing: log-probability rows of each sequence from position `from[i]` on.
    fn distributions(
        &mut self,
        seqs: &[&[u32]],
        from: &[usize],
    ) -> Result<Vec<Vec<Vec<f32>>>, RunError>;
    /// Let go of what it holds in memory (one model at a time); the next call takes it back.
    fn release(&mut self) {}
}

/// One scored challenge and what the transcript keeps of it.
pub struct Scored {
    /// The score.
    pub score: ChallengeScore,
    /// The continuation scored (the reference's, or the endpoint's own tokens).
    pub continuation_ids: Vec<u32>,
    /// Its text.
    pub continuation_text: String,
    /// Endpoints: the request and the raw response.
    pub exchange: Option<serde_json::Value>,
}

/// What a run tests.
pub trait Candidate {
    /// How the transcript's header records it.
    fn describe(&self) -> transcript::Candidate;
    /// Whether a transcript's recorded candidate is this one (resume continues only then).
    fn is(&self, recorded: &transcript::Candidate) -> bool;
    /// How its challenges are scored against a reference with this identity.
    fn score_kind(&self, reference: &Identity) -> ScoreKind;
    /// The kind of reference side it scores (the reference's continuations), or `None` when
    /// it generates its own tokens and has the reference score those.
    fn continuations(&self, kind: ScoreKind) -> Option<ScoreKind>;
    /// Score a group: `sides` holds the reference's continuations when
    /// [`Candidate::continuations`] asked for them.
    fn score_group(
        &mut self,
        reference: &mut dyn Reference,
        challenges: &[Challenge],
        sides: Option<Vec<ReferenceSide>>,
    ) -> Result<Vec<Scored>, RunError>;
    /// Why to stop before the next group (a budget of the candidate's own), if so.
    fn stop(&self) -> Option<String> {
        None
    }
    /// Let go of what it holds in memory.
    fn release(&mut self) {}
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
    /// Sampled-text runs: log10 of the uniformity e-value of the PITs (DIFFERENT at
    /// log10(1/α)) and how many PITs it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uniformity: Option<(f64, u64)>,
}

/// How a run ended.
pub struct Outcome {
    /// Verdict and how it was reached.
    pub summary: Summary,
    /// Why the run stopped before a verdict (a candidate's budget), if it did.
    pub stopped: Option<String>,
}

/// What can go wrong in a run, diff or audit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
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
    /// HTTP to an endpoint.
    #[error(transparent)]
    Client(#[from] crate::openai::ClientError),
    /// The endpoint lacks what the run needs.
    #[error("{url}: {what}")]
    Unsupported {
        /// Endpoint.
        url: String,
        /// What is missing, and what to do.
        what: String,
    },
    /// The run's files: its key, its transcripts folder.
    #[error(transparent)]
    Files(#[from] files::FilesError),
    /// A reference pack.
    #[error(transparent)]
    Pack(Box<crate::audit::pack::PackError>),
}

/// Progress callback: status after each challenge.
pub type Progress<'a> = &'a mut dyn FnMut(&Status);

/// Run (or resume) `spec` to a decision. `one_at_a_time`: hold one side's model at a time,
/// the reference computing this many challenges before the candidate scores them.
pub fn run(
    spec: &RunSpec,
    reference: &mut dyn Reference,
    candidate: &mut dyn Candidate,
    one_at_a_time: Option<usize>,
    progress: Progress<'_>,
) -> Result<Outcome, RunError> {
    let start = Instant::now();
    let catalog = Catalog::load()?;
    let kind = candidate.score_kind(reference.identity());
    let calibration = spec.calibration_for(reference.identity())?;
    let params = spec.params(kind, calibration.as_ref())?;
    let mut test = SequentialTest::for_kind(params, kind)?;
    let mut header = spec.header(
        kind,
        params,
        calibration.as_ref(),
        reference.identity().clone(),
        candidate.describe(),
    );
    let mut prior_elapsed = 0.0;
    let mut writer = if spec.resume {
        match transcript::resume(
            &spec.transcript,
            &spec.key,
            &mut header,
            |c| candidate.is(c),
            &mut test,
        )? {
            Resumed::Finished(elapsed) => {
                return Ok(Outcome {
                    summary: spec.summary(&test, &header, elapsed),
                    stopped: None,
                })
            }
            Resumed::Continue(w, elapsed) => {
                prior_elapsed = elapsed;
                w
            }
        }
    } else {
        Writer::create(&spec.transcript, &header)?
    };
    let side_kind = candidate.continuations(kind);
    let mut stopped = None;
    while test.decision().is_none() {
        if let Some(why) = candidate.stop() {
            stopped = Some(format!("{why} and --resume {} to go on", spec.run_id));
            break;
        }
        // The reference's half of the next groups: one group when both sides are held, a
        // batch of them when one side is held at a time.
        let t0 = Instant::now();
        let next = match one_at_a_time {
            None => vec![groups(test.n(), CYCLE, params.n_max).remove(0)],
            Some(batch) => groups(test.n(), batch.max(1), params.n_max),
        };
        let mut work = Vec::with_capacity(next.len());
        for g in next {
            let chs: Vec<Challenge> = g
                .map(|i| catalog.challenge(&spec.key, &spec.run_id, i as u64))
                .collect();
            let sides = match side_kind {
                Some(kind) => {
                    let prompts: Vec<String> = chs.iter().map(|c| c.prompt.clone()).collect();
                    Some(reference.continue_group(&prompts, spec.k, kind)?)
                }
                None => None,
            };
            work.push((chs, sides));
        }
        if one_at_a_time.is_some() {
            reference.release();
        }
        let n: usize = work.iter().map(|(c, _)| c.len()).sum();
        let t_ref = t0.elapsed().as_secs_f64();
        tracing::debug!("challenges {}..: reference {t_ref:.2} s", test.n());
        for (chs, sides) in work {
            if test.decision().is_some() {
                break;
            }
            let t1 = Instant::now();
            let scored = candidate.score_group(reference, &chs, sides)?;
            let t_cand = t1.elapsed().as_secs_f64();
            tracing::debug!("challenges {}..: candidate {t_cand:.2} s", test.n());
            let seconds = t_ref / n as f64 + t_cand / chs.len() as f64;
            for (ch, s) in chs.into_iter().zip(scored) {
                test.push_score(&s.score);
                let st = test.status();
                writer.append(&Query {
                    record: "query".into(),
                    index: ch.index,
                    family: ch.family,
                    template: ch.template,
                    prompt: ch.prompt,
                    continuation_ids: s.continuation_ids,
                    continuation_text: s.continuation_text,
                    score: s.score,
                    mean: st.mean,
                    lower: st.lower,
                    upper: st.upper,
                    seconds,
                    endpoint: s.exchange,
                })?;
                progress(&st);
            }
        }
        if one_at_a_time.is_some() {
            candidate.release();
        }
    }
    let elapsed = prior_elapsed + start.elapsed().as_secs_f64();
    if stopped.is_none() {
        writer.append(&Verdict::new(
            test.decision().unwrap_or(Decision::Undecided),
            &test.status(),
            Served::of(&test, header.ladder.as_ref()),
            elapsed,
            Some(crate::zk::commit_scores(&spec.key, &test)),
        ))?;
    }
    Ok(Outcome {
        summary: spec.summary(&test, &header, elapsed),
        stopped,
    })
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

/// A user message, the one shape of chat prompt a run sends.
pub fn user_message(prompt: &str) -> Message {
    Message {
        role: "user".into(),
        content: prompt.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
