//! Serving and proving: `pot serve`, `pot verify`, `pot keygen`, `pot challenges`.

use super::*;

impl EngineArgs {
    fn check(&self) -> Result<()> {
        if self.max_queue == 0 || self.max_batch == 0 {
            bail!("--max-queue and --max-batch must be at least 1");
        }
        Ok(())
    }
}

impl RetentionArgs {
    fn retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.retention_hours.max(0.0) * 3600.0)
    }
}

pub(super) fn cmd_serve(a: ServeArgs) -> Result<ExitCode> {
    a.engine.check()?;
    if !(a.shutdown_grace >= 0.0 && a.shutdown_grace.is_finite()) {
        bail!("--shutdown-grace must be a number of seconds, 0 or more");
    }
    let api_key = api_key_from_env(a.api_key_env.as_deref())?;
    pot::serve::run(pot::serve::ServeConfig {
        model: a.model,
        name: a.model_name,
        host: a.host,
        port: a.port,
        max_queue: a.engine.max_queue,
        max_batch: a.engine.max_batch,
        max_tokens_limit: a.engine.max_tokens_limit,
        max_body_bytes: a.max_body_bytes,
        shutdown_grace: std::time::Duration::from_secs_f64(a.shutdown_grace),
        kernels: a.engine.kernels.into(),
        api_key,
        node_key: a.node_key,
        store: a.store,
        retention: a.retention.retention(),
        store_max_bytes: a.retention.store_max_bytes,
    })?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_verify(a: VerifyArgs) -> Result<ExitCode> {
    use pot::commit::keys::{NodePublic, RouterKey};
    use pot::verify::{http::HttpProvider, Verifier};
    if a.jobs == 0 || a.max_tokens == 0 || a.audit_steps == 0 {
        bail!("--jobs, --max-tokens and --audit-steps must be at least 1");
    }
    let router = RouterKey::read(&a.router_key)?;
    let api_key = api_key_from_env(a.api_key_env.as_deref())?;
    let mut provider = HttpProvider::new(pot::openai::EndpointConfig {
        url: a.endpoint.clone(),
        model: String::new(),
        chat: false,
        api_key,
        timeout: std::time::Duration::from_secs(a.timeout_s),
        retries: a.retries,
        max_backoff: std::time::Duration::from_secs(30),
    })?;
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
    let (model, identity) = pot::identity::load_identified(&path, LoadOptions::kernels(kernels))?;
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

pub(super) fn cmd_keygen(out: PathBuf, node: bool, router: bool) -> Result<ExitCode> {
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

pub(super) fn cmd_keygen_challenge(out: PathBuf) -> Result<ExitCode> {
    write_new_secret(&out, &ChallengeKey::generate().to_hex())?;
    eprintln!(
        "pot: wrote a new challenge key to {} (keep it secret)",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_challenges(
    key_file: PathBuf,
    run_id: String,
    n: u64,
    json: bool,
) -> Result<ExitCode> {
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

/// The network options and addresses of `pot node`.
fn net_setup(
    a: &NetArgs,
    default_listen: &[&str],
) -> Result<(
    pot::net::NetOptions,
    Vec<libp2p::Multiaddr>,
    Vec<libp2p::Multiaddr>,
)> {
    if a.request_timeout_s == 0 {
        bail!("--request-timeout-s must be at least 1");
    }
    let listen: Vec<String> = if a.listen.is_empty() {
        default_listen.iter().map(|s| s.to_string()).collect()
    } else {
        a.listen.clone()
    };
    let listen = listen
        .iter()
        .map(|s| pot::net::parse_addr(s))
        .collect::<Result<Vec<_>, _>>()?;
    let bootstrap = a
        .bootstrap
        .iter()
        .map(|s| {
            let addr = pot::net::parse_addr(s)?;
            if pot::net::node::peer_of(&addr).is_none() {
                return Err(pot::net::NetError::NoPeerId(s.clone()));
            }
            Ok(addr)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let opts = pot::net::NetOptions {
        mdns: !a.no_mdns,
        request_timeout: std::time::Duration::from_secs(a.request_timeout_s),
        ..Default::default()
    };
    Ok((opts, listen, bootstrap))
}

pub(super) fn cmd_node_provider(a: NodeProviderArgs) -> Result<ExitCode> {
    a.engine.check()?;
    if a.announce_every_s == 0 {
        bail!("--announce-every-s must be at least 1");
    }
    let (net, listen, bootstrap) = net_setup(
        &a.net,
        &["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"],
    )?;
    let disguise = pot::serve::service::Disguise {
        claim: a
            .claim_weight_hash
            .as_deref()
            .map(|h| pot::commit::keys::parse_hex32(h, "--claim-weight-hash"))
            .transpose()?,
        forge: a.forge_receipts,
        stall: a.stall,
    };
    let run = pot::net::provider::run(
        pot::net::provider::ProviderConfig {
            serve: pot::serve::ServeConfig {
                model: a.model,
                name: a.model_name,
                host: String::new(),
                port: 0,
                max_queue: a.engine.max_queue,
                max_batch: a.engine.max_batch,
                max_tokens_limit: a.engine.max_tokens_limit,
                max_body_bytes: 1 << 20,
                shutdown_grace: std::time::Duration::from_secs(5),
                kernels: a.engine.kernels.into(),
                api_key: None,
                node_key: Some(a.node_key),
                store: Some(a.store),
                retention: a.retention.retention(),
                store_max_bytes: a.retention.store_max_bytes,
            },
            listen,
            bootstrap,
            net,
            announce_every: std::time::Duration::from_secs(a.announce_every_s),
            disguise,
        },
        |l| {
            for addr in &l.addrs {
                eprintln!("pot node: provider {} listening on {addr}", l.model);
            }
            println!("{}", serde_json::to_string(l).expect("serializes"));
        },
    );
    run?;
    Ok(ExitCode::SUCCESS)
}

/// `pot node router --openai`: the users' entry point.
fn cmd_node_gateway(a: NodeRouterArgs) -> Result<ExitCode> {
    use pot::commit::keys::{NodeKey, RouterKey};
    use pot::verify::Verifier;
    if !(0.0..=1.0).contains(&a.audit_rate) {
        bail!("--audit-rate must be between 0 and 1");
    }
    if a.attempts == 0 || a.max_tokens_limit == 0 {
        bail!("--attempts and --max-tokens-limit must be at least 1");
    }
    let (net, listen, bootstrap) = net_setup(&a.net, &["/ip4/0.0.0.0/tcp/0"])?;
    let router = RouterKey::read(&a.router_key)?;
    let identity = match &a.node_key {
        Some(p) => NodeKey::read(p)?.libp2p_keypair(),
        None => libp2p::identity::Keypair::generate_ed25519(),
    };
    let kernels: Kernels = a.kernels.into();
    let path = pot::model::resolve(&a.model)?;
    let text = pot::model::TextSide::load(&a.model)?;
    // Replaced by each provider's key (its peer id) before its receipts are checked.
    let placeholder = NodeKey::generate().public();
    let mut v = match &a.weight_hash {
        Some(h) => {
            let hash = pot::commit::keys::parse_hex32(h, "--weight-hash")?;
            Verifier::without_model(
                text.tokenizer.vocab_size(),
                hash,
                kernels,
                placeholder,
                router,
            )
        }
        None => {
            let (model, identity) =
                pot::identity::load_identified(&path, LoadOptions::kernels(kernels))?;
            let hash = pot::commit::keys::parse_hex32(&identity.weight_hash, "weight hash")?;
            Verifier::new(model, hash, kernels, placeholder, router, a.audit_steps)
        }
    };
    if let Some(t) = a.tolerance {
        if !(t > 0.0 && t.is_finite()) {
            bail!("--tolerance must be a positive number of nats");
        }
        v.tolerance = t;
    }
    v.window_ms = a.window_s * 1000;
    let name = a.model_name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| a.model.clone())
    });
    eprintln!(
        "pot node: router for {name:?}; reputation in {}",
        a.reputation.display()
    );
    pot::net::gateway::run(
        pot::net::gateway::GatewayConfig {
            identity,
            listen,
            bootstrap,
            net,
            openai: a.openai.clone().expect("checked by the caller"),
            name,
            text,
            audit_rate: a.audit_rate,
            probation: a.probation,
            attempts: a.attempts,
            reputation: a.reputation.clone(),
            max_tokens_limit: a.max_tokens_limit,
            discover_every: std::time::Duration::from_secs(10),
            max_body_bytes: 1 << 20,
        },
        v,
        |r| {
            eprintln!("pot node: router ready; OpenAI API at {}", r.openai);
            println!("{}", serde_json::to_string(r).expect("serializes"));
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn cmd_node_router(a: NodeRouterArgs) -> Result<ExitCode> {
    use pot::commit::keys::RouterKey;
    use pot::verify::Verifier;
    if a.jobs == 0 || a.max_tokens == 0 || a.audit_steps == 0 {
        bail!("--jobs, --max-tokens and --audit-steps must be at least 1");
    }
    if a.openai.is_some() {
        return cmd_node_gateway(a);
    }
    let (net, listen, bootstrap) = net_setup(&a.net, &[])?;
    let router = RouterKey::read(&a.router_key)?;
    let kernels: Kernels = a.kernels.into();
    let path = pot::model::resolve(&a.model)?;
    let (model, identity) = pot::identity::load_identified(&path, LoadOptions::kernels(kernels))?;
    let weight_hash = pot::commit::keys::parse_hex32(&identity.weight_hash, "weight hash")?;
    // Replaced by each provider's key (its peer id) before its jobs.
    let placeholder = pot::commit::keys::NodeKey::generate().public();
    let mut v = Verifier::new(
        model,
        weight_hash,
        kernels,
        placeholder,
        router,
        a.audit_steps,
    );
    if let Some(t) = a.tolerance {
        if !(t > 0.0 && t.is_finite()) {
            bail!("--tolerance must be a positive number of nats");
        }
        v.tolerance = t;
    }
    v.window_ms = a.window_s * 1000;
    let report = pot::net::router::sweep(
        pot::net::router::SweepConfig {
            identity: match &a.node_key {
                Some(p) => pot::commit::keys::NodeKey::read(p)?.libp2p_keypair(),
                None => libp2p::identity::Keypair::generate_ed25519(),
            },
            listen,
            bootstrap,
            net,
            discover: std::time::Duration::from_secs(a.discover_s),
            jobs: a.jobs,
            max_tokens: a.max_tokens,
        },
        &mut v,
    )?;
    for p in &report.providers {
        let t = &p.tally;
        let what = if p.failures.is_empty() && t.rejected == 0 {
            "ACCEPTED".to_string()
        } else {
            format!("REJECTED: {}", p.failures.join("; "))
        };
        eprintln!(
            "provider {}: {}/{} jobs accepted ({} tokens; provider {:.1} s, audits {:.1} s): {what}",
            p.peer, t.accepted, a.jobs, t.tokens, t.generate_s, t.audit_s
        );
    }
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "claimed_weight_hash": identity.weight_hash,
                "discover_s": report.discover_s,
                "providers": report.providers,
                "all_accepted": report.all_accepted(),
            }))?
        )?;
    } else {
        outln!(
            "{} providers, {} accepted every job",
            report.providers.len(),
            report
                .providers
                .iter()
                .filter(|p| p.failures.is_empty() && p.tally.rejected == 0)
                .count()
        )?;
    }
    Ok(if report.all_accepted() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
