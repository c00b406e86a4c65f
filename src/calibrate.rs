//! `pot calibrate`: what a run can and cannot see, for one reference model.
//!
//! Builds substitutes of the reference with [`crate::variant`] (a lossless re-encoding, lower
//! quantizations, a pruned and two noised copies) in a temporary folder, runs `pot diff`
//! against each in each mode with fresh keys, and reports the verdict, the queries it took and
//! the mean score. A substitute that a mode calls SAME is one that mode cannot tell from the
//! reference at its margins; one it calls DIFFERENT is caught, and the queries say at what
//! cost. Substitutes are deleted afterwards unless kept.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::challenge::ChallengeKey;
use crate::diff::{self, DiffConfig, Mode, RunSpec};
use crate::model::Kernels;
use crate::stats::Decision;
use crate::variant::{self, Target, VariantOptions};

/// A substitute to build: a name and how to derive it.
#[derive(Clone, Debug, Serialize)]
pub struct Substitute {
    /// Short name (also the file stem).
    pub name: String,
    /// How it is derived.
    #[serde(skip)]
    pub opts: VariantOptions,
}

impl Substitute {
    fn new(name: &str, to: Target, prune_layers: usize, noise: f64) -> Self {
        Self {
            name: name.into(),
            opts: VariantOptions {
                to,
                prune_layers,
                noise,
                seed: 1,
            },
        }
    }
}

/// The substitutes `pot calibrate` builds by default: from what no run should catch to what
/// every run should.
pub fn default_substitutes() -> Vec<Substitute> {
    vec![
        Substitute::new("f16", Target::F16, 0, 0.0),
        Substitute::new("q8_0", Target::Q8_0, 0, 0.0),
        Substitute::new("q4_0", Target::Q4_0, 0, 0.0),
        Substitute::new("q3_k", Target::Q3K, 0, 0.0),
        Substitute::new("q2_k", Target::Q2K, 0, 0.0),
        Substitute::new("prune1", Target::F16, 1, 0.0),
        Substitute::new("noise0.02", Target::F16, 0, 0.02),
        Substitute::new("noise0.1", Target::F16, 0, 0.1),
    ]
}

/// What to calibrate.
pub struct CalibrateConfig {
    /// The reference model spec.
    pub reference: String,
    /// Substitutes to build.
    pub substitutes: Vec<Substitute>,
    /// Modes to run.
    pub modes: Vec<Mode>,
    /// Runs per substitute and mode (fresh keys each).
    pub runs: usize,
    /// Kernels.
    pub kernels: Kernels,
    /// Where substitutes and transcripts go.
    pub workdir: PathBuf,
}

/// One run against one substitute.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Substitute name.
    pub substitute: String,
    /// Its file size.
    pub file_bytes: u64,
    /// Mode.
    pub mode: Mode,
    /// Run number (from 1).
    pub run: usize,
    /// Verdict.
    pub decision: Decision,
    /// Challenges it took.
    pub queries: usize,
    /// Mean clipped score.
    pub mean: f64,
    /// Confidence sequence.
    pub lower: f64,
    /// Upper end.
    pub upper: f64,
    /// Wall time of the run.
    pub seconds: f64,
}

/// A substitute that could not be built (an option the model does not allow).
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// Substitute name.
    pub substitute: String,
    /// Why.
    pub reason: String,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CalibrateError {
    /// A diff.
    #[error(transparent)]
    Diff(#[from] diff::DiffError),
    /// A model.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The work folder.
    #[error("{path}: {reason}")]
    Io {
        /// Folder.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Progress: a substitute being built, or a finished row.
pub enum Event<'a> {
    /// Building this substitute.
    Building(&'a str),
    /// A run finished.
    Row(&'a Row),
}

/// Build each substitute and run each mode against it `runs` times.
pub fn run(
    cfg: &CalibrateConfig,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<(Vec<Row>, Vec<Skipped>), CalibrateError> {
    let source = crate::model::resolve(&cfg.reference)?;
    std::fs::create_dir_all(&cfg.workdir).map_err(|e| CalibrateError::Io {
        path: cfg.workdir.display().to_string(),
        reason: format!("cannot create the work folder ({e})"),
    })?;
    let (mut rows, mut skipped) = (Vec::new(), Vec::new());
    for s in &cfg.substitutes {
        progress(Event::Building(&s.name));
        let file = cfg.workdir.join(format!("{}.gguf", s.name));
        if !file.exists() {
            if let Err(e) = variant::derive(&source, &s.opts, &file) {
                let _ = std::fs::remove_file(&file);
                match e {
                    variant::VariantError::Options(reason) => {
                        skipped.push(Skipped {
                            substitute: s.name.clone(),
                            reason,
                        });
                        continue;
                    }
                    other => {
                        return Err(CalibrateError::Io {
                            path: file.display().to_string(),
                            reason: other.to_string(),
                        })
                    }
                }
            }
        }
        let file_bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        for &mode in &cfg.modes {
            for r in 1..=cfg.runs {
                let run_id = format!(
                    "calibrate-{}-{}-{r}-{:08x}",
                    s.name,
                    mode.name(),
                    rand::random::<u32>()
                );
                let key = ChallengeKey::generate().for_run(&run_id);
                let out = diff::run(
                    &DiffConfig {
                        reference: source.display().to_string(),
                        candidate: file.display().to_string(),
                        run: RunSpec {
                            mode,
                            params: mode.params(),
                            k: mode.k(),
                            kernels: cfg.kernels,
                            key,
                            transcript: transcript_path(&cfg.workdir, &run_id),
                            run_id,
                            resume: false,
                        },
                        one_at_a_time: None,
                    },
                    &mut |_| {},
                )?;
                let row = Row {
                    substitute: s.name.clone(),
                    file_bytes,
                    mode,
                    run: r,
                    decision: out.summary.decision,
                    queries: out.summary.queries,
                    mean: out.summary.mean,
                    lower: out.summary.lower,
                    upper: out.summary.upper,
                    seconds: out.summary.elapsed_s,
                };
                progress(Event::Row(&row));
                rows.push(row);
            }
        }
    }
    Ok((rows, skipped))
}

fn transcript_path(dir: &Path, run_id: &str) -> PathBuf {
    dir.join("transcripts").join(format!("{run_id}.ndjson"))
}
