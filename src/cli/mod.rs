//! Flags → library calls → output and exit codes. No decisions are made here.

#[macro_use]
pub(crate) mod print;
mod args;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

pub use args::Cli;
pub use print::StdoutClosed;

use args::*;
use print::*;
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
            let api_key = api_key_from_env(a.api_key_env.as_deref())?;
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
    let positions: Vec<pot::score::TopTokens> = logits
        .iter()
        .map(|row| pot::score::top_tokens(row, top_k))
        .collect();
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
            for (&id, lp) in p.top_ids.iter().zip(&p.top_logprobs) {
                outln!(
                    "  {:>7} {:>9.4}  {:?}",
                    id,
                    lp,
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
    let api_key = api_key_from_env(a.api_key_env.as_deref())?;
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
                api_key: api_key.clone(),
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
    let stored = calibrate::store(&cal, &calibration_store())?;
    let (stored, kept) = (stored.path, stored.kept_for);
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
            api_key: api_key_from_env(a.api_key_env.as_deref())?,
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
    use pot::verify::{http::HttpProvider, Verifier};
    if a.jobs == 0 || a.max_tokens == 0 || a.audit_steps == 0 {
        bail!("--jobs, --max-tokens and --audit-steps must be at least 1");
    }
    let router = RouterKey::read(&a.router_key)?;
    let api_key = api_key_from_env(a.api_key_env.as_deref())?;
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
    let mut session = pot::verify::session::Session::new(a.max_tokens)?;
    let mut rejections = Vec::new();
    for i in 0..a.jobs {
        let r = session.job(&mut v, &mut provider)?;
        let line = match &r.rejection {
            None => format!(
                "ACCEPTED ({} steps, audited {:?}, worst {:.3} nats, tolerance {})",
                r.steps, r.audited, r.worst, v.tolerance
            ),
            Some(why) => {
                rejections.push(serde_json::json!({"job_id": r.job_id, "why": why.to_string()}));
                format!("REJECTED: {why}")
            }
        };
        eprintln!("job {}/{}: {line}", i + 1, a.jobs);
        if let Some(f) = out.as_mut() {
            use std::io::Write;
            writeln!(f, "{}", serde_json::to_string(&r)?)
                .and_then(|_| f.flush())
                .context("cannot write the record file")?;
        }
    }
    let t = session.tally();
    let (accepted, rejected, tokens, gen_s, audit_s) =
        (t.accepted, t.rejected, t.tokens, t.generate_s, t.audit_s);
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
                "rejections": rejections,
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
