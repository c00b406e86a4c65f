//! Flags → library calls → output and exit codes. No decisions are made here.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use pot::challenge::{Catalog, ChallengeKey};
use pot::diff::{self, DiffConfig};
use pot::model::{Kernels, LoadOptions, Model};
use pot::run::files::{new_run_id, write_new_secret, RunFiles};
use pot::run::Mode;
use pot::stats::Decision;
use pot::variant::{self, Target, VariantOptions};
use pot::Named;

/// `println!` that returns the write's error instead of panicking on it: a reader that closes
/// standard output early (`pot challenges -n 100000 | head`) ends the command successfully
/// (see [`StdoutClosed`]).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(stdout_error)
    }};
}

/// `print!`'s twin of [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err(stdout_error)
    }};
}

/// Standard output's reader went away (a closed pipe): the command stops writing, and `main`
/// exits 0 as ripgrep does, since the reader has all it asked for.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing to standard output")
    }
}

/// The version and the git commit pot was built from (`pot --version`).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("POT_GIT_COMMIT"), ")");

/// pot: does an inference provider serve the model it claims?
///
/// `pot diff --ref A --cand B` runs both models on secret keyed challenge prompts and decides,
/// with a stated error bound, whether B computes what A computes (SAME), does not (DIFFERENT),
/// or cannot tell within the budget (UNDECIDED). Exit codes: 0 SAME, 1 DIFFERENT, 2 error,
/// 3 UNDECIDED.
#[derive(Parser)]
#[command(name = "pot", version = VERSION, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Threads for the engine (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Log what pot does (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Decide whether a candidate model computes what a reference model computes.
    Diff(Box<DiffArgs>),
    /// Decide whether an OpenAI-compatible endpoint serves the model it claims (black box).
    Audit(Box<AuditArgs>),
    /// Serve a model over an OpenAI-compatible HTTP API (completions, chat, streaming);
    /// with --node-key, also sign receipts of its work and open steps for audits.
    Serve(Box<ServeArgs>),
    /// Check a committing provider (pot serve --node-key): send jobs, verify each signed
    /// receipt, and re-execute VRF-chosen steps with your own copy of the claimed model.
    /// Exit codes: 0 every job accepted, 1 a job rejected, 2 error.
    Verify(Box<VerifyArgs>),
    /// Write a fresh secret key (file mode 0600): a challenge key by default, a node
    /// (Ed25519) key with --node, a router (sr25519 VRF) key with --router, an auditor
    /// (Ed25519) key with --auditor. The public key of a node, router or auditor key is printed.
    Keygen {
        /// Output file (must not exist).
        #[arg(short, long)]
        out: PathBuf,
        /// A provider's signing key, for `pot serve --node-key`.
        #[arg(long)]
        node: bool,
        /// A router's VRF key, for `pot verify --router-key`.
        #[arg(long, conflicts_with = "node")]
        router: bool,
        /// An auditor's signing key (Ed25519), for `--bundle` on diff and audit.
        #[arg(long, conflicts_with_all = ["node", "router"])]
        auditor: bool,
    },
    /// Evidence bundles: a finished run, signed, in one file that anyone can re-check.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Print the challenge prompts of a key and run id.
    Challenges {
        /// Secret key file (from `pot keygen`).
        #[arg(long)]
        key_file: PathBuf,
        /// Run id.
        #[arg(long)]
        run_id: String,
        /// How many.
        #[arg(short, default_value_t = 10)]
        n: u64,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a model's token ids for a text.
    Tokenize {
        /// Model: GGUF file, folder holding one, or cached Hugging Face id.
        model: String,
        /// Text to tokenize.
        #[arg(long)]
        text: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show the top-K next tokens after every position of a text.
    Logits {
        /// Model: GGUF file, folder holding one, or cached Hugging Face id.
        model: String,
        /// Text.
        #[arg(long)]
        text: String,
        /// How many next tokens per position.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Matrix kernels.
        #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
        kernels: KernelArg,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Identify a model: file, canonical weight, config and tokenizer hashes, TLSH.
    Fingerprint {
        /// Model file.
        model: String,
        /// Also the TLSH distance to this model.
        #[arg(long)]
        compare: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Measure the engine: prompt-eval (teacher forcing) and generation tokens per second.
    Bench {
        /// Model file.
        model: String,
        /// Prompt length for prompt-eval.
        #[arg(long, default_value_t = 256)]
        prompt_tokens: usize,
        /// Tokens to generate.
        #[arg(long, default_value_t = 64)]
        gen_tokens: usize,
        /// Matrix kernels.
        #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
        kernels: KernelArg,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Write a GGUF model as a Hugging Face folder (f32 safetensors, config.json,
    /// tokenizer.json): the same weights in the other format pot reads.
    ExportHf {
        /// Source GGUF model.
        model: String,
        /// Output folder (must not exist).
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Write a derived model (re-encoded, re-quantized, pruned or noised): a substitute.
    Variant {
        /// Source model file.
        model: String,
        /// Encoding of the matrices.
        #[arg(long, value_parser = choice::<Target>())]
        to: Target,
        /// Drop this many transformer blocks (those before the last).
        #[arg(long, default_value_t = 0)]
        prune_layers: usize,
        /// Add Gaussian noise of this many RMS units to every matrix.
        #[arg(long, default_value_t = 0.0)]
        noise: f64,
        /// Seed of the noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output GGUF file.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Tables and plots from the experiments (scripts/run-experiments.sh): decision rates,
    /// false-accept and false-reject rates with Clopper–Pearson 95 % intervals, queries to a
    /// verdict, wall time; writes REPORT.md and SVG plots into the results folder.
    Report {
        /// The results folder (runs.csv, queries.csv).
        #[arg(long, default_value = "experimental_results")]
        results: PathBuf,
        /// JSON output (the tables) on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Measure what pot can tell apart for one reference: the noise floor (the same weights on
    /// other kernels, another batch shape, an f16 re-encoding) and the quantization ladder (the
    /// reference re-encoded as f16, bf16, q8_0, q6_k, q5_k, q5_0, q4_k, q4_0, q3_k, q2_k), each
    /// as the distribution of the per-challenge score over the same keyed challenges. Prints
    /// the table and which rungs stand clear of the floor; -o writes it as JSON for
    /// `--margins` and for the served-precision line of every verdict.
    Calibrate(Box<CalibrateArgs>),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KernelArg {
    /// The file's quantization, multiplied as llama.cpp does (8-bit activations): small, fast.
    Quantized,
    /// Weights dequantized to f32: exact arithmetic on the stored weights, 4-8x the memory.
    Dense,
}

impl From<KernelArg> for Kernels {
    fn from(k: KernelArg) -> Self {
        match k {
            KernelArg::Dense => Kernels::Dense,
            KernelArg::Quantized => Kernels::Quantized,
        }
    }
}

#[derive(Args)]
struct CalibrateArgs {
    /// The reference model: its best-precision file (GGUF or Hugging Face folder).
    #[arg(long = "ref")]
    reference: String,
    /// Keyed challenges per entry (rounded up to whole cycles of five).
    #[arg(long, default_value_t = 50)]
    challenges: usize,
    /// Continuation tokens per challenge (default: the audit mode's K).
    #[arg(long)]
    k: Option<usize>,
    /// Ladder rungs to build and measure (comma-separated; default all).
    #[arg(long, value_parser = choice::<Target>(), value_delimiter = ',')]
    rungs: Option<Vec<Target>>,
    /// Floor variants to measure (comma-separated; default all).
    #[arg(long, value_parser = choice::<pot::calibrate::Floor>(), value_delimiter = ',')]
    floors: Option<Vec<pot::calibrate::Floor>>,
    /// A server holding the reference's weights (OpenAI-compatible base URL): its answers to
    /// the same challenges, by `pot audit`'s echo or logprobs method, join the floor.
    #[arg(long, requires = "model")]
    endpoint: Option<String>,
    /// Model name to request from --endpoint.
    #[arg(long)]
    model: Option<String>,
    /// Environment variable holding --endpoint's API key.
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// Another file holding the reference's weights (repeatable): the file an f16 reference
    /// was made from, another converter's output. Measured as part of the floor.
    #[arg(long, value_name = "MODEL")]
    same: Vec<PathBuf>,
    /// The kernels runs of this reference use.
    #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
    kernels: KernelArg,
    /// Keep the rung files in this folder (reused when they exist); default: a temporary
    /// folder, removed afterwards.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Challenge key (default: a fresh one; the calibration records only its commitment).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Run id of the challenges (default: time and random suffix).
    #[arg(long)]
    run_id: Option<String>,
    /// Write the calibration here (JSON; read by --margins on diff and audit).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// The calibration as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also keep every position's KL (for studies of the continuation length K).
    #[arg(long, hide = true)]
    keep_positions: bool,
}

#[derive(Args)]
struct AuditArgs {
    /// Reference model (what the vendor claims to serve): GGUF file, folder, or cached id.
    #[arg(long = "ref")]
    reference: String,
    /// Base URL of the endpoint (with or without /v1), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    endpoint: String,
    /// Model name to request from the endpoint.
    #[arg(long)]
    model: String,
    /// Audit through /chat/completions (prompts rendered with the reference's chat template).
    #[arg(long)]
    chat: bool,
    /// How to put challenges to the endpoint (default: the best it supports, probed).
    #[arg(long, value_parser = choice::<pot::audit::Method>())]
    method: Option<pot::audit::Method>,
    /// Alternatives per token to ask for (lowered when the endpoint refuses).
    #[arg(long, default_value_t = 20)]
    top_logprobs: usize,
    /// Environment variable holding the endpoint's API key (sent as a bearer token, never
    /// written anywhere).
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// Stop (resumably) once the endpoint reports this many tokens used.
    #[arg(long)]
    max_total_tokens: Option<u64>,
    /// Seconds before one HTTP attempt times out.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Retries of a failed request (429, 5xx, dropped connection, timeout, garbled body).
    #[arg(long, default_value_t = 6)]
    retries: u32,
    /// Longest wait between two attempts, seconds (Retry-After is honoured up to this).
    #[arg(long, default_value_t = 60.0)]
    max_backoff: f64,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Model: GGUF file, folder, or cached Hugging Face id.
    #[arg(long)]
    model: String,
    /// Name clients put in "model" (default: the file's stem).
    #[arg(long)]
    model_name: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests that may wait for the engine; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 32)]
    max_queue: usize,
    /// Requests the engine steps together (continuous batching).
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 4096)]
    max_tokens_limit: usize,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Seconds admitted requests may still run after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 30.0)]
    shutdown_grace: f64,
    /// Require clients to send this environment variable's value as a bearer token.
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// Matrix kernels.
    #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
    kernels: KernelArg,
    /// Node key (`pot keygen --node`): sign a receipt for every request that carries
    /// "pot": {"nonce": ...}, and open its steps at /v1/pot/open.
    #[arg(long, requires = "store")]
    node_key: Option<PathBuf>,
    /// Step store file (created if missing), where committed steps are kept for audits.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Hours committed steps are kept.
    #[arg(long, default_value_t = 24.0)]
    retention_hours: f64,
    /// Byte budget of the step store (oldest jobs are dropped past it).
    #[arg(long, default_value_t = 1 << 30)]
    store_max_bytes: u64,
}

#[derive(Args)]
struct VerifyArgs {
    /// The provider's base URL (e.g. http://127.0.0.1:8080).
    #[arg(long)]
    endpoint: String,
    /// The claimed model, your own copy: GGUF file, folder, or cached Hugging Face id.
    #[arg(long)]
    model: String,
    /// Router key (`pot keygen --router`): the VRF that picks audited steps.
    #[arg(long)]
    router_key: PathBuf,
    /// The node's public key (64 hex digits). Without it, the key the node publishes at
    /// /v1/pot/node is used (and printed: pin it next time).
    #[arg(long)]
    node_pubkey: Option<String>,
    /// Jobs to send.
    #[arg(long, default_value_t = 10)]
    jobs: usize,
    /// Tokens per job.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// Steps audited per job.
    #[arg(long, default_value_t = 4)]
    audit_steps: u32,
    /// Tolerance in nats (default: calibrated for the kernels, 2.0 quantized, 0.02 dense).
    #[arg(long)]
    tolerance: Option<f64>,
    /// Kernels to re-execute with: the provider's (its /v1/pot/node says which).
    #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
    kernels: KernelArg,
    /// Largest distance in seconds between a receipt's time and now.
    #[arg(long, default_value_t = 300)]
    window_s: u64,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Send this environment variable's value as a bearer token.
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// Append each job's record (receipt, VRF choice, verdict) to this NDJSON file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Re-check a bundle: the archive, the signature, every hash, the revealed key against its
    /// commitment, every challenge re-derived from the key, and the scores, bounds and
    /// decision recomputed from the transcript. Exit codes: 0 valid, 1 a check fails,
    /// 2 the file cannot be read.
    Verify {
        /// The bundle (.tar.gz).
        path: PathBuf,
        /// The auditor's public key (64 hex digits, or a file holding them): the bundle must
        /// be signed by it. Without it, any valid signature is accepted and the signer is shown.
        #[arg(long)]
        pubkey: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Bundle a finished run after the fact (what --bundle does at the end of a run).
    Create {
        /// The run's transcript.
        #[arg(long)]
        transcript: PathBuf,
        /// The run's challenge key: the run's --key-file (or transcripts/RUN.key), or the run key
        /// a bundle of the run revealed. Only the run key goes into the bundle.
        #[arg(long)]
        key_file: PathBuf,
        /// The auditor's signing key (`pot keygen --auditor`).
        #[arg(long)]
        auditor_key: PathBuf,
        /// The bundle to write (must not exist).
        #[arg(short, long)]
        out: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct DiffArgs {
    /// Reference model (what was paid for): GGUF file, folder, or cached Hugging Face id.
    #[arg(long = "ref")]
    reference: String,
    /// Candidate model (what is served).
    #[arg(long = "cand")]
    candidate: String,
    /// Hold one model in memory at a time, working in batches of N challenges.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "10")]
    one_at_a_time: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
}

/// Flags of a sequential run, shared by diff and audit.
#[derive(Args)]
struct RunArgs {
    /// Preset of error bound, margins, K and budget.
    #[arg(long, value_parser = choice::<Mode>(), default_value = "audit")]
    mode: Mode,
    /// Secret challenge key (default: a fresh one, saved beside the transcript).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Run id (default: time and random suffix).
    #[arg(long)]
    run_id: Option<String>,
    /// Continue the stopped run with this id.
    #[arg(long, value_name = "RUN")]
    resume: Option<String>,
    /// Folder of transcripts.
    #[arg(long, default_value = "transcripts")]
    transcripts: PathBuf,
    /// Error bound of each decision (mode default).
    #[arg(long)]
    alpha: Option<f64>,
    /// SAME margin γ: DIFFERENT means mean score above γ (mode default).
    #[arg(long)]
    gamma: Option<f64>,
    /// DIFFERENT margin δ: SAME means mean score below δ (mode default).
    #[arg(long)]
    delta: Option<f64>,
    /// Clip bound B of each score (mode default).
    #[arg(long)]
    clip: Option<f64>,
    /// Continuation tokens per challenge (mode default).
    #[arg(long, visible_alias = "max-tokens")]
    k: Option<usize>,
    /// Fewest challenges before a decision.
    #[arg(long)]
    n_min: Option<usize>,
    /// Budget: UNDECIDED after this many challenges (mode default).
    #[arg(long, visible_alias = "max-queries")]
    n_max: Option<usize>,
    /// Place the candidate on this calibration's quantization ladder (`pot calibrate -o
    /// FILE`). Default: the calibration `pot calibrate` stored for the reference's weights, if
    /// any (in $POT_CALIBRATIONS, else ~/.cache/pot/calibrations).
    #[arg(long, value_name = "CAL.json")]
    calibration: Option<PathBuf>,
    /// Margins from this calibration of the reference: γ twice the highest floor it measured,
    /// δ = 2γ, B as the mode's ratio to δ (the candidate is placed on its ladder too).
    #[arg(long, value_name = "CAL.json", conflicts_with = "calibration")]
    margins: Option<PathBuf>,
    /// Matrix kernels.
    #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
    kernels: KernelArg,
    /// When the run is decided, write a signed evidence bundle here (.tar.gz; needs
    /// --auditor-key). It reveals the run's challenge key: check it with `pot bundle verify`.
    #[arg(long, requires = "auditor_key")]
    bundle: Option<PathBuf>,
    /// The auditor's signing key for --bundle (`pot keygen --auditor --out FILE`).
    #[arg(long)]
    auditor_key: Option<PathBuf>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

impl RunArgs {
    /// The bundle's path and signing key, checked before any work is done.
    fn bundle_plan(&self) -> Result<Option<(PathBuf, pot::commit::keys::AuditorKey)>> {
        let (Some(path), Some(key)) = (&self.bundle, &self.auditor_key) else {
            if self.auditor_key.is_some() {
                bail!("--auditor-key is for --bundle PATH; add --bundle or drop it");
            }
            return Ok(None);
        };
        if path.exists() {
            bail!(
                "--bundle {}: exists already; pick another path or remove it",
                path.display()
            );
        }
        Ok(Some((
            path.clone(),
            pot::commit::keys::AuditorKey::read(key)?,
        )))
    }

    /// The library's description of the run, its parameters checked before any work: the
    /// overrides must make a valid test for every way challenges may be scored.
    fn spec(&self, files: &RunFiles) -> Result<pot::run::RunSpec> {
        use pot::score::ScoreKind;
        let k = self.k.unwrap_or(self.mode.k());
        if k == 0 {
            bail!("--k must be at least 1");
        }
        let given = self.margins.as_ref().or(self.calibration.as_ref());
        let spec = pot::run::RunSpec {
            mode: self.mode,
            overrides: pot::run::Overrides {
                alpha: self.alpha,
                gamma: self.gamma,
                delta: self.delta,
                clip: self.clip,
                n_min: self.n_min,
                n_max: self.n_max,
            },
            k,
            calibration: given
                .map(|p| pot::calibrate::Calibration::read(p))
                .transpose()?,
            margins_from_calibration: self.margins.is_some(),
            calibration_store: Some(calibration_store()),
            kernels: self.kernels.into(),
            key: files.key.clone(),
            run_id: files.run_id.clone(),
            transcript: files.transcript.clone(),
            resume: files.resume,
        };
        // Bad overrides are refused before any work, for each kind a run may score; with
        // --margins only KL (a calibration measures nothing else, and a run that turns out to
        // score bits per byte is refused when it finds that out).
        let kinds: &[ScoreKind] = if spec.margins_from_calibration {
            &[ScoreKind::Kl]
        } else {
            &[ScoreKind::Kl, ScoreKind::BitsPerByte]
        };
        for &kind in kinds {
            spec.params(kind, spec.calibration.as_ref())?;
        }
        Ok(spec)
    }

    /// The budget, for the progress bar.
    fn n_max(&self) -> usize {
        self.n_max
            .unwrap_or(self.mode.params(pot::score::ScoreKind::Kl).n_max)
    }

    fn files(&self) -> Result<RunFiles> {
        Ok(RunFiles::prepare(
            self.key_file.as_deref(),
            self.run_id.as_deref(),
            self.resume.as_deref(),
            &self.transcripts,
        )?)
    }
}

/// The folder of stored calibrations: $POT_CALIBRATIONS, else ~/.cache/pot/calibrations.
fn calibration_store() -> PathBuf {
    match std::env::var_os("POT_CALIBRATIONS") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/pot/calibrations"),
    }
}

/// A flag whose value is one of the library's named choices: clap lists each with its line of
/// help and refuses any other.
fn choice<T: Named>() -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(
        T::ALL
            .iter()
            .map(|c| PossibleValue::new(c.name()).help(c.about())),
    )
    .map(|name| T::from_name(&name).expect("clap accepts only the listed names"))
}

/// Logging to stderr, off unless asked for.
pub fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .try_init();
}

/// Run the parsed command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(t) = cli.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        // candle's CPU kernels size their thread pools from this variable; set it before
        // any model is touched (we are still single-threaded here).
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    match cli.command {
        Command::Diff(a) => cmd_diff(*a),
        Command::Audit(a) => cmd_audit(*a),
        Command::Serve(a) => {
            if a.max_queue == 0 || a.max_batch == 0 {
                bail!("--max-queue and --max-batch must be at least 1");
            }
            if !(a.shutdown_grace >= 0.0 && a.shutdown_grace.is_finite()) {
                bail!("--shutdown-grace must be a number of seconds, 0 or more");
            }
            let api_key = match &a.api_key_env {
                None => None,
                Some(var) => Some(std::env::var(var).with_context(|| {
                    format!(
                        "--api-key-env {var}: the variable is not set; export it or drop the flag"
                    )
                })?),
            };
            pot::serve::run(pot::serve::ServeConfig {
                model: a.model,
                name: a.model_name,
                host: a.host,
                port: a.port,
                max_queue: a.max_queue,
                max_batch: a.max_batch,
                max_tokens_limit: a.max_tokens_limit,
                max_body_bytes: a.max_body_bytes,
                shutdown_grace: std::time::Duration::from_secs_f64(a.shutdown_grace),
                kernels: a.kernels.into(),
                api_key,
                node_key: a.node_key,
                store: a.store,
                retention: std::time::Duration::from_secs_f64(a.retention_hours.max(0.0) * 3600.0),
                store_max_bytes: a.store_max_bytes,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(a) => cmd_verify(*a),
        Command::Bundle(b) => cmd_bundle(b),
        Command::Report { results, json } => {
            let r = pot::report::run(&results)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                for x in &r.rates {
                    outln!(
                        "{} {}: false accepts {}/{}, false rejects {}/{}, undecided {}/{}",
                        x.method,
                        x.mode,
                        x.false_accept.0,
                        x.false_accept.1,
                        x.false_reject.0,
                        x.false_reject.1,
                        x.undecided.0,
                        x.undecided.1
                    )?;
                }
                for w in &r.written {
                    eprintln!("pot report: wrote {w}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Calibrate(a) => cmd_calibrate(*a),
        Command::Keygen {
            out,
            node,
            router,
            auditor,
        } if node || router || auditor => {
            let (line, public, kind) = if node {
                let k = pot::commit::keys::NodeKey::generate();
                (k.file_line(), k.public().to_bytes(), "node")
            } else if router {
                let (k, line) = pot::commit::keys::RouterKey::generate_with_line();
                (line, k.public().to_bytes(), "router")
            } else {
                let k = pot::commit::keys::AuditorKey::generate();
                (k.file_line(), k.public().to_bytes(), "auditor")
            };
            write_new_secret(&out, &line)?;
            eprintln!(
                "pot: wrote a new {kind} key to {} (keep it secret); its public key:",
                out.display()
            );
            outln!("{}", hex::encode(public))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out, .. } => {
            write_new_secret(&out, &ChallengeKey::generate().to_hex())?;
            eprintln!(
                "pot: wrote a new challenge key to {} (keep it secret)",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Challenges {
            key_file,
            run_id,
            n,
            json,
        } => {
            let key = ChallengeKey::read(&key_file)?.for_run(&run_id);
            let cat = Catalog::load()?;
            for i in 0..n {
                let c = cat.challenge(&key, &run_id, i);
                if json {
                    outln!("{}", serde_json::to_string(&c)?)?;
                } else {
                    outln!("[{i} {}] {}", c.family, c.prompt.replace('\n', "\\n"))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokenize { model, text, json } => {
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
        Command::Logits {
            model,
            text,
            top_k,
            kernels,
            json,
        } => cmd_logits(&model, &text, top_k, kernels.into(), json),
        Command::Fingerprint {
            model,
            compare,
            json,
        } => {
            let id = pot::identity::fingerprint(&pot::model::resolve(&model)?, true)?;
            let other = match &compare {
                Some(c) => Some(pot::identity::fingerprint(&pot::model::resolve(c)?, true)?),
                None => None,
            };
            let dist = other.as_ref().and_then(|o| {
                pot::identity::tlsh_distance(id.tlsh.as_deref()?, o.tlsh.as_deref()?)
            });
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
                    outln!(
                        "TLSH distance {d} (0 identical; small: near-clone; above ~100: unrelated)"
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            model,
            prompt_tokens,
            gen_tokens,
            kernels,
            json,
        } => {
            let t0 = std::time::Instant::now();
            let m = Model::load(
                &model,
                LoadOptions {
                    kernels: kernels.into(),
                },
            )?;
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
                    serde_json::json!({"model": model, "load_s": load_s, "prompt_tokens": ids.len(), "prompt_eval_tok_s": prefill, "generated": g.len(), "generation_tok_s": gen})
                )?;
            } else {
                outln!("{model}: load {load_s:.1} s; prompt-eval {prefill:.1} tok/s ({} tokens); generation {gen:.1} tok/s ({} tokens)", ids.len(), g.len())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ExportHf { model, out } => {
            let src = pot::model::resolve(&model)?;
            pot::model::hf::export(&src, &out)?;
            eprintln!("pot: wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Variant {
            model,
            to,
            prune_layers,
            noise,
            seed,
            out,
        } => {
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
    }
}

/// Write a secret file that did not exist, readable by its owner only.
fn cmd_logits(
    model: &str,
    text: &str,
    top_k: usize,
    kernels: Kernels,
    json: bool,
) -> Result<ExitCode> {
    let m = Model::load(model, LoadOptions { kernels })?;
    let ids = m.tokenizer.encode(text)?;
    if ids.is_empty() {
        bail!("--text {text:?} has no tokens; give a non-empty text");
    }
    let logits: Vec<Vec<f32>> = m
        .logits(&ids, 0)?
        .to_vec2()
        .map_err(|e| anyhow::anyhow!("{model}: {e}"))?;
    let mut positions = Vec::new();
    for row in &logits {
        let lse = pot::score::log_sum_exp(row);
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
        idx.truncate(top_k);
        positions.push(serde_json::json!({
            "top_ids": idx,
            "top_logits": idx.iter().map(|i| row[*i]).collect::<Vec<_>>(),
            "top_logprobs": idx.iter().map(|i| row[*i] as f64 - lse).collect::<Vec<_>>(),
            "logsumexp": lse,
        }));
    }
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
            for (id, lp) in p["top_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .zip(p["top_logprobs"].as_array().into_iter().flatten())
            {
                let id = id.as_u64().unwrap_or(0) as u32;
                outln!(
                    "  {:>7} {:>9.4}  {:?}",
                    id,
                    lp.as_f64().unwrap_or(f64::NAN),
                    m.tokenizer.decode(&[id]).unwrap_or_default()
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_diff(a: DiffArgs) -> Result<ExitCode> {
    let bundle = a.run.bundle_plan()?;
    let run = a.run.files()?;
    let cfg = DiffConfig {
        reference: a.reference.clone(),
        candidate: a.candidate.clone(),
        run: run.cleanup_on_error(a.run.spec(&run))?,
        one_at_a_time: a.one_at_a_time,
    };
    let bar = Bar::new(a.run.n_max(), a.run.json);
    let out = diff::run(&cfg, &mut |st| bar.update(st));
    bar.finish();
    let out = run.cleanup_on_error(out)?;
    let made = make_bundle(bundle, &run, true)?;
    if a.run.json {
        outln!("{}", with_bundle(&out, made.as_ref())?)?;
    } else {
        print_summary(&out.summary, None)?;
        for (role, id) in [("reference", &out.reference), ("candidate", &out.candidate)] {
            outln!("  {role} {} (weights {})", id.path, &id.weight_hash[..16])?;
        }
        outln!("  transcript {}", out.summary.transcript)?;
        print_bundle(made.as_ref())?;
    }
    Ok(exit_code(out.summary.decision))
}

/// Bundle a run that has its verdict (`decided`), as --bundle asked.
fn make_bundle(
    plan: Option<(PathBuf, pot::commit::keys::AuditorKey)>,
    run: &RunFiles,
    decided: bool,
) -> Result<Option<pot::evidence::Created>> {
    let Some((path, key)) = plan else {
        return Ok(None);
    };
    if !decided {
        eprintln!(
            "pot: no bundle written: the run has no verdict yet; resume it with --resume {} --bundle {} --auditor-key KEY",
            run.run_id,
            path.display()
        );
        return Ok(None);
    }
    pot::evidence::create(&run.transcript, &run.key, &key, &path)
        .map(Some)
        .with_context(|| {
            format!(
                "the run is finished and its transcript kept, but the bundle was not written; make it with `pot bundle create --transcript {}`",
                run.transcript.display()
            )
        })
}

/// The run's JSON with the bundle's, when one was made.
fn with_bundle<T: serde::Serialize>(
    out: &T,
    made: Option<&pot::evidence::Created>,
) -> Result<String> {
    let mut v = serde_json::to_value(out)?;
    if let (Some(m), Some(o)) = (made, v.as_object_mut()) {
        o.insert("bundle".into(), serde_json::to_value(m)?);
    }
    Ok(serde_json::to_string_pretty(&v)?)
}

fn print_bundle(made: Option<&pot::evidence::Created>) -> Result<()> {
    if let Some(m) = made {
        outln!(
            "  bundle {} ({} B, signed by {}; check it with `pot bundle verify {} --pubkey {}`)",
            m.path,
            m.bytes,
            &m.signer[..16],
            m.path,
            m.signer
        )?;
    }
    Ok(())
}

fn cmd_bundle(b: BundleCommand) -> Result<ExitCode> {
    match b {
        BundleCommand::Create {
            transcript,
            key_file,
            auditor_key,
            out,
            json,
        } => {
            let auditor = pot::commit::keys::AuditorKey::read(&auditor_key)?;
            let key = ChallengeKey::read(&key_file)?;
            let made = pot::evidence::create(&transcript, &key, &auditor, &out)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&made)?)?;
            } else {
                print_bundle(Some(&made))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        BundleCommand::Verify { path, pubkey, json } => {
            let pinned = match &pubkey {
                None => None,
                Some(p) => Some(read_pubkey(p)?),
            };
            let r = pot::evidence::verify(&path, pinned.as_ref())?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                for c in &r.checks {
                    outln!(
                        "{} {:<18} {}",
                        if c.ok { "ok  " } else { "FAIL" },
                        c.name,
                        c.detail
                    )?;
                }
                match r.first_failure() {
                    None => outln!(
                        "VALID: {} of run {}, signed by {}{}",
                        r.decision.map(|d| d.as_str()).unwrap_or("?"),
                        r.run_id.as_deref().unwrap_or("?"),
                        r.signer.as_deref().unwrap_or("?"),
                        if r.pinned {
                            " (pinned)"
                        } else {
                            " (not pinned)"
                        }
                    )?,
                    Some(c) => outln!("INVALID: {}: {}", c.name, c.detail)?,
                }
            }
            if !r.valid && !json {
                if let Some(c) = r.first_failure() {
                    eprintln!(
                        "pot: {}: bundle check {} fails: {}",
                        path.display(),
                        c.name,
                        c.detail
                    );
                }
            }
            Ok(if r.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn cmd_calibrate(a: CalibrateArgs) -> Result<ExitCode> {
    use pot::calibrate::{self, Event, Floor};
    if let Some(out) = &a.out {
        if out.exists() {
            bail!(
                "-o {}: exists already; pick another path or remove it",
                out.display()
            );
        }
    }
    let run_id = a.run_id.clone().unwrap_or_else(new_run_id);
    let key = match &a.key_file {
        Some(f) => ChallengeKey::read(f)?,
        None => ChallengeKey::generate(),
    }
    .for_run(&run_id);
    let workdir = a.keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("pot-calibrate-{}", std::process::id()))
    });
    let cfg = calibrate::CalibrateConfig {
        reference: a.reference.clone(),
        challenges: a.challenges,
        k: a.k.unwrap_or(Mode::Audit.k()),
        kernels: a.kernels.into(),
        floors: a
            .floors
            .clone()
            .unwrap_or_else(|| <Floor as Named>::ALL.to_vec()),
        same_files: a.same.clone(),
        rungs: a.rungs.clone().unwrap_or_else(|| Target::LADDER.to_vec()),
        key,
        run_id,
        workdir: workdir.clone(),
        keep_positions: a.keep_positions,
        endpoint: a
            .endpoint
            .as_ref()
            .map(|url| pot::audit::client::EndpointConfig {
                url: url.clone(),
                model: a.model.clone().unwrap_or_default(),
                chat: false,
                api_key_env: a.api_key_env.clone(),
                timeout: std::time::Duration::from_secs(120),
                retries: 6,
                max_backoff: std::time::Duration::from_secs(60),
            }),
    };
    let bar = Bar::new(cfg.challenges.div_ceil(5) * 5, a.json);
    let result = calibrate::run(&cfg, &mut |e| match e {
        Event::Reference(done, total) => {
            bar.set(done, "reference continues the challenges");
            if !bar.live() && !a.json {
                eprintln!("reference: {done}/{total} challenges continued");
            }
        }
        Event::Building(name) => bar.message(&format!("building rung {name}")),
        Event::Scoring(name) => bar.message(&format!("scoring {name}")),
        Event::Done(e) => {
            let (what, d) = match &e.kl {
                Some(d) => ("mean KL", d),
                None => ("endpoint KL", &e.endpoint_kl),
            };
            bar.println(&format!(
                "{:<15} {what} {:.5} [{:.5}, {:.5}]  top-1 {:.3}  {:.1} s",
                e.name, d.mean, d.mean_ci95[0], d.mean_ci95[1], e.top1_agreement, e.seconds
            ))
        }
    });
    bar.finish();
    if a.keep.is_none() {
        let _ = std::fs::remove_dir_all(&workdir);
    }
    let cal = result?;
    if let Some(out) = &a.out {
        cal.write(out)?;
    }
    // The store: diff and audit of this reference find it there. The latest calibration wins,
    // unless the stored one measured entries this one did not (a floor measured on its own
    // must not drop a ladder): then the stored one stays, and this one is used by name.
    let store = calibration_store();
    std::fs::create_dir_all(&store)
        .with_context(|| format!("{}: cannot create the calibration store", store.display()))?;
    let stored = calibrate::stored_path(&store, &cal.reference.weight_hash);
    let kept = match calibrate::Calibration::read(&stored) {
        Ok(older) => cal.lacks(&older).into_iter().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    };
    if kept.is_empty() {
        cal.write(&stored)?;
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&cal)?)?;
    } else {
        out!(
            "{}",
            calibrate::table(&cal, &Mode::Audit.params(pot::score::ScoreKind::Kl))
        )?;
    }
    if let Some(out) = &a.out {
        eprintln!("pot calibrate: wrote {}", out.display());
    }
    if kept.is_empty() {
        eprintln!(
            "pot calibrate: stored as {} (diff and audit of this reference use it)",
            stored.display()
        );
    } else {
        eprintln!(
            "pot calibrate: kept the stored calibration {}: it measured {} and this run did not; diff and audit use the stored one (pass this one with --calibration{}, or measure all of them to replace it)",
            stored.display(),
            kept.join(", "),
            a.out.as_ref().map_or(" after writing it with -o".to_string(), |o| format!(" {}", o.display()))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// An Ed25519 public key given as 64 hex digits or as a file holding them.
fn read_pubkey(arg: &str) -> Result<pot::commit::keys::NodePublic> {
    let text = if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
        arg.to_string()
    } else {
        std::fs::read_to_string(arg).with_context(|| {
            format!("--pubkey {arg}: neither 64 hex digits nor a readable file holding them")
        })?
    };
    pot::commit::keys::NodePublic::from_hex(text.trim())
        .with_context(|| format!("--pubkey {arg}: not an Ed25519 public key (64 hex digits, as `pot keygen --auditor` prints)"))
}

/// The verdict, the evidence and what it means, in words.
fn print_summary(s: &pot::run::Summary, how: Option<&str>) -> Result<()> {
    let p = s.params;
    let (near, far) = (&s.served.near, &s.served.far);
    outln!("{}", s.decision.as_str())?;
    outln!(
        "  {} challenges{}, {:.1} s; mean score {:.4} ({})",
        s.queries,
        how.map(|h| format!(" {h}")).unwrap_or_default(),
        s.elapsed_s,
        far.mean,
        score_unit(s.score_kind),
    )?;
    outln!(
        "  {:.0}% confidence sequences on the mean: [{:.4}, {:.4}] with scores clipped at B = {}, [{:.4}, {:.4}] clipped at {}",
        100.0 * (1.0 - p.alpha),
        near.lower,
        near.upper,
        near.clip,
        far.lower,
        far.upper,
        far.clip
    )?;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    if s.served.calibrated {
        outln!(
            "  served: consistent with {}; excludes {}",
            list(&s.served.consistent),
            list(&s.served.excludes)
        )?;
    } else {
        outln!("  served: not placed on a quantization ladder (no calibration of the reference: pot calibrate --ref REF)")?;
    }
    outln!(
        "  SAME means mean score (clipped at B) below δ = {}, DIFFERENT above γ = {}, each wrong with probability at most α = {}",
        p.delta, p.gamma, p.alpha
    )
}

fn exit_code(d: Decision) -> ExitCode {
    ExitCode::from(match d {
        Decision::Same => 0,
        Decision::Different => 1,
        Decision::Undecided => 3,
    })
}

fn score_unit(kind: pot::score::ScoreKind) -> &'static str {
    use pot::score::ScoreKind;
    match kind {
        ScoreKind::Kl => "nats of KL per token",
        ScoreKind::BitsPerByte => "bits per byte apart",
        ScoreKind::EndpointKl => "nats of KL per token, on the endpoint's reported tokens",
        ScoreKind::TextMismatch => "share of tokens that are not the reference's first choice",
    }
}

/// A progress bar on a terminal (none with --json or when stderr is not a terminal).
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(n_max: usize, json: bool) -> Self {
        Self((std::io::stderr().is_terminal() && !json).then(|| {
            let b = indicatif::ProgressBar::new(n_max as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos}/{len} challenges {msg} [{elapsed_precise}, eta {eta}]",
                )
                .expect("valid template"),
            );
            b
        }))
    }

    fn update(&self, st: &pot::stats::Status) {
        if let Some(b) = &self.0 {
            b.set_position(st.n as u64);
            b.set_message(format!(
                "mean {:.4} in [{:.4}, {:.4}]",
                st.mean, st.lower, st.upper
            ));
        }
    }

    /// Whether a bar is drawn (stderr is a terminal and the output is not JSON).
    fn live(&self) -> bool {
        self.0.is_some()
    }

    fn set(&self, pos: usize, msg: &str) {
        if let Some(b) = &self.0 {
            b.set_position(pos as u64);
            b.set_message(msg.to_string());
        }
    }

    fn message(&self, msg: &str) {
        if let Some(b) = &self.0 {
            b.set_message(msg.to_string());
        }
    }

    /// A line of progress on stderr, above the bar when there is one.
    fn println(&self, line: &str) {
        match &self.0 {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn cmd_audit(a: AuditArgs) -> Result<ExitCode> {
    let bundle = a.run.bundle_plan()?;
    for (name, v) in [("--timeout", a.timeout), ("--max-backoff", a.max_backoff)] {
        if !(v > 0.0 && v.is_finite()) {
            bail!("{name} must be a positive number of seconds");
        }
    }
    let run = a.run.files()?;
    let cfg = pot::audit::AuditConfig {
        reference: a.reference.clone(),
        endpoint: pot::audit::client::EndpointConfig {
            url: a.endpoint.clone(),
            model: a.model.clone(),
            chat: a.chat,
            api_key_env: a.api_key_env.clone(),
            timeout: std::time::Duration::from_secs_f64(a.timeout),
            retries: a.retries,
            max_backoff: std::time::Duration::from_secs_f64(a.max_backoff),
        },
        method: a.method,
        top_logprobs: a.top_logprobs.min(pot::serve::api::MAX_TOP_LOGPROBS),
        run: run.cleanup_on_error(a.run.spec(&run))?,
        max_total_tokens: a.max_total_tokens,
    };
    let bar = Bar::new(a.run.n_max(), a.run.json);
    let out = pot::audit::run(&cfg, &mut |st| bar.update(st));
    bar.finish();
    let out = run.cleanup_on_error(out)?;
    let made = make_bundle(bundle, &run, out.stopped.is_none())?;
    if a.run.json {
        outln!("{}", with_bundle(&out, made.as_ref())?)?;
    } else {
        let by = format!("by {} ({})", out.method, out.endpoint.api);
        print_summary(&out.summary, Some(&by))?;
        if let Some(why) = &out.stopped {
            outln!("  stopped before a verdict: {why}")?;
        }
        outln!(
            "  reference {} (weights {})",
            out.reference.path,
            &out.reference.weight_hash[..16]
        )?;
        outln!(
            "  endpoint  {} model {:?}; {} tokens used, {} retries",
            out.endpoint.url,
            out.endpoint.model,
            out.tokens_used,
            out.retries
        )?;
        outln!("  transcript {}", out.summary.transcript)?;
        print_bundle(made.as_ref())?;
    }
    Ok(exit_code(out.summary.decision))
}

fn cmd_verify(a: VerifyArgs) -> Result<ExitCode> {
    use pot::commit::keys::{NodePublic, RouterKey};
    use pot::commit::receipt::JobRequest;
    use pot::verify::{http::HttpProvider, Verifier};
    if a.jobs == 0 || a.max_tokens == 0 || a.audit_steps == 0 {
        bail!("--jobs, --max-tokens and --audit-steps must be at least 1");
    }
    let router = RouterKey::read(&a.router_key)?;
    let api_key = match &a.api_key_env {
        None => None,
        Some(var) => Some(std::env::var(var).with_context(|| {
            format!("--api-key-env {var}: the variable is not set; export it or drop the flag")
        })?),
    };
    let mut provider = HttpProvider::new(
        &a.endpoint,
        api_key,
        std::time::Duration::from_secs(a.timeout_s),
    )?;
    let info = provider.node_info()?;
    let node = match &a.node_pubkey {
        Some(h) => NodePublic::from_hex(h)?,
        None => {
            eprintln!(
                "pot verify: node key {} as published by {} (pin it with --node-pubkey)",
                info.node, a.endpoint
            );
            NodePublic::from_hex(&info.node)?
        }
    };
    let kernels: Kernels = a.kernels.into();
    let path = pot::model::resolve(&a.model)?;
    let (model, identity) = pot::identity::load_identified(&path, LoadOptions { kernels })?;
    let weight_hash = pot::commit::keys::parse_hex32(&identity.weight_hash, "weight hash")?;
    if info.weight_hash != identity.weight_hash {
        eprintln!(
            "pot verify: the node says it serves weights {}, the claimed model's are {}",
            &info.weight_hash[..16.min(info.weight_hash.len())],
            &identity.weight_hash[..16]
        );
    }
    let mut out = match &a.out {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("{}: cannot open the record file", p.display()))?,
        ),
        None => None,
    };
    let mut v = Verifier::new(model, weight_hash, kernels, node, router, a.audit_steps);
    if let Some(t) = a.tolerance {
        if !(t > 0.0 && t.is_finite()) {
            bail!("--tolerance must be a positive number of nats");
        }
        v.tolerance = t;
    }
    v.window_ms = a.window_s * 1000;
    // Fresh secret prompts: the provider cannot have prepared for them.
    let key = ChallengeKey::generate();
    let run_id = new_run_id();
    let cat = Catalog::load()?;
    let (mut accepted, mut gen_s, mut audit_s, mut tokens) = (0usize, 0.0, 0.0, 0u64);
    let mut reports = Vec::new();
    for i in 0..a.jobs {
        let c = cat.challenge(&key, &run_id, i as u64);
        let prompt = match v.model.chat_template {
            Some(_) => v.model.chat_prompt(&[pot::model::chat::Message {
                role: "user".into(),
                content: c.prompt.clone(),
            }])?,
            None => v.model.tokenizer.encode(&c.prompt)?,
        };
        let request = JobRequest {
            prompt,
            max_tokens: a.max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        };
        let r = v.job(&mut provider, &request)?;
        gen_s += r.generate_s;
        audit_s += r.audit_s;
        tokens += r.steps as u64;
        let line = match &r.rejection {
            None => {
                accepted += 1;
                format!(
                    "ACCEPTED ({} steps, audited {:?}, worst {:.3} nats, tolerance {})",
                    r.steps, r.audited, r.worst, v.tolerance
                )
            }
            Some(why) => format!("REJECTED: {why}"),
        };
        eprintln!("job {}/{}: {line}", i + 1, a.jobs);
        if let Some(f) = out.as_mut() {
            use std::io::Write;
            writeln!(f, "{}", serde_json::to_string(&r)?)
                .and_then(|_| f.flush())
                .context("cannot write the record file")?;
        }
        reports.push(r);
    }
    let rejected = a.jobs - accepted;
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "endpoint": a.endpoint,
                "node": hex::encode(v.node.to_bytes()),
                "claimed_weight_hash": identity.weight_hash,
                "jobs": a.jobs,
                "accepted": accepted,
                "rejected": rejected,
                "tokens": tokens,
                "audit_steps": a.audit_steps,
                "tolerance": v.tolerance,
                "generate_s": gen_s,
                "audit_s": audit_s,
                "rejections": reports.iter().filter_map(|r| r.rejection.as_ref().map(|x| serde_json::json!({"job_id": r.job_id, "why": x.to_string()}))).collect::<Vec<_>>(),
            }))?
        )?;
    } else {
        outln!(
            "{accepted}/{} jobs accepted, {rejected} rejected ({tokens} tokens; provider {gen_s:.1} s, audits {audit_s:.1} s)",
            a.jobs
        )?;
    }
    Ok(if rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
