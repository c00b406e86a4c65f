//! `pot diff`: two local models, the reference and the candidate, through the one run loop
//! ([`crate::run`]).

use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::model::LoadOptions;
use crate::run::local::LocalModel;
use crate::run::{Progress, Reference, RunError, RunSpec, Summary};

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

/// Run (or resume) a diff to a decision. Both models are loaded (and both files hashed)
/// before the transcript exists, unless one is held at a time.
pub fn run(cfg: &DiffConfig, progress: Progress<'_>) -> Result<DiffOutcome, RunError> {
    let opts = LoadOptions::kernels(cfg.run.kernels);
    let mut both = LocalModel::open_all(
        &[&cfg.reference, &cfg.candidate],
        opts,
        cfg.one_at_a_time.is_none(),
    )?;
    let mut candidate = both.pop().expect("two models");
    let mut reference = both.pop().expect("two models");
    let out = crate::run::run(
        &cfg.run,
        &mut reference,
        &mut candidate,
        cfg.one_at_a_time,
        progress,
    )?;
    Ok(DiffOutcome {
        summary: out.summary,
        reference: reference.identity().clone(),
        candidate: Reference::identity(&candidate).clone(),
    })
}
