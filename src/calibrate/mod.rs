//! `pot calibrate`: the noise floor and the quantization ladder of one reference model.
//!
//! What pot can tell apart depends on two measured distributions of the per-challenge score
//! (mean next-token KL(ref ‖ cand) over K continuation positions):
//!
//! * **the floor**: the *same weights* computed another way — the other matrix kernels (the
//!   file's quantization with 8-bit activations, or the weights widened to f32), another batch
//!   shape (one challenge per pass instead of a group), an f16 re-encoding of a quantized file,
//!   and, when asked, the same weights behind a server. A verdict must call all of these SAME.
//! * **the ladder**: the reference re-encoded at each rung (f16, bf16, q8_0, q6_k, q5_k, q5_0,
//!   q4_k, q4_0, q3_k, q2_k; [`crate::variant`]). These are the substitutes buyers meet.
//!
//! The reference continues every keyed challenge once (the same groups a diff walks); each
//! floor variant and rung is then teacher-forced on those continuations, and every challenge's
//! score is kept, so margins, rung placement and simulations can use the whole distribution.
//! Each score is also computed as an endpoint reporting `top_logprobs` alternatives would show
//! it ([`crate::score::coarse_kl`] of [`crate::score::endpoint_view`]), which is what `pot
//! audit`'s echo and logprobs methods see.
//!
//! The result ([`Calibration`]) is a JSON file: `--margins CAL.json` on diff and audit derives
//! the margins from it, and a verdict whose reference has a calibration says which rungs its
//! confidence sequence is consistent with ([`Calibration::place`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::challenge::{Catalog, ChallengeKey};
use crate::identity::{fingerprint, Identity};
use crate::model::{resolve, Kernels, LoadOptions, Model, ModelError};
use crate::score::{self, ReferenceSide, ScoreKind};
use crate::stats::CYCLE;
use crate::variant::{self, Target, VariantOptions};

mod measure;
use measure::kernels_name;
pub use measure::run;

/// Format tag of calibration files.
pub const FORMAT: &str = "pot-calibration/1";

/// Alternatives per position an endpoint is assumed to report (the OpenAI API's maximum).
pub const ENDPOINT_TOP: usize = 20;

/// A way of computing the reference's own weights differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Floor {
    /// The other matrix kernels: dense f32 if the run uses the quantized ones, and back.
    OtherKernels,
    /// One challenge per teacher-forced pass instead of a group of five (other matrix shapes).
    OneAtATime,
    /// The reference's matrices re-encoded as f16 (skipped when they are 16-bit already).
    F16Reencoding,
}

impl Floor {
    /// Entry name.
    pub fn name(self) -> &'static str {
        crate::Named::name(self)
    }
}

impl crate::Named for Floor {
    const ALL: &'static [Self] = &[Floor::OtherKernels, Floor::OneAtATime, Floor::F16Reencoding];

    fn name(self) -> &'static str {
        match self {
            Floor::OtherKernels => "other-kernels",
            Floor::OneAtATime => "one-at-a-time",
            Floor::F16Reencoding => "f16-reencoding",
        }
    }

    fn about(self) -> &'static str {
        match self {
            Floor::OtherKernels => "the other matrix kernels: dense f32 if the run uses the quantized ones, and back",
            Floor::OneAtATime => "one challenge per teacher-forced pass instead of a group of five (other matrix shapes)",
            Floor::F16Reencoding => "the reference's matrices re-encoded as f16 (skipped when they are 16-bit already)",
        }
    }
}

/// What to calibrate.
pub struct CalibrateConfig {
    /// The reference model (its best-precision file).
    pub reference: String,
    /// Challenges (rounded up to whole cycles of five).
    pub challenges: usize,
    /// Continuation length K.
    pub k: usize,
    /// The kernels runs of this reference use.
    pub kernels: Kernels,
    /// Floor variants to measure.
    pub floors: Vec<Floor>,
    /// Other files holding the reference's weights (the file an f16 reference was made from,
    /// another converter's output): floor entries too, named by their file stem.
    pub same_files: Vec<PathBuf>,
    /// Ladder rungs to build and measure.
    pub rungs: Vec<Target>,
    /// Key of the challenges (a run key).
    pub key: ChallengeKey,
    /// Run id of the challenges.
    pub run_id: String,
    /// Where rung files are written (and found again when they exist).
    pub workdir: PathBuf,
    /// Keep every position's KL in the entries (studies of K).
    pub keep_positions: bool,
    /// A server holding the reference's weights: its answers to the same challenges (by
    /// `pot audit`'s echo or logprobs method) are a floor entry, `endpoint`.
    pub endpoint: Option<crate::openai::EndpointConfig>,
}

/// Distribution of one entry's per-challenge scores.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Distribution {
    /// Challenges.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub sd: f64,
    /// Median.
    pub median: f64,
    /// 2.5 % quantile of the scores.
    pub p2_5: f64,
    /// 97.5 % quantile of the scores.
    pub p97_5: f64,
    /// 95 % confidence interval of the mean (Student t).
    pub mean_ci95: [f64; 2],
}

impl Distribution {
    /// Of a sample (at least one value).
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n.max(1) as f64;
        let var = if n > 1 {
            xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        let sd = var.sqrt();
        let mut sorted = xs.to_vec();
        sorted.sort_by(f64::total_cmp);
        let half = student_t_975(n.saturating_sub(1)) * sd / (n.max(1) as f64).sqrt();
        Self {
            n,
            mean,
            sd,
            median: quantile(&sorted, 0.5),
            p2_5: quantile(&sorted, 0.025),
            p97_5: quantile(&sorted, 0.975),
            mean_ci95: [(mean - half).max(0.0), mean + half],
        }
    }
}

/// The 97.5 % quantile of Student's t with `df` degrees of freedom (∞ for `df = 0`).
fn student_t_975(df: usize) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    if df == 0 {
        return f64::INFINITY;
    }
    StudentsT::new(0.0, 1.0, df as f64)
        .map(|t| t.inverse_cdf(0.975))
        .unwrap_or(f64::INFINITY)
}

/// Linear-interpolated quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let h = q * (n - 1) as f64;
            let (i, f) = (h.floor() as usize, h.fract());
            sorted[i] + f * (sorted[(i + 1).min(n - 1)] - sorted[i])
        }
    }
}

/// Floor or rung.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The same weights, computed another way.
    Floor,
    /// A re-encoding of the reference: a substitute.
    Rung,
}

/// One measured variant.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// Name: a floor's (`other-kernels`, ...) or a rung's (`q4_0`, ...).
    pub name: String,
    /// Floor or rung.
    pub role: Role,
    /// What it is, in words.
    pub what: String,
    /// Bits per weight of a rung's matrices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits_per_weight: Option<f64>,
    /// Size of a rung's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u64>,
    /// Per-challenge mean KL(ref ‖ variant), nats per token (none for an endpoint, which
    /// reports its top alternatives only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<Distribution>,
    /// The same as an endpoint reporting [`ENDPOINT_TOP`] alternatives shows it.
    pub endpoint_kl: Distribution,
    /// Share of positions where both models' most likely token agree.
    pub top1_agreement: f64,
    /// Every challenge's score (KL), in challenge order.
    pub scores: Vec<f64>,
    /// Every challenge's endpoint-view score.
    pub endpoint_scores: Vec<f64>,
    /// Per challenge, the KL at each position (only with `keep_positions`: for studies of
    /// the continuation length, since a prefix of the positions is a shorter run's score).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<Vec<Vec<f64>>>,
    /// Per challenge, the endpoint view's KL at each position (with `keep_positions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_positions: Option<Vec<Vec<f64>>>,
    /// Seconds to build (rungs) and score.
    pub seconds: f64,
}

impl Entry {
    /// The per-challenge scores of a score kind: KL for diffs, the endpoint view for audits
    /// by log-probabilities; `None` for kinds a calibration does not measure.
    pub fn scores_for(&self, kind: ScoreKind) -> Option<&[f64]> {
        let s = match kind {
            ScoreKind::Kl => &self.scores,
            ScoreKind::EndpointKl => &self.endpoint_scores,
            ScoreKind::BitsPerByte | ScoreKind::TextMismatch | ScoreKind::SampledText => {
                return None
            }
        };
        // An endpoint entry has no full-KL scores (a server reports top alternatives only).
        (!s.is_empty()).then_some(s.as_slice())
    }
}

/// A calibration of one reference.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// [`FORMAT`].
    pub format: String,
    /// The reference.
    pub reference: Identity,
    /// Its kernels.
    pub kernels: Kernels,
    /// Continuation length.
    pub k: usize,
    /// Challenges per entry.
    pub challenges: usize,
    /// Alternatives per position of the endpoint view.
    pub top_logprobs: usize,
    /// Run id of the challenges.
    pub run_id: String,
    /// Commitment to their key.
    pub key_commitment: String,
    /// Each challenge's family, in challenge order (the stratum of each score).
    pub families: Vec<String>,
    /// Floor entries, then rungs.
    pub entries: Vec<Entry>,
    /// pot's version.
    pub pot_version: String,
    /// When it was made.
    pub created_unix: u64,
    /// Wall time.
    pub seconds: f64,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CalibrateError {
    /// A model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Challenge data.
    #[error(transparent)]
    Challenge(#[from] crate::challenge::ChallengeError),
    /// Building a rung.
    #[error("building rung {rung}: {source}")]
    Variant {
        /// The rung.
        rung: String,
        /// Why.
        #[source]
        source: variant::VariantError,
    },
    /// A file or folder that cannot be read, written or created.
    #[error(transparent)]
    File(#[from] crate::FileError),
    /// A file that is not a calibration.
    #[error(
        "{path}: not a pot calibration ({source}); make one with pot calibrate --ref MODEL -o FILE"
    )]
    NotCalibration {
        /// The file.
        path: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A calibration of another format.
    #[error("{path}: calibration format {found:?}, this pot reads {FORMAT:?}; calibrate again")]
    Format {
        /// The file.
        path: String,
        /// Its format.
        found: String,
    },
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The endpoint floor cannot be measured that way.
    #[error("endpoint floor: {0}")]
    Endpoint(String),
    /// The endpoint floor's audit failed.
    #[error("endpoint floor: {0}")]
    EndpointRun(#[source] Box<crate::run::RunError>),
    /// The endpoint floor's transcript cannot be read back.
    #[error("endpoint floor: {0}")]
    EndpointTranscript(#[source] crate::transcript::TranscriptError),
}

/// Progress of a calibration.
pub enum Event<'a> {
    /// The reference continued this many of the challenges.
    Reference(usize, usize),
    /// Building a rung's file.
    Building(&'a str),
    /// Scoring an entry.
    Scoring(&'a str),
    /// An entry is done.
    Done(&'a Entry),
}

impl Calibration {
    /// Read a calibration file, refusing other formats.
    pub fn read(path: &Path) -> Result<Self, CalibrateError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::FileError::new(
                path,
                "cannot read the calibration",
                "; make one with pot calibrate --ref MODEL -o FILE",
                e,
            )
        })?;
        let c: Calibration =
            serde_json::from_str(&text).map_err(|source| CalibrateError::NotCalibration {
                path: p.clone(),
                source,
            })?;
        if c.format != FORMAT {
            return Err(CalibrateError::Format {
                path: p,
                found: c.format,
            });
        }
        Ok(c)
    }

    /// Write it to `path` (through a temporary file: never half-written).
    pub fn write(&self, path: &Path) -> Result<(), CalibrateError> {
        use std::io::Write;
        let err = |e| {
            crate::FileError::new(
                path,
                "cannot write the calibration",
                "; check the folder",
                e,
            )
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = variant::tempfile_in(dir).map_err(err)?;
        let text = serde_json::to_string_pretty(self).expect("a calibration serializes");
        let mut f = tmp.as_file();
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(tmp.persist(path).map_err(err)?)
    }

    /// Floor entries.
    pub fn floor(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.role == Role::Floor)
    }

    /// Rung entries.
    pub fn rungs(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.role == Role::Rung)
    }
}

/// Where an entry sits against a test's margins, by its clipped mean's 95 % interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// Clipped mean below γ: runs say SAME (wrongly DIFFERENT with probability ≤ α).
    Same,
    /// Clipped mean above δ: runs say DIFFERENT (wrongly SAME with probability ≤ α).
    Different,
    /// Between the margins (or its interval straddles one): either verdict may come.
    Between,
}

/// Mean of scores clipped to `[0, clip]`, with its 95 % Student-t interval.
pub fn clipped_mean(scores: &[f64], clip: f64) -> Distribution {
    let xs: Vec<f64> = scores.iter().map(|s| s.clamp(0.0, clip)).collect();
    Distribution::of(&xs)
}

impl Calibration {
    /// The entries (floors and rungs) `older` measured that this calibration did not: a
    /// calibration that lacks some does not replace `older` in the store, so that measuring
    /// one more floor never loses a ladder (entries of two runs are not merged: each
    /// calibration's entries are scored on the same challenges).
    pub fn lacks<'a>(&self, older: &'a Calibration) -> Vec<&'a str> {
        older
            .entries
            .iter()
            .map(|e| e.name.as_str())
            .filter(|n| !self.entries.iter().any(|e| e.name == *n))
            .collect()
    }

    /// The floor's reach for a score kind: the highest upper end of a floor entry's 95 %
    /// interval of the mean (0 without floor entries).
    pub fn floor_high(&self, kind: ScoreKind) -> f64 {
        self.floor()
            .filter_map(|e| e.scores_for(kind))
            .map(|s| Distribution::of(s).mean_ci95[1])
            .fold(0.0, f64::max)
    }

    /// Where `entry` sits against margins γ, δ and clip B, for a score kind.
    pub fn expect(entry: &Entry, kind: ScoreKind, p: &crate::stats::TestParams) -> Option<Expect> {
        let d = clipped_mean(entry.scores_for(kind)?, p.clip);
        Some(if d.mean_ci95[1] < p.gamma {
            Expect::Same
        } else if d.mean_ci95[0] > p.delta {
            Expect::Different
        } else {
            Expect::Between
        })
    }
}

/// The calibration as a text table, with each entry's place against the margins `p`.
pub fn table(cal: &Calibration, p: &crate::stats::TestParams) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({} challenges, K = {}, {} kernels)",
        cal.reference.path,
        cal.challenges,
        cal.k,
        kernels_name(cal.kernels)
    );
    let _ = writeln!(
        s,
        "{:<15} {:>5} {:>8}  {:>9} {:>9} {:>21} {:>19}  {:>6}  {:>9}  {:<10}",
        "",
        "bits",
        "MB",
        "mean KL",
        "sd",
        "mean 95% CI",
        "scores 95% range",
        "top-1",
        "endpoint",
        "at margins"
    );
    let high = cal.floor_high(ScoreKind::Kl);
    for e in &cal.entries {
        let expect = match Calibration::expect(e, ScoreKind::Kl, p) {
            Some(Expect::Same) => "SAME",
            Some(Expect::Different) => "DIFFERENT",
            Some(Expect::Between) => "between",
            None => "-",
        };
        let kl = match &e.kl {
            Some(d) => format!(
                "{:>9.5} {:>9.5} [{:>8.5}, {:>8.5}] [{:>7.5}, {:>7.5}]",
                d.mean, d.sd, d.mean_ci95[0], d.mean_ci95[1], d.p2_5, d.p97_5
            ),
            None => format!("{:>9} {:>9} {:>21} {:>19}", "-", "-", "-", "-"),
        };
        let _ = writeln!(
            s,
            "{:<15} {:>5} {:>8}  {kl}  {:>6.3}  {:>9.5}  {:<10}",
            e.name,
            e.bits_per_weight.map_or("-".into(), |b| format!("{b:.2}")),
            e.file_bytes
                .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e6)),
            e.top1_agreement,
            e.endpoint_kl.mean,
            expect,
        );
    }
    let low = |e: &Entry| e.kl.as_ref().map_or(f64::NAN, |d| d.mean_ci95[0]);
    let apart: Vec<&str> = cal
        .rungs()
        .filter(|e| low(e) > high)
        .map(|e| e.name.as_str())
        .collect();
    let within: Vec<&str> = cal
        .rungs()
        .filter(|e| low(e) <= high)
        .map(|e| e.name.as_str())
        .collect();
    let _ = writeln!(
        s,
        "floor: the same weights computed otherwise reach a mean KL of {high:.5} (highest upper 95% bound)"
    );
    let list = |v: &[&str]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(s, "told apart from the floor: {}", list(&apart));
    let _ = writeln!(s, "within the floor's reach:  {}", list(&within));
    let _ = writeln!(
        s,
        "at margins: where the audit mode (γ = {}, δ = {}, clip {}) places each entry's clipped mean: SAME below γ, DIFFERENT above δ. endpoint: the mean as an endpoint reporting {} alternatives shows it (pot audit).",
        p.gamma, p.delta, p.clip, cal.top_logprobs
    );
    s
}

/// Where a calibration of the weights `weight_hash` lives in a calibration store.
pub fn stored_path(store: &Path, weight_hash: &str) -> PathBuf {
    store.join(format!("{weight_hash}.json"))
}

/// Where [`store`] left a calibration.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The stored calibration of the reference's weights.
    pub path: PathBuf,
    /// Entries the stored one measured and this one did not: when any, the stored one was
    /// kept and this one was not written there.
    pub kept_for: Vec<String>,
}

/// Store `cal` in the folder `store`, where diff and audit of its reference find it. The
/// latest calibration wins, unless the stored one measured entries this one did not (a floor
/// measured on its own must not drop a ladder): then the stored one stays.
pub fn store(cal: &Calibration, store: &Path) -> Result<Stored, CalibrateError> {
    std::fs::create_dir_all(store).map_err(|e| {
        crate::FileError::new(
            store,
            "cannot create the calibration store",
            "; check the folder or set POT_CALIBRATIONS",
            e,
        )
    })?;
    let path = stored_path(store, &cal.reference.weight_hash);
    let kept_for: Vec<String> = match Calibration::read(&path) {
        Ok(older) => cal.lacks(&older).into_iter().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    };
    if kept_for.is_empty() {
        cal.write(&path)?;
    }
    Ok(Stored { path, kept_for })
}

/// Margins derived from a calibration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Margins {
    /// SAME margin: twice the floor's reach.
    pub gamma: f64,
    /// DIFFERENT margin: twice γ.
    pub delta: f64,
    /// Clip: the mode's ratio of B to δ.
    pub clip: f64,
}

impl Calibration {
    /// Margins from the measured floor for a score kind: γ is twice the floor's reach
    /// ([`Calibration::floor_high`]: the same weights on kernels, batch shapes or servers this
    /// calibration did not measure may sit a little higher), δ = 2γ as in the modes, and
    /// B = `clip_ratio` · δ. `Err` says why the calibration cannot give margins.
    pub fn margins(&self, kind: ScoreKind, clip_ratio: f64) -> Result<Margins, String> {
        if self.floor().next().is_none() {
            return Err("the calibration measured no floor; calibrate again with --floors".into());
        }
        if self.entries.iter().all(|e| e.scores_for(kind).is_none()) {
            return Err(format!(
                "a calibration measures KL scores, and this run scores {kind:?}; drop --margins"
            ));
        }
        // Never below a hundredth of the audit mode's γ: a floor of exactly 0 (bit-identical
        // variants only) would otherwise give no margin at all.
        let gamma = (2.0 * self.floor_high(kind)).max(5e-5);
        let delta = 2.0 * gamma;
        Ok(Margins {
            gamma,
            delta,
            clip: clip_ratio * delta,
        })
    }
}
