//! pot: tell whether an inference provider serves the model it claims.
//!
//! The data path, one module per room:
//! `challenge` (keyed prompts) → `model` (engine) → `score` (per-challenge divergence) →
//! `stats` (anytime-valid decision) → `transcript` (append-only record), joined by `run`, the
//! one sequential loop over a reference side and a candidate side (its modes, run ids, keys
//! and resume). `diff` runs it on two local models, `audit` with an OpenAI-compatible
//! endpoint as the candidate; `serve` is an OpenAI-compatible server for a local model;
//! `openai` is that wire format once, and the one HTTP client of audit and the router.
//! `commit` holds the proof-of-inference protocol (step data, Merkle trees, signed receipts,
//! VRF audit choice, the provider's step store); `verify` is the router that checks providers
//! by re-execution.
//! `report` turns experiment results into tables and plots; `evidence` signs a finished run into a bundle that anyone can re-check.
//! `identity` names models by their weights; `variant` derives cheaper substitutes (the rungs
//! of a quantization ladder), `calibrate` measures the noise floor and the ladder of a
//! reference, and `served` places a run's divergence on that ladder.
#![deny(missing_docs)]

pub mod audit;
pub mod calibrate;
pub mod challenge;
pub mod commit;
pub mod diff;
pub mod evidence;
pub mod identity;
pub mod model;
pub mod monitor;
pub mod net;
pub mod openai;
pub mod report;
pub mod run;
pub mod score;
pub mod serve;
pub mod served;
pub mod stats;
pub mod transcript;
pub mod variant;
pub mod verify;
pub mod zk;

/// A closed set of named choices (modes, methods, ladder rungs, floor variants): what a front
/// end lists and parses, without the library knowing any front end.
pub trait Named: Copy + Send + Sync + 'static {
    /// Every choice, in the order a listing shows them.
    const ALL: &'static [Self];
    /// Its name on the command line and in records.
    fn name(self) -> &'static str;
    /// One line on what it is.
    fn about(self) -> &'static str;
    /// The choice of this name.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }
}

/// A file operation that failed: the file, what was being done, the OS error, and what to do
/// about it. The error enums that read and write files (transcripts, bundles, calibrations)
/// hold one, so that every such message reads alike: `{path}: {action} ({OS error}); {fix}`.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {action} ({source}){fix}")]
pub struct FileError {
    /// File or folder.
    pub path: String,
    /// What was being done ("cannot read the bundle").
    pub action: &'static str,
    /// What to do about it, as `; …`, or nothing.
    pub fix: &'static str,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// `action` on `path` failed with `source`; `fix` is `"; …"` or `""`.
    pub fn new(
        path: &std::path::Path,
        action: &'static str,
        fix: &'static str,
        source: std::io::Error,
    ) -> Self {
        Self {
            path: path.display().to_string(),
            action,
            fix,
            source,
        }
    }
}

/// An error and its causes on one line, as the CLI prints them (`what: why: deeper why`), for
/// the places that hand an error on as text (an HTTP answer, a retry's last reason).
///
/// Errors keep their causes as `source` (for programs) and may also quote the cause where it
/// reads best in their own line ("`{path}: cannot open model file (No such file); check the
/// path`", the fix last); a cause already quoted is not written twice.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
