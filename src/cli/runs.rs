//! Runs: `pot diff`, `pot audit`, `pot calibrate`, their bundles, and `pot report`.

use super::*;

pub(super) fn cmd_diff(a: DiffArgs) -> Result<ExitCode> {
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
    let made = make_bundle(bundle, &run, true, a.run.prove)?;
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

pub(super) fn cmd_audit(a: AuditArgs) -> Result<ExitCode> {
    let bundle = a.run.bundle_plan()?;
    let (reference, endpoint) = a.target.configs()?;
    let sampling = a.target.sampling()?;
    // A pack fixes the run id, K and the most challenges.
    let pack = match &reference {
        pot::audit::ReferenceSource::Pack { body, .. } => Some(body.header.clone()),
        _ => None,
    };
    let run = match &pack {
        Some(h) => a.run.files_for_pack(&h.run_id)?,
        None => a.run.files()?,
    };
    let mut spec = run.cleanup_on_error(a.run.spec(&run))?;
    if let Some(h) = &pack {
        if a.run.k.is_none() {
            spec.k = h.k;
        }
        let budget = a.run.n_max().min(h.challenges);
        spec.overrides.n_max = Some(budget);
        spec.overrides.n_min = spec.overrides.n_min.map(|n| n.min(budget));
    }
    let cfg = pot::audit::AuditConfig {
        reference,
        endpoint,
        method: a.target.method,
        top_logprobs: a.target.top_logprobs.min(pot::serve::api::MAX_TOP_LOGPROBS),
        run: spec,
        max_total_tokens: a.max_total_tokens,
        concurrency: a.target.concurrency.into(),
        sampling,
    };
    let bar = Bar::new(a.run.n_max(), a.run.json);
    let out = pot::audit::run(&cfg, &mut |st| bar.update(st));
    bar.finish();
    let out = run.cleanup_on_error(out)?;
    let made = make_bundle(bundle, &run, out.stopped.is_none(), a.run.prove)?;
    if a.run.json {
        outln!("{}", with_bundle(&out, made.as_ref())?)?;
    } else {
        let by = format!("by {} ({})", out.method, out.endpoint.api);
        print_summary(&out.summary, Some(&by))?;
        if let Some(why) = &out.stopped {
            outln!("  stopped before a verdict: {why}")?;
        }
        match &out.trusted {
            Some(what) => outln!("  trusted   {what}")?,
            None => outln!(
                "  reference {} (weights {})",
                out.reference.path,
                &out.reference.weight_hash[..16]
            )?,
        }
        outln!(
            "  endpoint  {} model {:?}; {} tokens used, {} retries",
            out.endpoint.url,
            out.endpoint.model,
            out.tokens_used,
            out.retries
        )?;
        if !out.endpoint.probes.is_empty() {
            outln!("  tried     {}", out.endpoint.probes.join("\n            "))?;
        }
        for f in &out.findings {
            outln!("  {f}")?;
        }
        outln!("  transcript {}", out.summary.transcript)?;
        print_bundle(made.as_ref())?;
    }
    Ok(exit_code(out.summary.decision))
}

/// Bundle a run that has its verdict (`decided`), as --bundle asked.
pub(super) fn make_bundle(
    plan: Option<(PathBuf, pot::commit::keys::AuditorKey)>,
    run: &RunFiles,
    decided: bool,
    prove: bool,
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
    let mut made = pot::evidence::create(&run.transcript, &run.key, &key, &path).with_context(|| {
        format!(
            "the run is finished and its transcript kept, but the bundle was not written; make it with `pot bundle create --transcript {}`",
            run.transcript.display()
        )
    })?;
    if prove {
        let p = pot::evidence::prove(&path, &path).with_context(|| {
            format!(
                "the bundle {} is written, without a proof; try `pot prove {}`",
                path.display(),
                path.display()
            )
        })?;
        made.bytes = p.bytes;
        made.proof = Some(p);
    }
    Ok(Some(made))
}

pub(super) fn cmd_bundle(b: BundleCommand) -> Result<ExitCode> {
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
                Some(p) => Some(read_pubkey("--pubkey", p)?),
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
                if r.public && r.valid {
                    outln!("note: a public bundle: the verdict, its queries and its bounds follow from the committed scores by pot's test; the scores themselves, the challenges and the transcript are withheld and not checked")?;
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

pub(super) fn cmd_prove(
    bundle: PathBuf,
    out: Option<PathBuf>,
    public: bool,
    json: bool,
) -> Result<ExitCode> {
    let out = out.unwrap_or_else(|| bundle.clone());
    if !json {
        eprintln!(
            "pot: proving the verdict of {} (Halo2: seconds for 10 challenges, about 2 minutes for 200 on 2 cores)",
            bundle.display()
        );
    }
    let p = pot::evidence::prove_to(&bundle, &out, public)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&p)?)?;
    } else {
        outln!(
            "proved    {} after {}, and its bounds, from the committed scores: {} B proof (2^{} rows), {:.1} s to prove, {:.2} s to verify",
            p.decision.as_str(),
            p.queries,
            p.proof_bytes,
            p.k,
            p.prove_s,
            p.verify_s
        )?;
        outln!(
            "bundle    {} ({} B{}); check it with `pot bundle verify`",
            p.path,
            p.bytes,
            if public {
                ": the statement and the proof, the transcript withheld"
            } else {
                ""
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_calibrate(a: CalibrateArgs) -> Result<ExitCode> {
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
        endpoint: a.endpoint.as_ref().map(|url| pot::openai::EndpointConfig {
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

pub(super) fn cmd_report(results: PathBuf, json: bool) -> Result<ExitCode> {
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

pub(super) fn cmd_monitor(a: MonitorArgs) -> Result<ExitCode> {
    if a.target.ref_pack.is_some() {
        bail!("--ref-pack is for pot audit: a watch draws fresh challenges every round; use --ref or --ref-endpoint");
    }
    if !(a.arl > 1.0 && a.arl.is_finite()) {
        bail!("--arl must be a number of cycles above 1");
    }
    let (reference, endpoint) = a.target.configs()?;
    let sampling = a.target.sampling()?;
    let k = a.k.unwrap_or(a.mode.k());
    if k == 0 {
        bail!("--k must be at least 1");
    }
    let run = pot::run::RunSpec {
        mode: a.mode,
        overrides: Default::default(),
        k,
        calibration: a
            .margins
            .as_ref()
            .map(|p| pot::calibrate::Calibration::read(p))
            .transpose()?,
        margins_from_calibration: a.margins.is_some(),
        calibration_store: Some(calibration_store()),
        kernels: a.kernels.into(),
        // The watch's own key and run id replace these.
        key: ChallengeKey::generate(),
        run_id: String::new(),
        transcript: PathBuf::new(),
        resume: false,
    };
    let cfg = pot::monitor::MonitorConfig {
        audit: pot::audit::AuditConfig {
            reference,
            endpoint,
            method: a.target.method,
            top_logprobs: a.target.top_logprobs.min(pot::serve::api::MAX_TOP_LOGPROBS),
            run,
            max_total_tokens: None,
            concurrency: a.target.concurrency.into(),
            sampling,
        },
        state: a.state.clone(),
        every: a.every,
        cycles_per_round: a.cycles_per_round as usize,
        budget_tokens_per_day: a.budget_tokens_per_day,
        arl: a.arl,
        rounds: a.rounds,
        webhook: a.webhook.clone(),
    };
    let json = a.json;
    let mut print = |e: &pot::monitor::Event| {
        use pot::monitor::Event;
        let line = if json {
            serde_json::to_string(e).expect("events serialize")
        } else {
            match e {
                Event::Started { store, rounds, method, gamma, clip, arl } => format!(
                    "watching by {method} ({rounds} rounds in {store}); alert when scores rise above γ = {gamma} (clipped at {clip}), average run length to a false alert {arl} cycles"
                ),
                Event::Round { round, first, challenges, mean, log10_statistic, log10_threshold, tokens, seconds } => format!(
                    "round {round}: challenges {first}..{}, mean {mean:.4}, log10 statistic {log10_statistic:.2} (alert at {log10_threshold:.2}), {tokens} tokens, {seconds:.1} s",
                    first + *challenges as u64
                ),
                Event::Skipped { reason } => format!("round skipped: {reason}"),
                Event::Webhook { error } => format!("webhook failed: {error}"),
            }
        };
        // A closed stdout must not stop the watch; the store keeps everything.
        let _ = outln!("{line}");
    };
    let ended = pot::monitor::watch(cfg, &mut print)?;
    match &ended.alert {
        Some(alert) => {
            if json {
                outln!("{}", serde_json::to_string(alert)?)?;
            } else {
                outln!("ALERT (round {}): {}", alert.round, alert.message)?;
            }
            Ok(ExitCode::from(1))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

pub(super) fn cmd_reference(c: ReferenceCommand) -> Result<ExitCode> {
    let ReferenceCommand::Build(a) = c;
    let k = a.k.unwrap_or(a.mode.k());
    if k == 0 || a.n == 0 || a.top == 0 {
        bail!("-n, --k and --top must be at least 1");
    }
    let signer = pot::commit::keys::AuditorKey::read(&a.auditor_key)?;
    let run_id = a.run_id.clone().unwrap_or_else(new_run_id);
    let key = ChallengeKey::read(&a.key_file)?.for_run(&run_id);
    if a.out.exists() {
        bail!(
            "{}: exists already; choose another output path",
            a.out.display()
        );
    }
    let opts = LoadOptions::kernels(a.kernels.into());
    let mut reference = pot::run::local::LocalModel::open(&a.reference, opts, true)?;
    let identity = pot::run::Reference::identity(&reference).clone();
    let model = reference.model()?;
    let cfg = pot::audit::pack::BuildConfig {
        key,
        run_id,
        n: a.n,
        k,
        chat: a.chat,
        top: a.top,
        out: a.out.clone(),
    };
    let t = std::time::Instant::now();
    let built = pot::audit::pack::build(&cfg, &signer, model, identity, &mut |done| {
        if !a.json {
            eprint!("\rpot: {done}/{} challenges", a.n);
        }
    })?;
    if !a.json {
        eprintln!();
    }
    if a.json {
        outln!("{}", serde_json::to_string(&built)?)?;
    } else {
        outln!(
            "wrote {} ({} bytes, {} challenges, {:.0} bytes each, {:.0} s); run id {}, signed by {}",
            built.path,
            built.bytes,
            built.challenges,
            built.bytes_per_challenge,
            t.elapsed().as_secs_f64(),
            built.run_id,
            built.signer
        )?;
        outln!("audit with: pot audit --ref-pack {} --key-file {} --ref-tokenizer {} --endpoint URL --model NAME", built.path, a.key_file.display(), a.reference)?;
        outln!("the pack reveals its prompts: keep it as secret as the key")?;
    }
    Ok(ExitCode::SUCCESS)
}
