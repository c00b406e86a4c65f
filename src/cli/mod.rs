//! The command line: flags → library calls → output and exit codes. No decisions are made
//! here. Split as ripgrep splits its own: `args` (the grammar and its help), `setup` (flags
//! become library objects: run specs, run files and keys, endpoint configurations, the
//! environment variables pot reads), the commands by family (`runs`, `models`, `network`), and
//! `print` (what is written, progress, exit codes).

#[macro_use]
pub(crate) mod print;
mod args;
mod models;
mod network;
mod runs;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

pub use args::Cli;
pub use print::StdoutClosed;

use args::*;
use models::*;
use network::*;
use print::*;
use runs::*;
use setup::*;

use pot::challenge::{Catalog, ChallengeKey};
use pot::diff::{self, DiffConfig};
use pot::model::{Kernels, LoadOptions, Model};
use pot::run::files::{new_run_id, write_new_secret, RunFiles};
use pot::run::Mode;
use pot::variant::{self, Target, VariantOptions};
use pot::Named;

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
    pot::model::device::set_default(cli.device);
    match cli.command {
        Command::Diff(a) => cmd_diff(*a),
        Command::Audit(a) => cmd_audit(*a),
        Command::Monitor(a) => cmd_monitor(*a),
        Command::Reference(c) => cmd_reference(c),
        Command::Serve(a) => cmd_serve(*a),
        Command::Verify(a) => cmd_verify(*a),
        Command::Node(NodeCommand::Provider(a)) => cmd_node_provider(*a),
        Command::Node(NodeCommand::Router(a)) => cmd_node_router(*a),
        Command::Bundle(b) => cmd_bundle(b),
        Command::Prove {
            bundle,
            out,
            public,
            json,
        } => cmd_prove(bundle, out, public, json),
        Command::Report { results, json } => cmd_report(results, json),
        Command::Calibrate(a) => cmd_calibrate(*a),
        Command::Keygen {
            out,
            node,
            router,
            auditor,
        } if node || router || auditor => cmd_keygen(out, node, router),
        Command::Keygen { out, .. } => cmd_keygen_challenge(out),
        Command::Challenges {
            key_file,
            run_id,
            n,
            json,
        } => cmd_challenges(key_file, run_id, n, json),
        Command::Tokenize { model, text, json } => cmd_tokenize(model, text, json),
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
        } => cmd_fingerprint(model, compare, json),
        Command::Bench {
            model,
            prompt_tokens,
            gen_tokens,
            kernels,
            json,
        } => cmd_bench(model, prompt_tokens, gen_tokens, kernels, json),
        Command::ExportHf { model, out } => cmd_export_hf(model, out),
        Command::Variant {
            model,
            to,
            prune_layers,
            noise,
            seed,
            out,
        } => cmd_variant(model, to, prune_layers, noise, seed, out),
    }
}
