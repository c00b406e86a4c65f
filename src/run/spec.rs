//! What a run is before it starts: the mode presets (error bound, margins, K, budget), the
//! overrides given by hand, and the run's description ([`RunSpec`]) that turns them, with the
//! reference's calibration, into the test's parameters and the transcript's header.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{RunError, Summary};
use crate::calibrate::Calibration;
use crate::challenge::ChallengeKey;
use crate::identity::Identity;
use crate::model::Kernels;
use crate::score::ScoreKind;
use crate::served::{Ladder, Served};
use crate::stats::{Decision, SequentialTest, TestParams, CYCLE};
use crate::transcript::{self, unix_now, Candidate, Header};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
/// (γ, δ) of sampled-text runs, on the mean PIT (1/2 under the reference; its sequence on
/// [0, 1] is reported, and the uniformity e-process decides).
const PIT_MARGINS: (f64, f64) = (0.5, 0.5);
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
            // The mean PIT's sequence is reported; the uniformity e-process decides.
            (_, ScoreKind::SampledText) => PIT_MARGINS,
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
        crate::Named::name(self)
    }
}

impl crate::Named for Mode {
    const ALL: &'static [Self] = &[Mode::Quick, Mode::Audit, Mode::Extended];

    fn name(self) -> &'static str {
        match self {
            Mode::Quick => "quick",
            Mode::Audit => "audit",
            Mode::Extended => "extended",
        }
    }

    fn about(self) -> &'static str {
        match self {
            Mode::Quick => "fast screening for another model or a 2- or 3-bit copy: α = 0.05, margins γ = 0.05, δ = 0.1 nats/token, K = 16, at most 50 challenges; calls 4-bit and finer copies SAME",
            Mode::Audit => "the default, sees 4-bit copies: α = 0.01, γ = 0.005, δ = 0.01 nats/token of KL (0.004 and 0.008 on what an endpoint reports), K = 32, at most 200 challenges",
            Mode::Extended => "disputes: the audit mode's margins at α = 0.001, K = 64, at most 1000 challenges",
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
    ) -> Result<TestParams, RunError> {
        let mut p = self.mode.params(kind);
        if self.margins_from_calibration {
            let cal = calibration.ok_or_else(|| {
                RunError::Calibration("--margins needs a calibration of the reference".into())
            })?;
            let m = cal
                .margins(kind, p.clip / p.delta)
                .map_err(RunError::Calibration)?;
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
    pub fn calibration_for(&self, reference: &Identity) -> Result<Option<Calibration>, RunError> {
        if let Some(c) = &self.calibration {
            if c.reference.weight_hash != reference.weight_hash {
                return Err(RunError::Calibration(format!(
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
            .map_err(|e| RunError::Calibration(format!("{e} (or remove it from the store)")))
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
            score_chain: Some(crate::zk::chain_start(&self.key)),
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
            uniformity: test
                .uniformity()
                .map(|u| (u.log_e() / std::f64::consts::LN_10, u.n())),
        }
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
                ScoreKind::SampledText,
            ] {
                mode.params(kind).validate().unwrap();
            }
        }
    }
}
