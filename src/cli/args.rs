//! The command line's grammar: every subcommand and flag, with the help it prints. Nothing
//! here touches a file or the environment; `setup` turns these into library objects.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use pot::model::Kernels;
use pot::run::Mode;
use pot::variant::Target;
use pot::Named;

/// The version and the git commit pot was built from (`pot --version`).
pub(crate) const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("POT_GIT_COMMIT"), ")");

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
    pub(crate) command: Command,
    /// Threads for the engine (default: all cores).
    #[arg(long, global = true)]
    pub(crate) threads: Option<usize>,
    /// Where models run: cpu (pot's own kernels, chosen for this CPU when pot starts),
    /// cuda[:N] or metal[:N] (a GPU, with candle's kernels; needs a build with
    /// `--features cuda` or `--features metal`), candle-cpu (the GPU code path on the CPU,
    /// slower: checks that path where there is no GPU).
    #[arg(long, global = true, value_name = "DEVICE", default_value = "cpu")]
    pub(crate) device: pot::model::device::DeviceSpec,
    /// Log what pot does (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Decide whether a candidate model computes what a reference model computes.
    Diff(Box<DiffArgs>),
    /// Decide whether an OpenAI-compatible endpoint serves the model it claims (black box).
    Audit(Box<AuditArgs>),
    /// Watch an OpenAI-compatible endpoint over time: every --every, a round of keyed
    /// challenges scored as `pot audit` scores them feeds a change detector kept in an
    /// embedded store; it survives restarts and raises an alert (a JSON line, --webhook, exit
    /// code 1) when the endpoint stops serving the reference. Exit codes: 0 no alert (after
    /// --rounds), 1 alert (now or standing in the store), 2 error.
    Monitor(Box<MonitorArgs>),
    /// Serve a model over an OpenAI-compatible HTTP API (completions, chat, streaming);
    /// with --node-key, also sign receipts of its work and open steps for audits.
    Serve(Box<ServeArgs>),
    /// Check a committing provider (pot serve --node-key): send jobs, verify each signed
    /// receipt, and re-execute VRF-chosen steps with your own copy of the claimed model.
    /// Exit codes: 0 every job accepted, 1 a job rejected, 2 error.
    Verify(Box<VerifyArgs>),
    /// Providers and routers on a peer-to-peer network (libp2p: TCP and QUIC, noise, yamux,
    /// mDNS, Kademlia, gossipsub). A node's peer id is its receipt key.
    #[command(subcommand)]
    Node(NodeCommand),
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
    /// Add a zero-knowledge proof of the verdict to a bundle (Halo2, no trusted setup): that
    /// SAME, DIFFERENT or UNDECIDED after its queries, and the confidence bounds beside it,
    /// are what pot's fixed-point test computes from the scores the statement commits to,
    /// checkable without the scores. It does not prove that the scores are what the models
    /// compute. `pot bundle verify` checks it. A run of 10 challenges proves in seconds; 200
    /// take minutes and a few GB on 2 cores (the public parameters are made once and cached).
    Prove {
        /// The bundle (.tar.gz, from --bundle or `pot bundle create`); it must verify.
        bundle: PathBuf,
        /// Where to write the bundle with its proof (must not exist); default: replace BUNDLE.
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Write a public bundle instead: the signed statement and the proof only, for a third
        /// party who may check the verdict's arithmetic but not see the transcript (needs -o).
        #[arg(long, requires = "out")]
        public: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
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
        /// Model: GGUF file, Hugging Face or MLX folder, or Hugging Face id (org/name[:FILE|:Q4_K_M]; cached, else downloaded).
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
        /// Model: GGUF file, Hugging Face or MLX folder, or Hugging Face id (org/name[:FILE|:Q4_K_M]; cached, else downloaded).
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
    /// Reference packs: `pot reference build` computes the reference's side of N keyed
    /// challenges where the model runs, signed, for `pot audit --ref-pack` anywhere.
    #[command(subcommand)]
    Reference(ReferenceCommand),
}

#[derive(Subcommand)]
pub(crate) enum ReferenceCommand {
    /// Build a pack: the reference continues each of the run's first N challenges greedily by
    /// K tokens, keeping its top alternatives at each position; the whole is signed with an
    /// auditor key. The pack reveals its prompts: it is as secret as the key.
    Build(Box<ReferenceBuildArgs>),
}

#[derive(Args)]
pub(crate) struct ReferenceBuildArgs {
    /// The reference model.
    #[arg(long = "ref")]
    pub(crate) reference: String,
    /// The challenge key (`pot keygen --out FILE`); audits with the pack need it too.
    #[arg(long)]
    pub(crate) key_file: PathBuf,
    /// Challenges (indices 0..N): an audit can use at most this many.
    #[arg(short, default_value_t = 200)]
    pub(crate) n: usize,
    /// Preset whose K the pack uses (audits with it use the same mode).
    #[arg(long, value_parser = choice::<Mode>(), default_value = "audit")]
    pub(crate) mode: Mode,
    /// Continuation tokens per challenge (mode default).
    #[arg(long)]
    pub(crate) k: Option<usize>,
    /// Render prompts with the chat template (for audits through --chat).
    #[arg(long)]
    pub(crate) chat: bool,
    /// Alternatives kept per position.
    #[arg(long, default_value_t = 20)]
    pub(crate) top: usize,
    /// Run id of the challenges (default: time and random suffix).
    #[arg(long)]
    pub(crate) run_id: Option<String>,
    /// The auditor's signing key (`pot keygen --auditor --out FILE`).
    #[arg(long)]
    pub(crate) auditor_key: PathBuf,
    /// Where to write the pack (must not exist).
    #[arg(short, long)]
    pub(crate) out: PathBuf,
    /// Matrix kernels.
    #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
    pub(crate) kernels: KernelArg,
    /// JSON output.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum KernelArg {
    /// The file's quantization, multiplied as its runtime does (GGUF: llama.cpp's 8-bit activations; MLX: f32 activations): small, fast.
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
pub(crate) struct CalibrateArgs {
    /// The reference model: its best-precision file (GGUF or Hugging Face folder).
    #[arg(long = "ref")]
    pub(crate) reference: String,
    /// Keyed challenges per entry (rounded up to whole cycles of five).
    #[arg(long, default_value_t = 50)]
    pub(crate) challenges: usize,
    /// Continuation tokens per challenge (default: the audit mode's K).
    #[arg(long)]
    pub(crate) k: Option<usize>,
    /// Ladder rungs to build and measure (comma-separated; default all).
    #[arg(long, value_parser = choice::<Target>(), value_delimiter = ',')]
    pub(crate) rungs: Option<Vec<Target>>,
    /// Floor variants to measure (comma-separated; default all).
    #[arg(long, value_parser = choice::<pot::calibrate::Floor>(), value_delimiter = ',')]
    pub(crate) floors: Option<Vec<pot::calibrate::Floor>>,
    /// A server holding the reference's weights (OpenAI-compatible base URL): its answers to
    /// the same challenges, by `pot audit`'s echo or logprobs method, join the floor.
    #[arg(long, requires = "model")]
    pub(crate) endpoint: Option<String>,
    /// Model name to request from --endpoint.
    #[arg(long)]
    pub(crate) model: Option<String>,
    /// Environment variable holding --endpoint's API key.
    #[arg(long, value_name = "VAR")]
    pub(crate) api_key_env: Option<String>,
    /// Another file holding the reference's weights (repeatable): the file an f16 reference
    /// was made from, another converter's output. Measured as part of the floor.
    #[arg(long, value_name = "MODEL")]
    pub(crate) same: Vec<PathBuf>,
    /// The kernels runs of this reference use.
    #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
    pub(crate) kernels: KernelArg,
    /// Keep the rung files in this folder (reused when they exist); default: a temporary
    /// folder, removed afterwards.
    #[arg(long)]
    pub(crate) keep: Option<PathBuf>,
    /// Challenge key (default: a fresh one; the calibration records only its commitment).
    #[arg(long)]
    pub(crate) key_file: Option<PathBuf>,
    /// Run id of the challenges (default: time and random suffix).
    #[arg(long)]
    pub(crate) run_id: Option<String>,
    /// Write the calibration here (JSON; read by --margins on diff and audit).
    #[arg(short, long)]
    pub(crate) out: Option<PathBuf>,
    /// The calibration as JSON on stdout instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also keep every position's KL (for studies of the continuation length K).
    #[arg(long, hide = true)]
    pub(crate) keep_positions: bool,
}

#[derive(Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Stop (resumably) once the endpoint reports this many tokens used.
    #[arg(long)]
    pub(crate) max_total_tokens: Option<u64>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// What an audit or a watch compares: the endpoint, and the reference (a model here, or a
/// trusted endpoint), with how to reach both.
#[derive(Args)]
pub(crate) struct TargetArgs {
    /// Reference model (what the vendor claims to serve): GGUF file, folder, or cached id.
    #[arg(long = "ref", required_unless_present_any = ["ref_endpoint", "ref_pack"])]
    pub(crate) reference: Option<String>,
    /// A trusted endpoint serving the claimed model (the model maker's own API), instead of
    /// --ref: it continues each challenge greedily with its top log-probabilities and the vendor
    /// is compared with that, by the same challenges and test. Nothing checks the trusted
    /// endpoint itself; the verdict says what was trusted. Positions where the vendor's greedy
    /// path leaves the trusted one are not scored (the trusted endpoint cannot be
    /// teacher-forced on the vendor's tokens).
    #[arg(long, conflicts_with_all = ["reference", "ref_pack"], requires_all = ["ref_model", "ref_tokenizer"], value_name = "URL")]
    pub(crate) ref_endpoint: Option<String>,
    /// A reference pack (`pot reference build`) instead of --ref: the reference's side of the
    /// first N challenges, computed where the model runs and signed. Needs the --key-file it
    /// was built with (the run id is the pack's) and --ref-tokenizer; positions off the
    /// reference's path are not scored, as with --ref-endpoint. A pack reveals its prompts:
    /// keep it secret, and use it against one vendor.
    #[arg(
        long,
        conflicts_with = "reference",
        requires = "ref_tokenizer",
        value_name = "PACK"
    )]
    pub(crate) ref_pack: Option<PathBuf>,
    /// The public key (hex, or a file holding it) --ref-pack must be signed by.
    #[arg(long, requires = "ref_pack", value_name = "PUBKEY")]
    pub(crate) ref_pack_signer: Option<String>,
    /// Model name to request from --ref-endpoint.
    #[arg(long, requires = "ref_endpoint", value_name = "NAME")]
    pub(crate) ref_model: Option<String>,
    /// Environment variable holding --ref-endpoint's API key.
    #[arg(long, requires = "ref_endpoint", value_name = "VAR")]
    pub(crate) ref_api_key_env: Option<String>,
    /// With --ref-endpoint or --ref-pack: a model file or folder of the claimed model (any
    /// quantization) whose tokenizer and chat template the prompts are read with; its weights
    /// are not read.
    #[arg(long, value_name = "MODEL")]
    pub(crate) ref_tokenizer: Option<String>,
    /// Base URL of the endpoint (with or without /v1), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub(crate) endpoint: String,
    /// Model name to request from the endpoint.
    #[arg(long)]
    pub(crate) model: String,
    /// Audit through /chat/completions (prompts rendered with the reference's chat template).
    #[arg(long)]
    pub(crate) chat: bool,
    /// How to put challenges to the endpoint (default: the best it supports, probed).
    #[arg(long, value_parser = choice::<pot::audit::Method>())]
    pub(crate) method: Option<pot::audit::Method>,
    /// Alternatives per token to ask for (lowered when the endpoint refuses).
    #[arg(long, default_value_t = 20)]
    pub(crate) top_logprobs: usize,
    /// Temperature to audit at (default 0: greedy), for APIs that refuse 0 or mandate
    /// sampling. Log-probability methods compare distributions and hold at any temperature;
    /// their sampled tokens are then checked against the reference at these settings, beside
    /// the verdict. Text-only answers are tested by the PITs of their tokens under the
    /// reference at these settings: DIFFERENT when they are not uniform (error ≤ α), else
    /// UNDECIDED, never SAME. The reference applies temperature, then --top-k, then --top-p
    /// (OpenAI, vLLM); llama.cpp truncates first, which differs unless one of them is off.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub(crate) temperature: f64,
    /// Nucleus to audit at, with --temperature: the fewest most likely tokens holding this
    /// share of the probability.
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    pub(crate) top_p: f64,
    /// Only the K most likely tokens, with --temperature (0: off). Not OpenAI's field: an
    /// endpoint that refuses it cannot be audited with it.
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub(crate) top_k: usize,
    /// Environment variable holding the endpoint's API key (sent as a bearer token, never
    /// written anywhere).
    #[arg(long, value_name = "VAR")]
    pub(crate) api_key_env: Option<String>,
    /// Most requests in flight at once. pot starts at one and finds what the endpoint
    /// sustains: a retried or slow answer (over a third of --timeout) halves it, quick ones
    /// grow it back, so a server that answers one request at a time is not pushed into
    /// timeouts.
    #[arg(long, default_value_t = pot::audit::DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) concurrency: u16,
    /// Seconds before one HTTP attempt times out.
    #[arg(long, default_value_t = 120.0)]
    pub(crate) timeout: f64,
    /// Retries of a failed request (429, 5xx, dropped connection, timeout, garbled body).
    #[arg(long, default_value_t = 6)]
    pub(crate) retries: u32,
    /// Longest wait between two attempts, seconds (Retry-After is honoured up to this).
    #[arg(long, default_value_t = 60.0)]
    pub(crate) max_backoff: f64,
}

#[derive(Args)]
pub(crate) struct MonitorArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Folder of the watch: its store (watch.redb: every round, the detector's state, the
    /// alert) and its challenge key (watch.key, owner-only). Run again with the same folder
    /// to resume after a restart.
    #[arg(long, default_value = "watch")]
    pub(crate) state: PathBuf,
    /// Time from one round's start to the next (e.g. 30s, 15m, 1h, 1d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub(crate) every: std::time::Duration,
    /// Cycles of five challenges (one per family) per round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) cycles_per_round: u32,
    /// Skip rounds while the tokens the endpoint reported over the last 24 hours, plus one
    /// round's, would pass this.
    #[arg(long, value_name = "N")]
    pub(crate) budget_tokens_per_day: Option<u64>,
    /// Average run length to a false alert, in cycles, while the endpoint serves the reference
    /// (the alert threshold). A swap to another model is caught within about
    /// log10(ARL)/3 + 1 cycles.
    #[arg(long, default_value_t = 10_000.0)]
    pub(crate) arl: f64,
    /// Stop after this many rounds in this session (exit 0 if no alert); default: watch until
    /// an alert.
    #[arg(long, value_name = "N")]
    pub(crate) rounds: Option<u64>,
    /// POST each alert as JSON to this URL.
    #[arg(long, value_name = "URL")]
    pub(crate) webhook: Option<String>,
    /// Preset of margins and K (as for audit).
    #[arg(long, value_parser = choice::<Mode>(), default_value = "audit")]
    pub(crate) mode: Mode,
    /// Margins from this calibration of the reference (as for audit).
    #[arg(long, value_name = "CAL.json")]
    pub(crate) margins: Option<PathBuf>,
    /// Continuation tokens per challenge (mode default).
    #[arg(long)]
    pub(crate) k: Option<usize>,
    /// Matrix kernels of a local reference.
    #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
    pub(crate) kernels: KernelArg,
    /// JSON lines: one per event (started, round, skipped, webhook), and the alert.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A duration such as 90s, 15m, 1h or 1d (a bare number is seconds).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 30s, 15m, 1h or 1d"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use ms, s, m, h or d"
            ))
        }
    };
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("{s:?}: a duration is a non-negative number"));
    }
    Ok(std::time::Duration::from_secs_f64(n * scale))
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Model: GGUF file, Hugging Face or MLX folder, or Hugging Face id (cached, else downloaded).
    #[arg(long)]
    pub(crate) model: String,
    /// Name clients put in "model" (default: the file's stem).
    #[arg(long)]
    pub(crate) model_name: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 8080)]
    pub(crate) port: u16,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) max_body_bytes: usize,
    /// Seconds admitted requests may still run after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) shutdown_grace: f64,
    /// Require clients to send this environment variable's value as a bearer token.
    #[arg(long, value_name = "VAR")]
    pub(crate) api_key_env: Option<String>,
    /// Node key (`pot keygen --node`): sign a receipt for every request that carries
    /// "pot": {"nonce": ...}, and open its steps at /v1/pot/open.
    #[arg(long, requires = "store")]
    pub(crate) node_key: Option<PathBuf>,
    /// Step store file (created if missing), where committed steps are kept for audits.
    #[arg(long)]
    pub(crate) store: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) retention: RetentionArgs,
}

/// The engine's options, shared by `pot serve` and `pot node provider`.
#[derive(Args)]
pub(crate) struct EngineArgs {
    /// Matrix kernels.
    #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
    pub(crate) kernels: KernelArg,
    /// Requests that may wait for the engine; more are refused (429 with Retry-After over
    /// HTTP).
    #[arg(long, default_value_t = 32)]
    pub(crate) max_queue: usize,
    /// Requests the engine steps together (continuous batching).
    #[arg(long, default_value_t = 8)]
    pub(crate) max_batch: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 4096)]
    pub(crate) max_tokens_limit: usize,
}

/// How long committed steps are kept, shared by `pot serve` and `pot node provider`.
#[derive(Args)]
pub(crate) struct RetentionArgs {
    /// Hours committed steps are kept.
    #[arg(long, default_value_t = 24.0)]
    pub(crate) retention_hours: f64,
    /// Byte budget of the step store (oldest jobs are dropped past it).
    #[arg(long, default_value_t = 1 << 30)]
    pub(crate) store_max_bytes: u64,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The provider's base URL (e.g. http://127.0.0.1:8080).
    #[arg(long)]
    pub(crate) endpoint: String,
    /// The claimed model, your own copy: GGUF file, Hugging Face or MLX folder, or Hugging Face id (cached, else downloaded).
    #[arg(long)]
    pub(crate) model: String,
    /// Router key (`pot keygen --router`): the VRF that picks audited steps.
    #[arg(long)]
    pub(crate) router_key: PathBuf,
    /// The node's public key (64 hex digits). Without it, the key the node publishes at
    /// /v1/pot/node is used (and printed: pin it next time).
    #[arg(long)]
    pub(crate) node_pubkey: Option<String>,
    /// Jobs to send.
    #[arg(long, default_value_t = 10)]
    pub(crate) jobs: usize,
    /// Tokens per job.
    #[arg(long, default_value_t = 32)]
    pub(crate) max_tokens: u32,
    /// Steps audited per job.
    #[arg(long, default_value_t = 4)]
    pub(crate) audit_steps: u32,
    /// Tolerance in nats (default: calibrated for the kernels, 2.0 quantized, 0.02 dense).
    #[arg(long)]
    pub(crate) tolerance: Option<f64>,
    /// Kernels to re-execute with: the provider's (its /v1/pot/node says which).
    #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
    pub(crate) kernels: KernelArg,
    /// Largest distance in seconds between a receipt's time and now.
    #[arg(long, default_value_t = 300)]
    pub(crate) window_s: u64,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 300)]
    pub(crate) timeout_s: u64,
    /// Retries of a failed job or opening (429, 5xx, dropped connection, timeout); a retried
    /// job is sent with the same nonce.
    #[arg(long, default_value_t = 3)]
    pub(crate) retries: u32,
    /// Send this environment variable's value as a bearer token.
    #[arg(long, value_name = "VAR")]
    pub(crate) api_key_env: Option<String>,
    /// Append each job's record (receipt, VRF choice, verdict) to this NDJSON file.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub(crate) enum NodeCommand {
    /// Serve a model to the network: jobs on /pot/job/1 are run, committed and signed as by
    /// `pot serve --node-key`, openings on /pot/open/1 reveal the steps a router's VRF picks.
    /// The node advertises its weight hash on Kademlia and announces itself on gossip. Prints
    /// a JSON line with its peer id and addresses once listening; runs until SIGINT/SIGTERM.
    Provider(Box<NodeProviderArgs>),
    /// A router. With --openai ADDR it is the users' entry point: it serves the OpenAI API
    /// for the model, sends each request to a provider chosen by reputation and load, checks
    /// every receipt, audits a provider's first --probation jobs and then a share
    /// (--audit-rate) by re-executing VRF-chosen steps, answers only with text rebuilt from a
    /// receipt that passed (a failed job is retried on another provider), bans proven cheats
    /// (kept in --reputation across restarts) and gossips re-checkable evidence. Prints a JSON
    /// line once ready; runs until SIGINT/SIGTERM.
    ///
    /// Without --openai it sweeps once: finds the providers of the model and audits --jobs
    /// fresh challenge jobs of each. Exit codes: 0 every job of every provider accepted, 1 a
    /// job rejected or a provider that could not be audited, 2 error (no provider found
    /// included).
    Router(Box<NodeRouterArgs>),
}

/// Where a node listens and how it finds peers.
#[derive(Args)]
pub(crate) struct NetArgs {
    /// Address to listen on (repeat for more), e.g. /ip4/0.0.0.0/tcp/4001 or
    /// /ip4/0.0.0.0/udp/4001/quic-v1 (port 0: any free port).
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) listen: Vec<String>,
    /// A peer to join the network through (repeat for more), as a node prints it:
    /// /ip4/HOST/tcp/PORT/p2p/PEER_ID.
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) bootstrap: Vec<String>,
    /// Do not look for peers on the local network (mDNS).
    #[arg(long)]
    pub(crate) no_mdns: bool,
    /// Seconds a job may take before the request fails.
    #[arg(long, default_value_t = 300)]
    pub(crate) request_timeout_s: u64,
}

#[derive(Args)]
pub(crate) struct NodeProviderArgs {
    /// Model: GGUF file, Hugging Face or MLX folder, or Hugging Face id (cached, else downloaded).
    #[arg(long)]
    pub(crate) model: String,
    /// Name announced with the model (default: the file's stem).
    #[arg(long)]
    pub(crate) model_name: Option<String>,
    /// Node key (`pot keygen --node`): signs receipts and is the node's peer identity.
    #[arg(long)]
    pub(crate) node_key: PathBuf,
    /// Step store file (created if missing), where committed steps are kept for audits.
    #[arg(long)]
    pub(crate) store: PathBuf,
    #[command(flatten)]
    pub(crate) net: NetArgs,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
    #[command(flatten)]
    pub(crate) retention: RetentionArgs,
    /// Seconds between announcements on gossip.
    #[arg(long, default_value_t = 60)]
    pub(crate) announce_every_s: u64,
    /// Test only (a cheat for routers to catch): advertise and accept jobs for these weights.
    #[arg(long, hide = true, value_name = "HEX")]
    pub(crate) claim_weight_hash: Option<String>,
    /// Test only: also sign the claimed weight hash into receipts (a forged identity).
    #[arg(long, hide = true, requires = "claim_weight_hash")]
    pub(crate) forge_receipts: bool,
    /// Test only: accept jobs and never answer them (a stalling peer).
    #[arg(long, hide = true)]
    pub(crate) stall: bool,
}

#[derive(Args)]
pub(crate) struct NodeRouterArgs {
    /// Router key (`pot keygen --router`): the VRF that picks audited steps.
    #[arg(long)]
    pub(crate) router_key: PathBuf,
    /// The claimed model, your own copy: its weight hash is what the router looks for, and
    /// its steps are re-executed.
    #[arg(long)]
    pub(crate) model: String,
    /// Route for these weights without loading them: --model is read only for its tokenizer
    /// and chat template, receipts are checked (signature, weights, nonce, replay, request)
    /// and nothing is re-executed (so a forged weight hash is not caught). --openai only.
    #[arg(long, value_name = "HEX", requires = "openai")]
    pub(crate) weight_hash: Option<String>,
    #[command(flatten)]
    pub(crate) net: NetArgs,
    /// Serve the OpenAI API at this address (e.g. 127.0.0.1:8080) and route requests to the
    /// network.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) openai: Option<String>,
    /// Name clients ask for (default: the model file's stem).
    #[arg(long)]
    pub(crate) model_name: Option<String>,
    /// Share of jobs audited by re-execution after a provider's probation (0 to 1).
    #[arg(long, default_value_t = 0.1)]
    pub(crate) audit_rate: f64,
    /// Jobs of a new provider that are all audited.
    #[arg(long, default_value_t = 3)]
    pub(crate) probation: u64,
    /// Providers tried per request before the client gets a 502.
    #[arg(long, default_value_t = 3)]
    pub(crate) attempts: usize,
    /// Reputation store (redb; created if missing): providers' records, bans and evidence.
    #[arg(long, default_value = "pot-router.redb")]
    pub(crate) reputation: PathBuf,
    /// Largest max_tokens a client may ask for (and the default when it asks for none).
    #[arg(long, default_value_t = 512)]
    pub(crate) max_tokens_limit: u32,
    /// Node key (`pot keygen --node`): the router's peer identity, which signs its gossiped
    /// reports (default: a fresh one each start).
    #[arg(long)]
    pub(crate) node_key: Option<PathBuf>,
    /// Sweep: seconds to look for providers.
    #[arg(long, default_value_t = 30)]
    pub(crate) discover_s: u64,
    /// Sweep: jobs per provider.
    #[arg(long, default_value_t = 3)]
    pub(crate) jobs: usize,
    /// Sweep: tokens per job.
    #[arg(long, default_value_t = 32)]
    pub(crate) max_tokens: u32,
    /// Steps audited per job.
    #[arg(long, default_value_t = 4)]
    pub(crate) audit_steps: u32,
    /// Tolerance in nats (default: calibrated for the kernels, 2.0 quantized, 0.02 dense).
    #[arg(long)]
    pub(crate) tolerance: Option<f64>,
    /// Kernels to re-execute with (the providers').
    #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
    pub(crate) kernels: KernelArg,
    /// Largest distance in seconds between a receipt's time and now.
    #[arg(long, default_value_t = 300)]
    pub(crate) window_s: u64,
    /// JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub(crate) enum BundleCommand {
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
pub(crate) struct DiffArgs {
    /// Reference model (what was paid for): GGUF file, Hugging Face or MLX folder, or Hugging Face id (cached, else downloaded).
    #[arg(long = "ref")]
    pub(crate) reference: String,
    /// Candidate model (what is served).
    #[arg(long = "cand")]
    pub(crate) candidate: String,
    /// Hold one model in memory at a time, working in batches of N challenges.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "10")]
    pub(crate) one_at_a_time: Option<usize>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// Flags of a sequential run, shared by diff and audit.
#[derive(Args)]
pub(crate) struct RunArgs {
    /// Preset of error bound, margins, K and budget.
    #[arg(long, value_parser = choice::<Mode>(), default_value = "audit")]
    pub(crate) mode: Mode,
    /// Secret challenge key (default: a fresh one, saved beside the transcript).
    #[arg(long)]
    pub(crate) key_file: Option<PathBuf>,
    /// Run id (default: time and random suffix).
    #[arg(long)]
    pub(crate) run_id: Option<String>,
    /// Continue the stopped run with this id.
    #[arg(long, value_name = "RUN")]
    pub(crate) resume: Option<String>,
    /// Folder of transcripts.
    #[arg(long, default_value = "transcripts")]
    pub(crate) transcripts: PathBuf,
    /// Error bound of each decision (mode default).
    #[arg(long)]
    pub(crate) alpha: Option<f64>,
    /// SAME margin γ: DIFFERENT means mean score above γ (mode default).
    #[arg(long)]
    pub(crate) gamma: Option<f64>,
    /// DIFFERENT margin δ: SAME means mean score below δ (mode default).
    #[arg(long)]
    pub(crate) delta: Option<f64>,
    /// Clip bound B of each score (mode default).
    #[arg(long)]
    pub(crate) clip: Option<f64>,
    /// Continuation tokens per challenge (mode default).
    #[arg(long, visible_alias = "max-tokens")]
    pub(crate) k: Option<usize>,
    /// Fewest challenges before a decision.
    #[arg(long)]
    pub(crate) n_min: Option<usize>,
    /// Budget: UNDECIDED after this many challenges (mode default).
    #[arg(long, visible_alias = "max-queries")]
    pub(crate) n_max: Option<usize>,
    /// Place the candidate on this calibration's quantization ladder (`pot calibrate -o
    /// FILE`). Default: the calibration `pot calibrate` stored for the reference's weights, if
    /// any (in $POT_CALIBRATIONS, else ~/.cache/pot/calibrations).
    #[arg(long, value_name = "CAL.json")]
    pub(crate) calibration: Option<PathBuf>,
    /// Margins from this calibration of the reference: γ twice the highest floor it measured,
    /// δ = 2γ, B as the mode's ratio to δ (the candidate is placed on its ladder too).
    #[arg(long, value_name = "CAL.json", conflicts_with = "calibration")]
    pub(crate) margins: Option<PathBuf>,
    /// Matrix kernels.
    #[arg(long, value_enum, default_value_t = KernelArg::Quantized)]
    pub(crate) kernels: KernelArg,
    /// When the run is decided, write a signed evidence bundle here (.tar.gz; needs
    /// --auditor-key). It reveals the run's challenge key: check it with `pot bundle verify`.
    #[arg(long, requires = "auditor_key")]
    pub(crate) bundle: Option<PathBuf>,
    /// The auditor's signing key for --bundle (`pot keygen --auditor --out FILE`).
    #[arg(long)]
    pub(crate) auditor_key: Option<PathBuf>,
    /// Add a zero-knowledge proof of the verdict to the bundle (what `pot prove` does).
    #[arg(long, requires = "bundle")]
    pub(crate) prove: bool,
    /// JSON output.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A flag whose value is one of the library's named choices: clap lists each with its line of
/// help and refuses any other.
pub(crate) fn choice<T: Named>() -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(
        T::ALL
            .iter()
            .map(|c| PossibleValue::new(c.name()).help(c.about())),
    )
    .map(|name| T::from_name(&name).expect("clap accepts only the listed names"))
}
